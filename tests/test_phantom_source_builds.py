"""Phantom trees of the built sources made on demand (``manual_dir="phantom[:site]"``), and unions whose
parts each read their own folder: the tree is the writer's own bytes, written once and reused; each
part builds under its name; the config refuses what cannot run in one line; ``dataset.built`` opens a
built source with its own builder."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
from pathlib import Path

import pytest
from test_phantom_source_trees import tree_digest

from lungjax.config import check
from lungjax.config.base import base_config
from lungjax.data import building, dataset, records, source_builder, union
from lungjax.data.phantom import source_trees

PATIENTS, SIZE = 8, 32
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TWO_SITES = (("hospital", 1.0, "phantom:A"), ("hospital", 2.0, "phantom:B"))


def phantom_data_config(**values):
    config = base_config().data
    config.phantom_patients, config.stored_size, config.build_workers = PATIENTS, SIZE, 1
    for key, value in values.items():
        setattr(config, key, value)
    return config


@pytest.mark.parametrize(
    ("entry", "name"),
    [
        (("hospital", 1.0), "hospital"),
        (("hospital", 1.0, "phantom:B"), "hospital-B"),
        (("chexpert", 1.0, "phantom"), "chexpert-phantom"),
        (("chexpert", 1.0, "/data/stanford/CheXpert-v1.0/"), "chexpert-CheXpert-v1.0"),
        (("hospital", 1.0, "exports/../north"), "hospital-north"),
    ],
)
def test_a_part_is_named_by_its_source_and_its_own_folder(entry, name):
    config = phantom_data_config(sources=(entry, ("nih", 3.0)), manual_dir="/data/nih")
    assert union.names_and_weights(config) == ((name, "nih"), (1.0, 3.0))
    part = union.parts(config)[0]
    assert (part.name, part.source, part.manual_dir) == (name, entry[0], entry[2] if len(entry) == 3 else "/data/nih")


@pytest.mark.parametrize(
    ("source", "manual_dir", "sources", "message"),
    [
        (
            "phantom",
            "",
            (("hospital", 1.0, "phantom:A"), ("hospital", 2.0, "phantom:A")),
            "config.data.sources: the part names 'hospital-A' are given more than once; allowed: distinct parts",
        ),
        (
            "hospital",
            "phantom:Z",
            (),
            "config.data.manual_dir: 'phantom:Z' is not allowed; allowed: 'phantom' or 'phantom:<site>', a site of "
            "A, B, C",
        ),
        (
            "phantom",
            "",
            (("hospital", 1.0, "phantom:Z"), ("chexpert", 1.0, "phantom")),
            "config.data.sources (part 'hospital-Z'): 'phantom:Z' is not allowed; allowed: 'phantom' or",
        ),
        (
            "nih",
            "phantom",
            (),
            "config.data.manual_dir: 'phantom' is not allowed with source 'nih'; allowed: the folder of your "
            "download (phantom trees are made for chexpert, mimic, padchest, vindr, hospital;",
        ),
        (
            "phantom",
            "",
            (("nih", 1.0, "phantom:A"), ("phantom", 1.0)),
            "config.data.sources (part 'nih-A'): 'phantom:A' is not allowed with source 'nih'",
        ),
        (
            "hospital",
            "",
            (),
            "config.data.manual_dir: '' is not allowed with data.source='hospital'; allowed: the folder of your "
            "download; a built source also takes 'phantom' or 'phantom:<site>' (a site of A, B, C)",
        ),
        (
            "phantom",
            "",
            (("hospital", 1.0, "phantom:A"), ("chexpert", 1.0), ("padchest", 1.0)),
            "config.data.manual_dir: '' is not allowed with data.sources parts 'chexpert', 'padchest'; allowed: "
            "the folder of your download; or a part's own, the third element of its entry",
        ),
        (
            "phantom",
            "",
            (("phantom", 1.0, "phantom:A"), ("nih", 1.0, "/data/nih")),
            "config.data.sources (part 'phantom-A'): 'phantom:A' is not allowed; allowed: none",
        ),
    ],
)
def test_parts_that_cannot_be_read_are_one_line_each(source, manual_dir, sources, message):
    config = base_config()
    config.data.source, config.data.manual_dir, config.data.sources = source, manual_dir, sources
    config.data.labels, config.data.task = ("nih14",), "full14"  # what a source's build (and NIH's beside it) needs
    found = check.problems(config)
    assert len(found) == 1 and found[0].startswith(message), found


def test_a_union_of_phantom_parts_and_of_own_folders_needs_no_data_manual_dir():
    config = base_config()
    config.data.labels, config.data.task = ("nih14",), "full14"
    config.data.sources = (*TWO_SITES, ("chexpert", 1.0, "/data/chexpert"))
    assert check.problems(config) == []
    config.data.source, config.data.manual_dir, config.data.sources = "vindr", "phantom", ()
    assert check.problems(config) == []


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory):
    """A union of the phantom hospital at sites A and B, built: (workdir, part name -> builder)."""
    workdir = tmp_path_factory.mktemp("two_sites")
    return workdir, union.build(phantom_data_config(sources=TWO_SITES), workdir)


def test_each_phantom_part_is_its_writers_tree_built_in_the_folder_of_its_name(two_sites, tmp_path):
    workdir, builders = two_sites
    assert list(builders) == ["hospital-A", "hospital-B"]
    digests = []
    for site, (name, builder) in zip("AB", builders.items(), strict=True):
        folder = workdir / "tfds" / name
        assert Path(builder.data_dir).is_relative_to(folder) and builder.builder_config.name == f"hospital_{SIZE}"
        tree = folder / f"phantom_hospital_tree_site{site}_{PATIENTS}_0_{SIZE}"
        reference = source_trees.write_hospital_tree(tmp_path / site, PATIENTS, seed=0, image_size=SIZE, site=site)
        digests.append(tree_digest(tree))
        assert digests[-1] == tree_digest(reference.manual_dir)  # the writer's bytes, at the part's site
        report = building.read_build_report(builder)
        assert sum(report["images"].values()) == len(reference.films)
    assert digests[0] != digests[1]  # the sites' films differ


def test_a_union_of_two_phantom_sites_concatenates_their_splits_under_the_part_names(two_sites):
    _, builders = two_sites
    assert union.dataset_name(builders) == f"hospital-A:hospital_{SIZE} + hospital-B:hospital_{SIZE}"
    for split in ("train", "validation", "test"):
        joined = union.split(builders, split)
        own = {name: records.data_source(builder, split) for name, builder in builders.items()}
        assert joined.names == ("hospital-A", "hospital-B")
        assert joined.sizes == tuple(len(part) for part in own.values())
        assert [joined.records[i] for i in range(len(joined))] == [
            part.records[i] for part in own.values() for i in range(len(part))
        ]
        assert [joined[i]["source"] for i in range(len(joined))] == [
            name for name, part in own.items() for _ in range(len(part))
        ]


def test_a_built_phantom_source_is_reused_and_opened_with_its_own_builder(two_sites):
    workdir, builders = two_sites
    config = phantom_data_config(sources=TWO_SITES)
    part = union.parts(config)[0]
    part_config = union.source_config(config, part, workdir)
    tree = dataset.manual_dir(part_config, workdir)
    written = {path: path.stat().st_mtime_ns for path in tree.rglob("*")}
    again = union.build(config, workdir)
    assert {path: path.stat().st_mtime_ns for path in tree.rglob("*")} == written  # the tree is not rewritten
    assert again["hospital-A"].data_dir == builders["hospital-A"].data_dir
    opened = dataset.open_built(part_config, workdir)
    assert isinstance(opened, source_builder.LungjaxSources) and opened.data_dir == builders["hospital-A"].data_dir
    assert dataset.built(part_config, workdir).info.splits["train"].num_examples == len(
        records.data_source(builders["hospital-A"], "train")
    )


def test_a_source_not_built_is_none_and_refused_by_open_built(tmp_path):
    config = phantom_data_config(source="padchest", manual_dir="phantom:C")
    assert dataset.built(config, tmp_path) is None
    with pytest.raises(building.DatasetNotBuiltError, match=rf"no padchest_{SIZE} in .*: run --mode prepare"):
        dataset.open_built(config, tmp_path)
    assert (
        dataset.manual_dir(config, tmp_path) == tmp_path / "tfds" / f"phantom_padchest_tree_siteC_{PATIENTS}_0_{SIZE}"
    )
    chexpert = phantom_data_config(source="chexpert", manual_dir="phantom")
    assert dataset.manual_dir(chexpert, tmp_path) == (
        tmp_path / "tfds" / f"phantom_chexpert_tree_{PATIENTS}_0_{SIZE}" / source_trees.CHEXPERT_FOLDER
    )
    mimic = phantom_data_config(source="mimic", manual_dir="phantom:B")
    mimic.build_options.labeller = "negbio"
    assert dataset.manual_dir(mimic, tmp_path).name == f"phantom_mimic_tree_siteB_negbio_{PATIENTS}_0_{SIZE}"
    assert not list(tmp_path.iterdir())  # naming a tree writes nothing


def test_the_run_that_loses_the_race_to_write_a_tree_uses_the_winners(tmp_path):
    tree = tmp_path / "phantom_hospital_tree_8_0_32"

    def write_while_another_run_finishes_first(draft):
        (draft / "loser").mkdir(parents=True)
        (tree / "winner").mkdir(parents=True)  # the other run renamed its whole tree into place meanwhile

    dataset._write_phantom_tree(tree, write_while_another_run_finishes_first)
    assert [path.name for path in tmp_path.iterdir()] == [tree.name]  # no draft left
    assert [path.name for path in tree.iterdir()] == ["winner"]


class CountingExecutor(concurrent.futures.Executor):
    """Runs each task when it is handed out, counting the patients drawn."""

    def __init__(self):
        self.drawn = 0

    def submit(self, fn, /, *args, **kwargs):
        future = concurrent.futures.Future()
        future.set_result(fn(*args, **kwargs))
        self.drawn += len(args[1])
        return future


def test_patients_are_handed_to_the_workers_a_few_tasks_at_a_time_and_come_back_in_order():
    executor = CountingExecutor()
    ahead = []
    patients = source_trees._drawn_in_order(executor, lambda number: number, range(1, 101), 4, 3)
    for taken, patient in enumerate(patients, start=1):
        assert patient == taken
        ahead.append(executor.drawn - taken)
    assert executor.drawn == 100 and max(ahead) < 3 * 4 + 4  # the tasks in flight and the one being read


def test_a_tree_is_the_same_bytes_for_any_number_of_workers_and_tasks(tmp_path, monkeypatch):
    one = source_trees.write_mimic_tree(tmp_path / "one", 9, seed=2, image_size=SIZE, site="B")
    monkeypatch.setattr(source_trees, "PATIENTS_PER_TASK", 1)
    monkeypatch.setattr(source_trees, "TASKS_PER_WORKER", 1)
    spread = source_trees.write_mimic_tree(tmp_path / "two", 9, seed=2, image_size=SIZE, site="B", num_workers=2)
    assert tree_digest(one.manual_dir) == tree_digest(spread.manual_dir)


@pytest.mark.slow
def test_prepare_writes_a_phantom_hospital_once_and_builds_it(tmp_path):
    command = [
        sys.executable,
        "-m",
        "lungjax.main",
        f"--config={CONFIGS / 'tiny.py'}",
        f"--workdir={tmp_path}",
        "--mode=prepare",
        "--config.data.source=hospital",
        "--config.data.manual_dir=phantom:A",
        f"--config.data.phantom_patients={PATIENTS}",
    ]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    tree = tmp_path / "tfds" / f"phantom_hospital_tree_siteA_{PATIENTS}_0_{SIZE}"
    assert "phantom hospital patients" in first.stderr and tree.is_dir()
    written = {path: path.stat().st_mtime_ns for path in tree.rglob("*")}
    second = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "phantom hospital patients" not in second.stderr
    assert {path: path.stat().st_mtime_ns for path in tree.rglob("*")} == written
    ready = f"dataset ready: {tmp_path / 'tfds' / 'lungjax_sources' / f'hospital_{SIZE}' / '1.0.0'}"
    assert ready in first.stdout and ready in second.stdout


def test_each_part_of_a_union_must_take_the_build_options():
    config = base_config()
    config.data.labels = ("chexpert5",)
    config.data.sources = (("chexpert", 1.0, "phantom"), ("vindr", 1.0, "phantom"))
    config.data.build_options.readers = "any"
    (problem,) = check.problems(config)
    assert problem.startswith("config.data.build_options: source 'chexpert' takes no build option ['readers']")
    config.data.build_options.readers, config.data.build_options.frontal_only = "majority", True
    assert check.problems(config) == []

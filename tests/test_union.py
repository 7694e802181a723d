"""Training on a union of sources: the mix against its weights, each source's epochs, the concatenated
splits, patient-disjoint splits per source, the config's one line, and exact resume (across process
counts at the loader, bit for bit through training)."""

import json

import cv2
import jax
import numpy as np
import pytest
from conftest import UNION_SOURCES, example_source, split_examples, tiny_train_config, union_train_config
from test_resume import assert_bitwise_equal, saved_params

from lungjax.config import check
from lungjax.data import building, pipeline, records, sampling, union
from lungjax.evaluation import evaluate
from lungjax.runtime import checkpoint, logs
from lungjax.training import loop as train


@pytest.mark.parametrize(
    ("weights", "counts"),
    [((1, 2), [1, 2]), ((0.7, 0.3), [7, 3]), ((0.5, 0.3, 0.2), [5, 3, 2]), ((3, 3), [1, 1]), ((5,), [1])],
)
def test_simple_ratios_give_the_shortest_exact_period(weights, counts):
    assert sampling.period_counts(weights).tolist() == counts


def test_other_ratios_are_shared_out_over_the_longest_period():
    weights = np.array([1.0, np.pi, np.e])
    counts = sampling.period_counts(weights)
    assert counts.sum() == sampling.MAX_PERIOD
    exact = weights / weights.sum() * sampling.MAX_PERIOD
    assert np.abs(counts - exact).max() < 1  # largest remainder: each within one draw of its share
    assert counts.tolist() == [146, 458, 396]


@pytest.mark.parametrize("weights", [(1, 0), (1, -2), (1, float("nan")), (1, 1e-4), ()])
def test_weights_a_mix_cannot_draw_are_refused(weights):
    with pytest.raises(ValueError, match="weights"):
        sampling.period_counts(weights)


@pytest.mark.parametrize("weights", [(2, 1), (0.5, 0.3, 0.2), (1.0, np.pi, np.e), (1, 1, 1, 997)])
def test_the_mix_matches_the_weights_in_every_period_and_within_one_draw_at_every_position(weights):
    sizes = [7, 5, 3, 11][: len(weights)]
    sampler = sampling.MixedSampler(sizes, weights, seed=1)
    counts = sampling.period_counts(weights)
    period = int(counts.sum())
    sources = np.array([sampler.source_and_record(i)[0] for i in range(3 * period)])
    drawn = np.cumsum(sources[:, None] == np.arange(len(weights)), axis=0)  # (position, source): draws so far
    positions = np.arange(1, len(sources) + 1)[:, None]
    assert np.abs(drawn - positions * counts / period).max() < 1
    for p in range(1, 4):  # every period draws each source exactly its count
        assert drawn[p * period - 1].tolist() == (p * counts).tolist()
    shares = np.asarray(weights, float) / np.sum(weights)
    assert np.abs(drawn[-1] / len(sources) - shares).max() <= 1 / sampling.MAX_PERIOD


def test_a_mix_spreads_a_source_over_the_period():
    sampler = sampling.MixedSampler([10, 10], (3, 1), seed=0)
    assert [sampler.source_and_record(i)[0] for i in range(8)] == [
        0,
        0,
        1,
        0,
    ] * 2  # a a b a (interleaving), not a a a b


def test_each_source_reads_each_of_its_records_once_per_its_own_epoch():
    sizes, weights = [6, 4, 9], (1, 2, 1)
    sampler = sampling.MixedSampler(sizes, weights, seed=7)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    keys = [sampler[i].record_key for i in range(400)]
    read = [sampler.source_and_record(i) for i in range(400)]
    for k, size in enumerate(sizes):
        own = [record for source, record in read if source == k]
        assert all(
            offsets[k] <= key < offsets[k] + size for key, (source, _) in zip(keys, read, strict=True) if source == k
        )
        epochs = [own[e * size : (e + 1) * size] for e in range(len(own) // size)]
        assert len(epochs) >= 4
        for epoch in epochs:
            assert sorted(epoch) == list(range(size))
        assert len({tuple(e) for e in epochs}) > 1  # reshuffled, not one order repeated


def test_a_position_is_computed_from_seed_and_position_alone():
    """Random access far into the stream, as a resumed iterator reads: the same record and the same
    augmentation draws as reading up to it, and per-record generators as for one source."""
    walked = sampling.MixedSampler([6, 4], (1, 2), seed=3)
    for i in range(200):
        walked[i]
    fresh = sampling.MixedSampler([6, 4], (1, 2), seed=3)
    for i in (199, 57, 120):
        assert fresh[i].record_key == walked[i].record_key
        assert fresh[i].rng.integers(1 << 30) == np.random.Generator(np.random.Philox(key=3 + i)).integers(1 << 30)
    far = 10**12 + 5
    source, record = fresh.source_and_record(far)
    counts = sampling.period_counts((1, 2))
    order = sampling.interleaving(counts)  # the definition, spelled out
    slot = far % len(order)
    draws = (far // len(order)) * counts[source] + np.sum(order[:slot] == source)
    assert order[slot] == source
    epoch, position = divmod(int(draws), [6, 4][source])
    assert record == np.random.default_rng([3, source, epoch]).permutation([6, 4][source])[position]
    assert repr(fresh) == "MixedSampler(source_sizes=[6, 4], draws_per_period=[1, 2], seed=3)"
    assert [sampling.MixedSampler([6, 4], (1, 2), seed=4)[i].record_key for i in range(30)] != [
        fresh[i].record_key for i in range(30)
    ]


def png(value: int) -> bytes:
    return cv2.imencode(".png", np.full((8, 8), value, np.uint8))[1].tobytes()


def in_memory_union(sizes=(10, 4)) -> union.UnionSource:
    """Sources whose labels are record ids over the union (source 1's start at 100)."""
    parts = {}
    for k, size in enumerate(sizes):
        rows = [{"image": png(20 * k + i), "label": 100 * k + i, "patient_id": i} for i in range(max(size, 1))]
        part = example_source(rows, name=f"source{k}")
        parts[f"source{k}"] = records.ExampleSource(part.records.source[:size], part.specs, f"source{k}")
    return union.UnionSource(parts)


def test_union_source_concatenates_its_sources_with_offsets_and_names_them():
    source = in_memory_union((3, 0, 2))
    assert len(source) == 5 and source.offsets == (0, 3, 3) and source.sizes == (3, 0, 2)
    assert source.ranges() == {"source0": range(0, 3), "source1": range(3, 3), "source2": range(3, 5)}
    assert [source[i]["label"] for i in range(5)] == [0, 1, 2, 200, 201]
    assert [source[i]["source"] for i in range(5)] == ["source0"] * 3 + ["source2"] * 2
    with pytest.raises(IndexError):
        source.records[5]
    assert repr(source.records) == (
        "ConcatenatedRecords(ExampleRecords(source0), ExampleRecords(source1), ExampleRecords(source2))"
    )


def test_sources_that_store_different_features_are_refused():
    plain = example_source([{"image": png(1), "label": 0}], name="a")
    other = example_source([{"image": png(1), "label": 0, "patient_id": 3}], name="b")
    with pytest.raises(ValueError, match="sources 'a' and 'b' store different features"):
        union.UnionSource({"a": plain, "b": other})


def test_mixed_class_counts_are_the_mix_frequencies():
    reports = {
        "a": {"class_counts": {"train": [8, 2]}, "images": {"train": 10}},
        "b": {"class_counts": {"train": [10, 30]}, "images": {"train": 40}},
    }
    counts, images = union.mixed_class_counts(reports, (3.0, 1.0))
    # 3/4 of the draws from a (80 % class 0), 1/4 from b (25 % class 0), over 50 images
    assert images == 50 and counts == [round(50 * (0.75 * 0.8 + 0.25 * 0.25)), round(50 * (0.75 * 0.2 + 0.25 * 0.75))]
    assert union.mixed_class_counts({"a": reports["a"]}, ()) == ([8, 2], 10)


SOURCE = in_memory_union()
WEIGHTS = (1.0, 2.0)


def loader(monkeypatch, *, count: int, index: int, batch_size: int, resume_from=None, saved_process_count=1):
    """The union's training loader as process ``index`` of ``count`` builds it, restored from a state
    that process 0 of ``saved_process_count`` saved, when given (``test_distributed.loader``'s twin)."""
    monkeypatch.setattr(jax, "process_count", lambda: count)
    monkeypatch.setattr(jax, "process_index", lambda: index)
    iterator = iter(
        pipeline.train_loader(SOURCE, batch_size=batch_size, image_size=8, augment="light", seed=3, weights=WEIGHTS)
    )
    if resume_from is not None:
        iterator.set_state(
            sampling.data_state_for_process(
                resume_from,
                saved_process_count=saved_process_count,
                worker_count=0,
                global_batch_size=batch_size * count,
                num_records=len(SOURCE),
            )
        )
    return iterator


def assert_same_batch(a: dict, b: dict) -> None:
    for key in ("label", "image"):
        np.testing.assert_array_equal(a[key], b[key])


def test_union_stream_resumes_exactly_and_maps_across_process_counts(monkeypatch):
    one = loader(monkeypatch, count=1, index=0, batch_size=4)
    reference = [next(one) for _ in range(6)]  # 24 draws: source1 (4 records, 2/3 of draws) wraps 4 times
    sampler = sampling.MixedSampler(SOURCE.sizes, WEIGHTS, seed=3)
    expected = [SOURCE[sampler[i].record_key]["label"] for i in range(24)]
    assert np.concatenate([b["label"] for b in reference]).tolist() == expected
    assert sum(label >= 100 for label in expected) == 16  # 2 of every 3 draws

    one = loader(monkeypatch, count=1, index=0, batch_size=4)
    for _ in range(3):
        next(one)
    resumed = loader(monkeypatch, count=1, index=0, batch_size=4, resume_from=one.get_state())
    for step in range(3, 6):
        assert_same_batch(next(resumed), reference[step])

    two = [loader(monkeypatch, count=2, index=p, batch_size=2) for p in range(2)]
    for step in range(2):
        batches = [next(it) for it in two]
        assert_same_batch({k: np.concatenate([b[k] for b in batches]) for k in ("label", "image")}, reference[step])
    resumed = loader(monkeypatch, count=1, index=0, batch_size=4, resume_from=two[0].get_state(), saved_process_count=2)
    assert_same_batch(next(resumed), reference[2])


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ((("nih", 1.0), ("chexpertx", 1.0)), "config.data.sources: (('nih', 1.0), ('chexpertx', 1.0)) is not allowed"),
        ((("nih", 1.0), ("phantom", 0.0)), "config.data.sources: (('nih', 1.0), ('phantom', 0.0)) is not allowed"),
        ((("nih", 1.0), ("nih", 2.0)), "config.data.sources: the part names 'nih' are given more than once"),
        (
            (("nih", 1.0), ("phantom", 1e-4)),
            "is not allowed; allowed: a tuple of (source, weight) or (source, weight, ",
        ),
        ((("nih", 1.0, ""),), "each manual_dir a non-empty string"),
        ((("nih", 1.0, "/data/nih", 3),), "config.data.sources: (('nih', 1.0, '/data/nih', 3),) is not allowed"),
        ((("nih",),), "each weight a number > 0 and at least 1/1000 of the weights' sum"),
        ((("nih", "2"),), "config.data.sources: (('nih', '2'),) is not allowed"),
    ],
)
def test_bad_sources_are_one_line_naming_the_key_and_what_it_allows(data_root, sources, message):
    config = tiny_train_config(data_root)
    config.data.sources = sources
    found = check.problems(config)
    assert len(found) == 1 and message in found[0], found


def test_a_union_with_nih_needs_its_download_folder(data_root):
    config = union_train_config(data_root)
    assert check.problems(config) == []
    config.data.source, config.data.manual_dir = "phantom", ""
    assert check.problems(config) == [
        "config.data.manual_dir: '' is not allowed with data.sources parts 'nih'; allowed: the folder of your "
        "download; or a part's own, the third element of its entry (source, weight, manual_dir)"
    ]


def test_each_source_builds_on_its_own_and_keeps_patients_within_one_split(union_built, data_root):
    assert list(union_built) == [name for name, _ in UNION_SOURCES]
    for name, builder in union_built.items():
        assert builder.data_dir.startswith(str(data_root / "tfds" / name))
        patients = {}
        for split in ("train", "validation", "test"):
            source = union.split({name: builder}, split)
            patients[split] = {source[i]["patient_id"] for i in range(len(source))}
            assert patients[split], (name, split)
        assert not patients["train"] & patients["validation"]
        assert not patients["train"] & patients["test"]
        assert not patients["validation"] & patients["test"]
    train_split = union.split(union_built, "train")
    reports = {name: building.read_build_report(b) for name, b in union_built.items()}
    assert train_split.sizes == tuple(r["images"]["train"] for r in reports.values())


def union_run_config(data_root, steps: int):
    config = union_train_config(data_root)
    config.num_train_steps, config.eval_every_steps = steps, 4
    return config


@pytest.fixture(scope="module")
def straight_union_run(data_root, union_built, tmp_path_factory):
    """8 union steps in one go, validating at 4 and 8."""
    workdir = tmp_path_factory.mktemp("straight_union")
    assert train.train(union_run_config(data_root, 8), workdir)
    return workdir


@pytest.mark.slow
def test_union_run_stopped_and_resumed_is_bitwise_identical(straight_union_run, data_root, tmp_path):
    assert train.train(union_run_config(data_root, 4), tmp_path)
    assert train.train(union_run_config(data_root, 8), tmp_path)
    assert checkpoint.make_manager(tmp_path, read_only=True).latest_step() == 8
    assert_bitwise_equal(saved_params(straight_union_run), saved_params(tmp_path))
    # every logged figure but the speed, validation per source included
    assert logged(tmp_path) == logged(straight_union_run)


def logged(workdir) -> list[dict]:
    records = [json.loads(line) for line in (workdir / logs.METRICS_FILE).read_text().splitlines()]
    return [{key: value for key, value in r.items() if key != "images_per_sec"} for r in records]


@pytest.mark.slow
def test_union_validation_logs_each_source_beside_the_overall_figures(straight_union_run, union_built):
    records = [json.loads(line) for line in (straight_union_run / logs.METRICS_FILE).read_text().splitlines()]
    validated = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in validated] == [4, 8]
    sizes = {name: building.read_build_report(b)["images"]["validation"] for name, b in union_built.items()}
    for record in validated:
        for name in sizes:
            assert {f"val_loss/{name}", f"val_accuracy/{name}"} <= set(record)
        # the overall figures are over all the sources' validation images: size-weighted means
        for metric in ("val_loss", "val_accuracy"):
            pooled = sum(sizes[n] * record[f"{metric}/{n}"] for n in sizes) / sum(sizes.values())
            assert record[metric] == pytest.approx(pooled, rel=1e-6)
    info = json.loads((straight_union_run / "run_info.json").read_text())
    assert info["dataset"] == "nih:patient_32 + phantom:patient_32"
    assert info["config"]["data"]["sources"] == [list(pair) for pair in UNION_SOURCES]


@pytest.mark.slow
def test_a_union_is_evaluated_on_its_sources_test_splits_one_after_another(straight_union_run, data_root, union_built):
    import pandas as pd

    report = evaluate.evaluate(union_run_config(data_root, 8), straight_union_run)
    rows = pd.read_csv(straight_union_run / "eval" / "test" / "predictions.csv", dtype=str)
    expected = [
        (name, example["image_name"].decode(), f"{name}/{example['patient_id']}")
        for name, builder in union_built.items()
        for example in split_examples(builder, "test")
    ]
    assert list(zip(rows["patient_id"].str.split("/").str[0], rows["image_name"], rows["patient_id"], strict=True)) == [
        (name, image, patient) for name, image, patient in expected
    ]
    assert report["n_images"] == len(expected) and report["dataset"] == "nih:patient_32 + phantom:patient_32"
    assert report["checkpoint_step"] == 8 and set(report["split_scheme"]) == set(union_built)
    assert "union" in report["subgroups"]["note"]  # NIH-format sources keep their metadata in their own folders

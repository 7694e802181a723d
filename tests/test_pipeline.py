"""The grain pipeline on an in-memory source: shuffling, evaluation order, augmentation, state."""

import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import jax
import numpy as np
import pytest
from absl import flags
from conftest import example_source

from lungjax.data import augment, pipeline, records, sampling

SIZE = 32


@pytest.fixture(scope="module", autouse=True)
def parsed_flags():
    """grain reads its absl flags, which the CLI parses and pytest does not."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_source(count: int, size: int = SIZE) -> records.ExampleSource:
    """Records shaped like a nih_tree_built split's: label ``i`` and an image whose pixels are all ``i``."""
    return example_source(
        [
            {
                "image": cv2.imencode(".png", np.full((size, size, 1), i, np.uint8))[1].tobytes(),
                "label": i,
                "image_name": f"{i:08d}_000.png".encode(),
                "patient_id": i,
                "bbox": np.full(4, -1.0, np.float32),
            }
            for i in range(count)
        ]
    )


def test_shuffle_is_seeded_and_differs_every_epoch():
    count = 12
    loader = pipeline.train_loader(
        make_source(count), batch_size=1, image_size=SIZE, augment="none", seed=3, worker_count=0
    )
    iterator = iter(loader)
    labels = [int(next(iterator)["label"][0]) for _ in range(3 * count)]
    epochs = [labels[i * count : (i + 1) * count] for i in range(3)]
    assert all(sorted(epoch) == list(range(count)) for epoch in epochs)  # each epoch: every record once
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    again = iter(
        pipeline.train_loader(make_source(count), batch_size=1, image_size=SIZE, augment="none", seed=3, worker_count=0)
    )
    assert [int(next(again)["label"][0]) for _ in range(count)] == epochs[0]


def test_sampler_reads_each_epochs_permutation_in_order_from_any_position():
    sampler = sampling.EpochShuffleSampler(7, seed=5)
    keys = [sampler[i].record_key for i in range(21)]
    assert [sorted(keys[e * 7 : (e + 1) * 7]) for e in range(3)] == [list(range(7))] * 3
    assert keys[:7] != keys[7:14]
    fresh = sampling.EpochShuffleSampler(7, seed=5)  # random access, as a restored iterator reads
    assert [fresh[i].record_key for i in (15, 3, 20, 0)] == [keys[15], keys[3], keys[20], keys[0]]
    assert fresh[9].rng.random() == np.random.Generator(np.random.Philox(key=5 + 9)).random()
    assert [sampling.EpochShuffleSampler(7, seed=6)[i].record_key for i in range(7)] != keys[:7]


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_eval_batches_cover_every_example_once_in_order(workers):
    source = make_source(10)
    batches = list(pipeline.eval_batches(source, batch_size=4, image_size=16, worker_count=workers))
    assert len(batches) == 3
    assert [b["mask"].tolist() for b in batches][-1] == [True, True, False, False]
    mask = np.concatenate([b["mask"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])[mask]
    assert labels.tolist() == list(range(10))
    assert all(b["image"].shape == (4, 16, 16, 1) and b["image"].dtype == np.uint8 for b in batches)
    images = np.concatenate([b["image"] for b in batches])[mask]
    assert np.all(images == np.arange(10)[:, None, None, None])  # images stay with their labels
    assert batches[-1]["image_name"][1] == b"00000009_000.png"


@pytest.mark.parametrize("num_records, processes", [(9, 2), (10, 3), (2, 3)])
def test_processes_evaluate_every_example_once_in_order(monkeypatch, num_records, processes):
    """Each process's batches concatenated in process order are the split (grain's sharding lost one
    record per shard boundary here), and every process yields as many batches."""
    source = make_source(num_records)
    monkeypatch.setattr(jax, "process_count", lambda: processes)
    read, batch_counts = [], set()
    for index in range(processes):
        monkeypatch.setattr(jax, "process_index", lambda index=index: index)
        batches = list(pipeline.eval_batches(source, batch_size=2, image_size=16))
        batch_counts.add(len(batches))
        read += np.concatenate([b["label"][b["mask"]] for b in batches]).tolist()
    assert read == list(range(num_records)) and len(batch_counts) == 1


def test_chexnet_preset_mirrors_about_half_of_the_images_and_nothing_else():
    image = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    rng, flips = np.random.default_rng(1), 0
    for _ in range(200):
        out = augment.warp(image, augment.affine_matrix(augment.augmentation("chexnet"), 64, 64, rng), 64)
        assert np.array_equal(out, image) or np.array_equal(out, image[:, ::-1])
        flips += int(np.array_equal(out, image[:, ::-1]))
    assert 70 <= flips <= 130  # binomial(200, 1/2): 5 sigma either side


def test_no_augmentation_is_a_plain_resize():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    same = augment.affine_matrix(augment.augmentation("none"), 64, 64, rng)
    np.testing.assert_allclose(same, [[1, 0, 0], [0, 1, 0]], atol=1e-12)
    assert np.array_equal(augment.warp(image, same, 64), image)
    half = augment.warp(image, augment.affine_matrix(augment.augmentation("none"), 64, 32, rng), 32)
    linear = cv2.resize(image, (32, 32), interpolation=cv2.INTER_LINEAR)
    assert np.abs(half.astype(int) - linear).max() <= 1


class HighEnd:
    """An rng stand-in that always draws the top of each range."""

    def uniform(self, low, high, size=None):
        return np.full(size, high, float) if size else float(high)


def test_rotation_and_shift_move_a_point_where_expected():
    image = np.zeros((64, 64), np.uint8)
    image[20, 10] = 255  # x=10, y=20
    turned = augment.warp(image, augment.affine_matrix(augment.Augmentation(rotation=90), 64, 64, HighEnd()), 64)
    # +90 degrees about the centre (31.5, 31.5): (x, y) = (10, 20) -> (20, 53), counter-clockwise on screen
    assert np.unravel_index(np.argmax(turned), turned.shape) == (53, 20)
    shifted = augment.warp(image, augment.affine_matrix(augment.Augmentation(shift=0.125), 64, 64, HighEnd()), 64)
    # the output samples the input 8 pixels right and down: the content moves 8 pixels left and up
    assert np.unravel_index(np.argmax(shifted), shifted.shape) == (12, 2)


def test_seed_preset_is_the_reference_set():
    seed = augment.augmentation("seed")
    assert (seed.rotation, seed.shift, seed.shear, seed.zoom) == (30.0, 0.2, 0.2, 0.3)
    with pytest.raises(ValueError, match="augment must be one of"):
        augment.augmentation("heavy")


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_restored_iterator_continues_exactly(workers):
    source = make_source(20)

    def loader():
        return pipeline.train_loader(source, batch_size=3, image_size=16, augment="seed", seed=5, worker_count=workers)

    uninterrupted = iter(loader())
    expected = [next(uninterrupted) for _ in range(10)]
    first = iter(loader())
    for _ in range(4):
        next(first)
    state = first.get_state()
    restored = iter(loader())
    restored.set_state(state)
    for want in expected[4:]:
        got = next(restored)
        assert np.array_equal(got["label"], want["label"]) and np.array_equal(got["image"], want["image"])


@pytest.mark.slow
def test_worker_processes_start_after_jax_has_run():
    """grain spawns its workers (never forks), so a process with JAX's threads running cannot deadlock."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import cv2, numpy as np, jax.numpy as jnp
        from absl import flags
        from conftest import example_source
        from lungjax.data import pipeline
        flags.FLAGS.mark_as_parsed()
        assert float(jnp.ones(8).sum()) == 8.0
        source = example_source([{{"image": cv2.imencode(".png", np.full((16, 16, 1), i, np.uint8))[1].tobytes(),
                                   "label": i}} for i in range(8)])
        it = iter(pipeline.train_loader(source, batch_size=4, image_size={SIZE}, augment="light", seed=0,
                                        worker_count=2))
        print(sorted(next(it)["label"].tolist() + next(it)["label"].tolist()))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == str(list(range(8)))


@pytest.fixture(scope="module")
def nih_tree_built(nih_tree, tmp_path_factory):
    """The conftest tree, nih_tree_built (one process) as the NIH builder stores it: ArrayRecord, gray PNG."""
    from lungjax.data import nih

    return nih.build_dataset(
        nih_tree, tmp_path_factory.mktemp("pipeline_data"), nih.make_config("patient", 32), num_workers=1
    )


def test_example_source_equals_tfds_decoding(nih_tree_built):
    """The fast protobuf parse gives, record for record, what TFDS's own data source gives."""
    for split in nih_tree_built.info.splits:
        ours = records.data_source(nih_tree_built, split)
        theirs = nih_tree_built.as_data_source(split, decoders={"image": records.tfds.decode.SkipDecoding()})
        assert isinstance(ours, records.ExampleSource) and len(ours) == len(theirs) > 0
        for i in range(len(ours)):
            got, want = ours[i], theirs[i]
            assert got.keys() == want.keys()
            for key in want:
                assert type(got[key]) is type(want[key]), key
                if isinstance(want[key], np.ndarray):
                    assert got[key].dtype == want[key].dtype and np.array_equal(got[key], want[key]), key
                else:
                    assert got[key] == want[key], key
            png, label = records.image_and_feature(ours.records[i], "label")
            assert png == want["image"] and list(label) == [want["label"]]
            stored = records.decode_unfiltered_gray_png(png)  # the builder writes the fast path's form
            assert stored is not None and np.array_equal(
                stored, cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
            )


def test_loaders_read_built_records(nih_tree_built):
    source = records.data_source(nih_tree_built, "test")
    batch = next(iter(pipeline.train_loader(source, batch_size=2, image_size=24, augment="light", seed=0)))
    assert batch["image"].shape == (2, 24, 24, 1) and batch["image"].dtype == np.uint8
    assert set(batch) == {"image", "label"}
    batches = list(pipeline.eval_batches(source, batch_size=4, image_size=24))
    mask = np.concatenate([b["mask"] for b in batches])
    names = np.concatenate([b["image_name"] for b in batches])[mask]
    assert names.tolist() == [source[i]["image_name"] for i in range(len(source))]
    boxes = np.concatenate([b["bbox"] for b in batches])[mask]
    assert np.array_equal(boxes, np.stack([source[i]["bbox"] for i in range(len(source))]))


@pytest.mark.parametrize(
    "params",
    [
        [cv2.IMWRITE_PNG_COMPRESSION, 0, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE],  # fast path
        [cv2.IMWRITE_PNG_COMPRESSION, 9, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE],  # fast, deflated
        [cv2.IMWRITE_PNG_COMPRESSION, 0],  # filtered rows: libpng
        [cv2.IMWRITE_PNG_COMPRESSION, 3],
    ],
)
def test_decode_png_equals_opencv(params):
    rng = np.random.default_rng(1)
    image = cv2.GaussianBlur(rng.integers(0, 256, (37, 53), dtype=np.uint8), (5, 5), 0)
    png = cv2.imencode(".png", image, params)[1].tobytes()
    assert np.array_equal(records.decode_png(png), image)
    fast = params[-1] == cv2.IMWRITE_PNG_FILTER_NONE
    assert (records.decode_unfiltered_gray_png(png) is not None) == fast
    rgb = cv2.imencode(".png", np.dstack([image] * 3))[1].tobytes()  # not gray: libpng decides
    assert records.decode_unfiltered_gray_png(rgb) is None
    assert records.decode_unfiltered_gray_png(png[: len(png) // 2]) is None  # truncated
    with pytest.raises(ValueError):
        records.decode_png(b"not an image")


def test_affine_matrix_equals_the_matrix_product():
    """The float composition is scale * rotation @ shearing @ diag(zoom) with the same draws."""
    aug = augment.augmentation("seed")
    for seed in range(5):
        got = augment.affine_matrix(aug, 256, 224, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        theta, shear = np.deg2rad(rng.uniform(-30, 30)), np.deg2rad(rng.uniform(-0.2, 0.2))
        zoom = rng.uniform(0.7, 1.3, size=2)
        rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        linear = 256 / 224 * rotation @ np.array([[1.0, -np.sin(shear)], [0.0, np.cos(shear)]]) @ np.diag(zoom)
        offset = 255 / 2 + rng.uniform(-0.2, 0.2, size=2) * 256 - linear @ np.full(2, 223 / 2)
        np.testing.assert_allclose(got, np.hstack([linear, offset[:, None]]), rtol=0, atol=1e-12)


def textured_source(count: int, size: int) -> records.ExampleSource:
    """Records with smooth random textures (a radiograph's scale of detail) and label ``i``."""
    rng = np.random.default_rng(0)
    images = [cv2.GaussianBlur(rng.integers(0, 256, (size, size), dtype=np.uint8), (5, 5), 1.5) for _ in range(count)]
    return example_source(
        [
            {
                "image": cv2.imencode(".png", image)[1].tobytes(),
                "label": i,
                "image_name": f"{i:08d}_000.png".encode(),
                "patient_id": i,
                "bbox": np.full(4, -1.0, np.float32),
            }
            for i, image in enumerate(images)
        ]
    )


@pytest.mark.parametrize("preset", ["light", "seed", "chexnet"])
def test_augmentation_on_the_device_matches_the_host_path(preset):
    """The same records, seed and draws give the same augmented pixels on either path, to within
    OpenCV's fixed-point interpolation: mean absolute difference well under one grey level."""
    from lungjax.training import device_augment

    source, stored, out = textured_source(8, 48), 48, 40
    kwargs = dict(batch_size=4, image_size=out, augment=preset, seed=7, worker_count=0)
    host = iter(pipeline.train_loader(source, **kwargs))
    device = iter(pipeline.train_loader(source, augment_on_device=True, **kwargs))
    for _ in range(4):  # two epochs
        expected, got = next(host), next(device)
        assert got["image"].shape == (4, stored, stored, 1) and got["image"].dtype == np.uint8
        assert got["warp"].shape == (4, 2, 3) and got["intensity"].shape == (4, 2)
        np.testing.assert_array_equal(got["label"], expected["label"])
        warped = np.asarray(
            jax.jit(device_augment.augment, static_argnums=3)(got["image"], got["warp"], got["intensity"], out)
        )
        assert warped.shape == expected["image"].shape
        difference = np.abs(warped - expected["image"].astype(np.float32))
        assert difference.mean() < 0.1 and np.mean(difference > 1) < 0.01, (difference.mean(), difference.max())
        plain = np.stack(
            [cv2.resize(image[..., 0], (out, out), interpolation=cv2.INTER_LINEAR) for image in got["image"]]
        )
        assert np.abs(warped[..., 0] - plain).mean() > 1  # the augmentation did happen

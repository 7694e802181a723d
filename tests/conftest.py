"""The tests' one fixtures module: NIH-format trees, configs, built datasets, trained workdirs and the
shared XLA compilation cache.

Training takes tens of seconds, so the tests that need a checkpoint share session fixtures
(``tiny_workdir``, ``built``, ``four_device_run``) instead of training their own. Helpers that
subprocesses need as well (``tiny_train_config``) are plain functions here, imported as
``from conftest import ...``.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

# One persistent XLA compilation cache for the session, inherited by every subprocess the tests
# start: the same tiny models are compiled by many runs, and a cache hit costs a fraction of a compile.
CACHE_ENV = {
    "JAX_COMPILATION_CACHE_DIR": tempfile.mkdtemp(prefix="lungjax-tests-xla-cache-"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}
for _name, _value in CACHE_ENV.items():
    os.environ.setdefault(_name, _value)

from lungjax import xla_cpu  # noqa: E402

xla_cpu.apply_defaults()  # the XLA CPU flags a user gets, in the suite and every subprocess it starts

import cv2  # noqa: E402  (after the cache settings: jax reads them at import)
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from tensorflow_datasets.proto import tf_example_pb2  # noqa: E402

from lungjax.data import dataset, labels, nih_layout, records, union  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TREE_PATIENTS = 60  # 10 per class: every class reaches every split of the patient split
TREE_FILMS_PER_PATIENT = 2
TREE_IMAGE_SIZE = 32
TREE_BOX_SIZE = 10
# NIH spells the merged class as its two findings.
FINDING_OF_CLASS = {name: "Nodule" if name == "Nodule/Mass" else name for name in labels.CLASS_NAMES}


def _boxed_square(label: int, size: int, rng: np.random.Generator):
    """Noise with a bright square whose position depends on the class, and the square's box."""
    image = rng.integers(0, 80, size=(size, size), dtype=np.uint8)
    x = (label * 4 + int(rng.integers(0, 4))) % (size - TREE_BOX_SIZE)
    y = int(rng.integers(0, size - TREE_BOX_SIZE))
    image[y : y + TREE_BOX_SIZE, x : x + TREE_BOX_SIZE] = 220
    return image, (x, y, TREE_BOX_SIZE, TREE_BOX_SIZE)


def _brightness(label: int, size: int, rng: np.random.Generator):
    """Noise whose mean brightness depends on the class; no box."""
    return rng.normal(60 + 25 * label, 30, size=(size, size)).clip(0, 255).astype(np.uint8), None


def write_nih_tree(
    root: Path,
    *,
    patients: int = TREE_PATIENTS,
    films: int = TREE_FILMS_PER_PATIENT,
    size: int = TREE_IMAGE_SIZE,
    seed: int = 0,
    signal: str = "square",
) -> Path:
    """``Data_Entry_2017.csv``, ``images_001/images/*.png`` and ``BBox_List_2017.csv``, made up.

    ``signal="square"``: patient p has class p % 6 on all of its films, a bright square whose
    position depends on the class, and every film that is not "No Finding" a box around it.
    ``signal="brightness"``: every film draws its own class and is brighter the higher the class
    index, so a model can learn something; no boxes.
    """
    draw = {"square": _boxed_square, "brightness": _brightness}[signal]
    rng = np.random.default_rng(seed)
    image_dir = root / "images_001" / "images"
    image_dir.mkdir(parents=True)
    entries, boxes = [], []
    for patient in range(1, patients + 1):
        for film in range(films):
            label = (patient - 1) % labels.NUM_CLASSES if signal == "square" else int(rng.integers(labels.NUM_CLASSES))
            finding = FINDING_OF_CLASS[labels.CLASS_NAMES[label]]
            name = f"{patient:08d}_{film:03d}.png"
            image, box = draw(label, size, rng)
            cv2.imwrite(str(image_dir / name), image)
            entries.append(
                [name, finding, film, patient, 40 + patient % 30, "MF"[patient % 2], "PA", size, size, 0.143, 0.143]
            )
            if box is not None and finding != "No Finding":
                boxes.append([name, finding, *box])
    with (root / "Data_Entry_2017.csv").open("w", newline="") as handle:
        handle.write(nih_layout.DATA_ENTRY_HEADER + "\n")
        csv.writer(handle).writerows(entries)
    if boxes:
        with (root / "BBox_List_2017.csv").open("w", newline="") as handle:
            handle.write("Image Index,Finding Label,Bbox [x,y,w,h],,,\n")
            csv.writer(handle).writerows(boxes)
    return root


def load_config(name: str):
    """``configs/<name>.py``'s ``get_config()`` (the configs folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"lungjax_config_{name}", CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def split_examples(builder, split: str) -> list[dict]:
    """Every example of a built split, parsed, in order."""
    source = records.data_source(builder, split)
    return [source[i] for i in range(len(source))]


def example_source(rows: list[dict], name: str = "in_memory") -> records.ExampleSource:
    """Rows of features (bytes, ints, floats or float arrays) as a split of serialized Examples, the form
    a built split has on disk."""
    kinds = {
        bytes: ("bytes_list", np.dtype(object)),
        int: ("int64_list", np.dtype(np.int64)),
        float: ("float_list", np.dtype(np.float32)),
    }
    serialized, specs = [], {}
    for row in rows:
        example = tf_example_pb2.Example()
        for key, value in row.items():
            values = np.atleast_1d(value).tolist() if isinstance(value, np.ndarray) else [value]
            kind, dtype = kinds[type(values[0])]
            getattr(example.features.feature[key], kind).value.extend(values)
            specs[key] = (dtype, np.shape(value) if isinstance(value, np.ndarray) else ())
        serialized.append(example.SerializeToString())
    return records.ExampleSource(serialized, specs, name)


def write_dicom(path, stored: np.ndarray, photometric: str = "MONOCHROME2", **attributes):
    """A DICOM file (explicit VR little endian) of ``stored``: (H, W) or (frames, H, W) grayscale, or
    (H, W, 3) colour, 8 or 16 bits by its dtype, with ``attributes`` set last (invalid values allowed)."""
    import pydicom  # the test extras install it; a test that writes DICOM skips without it

    from lungjax.data import radiograph_files

    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = pydicom.dataset.FileDataset(str(path), {}, file_meta=meta, preamble=b"\x00" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    colour = photometric not in radiograph_files.MONOCHROME
    ds.Rows, ds.Columns = stored.shape[:2] if colour or stored.ndim == 2 else stored.shape[1:]
    if stored.ndim == 3 and not colour:
        ds.NumberOfFrames = stored.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = (3 if colour else 1), photometric
    if colour:
        ds.PlanarConfiguration = 0
    bits = stored.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = stored.tobytes()
    with pydicom.config.disable_value_validation():  # lower-case code strings, for the case-insensitive checks
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


# Fixtures that train a model or build one at full size (here and in the test modules): a test that
# uses one is marked ``slow``, so that ``-m "not slow"`` is the quick edit loop (README).
SLOW_FIXTURES = frozenset(
    {"tiny_workdir", "four_device_run", "base_run", "straight_run", "straight_union_run", "keras_files"}
)


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


# ------------------------------------------------------------------ the evaluation tests' workdir


@pytest.fixture(scope="session")
def nih_tree(tmp_path_factory) -> Path:
    """A 60-patient, 120-film NIH-format tree (32 px PNGs, boxes for every finding)."""
    return write_nih_tree(tmp_path_factory.mktemp("nih_tree"))


@pytest.fixture(scope="session")
def tiny_overrides(nih_tree) -> list[str]:
    """Command-line overrides that point ``configs/tiny.py`` at ``nih_tree``."""
    return ["--config.data.source=nih", f"--config.data.manual_dir={nih_tree}"]


@pytest.fixture(scope="session")
def tiny_config(nih_tree):
    """``configs/tiny.py`` reading ``nih_tree``: the config ``tiny_workdir`` was trained with."""
    config = load_config("tiny")
    config.data.source, config.data.manual_dir = "nih", str(nih_tree)
    return config


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory, tiny_overrides) -> Path:
    """A workdir trained for a few steps by ``configs/tiny.py`` and evaluated on its test split."""
    workdir = tmp_path_factory.mktemp("tiny_workdir")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "lungjax.main",
            f"--config={CONFIGS / 'tiny.py'}",
            f"--workdir={workdir}",
            *tiny_overrides,
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return workdir


@pytest.fixture(scope="session")
def exported(tiny_workdir, tiny_overrides) -> Path:
    """The bundle ``--mode export`` writes for ``tiny_workdir`` (``<workdir>/export/6``): tests that
    change a bundle copy it first."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lungjax.main",
            f"--config={CONFIGS / 'tiny.py'}",
            f"--workdir={tiny_workdir}",
            "--mode=export",
            *tiny_overrides,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tiny_workdir / "export" / "6"  # configs/tiny.py trains 6 steps; its best checkpoint is the last
    assert f"exported: {folder}" in result.stdout
    return folder


# ------------------------------------------------------------------ the training tests' data


# configs/tiny.py on the training tree, with dropout (so resume must restore the RNG) and a
# constant schedule (so runs of different lengths compile the same step and share the cache).
TRAIN_OVERRIDES = {"data.source": "nih", "schedule": "constant", "model.dropout_rate": 0.5}
TRAIN_TREE = {"patients": 30, "films": 3, "size": 32, "signal": "brightness"}


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """The training tests' NIH-format tree (``TRAIN_TREE``) under ``nih/``; its dataset goes to ``tfds/``.

    The path is the cache: the tree is made once per session."""
    root = tmp_path_factory.getbasetemp() / "lungjax_train_data"
    if not (root / "nih" / "Data_Entry_2017.csv").is_file():
        write_nih_tree(root / "nih", **TRAIN_TREE)
    return root


def tiny_train_config(data_root: Path):
    """``configs/tiny.py`` with ``TRAIN_OVERRIDES`` on the training tree under ``data_root``."""
    config = load_config("tiny")
    config.data.manual_dir = str(data_root / "nih")
    config.data.data_dir = str(data_root / "tfds")
    for key, value in TRAIN_OVERRIDES.items():
        section, _, name = key.rpartition(".")
        setattr(config[section] if section else config, name, value)
    return config


# A union of two NIH-format builds: the training tree (``nih``) drawn twice as often as a small phantom.
UNION_SOURCES = (("nih", 2.0), ("phantom", 1.0))
UNION_PHANTOM_PATIENTS = 12


def union_train_config(data_root: Path):
    """``tiny_train_config`` training on ``UNION_SOURCES`` (each source built under ``tfds/<source>``)."""
    config = tiny_train_config(data_root)
    config.data.sources, config.data.phantom_patients = UNION_SOURCES, UNION_PHANTOM_PATIENTS
    return config


def command_line_overrides(data_root: Path) -> list[str]:
    """The same config for ``python -m lungjax.main --config configs/tiny.py``."""
    values = {**TRAIN_OVERRIDES, "data.manual_dir": data_root / "nih", "data.data_dir": data_root / "tfds"}
    return [f"--config.{key}={value}" for key, value in values.items()]


@pytest.fixture(scope="session")
def compilation_cache() -> dict[str, str]:
    """The XLA cache settings, for tests that start subprocesses with an environment of their own."""
    return {name: os.environ[name] for name in CACHE_ENV}


@pytest.fixture(scope="session")
def built(data_root):
    """Builds the training tests' dataset once; returns the builder."""
    return dataset.build(tiny_train_config(data_root).data, data_root)


@pytest.fixture(scope="session")
def union_built(data_root):
    """Builds the union config's sources once; returns source name -> builder."""
    return union.build(union_train_config(data_root).data, data_root)


# The multi-device reference: SGD, as Adam's g / sqrt(v) turns rounding noise in near-zero
# gradients into lr-sized steps.
FOUR_DEVICE_STEPS, FOUR_DEVICE_OPTIMIZER = 4, "sgd"


def four_device_config(data_root: Path):
    config = tiny_train_config(data_root)
    config.num_train_steps, config.optimizer = FOUR_DEVICE_STEPS, FOUR_DEVICE_OPTIMIZER
    return config


@pytest.fixture(scope="session")
def four_device_run(tmp_path_factory, data_root, built, compilation_cache) -> Path:
    """``four_device_config`` trained in one process with 4 CPU devices: the workdir that the
    4-vs-1-device and the 2-process tests compare against. A subprocess, as the device count is
    fixed when JAX starts; run once per session."""
    workdir = tmp_path_factory.mktemp("four_devices") / "run"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import jax
        from pathlib import Path
        from conftest import four_device_config
        from lungjax.training import loop
        assert jax.device_count() == 4 and jax.process_count() == 1
        loop.train(four_device_config(Path({str(data_root)!r})), {str(workdir)!r})
    """)
    env = {
        **os.environ,
        **compilation_cache,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
    }
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


XRV_WHEEL = "torchxrayvision-1.5.7-py3-none-any.whl"


@pytest.fixture(scope="session")
def xrv_wheel() -> Path:
    """torchxrayvision's wheel, which ships real label files (CheXpert, PadChest, VinDr, NIH ...; metadata
    only, no images): ``$LUNGJAX_XRV_WHEEL``, else ``<cache>/lungjax/`` + XRV_WHEEL (``$XDG_CACHE_HOME`` or
    ``~/.cache``; ``.ci/run`` downloads it there with ``pip download --no-deps torchxrayvision==1.5.7``).
    Without it the tests that need it skip, unless ``LUNGJAX_REQUIRE_XRV_WHEEL=1`` (CI): then they fail.
    """
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lungjax"
    path = Path(os.environ.get("LUNGJAX_XRV_WHEEL") or cache / XRV_WHEEL)
    if not path.is_file():
        message = f"torchxrayvision's wheel not found at {path} (pip download --no-deps torchxrayvision==1.5.7)"
        if os.environ.get("LUNGJAX_REQUIRE_XRV_WHEEL") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def xrv_table(xrv_wheel):
    """Opens one of the wheel's label files, read straight from the wheel, never copied into the repository."""
    with zipfile.ZipFile(xrv_wheel) as wheel:

        def open_table(name: str) -> io.BytesIO:
            """``torchxrayvision/data/<name>`` decompressed, as a file pandas reads."""
            return io.BytesIO(gzip.decompress(wheel.read(f"torchxrayvision/data/{name}")))

        yield open_table


# ------------------------------------------------------------------------------ the HTML pages in a browser

CHROMIUM = shutil.which("chromium")
# As the machine's own probe starts it (README of the environment): without the background-networking
# flags Chromium opens connections of its own, which the page test would count against the page.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def browser_or_skip():
    """The sync Playwright API and Chromium's path; skipped on a machine without them, failed in CI."""
    missing = None if CHROMIUM else "Debian's chromium (apt-get install chromium)"
    try:
        from playwright import sync_api
    except ImportError:
        sync_api, missing = None, missing or "playwright (pip install '.[test]')"
    if missing:
        if os.environ.get("LUNGJAX_REQUIRE_BROWSER"):
            pytest.fail(f"the HTML report test needs {missing}")
        pytest.skip(f"needs {missing}")
    return sync_api


def check_number_cells(cells: list, report: dict) -> None:
    """Every number a page's cell shows equals, to the 3 decimals shown, the report.json value its
    ``data-keys`` name (cells as ``[text, keys]`` read from the page)."""
    for shown, keys in cells:
        numbers = [float(n) for n in NUMBER.findall(shown.replace("\u2212", ""))]
        values = []
        for key in keys:
            node = report
            for part in key:
                node = node[part]
            values.append(node)
        assert len(numbers) >= len(values), (shown, keys)
        for number, value in zip(numbers, values, strict=True):
            assert number == (value if isinstance(value, int) else round(value, 3)), (shown, keys, value)

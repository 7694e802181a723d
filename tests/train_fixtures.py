"""Shared by the training tests: a small NIH-format tree of random images and a tiny config on it.

The tree and its built dataset live in pytest's session temp dir and are made once per session
(the path is the cache), so every test reuses one build.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import importlib.util

import cv2
import jax
import numpy as np
import pytest

from lungjax.data import dataset

FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Nodule", "Pneumothorax", "No Finding")
PATIENTS, IMAGES_PER_PATIENT, SIZE = 30, 3, 32
CONFIGS = Path(__file__).parent.parent / "configs"


def load_config(name: str):
    """``configs/<name>.py``'s ``get_config()`` (the configs folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"lungjax_config_{name}", CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def write_nih_tree(root: Path) -> None:
    """``Data_Entry_2017.csv`` and ``images_001/images/*.png``: random 32-px films, one class each,
    with a class-dependent brightness so a model can learn something."""
    rng = np.random.default_rng(0)
    images = root / "images_001" / "images"
    images.mkdir(parents=True)
    rows = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"]
    for patient in range(1, PATIENTS + 1):
        for k in range(IMAGES_PER_PATIENT):
            label = int(rng.integers(len(FINDINGS)))
            name = f"{patient:08d}_{k:03d}.png"
            pixels = rng.normal(60 + 25 * label, 30, size=(SIZE, SIZE)).clip(0, 255).astype(np.uint8)
            cv2.imwrite(str(images / name), pixels)
            rows.append(f"{name},{FINDINGS[label]},{k},{patient},{40 + patient},M,PA")
    (root / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.getbasetemp() / "lungjax_train_data"
    tree = root / "nih"
    if not (tree / "Data_Entry_2017.csv").is_file():
        write_nih_tree(tree)
    return root


# configs/tiny.py on the fixture tree, with dropout (so resume must restore the RNG) and a
# constant schedule (so runs of different lengths compile the same step and share the cache).
OVERRIDES = {"data.source": "nih", "schedule": "constant", "model.dropout_rate": 0.5}


def tiny_config(data_root: Path):
    config = load_config("tiny")
    config.data.manual_dir = str(data_root / "nih")
    config.data.data_dir = str(data_root / "tfds")
    for key, value in OVERRIDES.items():
        section, _, name = key.rpartition(".")
        setattr(config[section] if section else config, name, value)
    return config


def command_line_overrides(data_root: Path) -> list[str]:
    """The same config for ``python -m lungjax.main --config configs/tiny.py``."""
    values = {**OVERRIDES, "data.manual_dir": data_root / "nih", "data.data_dir": data_root / "tfds"}
    return [f"--config.{key}={value}" for key, value in values.items()]


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """A persistent XLA cache shared by the tests and their subprocesses: the tiny step compiles once."""
    path = str(tmp_path_factory.getbasetemp() / "jax_cache")
    settings = {"jax_compilation_cache_dir": path, "jax_persistent_cache_min_compile_time_secs": 0.0,
                "jax_persistent_cache_min_entry_size_bytes": 0}
    previous = {key: getattr(jax.config, key) for key in settings}
    for key, value in settings.items():
        jax.config.update(key, value)
    yield {key.upper(): str(value) for key, value in settings.items()}
    for key, value in previous.items():
        jax.config.update(key, value)


@pytest.fixture(scope="session")
def built(data_root):
    """Builds the dataset once; returns the builder."""
    config = tiny_config(data_root)
    return dataset.build(config.data, data_root)


# The multi-device reference: SGD, as Adam's g / sqrt(v) turns rounding noise in near-zero
# gradients into lr-sized steps.
FOUR_DEVICE_STEPS, FOUR_DEVICE_OPTIMIZER = 4, "sgd"


def four_device_config(data_root: Path):
    config = tiny_config(data_root)
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
        from train_fixtures import four_device_config
        from lungjax import train
        assert jax.device_count() == 4 and jax.process_count() == 1
        train.train(four_device_config(Path({str(data_root)!r})), {str(workdir)!r})
    """)
    env = {**os.environ, **compilation_cache, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir

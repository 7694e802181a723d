"""Exact resume, refusing a config that does not fit the checkpoint, and SIGTERM preemption."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import command_line_overrides, tiny_train_config
from flax import nnx

from lungjax import main, models
from lungjax.data import labels
from lungjax.runtime import checkpoint, logs, run_info
from lungjax.training import loop as train

ROOT = Path(__file__).parent.parent


def saved_params(workdir, step=None):
    """The ``model`` item of a checkpoint, as NumPy arrays."""
    manager = checkpoint.make_manager(workdir, read_only=True)
    step = manager.latest_step() if step is None else step
    config = tiny_train_config(Path("."))
    model = models.from_config(config.model, num_classes=labels.NUM_CLASSES, half_precision=False)
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    restored = checkpoint.restore_model(manager, step, {"params": params, "batch_stats": batch_stats})
    manager.close()
    return jax.tree.map(np.asarray, restored)


def assert_bitwise_equal(a, b):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def straight_run(data_root, built, tmp_path_factory):
    """8 steps (more than one epoch: validation at 7 and 8) in one go."""
    workdir = tmp_path_factory.mktemp("straight")
    config = tiny_train_config(data_root)
    config.num_train_steps = 8
    assert train.train(config, workdir)
    return workdir


def test_stopped_and_resumed_run_is_bitwise_identical(straight_run, data_root, tmp_path):
    config = tiny_train_config(data_root)
    config.num_train_steps = 4
    assert train.train(config, tmp_path)
    config.num_train_steps = 8  # a safe key: the second call resumes at step 4
    assert train.train(config, tmp_path)
    assert checkpoint.make_manager(tmp_path, read_only=True).latest_step() == 8
    assert_bitwise_equal(saved_params(straight_run), saved_params(tmp_path))
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [json.loads(line)["step"] for line in (straight_run / "metrics.jsonl").read_text().splitlines()]


def test_config_that_does_not_fit_is_refused(straight_run, data_root):
    config = tiny_train_config(data_root)
    config.num_train_steps, config.log_every_steps, config.eval.batch_size = 8, 5, 8  # safe changes
    assert train.train(config, straight_run)  # nothing left to do: accepted
    config.model.width = 0.25
    config.learning_rate = 0.5
    with pytest.raises(ValueError, match=r"learning_rate: checkpoint 0.001, config 0.5; model.width"):
        train.train(config, straight_run)


@pytest.mark.slow
def test_sigterm_saves_exits_for_a_requeue_and_the_next_run_continues(data_root, built, compilation_cache, tmp_path):
    env = {**os.environ, **compilation_cache, "JAX_PLATFORMS": "cpu"}
    command = [
        sys.executable,
        "-m",
        "lungjax.main",
        "--config",
        str(ROOT / "configs" / "tiny.py"),
        "--workdir",
        str(tmp_path),
        "--config.num_train_steps=100000",
        "--config.checkpoint_every_steps=100000",
        "--config.eval_every_steps=100000",
        *command_line_overrides(data_root),
    ]
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metrics_file = tmp_path / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics_file.is_file() and len(metrics_file.read_text().splitlines()) >= 2):
        assert process.poll() is None, process.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the run logged nothing in 240 s"
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0].decode()
    assert process.returncode == main.PREEMPTED_EXIT_CODE == 75, output[-3000:]
    # No save or validation is due for 100000 steps: the only checkpoint is the one at the signal.
    saved = checkpoint.make_manager(tmp_path, read_only=True).all_steps()
    logged = [json.loads(line)["step"] for line in metrics_file.read_text().splitlines()]
    assert len(saved) == 1 and saved[0] >= logged[-1] >= 4, (saved, logged)
    assert f"lungjax: stopped at step {saved[0]} by a signal; rerun the same command to resume" in output
    config = tiny_train_config(data_root)
    config.num_train_steps = saved[0] + 2
    assert train.train(config, tmp_path)
    assert checkpoint.make_manager(tmp_path, read_only=True).latest_step() == saved[0] + 2
    resumed = [json.loads(line)["step"] for line in metrics_file.read_text().splitlines()][len(logged) :]
    assert resumed and resumed[-1] == saved[0] + 2 and min(resumed) > saved[0]


def test_refused_resume_leaves_run_info_as_it_was(straight_run, data_root):
    before = (straight_run / run_info.RUN_INFO_FILE).read_bytes()
    config = tiny_train_config(data_root)
    config.learning_rate = 0.5
    with pytest.raises(ValueError, match="does not fit the checkpoint"):
        train.train(config, straight_run)
    assert (straight_run / run_info.RUN_INFO_FILE).read_bytes() == before


@pytest.mark.slow
def test_a_resume_logs_each_replayed_step_once(data_root, built, tmp_path):
    """A kill after logging steps 4..6 but before the checkpoint of step 6 landed: the resumed run
    replays them, and metrics.jsonl keeps one record per step."""
    config = tiny_train_config(data_root)
    config.num_train_steps = 6  # logs at 2, 4, 6; saves at 3 and 6
    assert train.train(config, tmp_path)
    logged = [json.loads(line)["step"] for line in (tmp_path / logs.METRICS_FILE).read_text().splitlines()]
    shutil.rmtree(tmp_path / checkpoint.CHECKPOINT_DIR / "6")
    with (tmp_path / logs.METRICS_FILE).open("a") as handle:
        handle.write('{"step": 7, "loss"')  # a record the kill cut short
    assert train.train(config, tmp_path)
    steps = [json.loads(line)["step"] for line in (tmp_path / logs.METRICS_FILE).read_text().splitlines()]
    assert logged == steps == [2, 4, 6]


@pytest.mark.slow  # three more short runs
def test_augmentation_on_the_device_resumes_bitwise_and_trains_as_on_the_host(straight_run, data_root, tmp_path):
    """The same draws from the same records: a run with ``augment_on_device`` stops and resumes exactly,
    and logs the host-augmented run's training losses up to rounding."""
    config = tiny_train_config(data_root)
    config.augment_on_device, config.num_train_steps = True, 8
    assert train.train(config, tmp_path / "straight")
    config.num_train_steps = 4
    assert train.train(config, tmp_path / "resumed")
    config.num_train_steps = 8
    assert train.train(config, tmp_path / "resumed")
    on_device = saved_params(tmp_path / "straight")
    assert_bitwise_equal(on_device, saved_params(tmp_path / "resumed"))
    host_losses, device_losses = (
        [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        for run in (straight_run, tmp_path / "straight")
    )
    np.testing.assert_allclose(device_losses, host_losses, rtol=1e-3)

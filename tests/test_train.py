"""A training run: compiled once, logs (metrics.jsonl, TensorBoard, run_info.json), best checkpoint,
non-finite stop, and 4 devices against 1."""

import json
import re

import jax
import numpy as np
import pytest
from conftest import four_device_config, tiny_train_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_resume import saved_params

from lungjax.runtime import checkpoint, logs, run_info
from lungjax.training import loop as train
from lungjax.training import step as step_lib


@pytest.mark.slow
def test_run_compiles_once_and_logs(data_root, built, tmp_path, monkeypatch):
    traces = []
    original = step_lib.train_step

    def counted(*args, **kwargs):
        traces.append(1)  # runs only while jax traces the step
        return original(*args, **kwargs)

    monkeypatch.setattr(step_lib, "train_step", counted)
    config = tiny_train_config(data_root)
    config.num_train_steps = 9  # 7 steps per epoch: validations at 7 and 9, saves at 3, 6, 7, 9
    assert train.train(config, tmp_path)
    assert len(traces) == 1

    records = [json.loads(line) for line in (tmp_path / logs.METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6, 7, 8, 9]
    for record in records:
        assert {"epoch", "loss", "accuracy", "learning_rate", "images_per_sec"} <= record.keys()
    validated = {r["step"]: r for r in records if "val_loss" in r}
    assert set(validated) == {7, 9}
    assert {"val_accuracy", "val_macro_auc"} <= validated[7].keys()

    info = json.loads((tmp_path / run_info.RUN_INFO_FILE).read_text())
    assert info["dataset_fingerprint"] == run_info.dataset_fingerprint(built)
    assert sum(info["train_class_counts"].values()) > 0 and len(info["class_weights"]) == 6
    assert info["devices"] and info["config"]["num_train_steps"] == 9

    events = EventAccumulator(str(tmp_path / logs.TENSORBOARD_DIR), size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Scalars("loss")] == [2, 4, 6, 7, 8, 9]
    assert [e.step for e in events.Scalars("val_macro_auc")] == [7, 9]
    assert {"validation/inputs", "validation/confusion_matrix"} <= set(events.Tags()["images"])

    manager = checkpoint.make_manager(tmp_path, read_only=True)
    best = max(validated, key=lambda s: validated[s]["val_macro_auc"])
    assert checkpoint.best_step(manager) == best
    assert best in manager.all_steps() and manager.latest_step() == 9
    assert (
        manager.restore(9, args=checkpoint.ocp.args.Composite(run=checkpoint.ocp.args.JsonRestore()))["run"][
            "dataset_fingerprint"
        ]
        == info["dataset_fingerprint"]
    )


@pytest.mark.slow
def test_non_finite_step_stops_and_keeps_last_good_checkpoint(data_root, built, tmp_path):
    config = tiny_train_config(data_root)
    config.schedule, config.learning_rate, config.warmup_epochs = "cosine", 1e35, 1.0  # lr 0 at step 1
    config.num_train_steps, config.checkpoint_every_steps = 7, 1
    with pytest.raises(FloatingPointError, match=r"at step (\d+)") as raised:
        train.train(config, tmp_path)
    bad = int(re.search(r"at step (\d+)", str(raised.value)).group(1))
    manager = checkpoint.make_manager(tmp_path, read_only=True)
    assert bad >= 2 and manager.latest_step() == bad - 1
    assert f"last good checkpoint is step {bad - 1}" in str(raised.value)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(saved_params(tmp_path)))


@pytest.mark.slow
def test_four_devices_match_one(data_root, four_device_run, tmp_path):
    config = four_device_config(data_root)
    assert jax.device_count() == 1
    train.train(config, tmp_path / "one")
    four, one = saved_params(four_device_run), saved_params(tmp_path / "one")
    for part in ("params", "batch_stats"):  # relative to the norm of all of them
        a = np.concatenate([x.ravel() for x in jax.tree.leaves(four[part])])
        b = np.concatenate([x.ravel() for x in jax.tree.leaves(one[part])])
        assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(b), part

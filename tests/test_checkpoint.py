"""Which checkpoints are kept and which is ``best``, and which config changes a resume accepts."""

import jax.numpy as jnp
import pytest

from lungjax.runtime import checkpoint


def save(manager, step, metrics):
    checkpoint.save(
        manager,
        step,
        model_state={"w": jnp.full((2,), float(step))},
        train_state={"s": jnp.int32(step)},
        data_state=b"{}",
        config={},
        run={},
        metrics=metrics,
    )


def test_best_is_kept_beside_the_latest_and_found_by_best_step(tmp_path):
    manager = checkpoint.make_manager(tmp_path, max_to_keep=2)
    assert checkpoint.best_step(manager) is None
    save(manager, 1, {})
    assert checkpoint.best_step(manager) is None  # saved, but never validated
    aucs = {2: 0.7, 3: 0.9, 4: 0.8, 5: None, 6: 0.6, 7: None}
    for step, auc in aucs.items():
        save(manager, step, {} if auc is None else {checkpoint.BEST_METRIC: auc, "val_loss": 1.0})
    manager.wait_until_finished()
    assert checkpoint.best_step(manager) == 3
    assert manager.all_steps() == [3, 6, 7]  # best + latest two
    manager.close()
    reader = checkpoint.make_manager(tmp_path, read_only=True)  # what evaluation opens
    assert checkpoint.best_step(reader) == 3


def test_safe_changes_pass_and_others_are_named():
    saved = {
        "num_train_steps": 10,
        "learning_rate": 0.1,
        "eval": {"split": "test"},
        "model": {"width": 1.0},
        "data": {"stored_size": 64, "build_workers": 1},
    }
    current = {
        "num_train_steps": 20,
        "learning_rate": 0.1,
        "eval": {"split": "validation"},
        "model": {"width": 1.0},
        "data": {"stored_size": 64, "build_workers": 4},
    }
    checkpoint.check_resumable(saved, current)
    # A key an older checkpoint lacks counts as its default: the new key changed nothing for that run.
    newer = {**current, "optimizer_flatten": False}
    checkpoint.check_resumable(saved, newer, lambda c: {"optimizer_flatten": False, **c})
    with pytest.raises(ValueError, match=r"optimizer_flatten: checkpoint False, config True"):
        checkpoint.check_resumable(
            saved, {**newer, "optimizer_flatten": True}, lambda c: {"optimizer_flatten": False, **c}
        )
    current["model"]["width"], current["data"]["stored_size"] = 0.5, 32
    with pytest.raises(ValueError, match=r"\(data.stored_size: checkpoint 64, config 32; model.width: "):
        checkpoint.check_resumable(saved, current)

"""Orbax checkpoints in ``<workdir>/checkpoints``: what a run saves and what each reader restores.

One checkpoint holds four items, so a reader restores only what it needs:
``model`` (parameters and BatchNorm statistics — all that evaluation reads), ``train`` (optimizer
state, step, RNG), ``data`` (the grain iterator's state after the last consumed batch) and
``config`` (the resolved config, JSON). Saving is asynchronous; Orbax writes each step to a
temporary directory and renames it when complete, so a partial checkpoint is never selected.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"
MODEL, TRAIN, DATA, CONFIG = "model", "train", "data", "config"


def checkpoint_dir(workdir: str | os.PathLike) -> Path:
    return Path(workdir).absolute() / CHECKPOINT_DIR


def make_manager(workdir: str | os.PathLike, *, max_to_keep: int = 3, read_only: bool = False
                 ) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                           read_only=read_only, enable_async_checkpointing=True)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                                 item_names=(MODEL, TRAIN, DATA, CONFIG))


def save(manager: ocp.CheckpointManager, step: int, *, model_state: Any, train_state: Any,
         data_state: bytes, config: dict) -> None:
    """Starts an asynchronous save of one step (``manager.wait_until_finished()`` to block)."""
    manager.save(step, args=ocp.args.Composite(**{
        MODEL: ocp.args.StandardSave(model_state),
        TRAIN: ocp.args.StandardSave(train_state),
        DATA: ocp.args.JsonSave(json.loads(data_state)),
        CONFIG: ocp.args.JsonSave(config),
    }))


def abstract(tree: Any) -> Any:
    """Shapes, dtypes and shardings of ``tree``: the restore target, without touching values."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def restore_training(manager: ocp.CheckpointManager, step: int, *, model_state: Any, train_state: Any
                     ) -> tuple[Any, Any, bytes]:
    """Restores a run to continue training: model, optimizer/step/RNG, and the data iterator state."""
    restored = manager.restore(step, args=ocp.args.Composite(**{
        MODEL: ocp.args.StandardRestore(abstract(model_state)),
        TRAIN: ocp.args.StandardRestore(abstract(train_state)),
        DATA: ocp.args.JsonRestore(),
    }))
    return restored[MODEL], restored[TRAIN], json.dumps(restored[DATA]).encode()


def restore_config(manager: ocp.CheckpointManager, step: int) -> dict:
    return manager.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[CONFIG]


def restore_model(manager: ocp.CheckpointManager, step: int, model_state: Any) -> Any:
    """Restores parameters and BatchNorm statistics only (no optimizer state): for inference."""
    return manager.restore(step, args=ocp.args.Composite(**{
        MODEL: ocp.args.StandardRestore(abstract(model_state))}))[MODEL]

"""Orbax checkpoints in ``<workdir>/checkpoints``: what a run saves and what each reader restores.

One checkpoint holds five items, so a reader restores only what it needs:

* ``model``: ``{"params", "batch_stats"}``, all that evaluation reads. With ``ema_decay > 0`` its
  params are the EMA of the parameters (what validation and evaluation use);
* ``train``: ``{"step", "opt_state", "rng", "plateau"}`` and, with an EMA, ``"params"``: the raw
  optimised parameters training resumes from;
* ``data``: the grain iterator's state after the last consumed batch;
* ``config``: the resolved config (JSON);
* ``run``: JSON facts about the run that are not config: the dataset fingerprint and the
  early-stopping counters.

Saving is asynchronous; Orbax writes each step to a temporary directory
(``<step>.orbax-checkpoint-tmp-<n>``) and renames it when complete, so a partial checkpoint is never
selected; a writable manager removes the temporary directories a killed run left behind. The latest
``keep`` checkpoints are kept, plus the one with the best validation macro ROC-AUC (``best_step``).

A checkpoint that is complete but unreadable (a file truncated or removed since) is not trusted
either: ``restore_latest_good`` falls back to the newest step that restores, and moves the damaged
ones to ``<workdir>/damaged_checkpoints/`` (never deleting them) so that the run can save those
steps again. With several processes a step one of them cannot read is damaged for all: they agree
on each step before going on, so every process resumes from the same one. Nothing here unpickles:
items are Orbax array or JSON items only.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

from lungjax import trees
from lungjax.runtime import distributed

CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "damaged_checkpoints"
MODEL, TRAIN, DATA, CONFIG, RUN = "model", "train", "data", "config", "run"
BEST_METRIC = "val_macro_auc"
# What ``config.eval.checkpoint`` may name besides a step number.
CHECKPOINT_CHOICES = ("best", "latest")

# Config keys that may differ between a checkpoint and the run resuming from it: they change how
# long the run goes, what it logs or how often it saves, not what a step computes. A key ending
# in "." is a prefix.
SAFE_KEYS = (
    "model.stem_space_to_depth",  # the same function of the same parameters
    "model.stem_pad_channels",  # likewise
    "model.strided_space_to_depth",  # likewise
    "num_train_steps",
    "num_epochs",
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "eval_every_steps",
    "early_stop_patience",
    "worker_count",
    "eval.",
    "external.",  # --mode external reads other runs; nothing of training
    "data.build_workers",
    "data.data_dir",
    "data.manual_dir",
)


class CheckpointError(ValueError):
    """A checkpoint cannot be used to resume; the message says which and why."""


def checkpoint_dir(workdir: str | os.PathLike) -> Path:
    return Path(workdir).absolute() / CHECKPOINT_DIR


def _best_metric(metrics: dict) -> float:
    """Steps saved without a validation AUC rank last (every save passes metrics, so Orbax does
    not warn about missing ones)."""
    return metrics.get(BEST_METRIC, -math.inf)


def make_manager(workdir: str | os.PathLike, *, max_to_keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
    """Keeps the latest ``max_to_keep`` checkpoints and the best by ``BEST_METRIC``."""
    policy = policies.AnyPreservationPolicy(
        [
            policies.LatestN(max_to_keep),
            policies.BestN(get_metric_fn=_best_metric, reverse=False, n=1, keep_checkpoints_without_metrics=False),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        best_fn=_best_metric,
        best_mode="max",
        create=not read_only,
        read_only=read_only,
        cleanup_tmp_directories=not read_only,
        enable_async_checkpointing=True,
    )
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=(MODEL, TRAIN, DATA, CONFIG, RUN))


def best_step(manager: ocp.CheckpointManager) -> int | None:
    """The kept step with the highest validation macro ROC-AUC; None when no save had one."""
    step = manager.best_step()
    if step is None or BEST_METRIC not in (manager.metrics(step) or {}):
        return None
    return step


def save(
    manager: ocp.CheckpointManager,
    step: int,
    *,
    model_state: Any,
    train_state: Any,
    data_state: bytes,
    config: dict,
    run: dict,
    metrics: dict,
) -> None:
    """Starts an asynchronous save of one step (``manager.wait_until_finished()`` to block).

    ``metrics`` with ``BEST_METRIC`` makes a validated step a candidate for ``best``.
    """
    manager.save(
        step,
        args=ocp.args.Composite(
            **{
                MODEL: ocp.args.StandardSave(model_state),
                TRAIN: ocp.args.StandardSave(train_state),
                DATA: ocp.args.JsonSave(json.loads(data_state)),
                CONFIG: ocp.args.JsonSave(config),
                RUN: ocp.args.JsonSave(run),
            }
        ),
        metrics=metrics,
    )


def abstract(tree: Any) -> Any:
    """Shapes, dtypes and shardings of ``tree``: the restore target, without touching values."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def restore_training(
    manager: ocp.CheckpointManager, step: int, *, model_state: Any, train_state: Any
) -> tuple[Any, Any, bytes, dict]:
    """Restores a run to continue training: model, train item, data iterator state and run facts."""
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            **{
                MODEL: ocp.args.StandardRestore(abstract(model_state)),
                TRAIN: ocp.args.StandardRestore(abstract(train_state)),
                DATA: ocp.args.JsonRestore(),
                RUN: ocp.args.JsonRestore(),
            }
        ),
    )
    return restored[MODEL], restored[TRAIN], json.dumps(restored[DATA]).encode(), restored[RUN]


def restore_config(manager: ocp.CheckpointManager, step: int) -> dict:
    return manager.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[CONFIG]


def restore_model(manager: ocp.CheckpointManager, step: int, model_state: Any) -> Any:
    """Restores parameters and BatchNorm statistics only (no optimizer state): for inference."""
    return manager.restore(step, args=ocp.args.Composite(**{MODEL: ocp.args.StandardRestore(abstract(model_state))}))[
        MODEL
    ]


def params_sha256(model_state: Any) -> str:
    """sha256 of a model item's values in a canonical order: each leaf's path (as JAX names it in the
    tree that ``evaluation.inference`` restores), dtype, shape and bytes, leaves sorted by path. What
    every artifact fitted for a checkpoint names it by (with its step): a retrained model saved at the
    same step has other weights, hence another digest. Deterministic across processes and restores
    (replicated arrays are read from this process's first copy), and cheap: one pass over the weights
    on the host (about 0.1 s for DenseNet-121's 28 MB)."""
    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(model_state)[0]
    named = sorted(((jax.tree_util.keystr(path), leaf) for path, leaf in leaves), key=lambda item: item[0])
    for name, leaf in named:
        value = np.asarray(leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf)
        digest.update(f"{name}|{value.dtype.name}|{value.shape}\n".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def is_safe(key: str) -> bool:
    """Whether a change of ``key`` leaves the model, its data and its optimisation as they were."""
    return any(key.startswith(safe) if safe.endswith(".") else key == safe for safe in SAFE_KEYS)


def check_resumable(saved_config: dict, config: dict, complete: Callable[[dict], dict] | None = None) -> None:
    """Refuses to resume with a config whose model, data or optimisation differ from the checkpoint's.

    JSON turns tuples into lists, so values are compared after the same round trip. ``complete``
    (``lungjax.config.base.complete``) fills the keys a checkpoint written by an older lungjax lacks.
    """
    saved = trees.flatten(json.loads(json.dumps(saved_config if complete is None else complete(saved_config))))
    current = trees.flatten(json.loads(json.dumps(config)))
    differing = sorted(
        key for key in saved.keys() | current.keys() if saved.get(key) != current.get(key) and not is_safe(key)
    )
    if differing:
        details = "; ".join(f"{key}: checkpoint {saved.get(key)!r}, config {current.get(key)!r}" for key in differing)
        raise CheckpointError(
            f"the config does not fit the checkpoint in this workdir ({details}); use a new "
            f"workdir, or change only {', '.join(SAFE_KEYS)}"
        )


def check_same_dataset(run: dict, fingerprint: str, step: int) -> None:
    """Refuses to resume on data other than the checkpoint was trained on: its batches would differ."""
    saved = run.get("dataset_fingerprint")
    if saved != fingerprint:
        raise CheckpointError(
            f"the dataset changed under this run: checkpoint step {step} was trained on "
            f"dataset fingerprint {saved}, the dataset on disk has {fingerprint}; rebuild "
            f"the original dataset or start a new workdir"
        )


class Damaged(Exception):
    """One step could not be read back; the message says why."""


def _restore_step(manager, step: int, config: dict, complete, model_state: Any, train_state: Any):
    """Restores one step, separating damage (``Damaged``) from a config that does not fit."""
    try:
        saved_config = restore_config(manager, step)
    except Exception as err:  # Orbax raises many types for unreadable files
        raise Damaged(f"{type(err).__name__}: {err}") from err
    check_resumable(saved_config, config, complete)
    try:
        return restore_training(manager, step, model_state=model_state, train_state=train_state)
    except Exception as err:
        raise Damaged(f"{type(err).__name__}: {err}") from err


def short_reason(reason: str) -> str:
    """The first line of a failure, at most 300 characters: Orbax's messages run to pages."""
    line = reason.splitlines()[0] if reason else reason
    return line if len(line) <= 300 else line[:300] + "..."


def first_readable(steps, read: Callable[[int], Any]) -> tuple[int | None, Any, dict[int, str]]:
    """``(step, read(step), failures)`` for the first of ``steps`` that ``read`` restores on every process,
    ``failures`` naming why each step before it could not be (``read`` raises ``Damaged``); the step
    is None when none could. Training (which moves the damaged steps aside) and evaluation (which only
    reads) both fall back through this loop, so every process settles on the same step."""
    failures = {}
    with _abandoned_reads_collected():
        for step in steps:
            try:
                restored, reason = read(step), None
            except Damaged as err:
                restored, reason = None, short_reason(str(err))
            if not distributed.everywhere(reason is None):
                failures[step] = reason or "unreadable on another process"
                continue
            return step, restored, failures
    return None, None, failures


@contextlib.contextmanager
def _abandoned_reads_collected() -> Iterator[None]:
    """Orbax reads a step's arrays in coroutines; when one fails, the others are abandoned, and each
    raises again when it is garbage collected (``Exception ignored in: <coroutine ...>``, a TensorStore
    spec of dozens of lines each, at exit: pages for one damaged step). The failure is already the step's
    reported damage: those coroutines are collected here, and only what they raise is dropped."""
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        code = getattr(unraisable.object, "cr_code", None)
        if code is None or f"{os.sep}orbax{os.sep}" not in code.co_filename:
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        gc.collect()
        sys.unraisablehook = previous


def restore_latest_good(
    manager: ocp.CheckpointManager,
    workdir: str | os.PathLike,
    *,
    config: dict,
    model_state: Any,
    train_state: Any,
    complete: Callable[[dict], dict] | None = None,
) -> tuple[int, tuple] | None:
    """``(step, restore_training(...))`` of the newest checkpoint that restores; None without any.

    ``complete`` (``lungjax.config.base.complete``) fills the keys an older checkpoint's config lacks.

    Damaged steps newer than it are moved aside (see the module docstring) with a warning naming
    both steps. When no step restores, nothing is moved and a ``CheckpointError`` lists each
    step's failure.
    """
    step, restored, failures = first_readable(
        sorted(manager.all_steps(), reverse=True),
        lambda step: _restore_step(manager, step, config, complete, model_state, train_state),
    )
    if step is not None:
        if failures:
            _set_aside(manager, workdir, failures, step)
        return step, restored
    if failures:
        details = "; ".join(f"step {step}: {reason}" for step, reason in failures.items())
        raise CheckpointError(
            f"no checkpoint in {manager.directory} can be restored ({details}); nothing was "
            f"deleted: repair or move them, or use a new workdir"
        )
    return None


def _set_aside(manager: ocp.CheckpointManager, workdir: str | os.PathLike, failures: dict, good: int) -> None:
    damaged_root = Path(workdir).absolute() / DAMAGED_DIR
    for step, reason in failures.items():
        target = damaged_root / f"{step}-{int(time.time())}"
        if jax.process_index() == 0:
            damaged_root.mkdir(exist_ok=True)
            os.rename(manager.directory / str(step), target)
        distributed.barrier("lungjax.checkpoint.set_aside")  # no process reloads before the move
        logging.warning(
            "checkpoint step %d is damaged (%s): resuming from step %d instead; the damaged checkpoint was moved to %s",
            step,
            reason,
            good,
            target,
        )
    manager.reload()

"""Inference from a checkpoint: restore the model, predict a split (with test-time crops), gather.

Shared by evaluation, validation during training and ``--mode predict``, so all three score a model
the same way. Restores only the model item of a checkpoint (no optimizer state) and rebuilds the
model from the config saved in that checkpoint, so a later change of the config file cannot
mismatch the weights. With several processes every process predicts its shard and the
predictions are gathered, so every process holds the whole split, each example once.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from lungjax import models, trees
from lungjax.config import base as config_base
from lungjax.data import metadata, pipeline, records, tasks
from lungjax.runtime import checkpoint, sharding

# Test-time crops cover this fraction of the side; each is resized back to the model's input size.
TTA_CROP_FRACTION = 0.875
# The splits evaluation can score, test first: what it is for.
EVAL_SPLITS = metadata.SPLIT_NAMES[::-1]
MAX_TTA_CROPS = 6  # the whole image, the centre and the four corners
# The keys a checkpoint fixes: evaluation rebuilds the model, the data and the input size it was trained with.
FIXED_BY_CHECKPOINT = ("model", "data", "image_size")


@dataclasses.dataclass(frozen=True)
class RestoredModel:
    """What inference needs from a checkpoint: the model's structure and weights, and its config."""

    graphdef: nnx.GraphDef
    model_state: dict  # {"params", "batch_stats"}, replicated over the mesh
    config: ml_collections.ConfigDict  # the config saved with the checkpoint
    step: int
    dtype: Any  # compute dtype
    task: tasks.Task  # what the checkpoint's saved config trained
    params_sha256: str  # ``checkpoint.params_sha256`` of model_state: which weights these are


def resolve_step(manager, choice) -> int:
    """``best`` | ``latest`` | a step number -> an existing step, or a clear error.

    ``best`` falls back to the latest step, with a warning, when no save recorded a validation score.
    """
    steps = manager.all_steps()
    if not steps:
        raise checkpoint.CheckpointError(
            f"no checkpoint in {manager.directory}: train first, or name the workdir of a run"
        )
    if choice == "latest":
        return manager.latest_step()
    if choice == "best":
        best = checkpoint.best_step(manager)
        if best is None:
            logging.warning(
                "no checkpoint in %s recorded a validation score: evaluating the latest (step %d) instead of the best",
                manager.directory,
                manager.latest_step(),
            )
            return manager.latest_step()
        return best
    if str(choice).isdigit() and int(choice) in steps:
        return int(choice)
    raise checkpoint.CheckpointError(
        f"config.eval.checkpoint must be one of {checkpoint.CHECKPOINT_CHOICES} or a saved step "
        f"{sorted(steps)}, got {choice!r}"
    )


def check_fits(config: ml_collections.ConfigDict, saved: ml_collections.ConfigDict, step: int) -> None:
    """Refuses a config that changes a key the checkpoint fixes (``FIXED_BY_CHECKPOINT``, less the keys
    ``checkpoint.SAFE_KEYS`` lets a resume change), naming each: such a change could not take effect, and
    silently ignoring it would report on another model than the one asked for."""
    given = trees.flatten(json.loads(json.dumps(config.to_dict())))
    fixed = trees.flatten(json.loads(json.dumps(saved.to_dict())))  # both as JSON: a tuple and a list are one value
    differing = [
        key
        for key in given
        if key.split(".")[0] in FIXED_BY_CHECKPOINT
        and not checkpoint.is_safe(key)
        and key in fixed
        and given[key] != fixed[key]
    ]
    if differing:
        details = "; ".join(f"config.{key}: {given[key]!r}, checkpoint {fixed[key]!r}" for key in differing)
        raise checkpoint.CheckpointError(
            f"the config changes what checkpoint step {step} fixes ({details}): the model, the data and the "
            "image size are the checkpoint's; drop the override, or name the workdir of the run it describes"
        )


def restore(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike, mesh, checkpoint_choice=None, *, own_run=True
) -> RestoredModel:
    """Restores the model item of the checkpoint ``checkpoint_choice`` names (default ``config.eval.checkpoint``).

    A damaged ``best`` or ``latest`` checkpoint (complete on disk but unreadable) falls back to the
    newest older step that reads, with a warning naming both, as training does; nothing is moved
    (evaluation only reads). A step named by number is that step or an error. With ``own_run`` (the
    run evaluated, not one it is compared with) the config must agree with the checkpoint's on the
    keys the checkpoint fixes (``check_fits``).
    """
    choice = config.eval.checkpoint if checkpoint_choice is None else checkpoint_choice
    manager = checkpoint.make_manager(workdir, read_only=True)
    try:
        chosen = resolve_step(manager, choice)
        older = [] if str(choice).isdigit() else [s for s in manager.all_steps() if s < chosen]

        def read(step: int) -> RestoredModel:
            try:
                return _restore_model(manager, step, mesh)
            except Exception as err:  # Orbax raises many types for unreadable files
                raise checkpoint.Damaged(f"{type(err).__name__}: {err}") from err

        step, restored, failures = checkpoint.first_readable([chosen, *sorted(older, reverse=True)], read)
    finally:
        manager.close()
    if step is not None:
        if failures:
            logging.warning(
                "checkpoint step(s) %s in %s damaged (%s): evaluating step %d instead",
                ", ".join(map(str, failures)),
                manager.directory,
                "; ".join(failures.values()),
                step,
            )
        if own_run:
            check_fits(config, restored.config, restored.step)
        return restored
    details = "; ".join(f"step {step}: {reason}" for step, reason in failures.items())
    raise checkpoint.CheckpointError(f"no checkpoint in {manager.directory} can be read for evaluation ({details})")


def _restore_model(manager, step: int, mesh) -> RestoredModel:
    saved = ml_collections.ConfigDict(config_base.complete(checkpoint.restore_config(manager, step)))
    task = tasks.of_config(saved)
    model = models.from_config(saved.model, num_classes=task.num_classes, half_precision=saved.half_precision)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    model_state = jax.device_put({"params": params, "batch_stats": batch_stats}, sharding.replicated(mesh))
    model_state = checkpoint.restore_model(manager, step, model_state)
    return RestoredModel(
        graphdef=graphdef,
        model_state=model_state,
        config=saved,
        step=int(step),
        dtype=models.compute_dtype(saved.half_precision),
        task=task,
        params_sha256=checkpoint.params_sha256(model_state),
    )


def tta_windows(size: int, crops: int) -> list[tuple[int, int, int]]:
    """``(top, left, side)`` of the first ``crops`` views: the whole image, the centre, four corners.

    No flips: a mirrored chest puts the heart on the wrong side, which is itself a finding.
    """
    side = round(size * TTA_CROP_FRACTION)
    far, middle = size - side, (size - side) // 2
    windows = [(0, 0, size), (middle, middle, side), (0, 0, side), (0, far, side), (far, 0, side), (far, far, side)]
    if not 1 <= crops <= MAX_TTA_CROPS:
        raise ValueError(f"config.eval.tta_crops must be in 1..{MAX_TTA_CROPS}, got {crops}")
    return windows[:crops]


def make_predict_fn(
    graphdef: nnx.GraphDef, mesh, dtype, *, tta_crops: int = 1, multi_label: bool = False, with_features: bool = False
):
    """jit-compiled ``(model_state, uint8 images) -> probabilities (float32)``: softmax over the
    classes, or for a multi-label task a sigmoid per finding.

    With ``tta_crops > 1`` the probabilities are the mean over ``tta_windows`` views. With
    ``with_features`` it returns ``(probabilities, features)``: the pooled penultimate features
    (``features_and_logits``) of the whole image, the first view, which the out-of-distribution score
    reads whatever the crops.
    """
    to_probabilities = jax.nn.sigmoid if multi_label else functools.partial(jax.nn.softmax, axis=-1)

    def predict(model_state, images):
        model = nnx.merge(graphdef, model_state["params"], model_state["batch_stats"])
        x = models.images_to_input(images, dtype)
        windows = tta_windows(x.shape[1], tta_crops)
        probs, whole_image_features = 0.0, None
        for top, left, side in windows:
            view = x[:, top : top + side, left : left + side]
            if side != x.shape[1]:
                view = jax.image.resize(view, x.shape, "linear")
            features, logits = model.features_and_logits(view, train=False)
            whole_image_features = features if whole_image_features is None else whole_image_features
            probs += to_probabilities(logits.astype(jnp.float32))
        probs = probs / len(windows)
        return (probs, whole_image_features.astype(jnp.float32)) if with_features else probs

    return jax.jit(
        predict,
        in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
        out_shardings=sharding.replicated(mesh),
    )


def split_batches(
    source: records.ExampleSource,
    *,
    global_batch_size: int,
    image_size: int,
    worker_count: int,
    task: tasks.Task | None = None,
):
    """This process's padded batches of a split: the global evaluation batch split over the processes.
    ``task``: what the labels are (``pipeline.eval_batches``); None for an NIH build's labels as stored."""
    return pipeline.eval_batches(
        source,
        batch_size=sharding.process_batch_size(global_batch_size),
        image_size=image_size,
        task=task,
        worker_count=worker_count,
    )


def predict_split(predict_fn, model_state, batches, mesh) -> dict[str, np.ndarray]:
    """Runs ``predict_fn`` over padded eval batches; returns every real row of the split once, in order:
    ``probs`` and every key of the batches but the image (``label``, a masked task's ``label_mask``,
    ``image_name``, ``patient_id`` and the metadata the dataset stores), text decoded to ``str``.

    Each process reads its own contiguous shard of the split (``pipeline.eval_batches``); with
    several processes the rows are gathered so that every process returns the whole split.
    """
    in_sharding = sharding.batch_sharding(mesh)
    outputs: dict[str, list[np.ndarray]] = {"probs": []}
    for batch in batches:
        images = jax.make_array_from_process_local_data(in_sharding, batch["image"])
        probs = np.asarray(jax.device_get(predict_fn(model_state, images)))
        rows = len(batch["mask"])
        start = jax.process_index() * rows  # this process's rows of the global batch
        outputs["probs"].append(probs[start : start + rows])
        for key, value in batch.items():
            if key != "image":
                outputs.setdefault(key, []).append(value)
    result = {key: np.concatenate(values) for key, values in outputs.items()}
    for key, value in result.items():
        if value.dtype.kind in "OS":  # text features: bytes from the records, 0 in padding rows
            result[key] = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in value], dtype=str)
    if jax.process_count() > 1:
        result = gather_processes(result)
    mask = result.pop("mask")
    return {key: value[mask] for key, value in result.items()}


def gather_processes(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every process's rows (padding included, ``mask`` marking the real ones), in process order.

    Every process holds as many rows (``eval_batches`` yields the same padded batches everywhere)
    and process p's shard is the p-th contiguous range of the split, so concatenating in process
    order restores the split's order and, after the mask, holds each example exactly once. Text
    travels as fixed-width UTF-8 bytes, integers as int32 and floats as float32 (64-bit types are off
    in JAX by default), each cast back to its dtype.
    """
    local, widths = {}, {}
    for key, value in rows.items():
        if value.dtype.kind == "U":
            encoded = np.char.encode(value, "utf-8")
            widths[key] = int(multihost_utils.process_allgather(np.int32(max(encoded.itemsize, 1))).max())
            local[key] = np.frombuffer(encoded.astype(f"S{widths[key]}").tobytes(), np.uint8).reshape(-1, widths[key])
        elif value.dtype.kind == "f":
            local[key] = value.astype(np.float32)
        else:
            if value.size and (value.min() < np.iinfo(np.int32).min or value.max() > np.iinfo(np.int32).max):
                raise ValueError(f"{key} holds integers beyond int32, which the gather would wrap")
            local[key] = value.astype(np.int32)
    gathered = {
        key: np.concatenate(list(value)) for key, value in multihost_utils.process_allgather(local, tiled=False).items()
    }
    return {
        key: np.char.decode(gathered[key].copy().view(f"S{widths[key]}")[:, 0], "utf-8")
        if key in widths
        else gathered[key].astype(value.dtype)
        for key, value in rows.items()
    }

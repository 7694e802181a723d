"""The training loop: data -> sharded jit step -> logs and Orbax checkpoints, resuming where it stopped.

``train_and_evaluate(config, workdir)`` is the whole job: build the dataset if needed, train (from
the latest checkpoint when there is one), then evaluate the final model on the test split.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from tqdm.auto import tqdm

from lungjax import checkpoint, evaluate, metrics, models, optim, sharding, step as step_lib
from lungjax.data import dataset, labels, pipeline

METRICS_FILE = "metrics.jsonl"
RUN_INFO_FILE = "run_info.json"


def class_weights(config, train_counts: list[int]) -> np.ndarray:
    """``balanced`` (scikit-learn's formula on the training split), ``none``, or an explicit list."""
    if config.class_weights == "balanced":
        counts = np.asarray(train_counts)
        return metrics.compute_class_weights(np.repeat(np.arange(len(counts)), counts), len(counts))
    if config.class_weights == "none":
        return np.ones(len(train_counts))
    weights = np.asarray(config.class_weights, dtype=np.float64)
    if weights.shape != (len(train_counts),) or (weights <= 0).any():
        raise ValueError(f"config.class_weights must be 'balanced', 'none' or {len(train_counts)} "
                         f"positive numbers, got {config.class_weights!r}")
    return weights


class PreemptionFlag:
    """Turns SIGTERM/SIGINT into a flag the loop checks, so it can save and exit cleanly."""

    def __init__(self):
        self.raised = False

    def __enter__(self):
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def _handle(self, signum, frame):
        logging.warning("received signal %d: saving a checkpoint and stopping", signum)
        self.raised = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def append_metrics(path: Path, record: dict) -> None:
    if jax.process_index() == 0:
        with path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def batches_with_state(loader_iterator):
    """Yields ``(batch, iterator state after it)``: the state a checkpoint must record."""
    for batch in loader_iterator:
        yield batch, loader_iterator.get_state()


def train(config: ml_collections.ConfigDict, workdir: str) -> bool:
    """Trains until ``num_train_steps`` (or an epoch count), resuming from the latest checkpoint.

    Returns whether the run reached its last step (False when preempted).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = sharding.make_mesh()
    local_batch = sharding.check_batch_size(config.batch_size, mesh)
    builder = dataset.build(config.data, workdir)
    report = dataset.build_report(builder)
    train_counts = report["class_counts"]["train"]
    weights = class_weights(config, train_counts)
    steps_per_epoch = max(sum(train_counts) // config.batch_size, 1)
    num_steps = config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * steps_per_epoch

    model = models.from_config(config.model, num_classes=labels.NUM_CLASSES,
                               half_precision=config.half_precision, seed=config.seed)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    schedule = optim.learning_rate_schedule(config, steps_per_epoch, num_steps)
    tx = optim.make_optimizer(config, schedule)
    replicated = sharding.replicated(mesh)
    state = jax.device_put(step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                               batch_stats=batch_stats, opt_state=tx.init(params),
                                               rng=jax.random.key_data(jax.random.key(config.seed))),
                           replicated)

    loader = pipeline.train_loader(pipeline.data_source(builder, "train"), batch_size=local_batch,
                                   image_size=config.image_size, augment=config.augment, seed=config.seed,
                                   worker_count=config.worker_count)
    data_iterator = iter(loader)
    manager = checkpoint.make_manager(workdir, max_to_keep=config.keep_checkpoints)
    start = manager.latest_step() or 0
    if start:
        model_state, train_state, data_state = checkpoint.restore_training(
            manager, start, model_state={"params": state.params, "batch_stats": state.batch_stats},
            train_state={"opt_state": state.opt_state, "step": state.step, "rng": state.rng})
        state = state.replace(params=model_state["params"], batch_stats=model_state["batch_stats"],
                              **train_state)
        data_iterator.set_state(data_state)
        logging.info("resumed from checkpoint step %d", start)
    if jax.process_index() == 0:
        (workdir / RUN_INFO_FILE).write_text(json.dumps({
            "train_class_counts": dict(zip(labels.CLASS_NAMES, train_counts)),
            "class_weights": dict(zip(labels.CLASS_NAMES, weights.tolist())),
            "dataset": builder.builder_config.name, "devices": [str(d) for d in jax.devices()],
            "steps_per_epoch": steps_per_epoch, "num_train_steps": num_steps, "config": config.to_dict(),
        }, indent=2))

    train_step = step_lib.make_train_step(
        graphdef=graphdef, tx=tx, class_weights=jnp.asarray(weights, jnp.float32),
        label_smoothing=config.label_smoothing, focal_gamma=config.focal_gamma,
        dtype=jnp.bfloat16 if config.half_precision else jnp.float32,
        state_sharding=replicated, batch_sharding=sharding.batch_sharding(mesh), replicated_sharding=replicated)

    def save(step: int, data_state: bytes) -> None:
        checkpoint.save(manager, step,
                        model_state={"params": state.params, "batch_stats": state.batch_stats},
                        train_state={"opt_state": state.opt_state, "step": state.step, "rng": state.rng},
                        data_state=data_state, config=config.to_dict())

    batches = sharding.prefetch_to_device(batches_with_state(data_iterator), sharding.batch_sharding(mesh))
    accumulated, window_start, data_state = None, time.perf_counter(), None
    step = start
    with PreemptionFlag() as preempted, contextlib.closing(manager), \
            tqdm(total=num_steps, initial=start, desc="train", unit="step",
                 disable=jax.process_index() != 0) as progress:
        for step in range(start + 1, num_steps + 1):
            batch, data_state = next(batches)
            state, step_metrics = train_step(state, batch)
            accumulated = step_metrics if accumulated is None else accumulated.merge(step_metrics)
            progress.update(1)
            if step % config.log_every_steps == 0 or step == num_steps:
                values = {k: float(v) for k, v in accumulated.compute().items()}
                elapsed = time.perf_counter() - window_start
                steps_in_window = (step - 1) % config.log_every_steps + 1
                record = {"step": step, "epoch": step / steps_per_epoch, **values,
                          "learning_rate": float(schedule(step - 1)),
                          "images_per_sec": steps_in_window * config.batch_size / elapsed}
                if not np.isfinite(values["loss"]):
                    raise FloatingPointError(f"non-finite loss {values['loss']} at step {step}; "
                                             f"the last good checkpoint is step {manager.latest_step()}")
                append_metrics(workdir / METRICS_FILE, record)
                progress.set_postfix(loss=f"{values['loss']:.3f}", img_s=f"{record['images_per_sec']:.0f}")
                accumulated, window_start = None, time.perf_counter()
            if step % config.checkpoint_every_steps == 0 or step == num_steps or preempted.raised:
                save(step, data_state)
            if preempted.raised:
                break
        manager.wait_until_finished()
    return step >= num_steps


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (resuming if possible), then evaluates the final checkpoint on ``config.eval.split``."""
    if train(config, workdir):
        report = evaluate.evaluate(config, workdir)
        if jax.process_index() == 0:
            print(evaluate.format_table(report))
        return report
    return {}

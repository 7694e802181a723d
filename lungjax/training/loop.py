"""The training loop: data -> sharded jit step -> validation, logs and Orbax checkpoints.

``train(config, workdir)`` trains from the latest checkpoint in ``workdir`` when there is one and
then sees the same batches, so a stopped and resumed run ends bitwise where an unstopped one would.
``train_and_evaluate`` adds the final evaluation on the test split.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from tqdm.auto import tqdm

from lungjax import models
from lungjax.config import base
from lungjax.config import check as config_check
from lungjax.data import building, pipeline, sampling, tasks, union
from lungjax.evaluation import evaluate
from lungjax.models import init as model_init
from lungjax.runtime import checkpoint, distributed, logs, run_info, sharding
from lungjax.runtime import workdir as workdir_lib
from lungjax.training import loss, optim, validation
from lungjax.training import step as step_lib


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


def batches_with_state(loader_iterator):
    """Yields ``(batch, iterator state after it)``: the state a checkpoint must record."""
    for batch in loader_iterator:
        yield batch, loader_iterator.get_state()


def initial_state(config, params, batch_stats, tx) -> step_lib.TrainState:
    ema = jax.tree.map(jnp.copy, params) if config.ema_decay else None  # its own buffers: donated
    return step_lib.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(config.seed)),
        plateau=optim.init_plateau(config),
        ema_params=ema,
    )


def model_variables(state: step_lib.TrainState) -> dict:
    """What validation, the ``model`` checkpoint item and evaluation use: the EMA params when kept."""
    params = state.params if state.ema_params is None else state.ema_params
    return {"params": params, "batch_stats": state.batch_stats}


def resume_variables(state: step_lib.TrainState) -> dict:
    """The rest of what training resumes from (the ``train`` item): step, optimizer, RNG, plateau and,
    when an EMA stands in the model item, the raw optimised params."""
    item = {"step": state.step, "opt_state": state.opt_state, "rng": state.rng, "plateau": state.plateau}
    if state.ema_params is not None:
        item["params"] = state.params
    return item


def from_saved(state: step_lib.TrainState, model: dict, rest: dict) -> step_lib.TrainState:
    """The inverse of ``model_variables`` and ``resume_variables``."""
    if state.ema_params is None:
        return state.replace(params=model["params"], batch_stats=model["batch_stats"], **rest)
    return state.replace(ema_params=model["params"], batch_stats=model["batch_stats"], **rest)


def check_finite(state: step_lib.TrainState, manager) -> None:
    """Stops the run before a non-finite state is logged or saved; the last good checkpoint stays latest."""
    bad = int(state.nonfinite_step)
    if bad:
        raise FloatingPointError(
            f"non-finite loss, gradients or parameters at step {bad}; stopping. "
            f"The last good checkpoint is step {manager.latest_step()}"
        )


def train(config: ml_collections.ConfigDict, workdir: str) -> bool:
    """Trains until ``num_train_steps`` (or ``num_epochs``) or early stopping, resuming if possible.

    Checks the config and the workdir before any work, and holds the workdir's lock throughout.
    Returns whether the run is finished (False when preempted).
    """
    config_check.validate(config)
    workdir = Path(workdir)
    workdir_lib.check_writable(workdir)
    with workdir_lib.lock(workdir):
        return _train(config, workdir)


@dataclasses.dataclass
class Run:
    """A run set up and ready to step: everything ``_train`` reads, resumed where a checkpoint says."""

    mesh: jax.sharding.Mesh
    steps_per_epoch: int
    num_steps: int
    fingerprint: str
    schedule: optax.Schedule
    train_step: Callable
    validator: validation.Validator
    state: step_lib.TrainState
    data_iterator: Iterator
    manager: ocp.CheckpointManager
    early_stopping: validation.EarlyStopping
    start: int


def _resume(config, workdir: Path, manager, state, data_iterator, fingerprint: str, train_images: int):
    """``(state, start step, early stopping)`` from the latest good checkpoint, the data iterator moved
    to where it stopped; a fresh start (step 0) without one."""
    early_stopping = validation.EarlyStopping(config.early_stop_patience)
    resumed = checkpoint.restore_latest_good(
        manager,
        workdir,
        config=config.to_dict(),
        model_state=model_variables(state),
        train_state=resume_variables(state),
        complete=base.complete,
    )
    if not resumed:
        return state, 0, early_stopping
    start, (model_state, train_state, data_state, saved_run) = resumed
    checkpoint.check_same_dataset(saved_run, fingerprint, start)
    data_iterator.set_state(
        sampling.data_state_for_process(
            data_state,
            saved_process_count=saved_run.get("process_count", 1),
            worker_count=config.worker_count,
            global_batch_size=config.batch_size,
            num_records=train_images,
        )
    )
    logging.info("resumed from checkpoint step %d", start)
    early_stopping = validation.EarlyStopping(config.early_stop_patience, **saved_run["early_stopping"])
    return from_saved(state, model_state, train_state), start, early_stopping


def _set_up(config: ml_collections.ConfigDict, workdir: Path) -> Run:
    """Dataset, model, optimizer, loader and checkpoint manager; resumes from the latest good checkpoint."""
    mesh = sharding.make_mesh()
    local_batch = sharding.check_batch_size(config.batch_size, mesh)
    builders = distributed.process_zero_first(lambda: union.build(config.data, workdir))
    _, mix_weights = union.names_and_weights(config.data)
    task = tasks.of_config(config)
    reports = {name: building.read_build_report(builder) for name, builder in builders.items()}
    train_images = sum(report["images"]["train"] for report in reports.values())
    if task.masked:  # stated entries, mixed by weight
        counts = union.stated_counts(builders, reports, task, config.data.uncertainty)
        positives, stated = union.mixed_stated_counts(counts, reports, mix_weights)
        train_counts = positives.tolist()
    else:
        train_counts, stated = union.mixed_class_counts(reports, mix_weights)  # NIH's builds state every entry
    weights = loss.class_weights(config, train_counts, images=stated, multi_label=task.multi_label)
    steps_per_epoch = max(train_images // config.batch_size, 1)
    num_steps = config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * steps_per_epoch
    fingerprint = run_info.datasets_fingerprint(builders)

    model = models.from_config(
        config.model, num_classes=task.num_classes, half_precision=config.half_precision, seed=config.seed
    )
    if config.model.init_from:  # a resumed run's checkpoint overrides this below
        kept = model_init.initialize(model, config.model.init_from)
        logging.info("initialised from %s (kept freshly initialised: %s)", config.model.init_from, kept)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    schedule = optim.learning_rate_schedule(config, steps_per_epoch, num_steps)
    tx = optim.make_optimizer(config, schedule)
    state = jax.device_put(initial_state(config, params, batch_stats, tx), sharding.replicated(mesh))

    loader = pipeline.train_loader(
        union.split(builders, "train"),
        batch_size=local_batch,
        image_size=config.image_size,
        augment=config.augment,
        seed=config.seed,
        worker_count=config.worker_count,
        task=task,
        uncertainty=config.data.uncertainty,
        augment_on_device=config.augment_on_device,
        weights=mix_weights,
    )
    data_iterator = iter(loader)
    workdir_lib.check_free_space(workdir, workdir_lib.tree_bytes((model_variables(state), resume_variables(state))))
    manager = checkpoint.make_manager(workdir, max_to_keep=config.keep_checkpoints)
    state, start, early_stopping = _resume(config, workdir, manager, state, data_iterator, fingerprint, train_images)
    run_info.write(  # only now: a run refused above leaves the accepted run's record as it was
        workdir,
        config=config,
        dataset_name=union.dataset_name(builders),
        fingerprint=fingerprint,
        task=task,
        train_counts=train_counts,
        class_weights=weights,
        steps_per_epoch=steps_per_epoch,
        num_train_steps=num_steps,
    )
    train_step = step_lib.make_train_step(
        config,
        graphdef=graphdef,
        tx=tx,
        class_weights=jnp.asarray(weights, jnp.float32),
        mesh=mesh,
        multi_label=task.multi_label,
    )
    return Run(
        mesh=mesh,
        steps_per_epoch=steps_per_epoch,
        num_steps=num_steps,
        fingerprint=fingerprint,
        schedule=schedule,
        train_step=train_step,
        validator=validation.Validator(union.split(builders, "validation"), config, graphdef, mesh),
        state=state,
        data_iterator=data_iterator,
        manager=manager,
        early_stopping=early_stopping,
        start=start,
    )


def _save(
    run: Run, config: ml_collections.ConfigDict, step: int, state: step_lib.TrainState, data_state: bytes, metrics: dict
) -> None:
    """Starts saving ``step`` (never a non-finite state), with what a resume needs besides the state."""
    check_finite(state, run.manager)
    checkpoint.save(
        run.manager,
        step,
        model_state=model_variables(state),
        train_state=resume_variables(state),
        data_state=data_state,
        config=config.to_dict(),
        metrics=metrics,
        run={
            "dataset_fingerprint": run.fingerprint,
            "process_count": jax.process_count(),
            "early_stopping": run.early_stopping.to_dict(),
        },
    )


def _train(config: ml_collections.ConfigDict, workdir: Path) -> bool:
    """The loop: steps, logs, validation and checkpoints until the end, early stopping or a signal."""
    run = _set_up(config, workdir)
    if run.early_stopping.should_stop:
        return True
    state, manager, early_stopping = run.state, run.manager, run.early_stopping
    steps_per_epoch, num_steps, schedule = run.steps_per_epoch, run.num_steps, run.schedule
    eval_every = config.eval_every_steps or steps_per_epoch
    batches = sharding.prefetch_to_device(batches_with_state(run.data_iterator), sharding.batch_sharding(run.mesh))
    accumulated, window_start, window_steps = None, time.perf_counter(), 0
    step = run.start
    with (
        PreemptionFlag() as preempted,
        contextlib.closing(manager),
        contextlib.closing(logs.make_writer(workdir, resumed_at=run.start)) as writer,
        tqdm(
            total=num_steps, initial=run.start, desc="train", unit="step", disable=jax.process_index() != 0
        ) as progress,
    ):
        for step in range(run.start + 1, num_steps + 1):
            batch, data_state = next(batches)
            state, step_metrics = run.train_step(state, batch)
            accumulated = step_metrics if accumulated is None else accumulated.merge(step_metrics)
            window_steps += 1
            progress.update(1)
            validating = step % eval_every == 0 or step == num_steps
            saved_metrics = {}
            if validating or step % config.log_every_steps == 0:
                check_finite(state, manager)
                record = {
                    "epoch": step / steps_per_epoch,
                    **{name: float(value) for name, value in accumulated.compute().items()},
                    "learning_rate": float(schedule(step - 1) * state.plateau.scale),
                    "images_per_sec": window_steps * config.batch_size / (time.perf_counter() - window_start),
                }
                progress.set_postfix(
                    epoch=f"{record['epoch']:.2f}",
                    loss=f"{record['loss']:.3f}",
                    img_s=f"{record['images_per_sec']:.0f}",
                )
                if validating:
                    result = run.validator(model_variables(state))
                    record.update(result.scalars)
                    writer.write_images(step, result.images)
                    state = state.replace(
                        plateau=optim.observe_validation_loss(config, state.plateau, result.scalars["val_loss"])
                    )
                    early_stopping.update(result.scalars["val_loss"])
                    saved_metrics = result.scalars
                writer.write_scalars(step, record)
                accumulated, window_steps = None, 0
            stop = preempted.raised or early_stopping.should_stop
            if validating or stop or step % config.checkpoint_every_steps == 0:
                _save(run, config, step, state, data_state, saved_metrics)
            if window_steps == 0:
                window_start = time.perf_counter()  # images/s counts training time only
            if stop:
                break
        manager.wait_until_finished()
    if early_stopping.should_stop:
        logging.warning(
            "early stop at step %d: %d validations without a lower validation loss",
            step,
            early_stopping.evals_without_improvement,
        )
    finished = step >= num_steps or early_stopping.should_stop
    if not finished and jax.process_index() == 0:
        print(f"lungjax: stopped at step {step} by a signal; rerun the same command to resume", file=sys.stderr)
    return finished


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
    """Trains (resuming if possible), then evaluates ``config.eval.checkpoint`` on ``config.eval.split``;
    None when a signal stopped the training (a checkpoint of where it stopped is saved)."""
    if not train(config, workdir):
        return None
    report = evaluate.evaluate(config, workdir)
    if jax.process_index() == 0:
        print(evaluate.format_table(report))
    return report

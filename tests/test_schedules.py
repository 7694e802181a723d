"""EMA, the reduce-on-plateau schedule and early stopping inside one real training run.

One tiny run (``configs/tiny.py`` on the session's NIH-format tree) with an EMA, ``schedule="plateau"``
(patience 1, factor 0.5) and ``early_stop_patience=2``, validating every 2 steps and saving every
step. The real validator runs, but the validation losses it reports are replaced by a scripted
sequence (1.0 then 2.0 forever), so when the plateau drops and when the run stops are known exactly:
validations at steps 2, 4, 6; the scale halves after the 4th and 6th steps' validations; the run stops
at step 6 of 12. The EMA is checked exactly against the saved checkpoints of consecutive steps.
"""

import json
import logging

import jax
import numpy as np
import pytest
from conftest import tiny_train_config
from flax import nnx

from lungjax import models
from lungjax.data import labels
from lungjax.runtime import checkpoint, logs
from lungjax.training import loop as train
from lungjax.training import optim, validation

pytestmark = pytest.mark.slow  # every test here starts processes or trains

EMA_DECAY = 0.5
LEARNING_RATE = 1e-3
NUM_STEPS, EVAL_EVERY, STOP_STEP = 12, 2, 6
SCRIPTED_VAL_LOSSES = (1.0, 2.0, 2.0, 2.0, 2.0, 2.0)  # one per validation: never better after the first


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def run_config(data_root):
    config = tiny_train_config(data_root)
    config.num_train_steps, config.eval_every_steps = NUM_STEPS, EVAL_EVERY
    config.checkpoint_every_steps, config.keep_checkpoints = 1, NUM_STEPS + 1
    config.learning_rate, config.ema_decay = LEARNING_RATE, EMA_DECAY
    config.schedule, config.plateau.patience, config.plateau.factor = "plateau", 1, 0.5
    config.early_stop_patience = 2
    return config


@pytest.fixture(scope="module")
def run(data_root, built, compilation_cache, tmp_path_factory):
    """The shared run: ``(config, workdir, train()'s return value, absl warnings, val losses seen)``."""
    config, workdir = run_config(data_root), tmp_path_factory.mktemp("schedules")
    real_call, seen = validation.Validator.__call__, []

    def scripted(self, model_state):
        result = real_call(self, model_state)  # the real validation, then the scripted loss
        seen.append(result.scalars["val_loss"])
        result.scalars["val_loss"] = SCRIPTED_VAL_LOSSES[len(seen) - 1]
        return result

    handler = _Messages()
    absl_logger = logging.getLogger("absl")
    absl_logger.addHandler(handler)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(validation.Validator, "__call__", scripted)
            finished = train.train(config, workdir)
    finally:
        absl_logger.removeHandler(handler)
    return config, workdir, finished, handler.messages, seen


@pytest.fixture(scope="module")
def saved(run):
    """Every checkpoint of the run, restored once: step -> (model item, train item, run item), NumPy."""
    config, workdir, *_ = run
    model = models.from_config(config.model, num_classes=labels.NUM_CLASSES, half_precision=False, seed=config.seed)
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    tx = optim.make_optimizer(config, optim.learning_rate_schedule(config, 1, NUM_STEPS))
    state = train.initial_state(config, params, batch_stats, tx)
    manager = checkpoint.make_manager(workdir, read_only=True)
    try:
        restored = {}
        for step in manager.all_steps():
            model_item, train_item, _, run_item = checkpoint.restore_training(
                manager, step, model_state=train.model_variables(state), train_state=train.resume_variables(state)
            )
            restored[step] = jax.tree.map(np.asarray, model_item), jax.tree.map(np.asarray, train_item), run_item
    finally:
        manager.close()
    return restored


def initial_params(config):
    """The parameters the run started from (same model, same seed), which the EMA starts as."""
    model = models.from_config(config.model, num_classes=labels.NUM_CLASSES, half_precision=False, seed=config.seed)
    return jax.tree.map(np.asarray, nnx.split(model, nnx.Param, nnx.BatchStat)[1])


def records(workdir):
    return [json.loads(line) for line in (workdir / logs.METRICS_FILE).read_text().splitlines()]


def test_ema_is_the_exact_running_average_of_the_raw_params(run, saved):
    config, *_ = run
    ema = initial_params(config)  # the EMA's initial value: a copy of the initial parameters
    moved = 0.0
    for step in range(1, STOP_STEP + 1):
        model_item, train_item, _ = saved[step]
        raw = train_item["params"]  # with an EMA, the train item keeps the optimised parameters
        expected = jax.tree.map(lambda e, p: EMA_DECAY * e + (1 - EMA_DECAY) * p, ema, raw)
        for (path, got), want in zip(
            jax.tree_util.tree_leaves_with_path(model_item["params"]), jax.tree.leaves(expected), strict=True
        ):
            np.testing.assert_allclose(
                got, want, rtol=1e-6, atol=1e-7, err_msg=f"step {step} {jax.tree_util.keystr(path)}"
            )
        ema = model_item["params"]
        moved = max(
            moved,
            max(float(np.abs(e - p).max()) for e, p in zip(jax.tree.leaves(ema), jax.tree.leaves(raw), strict=True)),
        )
    assert moved > 1e-4  # the model item really is not the raw parameters


def test_plateau_halves_the_scale_after_each_validation_without_improvement(run, saved):
    workdir = run[1]
    scales = {step: float(train_item["plateau"].scale) for step, (_, train_item, _) in saved.items()}
    # validations at 2 (1.0: best), 4 (2.0: worse, patience 1 -> x0.5) and 6 (worse again -> x0.5)
    assert scales == {1: 1.0, 2: 1.0, 3: 1.0, 4: 0.5, 5: 0.5, 6: 0.25}
    learning_rates = {r["step"]: r["learning_rate"] for r in records(workdir)}
    # the logged rate is the one the step just used: the scale changes after the step's validation
    assert learning_rates == pytest.approx({2: LEARNING_RATE, 4: LEARNING_RATE, 6: LEARNING_RATE / 2})


def test_early_stopping_stops_saves_and_says_so(run, saved):
    _, workdir, finished, messages, seen = run
    assert finished is True  # a normal end: train_and_evaluate goes on to evaluate
    assert len(seen) == 3 and all(np.isfinite(seen))  # the real validator ran at steps 2, 4 and 6
    assert [r["step"] for r in records(workdir) if "val_loss" in r] == [2, 4, 6]
    assert [r["val_loss"] for r in records(workdir) if "val_loss" in r] == list(SCRIPTED_VAL_LOSSES[:3])
    assert sorted(saved) == list(range(1, STOP_STEP + 1))  # a checkpoint every step, none after the stop
    _, train_item, run_item = saved[STOP_STEP]
    assert int(train_item["step"]) == STOP_STEP
    assert run_item["early_stopping"] == {"best_loss": 1.0, "evals_without_improvement": 2}
    assert any(
        f"early stop at step {STOP_STEP}: 2 validations without a lower validation loss" in m for m in messages
    ), messages

"""The loss against a NumPy float64 reference, class weights against scikit-learn, the weight-decay
mask, the plateau scale, and a bfloat16 step against a float32 one."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from sklearn.utils.class_weight import compute_class_weight

from lungjax import models
from lungjax.config import base
from lungjax.config.base import base_config
from lungjax.runtime import checkpoint, sharding
from lungjax.training import loss, optim, step
from lungjax.training.loss import class_weights


def reference_loss(logits, labels, weights, smoothing=0.0, gamma=0.0):
    """Keras' class-weighted categorical cross-entropy (sum over batch size), float64."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    num_classes = logits.shape[1]
    targets = np.eye(num_classes)[labels] * (1 - smoothing) + smoothing / num_classes
    focal = (1 - np.exp(log_p)) ** gamma
    per_example = -(targets * focal * log_p).sum(axis=1) * weights[labels]
    return per_example.mean()


@pytest.mark.parametrize("smoothing,gamma", [(0.0, 0.0), (0.1, 0.0), (0.0, 2.0), (0.1, 1.5)])
def test_loss_matches_float64_reference(smoothing, gamma):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(32, 6)) * 3
    labels = rng.integers(0, 6, size=32)
    weights = rng.uniform(0.5, 3.0, size=6)
    got = loss.weighted_cross_entropy(
        jnp.asarray(logits, jnp.float32),
        jnp.asarray(labels),
        jnp.asarray(weights, jnp.float32),
        label_smoothing=smoothing,
        focal_gamma=gamma,
    )
    np.testing.assert_allclose(float(got), reference_loss(logits, labels, weights, smoothing, gamma), rtol=1e-5)


class _Config:
    def __init__(self, class_weights):
        self.class_weights = class_weights


def test_balanced_weights_equal_sklearn():
    counts = [4215, 1093, 3955, 4844, 2194, 3260]
    labels = np.repeat(np.arange(6), counts)
    expected = compute_class_weight("balanced", classes=np.arange(6), y=labels)
    np.testing.assert_allclose(class_weights(_Config("balanced"), counts), expected, rtol=1e-12)
    np.testing.assert_array_equal(class_weights(_Config("none"), counts), np.ones(6))


def test_bad_class_weights_are_refused():
    with pytest.raises(ValueError, match="class_weights"):
        class_weights(_Config([1.0, 2.0]), [10] * 6)


def tiny_model(half_precision=False, dropout_rate=0.5):
    config = base_config()
    config.model.name, config.model.width, config.model.dropout_rate = "resnet18", 0.125, dropout_rate
    return models.from_config(config.model, num_classes=6, half_precision=half_precision, seed=0)


@functools.cache
def tiny_params():
    """The tiny model's parameters, built once: eager initialisation compiles per parameter shape."""
    return nnx.split(tiny_model(), nnx.Param, ...)[1]


def test_weight_decay_skips_batchnorm_and_biases():
    params = tiny_params()
    config = base_config()
    config.optimizer, config.weight_decay, config.learning_rate = "adamw", 0.1, 1.0
    tx = optim.make_optimizer(config, optax.constant_schedule(1.0))
    zeros = jax.tree.map(jnp.zeros_like, params)
    # zero gradients: only decay moves weights (jitted: op by op, every leaf shape compiles apart)
    updates, _ = jax.jit(tx.update)(zeros, jax.jit(tx.init)(params), params)
    kinds = set()
    for (path, p), u in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(updates), strict=True):
        name = jax.tree_util.keystr(path).removesuffix(".value")
        decayed = bool(np.any(np.asarray(u) != 0))
        if name.endswith("['kernel']"):
            kinds.add("kernel")
            np.testing.assert_allclose(u, -0.1 * np.asarray(p), rtol=1e-6, err_msg=name)
        else:
            kinds.add(name.rsplit("[", 1)[-1])
            assert not decayed, name
    assert kinds == {"kernel", "'scale']", "'bias']"}


@pytest.mark.parametrize(
    "optimizer",
    [pytest.param(name, marks=pytest.mark.slow) if name in ("lamb", "lars") else name for name in base.OPTIMIZERS],
)
@pytest.mark.parametrize("init_from", [pytest.param("", marks=pytest.mark.slow), "resnet50_imagenet.h5"])
def test_stem_border_kernel_trains_only_from_keras_weights(optimizer, init_from):
    """From scratch the border kernel lies along BatchNorm's invisible direction: frozen, decay included."""
    params = jax.tree.map(lambda p: p + 0.5, tiny_params())  # non-zero, as imported weights leave the border
    config = base_config()
    config.optimizer, config.weight_decay, config.model.init_from = optimizer, 0.1, init_from
    tx = optim.make_optimizer(config, optax.constant_schedule(0.1))
    state, update = jax.jit(tx.init)(params), jax.jit(tx.update)
    leaves = jax.tree.leaves(params)
    keys = jax.random.split(jax.random.key(0), len(leaves))
    grads = jax.tree.unflatten(
        jax.tree.structure(params), [jax.random.normal(k, p.shape) for k, p in zip(keys, leaves, strict=True)]
    )
    trained = params
    for _ in range(3):
        updates, state = update(grads, state, trained)
        trained = optax.apply_updates(trained, updates)
    for (path, before), after in zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(trained), strict=True
    ):
        moved = bool(np.any(np.asarray(before) != np.asarray(after)))
        assert moved == (not optim.is_stem_border(path) or bool(init_from)), jax.tree_util.keystr(path)


def test_plateau_scale_drops_after_patience_validations():
    config = base_config()
    config.schedule, config.plateau.factor, config.plateau.patience = "plateau", 0.5, 2
    state = optim.init_plateau(config)
    scales = []
    for val_loss in (1.0, 0.8, 0.9, 0.85, 0.7, 0.75, 0.76):
        state = optim.observe_validation_loss(config, state, val_loss)
        scales.append(float(state.scale))
    assert scales == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]
    config.schedule = "cosine"  # other schedules ignore validations
    assert optim.observe_validation_loss(config, state, 9.0) is state


def run_one_step(half_precision):
    model = tiny_model(half_precision, dropout_rate=0.0)  # dropout x2 would only amplify rounding
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    config = base_config()
    tx = optim.make_optimizer(config, optim.learning_rate_schedule(config, 10, 100))
    state = step.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(0)),
        plateau=optim.init_plateau(config),
    )
    config.label_smoothing, config.half_precision = 0.1, half_precision
    train_step = step.make_train_step(
        config, graphdef=graphdef, tx=tx, class_weights=jnp.ones(6), mesh=sharding.make_mesh()
    )
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.integers(0, 256, (8, 32, 32, 1)), jnp.uint8),
        "label": jnp.asarray(rng.integers(0, 6, 8)),
    }
    state, metrics = train_step(state, batch)
    return state, float(metrics.compute()["loss"])


@pytest.mark.slow
def test_bfloat16_step_matches_float32_and_keeps_float32_state():
    state32, loss32 = run_one_step(False)
    state16, loss16 = run_one_step(True)
    assert abs(loss16 - loss32) < 1e-2, (loss16, loss32)
    for tree in (state16.params, state16.batch_stats, state16.opt_state):
        assert {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)} == {
            np.dtype(np.float32)
        }
    assert int(state16.nonfinite_step) == 0


def test_optimizer_and_schedule_tables_are_the_configs_choices():
    assert tuple(optim.OPTIMIZERS) == base.OPTIMIZERS and tuple(optim.SCHEDULES) == base.SCHEDULES


# adamw and sgd flatten only part of their chain beside a per-leaf weight-decay mask (adam flattens all of
# it); sgd's part, the momentum step, runs in the slow suite only.
@pytest.mark.parametrize("optimizer", ["adamw", pytest.param("sgd", marks=pytest.mark.slow)])
def test_flattened_optimizer_takes_the_same_steps_and_keeps_masks_and_freezing(optimizer):
    """optax.flatten on the mask-free part: same parameters after 3 steps, weight decay still skips
    BatchNorm and biases (it stays per leaf), the stem border stays frozen; unflattened, adamw's state is
    optax.adamw's own, so existing checkpoints restore."""
    params = jax.tree.map(lambda p: p + 0.5, tiny_params())
    leaves = jax.tree.leaves(params)
    keys = jax.random.split(jax.random.key(0), len(leaves))
    grads = jax.tree.unflatten(
        jax.tree.structure(params), [jax.random.normal(k, p.shape) for k, p in zip(keys, leaves, strict=True)]
    )
    trained = {}
    for flatten in (False, True):
        config = base_config()
        config.optimizer, config.weight_decay, config.grad_clip_norm = optimizer, 0.1, 1.0
        config.optimizer_flatten = flatten
        tx = optim.make_optimizer(config, optax.constant_schedule(0.1))

        @jax.jit
        def three_steps(params, tx=tx):
            state = tx.init(params)
            for _ in range(3):
                updates, state = tx.update(grads, state, params)
                params = optax.apply_updates(params, updates)
            return params, state

        trained[flatten], state = three_steps(params)
        if optimizer == "adamw" and not flatten:
            reference = optax.adamw(optax.constant_schedule(0.1), weight_decay=0.1, mask=optim.decay_mask).init(params)
            assert jax.tree.structure(state[1]) == jax.tree.structure(reference)  # after clipping's state
    for (path, a), b, before in zip(
        jax.tree_util.tree_leaves_with_path(trained[False]), jax.tree.leaves(trained[True]), leaves, strict=True
    ):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7, err_msg=jax.tree_util.keystr(path))
        assert np.array_equal(b, before) == optim.is_stem_border(path), jax.tree_util.keystr(path)


def test_a_run_cannot_switch_optimizer_flatten_on_resume():
    saved = base_config().to_dict()
    config = base_config()
    config.optimizer_flatten = True
    with pytest.raises(checkpoint.CheckpointError, match="optimizer_flatten"):
        checkpoint.check_resumable(saved, config.to_dict())


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["lamb", "lars"])
def test_large_batch_optimizers_are_optax_own_with_the_decay_mask_and_warm_up(optimizer):
    """lamb and lars as make_optimizer builds them (flattened or not) take optax.lamb's and optax.lars's
    steps with the weight-decay mask (lars: also the trust-ratio mask) of the other optimizers, keep
    optax's state structure, keep the stem border frozen, and start from the schedule's warm-up at 0."""
    params = jax.tree.map(lambda p: p + 0.5, tiny_params())
    leaves = jax.tree.leaves(params)
    keys = jax.random.split(jax.random.key(0), len(leaves))
    grads = jax.tree.unflatten(
        jax.tree.structure(params), [jax.random.normal(k, p.shape) for k, p in zip(keys, leaves, strict=True)]
    )
    config = base_config()
    config.optimizer, config.weight_decay, config.learning_rate, config.warmup_epochs = optimizer, 0.1, 0.5, 1.0
    schedule = optim.learning_rate_schedule(config, steps_per_epoch=2, total_steps=10)
    if optimizer == "lamb":
        reference = optax.lamb(schedule, weight_decay=0.1, mask=optim.decay_mask)
    else:
        reference = optax.lars(
            schedule, weight_decay=0.1, weight_decay_mask=optim.decay_mask, trust_ratio_mask=optim.decay_mask
        )

    def three_steps(tx):
        """Parameters after each of three steps, and the state after the last, in one compilation."""

        @jax.jit
        def run(params):
            state, trajectory = tx.init(params), []
            for _ in range(3):
                updates, state = tx.update(grads, state, params)
                params = optax.apply_updates(params, updates)
                trajectory.append(params)
            return trajectory, state

        return run(params)

    (*_, expected), reference_state = three_steps(reference)
    for flatten in (False, True):
        config.optimizer_flatten = flatten
        (after_one, _, got), state = three_steps(optim.make_optimizer(config, schedule))
        assert all(
            np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after_one), leaves, strict=True)
        )  # rate 0 at step 0
        if not flatten:
            assert jax.tree.structure(state) == jax.tree.structure(reference_state)
        for (path, want), have, before in zip(
            jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(got), leaves, strict=True
        ):
            if optim.is_stem_border(path):
                np.testing.assert_array_equal(have, before)
            else:
                np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))
                assert not np.array_equal(have, before), jax.tree_util.keystr(path)

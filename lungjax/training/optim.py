"""Optimizer, learning-rate schedule and the reduce-on-plateau scale, from the config (optax).

The plateau scale is not part of the optax chain: it changes only when a validation loss is fed
to it (``observe_validation_loss``), between steps, while the step merely multiplies the updates
by it. Keeping its state beside the optimizer state lets the step stay ``(state, batch) -> state``.
"""

from __future__ import annotations

from types import MappingProxyType

import jax
import jax.numpy as jnp
import optax
from optax import contrib

from lungjax.models import init as model_init
from lungjax.models.resnet import HEAD, STEM_BORDER


def _constant(config, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
    return optax.constant_schedule(config.learning_rate)


def _warmup_cosine(config, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
    warmup = int(config.warmup_epochs * steps_per_epoch)
    return optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1)
    )


# config.schedule -> its base schedule; "plateau" scales a constant one (see the module docstring).
SCHEDULES = MappingProxyType({"constant": _constant, "cosine": _warmup_cosine, "plateau": _constant})


def learning_rate_schedule(config, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
    """``constant`` (also the base of ``plateau``), or linear warmup then cosine decay to zero."""
    return SCHEDULES[config.schedule](config, steps_per_epoch, total_steps)


def decay_mask(params):
    """Weight decay applies to kernels only: not to BatchNorm scales/offsets or biases (ndim <= 1)."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


# config.optimizer -> (config, schedule, flat) -> the optimizer, before clipping and freezing. ``flat``
# wraps the part that needs no parameter paths (``optax.flatten`` or nothing): weight decay's mask
# reads each leaf's ndim, which a flat vector no longer has, so it stays outside. adamw is optax.adamw's
# own chain spelt out, so with ``flat`` the identity its state is optax.adamw's and old checkpoints restore.
OPTIMIZERS = MappingProxyType(
    {
        "adam": lambda config, schedule, flat: flat(optax.adam(schedule)),
        "adamw": lambda config, schedule, flat: optax.chain(
            flat(optax.scale_by_adam()),
            optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
            optax.scale_by_learning_rate(schedule),
        ),
        "sgd": lambda config, schedule, flat: optax.chain(
            optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
            flat(optax.sgd(schedule, momentum=0.9, nesterov=True)),
        ),
        # Large batches (768, 1024): layer-wise trust ratios, so each layer's step is a fixed share of its
        # weights' norm; with the schedule's linear warm-up (warmup_epochs) as in their papers. optax.lamb's
        # and optax.lars's chains spelt out (same state when not flattened): the trust ratio and weight
        # decay are per layer, only the moments and the momentum run on the flat vector.
        "lamb": lambda config, schedule, flat: optax.chain(
            flat(optax.scale_by_adam(eps=1e-6)),
            optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
            optax.scale_by_trust_ratio(),
            optax.scale_by_learning_rate(schedule),
        ),
        # You et al. 2017 and MLPerf's ResNet-50: BatchNorm parameters and biases get neither weight decay
        # nor a trust ratio.
        "lars": lambda config, schedule, flat: optax.chain(
            optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
            optax.masked(optax.scale_by_trust_ratio(trust_coefficient=0.001), decay_mask),
            optax.scale_by_learning_rate(schedule),
            flat(optax.trace(decay=0.9)),
        ),
    }
)


def make_optimizer(config, schedule: optax.Schedule) -> optax.GradientTransformation:
    """``config.optimizer`` (values checked by ``lungjax.config.check``), then clipping and freezing.

    ``config.optimizer_flatten`` runs the moment updates on one flat vector (a few large kernels
    instead of one per parameter) with the same numbers; its state has another structure, so a
    checkpoint resumes only with the value it was written with (``checkpoint.check_resumable``
    refuses a switch: the key is not among its ``SAFE_KEYS``).
    """
    flat = optax.flatten if config.optimizer_flatten else lambda inner: inner
    optimizer = OPTIMIZERS[config.optimizer](config, schedule, flat)
    if config.grad_clip_norm:
        optimizer = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), optimizer)
    if config.model.freeze_backbone_steps:
        optimizer = optax.chain(optimizer, freeze_backbone(config.model.freeze_backbone_steps))
    if not model_init.is_keras_weights(config.model.init_from):
        optimizer = frozen(optimizer, is_stem_border)
    return optimizer


def _keys(path) -> tuple:
    return tuple(getattr(entry, "key", None) for entry in path)


def is_head(path) -> bool:
    return _keys(path)[:1] == (HEAD,)


def is_stem_border(path) -> bool:
    return _keys(path)[: len(STEM_BORDER)] == STEM_BORDER


def frozen(optimizer: optax.GradientTransformation, is_frozen) -> optax.GradientTransformation:
    """``optimizer`` with the updates of parameters at paths where ``is_frozen`` holds zeroed after it
    (so weight decay cannot move them either). The state is the optimizer's own: checkpoints written
    before a parameter was frozen still resume."""

    def update(updates, state, params=None):
        updates, state = optimizer.update(updates, state, params)
        return jax.tree_util.tree_map_with_path(lambda p, u: jnp.zeros_like(u) if is_frozen(p) else u, updates), state

    return optax.GradientTransformation(optimizer.init, update)


def freeze_backbone(num_steps: int) -> optax.GradientTransformation:
    """Zeroes every update but the head's for the first ``num_steps`` steps: fine-tuning recipes
    train a new head on frozen pretrained features first. Placed after the optimizer, so weight
    decay cannot move frozen weights either; the optimizer's moments keep accumulating meanwhile.
    """

    def init(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        del params
        frozen = state.count < num_steps
        updates = jax.tree_util.tree_map_with_path(
            lambda path, u: u if is_head(path) else jnp.where(frozen, jnp.zeros_like(u), u), updates
        )
        return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)


def make_plateau(config) -> optax.GradientTransformationExtraArgs:
    """optax's reduce-on-plateau, fed one validation loss per validation (see the module docstring)."""
    return contrib.reduce_on_plateau(
        factor=config.plateau.factor,
        patience=config.plateau.patience,
        cooldown=config.plateau.cooldown,
        min_scale=config.plateau.min_scale,
    )


def init_plateau(config) -> contrib.ReduceLROnPlateauState:
    """The initial plateau state (scale 1), with strong dtypes so the step never retraces on it."""
    state = make_plateau(config).init(None)
    return jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.asarray(x).dtype), state)


def observe_validation_loss(config, plateau_state, val_loss: float):
    """Feeds a validation loss to the plateau state; a no-op unless ``schedule == "plateau"``."""
    if config.schedule != "plateau":
        return plateau_state
    _, new_state = make_plateau(config).update({}, plateau_state, value=jnp.float32(val_loss))
    return jax.tree.map(lambda new, old: jax.device_put(new.astype(old.dtype), old.sharding), new_state, plateau_state)

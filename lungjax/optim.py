"""Optimizer and learning-rate schedule from the config (optax)."""

from __future__ import annotations

import jax
import optax

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(config, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
    """``constant``, or linear warmup then cosine decay to zero over the run."""
    if config.schedule == "constant":
        return optax.constant_schedule(config.learning_rate)
    if config.schedule == "cosine":
        warmup = int(config.warmup_epochs * steps_per_epoch)
        return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup_steps=warmup,
                                                  decay_steps=max(total_steps, warmup + 1))
    raise ValueError(f"config.schedule must be one of {SCHEDULES}, got {config.schedule!r}")


def decay_mask(params):
    """Weight decay applies to kernels only: not to BatchNorm scales/offsets or biases (ndim <= 1)."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(config, schedule: optax.Schedule) -> optax.GradientTransformation:
    if config.optimizer == "adam":
        optimizer = optax.adam(schedule)
    elif config.optimizer == "adamw":
        optimizer = optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask)
    elif config.optimizer == "sgd":
        optimizer = optax.chain(optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
                                optax.sgd(schedule, momentum=0.9, nesterov=True))
    else:
        raise ValueError(f"config.optimizer must be one of {OPTIMIZERS}, got {config.optimizer!r}")
    if config.grad_clip_norm:
        optimizer = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), optimizer)
    return optimizer

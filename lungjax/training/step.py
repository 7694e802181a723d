"""The pure training step: ``(state, batch) -> (state, metrics)``, compiled once per run.

Nothing here imports the data code: the step sees arrays only. The model is split once into a
static graph definition and array state (``nnx.split``); the step merges them inside ``jax.jit``,
so no Python graph traversal happens per step.
"""

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from clu import metrics as clu_metrics
from flax import nnx

from lungjax import models
from lungjax.runtime import sharding
from lungjax.training import device_augment
from lungjax.training import loss as loss_lib


@flax.struct.dataclass
class TrainState:
    """Everything a step changes; a pytree donated to the step.

    ``ema_params`` is None unless an EMA is kept. ``plateau`` is the reduce-on-plateau state whose
    ``scale`` multiplies every update (1 unless ``schedule == "plateau"``). ``nonfinite_step`` is the
    first step whose loss, gradients or new parameters were not finite (0: none yet): a flag the loop
    reads only when it logs or saves, so the check costs no per-step host sync.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    plateau: Any
    ema_params: Any = None
    nonfinite_step: jax.Array = flax.struct.field(default_factory=lambda: jnp.zeros((), jnp.int32))


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):  # clu reads these annotations: no postponed evaluation
    loss: clu_metrics.Average.from_output("loss")
    accuracy: clu_metrics.Accuracy


@flax.struct.dataclass
class MultiLabelTrainMetrics(clu_metrics.Collection):
    """Multi-label: the loss only (an argmax accuracy means nothing when an image has several findings)."""

    loss: clu_metrics.Average.from_output("loss")


def all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]))


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    class_weights: jax.Array,
    label_smoothing: float,
    focal_gamma: float,
    dtype,
    ema_decay: float,
    multi_label: bool = False,
    image_size: int | None = None,
) -> tuple[TrainState, TrainMetrics | MultiLabelTrainMetrics]:
    """One optimizer step on one global batch. Pure: jit it with ``make_train_step``.

    A batch with ``"warp"`` and ``"intensity"`` (the pipeline's ``augment_on_device``) carries
    stored-size images, augmented here to ``image_size`` before anything else.
    """
    dropout_key = jax.random.fold_in(state.rng, state.step)
    images = batch["image"]
    if "warp" in batch:
        images = device_augment.augment(images, batch["warp"], batch["intensity"], image_size)
    images = models.images_to_input(images, dtype)

    def loss_fn(params, batch_stats):
        model = nnx.merge(graphdef, params, batch_stats, copy=True)  # fresh Variables in this trace
        logits = model(images, train=True, rngs=nnx.Rngs(dropout=dropout_key))
        loss_options = dict(label_smoothing=label_smoothing, focal_gamma=focal_gamma)
        if multi_label:  # a masked task's batches carry label_mask: only stated entries count
            loss = loss_lib.weighted_binary_cross_entropy(
                logits, batch["label"], class_weights, mask=batch.get("label_mask"), **loss_options
            )
        else:
            loss = loss_lib.weighted_cross_entropy(logits, batch["label"], class_weights, **loss_options)
        return loss, (logits, nnx.state(model, nnx.BatchStat))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state.batch_stats)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: u * state.plateau.scale.astype(u.dtype), updates)
    params = optax.apply_updates(state.params, updates)
    ema_params = state.ema_params
    if ema_params is not None:
        ema_params = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema_params, params)
    step = state.step + 1
    finite = jnp.isfinite(loss) & all_finite(grads) & all_finite(params)
    nonfinite_step = jnp.where((state.nonfinite_step == 0) & ~finite, step, state.nonfinite_step)
    new_state = state.replace(
        step=step,
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
        ema_params=ema_params,
        nonfinite_step=nonfinite_step,
    )
    if multi_label:
        return new_state, MultiLabelTrainMetrics.single_from_model_output(loss=loss)
    return new_state, TrainMetrics.single_from_model_output(loss=loss, logits=logits, labels=batch["label"])


def make_train_step(
    config,
    *,
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    class_weights: jax.Array,
    mesh: jax.sharding.Mesh,
    multi_label: bool = False,
):
    """``train_step`` for ``config``'s loss and precision (``multi_label``: a sigmoid per finding),
    compiled once: the state replicated over ``mesh`` and donated, the batch sharded along its data axis."""
    step = functools.partial(
        train_step,
        graphdef=graphdef,
        tx=tx,
        class_weights=class_weights,
        label_smoothing=config.label_smoothing,
        focal_gamma=config.focal_gamma,
        dtype=models.compute_dtype(config.half_precision),
        ema_decay=config.ema_decay,
        multi_label=multi_label,
        image_size=config.image_size,
    )
    replicated = sharding.replicated(mesh)
    return jax.jit(
        step,
        in_shardings=(replicated, sharding.batch_sharding(mesh)),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )

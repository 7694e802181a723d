"""The pure training step: ``(state, batch) -> (state, metrics)``, and the pieces it is made of.

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


@flax.struct.dataclass
class TrainState:
    """Everything a step changes; a pytree that is checkpointed and donated to the step."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):  # clu reads these annotations: no postponed evaluation
    loss: clu_metrics.Average.from_output("loss")
    accuracy: clu_metrics.Accuracy


def weighted_cross_entropy(logits: jax.Array, labels: jax.Array, class_weights: jax.Array, *,
                           label_smoothing: float = 0.0, focal_gamma: float = 0.0,
                           mask: jax.Array | None = None) -> jax.Array:
    """Class-weighted cross-entropy, as Keras computes it with ``class_weight``.

    Per example: ``w[y] * -sum_c q_c (1 - p_c)^gamma log p_c`` with smoothed targets
    ``q = (1 - eps) onehot(y) + eps / C``; then averaged over the (unmasked) examples, not
    normalised by the weights (Keras' ``sum_over_batch_size``). ``gamma = 0`` is plain
    cross-entropy; ``gamma > 0`` is the focal loss.
    """
    num_classes = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    if focal_gamma:
        log_probs = log_probs * (1.0 - jnp.exp(log_probs)) ** focal_gamma
    per_example = -jnp.sum(targets * log_probs, axis=-1) * class_weights[labels]
    if mask is None:
        return per_example.mean()
    mask = mask.astype(jnp.float32)
    return jnp.sum(per_example * mask) / jnp.maximum(mask.sum(), 1.0)


def images_to_float(images: jax.Array, dtype) -> jax.Array:
    """uint8 pixels from the pipeline -> [0, 1] in the compute dtype (on the device)."""
    return images.astype(dtype) * (1.0 / 255.0)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, graphdef: nnx.GraphDef,
               tx: optax.GradientTransformation, class_weights: jax.Array, label_smoothing: float,
               focal_gamma: float, dtype) -> tuple[TrainState, TrainMetrics]:
    """One optimizer step on one global batch. Pure: jit it with ``make_train_step``."""
    dropout_key = jax.random.fold_in(state.rng, state.step)
    images = images_to_float(batch["image"], dtype)

    def loss_fn(params, batch_stats):
        model = nnx.merge(graphdef, params, batch_stats, copy=True)  # fresh Variables in this trace
        logits = model(images, train=True, rngs=nnx.Rngs(dropout=dropout_key))
        loss = weighted_cross_entropy(logits, batch["label"], class_weights,
                                      label_smoothing=label_smoothing, focal_gamma=focal_gamma)
        return loss, (logits, nnx.state(model, nnx.BatchStat))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    metrics = TrainMetrics.single_from_model_output(loss=loss, logits=logits, labels=batch["label"])
    return new_state, metrics


def make_train_step(*, graphdef, tx, class_weights, label_smoothing: float, focal_gamma: float, dtype,
                    state_sharding, batch_sharding, replicated_sharding):
    """``train_step`` compiled once, with explicit shardings and the state donated."""
    step = functools.partial(train_step, graphdef=graphdef, tx=tx, class_weights=class_weights,
                             label_smoothing=label_smoothing, focal_gamma=focal_gamma, dtype=dtype)
    return jax.jit(step, in_shardings=(state_sharding, batch_sharding),
                   out_shardings=(state_sharding, replicated_sharding), donate_argnums=0)

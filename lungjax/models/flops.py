"""FLOP counts of a ``ResNet`` from XLA's compiled cost analysis (what the compiler actually emits)."""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lungjax.models.resnet import ResNet

# More than one image so per-batch constants (the stem's batch-1 border conv) are amortised
# the way they are in training, yet small enough to compile quickly.
FLOPS_BATCH = 2
DROPOUT_SEED = 0


def flops_per_image(model: ResNet, image_size: int, *, train: bool) -> float:
    """XLA-counted FLOPs per ``image_size``² gray image: inference forward pass (``train=False``)
    or forward + backward of a cross-entropy training step in train mode (``train=True``)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    images = jax.ShapeDtypeStruct((FLOPS_BATCH, image_size, image_size, 1), jnp.float32)
    labels = jax.ShapeDtypeStruct((FLOPS_BATCH,), jnp.int32)

    def loss(params, rest, images, labels):
        # copy=True: fresh Variables owned by this trace, so train-mode BatchNorm may update them.
        net = nnx.merge(graphdef, params, rest, copy=True)
        logits = net(images, train=train, rngs=nnx.Rngs(dropout=DROPOUT_SEED))
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    step = jax.value_and_grad(loss) if train else loss
    compiled = jax.jit(step).lower(params, rest, images, labels).compile()
    return float(compiled.cost_analysis()["flops"]) / FLOPS_BATCH

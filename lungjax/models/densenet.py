"""DenseNet-121 (CheXNet's network, Rajpurkar et al. 2017) in Flax NNX, NHWC, with the one-channel stem.

The layers are those of ``keras.applications.DenseNet121`` so that its ImageNet weights import
exactly (:mod:`lungjax.models.pretrained_densenet`): the ResNet ``GrayStem`` (Keras' DenseNet stem
is the same 7×7/2 conv, BN, ReLU, 3×3/2 max pool with zero padding 3 and 1), then four dense blocks
of BN-ReLU-1×1 conv (4 × growth) - BN-ReLU-3×3 conv (growth) layers, each layer's output
concatenated to its input, with a BN-ReLU-1×1 conv (half the channels)-2×2/2 average pool transition
between blocks, a final BN-ReLU, global average pooling and the linear ``head``. Convs have no bias.

Stages, for ``feature_map``/``logits_from`` and Grad-CAM: stage ``s`` (1..4) is dense block ``s``
followed by the BN+ReLU that comes next (the transition's for 1..3, Keras ``pool{s+1}_relu``; the
final one for 4, Keras ``relu``). So every stage's map is a non-negative activation, like the
ResNet stages' outputs, at 1/4, 1/8, 1/16 and 1/32 of the input, and stage 4's is exactly what the
pooled head sees (Grad-CAM = CAM there). The transition's 1×1 conv and pool belong to the next stage.

Input, state and dtype policy are ResNet's (:mod:`lungjax.models.resnet`): float32 gray images in
[0, 1], only ``nnx.Param`` and ``nnx.BatchStat`` state, ``train=`` and ``rngs=`` per call, compute
in ``dtype`` with float32 parameters, BatchNorm statistics and logits.
"""

from types import MappingProxyType

import jax
import jax.numpy as jnp
from flax import nnx

from lungjax.models import batch_norm as batch_norm_lib
from lungjax.models.resnet import STEM_WIDTH, GrayStem, PooledClassifier, batch_norm, pointwise, same3x3, scaled

BLOCKS_121 = (6, 12, 24, 16)
NUM_STAGES = len(BLOCKS_121)
GROWTH_RATE = 32
BOTTLENECK_FACTOR = 4  # a dense layer's 1×1 conv widens to 4 × growth before its 3×3 conv
COMPRESSION = 0.5  # a transition halves the channel count
TRANSITION_POOL = 2
MODEL_NAMES = MappingProxyType({"densenet121": BLOCKS_121})


class DenseLayer(nnx.Module):
    """BN-ReLU-1×1 conv-BN-ReLU-3×3 conv, whose ``growth`` output channels are appended to the input."""

    def __init__(self, in_ch, growth, **kw):
        bottleneck = BOTTLENECK_FACTOR * growth
        self.bn0 = batch_norm(in_ch, **kw)
        self.conv1 = pointwise(in_ch, bottleneck, 1, **kw)
        self.bn1 = batch_norm(bottleneck, **kw)
        self.conv2 = same3x3(bottleneck, growth, 1, **kw)
        self.out_ch = in_ch + growth

    def __call__(self, x, *, train: bool):
        ura = not train
        y = self.conv1(nnx.relu(self.bn0(x, use_running_average=ura)))
        y = self.conv2(nnx.relu(self.bn1(y, use_running_average=ura)))
        return jnp.concatenate([x, y], axis=-1)


class DenseStage(nnx.Module):
    """One dense block and the BN+ReLU after it (see the module docstring for why the BN is here)."""

    def __init__(self, in_ch, n_layers, growth, **kw):
        layers = []
        for _ in range(n_layers):
            layers.append(DenseLayer(in_ch, growth, **kw))
            in_ch = layers[-1].out_ch
        self.layers = nnx.List(layers)
        self.bn = batch_norm(in_ch, **kw)
        self.out_ch = in_ch

    def __call__(self, x, *, train: bool):
        for layer in self.layers:
            x = layer(x, train=train)
        return nnx.relu(self.bn(x, use_running_average=not train))


class Transition(nnx.Module):
    """1×1 conv to ``COMPRESSION`` × the channels, then 2×2/2 average pooling (after the stage's BN+ReLU)."""

    def __init__(self, in_ch, **kw):
        self.out_ch = int(in_ch * COMPRESSION)
        self.conv = pointwise(in_ch, self.out_ch, 1, **kw)

    def __call__(self, x):
        window = (TRANSITION_POOL, TRANSITION_POOL)
        return nnx.avg_pool(self.conv(x), window, strides=window, padding="VALID")


class DenseNet(PooledClassifier):
    """DenseNet classifier for one-channel images with ResNet's API; see the module docstring.

    ``width`` multiplies the stem width and the growth rate (tiny models for tests and demos);
    ``blocks`` is the number of dense layers per block, DenseNet-121's by default.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        width: float = 1.0,
        dropout_rate: float = 0.0,
        blocks: tuple[int, ...] = BLOCKS_121,
        stem_space_to_depth: bool = False,
        stem_pad_channels: bool = False,
        fewer_pass_batch_norm: bool = False,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if len(blocks) != NUM_STAGES:
            raise ValueError(f"blocks must give the layers of {NUM_STAGES} dense blocks, got {blocks}")
        self.width = width
        self.dropout_rate = dropout_rate
        self.blocks = tuple(blocks)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        growth = scaled(GROWTH_RATE, width)

        in_ch = scaled(STEM_WIDTH, width)
        self.stem = GrayStem(in_ch, space_to_depth=stem_space_to_depth, pad_channels=stem_pad_channels, **kw)
        stages, transitions = [], []
        for index, n_layers in enumerate(blocks):
            if index > 0:
                transitions.append(Transition(in_ch, **kw))
                in_ch = transitions[-1].out_ch
            stages.append(DenseStage(in_ch, n_layers, growth, **kw))
            in_ch = stages[-1].out_ch
        self.stages = nnx.List(stages)
        self.transitions = nnx.List(transitions)
        self.num_features = in_ch
        self.dropout = nnx.Dropout(dropout_rate)
        self.head = nnx.Linear(in_ch, num_classes, dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs)
        batch_norm_lib.use_fewer_passes(self, fewer_pass_batch_norm)

    def _run(self, x, first: int, last: int, *, train: bool):
        """Stages ``first + 1`` .. ``last`` (1-based), each led by the transition before it."""
        for index in range(first, last):
            if index > 0:
                x = self.transitions[index - 1](x)
            x = self.stages[index](x, train=train)
        return x

    def feature_map(self, x: jax.Array, *, train: bool = False, stages: int | None = None) -> jax.Array:
        """The feature map (N, h, w, C) after the first ``stages`` stages (all by default), float32.

        Stage ``s`` ends with the BN+ReLU after dense block ``s`` (module docstring); its map is at
        1/2^(s+1) of the input, the last one being the most class-specific and the coarsest.
        """
        x = self.stem(x, train=train)
        return self._run(x, 0, NUM_STAGES if stages is None else stages, train=train).astype(jnp.float32)

    def logits_from(self, x: jax.Array, *, stage: int) -> jax.Array:
        """Inference logits from ``feature_map(..., stages=stage)``: the remaining stages, pool and head."""
        x = self._run(x, stage, NUM_STAGES, train=False)
        return self.head(jnp.mean(x.astype(jnp.float32), axis=(1, 2)))


def create_densenet(
    name: str,
    *,
    num_classes: int,
    width: float = 1.0,
    dropout_rate: float = 0.0,
    stem_space_to_depth: bool = False,
    stem_pad_channels: bool = False,
    fewer_pass_batch_norm: bool = False,
    dtype=jnp.float32,
    seed: int = 0,
) -> DenseNet:
    """Build a DenseNet by name (``densenet121``) with parameters initialised from ``seed``."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
    return DenseNet(
        blocks=MODEL_NAMES[name],
        num_classes=num_classes,
        width=width,
        dropout_rate=dropout_rate,
        stem_space_to_depth=stem_space_to_depth,
        stem_pad_channels=stem_pad_channels,
        fewer_pass_batch_norm=fewer_pass_batch_norm,
        dtype=dtype,
        rngs=nnx.Rngs(params=seed),
    )

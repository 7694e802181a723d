"""ResNet family (Flax NNX, NHWC) with a one-channel grayscale stem.

Architecture: ResNet v1.5 by default (the stride-2 downsampling of a stage sits in the
3×3 conv of bottleneck blocks, in the first 3×3 conv of basic blocks). ``stride_in_1x1=True``
gives the original v1 bottleneck (stride in the first 1×1 conv), which is what
``keras.applications.ResNet50`` implements, so it is required for importing Keras weights.

Input: float32 gray images in [0, 1] exactly as the lungjax pipeline produces them; the
model applies no further normalisation because the stem's first BatchNorm absorbs any
affine input scaling, and imported ImageNet weights fold Keras' caffe preprocessing into
the stem kernels (see ``GrayStem``).

State: only ``nnx.Param`` and ``nnx.BatchStat`` variables. Train/eval behaviour is chosen per
call with ``train=`` and dropout randomness is passed per call with ``rngs=``, so the model
holds no RNG state and ignores ``model.train()``/``model.eval()`` flags.
"""

from types import MappingProxyType

import jax
import jax.numpy as jnp
from flax import nnx

from lungjax.models import batch_norm as batch_norm_lib

STEM_WIDTH = 64
STAGE_WIDTHS = (64, 128, 256, 512)
NUM_STAGES = len(STAGE_WIDTHS)
BOTTLENECK_EXPANSION = 4
STEM_KERNEL = 7
STEM_PADDING = 3  # Keras: ZeroPadding2D(3) then a valid 7×7/2 conv.
POOL_WINDOW = 3
POOL_PADDING = 1  # Keras: ZeroPadding2D(1) then a valid 3×3/2 max pool.
# The stem's input channels with ``pad_channels``: cuDNN's fast bf16 convolutions want a multiple of 4
# (XLA pads channels itself for float16 only).
PADDED_STEM_CHANNELS = 4

# Flax convention: running = momentum * running + (1 - momentum) * batch. 0.9 (PyTorch's
# 0.1) rather than Keras' 0.99 so running statistics catch up within a short fine-tuning run.
BN_MOMENTUM = 0.9
# Keras ResNet50's epsilon; any other value breaks parity with imported weights.
BN_EPSILON = 1.001e-5

BLOCKS_PER_STAGE = MappingProxyType(
    {
        18: (2, 2, 2, 2),
        34: (3, 4, 6, 3),
        50: (3, 4, 6, 3),
        101: (3, 4, 23, 3),
        152: (3, 8, 36, 3),
    }
)
BOTTLENECK_DEPTHS = frozenset({50, 101, 152})
# The classifier's attribute name: fine-tuning and weight transfer treat it apart from the backbone.
HEAD = "head"
# Where GrayStem's border kernel sits in the parameter tree: frozen unless Keras weights set it.
STEM_BORDER = ("stem", "border_conv")
MODEL_NAMES = MappingProxyType({f"resnet{depth}": depth for depth in BLOCKS_PER_STAGE})

# He init on fan-out (torchvision's kaiming_normal_), the usual choice for ReLU nets from scratch.
_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _fold_blocks(x: jax.Array) -> jax.Array:
    """NHWC (N, H, W, C) -> (N, H/2, W/2, 4C): each 2×2 pixel block becomes one position, its four
    pixels (row-major) four groups of channels."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h // 2, w // 2, 4 * c)


def space_to_depth_conv(conv: nnx.Conv, x: jax.Array) -> jax.Array:
    """``conv(x)`` of a stride-2 ``conv`` computed exactly as a stride-1 convolution over 2×2 pixel blocks,
    from the same stored kernel (rearranged here, in the forward pass, so parameters stay as they are).

    Output row ``i`` of a k×k/2 conv reads padded rows ``2i .. 2i+k-1``. With the kernel zero-padded
    to an even size k' and both folded into 2×2 blocks, a (k'/2)×(k'/2)/1 VALID conv reads exactly
    those rows (the kernel's extra zero row sees one more). The input is padded (or cropped, by
    ``lax.pad``'s negative padding) to the ``2·out + k' - 2`` rows that gives the strided conv's
    output size, so any padding and any odd or even size keep it. A 1×1 kernel's blocks are 3/4 zero:
    only the blocks' top-left pixels meet it, so the fold reduces to taking those (``x[:, ::2, ::2]``).
    """
    padding = ((0, 0), (0, 0)) if conv.padding == "VALID" else conv.padding
    if conv.strides not in (2, (2, 2)) or isinstance(padding, str):
        raise ValueError(
            "space_to_depth_conv rewrites stride-2 convolutions with VALID or explicit padding; this one has "
            f"strides {conv.strides} and padding {conv.padding!r}"
        )
    kernel = conv.kernel[...]
    pads = [(0, 0, 0)]
    for size, k, (low, high) in zip(x.shape[1:3], kernel.shape[:2], padding, strict=True):
        out = (size + low + high - k) // 2 + 1
        pads.append((low, 2 * out + k + k % 2 - 2 - size - low, 0))
    x = jax.lax.pad(x, jnp.zeros((), x.dtype), [*pads, (0, 0, 0)])
    if kernel.shape[:2] == (1, 1):
        x = x[:, ::2, ::2]
    else:
        x = _fold_blocks(x)
        kernel = jnp.pad(kernel, ((0, kernel.shape[0] % 2), (0, kernel.shape[1] % 2), (0, 0), (0, 0)))
        kernel = _fold_blocks(kernel.transpose(3, 0, 1, 2)).transpose(1, 2, 3, 0)  # HWIO folded as OHWI
    x, kernel = conv.promote_dtype((x, kernel), dtype=conv.dtype)
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=conv.precision
    )


class Conv(nnx.Conv):
    """``nnx.Conv`` whose stride-2 instances compute ``space_to_depth_conv`` when ``space_to_depth`` is set
    (``use_space_to_depth``): the same function of the same variables, a different convolution for the backend."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.space_to_depth = False

    def __call__(self, x: jax.Array) -> jax.Array:
        return space_to_depth_conv(self, x) if self.space_to_depth else super().__call__(x)


def use_space_to_depth(module: nnx.Module, space_to_depth: bool) -> None:
    """Sets ``space_to_depth`` on every stride-2 ``Conv`` inside ``module`` (a constructor calls it once)."""
    for _, conv in nnx.iter_modules(module):
        if isinstance(conv, Conv) and conv.strides in (2, (2, 2)):
            conv.space_to_depth = space_to_depth


def _conv(in_ch, out_ch, kernel, stride, padding, *, dtype, param_dtype, rngs, init=_conv_init):
    """Bias-free conv: every conv is followed by a BatchNorm whose shift makes a bias redundant."""
    return Conv(
        in_ch,
        out_ch,
        (kernel, kernel),
        strides=stride,
        padding=padding,
        use_bias=False,
        kernel_init=init,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


def batch_norm(features, *, zero_scale=False, dtype, param_dtype, rngs):
    return batch_norm_lib.BatchNorm(
        features,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        scale_init=nnx.initializers.zeros if zero_scale else nnx.initializers.ones,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


def same3x3(in_ch, out_ch, stride, **kw):
    return _conv(in_ch, out_ch, 3, stride, ((1, 1), (1, 1)), **kw)


def pointwise(in_ch, out_ch, stride, **kw):
    return _conv(in_ch, out_ch, 1, stride, "VALID", **kw)


class GrayStem(nnx.Module):
    """7×7/2 conv + BatchNorm + ReLU + 3×3/2 max pool on a one-channel image.

    ``y = conv(x, kernel) + conv(valid_mask, border_kernel)``, where ``valid_mask`` is ones over
    the image and zeros in the padding. The second term is a learnable bias that knows where the
    zero padding is: it is what makes Keras' "subtract the per-channel ImageNet mean, *then*
    zero-pad" exactly expressible with a single input channel (the mean-subtracted border pixels
    see fewer mean terms than interior ones). It is zero-initialised (plain conv) and costs one
    batch-1 conv per call. Trained from scratch it would lie along BatchNorm's invisible direction
    (a constant shift the stem's BatchNorm removes), where Adam moves it by rounding noise alone, so
    the optimizer freezes it (``STEM_BORDER``) unless Keras weights were imported.

    ``space_to_depth=True`` computes the same ``conv(x, kernel)`` from the same stored 7×7×1×C kernel
    as a 4×4/1 convolution over 2×2 pixel blocks (``space_to_depth_conv``): a one-channel input
    leaves a GPU convolution's channel lanes mostly idle, four channels fewer so.
    ``pad_channels=True`` computes it as the same 7×7/2 convolution of the image zero-padded to
    ``PADDED_STEM_CHANNELS`` channels with the kernel's extra input channels zero (``_padded_channels_conv``).
    """

    def __init__(
        self,
        out_ch: int,
        *,
        space_to_depth: bool = False,
        pad_channels: bool = False,
        dtype,
        param_dtype,
        rngs: nnx.Rngs,
    ):
        if space_to_depth and pad_channels:
            raise ValueError("the stem is either space-to-depth or padded to 4 channels, not both")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        padding = ((STEM_PADDING, STEM_PADDING),) * 2
        self.conv = _conv(1, out_ch, STEM_KERNEL, 2, padding, **kw)
        self.border_conv = _conv(1, out_ch, STEM_KERNEL, 2, padding, init=nnx.initializers.zeros, **kw)
        self.bn = batch_norm(out_ch, **kw)
        self.conv.space_to_depth, self.pad_channels = space_to_depth, pad_channels

    def _padded_channels_conv(self, x):
        """``self.conv(x)`` with the input's and the kernel's input channels zero-padded to 4: the extra
        products are all zero, so the output is the same; the stored kernel keeps its one channel."""
        extra = ((0, 0),) * 3 + ((0, PADDED_STEM_CHANNELS - x.shape[-1]),)
        kernel = jnp.pad(self.conv.kernel[...], ((0, 0), (0, 0), extra[-1], (0, 0)))
        dtype = self.conv.dtype
        return jax.lax.conv_general_dilated(
            jnp.pad(x, extra).astype(dtype),
            kernel.astype(dtype),
            (2, 2),
            ((STEM_PADDING, STEM_PADDING),) * 2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )

    def __call__(self, x, *, train: bool):
        valid_mask = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
        image_term = self._padded_channels_conv(x) if self.pad_channels else self.conv(x)
        x = image_term + self.border_conv(valid_mask)
        x = nnx.relu(self.bn(x, use_running_average=not train))
        # Zero padding equals -inf padding here because the input is post-ReLU (>= 0).
        pad = ((POOL_PADDING, POOL_PADDING),) * 2
        return nnx.max_pool(x, (POOL_WINDOW, POOL_WINDOW), strides=(2, 2), padding=pad)


class _Shortcut(nnx.Module):
    """1×1 projection + BatchNorm, used where a block changes resolution or channel count."""

    def __init__(self, in_ch, out_ch, stride, **kw):
        self.conv = pointwise(in_ch, out_ch, stride, **kw)
        self.bn = batch_norm(out_ch, **kw)

    def __call__(self, x, *, train: bool):
        return self.bn(self.conv(x), use_running_average=not train)


def _shortcut(in_ch, out_ch, stride, **kw):
    return _Shortcut(in_ch, out_ch, stride, **kw) if stride != 1 or in_ch != out_ch else None


class BasicBlock(nnx.Module):
    """Two 3×3 convs (ResNet-18/34); the stride sits in the first one."""

    def __init__(self, in_ch, width, stride, *, zero_init_residual, **kw):
        self.conv1 = same3x3(in_ch, width, stride, **kw)
        self.bn1 = batch_norm(width, **kw)
        self.conv2 = same3x3(width, width, 1, **kw)
        self.bn2 = batch_norm(width, zero_scale=zero_init_residual, **kw)
        self.shortcut = _shortcut(in_ch, width, stride, **kw)
        self.out_ch = width

    def __call__(self, x, *, train: bool):
        ura = not train
        y = nnx.relu(self.bn1(self.conv1(x), use_running_average=ura))
        y = self.bn2(self.conv2(y), use_running_average=ura)
        identity = x if self.shortcut is None else self.shortcut(x, train=train)
        return nnx.relu(y + identity)


class BottleneckBlock(nnx.Module):
    """1×1 reduce, 3×3, 1×1 expand (ResNet-50/101/152); stride in the 3×3 (v1.5) or the first 1×1 (v1)."""

    def __init__(self, in_ch, width, stride, *, zero_init_residual, stride_in_1x1, **kw):
        out_ch = width * BOTTLENECK_EXPANSION
        self.conv1 = pointwise(in_ch, width, stride if stride_in_1x1 else 1, **kw)
        self.bn1 = batch_norm(width, **kw)
        self.conv2 = same3x3(width, width, 1 if stride_in_1x1 else stride, **kw)
        self.bn2 = batch_norm(width, **kw)
        self.conv3 = pointwise(width, out_ch, 1, **kw)
        self.bn3 = batch_norm(out_ch, zero_scale=zero_init_residual, **kw)
        self.shortcut = _shortcut(in_ch, out_ch, stride, **kw)
        self.out_ch = out_ch

    def __call__(self, x, *, train: bool):
        ura = not train
        y = nnx.relu(self.bn1(self.conv1(x), use_running_average=ura))
        y = nnx.relu(self.bn2(self.conv2(y), use_running_average=ura))
        y = self.bn3(self.conv3(y), use_running_average=ura)
        identity = x if self.shortcut is None else self.shortcut(x, train=train)
        return nnx.relu(y + identity)


class PooledClassifier(nnx.Module):
    """What every lungjax classifier ends in: global average pooling of its ``feature_map``, dropout
    and the linear ``head``. A subclass sets ``dropout_rate``, ``dropout`` and ``head``."""

    def features(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Globally average-pooled last-stage features, float32 of shape (N, num_features)."""
        return jnp.mean(self.feature_map(x, train=train), axis=(1, 2))

    def features_and_logits(
        self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """``(features, logits)`` of one forward pass: the pooled penultimate features (N, num_features)
        the head sees (before dropout) and the float32 logits (N, num_classes). Inference and the export
        take both from here (the out-of-distribution score reads the features); ``rngs`` (a ``dropout``
        stream) is needed only for train-mode dropout."""
        if train and self.dropout_rate > 0 and rngs is None:
            raise ValueError("train=True with dropout_rate > 0 needs rngs=nnx.Rngs(dropout=...)")
        features = self.features(x, train=train)
        return features, self.head(self.dropout(features, deterministic=not train, rngs=rngs))

    def __call__(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
        """float32 logits (N, num_classes): ``features_and_logits``' second half."""
        return self.features_and_logits(x, train=train, rngs=rngs)[1]


class ResNet(PooledClassifier):
    """ResNet-{18,34,50,101,152} classifier for one-channel images; see the module docstring.

    ``width`` multiplies every channel count (tiny models for tests/demos); ``dtype`` is the
    compute dtype (bfloat16 on GPU) while parameters use ``param_dtype`` and BatchNorm statistics
    and logits stay float32. ``zero_init_residual`` zeroes the last BatchNorm scale of each block
    so every block starts as the identity, which helps training from scratch.
    ``fewer_pass_batch_norm``: every BatchNorm trains with the hand-written gradient of
    ``models.batch_norm`` (same numbers, fewer passes over memory). ``strided_space_to_depth``: every
    stride-2 conv after the stem (a stage's first block and its shortcut) computes ``space_to_depth_conv``.
    """

    def __init__(
        self,
        *,
        depth: int,
        num_classes: int,
        width: float = 1.0,
        dropout_rate: float = 0.0,
        zero_init_residual: bool = True,
        stride_in_1x1: bool = False,
        stem_space_to_depth: bool = False,
        stem_pad_channels: bool = False,
        strided_space_to_depth: bool = False,
        fewer_pass_batch_norm: bool = False,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if depth not in BLOCKS_PER_STAGE:
            raise ValueError(f"depth must be one of {sorted(BLOCKS_PER_STAGE)}, got {depth}")
        self.depth = depth
        self.width = width
        self.stride_in_1x1 = stride_in_1x1
        self.dropout_rate = dropout_rate
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        bottleneck = depth in BOTTLENECK_DEPTHS

        in_ch = scaled(STEM_WIDTH, width)
        self.stem = GrayStem(in_ch, space_to_depth=stem_space_to_depth, pad_channels=stem_pad_channels, **kw)
        stages = []
        for stage, (n_blocks, stage_width) in enumerate(zip(BLOCKS_PER_STAGE[depth], STAGE_WIDTHS, strict=True)):
            blocks = []
            for b in range(n_blocks):
                stride = 2 if stage > 0 and b == 0 else 1
                if bottleneck:
                    block = BottleneckBlock(
                        in_ch,
                        scaled(stage_width, width),
                        stride,
                        zero_init_residual=zero_init_residual,
                        stride_in_1x1=stride_in_1x1,
                        **kw,
                    )
                else:
                    block = BasicBlock(
                        in_ch, scaled(stage_width, width), stride, zero_init_residual=zero_init_residual, **kw
                    )
                blocks.append(block)
                in_ch = block.out_ch
            stages.append(nnx.List(blocks))
        self.stages = nnx.List(stages)
        use_space_to_depth(self.stages, strided_space_to_depth)
        self.num_features = in_ch
        self.dropout = nnx.Dropout(dropout_rate)
        self.head = nnx.Linear(in_ch, num_classes, dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs)
        batch_norm_lib.use_fewer_passes(self, fewer_pass_batch_norm)

    def feature_map(self, x: jax.Array, *, train: bool = False, stages: int | None = None) -> jax.Array:
        """The feature map (N, h, w, C) after the first ``stages`` stages (all by default), float32.

        Grad-CAM explains such a map: the last stage's is the most class-specific but coarse
        (1/32 of the input), the one before is twice as fine.
        """
        x = self.stem(x, train=train)
        for stage in self.stages[:stages]:
            for block in stage:
                x = block(x, train=train)
        return x.astype(jnp.float32)

    def logits_from(self, x: jax.Array, *, stage: int) -> jax.Array:
        """Inference logits from ``feature_map(..., stages=stage)``: the remaining stages, pool and head."""
        for later in self.stages[stage:]:
            for block in later:
                x = block(x, train=False)
        return self.head(jnp.mean(x.astype(jnp.float32), axis=(1, 2)))


def create_model(
    name: str,
    *,
    num_classes: int,
    width: float = 1.0,
    dropout_rate: float = 0.0,
    dtype=jnp.float32,
    seed: int = 0,
    zero_init_residual: bool = True,
    stride_in_1x1: bool = False,
    stem_space_to_depth: bool = False,
    stem_pad_channels: bool = False,
    strided_space_to_depth: bool = False,
    fewer_pass_batch_norm: bool = False,
) -> ResNet:
    """Build a ResNet by name (``resnet18`` … ``resnet152``) with parameters initialised from ``seed``.

    Pass ``stride_in_1x1=True`` for a ResNet-50 that will receive Keras ImageNet weights.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
    return ResNet(
        depth=MODEL_NAMES[name],
        num_classes=num_classes,
        width=width,
        dropout_rate=dropout_rate,
        zero_init_residual=zero_init_residual,
        stride_in_1x1=stride_in_1x1,
        stem_space_to_depth=stem_space_to_depth,
        stem_pad_channels=stem_pad_channels,
        strided_space_to_depth=strided_space_to_depth,
        fewer_pass_batch_norm=fewer_pass_batch_norm,
        dtype=dtype,
        rngs=nnx.Rngs(params=seed),
    )

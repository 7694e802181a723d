"""Import Keras Applications DenseNet121 ImageNet weights into a lungjax ``DenseNet``, with h5py only.

The file layouts are those :mod:`lungjax.models.pretrained` reads for ResNet50 (checked against
files written by Keras 3.15), with DenseNet's layer names:

* legacy HDF5, as cached by ``keras.applications.DenseNet121(weights="imagenet")``
    (``densenet121_weights_tf_dim_ordering_tf_kernels[_notop].h5``): root attribute
    ``layer_names``, one group per layer whose ``weight_names`` attribute lists its datasets. The
    ImageNet files were written by Keras 2, whose DenseNet (keras-applications) named the stem
    ``conv1/conv`` and ``conv1/bn`` (nested HDF5 groups, weights ``conv1/conv/kernel:0``); Keras 3
    names them ``conv1_conv`` and ``conv1_bn``. Both are read (the Keras 2 spelling is tested on a
    Keras 3 file renamed that way: no ImageNet file is downloaded).
    The other layers are ``conv{b}_block{i}_{0_bn,1_conv,1_bn,2_conv}``, ``pool{b}_{bn,conv}`` and
    ``bn`` in both;
* Keras 3 ``.weights.h5``: ``layers/<auto name>/vars/<i>`` with per-class counters in
    ``model.layers`` order (``conv2d`` .. ``conv2d_119``, ``batch_normalization`` ..
    ``batch_normalization_120``); a Conv2D has the one var ``kernel`` (DenseNet's convs have no bias),
    a BatchNormalization (gamma, beta, moving_mean, moving_variance).

The ImageNet head (``fc1000`` in Keras 2, ``predictions`` in Keras 3) is ignored. The stem folds
Keras' torch-mode preprocessing exactly, so that for a gray image ``x`` in [0, 1]
``model.features(x) == keras_model(preprocess_input(255 * repeat(x, 3, axis=-1)))`` with
``pooling="avg"``; see ``_gray_stem``.
"""

from os import PathLike

import h5py
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lungjax.models import pretrained
from lungjax.models.densenet import BLOCKS_121, DenseNet
from lungjax.models.pretrained import BN_VARS, KERAS_INPUT_CHANNELS, check_shape

# keras.applications.imagenet_utils.preprocess_input(mode="torch"): pixels in 0..255 divided by 255,
# then this RGB mean subtracted and the result divided by this RGB standard deviation, all before
# the zero padding.
TORCH_RGB_MEAN = (0.485, 0.456, 0.406)
TORCH_RGB_STD = (0.229, 0.224, 0.225)
CONV_VARS = ("kernel",)
HEAD_LAYERS = frozenset({"fc1000", "predictions"})
STEM_CONV = "conv1_conv"


def _keras_layers(model: DenseNet) -> list[tuple[str, nnx.Module]]:
    """(Keras layer name, our Conv or BatchNorm) for every weighted layer, in ``model.layers`` order."""
    layers = [(STEM_CONV, model.stem.conv), ("conv1_bn", model.stem.bn)]
    for index, stage in enumerate(model.stages):
        block = index + 2
        for i, layer in enumerate(stage.layers, start=1):
            name = f"conv{block}_block{i}"
            layers += [
                (f"{name}_0_bn", layer.bn0),
                (f"{name}_1_conv", layer.conv1),
                (f"{name}_1_bn", layer.bn1),
                (f"{name}_2_conv", layer.conv2),
            ]
        if index < len(model.transitions):
            layers += [(f"pool{block}_bn", stage.bn), (f"pool{block}_conv", model.transitions[index].conv)]
        else:
            layers.append(("bn", stage.bn))
    return layers


def _var_names(module: nnx.Module) -> tuple[str, ...]:
    return CONV_VARS if isinstance(module, nnx.Conv) else BN_VARS


def _read_legacy(f: h5py.File, layers: list[tuple[str, nnx.Module]]) -> dict[str, dict[str, np.ndarray]]:
    # Keras 2's "conv1/conv" is Keras 3's "conv1_conv"; the file's own spelling opens its group.
    in_file = {n.replace("/", "_"): n for n in pretrained.decoded(f.attrs["layer_names"])}
    weighted = {n for n, original in in_file.items() if len(f[original].attrs.get("weight_names", ())) > 0}
    expected = {name for name, _ in layers}
    pretrained.check_layer_names("DenseNet121", expected, weighted, f"dense blocks {BLOCKS_121}", HEAD_LAYERS)
    return {name: pretrained.legacy_layer(f[in_file[name]], name, _var_names(module)) for name, module in layers}


def _read_keras3(f: h5py.File, layers: list[tuple[str, nnx.Module]]) -> dict[str, dict[str, np.ndarray]]:
    in_file = f["layers"]
    # Keras counts each class apart, so the k-th conv2d_* is the k-th Conv2D in model.layers order.
    convs = [name for name, module in layers if isinstance(module, nnx.Conv)]
    bns = [name for name, module in layers if not isinstance(module, nnx.Conv)]
    file_convs = pretrained.keras3_numbered(in_file, pretrained.KERAS3_CONV)
    file_bns = pretrained.keras3_numbered(in_file, pretrained.KERAS3_BN)
    if len(file_convs) != len(convs) or len(file_bns) != len(bns):
        raise ValueError(
            f"not a Keras DenseNet121 weights file: expected {len(convs)} Conv2D and {len(bns)} "
            f"BatchNormalization layers, found {len(file_convs)} and {len(file_bns)}"
        )
    auto_name = dict(zip(convs, file_convs, strict=True)) | dict(zip(bns, file_bns, strict=True))
    return {
        name: pretrained.keras3_layer(in_file, auto_name[name], _var_names(module), f"{auto_name[name]} ({name})")
        for name, module in layers
    }


def _gray_stem(kernel_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fold torch-mode preprocessing of a gray image into the (kernel, border_kernel) pair of ``GrayStem``.

    Keras computes ``conv(pad0((255 x / 255 - m_c) / s_c), K_c)`` summed over channels c (the 255
    that makes 0..255 pixels of ``x`` cancels Keras' division). By linearity this is
    ``conv(pad0(x), sum_c K_c / s_c) + conv(pad0(ones), -sum_c (m_c / s_c) K_c)``: the second term is
    the stem's border conv on the valid-pixel mask, exact at the borders too.
    """
    std = np.asarray(TORCH_RGB_STD, np.float64)[None, None, :, None]
    mean = np.asarray(TORCH_RGB_MEAN, np.float64)[None, None, :, None]
    kernel = (kernel_rgb / std).sum(axis=2, keepdims=True)
    border = -(kernel_rgb * mean / std).sum(axis=2, keepdims=True)
    return kernel, border


def _assignments(model: DenseNet, name: str, module: nnx.Module, weights: dict[str, np.ndarray]) -> list:
    """(variable, value) pairs for one Keras layer, shape-checked; nothing is written yet."""
    if name == STEM_CONV:
        file_kernel = weights["kernel"].astype(np.float64)
        shape = module.kernel.shape
        check_shape(f"{name} kernel", file_kernel.shape, (*shape[:2], KERAS_INPUT_CHANNELS, *shape[3:]))
        kernel, border = _gray_stem(file_kernel)
        pairs = [(module.kernel, kernel), (model.stem.border_conv.kernel, border)]
    elif isinstance(module, nnx.Conv):
        pairs = [(module.kernel, weights["kernel"])]
    else:
        pairs = [
            (module.scale, weights["gamma"]),
            (module.bias, weights["beta"]),
            (module.mean, weights["moving_mean"]),
            (module.var, weights["moving_variance"]),
        ]
    for variable, value in pairs:
        check_shape(name, np.shape(value), variable.shape)
    return pairs


def load_keras_densenet121(model: DenseNet, path: str | PathLike) -> DenseNet:
    """Overwrite ``model``'s backbone in place with Keras DenseNet121 weights from ``path``; returns ``model``.

    ``model`` must be a full-width DenseNet-121 (``create_densenet("densenet121", ...)``). The
    classification head keeps its initialisation. Everything is validated before anything is
    written, so a ``ValueError`` leaves the model untouched.
    """
    if model.blocks != BLOCKS_121:
        raise ValueError(
            f"Keras DenseNet121 weights need a DenseNet-121 (dense blocks {BLOCKS_121}), got blocks "
            f"{model.blocks}; build it with create_densenet('densenet121', ...)"
        )
    layers = _keras_layers(model)
    with h5py.File(path, "r") as f:
        if "layer_names" in f.attrs:
            weights = _read_legacy(f, layers)
        elif "layers" in f:
            weights = _read_keras3(f, layers)
        else:
            raise ValueError(
                f'{path} is not a Keras weights file: expected a "layer_names" attribute (legacy HDF5) '
                f'or a "layers" group (Keras 3 .weights.h5), found top-level keys {sorted(f)}'
            )
    pairs = [pair for name, module in layers for pair in _assignments(model, name, module, weights[name])]
    for variable, value in pairs:
        variable[...] = jnp.asarray(value, variable.dtype)
    return model

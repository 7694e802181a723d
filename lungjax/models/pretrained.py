"""Import Keras Applications ResNet50 ImageNet weights into a lungjax ``ResNet``, with h5py only.

Two file layouts are read (both checked against files written by Keras 3.15):

* legacy HDF5, as cached by ``keras.applications.ResNet50(weights="imagenet")``
    (``resnet50_weights_tf_dim_ordering_tf_kernels[_notop].h5``): root attribute ``layer_names``,
    one group per layer name (``conv1_conv``, ``conv2_block1_1_bn``, ...) whose ``weight_names``
    attribute lists its datasets (``conv1_conv/kernel[:0]``, ``.../gamma``, ...);
* Keras 3 ``.weights.h5``: ``layers/<auto name>/vars/<i>`` where the auto names are the class
    name in snake case plus a counter in ``model.layers`` order (``conv2d``, ``conv2d_1``, ...,
    ``batch_normalization_52``), Conv2D vars = (kernel, bias) and BatchNormalization vars =
    (gamma, beta, moving_mean, moving_variance). Keras lists a projection block's layers as
    ``_1, _2, _0 (shortcut), _3``, which fixes the counter order.

The ImageNet head (``predictions`` / ``dense``) is ignored. Conversions, all exact in real
arithmetic: each conv bias is folded into the following BatchNorm's running mean; the RGB stem
becomes the gray stem such that, for a gray image ``x`` in [0, 1],
``model(x) == keras_model(preprocess_input(255 * repeat(x, 3, axis=-1)))`` (caffe mode: BGR
order, ImageNet BGR mean subtracted *before* the zero padding), see ``_gray_stem``.
"""

import re
from os import PathLike

import h5py
import jax.numpy as jnp
import numpy as np

from lungjax.models.resnet import BLOCKS_PER_STAGE, ResNet

KERAS_DEPTH = 50
KERAS_INPUT_CHANNELS = 3
# keras.applications.imagenet_utils.preprocess_input(mode="caffe"): inputs in 0..255, channels
# reordered to BGR, then this per-channel mean subtracted.
CAFFE_PIXEL_SCALE = 255.0
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
CONV_VARS = ("kernel", "bias")
BN_VARS = ("gamma", "beta", "moving_mean", "moving_variance")
HEAD_LAYERS = frozenset({"predictions"})
KERAS3_CONV = re.compile(r"conv2d(?:_(\d+))?")
KERAS3_BN = re.compile(r"batch_normalization(?:_(\d+))?")


def _keras_units() -> list[str]:
    """Conv+BN unit names of Keras' ResNet50 in ``model.layers`` order (``conv1``, ``conv2_block1_1``, ...)."""
    units = ["conv1"]
    for stage, n_blocks in enumerate(BLOCKS_PER_STAGE[KERAS_DEPTH], start=2):
        for block in range(1, n_blocks + 1):
            parts = ("1", "2", "0", "3") if block == 1 else ("1", "2", "3")
            units += [f"conv{stage}_block{block}_{part}" for part in parts]
    return units


def _model_unit(model: ResNet, unit: str):
    """The (conv, bn) modules of ``model`` that Keras unit ``conv{s}_block{b}_{i}`` maps to."""
    stage, block, part = re.fullmatch(r"conv(\d)_block(\d+)_(\d)", unit).groups()
    module = model.stages[int(stage) - 2][int(block) - 1]
    if part == "0":
        return module.shortcut.conv, module.shortcut.bn
    return getattr(module, f"conv{part}"), getattr(module, f"bn{part}")


def _short_list(names) -> str:
    names = sorted(names)
    return ", ".join(names[:5]) + (f" ... ({len(names)} in all)" if len(names) > 5 else "")


def _numeric(dataset: h5py.Dataset) -> np.ndarray:
    """A dataset's values, refused unless they are numbers: a weights file is untrusted input, and
    strings, objects or opaque blobs (e.g. a pickle) have no place where a kernel should be."""
    if dataset.dtype.kind not in "fiu":
        raise ValueError(
            f"{dataset.name}: dataset of type {dataset.dtype} where numbers were expected; "
            "not a weights file this loader accepts"
        )
    return dataset[()]


def check_layer_names(
    model: str, expected: set[str], weighted: set[str], layout: str, head_layers: frozenset = HEAD_LAYERS
) -> None:
    """Refuses a legacy file whose weighted layers are not ``expected`` (the ImageNet head aside)."""
    missing, extra = expected - weighted, weighted - expected - head_layers
    if missing or extra:
        raise ValueError(
            f"not a Keras {model} weights file: "
            + (f"missing layers {_short_list(missing)}; " if missing else "")
            + (f"unexpected layers {_short_list(extra)}; " if extra else "")
            + f"expected the {len(expected)} conv/bn layers of {layout}"
        )


def decoded(names) -> list[str]:
    """HDF5 attribute strings, which h5py gives as bytes or str depending on how they were written."""
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def legacy_layer(group: h5py.Group, name: str, var_names) -> dict[str, np.ndarray]:
    """One layer of a legacy HDF5 file, its weights by short name (``kernel``, ``gamma``, ...)."""
    arrays = {
        weight_name.split("/")[-1].split(":")[0]: _numeric(group[weight_name])
        for weight_name in decoded(group.attrs["weight_names"])
    }
    if set(arrays) != set(var_names):
        raise ValueError(f"layer {name}: expected weights {var_names}, found {sorted(arrays)}")
    return arrays


def keras3_numbered(layers: h5py.Group, pattern: re.Pattern) -> list[str]:
    """A Keras 3 file's auto-named layers of one class (``conv2d``, ``conv2d_1``, ...) in counter order:
    Keras counts each class apart, in ``model.layers`` order."""
    found = [(m.group(1), name) for name in layers if (m := pattern.fullmatch(name))]
    return [name for _, name in sorted(found, key=lambda item: int(item[0] or 0))]


def keras3_layer(layers: h5py.Group, name: str, var_names, label: str | None = None) -> dict[str, np.ndarray]:
    """One layer of a Keras 3 ``.weights.h5`` file: ``vars/<i>`` in ``var_names`` order."""
    variables = layers[name]["vars"]
    if len(variables) != len(var_names):
        raise ValueError(f"layer {label or name}: expected {len(var_names)} vars {var_names}, found {len(variables)}")
    return {var: _numeric(variables[str(i)]) for i, var in enumerate(var_names)}


def _read_legacy(f: h5py.File, units: list[str]) -> dict[str, dict[str, np.ndarray]]:
    weighted = {n for n in decoded(f.attrs["layer_names"]) if len(f[n].attrs.get("weight_names", ())) > 0}
    expected = {f"{u}_{kind}" for u in units for kind in ("conv", "bn")}
    check_layer_names("ResNet50", expected, weighted, f"blocks per stage {BLOCKS_PER_STAGE[KERAS_DEPTH]}")

    def layer(name, var_names):
        return legacy_layer(f[name], name, var_names)

    return {u: {**layer(f"{u}_conv", CONV_VARS), **layer(f"{u}_bn", BN_VARS)} for u in units}


def _read_keras3(f: h5py.File, units: list[str]) -> dict[str, dict[str, np.ndarray]]:
    layers = f["layers"]
    convs, bns = keras3_numbered(layers, KERAS3_CONV), keras3_numbered(layers, KERAS3_BN)
    if len(convs) != len(units) or len(bns) != len(units):
        raise ValueError(
            f"not a Keras ResNet50 weights file: expected {len(units)} Conv2D and {len(units)} "
            f"BatchNormalization layers, found {len(convs)} and {len(bns)}"
        )
    return {
        u: {**keras3_layer(layers, c, CONV_VARS), **keras3_layer(layers, b, BN_VARS)}
        for u, c, b in zip(units, convs, bns, strict=True)
    }


def _gray_stem(kernel_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fold caffe preprocessing of a gray image into the (kernel, border_kernel) pair of ``GrayStem``.

    Keras computes ``conv(pad0(255 x - m_c), K_c)`` summed over channels c. By linearity this is
    ``conv(pad0(x), 255 sum_c K_c) + conv(pad0(ones), -sum_c m_c K_c)``: the second term is the
    stem's border conv on the valid-pixel mask, exact at the borders too.
    """
    mean = np.asarray(CAFFE_BGR_MEAN, np.float64)[None, None, :, None]
    kernel = CAFFE_PIXEL_SCALE * kernel_bgr.sum(axis=2, keepdims=True)
    border = -(mean * kernel_bgr).sum(axis=2, keepdims=True)
    return kernel, border


def _assignments(model: ResNet, unit: str, weights: dict[str, np.ndarray]) -> list:
    """(variable, value) pairs for one Keras conv+bn unit, shape-checked; nothing is written yet."""
    if unit == "conv1":
        conv, bn = model.stem.conv, model.stem.bn
        file_kernel = weights["kernel"].astype(np.float64)
        expected = conv.kernel.shape[:2] + (KERAS_INPUT_CHANNELS,) + conv.kernel.shape[3:]
        check_shape("conv1_conv kernel", file_kernel.shape, expected)
        kernel, border = _gray_stem(file_kernel)
        pairs = [(conv.kernel, kernel), (model.stem.border_conv.kernel, border)]
    else:
        conv, bn = _model_unit(model, unit)
        pairs = [(conv.kernel, weights["kernel"])]
    moving_mean = weights["moving_mean"].astype(np.float64) - weights["bias"]
    pairs += [
        (bn.scale, weights["gamma"]),
        (bn.bias, weights["beta"]),
        (bn.mean, moving_mean),
        (bn.var, weights["moving_variance"]),
    ]
    for variable, value in pairs:
        check_shape(unit, np.shape(value), variable.shape)
    return pairs


def check_shape(what: str, found: tuple, expected: tuple) -> None:
    if tuple(found) != tuple(expected):
        raise ValueError(f"{what}: file has shape {tuple(found)}, model expects {tuple(expected)}")


def load_keras_resnet50(model: ResNet, path: str | PathLike) -> ResNet:
    """Overwrite ``model``'s backbone in place with Keras ResNet50 weights from ``path``; returns ``model``.

    ``model`` must be a full-width ResNet-50 built with ``stride_in_1x1=True`` (Keras' ResNet50
    is ResNet v1). The classification head keeps its initialisation. Everything is validated
    before anything is written, so a ``ValueError`` leaves the model untouched.
    """
    if model.depth != KERAS_DEPTH or not model.stride_in_1x1:
        raise ValueError(
            "Keras ResNet50 weights need a ResNet-50 with stride_in_1x1=True (ResNet v1), got "
            f"depth={model.depth}, stride_in_1x1={model.stride_in_1x1}; build it with "
            "create_model('resnet50', ..., stride_in_1x1=True)"
        )
    units = _keras_units()
    with h5py.File(path, "r") as f:
        if "layer_names" in f.attrs:
            weights = _read_legacy(f, units)
        elif "layers" in f:
            weights = _read_keras3(f, units)
        else:
            raise ValueError(
                f'{path} is not a Keras weights file: expected a "layer_names" attribute (legacy HDF5) '
                f'or a "layers" group (Keras 3 .weights.h5), found top-level keys {sorted(f)}'
            )
    pairs = [pair for unit in units for pair in _assignments(model, unit, weights[unit])]
    for variable, value in pairs:
        variable[...] = jnp.asarray(value, variable.dtype)
    return model

"""Keras ResNet50 weight import: exact parity with Keras on gray images, and clear errors on bad files."""

import os
import shutil

import h5py
import numpy as np
import pytest
from flax import nnx

os.environ["KERAS_BACKEND"] = "jax"  # keras defaults to TensorFlow, which is not a dependency.
keras = pytest.importorskip("keras")
from keras.src.legacy.saving import legacy_h5_format  # noqa: E402

from lungjax.models.pretrained import load_keras_resnet50  # noqa: E402
from lungjax.models.resnet import create_model  # noqa: E402

NUM_CLASSES = 6
IMAGE_SHAPE = (2, 64, 64, 1)
PARITY_RTOL = 1e-4
LEGACY, KERAS3 = "legacy.h5", "resnet50.weights.h5"


def _randomise(model, rng):
    """Replace Keras' trivial BatchNorm stats and zero conv biases so every folded term is exercised."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.gamma.shape
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, shape),
                    rng.normal(0, 0.1, shape),
                    rng.normal(0, 0.1, shape),
                    rng.uniform(0.5, 1.5, shape),
                ]
            )
        elif isinstance(layer, keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 0.1, bias.shape)])


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    """Both weight layouts of one random Keras ResNet50, plus its pooled features on a gray batch."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = keras.applications.ResNet50(
        weights=None, include_top=False, pooling="avg", input_shape=(*IMAGE_SHAPE[1:3], 3)
    )
    _randomise(model, rng)
    root = tmp_path_factory.mktemp("keras")
    model.save_weights(root / KERAS3)
    with h5py.File(root / LEGACY, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    gray = rng.uniform(0, 1, IMAGE_SHAPE).astype(np.float32)
    rgb = keras.applications.resnet50.preprocess_input(np.repeat(255 * gray, 3, axis=-1))
    return root, gray, np.asarray(model.predict(rgb, verbose=0))


def _v1_resnet50(**kw):
    return create_model("resnet50", num_classes=NUM_CLASSES, stride_in_1x1=True, **kw)


def _abstract(build):
    """Shape-only model: enough for loads that must fail validation before writing anything."""
    return nnx.eval_shape(build)


def _relative_error(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("layout", [LEGACY, KERAS3])
def test_features_match_keras_on_caffe_preprocessed_gray_images(keras_files, layout):
    root, gray, expected = keras_files
    model = load_keras_resnet50(_v1_resnet50(), root / layout)
    assert _relative_error(np.asarray(model.features(gray)), expected) <= PARITY_RTOL
    assert model(gray).shape == (IMAGE_SHAPE[0], NUM_CLASSES)


def test_border_term_is_what_makes_padding_exact(keras_files):
    """Without the stem's padding-aware bias the same weights are far off, so parity above is not luck."""
    root, gray, expected = keras_files
    model = load_keras_resnet50(_v1_resnet50(), root / LEGACY)
    border = model.stem.border_conv.kernel
    border[...] = np.zeros(border.shape, border.dtype)
    assert _relative_error(np.asarray(model.features(gray)), expected) > 100 * PARITY_RTOL


def test_rejects_a_file_that_is_not_keras_weights(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.zeros(3))
    with pytest.raises(ValueError, match=r"not a Keras weights file.*found top-level keys \['images'\]"):
        load_keras_resnet50(_abstract(_v1_resnet50), path)


def test_rejects_a_deeper_resnet_legacy_file(keras_files, tmp_path):
    """A ResNet101-style file (extra conv4 blocks) must name the blocks it did not expect."""
    root, _, _ = keras_files
    path = tmp_path / "deeper.h5"
    shutil.copy(root / LEGACY, path)
    with h5py.File(path, "a") as f:
        extra = [f"conv4_block7_{part}_{kind}" for part in "123" for kind in ("conv", "bn")]
        for name in extra:
            f.copy(f[name.replace("block7", "block6")], name)
        f.attrs["layer_names"] = np.array([*f.attrs["layer_names"], *extra], dtype="S")
    with pytest.raises(ValueError, match="unexpected layers conv4_block7_1_bn"):
        load_keras_resnet50(_abstract(_v1_resnet50), path)


def test_rejects_a_deeper_resnet_keras3_file(keras_files, tmp_path):
    root, _, _ = keras_files
    path = tmp_path / "deeper.weights.h5"
    shutil.copy(root / KERAS3, path)
    with h5py.File(path, "a") as f:
        f.copy(f["layers/conv2d_52"], "layers/conv2d_53")
    with pytest.raises(ValueError, match="expected 53 Conv2D .* found 54 and 53"):
        load_keras_resnet50(_v1_resnet50(), path)


def test_rejects_mismatched_shapes_and_a_v1_5_model(keras_files):
    root, _, _ = keras_files
    narrow = _abstract(lambda: _v1_resnet50(width=0.5))
    with pytest.raises(ValueError, match=r"file has shape \(7, 7, 3, 64\), model expects \(7, 7, 3, 32\)"):
        load_keras_resnet50(narrow, root / KERAS3)
    v1_5 = _abstract(lambda: create_model("resnet50", num_classes=NUM_CLASSES))
    with pytest.raises(ValueError, match="stride_in_1x1=True"):
        load_keras_resnet50(v1_5, root / LEGACY)

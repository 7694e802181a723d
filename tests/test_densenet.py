"""DenseNet-121: parameter count against Keras, shapes, dtype policy, train/eval state, the Grad-CAM split,
and exact import of Keras DenseNet121 weights (every file layout) with clear errors on wrong files.

Compiling a full DenseNet-121 on CPU takes seconds (and eager initialisation compiles one XLA
program per weight shape), so the full model is traced abstractly where shapes suffice, a tiny
model (``TINY``) carries the numerical tests, and the Keras comparison shares one module fixture.
"""

import os
import shutil

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lungjax.models import pretrained
from lungjax.models.densenet import NUM_STAGES, DenseNet, create_densenet
from lungjax.models.pretrained_densenet import load_keras_densenet121

os.environ["KERAS_BACKEND"] = "jax"  # keras defaults to TensorFlow, which is not a dependency.

NUM_CLASSES = 6
# keras.applications.DenseNet121(weights=None, include_top=False).count_params() (Keras 3.15),
# which includes the BatchNorm moving statistics.
KERAS_DENSENET121_NOTOP_PARAMS = 7_037_504
IMAGE_SHAPE = (2, 64, 64, 1)
PARITY_RTOL = 1e-4
# Keras 3's legacy HDF5, the same with the stem named as in Keras 2's ImageNet files, Keras 3's format.
LEGACY, KERAS2_LEGACY, KERAS3 = "densenet121.h5", "densenet121_keras2_names.h5", "densenet121.weights.h5"
TINY = dict(num_classes=NUM_CLASSES, width=0.25, blocks=(1, 2, 1, 1), dropout_rate=0.5)
TINY_INPUT = (2, 32, 32, 1)


def _key(seed: int) -> jax.Array:
    """An RBG key: its random bits compile in a fraction of the default threefry's time."""
    return jax.random.key(seed, impl="rbg")


def _count(state) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(state))


def _leaves(model, kind):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(nnx.state(model, kind))]


@pytest.fixture(scope="module")
def abstract_densenet121():
    """Shape-only DenseNet-121: enough for shapes and for loads that must fail before writing anything."""
    return nnx.eval_shape(lambda: create_densenet("densenet121", num_classes=NUM_CLASSES))


def _zeros_like(abstract):
    """A concrete model of ``abstract``'s structure, all zeros: the loader overwrites all but the head."""
    graphdef, state = nnx.split(abstract)
    return nnx.merge(graphdef, jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), state))


@pytest.fixture(scope="module")
def tiny():
    return DenseNet(**TINY, rngs=nnx.Rngs(params=_key(0)))


@pytest.fixture(scope="module")
def tiny_images():
    return jax.random.uniform(jax.random.key(0), TINY_INPUT)


# ------------------------------------------------------------------ the model


def test_headless_densenet121_param_count_matches_keras_up_to_the_stem(abstract_densenet121):
    model = abstract_densenet121
    ours = _count(nnx.state(model, nnx.Param)) + _count(nnx.state(model, nnx.BatchStat)) - _count(nnx.state(model.head))
    stem_kernel = 7 * 7 * 64
    dropped_rgb_channels = 2 * stem_kernel  # Keras' stem sees 3 channels, ours 1.
    border_kernel = stem_kernel  # GrayStem's padding-aware bias conv (one input channel).
    # Keras' DenseNet convs have no bias, so nothing else differs.
    assert KERAS_DENSENET121_NOTOP_PARAMS - ours == dropped_rgb_channels - border_kernel
    assert model.num_features == 1024


def test_densenet121_shapes_per_stage(abstract_densenet121):
    model, x = abstract_densenet121, jax.ShapeDtypeStruct(IMAGE_SHAPE, jnp.float32)
    assert nnx.eval_shape(lambda m, x: m(x), model, x).shape == (IMAGE_SHAPE[0], NUM_CLASSES)
    maps = [nnx.eval_shape(lambda m, x, s=s: m.feature_map(x, stages=s), model, x) for s in range(1, NUM_STAGES + 1)]
    # 1/4 .. 1/32 of the input; channels 64 + 6·32 = 256, 128 + 12·32 = 512, 256 + 24·32 = 1024, 512 + 16·32.
    assert [m.shape for m in maps] == [(2, 16, 16, 256), (2, 8, 8, 512), (2, 4, 4, 1024), (2, 2, 2, 1024)]
    assert {m.dtype for m in maps} == {jnp.dtype(jnp.float32)}


def test_bfloat16_compute_keeps_float32_params_stats_and_logits():
    model = nnx.eval_shape(lambda: DenseNet(**TINY, dtype=jnp.bfloat16, rngs=nnx.Rngs(params=_key(0))))
    x = jax.ShapeDtypeStruct(TINY_INPUT, jnp.float32)
    logits = nnx.eval_shape(lambda m, x: m(x, train=True, rngs=nnx.Rngs(dropout=_key(0))), model, x)
    assert logits.dtype == jnp.float32
    assert nnx.eval_shape(lambda m, x: m.features(x), model, x).dtype == jnp.float32
    state = nnx.state(model, nnx.Param, nnx.BatchStat)
    assert {leaf.dtype for leaf in jax.tree.leaves(state)} == {jnp.dtype(jnp.float32)}
    # Every conv computes in bfloat16.
    graphdef, abstract_state = nnx.split(model)
    jaxpr = jax.make_jaxpr(lambda state, x: nnx.merge(graphdef, state).features(x))(abstract_state, x)
    convs = [eqn for eqn in jaxpr.eqns if eqn.primitive.name == "conv_general_dilated"]
    assert convs and {eqn.outvars[0].aval.dtype for eqn in convs} == {jnp.dtype(jnp.bfloat16)}


def test_model_state_is_only_params_and_batch_stats(tiny):
    _, params, stats, rest = nnx.split(tiny, nnx.Param, nnx.BatchStat, ...)
    assert _count(params) > 0 and _count(stats) > 0
    assert jax.tree.leaves(rest) == []


@nnx.jit
def _train_step(model, x, rngs):
    """Logits and parameter gradients of a train-mode pass; BatchStats update in ``model``."""

    def loss(model, rngs):
        logits = model(x, train=True, rngs=rngs)
        return jnp.sum(logits**2), logits

    (_, logits), grads = nnx.value_and_grad(loss, has_aux=True)(model, rngs)
    return logits, grads


@nnx.jit
def _eval_logits(model, x):
    """Inference logits, and the same from every stage's feature map on (the Grad-CAM split)."""
    return model(x), [model.logits_from(model.feature_map(x, stages=s), stage=s) for s in range(NUM_STAGES + 1)]


@pytest.mark.slow
def test_train_mode_backpropagates_and_updates_batch_stats_eval_mode_does_not(tiny, tiny_images):
    model = nnx.clone(tiny)
    before = _leaves(model, nnx.BatchStat)
    model.train()  # mode flags must not matter: behaviour is chosen by the train= argument.
    _eval_logits(model, tiny_images)
    assert all(np.array_equal(a, b) for a, b in zip(before, _leaves(model, nnx.BatchStat), strict=True))

    logits, grads = _train_step(model, tiny_images, nnx.Rngs(dropout=_key(0)))
    assert logits.shape == (TINY_INPUT[0], NUM_CLASSES) and logits.dtype == jnp.float32
    gradients = [np.asarray(g) for g in jax.tree.leaves(grads)]
    assert all(np.all(np.isfinite(g)) and np.any(g != 0) for g in gradients)
    assert len(gradients) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert all(not np.array_equal(a, b) for a, b in zip(before, _leaves(model, nnx.BatchStat), strict=True))


@pytest.mark.slow
def test_dropout_uses_the_rngs_passed_at_call_time(tiny, tiny_images):
    def train_logits(seed):
        return _train_step(nnx.clone(tiny), tiny_images, nnx.Rngs(dropout=_key(seed)))[0]

    np.testing.assert_array_equal(train_logits(0), train_logits(0))
    assert not np.array_equal(train_logits(0), train_logits(1))
    with pytest.raises(ValueError, match="needs rngs"):
        tiny(tiny_images, train=True)


def test_logits_from_each_stage_map_are_the_logits(tiny, tiny_images):
    """Grad-CAM splits the model at a stage: ``logits_from(feature_map(x, stages=s), stage=s)`` must be ``model(x)``."""
    logits, from_stages = _eval_logits(tiny, tiny_images)
    for split in from_stages:
        np.testing.assert_allclose(split, logits, rtol=1e-5, atol=1e-6)


def test_unknown_name_and_wrong_block_count():
    with pytest.raises(ValueError, match="expected one of densenet121"):
        create_densenet("densenet120", num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match="4 dense blocks"):
        DenseNet(num_classes=NUM_CLASSES, blocks=(6, 12, 24), rngs=nnx.Rngs(0))


# ------------------------------------------------------------------ weight files that must be refused


def _resnet50_file(path, layout):
    """ResNet50's layer names and weight lists in ``layout`` with placeholder values: what a user who
    picked the wrong ImageNet file passes, refused by the names alone."""
    units = pretrained._keras_units()
    with h5py.File(path, "w") as f:
        if layout == LEGACY:
            names = [f"{unit}_{kind}" for unit in units for kind in ("conv", "bn")]
            f.attrs["layer_names"] = np.array(names, dtype="S")
            for name in names:
                group = f.create_group(name)
                weights = [
                    f"{name}/{w}:0" for w in (pretrained.CONV_VARS if name.endswith("_conv") else pretrained.BN_VARS)
                ]
                group.attrs["weight_names"] = np.array(weights, dtype="S")
                for weight in weights:
                    group[weight] = np.zeros(1, np.float32)
        else:
            for i in range(len(units)):
                suffix = f"_{i}" if i else ""
                for layer, n_vars in ((f"conv2d{suffix}", 2), (f"batch_normalization{suffix}", 4)):
                    for v in range(n_vars):
                        f[f"layers/{layer}/vars/{v}"] = np.zeros(1, np.float32)
    return path


def test_rejects_a_resnet50_legacy_file_naming_the_layers(abstract_densenet121, tmp_path):
    path = _resnet50_file(tmp_path / "resnet50.h5", LEGACY)
    with pytest.raises(
        ValueError,
        match=r"not a Keras DenseNet121 weights file: missing layers bn, conv2_block2_0_bn, .* \(187 in all\); "
        r"unexpected layers conv2_block1_0_conv, conv2_block1_2_bn, .* \(52 in all\)",
    ):
        load_keras_densenet121(abstract_densenet121, path)


def test_rejects_a_resnet50_keras3_file_by_its_layer_counts(abstract_densenet121, tmp_path):
    path = _resnet50_file(tmp_path / "resnet50.weights.h5", KERAS3)
    with pytest.raises(ValueError, match="expected 120 Conv2D and 121 BatchNormalization layers, found 53 and 53"):
        load_keras_densenet121(abstract_densenet121, path)


def test_rejects_a_file_that_is_not_keras_weights(abstract_densenet121, tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.zeros(3))
    with pytest.raises(ValueError, match=r"not a Keras weights file.*found top-level keys \['images'\]"):
        load_keras_densenet121(abstract_densenet121, path)


def test_rejects_a_model_that_is_not_densenet121(tiny, tmp_path):
    with pytest.raises(ValueError, match=r"need a DenseNet-121 .* got blocks \(1, 2, 1, 1\)"):
        load_keras_densenet121(tiny, tmp_path / "never_opened.h5")


# ------------------------------------------------------------------ parity with Keras


def _randomise(model, rng):
    """He-scaled kernels and non-trivial BatchNorm statistics, so every folded term is exercised."""
    import keras

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
            shape = layer.kernel.shape
            layer.set_weights([rng.normal(0, np.sqrt(2 / np.prod(shape[:3])), shape)])


def _text(name) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


def _keras2_names(source, path):
    """``source`` with the stem named as in the Keras 2 ImageNet files: ``conv1/conv`` and ``conv1/bn``
    (nested HDF5 groups), weights ``conv1/conv/kernel:0`` and so on."""
    shutil.copy(source, path)
    with h5py.File(path, "a") as f:
        renamed = {"conv1_conv": "conv1/conv", "conv1_bn": "conv1/bn"}
        for old, new in renamed.items():
            group, target = f[old], f.create_group(new)
            weight_names = []
            for weight_name in group.attrs["weight_names"]:
                weight_names.append(f"{new}/{_text(weight_name).split('/')[-1]}:0")
                target[weight_names[-1]] = group[weight_name][()]
            target.attrs["weight_names"] = np.array(weight_names, dtype="S")
            del f[old]
        f.attrs["layer_names"] = np.array([renamed.get(_text(n), _text(n)) for n in f.attrs["layer_names"]], "S")
    return path


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    """Every weight layout of one random Keras DenseNet121, plus its pooled features on a gray batch."""
    keras = pytest.importorskip("keras")
    from keras.src.legacy.saving import legacy_h5_format

    rng = np.random.default_rng(0)
    # A random Glorot init compiles one XLA program per kernel shape, most of a 15 s build on CPU;
    # _randomise replaces every kernel anyway.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(keras.initializers.GlorotUniform, "__call__", lambda self, shape, dtype=None: np.zeros(shape))
        model = keras.applications.DenseNet121(
            weights=None, include_top=False, pooling="avg", input_shape=(*IMAGE_SHAPE[1:3], 3)
        )
    _randomise(model, rng)
    root = tmp_path_factory.mktemp("keras")
    model.save_weights(root / KERAS3)
    with h5py.File(root / LEGACY, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    _keras2_names(root / LEGACY, root / KERAS2_LEGACY)
    gray = rng.uniform(0, 1, IMAGE_SHAPE).astype(np.float32)
    rgb = keras.applications.densenet.preprocess_input(np.repeat(255 * gray, 3, axis=-1))
    return root, gray, np.asarray(model.predict(rgb, verbose=0))


_features = nnx.jit(lambda model, x: model.features(x))


def _relative_error(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("layout", [LEGACY, KERAS2_LEGACY, KERAS3])
def test_features_match_keras_on_torch_preprocessed_gray_images(keras_files, abstract_densenet121, layout):
    root, gray, expected = keras_files
    model = load_keras_densenet121(_zeros_like(abstract_densenet121), root / layout)
    assert _relative_error(np.asarray(_features(model, gray)), expected) <= PARITY_RTOL


def test_border_term_is_what_makes_padding_exact(keras_files, abstract_densenet121):
    """Without the stem's padding-aware bias the same weights are far off, so parity above is not luck."""
    root, gray, expected = keras_files
    model = load_keras_densenet121(_zeros_like(abstract_densenet121), root / KERAS3)
    border = model.stem.border_conv.kernel
    border[...] = np.zeros(border.shape, border.dtype)
    assert _relative_error(np.asarray(_features(model, gray)), expected) > 100 * PARITY_RTOL


def test_a_bad_last_layer_leaves_the_model_untouched(keras_files, abstract_densenet121, tmp_path):
    root, _, _ = keras_files
    path = tmp_path / "bad_last.h5"
    shutil.copy(root / LEGACY, path)
    with h5py.File(path, "a") as f:
        del f["bn/bn/gamma"]
        f["bn/bn/gamma"] = np.ones(1023, np.float32)
    model = _zeros_like(abstract_densenet121)
    with pytest.raises(ValueError, match=r"bn: file has shape \(1023,\), model expects \(1024,\)"):
        load_keras_densenet121(model, path)
    assert not any(np.any(leaf) for leaf in _leaves(model, nnx.Variable))


def test_rejects_a_non_numeric_dataset(keras_files, abstract_densenet121, tmp_path):
    root, _, _ = keras_files
    path = tmp_path / "strings.weights.h5"
    shutil.copy(root / KERAS3, path)
    with h5py.File(path, "a") as f:
        del f["layers/conv2d_7/vars/0"]
        f["layers/conv2d_7/vars/0"] = np.array([b"not a kernel"])
    with pytest.raises(ValueError, match="conv2d_7/vars/0: dataset of type .S12 where numbers were expected"):
        load_keras_densenet121(abstract_densenet121, path)

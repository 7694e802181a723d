"""ResNet family: parameter count against Keras, shapes, dtype policy, train/eval state and FLOPs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lungjax.models import resnet
from lungjax.models.flops import flops_per_image
from lungjax.models.resnet import MODEL_NAMES, create_model

NUM_CLASSES = 6
# keras.applications.ResNet50(weights=None, include_top=False).count_params() (Keras 3.15),
# which includes the BatchNorm moving statistics.
KERAS_RESNET50_NOTOP_PARAMS = 23_587_712
# Published ResNet-50 cost: 4.1 GMACs = 8.2 GFLOPs per 224×224 image.
RESNET50_224_FLOPS = 8.2e9
FLOPS_TOLERANCE = 0.15


def _count(state) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(state))


def test_headless_resnet50_param_count_matches_keras_up_to_the_stem_and_conv_biases():
    model = nnx.eval_shape(lambda: create_model("resnet50", num_classes=NUM_CLASSES))
    head = _count(nnx.state(model.head))
    ours = _count(nnx.state(model, nnx.Param)) + _count(nnx.state(model, nnx.BatchStat)) - head

    stem_kernel = 7 * 7 * 64
    dropped_rgb_channels = 2 * stem_kernel  # Keras' stem sees 3 channels, ours 1.
    # Every Keras conv has a bias (folded into the next BatchNorm on import); ours have none.
    # Bottleneck convs output (f, f, 4f) plus a 4f projection shortcut in each stage's first block.
    conv_biases = 64 + sum(
        n_blocks * (f + f + 4 * f) + 4 * f for n_blocks, f in zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True)
    )
    border_kernel = stem_kernel  # GrayStem's padding-aware bias conv (one input channel).
    assert conv_biases == 26_560
    assert KERAS_RESNET50_NOTOP_PARAMS - ours == dropped_rgb_channels + conv_biases - border_kernel


def test_model_state_is_only_params_and_batch_stats():
    model = nnx.eval_shape(lambda: create_model("resnet18", num_classes=NUM_CLASSES, width=0.25, dropout_rate=0.5))
    _, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    assert _count(params) > 0 and _count(stats) > 0
    assert jax.tree.leaves(rest) == []


@pytest.mark.parametrize(
    "name, width, size",
    [
        ("resnet18", 0.25, 64),
        ("resnet34", 0.25, 32),
        pytest.param("resnet50", 0.25, 64, marks=pytest.mark.slow),
        ("resnet101", 0.25, 32),
        ("resnet152", 0.25, 32),
    ],
)
def test_output_shapes(name, width, size):
    model = create_model(name, num_classes=NUM_CLASSES, width=width)
    x = jnp.ones((2, size, size, 1))
    expansion = 4 if MODEL_NAMES[name] >= 50 else 1
    assert model(x).shape == (2, NUM_CLASSES)
    assert model.features(x).shape == (2, round(512 * width) * expansion)


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params_stats_and_logits():
    model = create_model("resnet18", num_classes=NUM_CLASSES, width=0.25, dtype=jnp.bfloat16)
    x = jnp.ones((2, 32, 32, 1))
    assert model(x, train=True).dtype == jnp.float32
    assert model.features(x).dtype == jnp.float32
    state = nnx.state(model, nnx.Param, nnx.BatchStat)
    assert {leaf.dtype for leaf in jax.tree.leaves(state)} == {jnp.dtype(jnp.float32)}


def test_batch_stats_update_only_in_train_mode():
    model = create_model("resnet18", num_classes=NUM_CLASSES, width=0.25)
    x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 1))
    before = jax.tree.leaves(nnx.state(model, nnx.BatchStat))
    model.train()  # mode flags must not matter: behaviour is chosen by the train= argument.
    model(x, train=False)
    assert all(
        np.array_equal(a, b) for a, b in zip(before, jax.tree.leaves(nnx.state(model, nnx.BatchStat)), strict=True)
    )
    model(x, train=True)
    after = jax.tree.leaves(nnx.state(model, nnx.BatchStat))
    assert all(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_dropout_uses_the_rngs_passed_at_call_time():
    model = create_model("resnet18", num_classes=NUM_CLASSES, width=0.25, dropout_rate=0.5)
    x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 1))

    # train=True also updates BatchStats, which changes the next call; use a fresh copy each time.
    def train_logits(seed):
        return nnx.clone(model)(x, train=True, rngs=nnx.Rngs(dropout=seed))

    np.testing.assert_array_equal(train_logits(0), train_logits(0))
    assert not np.array_equal(train_logits(0), train_logits(1))
    np.testing.assert_array_equal(model(x), model(x, rngs=nnx.Rngs(dropout=1)))
    with pytest.raises(ValueError, match="needs rngs"):
        model(x, train=True)


def test_residual_init_and_stride_placement():
    v15 = create_model("resnet50", num_classes=NUM_CLASSES, width=0.25)
    v1 = create_model("resnet50", num_classes=NUM_CLASSES, width=0.25, stride_in_1x1=True)
    first_v15, first_v1 = v15.stages[1][0], v1.stages[1][0]
    assert (first_v15.conv1.strides, first_v15.conv2.strides) == (1, 2)
    assert (first_v1.conv1.strides, first_v1.conv2.strides) == (2, 1)
    assert not np.any(v15.stages[0][0].bn3.scale[...])
    no_zero = create_model("resnet18", num_classes=NUM_CLASSES, width=0.25, zero_init_residual=False)
    assert np.all(no_zero.stages[0][0].bn2.scale[...] == 1)


def test_unknown_name_lists_the_allowed_names():
    with pytest.raises(ValueError, match="resnet18, resnet34, resnet50, resnet101, resnet152"):
        create_model("resnet20", num_classes=NUM_CLASSES)


def test_resnet50_forward_flops_at_224():
    model = nnx.eval_shape(lambda: create_model("resnet50", num_classes=NUM_CLASSES))
    flops = flops_per_image(model, 224, train=False)
    assert abs(flops / RESNET50_224_FLOPS - 1) <= FLOPS_TOLERANCE


@pytest.mark.slow
def test_training_step_costs_about_three_forward_passes():
    # Backward ≈ 2 × forward (gradients w.r.t. both activations and weights).
    model = create_model("resnet18", num_classes=NUM_CLASSES, width=0.25)
    ratio = flops_per_image(model, 64, train=True) / flops_per_image(model, 64, train=False)
    assert 2.5 <= ratio <= 3.5


def _assert_float32_close(actual, desired, err_msg=""):
    """rtol and atol 1e-5, atol scaled by the largest magnitude: gradients through a train-mode
    BatchNorm are differences of large terms, whose rounding is relative to those terms."""
    scale = max(1.0, float(np.max(np.abs(desired))))
    np.testing.assert_allclose(actual, desired, rtol=1e-5, atol=1e-5 * scale, err_msg=err_msg)


def _stem_outputs_and_kernel_grad(model, x):
    """The stem's eval and train outputs and its kernel's gradient through the train-mode stem, in one jit.
    The stem is the only code the option changes; the layers above it see the same input either way."""
    graphdef, params, rest = nnx.split(model.stem, nnx.Param, ...)

    def square_sum(params, rest):
        stem = nnx.merge(graphdef, params, rest, copy=True)  # fresh Variables in this trace
        return jnp.sum(stem(x, train=True) ** 2)

    @jax.jit
    def run(params, rest):
        stem = nnx.merge(graphdef, params, rest, copy=True)
        outputs = stem(x, train=False), stem(x, train=True)
        return outputs, jax.grad(square_sum)(params, rest)["conv"]["kernel"][...]

    return run(params, rest)


@pytest.mark.parametrize("height, width", [(32, 32), (33, 35)])
def test_space_to_depth_and_padded_channel_stems_are_the_same_function_of_the_same_parameters(height, width):
    """Both rewrites are exact up to float32 summation order, at even and odd sizes, with the same
    parameters: the space-to-depth 4x4/1 conv and the 7x7/2 conv on the image zero-padded to 4 channels."""
    x = jax.random.uniform(jax.random.key(0), (2, height, width, 1))
    stems = {
        name: create_model("resnet18", num_classes=NUM_CLASSES, width=0.125, **flags)
        for name, flags in (
            ("conv", {}),
            ("space_to_depth", {"stem_space_to_depth": True}),
            ("pad_channels", {"stem_pad_channels": True}),
        )
    }
    conv = stems.pop("conv")
    assert not conv.stem.conv.space_to_depth and not conv.stem.pad_channels
    assert stems["space_to_depth"].stem.conv.space_to_depth and stems["pad_channels"].stem.pad_channels
    conv_state = nnx.state(conv, nnx.Param, nnx.BatchStat)
    conv_outputs, conv_grad = _stem_outputs_and_kernel_grad(conv, x)
    assert conv_outputs[0].shape == (2, (height + 3) // 4, (width + 3) // 4, conv.stem.bn.num_features)
    assert np.any(np.asarray(conv_grad) != 0)
    outputs = {}
    for name, model in stems.items():
        state = nnx.state(model, nnx.Param, nnx.BatchStat)
        assert jax.tree.structure(conv_state) == jax.tree.structure(state)  # checkpoints and imports fit all
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(conv_state), jax.tree.leaves(state), strict=True):
            assert a.shape == b.shape, jax.tree_util.keystr(path)
            np.testing.assert_array_equal(a, b)  # same seed, same initial values
        outputs[name], grad = _stem_outputs_and_kernel_grad(model, x)
        for mode, a, b in zip(("eval stem", "train stem"), conv_outputs, outputs[name], strict=True):
            _assert_float32_close(b, a, f"{name} {mode}")
        _assert_float32_close(grad, conv_grad, name)
    for a, b in zip(outputs["space_to_depth"], outputs["pad_channels"], strict=True):  # and so to each other
        _assert_float32_close(b, a, "pad_channels against space_to_depth")


def test_a_stem_is_not_both_space_to_depth_and_padded():
    with pytest.raises(ValueError, match="either space-to-depth or padded to 4 channels"):
        create_model("resnet18", num_classes=NUM_CLASSES, width=0.125, stem_space_to_depth=True, stem_pad_channels=True)


def _pulled_back(function, params, x, cotangent):
    """``function(params, x)`` and its pullback of ``cotangent`` to the parameters' leaves and the input, in one jit."""

    @jax.jit
    def run(params, x):
        y, vjp = jax.vjp(function, params, x)
        params_grad, x_grad = vjp(cotangent)
        return y, jax.tree.leaves(params_grad), x_grad

    return run(params, x)


@pytest.mark.parametrize(
    "kernel, padding, height, width",
    [
        (3, ((1, 1), (1, 1)), 9, 8),  # v1.5's 3x3/2 (and basic blocks'), explicit padding 1
        (1, "VALID", 9, 8),  # v1's 1x1/2 and every projection shortcut
        # The stem's 7x7/2 (also the stem test's) and an even kernel with uneven padding: the general case.
        pytest.param(7, ((3, 3), (3, 3)), 9, 10, marks=pytest.mark.slow),
        pytest.param(2, ((0, 1), (1, 0)), 7, 8, marks=pytest.mark.slow),
    ],
)
def test_space_to_depth_conv_equals_the_stride_2_conv_forward_and_backward(kernel, padding, height, width):
    """Against ``nnx.Conv`` itself, at odd and even sizes: output, and gradients of input and kernel."""
    conv = resnet.Conv(3, 5, (kernel, kernel), strides=2, padding=padding, use_bias=False, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(conv)
    x = jax.random.normal(jax.random.key(1), (2, height, width, 3))
    cotangent = jax.random.normal(jax.random.key(2), conv(x).shape)

    def plain(params, x):
        return nnx.Conv.__call__(nnx.merge(graphdef, params), x)

    def rewritten(params, x):
        return resnet.space_to_depth_conv(nnx.merge(graphdef, params), x)

    expected_y, (expected_kernel_grad,), expected_x_grad = _pulled_back(plain, params, x, cotangent)
    y, (kernel_grad,), x_grad = _pulled_back(rewritten, params, x, cotangent)
    assert y.shape == expected_y.shape
    _assert_float32_close(y, expected_y, "output")
    _assert_float32_close(kernel_grad, expected_kernel_grad, "kernel gradient")
    _assert_float32_close(x_grad, expected_x_grad, "input gradient")
    assert np.any(np.asarray(x_grad) != 0) and np.any(np.asarray(kernel_grad) != 0)


@pytest.mark.parametrize(
    "strides, padding, found",
    [(1, "VALID", "strides 1 and padding 'VALID'"), (2, "SAME", "strides 2 and padding 'SAME'")],
)
def test_space_to_depth_conv_refuses_what_it_does_not_rewrite(strides, padding, found):
    conv = resnet.Conv(3, 5, (3, 3), strides=strides, padding=padding, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=f"with VALID or explicit padding; this one has {found}"):
        resnet.space_to_depth_conv(conv, jnp.zeros((1, 8, 8, 3)))


def _train_logits_and_pullback(model, x, cotangent):
    """Train-mode logits, the updated batch statistics, and the pullback of ``cotangent`` to every
    parameter and to the input, in one jit."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def logits(params, x):
        model = nnx.merge(graphdef, params, rest, copy=True)  # fresh Variables in this trace
        return model(x, train=True), nnx.state(model, nnx.BatchStat)

    @jax.jit
    def run(params, x):
        (y, stats), vjp = jax.vjp(logits, params, x)
        params_grad, x_grad = vjp((cotangent, jax.tree.map(jnp.zeros_like, stats)))
        return y, stats, params_grad, x_grad

    return run(params, x)


def _rewritten_convs(model) -> list[tuple]:
    return sorted(
        path for path, conv in nnx.iter_modules(model) if isinstance(conv, resnet.Conv) and conv.space_to_depth
    )


@pytest.mark.parametrize("name, stride_in_1x1", [("resnet18", False), ("resnet50", False), ("resnet50", True)])
def test_strided_space_to_depth_rewrites_exactly_the_stride_2_convs_and_keeps_the_parameter_tree(name, stride_in_1x1):
    """Stages 2-4: the strided conv of the first block (basic: the first 3x3; bottleneck v1.5: the 3x3;
    v1, Keras': the first 1x1) and its shortcut; the stem's conv is a switch of its own. The parameter
    tree is the same, leaf for leaf, so checkpoints and Keras weights fit either way (full-size shapes,
    traced only)."""
    models = {
        rewrite: nnx.eval_shape(
            lambda rewrite=rewrite: create_model(
                name, num_classes=NUM_CLASSES, stride_in_1x1=stride_in_1x1, strided_space_to_depth=rewrite
            )
        )
        for rewrite in (False, True)
    }
    strided = "conv1" if name == "resnet18" or stride_in_1x1 else "conv2"
    assert _rewritten_convs(models[True]) == sorted(
        path
        for stage in (1, 2, 3)
        for path in (("stages", stage, 0, strided), ("stages", stage, 0, "shortcut", "conv"))
    )
    assert _rewritten_convs(models[False]) == []
    states = {rewrite: nnx.state(model, nnx.Param, nnx.BatchStat) for rewrite, model in models.items()}
    assert jax.tree.structure(states[False]) == jax.tree.structure(states[True])
    for a, b in zip(jax.tree.leaves(states[False]), jax.tree.leaves(states[True]), strict=True):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)


@pytest.mark.slow  # two whole-model gradients per case: about half a minute each on 2 cores
@pytest.mark.parametrize("name, stride_in_1x1", [("resnet18", False), ("resnet50", False), ("resnet50", True)])
def test_strided_space_to_depth_is_the_same_function_of_the_same_parameters(name, stride_in_1x1):
    """The same train-mode logits, batch statistics and gradients of every parameter and the input, and
    the same eval logits, from the same parameters. 35x33 px puts odd feature maps in front of the
    strided convs (9x9 into stage 2, 5x5 into stage 3)."""
    x = jax.random.uniform(jax.random.key(0), (2, 35, 33, 1))
    cotangent = jax.random.normal(jax.random.key(1), (2, NUM_CLASSES))
    models = {
        rewrite: create_model(
            name, num_classes=NUM_CLASSES, width=0.0625, stride_in_1x1=stride_in_1x1, strided_space_to_depth=rewrite
        )
        for rewrite in (False, True)
    }
    expected = _train_logits_and_pullback(models[False], x, cotangent)
    actual = _train_logits_and_pullback(models[True], x, cotangent)
    parts = ("logits", "batch statistics", "parameter gradients", "input gradient")
    for part, a, b in zip(parts, actual, expected, strict=True):
        assert jax.tree.structure(a) == jax.tree.structure(b), part
        for (path, leaf_a), leaf_b in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True):
            _assert_float32_close(leaf_a, leaf_b, f"{part} {jax.tree_util.keystr(path)}")
    assert np.any(np.asarray(expected[3]) != 0)
    _assert_float32_close(models[True](x), models[False](x), "eval logits")

"""Grad-CAM against its closed form and a case with a known answer; pointing-game arithmetic."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lungjax.evaluation import gradcam
from lungjax.evaluation.render import overlays
from lungjax.models.resnet import create_model


@pytest.mark.slow
def test_grad_cam_equals_cam_formula_on_a_resnet():
    """Global average pooling + linear head: Grad-CAM = relu(sum_k W[k, c] A_k) / (h w)."""
    model = create_model("resnet18", num_classes=6, width=0.125, zero_init_residual=False, seed=3)
    x = jax.random.uniform(jax.random.key(0), (3, 64, 64, 1))
    classes = jnp.array([0, 4, 5])

    @jax.jit
    def cams_and_features(x):
        cams = gradcam.grad_cam(model.feature_map, lambda a: model.logits_from(a, stage=4), x, classes)
        return cams, model.feature_map(x)

    cams, features = cams_and_features(x)
    height, width = features.shape[1:3]
    assert (height, width) == (2, 2)
    kernel = model.head.kernel[...]  # (C, num_classes)
    expected = jax.nn.relu(jnp.einsum("nhwk,kn->nhw", features, kernel[:, classes])) / (height * width)
    np.testing.assert_allclose(cams, expected, rtol=1e-5, atol=1e-7)
    assert float(cams.max()) > 0  # the comparison is not vacuous
    # The logits the head sees are the model's own.
    np.testing.assert_allclose(
        jax.jit(lambda a: model.logits_from(a, stage=4))(features), jax.jit(lambda v: model(v))(x), rtol=1e-5, atol=1e-6
    )


def _squares(count: int, size: int, side: int, seed: int = 0):
    """Dim noise images, each with one bright square, and the squares' (x, y, w, h) boxes."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 0.1, (count, size, size, 1)).astype(np.float32)
    boxes = []
    for image in images:
        x, y = rng.integers(0, size - side, size=2)
        image[y : y + side, x : x + side] = 1.0
        boxes.append((x, y, side, side))
    return jnp.asarray(images), np.array(boxes, np.float64)


def test_grad_cam_points_at_the_evidence_of_its_class():
    """Class 0 reads a "bright" channel, class 1 a "dark" one: Grad-CAM finds the square or avoids it."""
    images, boxes = _squares(count=12, size=16, side=4)

    def features_fn(x):
        return jnp.concatenate([x, 1.0 - x], axis=-1)

    def head_fn(a):
        return jnp.mean(a, axis=(1, 2)) @ jnp.array([[2.0, 0.0], [0.0, 2.0]])

    for target, expected_rate in ((0, 1.0), (1, 0.0)):
        classes = jnp.full(len(images), target)
        maps = np.asarray(gradcam.upsample(gradcam.grad_cam(features_fn, head_fn, images, classes), 16))
        assert maps.max(axis=(1, 2)) == pytest.approx(1.0)
        assert gradcam.pointing_game(maps, boxes)["hit_rate"] == expected_rate


def test_heatmap_peak_is_the_centre_of_a_plateau():
    heatmap = np.zeros((8, 8))
    heatmap[2:4, 4:6] = 1.0  # pixels 4, 5 span x in [4, 6): centre 5
    assert overlays.heatmap_peak(heatmap) == (5.0, 3.0)
    heatmap[7, 0] = 2.0
    assert overlays.heatmap_peak(heatmap) == (0.5, 7.5)


def test_pointing_game_arithmetic():
    maps = np.zeros((4, 10, 10))
    maps[0, 1, 1] = 1.0  # peak (1.5, 1.5): inside box 0
    maps[1, 8, 8] = 1.0  # peak (8.5, 8.5): outside box 1
    maps[2, 5, 5] = 1.0  # peak (5.5, 5.5): on the box's edge, which counts
    # maps[3] is flat: it points nowhere, a miss
    boxes = np.array([[0, 0, 5, 5], [0, 0, 2, 10], [2, 2, 3.5, 3.5], [-5, 5, 10, 10]], np.float64)
    result = gradcam.pointing_game(maps, boxes)
    assert (result["n"], result["hits"], result["flat"]) == (4, 2, 1)
    assert result["hit_rate"] == 0.5
    # Box shares of the 100-pixel image: 25, 20, 12.25 and, clipped to the image, 5 x 5 = 25.
    assert result["chance"] == pytest.approx((25 + 20 + 12.25 + 25) / 4 / 100)
    assert gradcam.pointing_game(maps[:0], boxes[:0])["hit_rate"] is None


def test_upsample_scales_each_map_to_one_and_keeps_zero_maps_zero():
    cams = jnp.stack([jnp.array([[0.0, 2.0], [1.0, 0.5]]), jnp.zeros((2, 2))])
    maps = np.asarray(gradcam.upsample(cams, 8))
    assert maps.shape == (2, 8, 8)
    assert maps[0].max() == pytest.approx(1.0) and maps[0].min() >= 0
    assert not maps[1].any()
    assert overlays.heatmap_peak(maps[0])[0] > 4 > overlays.heatmap_peak(maps[0])[1]  # top right


def test_plot_overlays_writes_a_png(tmp_path):
    images = np.zeros((3, 16, 16, 1), np.uint8)
    maps = np.random.default_rng(0).uniform(size=(3, 16, 16))
    boxes = np.array([[2, 2, 4, 4], [-1, -1, -1, -1], [0, 0, 16, 16]], np.float32)
    overlays.plot_overlays(images, maps, ["a", "b", "c"], tmp_path / "grid.png", boxes=boxes)
    assert (tmp_path / "grid.png").read_bytes().startswith(b"\x89PNG")


def test_an_earlier_stage_splits_the_model_exactly():
    """feature_map(stages=k) followed by logits_from(stage=k) is the model, for every k."""
    model = create_model("resnet18", num_classes=6, width=0.125, zero_init_residual=False, seed=1)
    x = jax.random.uniform(jax.random.key(2), (2, 64, 64, 1))
    expected = model(x)
    for stage in range(1, 5):
        split = model.logits_from(model.feature_map(x, stages=stage), stage=stage)
        np.testing.assert_allclose(split, expected, rtol=1e-5, atol=1e-6)
    assert model.feature_map(x, stages=3).shape[1:3] == (4, 4)

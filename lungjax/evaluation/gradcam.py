"""Grad-CAM heatmaps, and the pointing game that checks them against expert boxes.

Grad-CAM (Selvaraju et al., 2017) weights each channel of a stage's feature map by the
spatial mean of the class logit's gradient with respect to it, sums the channels and keeps the
positive part. Our ResNet ends in global average pooling and one linear layer, so on the last
stage this equals CAM: ``relu(sum_k W[k, c] A_k) / (h w)``; the tests hold it to that formula.

The pointing game (Zhang et al., 2016) asks whether the heatmap's maximum falls inside the box
drawn around the finding; for the 14 findings, every (film, finding) box is a game of its own,
played with that finding's heatmap. A point dropped uniformly at random hits a box with probability equal to
the box's share of the image, so the mean of those shares is the chance level to beat.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lungjax import models
from lungjax.data import images, labels, records
from lungjax.evaluation.render import overlays
from lungjax.models import resnet

LAST_STAGE = resnet.NUM_STAGES


def grad_cam(features_fn: Callable, head_fn: Callable, x: jax.Array, classes: jax.Array) -> jax.Array:
    """Grad-CAM (N, h, w) at the feature map's resolution, non-negative and not normalised.

    ``features_fn(x) -> (N, h, w, C)`` and ``head_fn(features) -> (N, num_classes)`` split a model
    at the layer to explain; ``classes`` (N,) picks the logit explained for each image.
    """
    features = features_fn(x)

    def chosen_logits(a):
        return jnp.take_along_axis(head_fn(a), classes[:, None], axis=1).sum()

    gradients = jax.grad(chosen_logits)(features)
    weights = gradients.mean(axis=(1, 2), keepdims=True)  # (N, 1, 1, C)
    return jax.nn.relu((weights * features).sum(axis=-1))


def upsample(cams: jax.Array, size: int) -> jax.Array:
    """(N, h, w) -> (N, size, size) by bilinear interpolation, each map scaled to a maximum of 1."""
    maps = jax.image.resize(cams, (cams.shape[0], size, size), "linear")
    peak = maps.max(axis=(1, 2), keepdims=True)
    return jnp.where(peak > 0, maps / jnp.where(peak > 0, peak, 1.0), 0.0)


def make_grad_cam_fn(graphdef: nnx.GraphDef, dtype, stage: int = LAST_STAGE):
    """jit-compiled ``(model_state, uint8 images (N,S,S,1), classes (N,)) -> heatmaps (N,S,S)`` in [0, 1].

    ``stage`` (1..4) is the ResNet stage whose output is explained: 4, the last, is standard
    Grad-CAM; 3 gives a map twice as fine, which small inputs need (a 64 px image ends in 2x2).
    """
    if not 1 <= stage <= LAST_STAGE:
        raise ValueError(f"config.eval.cam_stage must be in 1..{LAST_STAGE}, got {stage}")

    def cam(model_state, images, classes):
        model = nnx.merge(graphdef, model_state["params"], model_state["batch_stats"])
        x = models.images_to_input(images, dtype)
        maps = grad_cam(
            functools.partial(model.feature_map, stages=stage),
            functools.partial(model.logits_from, stage=stage),
            x,
            classes,
        )
        return upsample(maps, images.shape[1])

    return jax.jit(cam)


def heatmaps_for(cam_fn, model_state, images: np.ndarray, classes: np.ndarray, batch_size: int) -> np.ndarray:
    """Runs ``cam_fn`` in fixed-size (zero-padded) batches, so it compiles once."""
    maps = []
    for start in range(0, len(images), batch_size):
        chunk, chunk_classes = images[start : start + batch_size], classes[start : start + batch_size]
        pad = batch_size - len(chunk)
        padded = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
        padded_classes = np.concatenate([chunk_classes, np.zeros(pad, chunk_classes.dtype)])
        maps.append(np.asarray(cam_fn(model_state, padded, padded_classes))[: len(chunk)])
    return np.concatenate(maps) if maps else np.zeros((0, *images.shape[1:3]), np.float32)


def pointing_game(heatmaps: np.ndarray, boxes: np.ndarray) -> dict:
    """Share of (heatmap, box) pairs whose peak lies in the box, and the chance level.

    ``boxes`` are (x, y, w, h) in the heatmaps' pixels. Chance is the mean share of the image that
    each box covers (clipped to the image): the hit rate of a uniformly random point. A flat
    heatmap points nowhere, so it counts as a miss (and is counted in ``flat``).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return {"n": 0, "hits": 0, "flat": 0, "hit_rate": None, "chance": None}
    height, width = heatmaps.shape[1:3]
    hits = flat = 0
    for heatmap, (x, y, w, h) in zip(heatmaps, boxes, strict=True):
        if heatmap.max() == heatmap.min():
            flat += 1
            continue
        px, py = overlays.heatmap_peak(heatmap)
        hits += int(x <= px <= x + w and y <= py <= y + h)
    visible_w = np.clip(boxes[:, 0] + boxes[:, 2], 0, width) - np.clip(boxes[:, 0], 0, width)
    visible_h = np.clip(boxes[:, 1] + boxes[:, 3], 0, height) - np.clip(boxes[:, 1], 0, height)
    chance = float(np.mean(visible_w * visible_h / (width * height)))
    return {"n": int(len(boxes)), "hits": hits, "flat": flat, "hit_rate": hits / len(boxes), "chance": chance}


def load_images(source: records.ExampleSource, indices: np.ndarray, names: np.ndarray, image_size: int) -> np.ndarray:
    """Rows ``indices`` of a split as the model sees them (N, S, S, 1) uint8, checked by name."""
    out = np.zeros((len(indices), image_size, image_size, 1), np.uint8)
    for row, (index, name) in enumerate(zip(indices, names, strict=True)):
        record = records.parse_example(source.records[int(index)], source.specs, ("image", "image_name"))
        stored_name = record["image_name"]
        stored_name = stored_name.decode() if isinstance(stored_name, bytes) else str(stored_name)
        if stored_name != name:
            raise RuntimeError(f"prediction row {index} is {name} but the split's record is {stored_name}")
        out[row] = images.resize(records.decode_png(record["image"]), image_size)[..., None]
    return out


def explain_split(
    cam_fn,
    model_state,
    source,
    predictions: dict[str, np.ndarray],
    out: Path,
    *,
    image_size: int,
    box_scale: float,
    n_examples: int,
    batch_size: int,
) -> dict:
    """Grad-CAM for the true class on the boxed and the worst-scored examples of a split.

    Writes ``gradcam_worst.png`` (the ``n_examples`` lowest true-class probabilities) and
    ``gradcam_boxed.png`` (the first boxed examples), and returns the pointing game over every
    boxed example, overall and per class. ``box_scale`` maps stored-image pixels to model pixels.
    """
    true_prob = predictions["probs"][np.arange(len(predictions["label"])), predictions["label"]]
    boxed = np.flatnonzero(predictions["bbox"][:, 2] > 0)
    worst = np.argsort(true_prob, kind="stable")[:n_examples]
    rows = np.union1d(boxed, worst)
    images = load_images(source, rows, predictions["image_name"][rows], image_size)
    heatmaps = heatmaps_for(cam_fn, model_state, images, predictions["label"][rows], batch_size)
    position = {row: i for i, row in enumerate(rows)}
    boxes = predictions["bbox"] * box_scale

    def titles(selected):
        predicted = predictions["probs"][selected].argmax(axis=1)
        return [
            f"{predictions['image_name'][r]}\ntrue {labels.CLASS_NAMES[predictions['label'][r]]} "
            f"p={true_prob[r]:.2f}\npred {labels.CLASS_NAMES[p]}"
            for r, p in zip(selected, predicted, strict=True)
        ]

    def grid(selected, path):
        at = [position[r] for r in selected]
        overlays.plot_overlays(images[at], heatmaps[at], titles(selected), path, boxes=boxes[selected])

    if len(worst):
        grid(worst, out / "gradcam_worst.png")
    if n_examples and len(boxed):
        grid(boxed[:n_examples], out / "gradcam_boxed.png")
    boxed_maps = heatmaps[[position[r] for r in boxed]]
    result = pointing_game(boxed_maps, boxes[boxed])
    result["per_class"] = {}
    for k, name in enumerate(labels.CLASS_NAMES):
        of_class = predictions["label"][boxed] == k
        if of_class.any():
            result["per_class"][name] = pointing_game(boxed_maps[of_class], boxes[boxed][of_class])
    return {"method": "Grad-CAM of the true class, last ResNet stage", "pointing_game": result}


def explain_findings(
    cam_fn,
    model_state,
    source,
    predictions: dict[str, np.ndarray],
    out: Path,
    *,
    class_names: Sequence[str],
    image_size: int,
    box_scale: float,
    n_examples: int,
    batch_size: int,
) -> dict:
    """Multi-label Grad-CAM: each boxed (film, finding) pair explained by that finding's logit.

    ``predictions["bbox"]`` is (N, C, 4) with one box (or NO_BOX) per finding; a source's build has no
    boxes (no ``bbox``), so only the worst-scored positives are shown. Writes
    ``gradcam_boxed.png`` (the first boxed pairs) and ``gradcam_worst.png`` (the ``n_examples``
    positive pairs with the lowest probability); returns the pointing game over every boxed pair,
    overall and per finding.
    """
    probs, truth = predictions["probs"], predictions["label"].astype(bool)
    bbox = predictions["bbox"] if "bbox" in predictions else np.full((*truth.shape, 4), -1.0, np.float32)
    boxed_rows, boxed_findings = np.nonzero(bbox[:, :, 2] > 0)
    positive_rows, positive_findings = np.nonzero(truth)
    worst = np.argsort(probs[positive_rows, positive_findings], kind="stable")[:n_examples]
    pairs = np.concatenate(
        [np.stack([boxed_rows, boxed_findings], 1), np.stack([positive_rows[worst], positive_findings[worst]], 1)]
    ).astype(np.int64)
    rows = np.unique(pairs[:, 0])
    images = load_images(source, rows, predictions["image_name"][rows], image_size)
    at = np.searchsorted(rows, pairs[:, 0])
    heatmaps = heatmaps_for(cam_fn, model_state, images[at], pairs[:, 1].astype(np.int32), batch_size)
    boxes = bbox[pairs[:, 0], pairs[:, 1]] * box_scale
    titles = [
        f"{predictions['image_name'][r]}\n{class_names[k]} p={probs[r, k]:.2f}"
        + ("" if truth[r, k] else " (not labelled)")
        for r, k in pairs
    ]
    n_boxed = len(boxed_rows)
    galleries = {
        "gradcam_boxed.png": np.arange(min(n_examples, n_boxed)),
        "gradcam_worst.png": np.arange(n_boxed, len(pairs)),
    }
    for name, shown in galleries.items():
        if len(shown):
            titled = [titles[i] for i in shown]
            overlays.plot_overlays(images[at[shown]], heatmaps[shown], titled, out / name, boxes=boxes[shown])
    result = pointing_game(heatmaps[:n_boxed], boxes[:n_boxed])
    result["per_class"] = {
        class_names[k]: pointing_game(heatmaps[:n_boxed][boxed_findings == k], boxes[:n_boxed][boxed_findings == k])
        for k in np.unique(boxed_findings)
    }
    return {"method": "Grad-CAM of each boxed finding's logit", "pointing_game": result}

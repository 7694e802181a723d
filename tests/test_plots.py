"""Each lungjax.evaluation.render.plots function writes a valid, non-trivial PNG; bad training logs are rejected."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from lungjax.data.labels import CLASS_NAMES
from lungjax.evaluation.render import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Every figure is at least 5 x 5 inches at 120 dpi.
MIN_PIXELS = 600


def assert_png(path: Path) -> None:
    assert path.read_bytes()[: len(PNG_MAGIC)] == PNG_MAGIC
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert min(image.shape[:2]) >= MIN_PIXELS
    assert image.std() > 0  # something was drawn


@pytest.fixture(scope="module")
def predictions() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(CLASS_NAMES), 400)
    logits = rng.normal(size=(400, len(CLASS_NAMES)))
    logits[np.arange(400), labels] += 1.5
    probs = np.exp(logits)
    return labels, probs / probs.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("plot", [plots.plot_roc_curves, plots.plot_pr_curves])
def test_one_vs_rest_curves(plot, predictions, tmp_path):
    path = tmp_path / "curves.png"
    plot(*predictions, CLASS_NAMES, path)
    assert_png(path)


def test_curves_with_a_class_without_positives(predictions, tmp_path):
    labels, probs = predictions
    keep = labels != 1
    for plot in (plots.plot_roc_curves, plots.plot_pr_curves):
        path = tmp_path / f"{plot.__name__}.png"
        plot(labels[keep], probs[keep], CLASS_NAMES, path)
        assert_png(path)


def test_confusion_matrix(tmp_path):
    path = tmp_path / "nested" / "confusion.png"
    counts = np.random.default_rng(1).integers(0, 50, size=(6, 6))
    counts[2] = 0  # a class absent from the test set must not divide by zero
    plots.plot_confusion_matrix(counts, CLASS_NAMES, path)
    assert_png(path)
    with pytest.raises(ValueError, match=r"cm must be \(6, 6\)"):
        plots.plot_confusion_matrix(counts[:5], CLASS_NAMES, tmp_path / "bad.png")


def test_reliability_diagram(predictions, tmp_path):
    path = tmp_path / "reliability.png"
    plots.plot_reliability_diagram(*predictions, path, n_bins=10)
    assert_png(path)


def test_training_curves(tmp_path):
    log = tmp_path / "metrics.jsonl"
    records = [{"step": s, "epoch": s // 50, "loss": 2.0 / (1 + s), "learning_rate": 1e-3} for s in range(0, 200, 10)]
    records += [
        {"step": s, "val_loss": 1.0, "val_accuracy": 0.5 + s / 1000, "val_macro_auc": 0.7} for s in (50, 100, 150)
    ]
    log.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    path = tmp_path / "training.png"
    plots.plot_training_curves(log, path)
    assert_png(path)


def test_training_curves_without_validation(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("\n".join(json.dumps({"step": s, "loss": 1.0 / (1 + s)}) for s in range(5)))
    plots.plot_training_curves(log, tmp_path / "training.png")
    assert_png(tmp_path / "training.png")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "metrics file not found"),
        ("\n \n", "metrics file is empty"),
        ('{"step": 1}\n{oops\n', "metrics.jsonl:2: not valid JSON"),
    ],
)
def test_training_curves_reject_bad_logs(content, message, tmp_path):
    log = tmp_path / "metrics.jsonl"
    if content is not None:
        log.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        plots.plot_training_curves(log, tmp_path / "training.png")
    assert str(log) in str(error.value)
    assert not (tmp_path / "training.png").exists()

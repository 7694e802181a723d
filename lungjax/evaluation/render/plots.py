"""Evaluation and training figures written straight to PNG.

Figures are built with ``matplotlib.figure.Figure`` and rendered by ``FigureCanvasAgg``: no pyplot,
so nothing here touches matplotlib's global backend or figure registry, which keeps the functions
safe to call from training loops, tests and headless machines alike.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from lungjax.evaluation.stats.calibration import (
    FINDING_ECE_BINS,
    TOP1_ECE_BINS,
    calibration_bins,
    expected_calibration_error,
    finding_calibration_bins,
    finding_ece,
)
from lungjax.evaluation.stats.checks import check_multilabel_predictions, check_predictions, check_stated
from lungjax.evaluation.stats.ranking import macro_auc

DPI = 120
CURVE_FIGSIZE = (7.0, 6.0)
CONFUSION_FIGSIZE = (8.0, 7.0)
RELIABILITY_FIGSIZE = (7.0, 7.0)
TRAINING_FIGSIZE = (9.0, 7.0)
# One panel per finding in the multi-label grids: square panels, as many columns as rows (4 x 4 for 14).
PANEL_INCHES = 3.0
CONFUSION_CMAP = "Blues"
# Cells darker than this (row fraction) get white text so annotations stay legible.
DARK_CELL_FRACTION = 0.5
BASELINE_STYLE = MappingProxyType({"linestyle": "--", "linewidth": 1.0})
LOSS_SERIES = ("loss", "val_loss")
VALIDATION_SERIES = ("val_accuracy", "val_macro_auc")

# (binary labels, scores) -> (x, y, summary value) for one class's one-vs-rest curve.
CurveFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, float]]


def save_png(figure: Figure, path: str | Path) -> None:
    """Render ``figure`` to a PNG at ``path`` (parent folders created) with the Agg canvas: every figure
    of the report goes through here."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=DPI, format="png")


def _format_optional(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def _roc(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    fpr, tpr, _ = roc_curve(positive, scores)
    return fpr, tpr, float(roc_auc_score(positive, scores))


def _precision_recall(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    precision, recall, _ = precision_recall_curve(positive, scores)
    return recall, precision, float(average_precision_score(positive, scores))


def _one_vs_rest_figure(
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    curve: CurveFn,
    summary_name: str,
    *,
    prevalence_baselines: bool,
) -> tuple[Figure, Axes]:
    """One curve per class (summary value in the legend), shared by the ROC and PR plots.

    A class without positives or negatives has no curve; it is listed in the legend as such so a
    missing line is never mistaken for a plotting bug.
    """
    labels, probs = check_predictions(labels, probs, class_names)
    figure = Figure(figsize=CURVE_FIGSIZE, layout="constrained")
    axes = figure.add_subplot()
    for k, name in enumerate(class_names):
        positive = labels == k
        if positive.all() or not positive.any():
            axes.plot([], [], " ", label=f"{name} (undefined: one class only)")
            continue
        x, y, value = curve(positive, probs[:, k])
        (line,) = axes.plot(x, y, linewidth=1.5, label=f"{name} ({summary_name} {value:.3f})")
        if prevalence_baselines:
            axes.axhline(positive.mean(), color=line.get_color(), **BASELINE_STYLE)
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.02)
    axes.grid(alpha=0.3)
    return figure, axes


def plot_roc_curves(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str], path: str | Path) -> None:
    """One-vs-rest ROC per class with its AUC, the chance diagonal and macro AUC in the title."""
    figure, axes = _one_vs_rest_figure(labels, probs, class_names, _roc, "AUC", prevalence_baselines=False)
    axes.plot([0.0, 1.0], [0.0, 1.0], color="grey", label="chance", **BASELINE_STYLE)
    macro = macro_auc(labels, probs)
    axes.set_title(f"ROC curves (one-vs-rest), macro AUC = {_format_optional(macro)}")
    axes.set_xlabel("False positive rate (1 - specificity)")
    axes.set_ylabel("True positive rate (sensitivity)")
    axes.legend(loc="lower right", fontsize="small")
    save_png(figure, path)


def plot_pr_curves(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str], path: str | Path) -> None:
    """Precision-recall per class with average precision; dashed lines mark each prevalence.

    The prevalence is what a random classifier's precision would be, so it is the honest baseline
    for rare classes where a PR curve says more than ROC.
    """
    figure, axes = _one_vs_rest_figure(labels, probs, class_names, _precision_recall, "AP", prevalence_baselines=True)
    axes.set_title("Precision-recall curves (one-vs-rest); dashed = class prevalence")
    axes.set_xlabel("Recall (sensitivity)")
    axes.set_ylabel("Precision")
    # Below the axes: inside, the legend would hide the low prevalence lines it explains.
    figure.legend(loc="outside lower center", ncols=2, fontsize="small")
    save_png(figure, path)


def plot_confusion_matrix(
    cm: np.ndarray | Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path
) -> None:
    """``confusion_matrix_figure`` as a PNG at ``path``."""
    save_png(confusion_matrix_figure(cm, class_names), path)


def figure_rgb(figure: Figure) -> np.ndarray:
    """A figure rendered at the PNGs' resolution as an (H, W, 3) uint8 RGB array (for TensorBoard)."""
    figure.set_dpi(DPI)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def confusion_matrix_figure(cm: np.ndarray | Sequence[Sequence[int]], class_names: Sequence[str]) -> Figure:
    """Row-normalised confusion matrix (rows true), each cell annotated with % of row and count.

    Row normalisation shows per-class sensitivity on the diagonal whatever the class imbalance.
    """
    counts = np.asarray(cm)
    num_classes = len(class_names)
    if counts.shape != (num_classes, num_classes):
        raise ValueError(f"cm must be ({num_classes}, {num_classes}) to match class_names, got {counts.shape}")
    if (counts < 0).any():
        raise ValueError("cm must contain non-negative counts")
    row_totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, row_totals, out=np.zeros(counts.shape), where=row_totals > 0)
    figure = Figure(figsize=CONFUSION_FIGSIZE, layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(fractions, cmap=CONFUSION_CMAP, vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, label="Fraction of true class")
    for (row, col), fraction in np.ndenumerate(fractions):
        axes.text(
            col,
            row,
            f"{100 * fraction:.1f}%\n({int(counts[row, col])})",
            ha="center",
            va="center",
            fontsize="small",
            color="white" if fraction > DARK_CELL_FRACTION else "black",
        )
    ticks = np.arange(num_classes)
    axes.set_xticks(ticks, class_names, rotation=30, ha="right")
    axes.set_yticks(ticks, class_names)
    axes.set_xlabel("Predicted class")
    axes.set_ylabel("True class")
    axes.set_title(f"Confusion matrix (row-normalised, n = {int(counts.sum())})")
    return figure


def plot_reliability_diagram(
    labels: np.ndarray,
    probs: np.ndarray,
    path: str | Path,
    n_bins: int = TOP1_ECE_BINS,
    title: str = "Reliability diagram",
) -> None:
    """Top-1 accuracy against confidence per equal-width bin, with counts and ECE in the title.

    Bars below the diagonal mean over-confidence; the count above each bar shows how much each
    bin weighs in the ECE.
    """
    labels, probs = check_predictions(labels, probs)
    bins = calibration_bins(labels, probs, n_bins)
    ece = expected_calibration_error(labels, probs, n_bins)
    edges, counts = bins["edges"], bins["counts"]
    filled = counts > 0
    figure = Figure(figsize=RELIABILITY_FIGSIZE, layout="constrained")
    axes = figure.add_subplot()
    bars = axes.bar(
        edges[:-1][filled],
        bins["accuracy"][filled],
        width=np.diff(edges)[filled],
        align="edge",
        edgecolor="black",
        alpha=0.8,
        label="accuracy in bin",
    )
    axes.bar_label(bars, labels=[f"n={n}" for n in counts[filled]], fontsize="x-small")
    axes.plot(
        bins["confidence"][filled],
        bins["accuracy"][filled],
        "o",
        color="tab:red",
        markersize=4,
        label="(mean confidence, accuracy)",
    )
    axes.plot([0.0, 1.0], [0.0, 1.0], color="grey", label="perfect calibration", **BASELINE_STYLE)
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.08)
    axes.set_xlabel("Top-1 confidence")
    axes.set_ylabel("Accuracy")
    axes.set_title(f"{title} ({n_bins} bins), ECE = {ece:.3f}")
    axes.legend(loc="upper left", fontsize="small")
    save_png(figure, path)


def _read_jsonl(path: Path) -> list[dict]:
    """Records of a metrics.jsonl; a missing, empty or malformed file is a ValueError."""
    if not path.is_file():
        raise ValueError(f"metrics file not found: {path}")
    records = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_number}: not valid JSON ({error})") from error
    if not records:
        raise ValueError(f"metrics file is empty: {path}")
    return records


def _plot_series(axes: Axes, records: list[dict], keys: Sequence[str], ylabel: str) -> None:
    """Each key against step, using only the records that carry both; notes an empty panel."""
    plotted = False
    for key in keys:
        points = [(r["step"], r[key]) for r in records if "step" in r and r.get(key) is not None]
        if points:
            steps, values = zip(*points, strict=True)
            axes.plot(steps, values, marker="." if len(points) < 50 else None, label=key)
            plotted = True
    if plotted:
        axes.legend(fontsize="small")
    else:
        axes.text(
            0.5,
            0.5,
            f"no {', '.join(keys)} recorded",
            ha="center",
            va="center",
            transform=axes.transAxes,
        )
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)


def plot_training_curves(metrics_jsonl_path: str | Path, path: str | Path) -> None:
    """Training/validation loss (top) and validation accuracy / macro AUC (bottom) against step."""
    source = Path(metrics_jsonl_path)
    records = _read_jsonl(source)
    figure = Figure(figsize=TRAINING_FIGSIZE, layout="constrained")
    loss_axes, validation_axes = figure.subplots(2, 1, sharex=True)
    _plot_series(loss_axes, records, LOSS_SERIES, "Loss")
    loss_axes.set_title(f"Training curves ({source.name})")
    _plot_series(validation_axes, records, VALIDATION_SERIES, "Validation metric")
    validation_axes.set_xlabel("Step")
    validation_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    save_png(figure, path)


def _finding_grid(num_findings: int) -> tuple[Figure, list[Axes]]:
    """A near-square grid of PANEL_INCHES panels, one per finding; the panels left over are hidden."""
    ncols = math.ceil(math.sqrt(num_findings))
    nrows = math.ceil(num_findings / ncols)
    figure = Figure(figsize=(PANEL_INCHES * ncols, PANEL_INCHES * nrows), layout="constrained")
    panels = list(figure.subplots(nrows, ncols, squeeze=False).ravel())
    for spare in panels[num_findings:]:
        spare.set_visible(False)
    return figure, panels[:num_findings]


def plot_roc_grid(
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    stated: np.ndarray | None = None,
) -> None:
    """Multi-label ROC: one panel per finding with its AUROC in the title and the chance diagonal.

    Fourteen curves on one axes are unreadable; separate panels with shared axes keep each legible
    and comparable. A finding without positives or negatives gets an empty panel saying so. With
    ``stated`` (N, C) each finding's curve runs over the images that state it.
    """
    labels, probs = check_multilabel_predictions(labels, probs, class_names)
    stated = check_stated(stated, labels.shape)
    figure, panels = _finding_grid(len(class_names))
    for c, (axes, name) in enumerate(zip(panels, class_names, strict=True)):
        positive, scores = labels[stated[:, c], c], probs[stated[:, c], c]
        axes.plot([0.0, 1.0], [0.0, 1.0], color="grey", **BASELINE_STYLE)
        if positive.all() or not positive.any():
            axes.set_title(f"{name}\nAUROC undefined (one class only)", fontsize="small")
        else:
            fpr, tpr, value = _roc(positive, scores)
            axes.plot(fpr, tpr, linewidth=1.5)
            axes.set_title(f"{name}\nAUROC {value:.3f} (n+ = {int(positive.sum())})", fontsize="small")
        axes.set_xlim(0.0, 1.0)
        axes.set_ylim(0.0, 1.02)
        axes.grid(alpha=0.3)
    figure.supxlabel("False positive rate (1 - specificity)")
    figure.supylabel("True positive rate (sensitivity)")
    save_png(figure, path)


def plot_reliability_grid(
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    n_bins: int = FINDING_ECE_BINS,
    title: str = "Reliability diagrams",
    stated: np.ndarray | None = None,
) -> None:
    """Per-finding reliability: observed frequency against predicted probability per equal-width bin.

    The bins and ECE in each title are the report's (:func:`stats.calibration.finding_calibration_bins`).
    Most films of a rare finding sit in the lowest bin, so the counts above the bars matter. With
    ``stated`` (N, C) each finding's panel counts the images that state it.
    """
    labels, probs = check_multilabel_predictions(labels, probs, class_names)
    stated = check_stated(stated, labels.shape)
    figure, panels = _finding_grid(len(class_names))
    for c, (axes, name) in enumerate(zip(panels, class_names, strict=True)):
        positive, scores = labels[stated[:, c], c], probs[stated[:, c], c]
        if positive.size == 0:
            axes.set_title(f"{name}\nstated on no image", fontsize="small")
            continue
        bins = finding_calibration_bins(positive, scores, n_bins)
        edges, counts = bins["edges"], bins["counts"]
        filled = counts > 0
        bars = axes.bar(
            edges[:-1][filled],
            bins["frequency"][filled],
            width=np.diff(edges)[filled],
            align="edge",
            edgecolor="black",
            alpha=0.8,
        )
        axes.bar_label(bars, labels=[str(n) for n in counts[filled]], fontsize="xx-small")
        axes.plot(bins["probability"][filled], bins["frequency"][filled], "o", color="tab:red", markersize=3)
        axes.plot([0.0, 1.0], [0.0, 1.0], color="grey", **BASELINE_STYLE)
        axes.set_xlim(0.0, 1.0)
        axes.set_ylim(0.0, 1.1)
        axes.set_title(f"{name}\nECE {finding_ece(positive, scores, n_bins):.3f}", fontsize="small")
    figure.suptitle(title)
    figure.supxlabel(f"Predicted probability ({n_bins} bins; red: mean in bin)")
    figure.supylabel("Observed frequency")
    save_png(figure, path)


def plot_paired_roc(
    positive: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    run_names: tuple[str, str] = ("run a", "run b"),
) -> None:
    """Two runs' ROC curves on the same images, one panel per class (``kinds.Kind.columns`` inputs)."""
    figure, panels = _finding_grid(len(class_names))
    for c, (axes, name) in enumerate(zip(panels, class_names, strict=True)):
        axes.plot([0.0, 1.0], [0.0, 1.0], color="grey", **BASELINE_STYLE)
        column = positive[:, c]
        if column.all() or not column.any():
            axes.set_title(f"{name}\nundefined (one class only)", fontsize="small")
        else:
            titles = []
            for run, scores in zip(run_names, (scores_a[:, c], scores_b[:, c]), strict=True):
                fpr, tpr, value = _roc(column, scores)
                axes.plot(fpr, tpr, linewidth=1.5, label=run)
                titles.append(f"{value:.3f}")
            axes.set_title(f"{name}\nAUROC {' vs '.join(titles)}", fontsize="small")
        axes.set_xlim(0.0, 1.0)
        axes.set_ylim(0.0, 1.02)
        axes.grid(alpha=0.3)
    panels[0].legend(loc="lower right", fontsize="x-small")
    figure.supxlabel("False positive rate (1 - specificity)")
    figure.supylabel("True positive rate (sensitivity)")
    save_png(figure, path)


def plot_subgroup_forest(audit: dict, path: str | Path) -> bool:
    """Each class's AUROC per subgroup cell with its 95% interval, beside the overall AUROC (dashed).

    One panel per class, one row per cell; a flagged cell (interval wholly below overall) is red.
    Cells too small to estimate are left out of the plot (the tables list them). Returns False and
    writes nothing when no cell could be estimated.
    """
    class_names = list(audit["overall_auroc"])
    rows = [
        (f"{attribute}: {cell}", cell_row["per_class"])
        for attribute, cells in audit["attributes"].items()
        for cell, cell_row in cells.items()
    ]
    if not any("auroc" in per_class[name] for _, per_class in rows for name in class_names):
        return False
    figure, panels = _finding_grid(len(class_names))
    for axes, name in zip(panels, class_names, strict=True):
        shown = [audit["overall_auroc"][name] or 1.0]
        for y, (_label, per_class) in enumerate(rows):
            figures = per_class[name]
            if "auroc" not in figures:
                continue
            color = "tab:red" if figures.get("below_overall") else "tab:blue"
            ci = figures.get("ci") or {}
            if ci.get("low") is not None:
                axes.plot([ci["low"], ci["high"]], [y, y], color=color, linewidth=1.5)
                shown.append(ci["low"])
            axes.plot(figures["auroc"], y, "o", color=color, markersize=4)
            shown.append(figures["auroc"])
        overall = audit["overall_auroc"][name]
        if overall is not None:
            axes.axvline(overall, color="grey", **BASELINE_STYLE)
        axes.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize="x-small")
        axes.set_ylim(len(rows) - 0.5, -0.5)
        # From a round value below everything shown to 1: differences of a few points must be visible.
        axes.set_xlim(max(0.0, math.floor((min(shown) - 0.02) * 20) / 20), 1.0)
        axes.xaxis.set_major_locator(MaxNLocator(4))
        axes.set_title(name, fontsize="small")
        axes.grid(alpha=0.3, axis="x")
    figure.supxlabel("AUROC with 95% patient-bootstrap interval (dashed: whole split; red: interval below it)")
    save_png(figure, path)
    return True


def plot_cross_dataset_heatmap(report: dict, label: str, path: str | Path) -> None:
    """One label's train x test AUROC matrix as a heatmap, each cell annotated with its value and interval."""
    runs, sources = list(report["runs"]), list(report["test_sources"])
    matrix = report["per_label"][label]["matrix"]
    values = np.full((len(runs), len(sources)), np.nan)
    figure = Figure(figsize=(1.6 * len(sources) + 2.5, 0.9 * len(runs) + 1.6), layout="constrained")
    axes = figure.add_subplot()
    for i, run in enumerate(runs):
        for j, source in enumerate(sources):
            cell = matrix.get(run, {}).get(source)
            if cell is None:
                axes.text(j, i, "left out", ha="center", va="center", fontsize="small", color="grey")
                continue
            values[i, j] = cell["auroc"]
            ci = cell.get("ci") or {}
            interval_text = f"\n[{ci['low']:.2f}, {ci['high']:.2f}]" if ci.get("low") is not None else ""
            marker = " (int.)" if cell["internal"] else ""
            axes.text(j, i, f"{cell['auroc']:.3f}{marker}{interval_text}", ha="center", va="center", fontsize="small")
    image = axes.imshow(values, cmap="RdYlGn", vmin=0.5, vmax=1.0, aspect="auto")
    figure.colorbar(image, ax=axes, label="AUROC (stated films)")
    axes.set_xticks(range(len(sources)), sources)
    axes.set_yticks(range(len(runs)), runs)
    axes.set_xlabel("tested on")
    axes.set_ylabel("trained run")
    axes.set_title(f"{label}: AUROC, train x test")
    save_png(figure, path)


def plot_cross_dataset_summary(report: dict, path: str | Path) -> None:
    """Every external AUROC gap (external minus internal) with its 95% interval, one row per (label, run, source)."""
    rows = [
        (f"{label}: {run} -> {source}", gap)
        for label in report["labels"]
        for run, per_source in report["per_label"][label]["gap"].items()
        for source, gap in per_source.items()
    ]
    figure = Figure(figsize=(8.0, 0.32 * max(len(rows), 1) + 1.6), layout="constrained")
    axes = figure.add_subplot()
    for y, (_, gap) in enumerate(rows):
        ci = gap.get("ci") or {}
        if ci.get("low") is not None:
            axes.plot([ci["low"], ci["high"]], [y, y], color="tab:blue", linewidth=1.5)
        axes.plot(gap["value"], y, "o", color="tab:blue", markersize=4)
    axes.axvline(0.0, color="grey", **BASELINE_STYLE)
    axes.set_yticks(range(len(rows)), [name for name, _ in rows], fontsize="x-small")
    axes.set_ylim(len(rows) - 0.5, -0.5)
    axes.set_xlabel("External minus internal AUROC, 95% interval (independent patient bootstraps)")
    axes.set_title("Generalisation gap per label and pair" if rows else "No external pair scored")
    axes.grid(alpha=0.3, axis="x")
    save_png(figure, path)

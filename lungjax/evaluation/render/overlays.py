"""Grad-CAM figures: radiographs with their heatmaps overlaid, boxes outlined and each maximum marked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from lungjax.evaluation.render import plots

GRID_COLUMNS = 4

PANEL_INCHES = 2.6

HEATMAP_ALPHA = 0.45


def heatmap_peak(heatmap: np.ndarray) -> tuple[float, float]:
    """(x, y) of the maximum, in the box convention (pixel i spans [i, i + 1), so its centre is i + .5).

    A coarse map upsampled has a plateau of equal maxima; its centroid, not its first pixel, is
    where the map points.
    """
    rows, cols = np.nonzero(heatmap == heatmap.max())
    return float(cols.mean() + 0.5), float(rows.mean() + 0.5)


def plot_overlays(
    images: np.ndarray, heatmaps: np.ndarray, titles: Sequence[str], path: str | Path, boxes: np.ndarray | None = None
) -> None:
    """A grid of radiographs with their heatmaps overlaid (and boxes outlined, where given)."""
    count = len(images)
    columns = min(GRID_COLUMNS, count)
    rows = -(-count // columns)
    figure = Figure(figsize=(PANEL_INCHES * columns, PANEL_INCHES * rows + 0.3), layout="constrained")
    axes_grid = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for i, axes in enumerate(axes_grid):
        axes.set_axis_off()
        if i >= count:
            continue
        axes.imshow(images[i].squeeze(-1), cmap="gray", vmin=0, vmax=255)
        axes.imshow(heatmaps[i], cmap="jet", alpha=HEATMAP_ALPHA, vmin=0.0, vmax=1.0)
        if boxes is not None and boxes[i][2] > 0:
            x, y, w, h = boxes[i]
            # imshow centres pixel i at i, the box convention at i + .5: shift by half a pixel.
            axes.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor="lime", linewidth=1.5))
        px, py = heatmap_peak(heatmaps[i])
        axes.plot(px - 0.5, py - 0.5, "w+", markersize=8)
        axes.set_title(titles[i], fontsize="x-small")
    figure.suptitle("Grad-CAM (last ResNet stage); + marks the maximum", fontsize="small")
    plots.save_png(figure, path)

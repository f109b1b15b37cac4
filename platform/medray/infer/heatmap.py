"""Pure heatmap math: assemble the grid map from (row, col, prob) batches, slide-level scores,
tumor area, top regions, and evaluation against ground truth (patch ROC AUC, Dice).

Map convention: float32, one cell per grid stride; **NaN = not scored** (background, or the
patch would leave the slide). Scored cells hold the positive-class probability in [0, 1].
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

BACKGROUND = np.nan  # value of cells that were not scored (documented in the .npy's report)


def new_map(shape: tuple[int, int]) -> np.ndarray:
    """An all-background map (NaN) of ``shape``."""
    return np.full(shape, BACKGROUND, np.float32)


def put(prob_map: np.ndarray, rows, cols, probs) -> None:
    """Write a batch of probabilities into the map at (rows, cols)."""
    prob_map[np.asarray(rows, np.int64), np.asarray(cols, np.int64)] = np.asarray(probs, np.float32)


def slide_scores(prob_map: np.ndarray, top_k: int) -> dict[str, float | None]:
    """Slide-level scores over scored cells: max, mean of the top-k, mean (None when nothing scored)."""
    values = prob_map[np.isfinite(prob_map)]
    if values.size == 0:
        return {"max": None, "top_k_mean": None, "mean": None, "top_k": int(top_k)}
    k = min(int(top_k), values.size)
    top = np.partition(values, values.size - k)[values.size - k:]
    return {"max": float(values.max()), "top_k_mean": float(top.mean()), "mean": float(values.mean()),
            "top_k": int(top_k)}


def above(prob_map: np.ndarray, threshold: float) -> np.ndarray:
    """Bool map of scored cells with probability >= threshold (background is never above)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(prob_map) & (prob_map >= threshold)


def tumor_area_mm2(prob_map: np.ndarray, threshold: float, cell_area_mm2: float | None) -> float | None:
    """Cells at or above ``threshold`` × the area of one cell; None when the slide has no mpp."""
    if cell_area_mm2 is None:
        return None
    return float(above(prob_map, threshold).sum() * cell_area_mm2)


def top_regions(prob_map: np.ndarray, threshold: float, stride0: float, count: int,
                cell_area_mm2: float | None = None) -> list[dict[str, Any]]:
    """Connected regions (8-neighbour) of cells above threshold, strongest first, in level-0 px.

    Each: ``x, y, width, height`` (level-0 box of its cells), ``peak_x, peak_y`` (centre of its
    highest cell), ``max_prob``, ``mean_prob``, ``cells`` and ``area_mm2``.
    """
    from scipy import ndimage

    hot = above(prob_map, threshold)
    if count <= 0 or not hot.any():
        return []
    labels, n = ndimage.label(hot, structure=np.ones((3, 3), bool))
    index = np.arange(1, n + 1)
    values = np.where(hot, prob_map, 0).astype(np.float64)
    maxima = ndimage.maximum(values, labels, index)
    means = ndimage.mean(values, labels, index)
    sizes = ndimage.sum(hot, labels, index)
    peaks = ndimage.maximum_position(values, labels, index)
    boxes = ndimage.find_objects(labels)
    order = sorted(range(n), key=lambda i: (-maxima[i], -sizes[i]))[:count]
    out = []
    for i in order:
        rs, cs = boxes[i]
        pr, pc = peaks[i]
        out.append({
            "x": int(round(cs.start * stride0)), "y": int(round(rs.start * stride0)),
            "width": int(round((cs.stop - cs.start) * stride0)), "height": int(round((rs.stop - rs.start) * stride0)),
            "peak_x": int(round((pc + 0.5) * stride0)), "peak_y": int(round((pr + 0.5) * stride0)),
            "max_prob": float(maxima[i]), "mean_prob": float(means[i]), "cells": int(sizes[i]),
            "area_mm2": None if cell_area_mm2 is None else float(sizes[i] * cell_area_mm2),
        })
    return out


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Patch-level ROC AUC (ties count half); None unless both classes are present."""
    labels = np.asarray(labels, bool)
    scores = np.asarray(scores, np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    """2|A∩B| / (|A| + |B|); 1.0 when both are empty (a normal slide called normal)."""
    predicted, truth = np.asarray(predicted, bool), np.asarray(truth, bool)
    total = int(predicted.sum() + truth.sum())
    if total == 0:
        return 1.0
    return float(2 * (predicted & truth).sum() / total)


def evaluate(prob_map: np.ndarray, threshold: float, cell_labels: np.ndarray,
             truth_mask: np.ndarray) -> dict[str, Any]:
    """Compare a map with ground truth at grid resolution.

    ``cell_labels``: bool map, the cell's patch centre lies in tumor (AUC over scored cells);
    ``truth_mask``: the rasterized tumor mask at grid resolution (Dice of the thresholded map,
    background counting as negative).
    """
    scored = np.isfinite(prob_map)
    labels = np.asarray(cell_labels, bool)[scored]
    return {
        "auc": roc_auc(labels, prob_map[scored]),
        "dice": dice(above(prob_map, threshold), truth_mask),
        "threshold": float(threshold),
        "tumor_cells_truth": int(np.asarray(truth_mask, bool).sum()),
        "tumor_cells_predicted": int(above(prob_map, threshold).sum()),
        "scored_tumor_cells": int(labels.sum()), "scored_normal_cells": int((~labels).sum()),
    }


def truth_maps(annotations: Sequence[Any], grid: Any) -> tuple[np.ndarray, np.ndarray]:
    """(cell_labels, truth_mask) of tumor polygons on ``grid`` (a ``score_plan.ScoreGrid``)."""
    from medray.slides.annotations import contains, rasterize

    rows, cols = grid.shape
    rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    centres = grid.centres(rr.ravel(), cc.ravel())
    labels = contains(list(annotations), centres).reshape(rows, cols) if annotations else np.zeros((rows, cols), bool)
    mask = rasterize(list(annotations), (rows, cols), grid.stride0) if annotations else np.zeros((rows, cols), bool)
    return labels, mask

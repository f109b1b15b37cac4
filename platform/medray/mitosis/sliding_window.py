"""Baseline: classify every window at a stride over the image, then threshold and cluster."""

from __future__ import annotations

import numpy as np


def window_centres(shape: tuple[int, int], size: int = 64, stride: int = 16) -> np.ndarray:
    """(x, y) centres of every size×size window inside an H×W image at ``stride`` (the last row
    and column of windows touch the far edges, so the whole image is covered)."""
    h, w = int(shape[0]), int(shape[1])
    half = size // 2

    def axis(n: int) -> np.ndarray:
        if n <= size:
            return np.array([n / 2.0])
        c = np.arange(half, n - half + 1, stride, dtype=np.float64)
        return c if c[-1] == n - half else np.append(c, n - half)

    ys, xs = np.meshgrid(axis(h), axis(w), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], 1)


def sliding_window_detect(rgb: np.ndarray, model, cfg, threshold: float) -> dict:
    """Every window classified, thresholded, clustered (see ``scoring.run_approach``)."""
    from medray.mitosis.scoring import run_approach

    return run_approach("sliding_window", rgb, model, cfg, threshold)

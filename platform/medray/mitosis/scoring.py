"""Shared by both approaches: classify patches at points, threshold, cluster (pure given a model)."""

from __future__ import annotations

import time

import numpy as np

from medray.mitosis.clustering import cluster_detections
from medray.mitosis.patches import extract_patches


def positive_index(classes: list[str]) -> int:
    """Index of the mitosis class in a model's outputs (``mitosis`` if named, else class 1)."""
    return classes.index("mitosis") if "mitosis" in classes else 1


def model_threshold(model, override: float | None = None) -> float:
    """The detection threshold: override, else the bundle's F1-optimal mitosis threshold, else its
    classifier threshold, else 0.5."""
    if override is not None:
        return float(override)
    tuned = (model.extra or {}).get("mitosis", {}).get("threshold")
    if tuned is not None:
        return float(tuned)
    return float(model.threshold) if model.threshold is not None else 0.5


def score_points(model, rgb: np.ndarray, points: np.ndarray, patch_size: int = 64,
                 batch_size: int = 128) -> np.ndarray:
    """P(mitosis) of the patch centred on each point, in chunks so memory stays bounded."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    positive = positive_index(model.classes)
    out = np.zeros(len(pts), np.float64)
    for start in range(0, len(pts), batch_size):
        chunk = extract_patches(rgb, pts[start:start + batch_size], patch_size)
        out[start:start + len(chunk)] = model.predict_proba(chunk, batch_size=batch_size)[:, positive]
    return out


def finish_detections(points, probs, threshold: float, cluster_distance: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep probabilities >= threshold, then merge clusters (best member per cluster)."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    p = np.asarray(probs, np.float64).ravel()
    keep = p >= threshold
    return cluster_detections(pts[keep], p[keep], cluster_distance)


def run_approach(approach: str, rgb: np.ndarray, model, cfg, threshold: float) -> dict:
    """One image through ``proposals`` or ``sliding_window``: points, scores, detections, tiles, time."""
    from medray.mitosis.proposals import propose
    from medray.mitosis.sliding_window import window_centres

    t0 = time.perf_counter()
    if approach == "proposals":
        points = propose(rgb, cfg.proposals, storage=cfg.storage)
    elif approach == "sliding_window":
        points = window_centres(rgb.shape[:2], cfg.patches.size, cfg.sliding_window.stride)
    else:
        raise ValueError(f"unknown approach {approach!r}; use 'proposals' or 'sliding_window'")
    t1 = time.perf_counter()
    probs = score_points(model, rgb, points, cfg.patches.size, cfg.detect.batch_size)
    t2 = time.perf_counter()
    det, det_p = finish_detections(points, probs, threshold, cfg.clustering.distance)
    t3 = time.perf_counter()
    return {"points": points, "probs": probs, "detections": det, "det_probs": det_p, "tiles": len(points),
            "seconds": {"propose": t1 - t0, "classify": t2 - t1, "cluster": t3 - t2, "total": t3 - t0}}

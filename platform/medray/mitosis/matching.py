"""TUPAC16/AMIDA13 evaluation: one-to-one matching of detections to true mitoses by distance.

Criterion: detections are taken in order of descending probability (ties: input order); each is
a true positive if an as-yet-unmatched true mitosis lies within ``radius`` (inclusive, Euclidean),
and is then matched to the *nearest* such mitosis; otherwise it is a false positive. True
mitoses left unmatched are false negatives. Greedy (not Hungarian) on purpose: it is the rule the
challenge scripts apply, and a confident detection is never traded away to raise the TP count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class MatchResult:
    """Counts plus which detection matched which truth (-1: unmatched)."""

    tp: int
    fp: int
    fn: int
    detection_to_truth: list[int]

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        return f1_score(self.tp, self.fp, self.fn)

    def summary(self) -> dict:
        out = asdict(self)
        out.pop("detection_to_truth")
        return {**out, "precision": self.precision, "recall": self.recall, "f1": self.f1}


def f1_score(tp: int, fp: int, fn: int) -> float:
    """2TP / (2TP + FP + FN); 0 when there is nothing at all (no truth, no detection)."""
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0


def match_detections(detections, truth, radius: float = 30.0, probs=None) -> MatchResult:
    """Greedy one-to-one matching (see module docstring); points are (x, y) rows."""
    det = np.asarray(detections, np.float64).reshape(-1, 2)
    gt = np.asarray(truth, np.float64).reshape(-1, 2)
    if radius <= 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    p = np.zeros(len(det)) if probs is None else np.asarray(probs, np.float64).ravel()
    if len(p) != len(det):
        raise ValueError(f"{len(det)} detections but {len(p)} probabilities")
    assigned = [-1] * len(det)
    if len(det) == 0 or len(gt) == 0:
        return MatchResult(0, len(det), len(gt), assigned)
    dist = np.hypot(det[:, None, 0] - gt[None, :, 0], det[:, None, 1] - gt[None, :, 1])
    free = np.ones(len(gt), bool)
    for i in np.lexsort((np.arange(len(p)), -p)):
        ok = free & (dist[i] <= radius)
        if ok.any():
            j = int(np.flatnonzero(ok)[np.argmin(dist[i, ok])])
            free[j] = False
            assigned[int(i)] = j
    tp = sum(a >= 0 for a in assigned)
    return MatchResult(tp, len(det) - tp, len(gt) - tp, assigned)


def evaluate(per_image: dict[str, tuple], radius: float = 30.0) -> dict:
    """``{image: (detections, probs, truth)}`` → per-image and overall (summed TP/FP/FN) scores."""
    rows, tp, fp, fn = {}, 0, 0, 0
    for name in sorted(per_image):
        det, probs, gt = per_image[name]
        result = match_detections(det, gt, radius, probs)
        rows[name] = result.summary()
        tp, fp, fn = tp + result.tp, fp + result.fp, fn + result.fn
    overall = MatchResult(tp, fp, fn, [])
    return {"overall": overall.summary(), "per_image": rows, "radius": radius}


def best_threshold(per_image: dict[str, tuple], radius: float, cluster_distance: float,
                   max_steps: int = 200) -> tuple[float, dict]:
    """F1-optimal probability threshold after clustering, with the matching criterion.

    ``per_image`` maps image → (candidate points, probabilities, truth). Thresholds tried: the
    distinct probabilities (subsampled to ``max_steps`` quantiles); ties go to the higher threshold.
    """
    from medray.mitosis.clustering import cluster_detections

    scores = np.unique(np.concatenate([np.asarray(v[1], np.float64).ravel() for v in per_image.values()]
                                      + [np.zeros(0)]))
    if len(scores) > max_steps:
        scores = np.unique(np.quantile(scores, np.linspace(0, 1, max_steps)))
    best_t, best = 0.5, None
    for t in scores[::-1]:
        tp = fp = fn = 0
        for pts, probs, gt in per_image.values():
            pts = np.asarray(pts, np.float64).reshape(-1, 2)
            probs = np.asarray(probs, np.float64).ravel()
            keep = probs >= t
            det, dp = cluster_detections(pts[keep], probs[keep], cluster_distance)
            r = match_detections(det, gt, radius, dp)
            tp, fp, fn = tp + r.tp, fp + r.fp, fn + r.fn
        f1 = f1_score(tp, fp, fn)
        if best is None or f1 > best["f1"]:
            best_t, best = float(t), {"f1": f1, "tp": tp, "fp": fp, "fn": fn}
    return best_t, best or {"f1": 0.0, "tp": 0, "fp": 0, "fn": 0}

"""Classification metrics from labels and class probabilities (scikit-learn underneath).

Binary tasks score the positive class (index 1) at a threshold; multi-class tasks use argmax and
macro averages. A class absent from ``y_true`` has no AUC: it is skipped, never a crash.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn import metrics as skm

from medray.errors import DataError


def _check(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(np.int64).ravel()
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(classes):
        raise DataError(f"probs must have shape (N, {len(classes)}) for classes {classes}, got {p.shape}")
    if len(y) != len(p):
        raise DataError(f"{len(y)} labels but {len(p)} rows of probabilities")
    if len(y) and (y.min() < 0 or y.max() >= len(classes)):
        raise DataError(f"labels must be in [0, {len(classes) - 1}] for classes {classes}, got {np.unique(y)}")
    return y, p


def predict_labels(probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Binary: class 1 when p[:, 1] >= threshold (default 0.5); multi-class: argmax."""
    p = np.asarray(probs)
    if p.shape[1] == 2:
        return (p[:, 1] >= (0.5 if threshold is None else threshold)).astype(np.int64)
    return p.argmax(axis=1).astype(np.int64)


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str],
                           threshold: float | None = None) -> dict[str, float]:
    """accuracy, balanced_accuracy, precision/recall/f1, AUCs (overall and per class), recall per class."""
    y, p = _check(y_true, probs, classes)
    n_classes = len(classes)
    pred = predict_labels(p, threshold)
    out: dict[str, float] = {"accuracy": float(skm.accuracy_score(y, pred)) if len(y) else float("nan")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on absent classes; we handle them below
        present = np.unique(y)
        out["balanced_accuracy"] = float(np.mean([np.mean(pred[y == c] == c) for c in present])) \
            if len(y) else float("nan")
        average = "binary" if n_classes == 2 else "macro"
        # multi-class macro: over the classes present in y_true or predicted (an absent class adds no 0)
        kwargs = {"pos_label": 1} if n_classes == 2 else {}
        out["precision"] = float(skm.precision_score(y, pred, average=average, zero_division=0, **kwargs))
        out["recall"] = float(skm.recall_score(y, pred, average=average, zero_division=0, **kwargs))
        out["f1"] = float(skm.f1_score(y, pred, average=average, zero_division=0, **kwargs))
    aucs = []
    for c, name in enumerate(classes):
        positives = y == c
        if positives.any():
            out[f"recall_{name}"] = float(np.mean(pred[positives] == c))
        if positives.any() and not positives.all():
            auc = float(skm.roc_auc_score(positives, p[:, c]))
            out[f"roc_auc_{name}"] = auc
            aucs.append(auc)
    if n_classes == 2:
        if f"roc_auc_{classes[1]}" in out:
            out["roc_auc"] = out[f"roc_auc_{classes[1]}"]
    elif aucs:
        out["roc_auc_macro"] = float(np.mean(aucs))
    return out


def best_f1_threshold(y_true: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(threshold, f1): the unique score t maximizing F1 of ``scores >= t`` (ties: highest t)."""
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if len(y) != len(s) or not len(s):
        raise DataError(f"need equal, non-empty labels and scores, got {len(y)} and {len(s)}")
    if not y.any():
        return 1.0, 0.0
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(~y_sorted)
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]  # last index of each distinct score
    tp, fp, thresholds = tp[last], fp[last], s_sorted[last]
    f1 = 2 * tp / (2 * tp + fp + (y.sum() - tp))
    best = int(np.argmax(f1))  # thresholds descend, so a tie goes to the highest threshold
    return float(thresholds[best]), float(f1[best])

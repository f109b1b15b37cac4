"""Evaluation plots people look at: ROC curves and a confusion matrix, written as PNG files."""

from __future__ import annotations

import os

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    """Save ``fig`` to ``path`` (local) through a temp name so a half-written PNG never appears."""
    path = str(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def plot_roc(y_true: np.ndarray, probs: np.ndarray, classes: list[str], path: str) -> str:
    """One-vs-rest ROC curve per class (binary: the positive class only), AUC in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(probs, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5, 5))
    shown = [1] if len(classes) == 2 else range(len(classes))
    for c in shown:
        positives = y == c
        if not positives.any() or positives.all():
            continue  # no curve for a class absent from (or the only class in) the labels
        fpr, tpr, _ = roc_curve(positives, p[:, c])
        ax.plot(fpr, tpr, label=f"{classes[c]} (AUC {roc_auc_score(positives, p[:, c]):.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right")
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_confusion(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], path: str) -> str:
    """Confusion matrix (rows: truth, columns: prediction) with counts and row fractions."""
    from sklearn.metrics import confusion_matrix

    plt = _pyplot()
    cm = confusion_matrix(np.asarray(y_true).ravel(), np.asarray(y_pred).ravel(), labels=list(range(len(classes))))
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, float), where=rows > 0)
    side = max(4.0, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{cm[i, j]}\n{frac[i, j]:.0%}", ha="center", va="center",
                    color="white" if frac[i, j] > 0.5 else "black", fontsize=8)
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right")
    ax.set_yticks(ticks, classes)
    ax.set(xlabel="Predicted", ylabel="True", title="Confusion matrix")
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)

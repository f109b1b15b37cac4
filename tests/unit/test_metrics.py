"""Metrics hand-checked on tiny arrays; plots written as real PNGs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medray.errors import DataError
from medray.train.metrics import best_f1_threshold, classification_metrics, predict_labels
from medray.train.plots import plot_confusion, plot_roc

Y = np.array([0, 0, 1, 1])
P = np.array([[0.9, 0.1], [0.4, 0.6], [0.65, 0.35], [0.2, 0.8]])


def test_binary_metrics_by_hand():
    m = classification_metrics(Y, P, ["neg", "pos"])
    # at 0.5: predictions [0, 1, 0, 1] -> one TP, one FP, one FN, one TN
    assert m["accuracy"] == 0.5 and m["balanced_accuracy"] == 0.5
    assert m["precision"] == 0.5 and m["recall"] == 0.5 and m["f1"] == 0.5
    # positive scores .35, .8 vs negative .1, .6: 3 of 4 pairs ordered right
    assert m["roc_auc"] == 0.75 and m["roc_auc_pos"] == 0.75
    assert m["recall_neg"] == 0.5 and m["recall_pos"] == 0.5


def test_binary_threshold_moves_predictions():
    m = classification_metrics(Y, P, ["neg", "pos"], threshold=0.3)
    # predictions [0, 1, 1, 1]: TP 2, FP 1
    assert m["recall"] == 1.0 and m["precision"] == pytest.approx(2 / 3) and m["accuracy"] == 0.75
    assert m["roc_auc"] == 0.75  # threshold-free


def test_best_f1_threshold_by_hand():
    threshold, f1 = best_f1_threshold(Y, P[:, 1])
    # t=.35 -> TP 2, FP 1, FN 0 -> F1 = 4/5; t=.8 -> 2/3; t=.6 -> 1/2; t=.1 -> 2/3
    assert threshold == 0.35 and f1 == pytest.approx(0.8)
    assert best_f1_threshold(np.array([0, 1, 1]), np.array([0.2, 0.5, 0.5])) == (0.5, 1.0)
    assert best_f1_threshold(np.array([0, 0]), np.array([0.2, 0.5])) == (1.0, 0.0)


def test_multiclass_with_an_absent_class():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]])
    m = classification_metrics(y, probs, ["a", "b", "c"])
    # argmax [0, 1, 1, 2]: class a recall 1/2, b recall 1/2; c never true (no AUC, no recall)
    assert m["accuracy"] == 0.5 and m["recall_a"] == 0.5 and m["recall_b"] == 0.5
    assert "roc_auc_c" not in m and "recall_c" not in m
    assert m["roc_auc_a"] == 1.0 and m["roc_auc_b"] == 0.75
    assert m["roc_auc_macro"] == pytest.approx(0.875)
    assert m["balanced_accuracy"] == 0.5
    # macro over classes seen (a: P 1, R .5; b: P .5, R .5; c predicted once: P 0, R 0)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(1 / 3)


def test_binary_with_one_class_only_does_not_crash():
    m = classification_metrics(np.array([0, 0]), np.array([[0.9, 0.1], [0.7, 0.3]]), ["neg", "pos"])
    assert m["accuracy"] == 1.0 and "roc_auc" not in m and m["recall"] == 0.0


def test_metric_input_errors():
    with pytest.raises(DataError, match=r"shape \(N, 3\)"):
        classification_metrics(Y, P, ["a", "b", "c"])
    with pytest.raises(DataError, match=r"labels must be in \[0, 1\]"):
        classification_metrics(np.array([0, 2, 1, 1]), P, ["a", "b"])
    assert predict_labels(P).tolist() == [0, 1, 0, 1]


def test_plots_are_real_pngs(tmp_path):
    roc = plot_roc(Y, P, ["neg", "pos"], str(tmp_path / "plots" / "roc.png"))
    y3 = np.array([0, 1, 2, 2, 1])
    cm = plot_confusion(y3, np.array([0, 2, 2, 2, 1]), ["a", "b", "c"], str(tmp_path / "cm.png"))
    for path in (roc, cm):
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size[0] > 200 and img.size[1] > 200
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["roc.png"]  # no temp left

"""TUPAC16 criterion: greedy one-to-one matching by descending probability within a radius."""

from __future__ import annotations

import numpy as np
import pytest

from medray.mitosis.matching import best_threshold, evaluate, f1_score, match_detections


def test_two_detections_near_one_truth_give_one_tp_one_fp():
    r = match_detections([[100, 100], [110, 100]], [[105, 100]], 30, probs=[0.6, 0.9])
    assert (r.tp, r.fp, r.fn) == (1, 1, 0)
    assert r.detection_to_truth == [-1, 0]  # the more probable detection takes the mitosis


def test_one_detection_between_two_truths_gives_one_tp_one_fn():
    r = match_detections([[100, 100]], [[80, 100], [125, 100]], 30)
    assert (r.tp, r.fp, r.fn) == (1, 0, 1)
    assert r.detection_to_truth == [0]  # the nearer one (20 px vs 25 px)


def test_radius_boundary_is_inclusive():
    assert match_detections([[30, 0]], [[0, 0]], 30).tp == 1
    assert match_detections([[18, 24]], [[0, 0]], 30).tp == 1  # 3-4-5 triangle: exactly 30
    r = match_detections([[30.001, 0]], [[0, 0]], 30)
    assert (r.tp, r.fp, r.fn) == (0, 1, 1)


def test_confident_detection_keeps_its_nearest_truth():
    # greedy: the 0.9 detection takes truth A (nearest); the 0.5 one can only reach A -> FP
    r = match_detections([[10, 0], [-25, 0]], [[0, 0], [35, 0]], 30, probs=[0.9, 0.5])
    assert r.detection_to_truth == [0, -1] and (r.tp, r.fp, r.fn) == (1, 1, 1)


def test_empty_inputs():
    assert match_detections([], [], 30).summary() == {"tp": 0, "fp": 0, "fn": 0, "precision": 0.0,
                                                      "recall": 0.0, "f1": 0.0}
    r = match_detections([[1, 1], [50, 50]], [], 30)
    assert (r.tp, r.fp, r.fn) == (0, 2, 0)
    r = match_detections(np.zeros((0, 2)), [[1, 1]], 30)
    assert (r.tp, r.fp, r.fn) == (0, 0, 1)
    with pytest.raises(ValueError, match="radius must be > 0"):
        match_detections([], [], 0)


def test_overall_scores_sum_counts_over_images():
    out = evaluate({"a": ([[0, 0]], [0.9], [[5, 0]]), "b": ([[0, 0], [200, 200]], [0.9, 0.8], [[500, 500]])}, 30)
    assert out["per_image"]["a"]["f1"] == 1.0
    assert (out["overall"]["tp"], out["overall"]["fp"], out["overall"]["fn"]) == (1, 2, 1)
    assert out["overall"]["f1"] == pytest.approx(f1_score(1, 2, 1)) == pytest.approx(0.4)


def test_best_threshold_searches_after_clustering():
    # truth at 0 and 300; a 0.9 hit, its 0.8 duplicate (merged by clustering), a 0.3 false alarm
    per_image = {"a": ([[0, 0], [10, 0], [150, 150], [300, 0]], [0.9, 0.8, 0.3, 0.6], [[0, 0], [300, 0]])}
    t, best = best_threshold(per_image, radius=30, cluster_distance=32)
    assert t == 0.6 and best["f1"] == 1.0 and (best["tp"], best["fp"], best["fn"]) == (2, 0, 0)

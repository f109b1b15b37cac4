"""Duplicate merging: single linkage on a radius graph, best probability kept."""

from __future__ import annotations

import numpy as np
import pytest

from medray.mitosis.clustering import cluster_detections, cluster_labels


def test_three_within_32px_become_one_with_the_max_probability():
    pts = [[100, 100], [110, 105], [95, 120]]
    det, p = cluster_detections(pts, [0.6, 0.9, 0.7], 32)
    assert det.tolist() == [[110.0, 105.0]]
    assert p.tolist() == [0.9]


def test_chain_merges_through_intermediate_points():
    # 0-30-60-90: neighbours 30 apart (<= 32), the ends 90 apart: one cluster by single linkage
    pts = [[0, 0], [30, 0], [60, 0], [90, 0]]
    assert len(set(cluster_labels(pts, 32).tolist())) == 1
    det, p = cluster_detections(pts, [0.2, 0.3, 0.95, 0.1], 32)
    assert det.tolist() == [[60.0, 0.0]] and p.tolist() == [0.95]


def test_far_apart_stay_separate_sorted_by_probability():
    pts = [[0, 0], [100, 0], [0, 33]]
    det, p = cluster_detections(pts, [0.5, 0.8, 0.6], 32)
    assert det.tolist() == [[100.0, 0.0], [0.0, 33.0], [0.0, 0.0]]
    assert p.tolist() == [0.8, 0.6, 0.5]


def test_exactly_at_distance_merges_and_zero_distance_turns_off():
    assert cluster_labels([[0, 0], [32, 0]], 32).tolist() == [0, 0]
    det, _ = cluster_detections([[0, 0], [1, 0]], [0.5, 0.6], 0)
    assert len(det) == 2


def test_empty_and_mismatched_inputs():
    det, p = cluster_detections(np.zeros((0, 2)), [], 32)
    assert det.shape == (0, 2) and p.shape == (0,)
    with pytest.raises(ValueError, match="2 points but 1 probabilities"):
        cluster_detections([[0, 0], [5, 5]], [0.5], 32)

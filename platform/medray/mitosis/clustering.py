"""Merge duplicate detections: connected components of the radius graph (single linkage).

Detections closer than ``distance`` (directly or through a chain) form one cluster, reported at
the position of its most probable member with that probability. Pure numpy/scipy.
"""

from __future__ import annotations

import numpy as np


def cluster_labels(points: np.ndarray, distance: float) -> np.ndarray:
    """Cluster id per point: single-linkage components of pairs with distance <= ``distance``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    pts = np.asarray(points, np.float64).reshape(-1, 2)
    n = len(pts)
    if n == 0:
        return np.zeros(0, np.int64)
    if distance <= 0 or n == 1:
        return np.arange(n, dtype=np.int64)
    pairs = cKDTree(pts).query_pairs(distance, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


def cluster_detections(points: np.ndarray, probs: np.ndarray, distance: float = 32.0
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(points, probs) with one detection per cluster: the member with the highest probability,
    sorted by descending probability (ties: lower input index first)."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    p = np.asarray(probs, np.float64).ravel()
    if len(pts) != len(p):
        raise ValueError(f"{len(pts)} points but {len(p)} probabilities")
    if len(pts) == 0:
        return pts, p
    labels = cluster_labels(pts, distance)
    order = np.lexsort((np.arange(len(p)), -p))  # best first
    _, first = np.unique(labels[order], return_index=True)
    keep = np.sort(order[first])
    keep = keep[np.lexsort((keep, -p[keep]))]
    return pts[keep], p[keep]

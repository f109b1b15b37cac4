"""Stage 1: nuclei candidates from stain deconvolution and blob detection (pure functions).

The hematoxylin channel of ``skimage.color.rgb2hed`` is smoothed, then either thresholded into
connected components (area-filtered; centroid = candidate) or searched with a Laplacian of
Gaussian. With ``method: unet`` a trained MONAI UNet (``segmentation.py``) gives a figure
probability map instead, thresholded at ``unet_threshold`` into the same components. Candidates
closer than ``merge_distance`` collapse to one.
"""

from __future__ import annotations

import numpy as np

from medray.errors import DataError
from medray.mitosis.config import ProposalConfig


def hematoxylin(rgb: np.ndarray, sigma: float = 0.0) -> np.ndarray:
    """Hematoxylin optical density (float32 H×W) of an RGB uint8 image, optionally Gaussian-smoothed."""
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed

    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise DataError(f"proposals need an RGB image (H, W, 3), got shape {arr.shape}")
    h = rgb2hed(arr)[..., 0].astype(np.float32)
    return ndi.gaussian_filter(h, sigma) if sigma > 0 else h


def components_to_points(mask: np.ndarray, weights: np.ndarray, min_area: int, max_area: int) -> np.ndarray:
    """(x, y) weighted centroids of the connected components of ``mask`` whose area is in range."""
    from scipy import ndimage as ndi

    labels, n = ndi.label(mask)
    if n == 0:
        return np.zeros((0, 2), np.float64)
    index = np.arange(1, n + 1)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    keep = index[(areas >= min_area) & (areas <= max_area)]
    if len(keep) == 0:
        return np.zeros((0, 2), np.float64)
    centres = np.asarray(ndi.center_of_mass(np.clip(weights, 1e-6, None), labels, keep), np.float64)
    return centres.reshape(-1, 2)[:, ::-1].copy()


def threshold_candidates(h: np.ndarray, cfg: ProposalConfig) -> np.ndarray:
    return components_to_points(h > cfg.threshold, h, cfg.min_area, cfg.max_area)


def log_candidates(h: np.ndarray, cfg: ProposalConfig) -> np.ndarray:
    """Laplacian-of-Gaussian blob centres (x, y) on the hematoxylin channel."""
    from skimage.feature import blob_log

    blobs = blob_log(h, min_sigma=cfg.log_min_sigma, max_sigma=cfg.log_max_sigma, num_sigma=4,
                     threshold=cfg.log_threshold)
    return blobs[:, [1, 0]].astype(np.float64) if len(blobs) else np.zeros((0, 2), np.float64)


def merge_close(points: np.ndarray, distance: float) -> np.ndarray:
    """Collapse points closer than ``distance`` (single linkage) to their cluster mean."""
    from medray.mitosis.clustering import cluster_labels

    pts = np.asarray(points, np.float64).reshape(-1, 2)
    if distance <= 0 or len(pts) < 2:
        return pts
    labels = cluster_labels(pts, distance)
    out = np.zeros((labels.max() + 1, 2))
    np.add.at(out, labels, pts)
    return out / np.bincount(labels)[:, None]


def propose(rgb: np.ndarray, cfg: ProposalConfig | None = None, segmenter=None, storage=None) -> np.ndarray:
    """Candidate nucleus centres (x, y), float64 (N, 2), sorted by row then column.

    ``segmenter`` (unet only): a ``segmentation.Segmenter`` to use instead of ``cfg.unet_model``
    (which is loaded once per file version and reused across calls; ``storage`` reaches an
    ``s3://`` checkpoint).
    """
    cfg = cfg or ProposalConfig()
    if cfg.method == "unet":
        if segmenter is None:
            from medray.mitosis.segmentation import cached_segmenter

            segmenter = cached_segmenter(cfg.unet_model, storage)
        prob = segmenter(np.asarray(rgb))
        pts = components_to_points(prob >= cfg.unet_threshold, prob, cfg.min_area, cfg.max_area)
    else:
        h = hematoxylin(rgb, cfg.sigma)
        pts = threshold_candidates(h, cfg) if cfg.method == "threshold" else log_candidates(h, cfg)
    pts = merge_close(pts, cfg.merge_distance)
    return pts[np.lexsort((pts[:, 0], pts[:, 1]))] if len(pts) else pts


def proposal_recall(candidates, truth, radius: float = 30.0) -> float:
    """Fraction of true mitoses with at least one candidate within ``radius`` (1.0 when no truth)."""
    from scipy.spatial import cKDTree

    gt = np.asarray(truth, np.float64).reshape(-1, 2)
    cand = np.asarray(candidates, np.float64).reshape(-1, 2)
    if len(gt) == 0:
        return 1.0
    if len(cand) == 0:
        return 0.0
    dist, _ = cKDTree(cand).query(gt)
    return float(np.mean(dist <= radius))

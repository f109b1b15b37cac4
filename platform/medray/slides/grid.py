"""Pure coordinate logic in level-0 pixels: tissue grids, centre/corner conversion, sampling.

Coordinates are (N, 2) int64 arrays of (x, y). Patch sizes named ``*_level0`` are the patch side
in level-0 pixels (``patch_size * level_downsample``). Sampling is deterministic given an
``np.random.Generator``.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np

from medray.errors import AnnotationError
from medray.slides.annotations import Annotation, contains
from medray.slides.tissue import TissueMask


def _as_coords(coords) -> np.ndarray:
    return np.asarray(coords).reshape(-1, 2)


def tissue_grid(mask: TissueMask, patch_size: int, stride: int, min_fraction: float,
                level_downsample: float = 1) -> np.ndarray:
    """Top-left level-0 corners of a regular grid of whole-on-slide patches with enough tissue.

    ``patch_size`` and ``stride`` are in pixels of the level with ``level_downsample``; the grid
    starts at (0, 0), row-major (y, then x).
    """
    if patch_size <= 0 or stride <= 0:
        raise ValueError(f"patch_size and stride must be positive, got {patch_size}, {stride}")
    p0, s0 = patch_size * level_downsample, stride * level_downsample
    width, height = mask.dimensions
    nx = int(math.floor((width - p0) / s0)) + 1 if width >= p0 else 0
    ny = int(math.floor((height - p0) / s0)) + 1 if height >= p0 else 0
    if nx == 0 or ny == 0:
        return np.zeros((0, 2), np.int64)
    xs = np.round(np.arange(nx) * s0).astype(np.int64)
    ys = np.round(np.arange(ny) * s0).astype(np.int64)
    gx, gy = np.meshgrid(xs, ys)
    coords = np.stack([gx.ravel(), gy.ravel()], axis=1)
    keep = mask.fractions(coords[:, 0], coords[:, 1], p0, p0) >= min_fraction
    return coords[keep]


def centres_to_topleft(centres, patch_size_level0: int) -> np.ndarray:
    """Top-left corners of patches centred on ``centres`` (centre = top-left + size // 2)."""
    return _as_coords(centres).astype(np.int64) - int(patch_size_level0) // 2


def topleft_to_centres(topleft, patch_size_level0: int) -> np.ndarray:
    """Inverse of ``centres_to_topleft``."""
    return _as_coords(topleft).astype(np.int64) + int(patch_size_level0) // 2


def filter_in_bounds(coords, patch_size_level0: int, dims: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Keep top-left corners whose whole patch lies on a slide of level-0 ``dims``; (kept, dropped)."""
    coords = _as_coords(coords).astype(np.int64)
    width, height = dims
    ok = ((coords[:, 0] >= 0) & (coords[:, 1] >= 0)
          & (coords[:, 0] + patch_size_level0 <= width) & (coords[:, 1] + patch_size_level0 <= height))
    return coords[ok], int((~ok).sum())


def label_points(points, annotations: Sequence[Annotation], background: str = "normal") -> np.ndarray:
    """The label of the first annotation containing each point, else ``background`` (str array)."""
    points = _as_coords(points)
    labels = np.full(len(points), background, dtype=object)
    done = np.zeros(len(points), bool)
    for annotation in annotations:
        todo = ~done
        if not todo.any():
            break
        hit = np.zeros(len(points), bool)
        hit[todo] = annotation.contains(points[todo])
        labels[hit] = annotation.label
        done |= hit
    return labels.astype(str)


def sample_in_annotations(annotations: Sequence[Annotation], n: int, rng: np.random.Generator,
                          patch_size: int | None = None, max_rounds: int = 200) -> np.ndarray:
    """``n`` integer centres uniform over the annotations' area (polygons minus holes).

    With ``patch_size`` (level-0 px), the patch's four corners must also be inside the same
    annotation, so patches lie (nearly) wholly within it.
    """
    annotations = [a for a in annotations if a.area > 0]
    if n <= 0:
        return np.zeros((0, 2), np.int64)
    if not annotations:
        raise AnnotationError("no annotation with a positive area to sample from")
    areas = np.array([a.area for a in annotations])
    which = rng.choice(len(annotations), size=n, p=areas / areas.sum())
    out = np.zeros((n, 2), np.int64)
    half = (patch_size or 0) / 2
    for index, annotation in enumerate(annotations):
        need = int((which == index).sum())
        if need == 0:
            continue
        found = _rejection_sample(annotation, need, rng, half, max_rounds)
        out[which == index] = found
    return out


def _rejection_sample(annotation: Annotation, need: int, rng: np.random.Generator, half: float,
                      max_rounds: int) -> np.ndarray:
    x0, y0, x1, y1 = annotation.bounds
    box_area = max((x1 - x0) * (y1 - y0), 1.0)
    batch = int(min(max(4 * need * box_area / max(annotation.area, 1.0), 64), 1_000_000))
    got: list[np.ndarray] = []
    count = 0
    for _ in range(max_rounds):
        cand = np.floor(rng.uniform((x0, y0), (x1, y1), size=(batch, 2))).astype(np.int64)
        ok = annotation.contains(cand)
        if half:
            for dx, dy in ((-half, -half), (half, -half), (-half, half), (half, half)):
                ok &= annotation.contains(cand + (dx, dy))
        cand = cand[ok]
        got.append(cand)
        count += len(cand)
        if count >= need:
            return np.concatenate(got)[:need]
    raise AnnotationError(
        f"annotation {annotation.name or annotation.label!r} (bounds {annotation.bounds}): found only "
        f"{count} of {need} points inside it" + (f" with a {2 * half:g}-px patch wholly inside; use a "
                                                  f"smaller patch_size" if half else ""))


def sample_in_tissue_outside(mask: TissueMask, annotations: Sequence[Annotation], n: int,
                             rng: np.random.Generator, min_fraction: float, patch_size: int,
                             max_rounds: int = 50) -> np.ndarray:
    """Up to ``n`` integer centres on tissue and outside every annotation (e.g. normal patches).

    A centre is kept when the level-0 ``patch_size`` box around it lies on the slide, has at
    least ``min_fraction`` tissue, and the centre is in no annotation. Fewer than ``n`` found
    after ``max_rounds`` batches is announced with a warning.
    """
    if n <= 0:
        return np.zeros((0, 2), np.int64)
    rows, cols = np.nonzero(mask.mask)
    if len(rows) == 0:
        warnings.warn("tissue mask is empty: no normal centres sampled", stacklevel=2)
        return np.zeros((0, 2), np.int64)
    width, height = mask.dimensions
    half = patch_size // 2
    got: list[np.ndarray] = []
    count = 0
    batch = max(4 * n, 256)
    for _ in range(max_rounds):
        pick = rng.integers(0, len(rows), size=batch)
        jitter = rng.uniform(0, 1, size=(batch, 2))
        cand = np.floor((np.stack([cols[pick], rows[pick]], axis=1) + jitter) * mask.downsample).astype(np.int64)
        tl = cand - half
        ok = ((tl[:, 0] >= 0) & (tl[:, 1] >= 0)
              & (tl[:, 0] + patch_size <= width) & (tl[:, 1] + patch_size <= height))
        ok[ok] = mask.fractions(tl[ok, 0], tl[ok, 1], patch_size, patch_size) >= min_fraction
        if annotations and ok.any():
            ok[ok] = ~contains(annotations, cand[ok])
        got.append(cand[ok])
        count += int(ok.sum())
        if count >= n:
            return np.concatenate(got)[:n]
    warnings.warn(f"found only {count} of {n} tissue centres outside the annotations "
                  f"(min_fraction={min_fraction}, patch_size={patch_size})", stacklevel=2)
    return np.concatenate(got)[:n] if got else np.zeros((0, 2), np.int64)

"""Pure planning of patch extraction: which level-0 boxes of a slide become patches, and in which work unit.

Everything here is deterministic given the config seed and the slide id, so a re-run plans the
same coordinates, the same chunks and the same shard names (that is what makes resume exact).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from medray.errors import SlideError
from medray.slides.annotations import contains
from medray.slides.grid import (centres_to_topleft, filter_in_bounds, sample_in_annotations,
                                sample_in_tissue_outside, tissue_grid, topleft_to_centres)

ANNOTATION_SUFFIXES = (".xml", ".geojson", ".json", ".csv")


@dataclasses.dataclass
class SlidePlan:
    """The patches of one slide: level-0 top-left corners, class indices, and what was dropped."""

    slide_id: str
    uri: str
    level: int
    mpp: float            # µm/px of the patch pixels; NaN when the slide has no mpp
    size: int             # patch side in pixels at ``level``
    extent: int           # patch side in level-0 pixels
    dimensions: tuple[int, int]
    xs: np.ndarray
    ys: np.ndarray
    labels: np.ndarray
    dropped: dict[str, int]   # per class: coordinates whose patch leaves the slide
    requested: dict[str, int]  # per class: coordinates before bounds filtering and caps

    def counts(self, classes: list[str]) -> dict[str, int]:
        found = np.bincount(self.labels, minlength=len(classes)) if len(self.labels) else [0] * len(classes)
        return {name: int(found[i]) for i, name in enumerate(classes)}

    @property
    def num_patches(self) -> int:
        return int(len(self.xs))


def slide_id_of(uri: str) -> str:
    """File name without its extension: ``s3://b/slides/tumor_001.tif`` → ``tumor_001``."""
    return PurePosixPath(str(uri).rstrip("/").rsplit("/", 1)[-1]).stem


def annotation_names(slide_id: str, classes: list[str]) -> list[str]:
    """File names the folder convention looks for: polygons, then one points CSV per class."""
    return [f"{slide_id}.xml", f"{slide_id}.geojson"] + [f"{slide_id}_{c}.csv" for c in classes]


def find_annotation_uris(slide_id: str, folders: list[str], available: set[str], classes: list[str]) -> list[str]:
    """URIs of the conventional annotation files of a slide that exist in ``available``.

    ``folders`` are searched in order (annotations folder first, then the slide's own folder);
    the first folder holding any of the names wins, so the two never mix. Of ``.xml`` and
    ``.geojson`` (often the same polygons twice) only the first found is used.
    """
    for folder in folders:
        base = folder.rstrip("/")
        found = [f"{base}/{name}" for name in annotation_names(slide_id, classes) if f"{base}/{name}" in available]
        polygons = [f for f in found if not f.endswith(".csv")]
        if found:
            return polygons[:1] + [f for f in found if f.endswith(".csv")]
    return []


def csv_class(uri: str, slide_id: str, classes: list[str]) -> str | None:
    """The class a ``<slide_id>_<class>.csv`` points file stands for (None if not that pattern)."""
    name = str(uri).rsplit("/", 1)[-1]
    for cls in classes:
        if name.lower() == f"{slide_id}_{cls}.csv".lower():
            return cls
    if name.lower().endswith(".csv"):
        stem = name[:-4].lower()
        for cls in classes:
            if stem.endswith(f"_{cls.lower()}"):
                return cls
    return None


def slide_rng(seed: int, slide_id: str) -> np.random.Generator:
    """A random generator fixed by (seed, slide id): independent of slide order and worker."""
    digest = hashlib.sha256(f"{seed}:{slide_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def choose_level(slide: Any, level: int, mpp: float | None, tolerance: float) -> tuple[int, float]:
    """(level, µm/px of that level; NaN without mpp): by target mpp when given, else the level asked."""
    if mpp is not None:
        return slide.level_for_mpp(mpp, tolerance)
    if not 0 <= level < slide.level_count:
        raise SlideError(f"slide {slide.slide_id}: level {level} does not exist; it has levels "
                         f"0..{slide.level_count - 1} with sizes {list(slide.level_dimensions)}")
    base = slide.mpp
    return level, (base * slide.level_downsamples[level]) if base else math.nan


def level_extent(size: int, downsample: float) -> int:
    """Level-0 side of a ``size``-pixel patch at a level of ``downsample``."""
    return int(round(size * downsample))


def coordinates_from_points(points: dict[int, np.ndarray], extent: int) -> tuple[np.ndarray, np.ndarray]:
    """``annotations`` mode: CSV centres per class index → (top-left corners, class indices)."""
    corners = [centres_to_topleft(p, extent) for p in points.values()]
    labels = [np.full(len(p), label, np.int64) for label, p in points.items()]
    if not corners:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    return np.concatenate(corners), np.concatenate(labels)


def coordinates_from_polygons(mask: Any, tumor_polygons: list, n: int, extent: int, min_fraction: float,
                              rng: np.random.Generator, normal: int = 0, tumor: int = 1,
                              ) -> tuple[np.ndarray, np.ndarray]:
    """``polygons`` mode: ``n`` tumor centres wholly inside tumor polygons, ``n`` normal centres on
    tissue outside them → (top-left corners, class indices)."""
    tumor_c = sample_in_annotations(tumor_polygons, n, rng, extent) if tumor_polygons else np.zeros((0, 2), np.int64)
    normal_c = sample_in_tissue_outside(mask, tumor_polygons, n, rng, min_fraction, extent)
    corners = np.concatenate([centres_to_topleft(normal_c, extent), centres_to_topleft(tumor_c, extent)])
    labels = np.concatenate([np.full(len(normal_c), normal, np.int64), np.full(len(tumor_c), tumor, np.int64)])
    return corners, labels


def coordinates_from_grid(mask: Any, tumor_polygons: list, size: int, stride: int, downsample: float,
                          min_fraction: float, normal: int = 0, tumor: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``grid`` mode: the tissue grid; a patch is tumor when its centre is in a tumor polygon."""
    corners = tissue_grid(mask, size, stride, min_fraction, downsample)
    inside = contains(tumor_polygons, topleft_to_centres(corners, level_extent(size, downsample))) \
        if tumor_polygons else np.zeros(len(corners), bool)
    return corners, np.where(inside, tumor, normal).astype(np.int64)


def cap_per_label(labels: np.ndarray, max_per_label: int | None, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices keeping at most ``max_per_label`` per class, chosen at random (seeded)."""
    labels = np.asarray(labels)
    if max_per_label is None:
        return np.arange(len(labels))
    keep: list[np.ndarray] = []
    for value in np.unique(labels):
        idx = np.flatnonzero(labels == value)
        if len(idx) > max_per_label:
            idx = np.sort(rng.choice(idx, max_per_label, replace=False))
        keep.append(idx)
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)


def finish_plan(slide_id: str, uri: str, level: int, mpp: float, size: int, extent: int,
                dimensions: tuple[int, int], corners: np.ndarray, labels: np.ndarray,
                classes: list[str], max_per_label: int | None, rng: np.random.Generator) -> SlidePlan:
    """Bounds-filter (counting what is dropped per class), cap per class, put in reading order."""
    corners = np.asarray(corners, np.int64).reshape(-1, 2)
    labels = np.asarray(labels, np.int64).reshape(-1)
    requested = {c: int((labels == i).sum()) for i, c in enumerate(classes)}
    dropped: dict[str, int] = {}
    kept_corners, kept_labels = [], []
    for i, cls in enumerate(classes):
        kept, dropped[cls] = filter_in_bounds(corners[labels == i], extent, dimensions)
        kept_corners.append(kept)
        kept_labels.append(np.full(len(kept), i, np.int64))
    corners, labels = np.concatenate(kept_corners), np.concatenate(kept_labels)
    # Duplicate boxes (two CSV rows on the same centre) would be duplicate rows: keep the first.
    _, first = np.unique(corners, axis=0, return_index=True)
    first = np.sort(first)
    corners, labels = corners[first], labels[first]
    keep = cap_per_label(labels, max_per_label, rng)
    corners, labels = corners[keep], labels[keep]
    order = np.lexsort((corners[:, 0], corners[:, 1]))  # rows top to bottom, left to right
    corners, labels = corners[order], labels[order]
    return SlidePlan(slide_id, uri, int(level), float(mpp), int(size), int(extent), tuple(dimensions),
                     corners[:, 0].copy(), corners[:, 1].copy(), labels, dropped, requested)


def shard_name(slide_id: str, chunk: int) -> str:
    """Deterministic shard file name of a slide's chunk: a re-run overwrites, never duplicates."""
    return f"{slide_id}-{chunk:05d}.parquet"


def unit_bounds(n: int, rows_per_unit: int, parallelism: int = 1, min_rows: int = 64) -> list[tuple[int, int]]:
    """(lo, hi) index ranges splitting ``n`` patches into near-equal chunks of at most ``rows_per_unit``.

    The chunk count is rounded up to a multiple of ``parallelism`` (the readers) as long as chunks
    keep ``min_rows`` patches, so one large slide ends with every reader busy instead of one
    reader finishing a last, lone chunk. Sizes differ by at most one.
    """
    if n == 0:
        return []
    count = math.ceil(n / rows_per_unit)
    if parallelism > 1:
        count = max(count, min(math.ceil(count / parallelism) * parallelism, n // min_rows))
    edges = [chunk * n // count for chunk in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


def work_units(plan: SlidePlan, rows_per_unit: int, common: dict[str, Any], parallelism: int = 1
               ) -> list[dict[str, Any]]:
    """Split a slide's patches into consecutive chunks (see :func:`unit_bounds`); each is one task and one shard.

    Chunks follow reading order, so a unit covers a compact band of the slide (tile cache hits).
    Shard names depend on the chunking, so they are stable for the same ``rows_per_unit`` and
    ``parallelism``; a slide re-chunked on resume is redone whole and its old shards removed.
    """
    bounds = unit_bounds(plan.num_patches, rows_per_unit, parallelism)
    units = []
    for chunk, (lo, hi) in enumerate(bounds):
        units.append({
            **common,
            "slide_id": plan.slide_id, "uri": plan.uri, "chunk": chunk, "num_chunks": len(bounds),
            "shard": shard_name(plan.slide_id, chunk), "level": plan.level, "mpp": plan.mpp,
            "size": plan.size, "extent": plan.extent,
            "xs": plan.xs[lo:hi].tolist(), "ys": plan.ys[lo:hi].tolist(), "labels": plan.labels[lo:hi].tolist(),
        })
    return units


def strip_runs(xs: np.ndarray, ys: np.ndarray, step: int, max_run: int) -> list[tuple[int, int]]:
    """(start, length) runs of consecutive boxes on one row, each ``step`` level-0 px right of the last.

    A run is read as one wide region and cut into patches: fewer calls, each tile decoded once.
    """
    runs: list[tuple[int, int]] = []
    n = len(xs)
    i = 0
    while i < n:
        j = i + 1
        while j < n and j - i < max_run and ys[j] == ys[i] and xs[j] == xs[j - 1] + step:
            j += 1
        runs.append((i, j - i))
        i = j
    return runs

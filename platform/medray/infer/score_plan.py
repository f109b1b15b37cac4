"""Pure planning of slide scoring: the grid at the model's resolution, tissue cells, work units.

Map indexing: cell (row, col) is the patch whose level-0 top-left corner is
(col · stride0, row · stride0), ``stride0 = stride · level_downsample``. The grid covers the whole
slide, ``ceil(W / stride0) × ceil(H / stride0)`` cells, so one map pixel is one stride of the slide
(map µm/px = slide mpp × stride0); cells whose patch would leave the slide are never scored.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator

import numpy as np

from medray.errors import SlideError


@dataclasses.dataclass(frozen=True)
class ScoreGrid:
    """Geometry of one slide's score map (all level-0 quantities end in ``0``)."""

    dimensions: tuple[int, int]   # slide level-0 (w, h)
    level: int
    level_downsample: float
    patch_size: int               # patch side in pixels at ``level``
    stride: int                   # grid step in pixels at ``level``
    slide_mpp: float | None       # level-0 µm/px

    @property
    def extent0(self) -> float:
        """Patch side in level-0 pixels."""
        return self.patch_size * self.level_downsample

    @property
    def stride0(self) -> float:
        """Grid step (one map cell) in level-0 pixels."""
        return self.stride * self.level_downsample

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the map: every stride of the slide, edge cells included."""
        w, h = self.dimensions
        return max(1, math.ceil(h / self.stride0)), max(1, math.ceil(w / self.stride0))

    @property
    def cell_mpp(self) -> float | None:
        """µm per map cell side (slide mpp × stride0); None without mpp."""
        return None if self.slide_mpp is None else self.slide_mpp * self.stride0

    @property
    def cell_area_mm2(self) -> float | None:
        return None if self.cell_mpp is None else (self.cell_mpp / 1000.0) ** 2

    def origins(self, rows, cols) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 top-left (xs, ys) of the patches of cells (rows, cols)."""
        xs = np.round(np.asarray(cols, np.float64) * self.stride0).astype(np.int64)
        ys = np.round(np.asarray(rows, np.float64) * self.stride0).astype(np.int64)
        return xs, ys

    def centres(self, rows, cols) -> np.ndarray:
        """Level-0 (x, y) centres of the patches of cells (rows, cols), as (N, 2) float."""
        xs, ys = self.origins(rows, cols)
        half = self.extent0 / 2
        return np.stack([xs + half, ys + half], axis=1).astype(np.float64)

    def on_slide(self) -> np.ndarray:
        """Bool map: the cell's whole patch lies on the slide (read_region never pads)."""
        rows, cols = self.shape
        w, h = self.dimensions
        xs, _ = self.origins(np.zeros(cols), np.arange(cols))
        _, ys = self.origins(np.arange(rows), np.zeros(rows))
        # read_region's rule: the last pixel (size - 1) · downsample must start on the slide
        last = (self.patch_size - 1) * self.level_downsample
        return (ys + last < h)[:, None] & (xs + last < w)[None, :]

    def to_json(self) -> dict[str, Any]:
        return {"dimensions": list(self.dimensions), "level": self.level, "level_downsample": self.level_downsample,
                "patch_size": self.patch_size, "stride": self.stride, "extent0": self.extent0,
                "stride0": self.stride0, "shape": list(self.shape), "slide_mpp": self.slide_mpp,
                "cell_mpp": self.cell_mpp}


def choose_resolution(slide: Any, info: dict[str, Any], level: int | None, mpp: float | None,
                      tolerance: float) -> int:
    """The level to read: config level, config mpp, then the model's ``info`` mpp / level, else 0."""
    if level is not None:
        if level >= slide.level_count:
            raise SlideError(f"slide {slide.slide_id}: level {level} does not exist; it has levels "
                             f"0..{slide.level_count - 1} with sizes {list(slide.level_dimensions)}")
        return int(level)
    want = mpp if mpp is not None else info.get("mpp")
    if want is not None and not (isinstance(want, float) and math.isnan(want)):
        return int(slide.level_for_mpp(float(want), tolerance)[0])
    info_level = int(info.get("level") or 0)
    if info_level >= slide.level_count:
        raise SlideError(f"slide {slide.slide_id}: the model was trained at level {info_level}, which this "
                         f"slide lacks (levels 0..{slide.level_count - 1}); set level= or mpp= in the config")
    return info_level


def make_grid(slide: Any, level: int, patch_size: int, stride: int) -> ScoreGrid:
    return ScoreGrid(tuple(int(v) for v in slide.dimensions), int(level),
                     float(slide.level_downsamples[level]), int(patch_size), int(stride), slide.mpp)


def tissue_cells(grid: ScoreGrid, fractions_fn, min_fraction: float, chunk_rows: int = 256) -> np.ndarray:
    """Bool map of cells to score: on the slide and at least ``min_fraction`` tissue in the patch.

    ``fractions_fn(xs, ys, w, h)`` is ``TissueMask.fractions``; rows go in chunks so a 100k-px slide
    needs only a few MB of temporaries.
    """
    rows, cols = grid.shape
    keep = grid.on_slide()
    col_idx = np.arange(cols)
    for start in range(0, rows, chunk_rows):
        stop = min(rows, start + chunk_rows)
        rr, cc = np.meshgrid(np.arange(start, stop), col_idx, indexing="ij")
        xs, ys = grid.origins(rr.ravel(), cc.ravel())
        frac = np.asarray(fractions_fn(xs, ys, grid.extent0, grid.extent0)).reshape(stop - start, cols)
        keep[start:stop] &= frac >= min_fraction
    return keep


def work_units(cells: np.ndarray, unit_patches: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows, cols) of the cells to score, row-major, in chunks of at most ``unit_patches``."""
    if unit_patches < 1:
        raise ValueError(f"unit_patches must be >= 1, got {unit_patches}")
    rows, cols = np.nonzero(cells)
    for start in range(0, len(rows), unit_patches):
        yield rows[start:start + unit_patches], cols[start:start + unit_patches]


def strip_runs(rows: np.ndarray, cols: np.ndarray, max_run: int) -> Iterator[tuple[int, int]]:
    """(start, length) runs of horizontally adjacent cells (same row, consecutive cols), ≤ ``max_run``."""
    n = len(rows)
    start = 0
    while start < n:
        length = 1
        while (start + length < n and length < max_run and rows[start + length] == rows[start]
               and cols[start + length] == cols[start] + length):
            length += 1
        yield start, length
        start += length


def map_bytes(dimensions: tuple[int, int], stride0: float) -> int:
    """Bytes of the float32 map of a slide of level-0 ``dimensions`` at ``stride0`` (memory planning)."""
    w, h = dimensions
    return 4 * math.ceil(w / stride0) * math.ceil(h / stride0)

"""Tile-by-tile pyramidal TIFF writer (JPEG tiles) that OpenSlide opens as ``generic-tiff``.

Each level is fed to tifffile as a generator of tiles, so no level is ever held in memory;
reduced levels carry ``subfiletype=1`` and mpp goes in the resolution tags (pixels per cm).
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import tifffile
from tqdm import tqdm

# render(x0, y0, downsample, width, height) -> uint8 (height, width, 3); x0, y0 at level 0
TileRenderer = Callable[[float, float, int, int, int], np.ndarray]


def level_shapes(width: int, height: int, levels: int, downsample: int = 4) -> list[tuple[int, int, int]]:
    """(downsample, width, height) per level; level sizes are floor(size / downsample)."""
    out = []
    for level in range(levels):
        ds = downsample**level
        out.append((ds, max(1, width // ds), max(1, height // ds)))
    return out


def tile_count(width: int, height: int, levels: int, tile: int = 256, downsample: int = 4) -> int:
    return sum(-(-w // tile) * -(-h // tile) for _, w, h in level_shapes(width, height, levels, downsample))


def _tiles(render: TileRenderer, ds: int, width: int, height: int, tile: int,
           progress: tqdm | None) -> Iterator[np.ndarray]:
    """Row-major tiles of one level, rendered on demand."""
    for ty in range(-(-height // tile)):
        for tx in range(-(-width // tile)):
            yield render(tx * tile * ds, ty * tile * ds, ds, tile, tile)
            if progress is not None:
                progress.update(1)


def write_pyramid(path: str, render: TileRenderer, width: int, height: int, levels: int = 3,
                  tile: int = 256, downsample: int = 4, mpp: float | None = 0.25,
                  jpeg_quality: int = 90, progress: bool = True, desc: str = "tiles") -> list[tuple[int, int]]:
    """Write a pyramidal tiled JPEG TIFF to local ``path``; returns (width, height) per level.

    ``mpp=None`` writes no resolution (unit NONE), so readers find no microns-per-pixel.
    """
    shapes = level_shapes(width, height, levels, downsample)
    bar = tqdm(total=tile_count(width, height, levels, tile, downsample), desc=desc, unit="tile",
               disable=not progress, leave=False)
    try:
        with tifffile.TiffWriter(path, bigtiff=True) as tif:
            for level, (ds, w, h) in enumerate(shapes):
                resolution = None
                unit = None
                if mpp is not None:
                    per_cm = 1e4 / (mpp * (width / w))
                    resolution, unit = (per_cm, per_cm), "CENTIMETER"
                tif.write(
                    _tiles(render, ds, w, h, tile, bar),
                    shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                    compression="jpeg", compressionargs={"level": int(jpeg_quality)},
                    resolution=resolution, resolutionunit=unit,
                    subfiletype=1 if level else 0, metadata=None, maxworkers=1,
                )
    finally:
        bar.close()
    return [(w, h) for _, w, h in shapes]

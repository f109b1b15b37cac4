"""A georeferenced pyramidal TIFF of the probability map that OpenSlide / QuPath open over the slide.

One TIFF pixel is one grid cell; its resolution tags say ``slide mpp × stride0`` µm/px, so the
map has the slide's physical size (to within one cell) and lines up with it. Pixels are colour-
mapped RGB (NaN/background white, probability through matplotlib's ``jet``); the exact values
live in the ``.npy``. Tiles are lossless (zlib); reduced levels carry ``subfiletype=1``.
"""

from __future__ import annotations

import numpy as np

TILE = 256


def colourize(prob_map: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """H×W×3 uint8: probabilities through ``cmap``, background (NaN) white."""
    import matplotlib

    lut = (matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    finite = np.isfinite(prob_map)
    index = np.zeros(prob_map.shape, np.int64)
    index[finite] = np.clip(np.round(prob_map[finite] * 255), 0, 255).astype(np.int64)
    out = lut[index]
    out[~finite] = 255
    return out


def pyramid(image: np.ndarray, min_size: int = TILE) -> list[np.ndarray]:
    """The image, then 2× reductions (nearest) until the longer side fits in ``min_size``."""
    levels = [image]
    while max(levels[-1].shape[:2]) > min_size:
        levels.append(levels[-1][::2, ::2])
    return levels


def write_heatmap_tiff(path: str, prob_map: np.ndarray, cell_mpp: float | None, description: str = "") -> list[tuple[int, int]]:
    """Write the pyramidal TIFF to local ``path``; returns (width, height) per level.

    ``cell_mpp=None`` (slide without mpp) writes no resolution tags.
    """
    import tifffile

    base = colourize(prob_map)
    levels = pyramid(base)
    height, width = base.shape[:2]
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        for index, level in enumerate(levels):
            h, w = level.shape[:2]
            resolution, unit = None, None
            if cell_mpp is not None:
                per_cm = 1e4 / (cell_mpp * (width / w))
                resolution, unit = (per_cm, 1e4 / (cell_mpp * (height / h))), "CENTIMETER"
            tif.write(np.ascontiguousarray(level), tile=(TILE, TILE), photometric="rgb", compression="zlib",
                      resolution=resolution, resolutionunit=unit, subfiletype=1 if index else 0,
                      description=description if index == 0 else None, metadata=None, maxworkers=1)
    return [(lv.shape[1], lv.shape[0]) for lv in levels]

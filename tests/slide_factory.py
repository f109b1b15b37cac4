"""Tiny pyramidal tiled JPEG TIFFs that OpenSlide reads as ``generic-tiff``, for slide tests.

Reduced levels carry ``subfiletype=1`` so OpenSlide sees one pyramid; mpp goes into the
resolution tags (pixels per centimetre). The known tissue mask comes back with the image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile


def tissue_image(width: int = 2048, height: int = 1536, seed: int = 0,
                 blobs: tuple[tuple[float, float, float, float], ...] | None = None,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A near-white background with pink/purple elliptical 'tissue' blobs; returns (rgb, tissue).

    ``blobs`` are (cx, cy, rx, ry) in pixels; by default two ellipses and one round piece.
    """
    rng = np.random.default_rng(seed)
    if blobs is None:
        blobs = ((0.3 * width, 0.4 * height, 0.18 * width, 0.25 * height),
                 (0.72 * width, 0.6 * height, 0.15 * width, 0.2 * height),
                 (0.5 * width, 0.15 * height, 0.06 * width, 0.06 * width))
    yy, xx = np.mgrid[0:height, 0:width]
    tissue = np.zeros((height, width), bool)
    for cx, cy, rx, ry in blobs:
        tissue |= ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    rgb = np.empty((height, width, 3), np.float32)
    rgb[...] = (236, 236, 238)
    rgb += rng.normal(0, 3, rgb.shape)
    # H&E-like: pink stroma with purple speckles of nuclei.
    pink = np.array((225, 140, 185), np.float32)
    purple = np.array((120, 70, 160), np.float32)
    nuclei = rng.random((height, width)) < 0.15
    colour = np.where(nuclei[..., None], purple, pink)
    rgb[tissue] = colour[tissue] + rng.normal(0, 8, (int(tissue.sum()), 3))
    return np.clip(rgb, 0, 255).astype(np.uint8), tissue


def _half(image: np.ndarray, factor: int) -> np.ndarray:
    """Block-mean downsample by an integer factor (edges cropped to whole blocks)."""
    h, w = image.shape[0] // factor, image.shape[1] // factor
    blocks = image[: h * factor, : w * factor].reshape(h, factor, w, factor, -1).astype(np.float32)
    return blocks.mean(axis=(1, 3)).round().astype(np.uint8)


def write_pyramid_tiff(path: str | Path, rgb: np.ndarray, mpp: float | None = 0.5,
                       levels: int = 3, factor: int = 2, tile: int = 256,
                       quality: int = 90) -> Path:
    """Write ``rgb`` as a tiled JPEG pyramid of ``levels`` levels, each ``factor`` times smaller."""
    path = Path(path)
    pyramid = [rgb]
    for _ in range(levels - 1):
        pyramid.append(_half(pyramid[-1], factor))
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        for index, level in enumerate(pyramid):
            kwargs = {}
            if mpp is not None:
                px_per_cm = 1e4 / (mpp * (factor ** index))
                kwargs["resolution"] = (px_per_cm, px_per_cm)
                kwargs["resolutionunit"] = "CENTIMETER"
            tif.write(level, tile=(tile, tile), compression="jpeg",
                      compressionargs={"level": quality}, photometric="rgb",
                      subfiletype=1 if index else 0, maxworkers=1, **kwargs)
    return path


def make_slide(path: str | Path, width: int = 2048, height: int = 1536, mpp: float | None = 0.5,
               levels: int = 3, factor: int = 2, seed: int = 0) -> tuple[Path, np.ndarray, np.ndarray]:
    """A tissue slide on disk; returns (path, level-0 rgb, level-0 tissue mask)."""
    rgb, tissue = tissue_image(width, height, seed)
    return write_pyramid_tiff(path, rgb, mpp=mpp, levels=levels, factor=factor), rgb, tissue


def gradient_slide(path: str | Path, width: int = 1024, height: int = 768, mpp: float | None = 0.25,
                   levels: int = 3, factor: int = 4) -> tuple[Path, np.ndarray]:
    """A smooth colour ramp (JPEG-friendly) so pixel values identify positions."""
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1),
                    np.full_like(xx, 128)], axis=-1).astype(np.uint8)
    return write_pyramid_tiff(path, rgb, mpp=mpp, levels=levels, factor=factor), rgb

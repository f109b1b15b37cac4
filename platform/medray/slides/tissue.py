"""Tissue detection on a low-resolution overview: Otsu on HSV saturation, then morphology.

``detect_tissue`` is pure (RGB in, bool mask out); ``tissue_mask`` reads a slide's thumbnail at
about ``mask_mpp`` µm/px and wraps the result in a ``TissueMask`` that answers "what fraction of
this level-0 box is tissue" in O(1) per box through an integral image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from medray.config.base import MedrayModel

if TYPE_CHECKING:
    from medray.slides.reader import Slide


class TissueConfig(MedrayModel):
    """How to find tissue on a slide overview and how much of a patch must be tissue."""

    method: Literal["otsu_saturation"] = Field(
        "otsu_saturation", description="Thresholding method: Otsu on HSV saturation")
    mask_mpp: float | None = Field(
        32.0, gt=0, description="Target µm/px of the mask when the slide has mpp (None: use max_size only)")
    max_size: int = Field(1024, ge=16, description="Longest side of the mask in pixels (cap, and the size without mpp)")
    min_size: int = Field(256, ge=16, description="Shortest allowed longest side of the mask (small slides get finer masks)")
    min_saturation: float = Field(
        0.07, ge=0, le=1, description="Floor on the saturation threshold, so blank glass is never tissue")
    open_radius: int = Field(1, ge=0, description="Morphological opening radius in mask pixels (removes specks)")
    close_radius: int = Field(2, ge=0, description="Morphological closing radius in mask pixels (joins fragments)")
    min_object_um2: float = Field(
        20000.0, ge=0, description="Smallest tissue piece kept, in µm² (used when the mask's mpp is known)")
    min_object_px: int = Field(16, ge=0, description="Smallest tissue piece kept, in mask pixels (without mpp)")
    fill_holes: bool = Field(True, description="Fill holes enclosed by tissue")
    min_tissue_fraction: float = Field(
        0.5, ge=0, le=1, description="Fraction of a patch that must be tissue for the patch to be kept")


@dataclass(eq=False)
class TissueMask:
    """A bool tissue mask where one mask pixel covers ``downsample`` level-0 pixels per side."""

    mask: np.ndarray
    downsample: float
    dimensions: tuple[int, int] | None = None  # level-0 (w, h); defaults to the mask's extent
    _integral: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.mask = np.asarray(self.mask, bool)
        if self.mask.ndim != 2:
            raise ValueError(f"tissue mask must be 2-D, got shape {self.mask.shape}")
        if not self.downsample > 0:
            raise ValueError(f"downsample must be > 0, got {self.downsample}")
        if self.dimensions is None:
            h, w = self.mask.shape
            self.dimensions = (int(round(w * self.downsample)), int(round(h * self.downsample)))
        integral = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), np.float64)
        np.cumsum(np.cumsum(self.mask, axis=0), axis=1, out=integral[1:, 1:])
        self._integral = integral

    @property
    def tissue_fraction(self) -> float:
        """Fraction of the whole mask that is tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def _area_below(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Tissue area (mask px²) in [0, u) × [0, v): bilinear lookup in the integral image (exact)."""
        h, w = self.mask.shape
        u = np.clip(u, 0, w)
        v = np.clip(v, 0, h)
        c0 = np.minimum(np.floor(u).astype(np.int64), w - 1) if w else np.zeros_like(u, np.int64)
        r0 = np.minimum(np.floor(v).astype(np.int64), h - 1) if h else np.zeros_like(v, np.int64)
        fu, fv = u - c0, v - r0
        ii = self._integral
        return ((1 - fu) * (1 - fv) * ii[r0, c0] + fu * (1 - fv) * ii[r0, c0 + 1]
                + (1 - fu) * fv * ii[r0 + 1, c0] + fu * fv * ii[r0 + 1, c0 + 1])

    def fractions(self, xs, ys, w: float, h: float) -> np.ndarray:
        """Tissue fraction of each level-0 box (x, y, w, h); area off the mask counts as no tissue."""
        if w <= 0 or h <= 0:
            raise ValueError(f"box size must be positive, got {(w, h)}")
        xs = np.asarray(xs, np.float64) / self.downsample
        ys = np.asarray(ys, np.float64) / self.downsample
        bw, bh = w / self.downsample, h / self.downsample
        area = (self._area_below(xs + bw, ys + bh) - self._area_below(xs, ys + bh)
                - self._area_below(xs + bw, ys) + self._area_below(xs, ys))
        return np.clip(area / (bw * bh), 0.0, 1.0)

    def fraction(self, x: float, y: float, w: float, h: float) -> float:
        """Tissue fraction of one level-0 box."""
        return float(self.fractions(np.array([x]), np.array([y]), w, h)[0])


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return xx * xx + yy * yy <= radius * radius


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] as float32: (max - min) / max, 0 for black."""
    rgb = np.asarray(rgb)
    hi = rgb.max(axis=-1).astype(np.float32)
    lo = rgb.min(axis=-1).astype(np.float32)
    return np.divide(hi - lo, hi, out=np.zeros_like(hi), where=hi > 0)


def detect_tissue(rgb: np.ndarray, config: TissueConfig | None = None,
                  mpp_of_image: float | None = None) -> np.ndarray:
    """Bool tissue mask of an RGB overview (pure).

    Threshold = max(Otsu(saturation), ``min_saturation``), so an empty slide gives no tissue;
    then open, close, drop small pieces (µm² when ``mpp_of_image`` is known) and fill holes.
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    config = config or TissueConfig()
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"expected an H×W×3 RGB image, got shape {rgb.shape}")
    sat = saturation(rgb[..., :3])
    threshold = config.min_saturation
    if sat.size and float(sat.max()) > float(sat.min()):
        threshold = max(threshold, float(threshold_otsu(sat)))
    mask = sat > threshold
    if config.open_radius:
        mask = ndimage.binary_opening(mask, structure=_disk(config.open_radius))
    if config.close_radius:
        # Pad so closing does not erode tissue that touches the image border.
        r = config.close_radius
        padded = np.pad(mask, r, mode="edge")
        mask = ndimage.binary_closing(padded, structure=_disk(r))[r:-r, r:-r]
    if mpp_of_image is not None:
        min_px = config.min_object_um2 / (mpp_of_image * mpp_of_image)
    else:
        min_px = config.min_object_px
    if min_px > 1 and mask.any():
        labels, count = ndimage.label(mask)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        keep = sizes >= min_px
        keep[0] = False
        mask = keep[labels]
    if config.fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    return mask


def tissue_mask(slide: Slide, config: TissueConfig | None = None) -> TissueMask:
    """Detect tissue on ``slide``'s overview at about ``config.mask_mpp`` µm/px (≤ ``max_size`` px)."""
    config = config or TissueConfig()
    max_size = config.max_size
    if slide.mpp is not None and config.mask_mpp is not None:
        downsample = max(config.mask_mpp / slide.mpp, 1.0)
        wanted = max(config.min_size, math.ceil(max(slide.dimensions) / downsample))
        max_size = min(max_size, wanted)
    rgb, downsample = slide.thumbnail(max_size)
    mpp = slide.mpp * downsample if slide.mpp is not None else None
    mask = detect_tissue(rgb, config, mpp)
    return TissueMask(mask, downsample, tuple(slide.dimensions))

"""Whole-slide access through OpenSlide: levels, mpp, level choice by resolution, RGB regions.

``open_slide`` accepts a local path or an object-storage URI (downloaded once into the local
cache). A ``Slide`` pickles as its URI and reopens on the other side, so it can be sent to Ray
workers; each process keeps its own OpenSlide handle.
"""

from __future__ import annotations

import ctypes
import math
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import openslide
from openslide import lowlevel

from medray.config.common import StorageOptions
from medray.errors import SlideError, StorageError
from medray.slides.jpeg_tiles import JpegTileReader

# Largest level read_level/thumbnail will read in one piece (pixels); larger levels go in strips.
MAX_LEVEL_PIXELS = 64 * 1024 * 1024
# Multi-file formats (MIRAX, Hamamatsu VMS, DICOM-WSI series): one file alone is not the slide,
# so they cannot come through the single-file cache; open them from a local or shared path.
_MULTI_FILE_SUFFIXES = (".mrxs", ".vms", ".vmu", ".dcm")
_RESOLUTION_UNITS_UM = {"centimeter": 1e4, "inch": 25400.0}


def _bgra_bytes(argb: np.ndarray) -> np.ndarray:
    """OpenSlide's premultiplied ARGB (H×W uint32) as H×W×4 uint8 B, G, R, A (a view where it can be)."""
    little = argb if np.little_endian else argb.astype("<u4")  # pragma: no branch - big-endian hosts copy
    return little.view(np.uint8).reshape(*argb.shape, 4)


def _composite_on_white(bgra: np.ndarray) -> None:
    """In place: premultiplied B, G, R over white (``c + 255 - alpha``), alpha set to 255."""
    blend = bgra[..., :3].astype(np.uint16)
    blend += (255 - bgra[..., 3])[..., None]
    np.minimum(blend, 255, out=blend)
    bgra[..., :3] = blend
    bgra[..., 3] = 255


def _opaque(argb: np.ndarray) -> bool:
    return argb.size == 0 or argb.min() >= 0xFF000000  # every alpha (the top byte) is 255


def premultiplied_argb_to_rgb(argb: np.ndarray) -> np.ndarray:
    """OpenSlide's native premultiplied ARGB (H×W uint32) → H×W×3 RGB, composited on white.

    Opaque pixels are copied as they are; transparent ones (outside scanned areas) become white,
    partly transparent ones ``c + 255 - alpha`` (premultiplied "over" white). ``argb`` is untouched.
    """
    if argb.dtype != np.uint32 or argb.ndim != 2:
        raise ValueError(f"expected an H×W uint32 ARGB buffer, got {argb.dtype} {argb.shape}")
    bgra = _bgra_bytes(argb)
    if not _opaque(argb):
        bgra = bgra.copy()
        _composite_on_white(bgra)
    return cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGB)  # ~100x faster than a strided numpy channel swap


def premultiplied_argb_to_bgrx(argb: np.ndarray) -> np.ndarray:
    """OpenSlide's premultiplied ARGB (H×W uint32, little-endian) → an H×W×4 uint8 B, G, R, X view.

    The same composite on white as :func:`premultiplied_argb_to_rgb`, but in place: an opaque
    region (the usual case) is returned as a view of ``argb`` with no copy at all; libjpeg-turbo
    encodes that byte order directly. The fourth byte is 255.
    """
    if argb.dtype != np.uint32 or argb.ndim != 2 or not np.little_endian:
        raise ValueError(f"expected an H×W uint32 ARGB buffer on a little-endian host, got {argb.dtype} {argb.shape}")
    bgrx = _bgra_bytes(argb)
    if not _opaque(argb):
        _composite_on_white(bgrx)
    return bgrx


def _mpp_from_properties(props: dict[str, str]) -> float | None:
    """µm/px from OpenSlide's mpp properties, else the TIFF resolution tags with their unit."""
    for key in (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y):
        try:
            value = float(props[key])
        except (KeyError, ValueError):
            continue
        if value > 0 and math.isfinite(value):
            return value
    unit = props.get("tiff.ResolutionUnit", "").lower()
    try:
        xres = float(props["tiff.XResolution"])
    except (KeyError, ValueError):
        return None
    if unit in _RESOLUTION_UNITS_UM and xres > 0:
        return _RESOLUTION_UNITS_UM[unit] / xres
    return None


def _resolve_local(uri: str, storage: StorageOptions | None) -> str:
    from medray.storage import is_remote, local_copy

    if is_remote(uri) and uri.lower().endswith(_MULTI_FILE_SUFFIXES):
        raise SlideError(
            f"slide {uri!r}: this format spans several files (MIRAX, VMS, DICOM series); copy the "
            f"slide to a local or shared filesystem path and open that path instead")
    if not is_remote(uri):
        path = os.path.abspath(os.path.expanduser(uri[7:] if uri.startswith("file://") else uri))
        if not os.path.exists(path):
            raise SlideError(f"slide {uri!r} does not exist (resolved to {path})")
        return path
    try:
        return local_copy(uri, storage)
    except StorageError as err:
        raise SlideError(f"slide {uri!r} cannot be fetched: {err}") from err


def _open_handle(uri: str, path: str) -> openslide.OpenSlide:
    try:
        return openslide.OpenSlide(path)
    except openslide.OpenSlideUnsupportedFormatError:
        raise SlideError(
            f"slide {uri!r}: OpenSlide does not recognise this file as a slide (not a slide, an "
            f"unsupported format, or a damaged/truncated file; detected format: "
            f"{openslide.OpenSlide.detect_format(path)!r})") from None
    except openslide.OpenSlideError as err:
        raise SlideError(f"slide {uri!r} cannot be opened (corrupt or truncated?): OpenSlide says: {err}") from None
    except OSError as err:
        raise SlideError(f"slide {uri!r} cannot be opened: {err}") from None


class Slide:
    """An open slide: geometry, mpp and RGB region reads (level-0 coordinates, as OpenSlide)."""

    def __init__(self, uri: str, storage: StorageOptions | None = None, mpp_override: float | None = None,
                 tile_decode: bool = True):
        if mpp_override is not None and not mpp_override > 0:
            raise SlideError(f"slide {uri!r}: mpp_override must be > 0 µm/px, got {mpp_override}")
        self.uri = str(uri)
        self.storage = storage
        self.mpp_override = mpp_override
        self.tile_decode = tile_decode
        self.path = _resolve_local(self.uri, storage)
        self._osr = _open_handle(self.uri, self.path)
        self._load_metadata()

    def _load_metadata(self) -> None:
        osr = self._osr
        self.slide_id = Path(self.uri.rstrip("/").rsplit("/", 1)[-1]).stem
        self.properties: dict[str, str] = dict(osr.properties)
        self.level_count: int = osr.level_count
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(osr.level_dimensions)
        self.level_downsamples: tuple[float, ...] = tuple(float(d) for d in osr.level_downsamples)
        self.dimensions: tuple[int, int] = self.level_dimensions[0]
        self.vendor: str | None = self.properties.get(openslide.PROPERTY_NAME_VENDOR)
        self.associated_images: tuple[str, ...] = tuple(osr.associated_images.keys())
        self.mpp: float | None = self.mpp_override or _mpp_from_properties(self.properties)
        self._direct = getattr(lowlevel, "_read_region", None)
        # JPEG-tiled TIFF levels decoded by libjpeg-turbo directly (same pixels, ~5× cheaper)
        self._tiles = (JpegTileReader.for_slide(self.path, self.vendor, self.level_dimensions)
                       if self.tile_decode and self._direct is not None else None)

    @property
    def direct_tile_levels(self) -> tuple[int, ...]:
        """Levels whose aligned reads may bypass OpenSlide's decoder (see medray.slides.jpeg_tiles)."""
        return self._tiles.levels if self._tiles is not None else ()

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        if getattr(self, "_tiles", None) is not None:
            self._tiles.close()
            self._tiles = None
        if getattr(self, "_osr", None) is not None:
            self._osr.close()
            self._osr = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri, "storage": self.storage, "mpp_override": self.mpp_override,
                "tile_decode": self.tile_decode}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["uri"], state["storage"], state["mpp_override"], state.get("tile_decode", True))

    def __repr__(self) -> str:
        return (f"Slide({self.uri!r}, {self.vendor}, {self.dimensions[0]}×{self.dimensions[1]}, "
                f"levels={self.level_count}, mpp={self.mpp})")

    def _handle(self) -> openslide.OpenSlide:
        if self._osr is None:
            raise SlideError(f"slide {self.uri!r} is closed")
        return self._osr

    # -- resolution --------------------------------------------------------------------------
    @property
    def level_mpps(self) -> tuple[float, ...] | None:
        """µm/px of each level, or None when the slide has no mpp."""
        if self.mpp is None:
            return None
        return tuple(self.mpp * d for d in self.level_downsamples)

    def level_for_mpp(self, mpp: float, tolerance: float = 0.1) -> tuple[int, float]:
        """(level, that level's µm/px) for the level closest to ``mpp`` within relative ``tolerance``."""
        if self.mpp is None:
            raise SlideError(
                f"slide {self.slide_id} ({self.uri}) has no mpp metadata, so no level can be chosen "
                f"at {mpp} µm/px; set mpp_override (the scanner's level-0 µm/px) or ask by level "
                f"instead (levels: {list(self.level_dimensions)})")
        mpps = self.level_mpps
        errors = [abs(m - mpp) / mpp for m in mpps]
        best = int(np.argmin(errors))
        if errors[best] > tolerance:
            shown = [round(m, 4) for m in mpps]
            raise SlideError(
                f"slide {self.slide_id}: no level at {mpp} µm/px (±{tolerance:.0%}); available mpps: "
                f"{shown}; the closest is {shown[best]}")
        return best, mpps[best]

    def _check_level(self, level: int) -> None:
        if not isinstance(level, (int, np.integer)) or not 0 <= level < self.level_count:
            raise SlideError(
                f"slide {self.slide_id}: level {level!r} does not exist; levels 0..{self.level_count - 1} "
                f"with sizes {list(self.level_dimensions)}")

    # -- pixels ------------------------------------------------------------------------------
    def read_region(self, x: int, y: int, level: int, size: tuple[int, int] | int) -> np.ndarray:
        """H×W×3 uint8 RGB of ``size`` (w, h) pixels at ``level``, top-left at level-0 (x, y).

        Every pixel must start on the slide: a region past the edge is a SlideError, not padding.
        """
        x, y, w, h = self._check_region(x, y, level, size)
        if self._direct is not None:
            return premultiplied_argb_to_rgb(self._read_argb(x, y, level, np.empty((h, w), np.uint32)))
        return _rgba_to_rgb(self._guarded(x, y, level, (w, h), lambda osr: np.asarray(
            osr.read_region((x, y), level, (w, h)))))

    def read_region_bgrx(self, x: int, y: int, level: int, size: tuple[int, int] | int,
                         out: np.ndarray | None = None) -> np.ndarray:
        """The region of :meth:`read_region` as H×W×4 uint8 in B, G, R, X order (X = 255).

        That is OpenSlide's own pixel layout, so an opaque region costs no conversion: the
        pixels land in ``out`` (a C-contiguous uint32 buffer of at least W·H elements, reused
        across calls to skip allocating and faulting in fresh pages) and come back as a view
        of it. Valid until ``out`` is reused. Same bounds checks and errors as read_region.
        """
        x, y, w, h = self._check_region(x, y, level, size)
        if self._direct is None or not np.little_endian:  # pragma: no cover - old openslide-python
            return cv2.cvtColor(self.read_region(x, y, level, (w, h)), cv2.COLOR_RGB2BGRA)
        if out is None:
            argb = np.empty((h, w), np.uint32)
        else:
            if out.dtype != np.uint32 or not out.flags.c_contiguous or out.size < w * h:
                raise ValueError(f"out must be a C-contiguous uint32 buffer of >= {w * h} elements, "
                                 f"got {out.dtype} {out.shape}")
            argb = out.reshape(-1)[:w * h].reshape(h, w)
        return premultiplied_argb_to_bgrx(self._read_argb(x, y, level, argb))

    def _check_region(self, x: int, y: int, level: int, size: tuple[int, int] | int) -> tuple[int, int, int, int]:
        """(x, y, w, h) as ints, or a SlideError naming the slide, the region and the bounds."""
        self._check_level(level)
        w, h = (size, size) if isinstance(size, (int, np.integer)) else size
        x, y, w, h = int(x), int(y), int(w), int(h)
        if w <= 0 or h <= 0:
            raise SlideError(f"slide {self.slide_id}: region size must be positive, got {(w, h)}")
        ds = self.level_downsamples[level]
        width, height = self.dimensions
        if x < 0 or y < 0 or x + (w - 1) * ds >= width or y + (h - 1) * ds >= height:
            raise SlideError(
                f"slide {self.slide_id}: region x={x}, y={y}, size={(w, h)} at level {level} "
                f"(level-0 box x {x}..{x + w * ds:g}, y {y}..{y + h * ds:g}) leaves the slide; "
                f"level-0 bounds are 0 <= x < {width}, 0 <= y < {height}")
        return x, y, w, h

    def _read_argb(self, x: int, y: int, level: int, argb: np.ndarray) -> np.ndarray:
        """OpenSlide's premultiplied ARGB pixels of a checked region, written into ``argb`` (h×w).

        JPEG-tiled levels read at whole level coordinates are decoded directly (same pixels).
        """
        if self._tiles is not None:
            ds = self.level_downsamples[level]
            lx, ly = x / ds, y / ds
            if lx.is_integer() and ly.is_integer() and self._tiles.read(
                    level, int(lx), int(ly), argb,
                    lambda tx, ty, out: self._openslide_argb(round(tx * ds), round(ty * ds), level, out)):
                return argb
        return self._openslide_argb(x, y, level, argb)

    def _openslide_argb(self, x: int, y: int, level: int, argb: np.ndarray) -> np.ndarray:
        """The region through OpenSlide itself into ``argb`` (h×w uint32)."""
        h, w = argb.shape
        pointer = argb.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32))
        self._guarded(x, y, level, (w, h), lambda osr: self._direct(osr._osr, pointer, x, y, level, w, h))
        return argb

    def _guarded(self, x: int, y: int, level: int, size: tuple[int, int], read: Any) -> Any:
        """``read(handle)``, with an OpenSlide failure turned into a SlideError naming the region."""
        try:
            return read(self._handle())
        except openslide.OpenSlideError as err:
            # OpenSlide latches errors: reopen so later reads of good tiles still work.
            self._handle().close()
            self._osr = _open_handle(self.uri, self.path)
            raise SlideError(f"slide {self.slide_id}: reading region x={x}, y={y}, size={size} at "
                             f"level {level} failed (corrupt tile?): OpenSlide says: {err}") from None

    def read_level(self, level: int, max_pixels: int = MAX_LEVEL_PIXELS) -> np.ndarray:
        """A whole level as RGB; refuses levels over ``max_pixels`` (use thumbnail or regions)."""
        self._check_level(level)
        w, h = self.level_dimensions[level]
        if w * h > max_pixels:
            raise SlideError(
                f"slide {self.slide_id}: level {level} is {w}×{h} = {w * h / 1e6:.0f} Mpx, over the "
                f"{max_pixels / 1e6:.0f} Mpx guard; use thumbnail(max_size) or read_region, or a smaller "
                f"level (sizes: {list(self.level_dimensions)})")
        return self.read_region(0, 0, level, (w, h))

    def thumbnail(self, max_size: int) -> tuple[np.ndarray, float]:
        """An RGB overview whose longer side is at most ``max_size``; returns (image, downsample).

        ``downsample`` is level-0 pixels per thumbnail pixel (the mean of x and y, which differ
        by under one thumbnail pixel over the whole slide).
        """
        width, height = self.dimensions
        target = max(max(width, height) / max_size, 1.0)
        out_w, out_h = max(1, round(width / target)), max(1, round(height / target))
        level = self._handle().get_best_level_for_downsample(target)
        lw, lh = self.level_dimensions[level]
        if lw * lh <= MAX_LEVEL_PIXELS:
            image = self.read_level(level)
            if (lw, lh) != (out_w, out_h):
                image = cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_AREA)
        else:
            image = self._strip_thumbnail(level, out_w, out_h)
        return image, (width / out_w + height / out_h) / 2

    def _strip_thumbnail(self, level: int, out_w: int, out_h: int) -> np.ndarray:
        """Downsample a level too big to hold, strip by strip."""
        lw, lh = self.level_dimensions[level]
        ds = self.level_downsamples[level]
        rows_per_out = lh / out_h
        strip_out = max(1, int(MAX_LEVEL_PIXELS // 4 // max(lw, 1) / rows_per_out))
        image = np.empty((out_h, out_w, 3), np.uint8)
        for start in range(0, out_h, strip_out):
            stop = min(out_h, start + strip_out)
            y0, y1 = int(round(start * rows_per_out)), min(lh, int(round(stop * rows_per_out)))
            strip = self.read_region(0, int(y0 * ds), level, (lw, max(1, y1 - y0)))
            image[start:stop] = cv2.resize(strip, (out_w, stop - start), interpolation=cv2.INTER_AREA)
        return image

    def associated_image(self, name: str) -> np.ndarray:
        """An associated image (label, macro, thumbnail) as RGB."""
        images = self._handle().associated_images
        if name not in images:
            raise SlideError(f"slide {self.slide_id} has no associated image {name!r}; "
                             f"it has {list(self.associated_images)}")
        return _rgba_to_rgb(np.asarray(images[name]))


def _rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Non-premultiplied RGBA (openslide-python's PIL images) → RGB on white."""
    if rgba.ndim == 3 and rgba.shape[2] == 3:
        return rgba
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha[..., None].astype(np.uint16)
    out = (rgba[..., :3].astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def open_slide(uri: str, storage: StorageOptions | None = None, mpp_override: float | None = None,
               tile_decode: bool = True) -> Slide:
    """Open any slide OpenSlide reads (SVS, NDPI, MRXS, SCN, tiled TIFF, DICOM) by path or URI.

    ``tile_decode=False`` sends every read through OpenSlide's own decoder (no direct JPEG path).
    """
    return Slide(str(uri), storage, mpp_override, tile_decode)

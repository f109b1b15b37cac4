"""Direct libjpeg-turbo decoding of a tiled JPEG TIFF's tiles: the same pixels as OpenSlide, ~5× cheaper.

OpenSlide reads generic-TIFF and Aperio JPEG tiles through libtiff's RGBA interface (~1–1.4 ms a
256² tile here); decoding the tile's bytes with libjpeg-turbo (simplejpeg) straight into
OpenSlide's own pixel layout (premultiplied ARGB as little-endian uint32, i.e. B, G, R, A bytes)
costs ~0.25 ms and gives identical pixels. Decoding is strict: data libjpeg only warns about
(a truncated or damaged tile) is an error here, as it is in OpenSlide, never grey pixels.

Used only where that is known to hold: TIFF levels that are tiled, 8-bit 3-sample JPEG (RGB or
YCbCr, chunky), read at integer level coordinates (OpenSlide resamples fractional ones), every
tile present; and each level is checked once against OpenSlide before it is trusted. Anything
else returns False and the caller reads through OpenSlide, which also reports corrupt tiles the
usual way.
"""

from __future__ import annotations

import collections
import os
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

# Formats whose levels are plain TIFF tile grids (no overlaps, no per-tile transforms).
VENDORS = ("generic-tiff", "aperio")
# Decoded tiles kept per reader: one row of the level being read, so the next strip of patches
# smaller than a tile (a 128² grid on 256² tiles reads each tile row twice) finds its tiles
# decoded; at least CACHE_MIN_TILES, at most what CACHE_BYTES holds (a 40,000² level of 256²
# tiles: 159 tiles, 40 MiB; a 100,000² one: capped at 256 tiles, 64 MiB).
CACHE_MIN_TILES = 32
CACHE_BYTES = 64 << 20
_SOI = b"\xff\xd8"
# An Adobe APP14 segment with transform 0: "these three components are R, G, B" (Aperio's RGB JPEG
# tiles carry no JFIF/Adobe marker, and libjpeg would otherwise take them for YCbCr).
_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"


@dataclass(frozen=True)
class _Level:
    width: int
    height: int
    tile_w: int
    tile_h: int
    tiles_across: int
    offsets: np.ndarray
    counts: np.ndarray
    prefix: bytes  # SOI, the RGB marker where needed, the shared JPEGTables: prepended to each tile's body


def _tiff_levels(path: str, level_dimensions: tuple[tuple[int, int], ...]) -> dict[int, _Level]:
    """OpenSlide level → its TIFF page's tile index, for the levels that qualify (by dimensions)."""
    import tifffile

    levels: dict[int, _Level] = {}
    with tifffile.TiffFile(path) as tif:
        pages = {}
        for page in tif.pages:
            if (page.is_tiled and page.compression == 7 and page.photometric in (2, 6)
                    and page.planarconfig == 1 and page.samplesperpixel == 3 and page.bitspersample == 8
                    and not page.extrasamples and page.imagedepth == 1 and page.tiledepth == 1):
                pages.setdefault((page.imagewidth, page.imagelength), page)
        for level, dims in enumerate(level_dimensions):
            page = pages.get(tuple(dims))
            if page is None:
                continue
            tables = page.jpegtables or b""
            prefix = (_SOI + (_ADOBE_RGB if page.photometric == 2 and not page.is_jfif else b"")
                      + (tables[2:-2] if tables.startswith(_SOI) else b""))
            levels[level] = _Level(
                width=page.imagewidth, height=page.imagelength, tile_w=page.tilewidth, tile_h=page.tilelength,
                tiles_across=-(-page.imagewidth // page.tilewidth),
                offsets=np.asarray(page.dataoffsets, np.int64), counts=np.asarray(page.databytecounts, np.int64),
                prefix=prefix)
    return levels


def cache_tiles(spec: _Level) -> int:
    """How many decoded tiles a reader keeps while reading ``spec``: a tile row and two more, at
    least ``CACHE_MIN_TILES``, never more than ``CACHE_BYTES`` hold (but 2 tiles however large)."""
    most = max(2, CACHE_BYTES // (spec.tile_w * spec.tile_h * 4))
    return min(max(CACHE_MIN_TILES, spec.tiles_across + 2), most)


class JpegTileReader:
    """Reads regions of a slide's JPEG-tiled levels by decoding the tiles itself (see module doc)."""

    def __init__(self, path: str, levels: dict[int, _Level]):
        self.path = path
        self._levels = levels
        self._fd = os.open(path, os.O_RDONLY)
        self._verified: dict[int, bool] = {}
        self._cache: collections.OrderedDict[tuple[int, int], np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def for_slide(cls, path: str, vendor: str | None,
                  level_dimensions: tuple[tuple[int, int], ...]) -> JpegTileReader | None:
        """A reader when the slide is a TIFF format with at least one qualifying level, else None."""
        if vendor not in VENDORS or not np.little_endian:
            return None
        try:
            levels = _tiff_levels(path, level_dimensions)
        except Exception:  # tifffile cannot parse it: OpenSlide alone reads this slide
            return None
        return cls(path, levels) if levels else None

    @property
    def levels(self) -> tuple[int, ...]:
        """The OpenSlide levels this reader may serve."""
        return tuple(sorted(self._levels))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._cache.clear()

    def read(self, level: int, x: int, y: int, argb: np.ndarray,
             reference: Callable[[int, int, np.ndarray], None]) -> bool:
        """Fill ``argb`` (h×w uint32, C-contiguous) with the region at level coordinates (x, y).

        Returns False, touching nothing the caller relies on, when this region is not for the
        direct path; the caller then reads it through OpenSlide. ``reference(x, y, buffer)``
        reads a region through OpenSlide: the first use of each level compares one tile with it.
        """
        spec = self._levels.get(level)
        h, w = argb.shape
        if spec is None or self._fd < 0 or x < 0 or y < 0 or x + w > spec.width or y + h > spec.height:
            return False
        if self._verified.get(level) is False:
            return False
        tx0, ty0 = x // spec.tile_w, y // spec.tile_h
        tx1, ty1 = (x + w - 1) // spec.tile_w, (y + h - 1) // spec.tile_h
        tiles = [(tx, ty, ty * spec.tiles_across + tx) for ty in range(ty0, ty1 + 1) for tx in range(tx0, tx1 + 1)]
        if min(int(spec.counts[i]) for _, _, i in tiles) <= 0:  # a missing tile: OpenSlide's transparency rules
            return False
        if level not in self._verified and not self._verify(level, spec, tx0, ty0, reference):
            return False
        whole_tile = (w == spec.tile_w and h == spec.tile_h and x % spec.tile_w == 0 and y % spec.tile_h == 0)
        try:
            if whole_tile:
                self._decode(spec, tiles[0][2], argb.view(np.uint8).reshape(h, w, 4))
                return True
            out = argb.view(np.uint8).reshape(h, w, 4)
            for tx, ty, index in tiles:
                tile = self._tile(level, spec, index)
                left, top = tx * spec.tile_w, ty * spec.tile_h
                sx0, sy0 = max(x, left), max(y, top)
                sx1, sy1 = min(x + w, left + spec.tile_w), min(y + h, top + spec.tile_h)
                out[sy0 - y:sy1 - y, sx0 - x:sx1 - x] = tile[sy0 - top:sy1 - top, sx0 - left:sx1 - left]
            return True
        except Exception:  # a damaged tile: OpenSlide reads it again and reports it properly
            return False

    def _decode(self, spec: _Level, index: int, out: np.ndarray | None = None) -> np.ndarray:
        """One tile as tile_h×tile_w×4 B, G, R, 255 (OpenSlide's opaque ARGB bytes)."""
        import simplejpeg

        data = os.pread(self._fd, int(spec.counts[index]), int(spec.offsets[index]))
        if not data.startswith(_SOI):
            raise ValueError(f"tile {index} does not start with a JPEG SOI marker")
        pixels = simplejpeg.decode_jpeg(spec.prefix + data[2:], colorspace="BGRX", fastdct=False,
                                        fastupsample=False, buffer=out, strict=True)
        if pixels.shape != (spec.tile_h, spec.tile_w, 4):
            raise ValueError(f"tile {index} decoded to {pixels.shape}, expected {(spec.tile_h, spec.tile_w, 4)}")
        return pixels

    def _tile(self, level: int, spec: _Level, index: int) -> np.ndarray:
        """A decoded tile through the LRU cache (a patch grid finer than the tiles reuses them)."""
        key = (level, index)
        with self._lock:
            tile = self._cache.get(key)
            if tile is not None:
                self._cache.move_to_end(key)
                return tile
        tile = self._decode(spec, index)
        with self._lock:
            self._cache[key] = tile
            while len(self._cache) > cache_tiles(spec):
                self._cache.popitem(last=False)
        return tile

    def _verify(self, level: int, spec: _Level, tx: int, ty: int,
                reference: Callable[[int, int, np.ndarray], None]) -> bool:
        """Compare one whole tile with OpenSlide's pixels; the level is used only if they are equal.

        A tile that does not decode (damaged) decides nothing: this read goes through OpenSlide
        and the next one checks again.
        """
        width = min(spec.tile_w, spec.width - tx * spec.tile_w)
        height = min(spec.tile_h, spec.height - ty * spec.tile_h)
        try:
            mine = self._decode(spec, ty * spec.tiles_across + tx).view(np.uint32).reshape(spec.tile_h, spec.tile_w)
            theirs = np.empty((height, width), np.uint32)
            reference(tx * spec.tile_w, ty * spec.tile_h, theirs)
        except Exception:
            return False
        same = bool(np.array_equal(mine[:height, :width], theirs))
        self._verified[level] = same
        return same

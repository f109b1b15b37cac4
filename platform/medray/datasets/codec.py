"""Encode/decode one example's bytes (JPEG, PNG, NPY): pure functions used on every path."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from medray.errors import DataError

ENCODINGS = ("jpeg", "png", "npy")


def encode_image(array: np.ndarray, encoding: str = "jpeg", quality: int = 90) -> bytes:
    """HxW or HxWx3 uint8 → JPEG/PNG bytes; any array → NPY bytes."""
    if encoding == "npy":
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
        return buf.getvalue()
    if encoding not in ("jpeg", "png"):
        raise DataError(f"unknown encoding {encoding!r}; choose one of {list(ENCODINGS)}")
    if array.dtype != np.uint8:
        raise DataError(f"{encoding} needs uint8 pixels, got {array.dtype}; use encoding 'npy'")
    buf = io.BytesIO()
    image = Image.fromarray(array)
    if encoding == "jpeg":
        image.save(buf, format="JPEG", quality=quality)
    else:
        image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_jpeg(pixels: np.ndarray, quality: int = 90, order: str = "rgb") -> bytes:
    """Baseline JFIF JPEG (4:2:0 chroma, as Pillow's default) through libjpeg-turbo, without copies.

    ``pixels``: H×W×3 RGB (``order="rgb"``), H×W×4 B, G, R, X (``order="bgrx"``, OpenSlide's own
    layout; the fourth byte is ignored) or H×W grey, uint8. Rows may be strided (a patch cut from
    a wider strip is encoded in place). The bytes equal Pillow's ``save(format="JPEG",
    quality=quality)`` of the same RGB pixels; roughly 30% faster, with no copy of the input.
    """
    import imagecodecs

    if pixels.dtype != np.uint8:
        raise DataError(f"jpeg needs uint8 pixels, got {pixels.dtype}; use encoding 'npy'")
    channels = {"rgb": 3, "bgrx": 4}
    if order not in channels:
        raise DataError(f"unknown pixel order {order!r}; choose 'rgb' or 'bgrx'")
    cs = imagecodecs.JPEG8.CS
    if pixels.ndim == 2:
        return imagecodecs.jpeg8_encode(pixels, level=quality)
    if pixels.ndim != 3 or pixels.shape[2] != channels[order]:
        raise DataError(f"jpeg {order!r} needs H×W×{channels[order]} pixels, got shape {pixels.shape}")
    if order == "bgrx":
        return imagecodecs.jpeg8_encode(pixels, level=quality, colorspace=cs.EXT_BGRX, outcolorspace=cs.YCbCr,
                                        subsampling="420")
    return imagecodecs.jpeg8_encode(pixels, level=quality, subsampling="420")


def decode_image(data: bytes, encoding: str) -> np.ndarray:
    """Bytes → array (uint8 HxW[x3] for JPEG/PNG; the stored array for NPY)."""
    try:
        if encoding == "npy":
            return np.load(io.BytesIO(data), allow_pickle=False)
        if encoding in ("jpeg", "png"):
            with Image.open(io.BytesIO(data)) as image:
                return np.asarray(image.convert("RGB") if image.mode not in ("L", "RGB") else image)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"cannot decode {encoding} example: {err}") from err
    raise DataError(f"unknown encoding {encoding!r}; choose one of {list(ENCODINGS)}")

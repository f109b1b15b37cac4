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

"""JPEG encoding through libjpeg-turbo: the same bytes as Pillow, from strided and B,G,R,X views."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from medray.datasets.codec import decode_image, encode_image, encode_jpeg
from medray.errors import DataError


def _pillow_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, 96)[None, :, None]
    return (rng.random((64, 96, 3)) * 8 + ramp + np.array([20, 0, 40])).astype(np.uint8)


@pytest.mark.parametrize("quality", [75, 90])
def test_same_bytes_as_pillow(rgb, quality):
    assert encode_jpeg(rgb, quality) == _pillow_jpeg(rgb, quality) == encode_image(rgb, "jpeg", quality)
    grey = rgb[..., 0].copy()
    assert encode_jpeg(grey, quality) == _pillow_jpeg(grey, quality)


def test_strided_and_bgrx_views_encode_in_place(rgb):
    strip = np.concatenate([rgb, rgb[:, ::-1]], axis=1)           # two patches side by side
    right = strip[:, 96:]                                          # a strided view, not a copy
    assert not right.flags.c_contiguous
    assert encode_jpeg(right) == _pillow_jpeg(right, 90)
    bgrx = np.dstack([strip[..., ::-1], np.zeros(strip.shape[:2], np.uint8)])  # OpenSlide's layout
    assert encode_jpeg(bgrx[:, 96:], order="bgrx") == _pillow_jpeg(right, 90)
    decoded = decode_image(encode_jpeg(bgrx[:, :96], order="bgrx"), "jpeg")
    assert decoded.shape == rgb.shape and np.abs(decoded.astype(int) - rgb).mean() < 3


def test_rejects_what_it_cannot_encode(rgb):
    with pytest.raises(DataError, match="uint8"):
        encode_jpeg(rgb.astype(np.float32))
    with pytest.raises(DataError, match="H×W×4"):
        encode_jpeg(rgb, order="bgrx")
    with pytest.raises(DataError, match="pixel order"):
        encode_jpeg(rgb, order="argb")

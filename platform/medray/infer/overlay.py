"""Overlay PNG: the slide thumbnail with the probability map painted in, plus a colour bar.

Cells below the threshold (and background) stay transparent; above it the colour deepens from
light to dark red and grows more opaque with the probability. Pure apart from ``write_png``.
"""

from __future__ import annotations

import io

import numpy as np

LIGHT = np.array([255, 170, 150], np.float32)   # colour at the threshold
DEEP = np.array([150, 0, 0], np.float32)        # colour at probability 1
ALPHA = (0.35, 0.85)                            # opacity at the threshold and at 1


def heat_rgba(probs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(RGB float32 ..., alpha float32 ...) of probabilities; alpha 0 below threshold or NaN."""
    probs = np.asarray(probs, np.float32)
    with np.errstate(invalid="ignore"):
        hot = np.isfinite(probs) & (probs >= threshold)
    s = np.zeros(probs.shape, np.float32)
    span = max(1.0 - threshold, 1e-6)
    s[hot] = np.clip((probs[hot] - threshold) / span, 0, 1)
    rgb = LIGHT + (DEEP - LIGHT) * s[..., None]
    alpha = np.where(hot, ALPHA[0] + (ALPHA[1] - ALPHA[0]) * s, 0).astype(np.float32)
    return rgb, alpha


def map_to_image(prob_map: np.ndarray, image_shape: tuple[int, int], image_downsample: float,
                 stride0: float) -> np.ndarray:
    """Nearest-cell resampling of the map onto an image whose pixel spans ``image_downsample`` level-0 px."""
    h, w = image_shape
    rows = np.minimum(((np.arange(h) + 0.5) * image_downsample / stride0).astype(np.int64), prob_map.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * image_downsample / stride0).astype(np.int64), prob_map.shape[1] - 1)
    return prob_map[rows[:, None], cols[None, :]]


def colour_bar(height: int, threshold: float, width: int = 110) -> np.ndarray:
    """A vertical bar from probability 1 (top) to 0 (bottom) on white, with ticks and labels."""
    from PIL import Image, ImageDraw, ImageFont

    bar = np.full((height, width, 3), 255, np.uint8)
    top, bottom, x0, x1 = 20, height - 20, 12, 36
    probs = np.linspace(1, 0, max(bottom - top, 2), dtype=np.float32)
    rgb, alpha = heat_rgba(probs, threshold)
    colours = (rgb * alpha[:, None] + 255 * (1 - alpha[:, None])).astype(np.uint8)
    bar[top:bottom, x0:x1] = colours[: bottom - top, None, :]
    image = Image.fromarray(bar)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=12)
    draw.rectangle([x0 - 1, top - 1, x1, bottom], outline=(0, 0, 0))

    def y_of(p: float) -> int:
        return int(round(top + (1 - p) * (bottom - top - 1)))

    for p in (0.0, 0.25, 0.5, 0.75, 1.0):
        draw.line([x1, y_of(p), x1 + 5, y_of(p)], fill=(0, 0, 0))
        draw.text((x1 + 8, y_of(p) - 7), f"{p:.2f}", fill=(0, 0, 0), font=font)
    yt = y_of(threshold)
    draw.line([x0 - 6, yt, x1 + 5, yt], fill=(0, 0, 255), width=2)
    draw.text((x1 + 8, yt + 4), f"t={threshold:.2f}", fill=(0, 0, 255), font=font)
    return np.asarray(image)


def overlay_image(thumbnail: np.ndarray, thumb_downsample: float, prob_map: np.ndarray, stride0: float,
                  threshold: float, truth_mask: np.ndarray | None = None) -> np.ndarray:
    """RGB: thumbnail with the map painted in (and the truth outlined in green), colour bar on the right.

    ``truth_mask`` (optional) is a bool mask at thumbnail resolution.
    """
    thumb = np.asarray(thumbnail, np.float32)
    probs = map_to_image(prob_map, thumb.shape[:2], thumb_downsample, stride0)
    rgb, alpha = heat_rgba(probs, threshold)
    out = (thumb * (1 - alpha[..., None]) + rgb * alpha[..., None]).astype(np.uint8)
    if truth_mask is not None and truth_mask.any():
        from scipy import ndimage

        edge = truth_mask & ~ndimage.binary_erosion(truth_mask, iterations=max(1, thumb.shape[0] // 400))
        out[edge] = (0, 190, 0)
    bar = colour_bar(out.shape[0], threshold) if out.shape[0] >= 120 else None
    return out if bar is None else np.concatenate([out, bar], axis=1)


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def write_png(image: np.ndarray, uri: str, storage=None) -> str:
    """Atomically write ``image`` as PNG to a path or URI; returns the URI."""
    from medray.storage import atomic_write_bytes

    atomic_write_bytes(uri, png_bytes(image), storage)
    return uri

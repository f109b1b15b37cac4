"""Overlay PNG of one image: ground truth (blue rings, match radius), detections (green = TP,
red = FP, with probability), so a reader sees hits, misses and false alarms at a glance."""

from __future__ import annotations

import numpy as np

TRUTH = (30, 90, 255)
TP = (0, 200, 0)
FP = (255, 40, 40)


def draw_overlay(rgb: np.ndarray, detections, probs, truth, radius: float = 30.0,
                 matched: list[int] | None = None) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    image = Image.fromarray(np.asarray(rgb, np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=12)
    for x, y in np.asarray(truth if truth is not None else [], np.float64).reshape(-1, 2):
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=TRUTH, width=2)
    det = np.asarray(detections, np.float64).reshape(-1, 2)
    for i, ((x, y), p) in enumerate(zip(det, np.asarray(probs, np.float64).ravel())):
        colour = TP if matched is not None and matched[i] >= 0 else FP
        r = radius * 0.6
        draw.ellipse([x - r, y - r, x + r, y + r], outline=colour, width=2)
        draw.text((x + r + 2, y - 6), f"{p:.2f}", fill=colour, font=font)
    draw.rectangle([4, 4, 230, 22], fill=(255, 255, 255))
    draw.text((8, 7), "truth", fill=TRUTH, font=font)
    draw.text((52, 7), "detection TP", fill=TP, font=font)
    draw.text((140, 7), "detection FP", fill=FP, font=font)
    return np.asarray(image)

"""Write a small synthetic pathology patch dataset (tumor vs normal) in the medray format.

Normal patches: pink stroma with a few small, pale nuclei. Tumor patches: many larger, darker
nuclei. The signal is learnable by a tiny CNN in one or two epochs; groups play the role of slides.
"""

from __future__ import annotations

import numpy as np

from medray.datasets import schema as S
from medray.datasets.codec import encode_image
from medray.datasets.shards import finalize_dataset, rows_to_table, write_shard

CLASSES = ["normal", "tumor"]


def draw_patch(rng: np.random.Generator, tumor: bool, size: int = 32) -> np.ndarray:
    """One RGB uint8 patch: stroma background plus nuclei (many/large/dark when ``tumor``)."""
    base = np.array([232, 182, 205], np.float32) + rng.normal(0, 6, 3)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    img += rng.normal(0, 8, (size, size, 3))
    yy, xx = np.mgrid[0:size, 0:size]
    scale = size / 32
    if tumor:
        count, radius, color = rng.integers(7, 12), rng.uniform(2.6, 3.8) * scale, (75, 35, 115)
    else:
        count, radius, color = rng.integers(1, 4), rng.uniform(1.0, 1.8) * scale, (150, 95, 170)
    for _ in range(int(count)):
        cy, cx = rng.uniform(0, size, 2)
        r = radius * rng.uniform(0.8, 1.2)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img[mask] = np.array(color, np.float32) + rng.normal(0, 10, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_patch_dataset(uri: str, num_groups: int = 6, per_class: int = 30, size: int = 32,
                        seed: int = 0, storage=None, tumor_fraction: float = 0.5) -> dict:
    """Write ``num_groups`` slides' worth of patches (one shard per group); returns dataset.json."""
    rng = np.random.default_rng(seed)
    records = []
    for g in range(num_groups):
        group = f"slide-{g:02d}"
        rows = []
        n_tumor = int(round(2 * per_class * tumor_fraction))
        labels = [1] * n_tumor + [0] * (2 * per_class - n_tumor)
        for i, label in enumerate(labels):
            patch = draw_patch(rng, bool(label), size)
            rows.append({S.IMAGE: encode_image(patch, "png"), S.ENCODING: "png", S.LABEL: label,
                         S.LABEL_NAME: CLASSES[label], S.GROUP: group, S.SOURCE: f"synthetic://{group}/{i}"})
        records.append(write_shard(rows_to_table(rows), uri, group, storage))
    return finalize_dataset(uri, records, CLASSES, kind="patches", storage=storage)

"""PNGs people look at after an extraction: a contact sheet of patches per class and slide overviews.

``contact_sheet`` and ``overview_image`` are pure (arrays in, RGB array out); the two ``write_*``
helpers read what they need and publish the PNG atomically.
"""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from medray.config.common import StorageOptions
from medray.storage import atomic_write_bytes

CLASS_COLOURS = [(0, 170, 60), (220, 30, 30), (30, 90, 230), (230, 150, 0), (150, 0, 180), (0, 170, 170)]
LABEL_WIDTH = 110


def colour_of(index: int) -> tuple[int, int, int]:
    return CLASS_COLOURS[index % len(CLASS_COLOURS)]


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, np.uint8)).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def contact_sheet(patches: dict[str, Sequence[np.ndarray]], columns: int = 8, tile: int = 96) -> np.ndarray:
    """One row block per class: its name (and sample count) on the left, then up to ``columns`` per row."""
    blocks = []
    for index, (name, images) in enumerate(patches.items()):
        rows = max(1, -(-len(images) // columns))
        block = Image.new("RGB", (LABEL_WIDTH + columns * (tile + 2), rows * (tile + 2) + 4), (255, 255, 255))
        draw = ImageDraw.Draw(block)
        draw.rectangle((0, 0, 6, block.height), fill=colour_of(index))
        draw.text((12, 8), f"{name}\n{len(images)} shown", fill=(0, 0, 0))
        for k, image in enumerate(images):
            thumb = Image.fromarray(np.asarray(image, np.uint8)).resize((tile, tile), Image.BILINEAR)
            block.paste(thumb, (LABEL_WIDTH + (k % columns) * (tile + 2), 2 + (k // columns) * (tile + 2)))
        blocks.append(np.asarray(block))
    if not blocks:
        return np.full((tile, LABEL_WIDTH + columns * (tile + 2), 3), 255, np.uint8)
    return np.concatenate(blocks, axis=0)


def overview_image(thumbnail: np.ndarray, downsample: float, tissue: np.ndarray | None,
                   polygons: Sequence[Any], xs: np.ndarray, ys: np.ndarray, labels: np.ndarray,
                   extent: int) -> np.ndarray:
    """Thumbnail with tissue tinted blue, polygon outlines in yellow and patch boxes by class colour."""
    base = np.asarray(thumbnail, np.float32).copy()
    if tissue is not None and tissue.size:
        h, w = base.shape[:2]
        rows = np.minimum((np.arange(h) * tissue.shape[0] / h).astype(int), tissue.shape[0] - 1)
        cols = np.minimum((np.arange(w) * tissue.shape[1] / w).astype(int), tissue.shape[1] - 1)
        on = tissue[rows][:, cols]
        base[on] = 0.75 * base[on] + 0.25 * np.array((60, 120, 255), np.float32)
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for polygon in polygons:
        for ring in [polygon.exterior, *polygon.holes]:
            pts = [(float(x) / downsample, float(y) / downsample) for x, y in ring]
            if len(pts) >= 2:
                draw.line(pts + [pts[0]], fill=(255, 200, 0), width=2)
    side = extent / downsample
    for x, y, label in zip(np.asarray(xs), np.asarray(ys), np.asarray(labels)):
        x0, y0 = x / downsample, y / downsample
        if side >= 3:
            draw.rectangle((x0, y0, x0 + side, y0 + side), outline=colour_of(int(label)))
        else:
            draw.point((x0 + side / 2, y0 + side / 2), fill=colour_of(int(label)))
    return np.asarray(image)


def sample_patches(shard_uris: Sequence[str], classes: Sequence[str], per_class: int,
                   storage: StorageOptions | None = None, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Up to ``per_class`` decoded patches per class, read from as few shards as needed."""
    import pyarrow.parquet as pq

    from medray.datasets.codec import decode_image
    from medray.storage import get_filesystem

    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {c: [] for c in classes}
    order = list(shard_uris)
    rng.shuffle(order)
    for uri in order:
        if all(len(v) >= per_class for v in out.values()):
            break
        fs, path = get_filesystem(uri, storage)
        with fs.open_input_file(path) as handle:
            table = pq.read_table(handle, columns=["image", "encoding", "label_name"])
        names = table.column("label_name").to_pylist()
        for row in rng.permutation(len(names)):
            name = names[row]
            if name in out and len(out[name]) < per_class:
                out[name].append(decode_image(table.column("image")[row].as_py(),
                                              table.column("encoding")[row].as_py()))
    return out


def write_png(rgb: np.ndarray, uri: str, storage: StorageOptions | None = None) -> str:
    atomic_write_bytes(uri, png_bytes(rgb), storage)
    return uri

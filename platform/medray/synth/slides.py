"""Synthetic whole slides (pyramidal JPEG TIFF) with Camelyon16/NCRF/QuPath/TUPAC16-style truth.

Each slide is rendered tile by tile from a seeded layout (memory stays bounded at any size) and
published atomically next to its ground truth; ``slides.json`` is written last as the index.
"""

from __future__ import annotations

import functools
import io
import json

import numpy as np
from pydantic import Field

from medray.config.base import MedrayModel
from medray.config.common import StorageOptions
from medray.errors import ConfigError
from medray.storage import atomic_local_path, atomic_write_bytes, atomic_write_text, join_uri
from medray.synth import truth_io
from medray.synth.layout import SlideLayout, make_layout, sample_points, truth_mask
from medray.synth.pyramid import write_pyramid
from medray.synth.render import render_region


class Config(MedrayModel):
    """Synthetic whole-slide images with known tumor regions and mitoses."""

    output: str = Field("medray-data/slides", description="Output folder or s3:// URI")
    num_slides: int = Field(2, ge=1, description="How many slides to generate")
    tumor_slides: int | None = Field(
        None, ge=0, description="How many of them contain tumor (default: half, rounded up); the rest are normal")
    tumors_per_slide: int = Field(2, ge=1, description="Tumor regions per tumor slide")
    exclusion_holes: bool = Field(
        True, description="Give the first tumor region of each tumor slide an exclusion hole (ASAP group _2)")
    width: int = Field(8192, ge=512, description="Level-0 width in pixels")
    height: int = Field(8192, ge=512, description="Level-0 height in pixels")
    levels: int = Field(3, ge=1, le=8, description="Pyramid levels (downsample 4 between levels)")
    tile_size: int = Field(256, ge=64, multiple_of=16, description="TIFF tile edge in pixels")
    mpp: float | None = Field(0.25, gt=0, description="Microns per pixel at level 0; null writes no resolution tags")
    seed: int = Field(0, ge=0, description="Seed: same seed, same pixels and truth")
    mitoses_per_slide: int = Field(40, ge=0, description="Mitotic figures per slide (80% inside tumor when present)")
    mimics_per_slide: int = Field(20, ge=0, description="Dark non-mitotic mimics (hard negatives) per slide")
    jpeg_quality: int = Field(90, ge=10, le=100, description="JPEG quality of the tiles")
    points_per_label: int = Field(200, ge=0, description="Patch centres per label in the NCRF-style CSVs")
    thumbnail_size: int = Field(1024, ge=64, description="Longest side of the PNG thumbnail (tumor outlined)")
    progress: bool = Field(True, description="Show a tqdm progress bar over tiles")
    storage: StorageOptions = Field(default_factory=StorageOptions, description="Object storage access")


def slide_plan(config: Config) -> list[tuple[str, int, bool]]:
    """(slide_id, seed, has_tumor) per slide: tumor slides first, then normal ones."""
    n_tumor = -(-config.num_slides // 2) if config.tumor_slides is None else config.tumor_slides
    if n_tumor > config.num_slides:
        raise ConfigError(f"tumor_slides={n_tumor} exceeds num_slides={config.num_slides}; "
                          f"set tumor_slides <= num_slides")
    plan = []
    for i in range(config.num_slides):
        tumor = i < n_tumor
        index = i + 1 if tumor else i - n_tumor + 1
        plan.append((f"{'tumor' if tumor else 'normal'}_{index:03d}", config.seed * 1009 + i, tumor))
    return plan


def slide_layout(config: Config, seed: int, has_tumor: bool) -> SlideLayout:
    return make_layout(config.width, config.height, seed,
                       tumors=config.tumors_per_slide if has_tumor else 0,
                       holes=config.exclusion_holes, mitoses=config.mitoses_per_slide,
                       mimics=config.mimics_per_slide)


def thumbnail_png(layout: SlideLayout, size: int) -> bytes:
    """A small PNG of the whole slide with the tumor truth outlined in green."""
    from PIL import Image

    ds = max(1, int(np.ceil(max(layout.width, layout.height) / size)))
    w, h = max(1, layout.width // ds), max(1, layout.height // ds)
    img = np.empty((h, w, 3), np.uint8)
    for y in range(0, h, 256):  # tile by tile, so memory stays bounded
        for x in range(0, w, 256):
            th, tw = min(256, h - y), min(256, w - x)
            img[y:y + th, x:x + tw] = render_region(layout, x * ds, y * ds, ds, tw, th)
    tumor = truth_mask(layout, ds, "tumor")[:h, :w]
    inner = tumor.copy()
    for _ in range(max(1, size // 512)):  # 4-neighbour erosion
        inner[1:-1, 1:-1] &= inner[:-2, 1:-1] & inner[2:, 1:-1] & inner[1:-1, :-2] & inner[1:-1, 2:]
    edge = tumor & ~inner
    img[edge] = (0, 200, 0)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def generate_slide(config: Config, slide_id: str, seed: int, has_tumor: bool, index: int) -> dict:
    """Write one slide and its truth files; returns their URIs."""
    layout = slide_layout(config, seed, has_tumor)
    out, opts = config.output, config.storage
    uri = {name: join_uri(out, f"{slide_id}{suffix}") for name, suffix in [
        ("slide", ".tif"), ("xml", ".xml"), ("geojson", ".geojson"), ("mitosis_csv", "_mitoses.csv"),
        ("thumbnail", "_thumbnail.png"), ("truth", "_truth.json")]}
    csvs = {label: join_uri(out, f"{slide_id}_{label}.csv") for label in ("tumor", "normal")}
    points = {label: sample_points(layout, label, config.points_per_label, seed) for label in csvs}
    tumor_group = "Tumor" if index % 2 == 0 else "_0"
    with atomic_local_path(uri["slide"], opts, suffix=".tif") as local:
        write_pyramid(local, functools.partial(render_region, layout), config.width, config.height,
                      config.levels, config.tile_size, 4, config.mpp, config.jpeg_quality,
                      progress=config.progress, desc=slide_id)
    atomic_write_text(uri["xml"], truth_io.asap_xml(layout, tumor_group), opts)
    for label, csv_uri in csvs.items():
        atomic_write_text(csv_uri, truth_io.points_csv(points[label]), opts)
    atomic_write_text(uri["geojson"], truth_io.qupath_geojson(layout), opts)
    atomic_write_text(uri["mitosis_csv"], truth_io.mitosis_csv(layout.mitoses), opts)
    atomic_write_bytes(uri["thumbnail"], thumbnail_png(layout, config.thumbnail_size), opts)
    extra = {"slide_id": slide_id, "levels": config.levels, "tile_size": config.tile_size,
             "tumor_group": tumor_group, "points": points}
    atomic_write_text(uri["truth"], truth_io.truth_json(layout, config.mpp, extra), opts)
    return {"slide_id": slide_id, "has_tumor": has_tumor, **uri, "csv": csvs,
            "dims": [config.width, config.height], "mpp": config.mpp}


def generate(config: Config) -> dict:
    """Generate every slide; ``slides.json`` (the index) is written last."""
    entries = [generate_slide(config, slide_id, seed, tumor, i)
               for i, (slide_id, seed, tumor) in enumerate(slide_plan(config))]
    index_uri = join_uri(config.output, "slides.json")
    summary = {"output": config.output, "index": index_uri, "slides": entries}
    atomic_write_text(index_uri, json.dumps(summary, indent=1), config.storage)
    return summary

"""Synthetic high-power fields for TUPAC16-style mitosis detection.

Layout: ``images/hpf_000.png`` (or .tif), ``mitoses/hpf_000.csv`` with ``row,col`` lines (the
TUPAC16 ground-truth format, empty when a field has no mitosis) and ``truth.json`` (written last:
positions of mitoses and dark non-mitotic mimics per image).
"""

from __future__ import annotations

import io
import json
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from medray.config.base import MedrayModel
from medray.config.common import StorageOptions
from medray.storage import atomic_local_path, atomic_write_bytes, atomic_write_text, join_uri
from medray.synth.layout import SlideLayout, make_field_layout
from medray.synth.render import render_region
from medray.synth.truth_io import mitosis_csv


class Config(MedrayModel):
    """High-power field RGB images with known mitosis and mimic positions."""

    output: str = Field("medray-data/hpf", description="Output folder or s3:// URI")
    num_images: int = Field(8, ge=1, description="How many fields to generate")
    size: int = Field(1024, ge=128, description="Field width and height in pixels")
    mpp: float = Field(0.25, gt=0, description="Microns per pixel (recorded in truth.json)")
    mitoses_min: int = Field(0, ge=0, description="Fewest mitoses in one field")
    mitoses_max: int = Field(6, ge=0, description="Most mitoses in one field")
    mimics_per_image: int = Field(4, ge=0, description="Dark round non-mitotic mimics per field (hard negatives)")
    image_format: Literal["png", "tiff"] = Field("png", description="Image file format")
    seed: int = Field(0, ge=0, description="Seed: same seed, same pixels and truth")
    storage: StorageOptions = Field(default_factory=StorageOptions, description="Object storage access")

    @model_validator(mode="after")
    def _check_range(self) -> "Config":
        if self.mitoses_min > self.mitoses_max:
            raise ValueError(f"mitoses_min={self.mitoses_min} > mitoses_max={self.mitoses_max}; "
                             f"set mitoses_min <= mitoses_max")
        return self


def field_layout(config: Config, index: int) -> SlideLayout:
    """The layout of field ``index``: its mitosis count is drawn from [mitoses_min, mitoses_max]."""
    rng = np.random.default_rng([config.seed, 77, index])
    count = int(rng.integers(config.mitoses_min, config.mitoses_max + 1))
    return make_field_layout(config.size, config.size, config.seed * 7919 + index, count,
                             config.mimics_per_image)


def render_field(layout: SlideLayout) -> np.ndarray:
    """The field as one RGB uint8 array (same renderer and stamps as the whole slides)."""
    return render_region(layout, 0, 0, 1, layout.width, layout.height)


def _write_image(uri: str, image: np.ndarray, fmt: str, config: Config) -> None:
    if fmt == "png":
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG", compress_level=1)
        atomic_write_bytes(uri, buf.getvalue(), config.storage)
    else:
        import tifffile

        with atomic_local_path(uri, config.storage, suffix=".tif") as local:
            per_cm = 1e4 / config.mpp
            tifffile.imwrite(local, image, photometric="rgb", compression="zlib",
                             resolution=(per_cm, per_cm), resolutionunit="CENTIMETER", metadata=None)


def generate(config: Config) -> dict:
    """Write every field, its mitosis CSV, then ``truth.json``; returns the summary."""
    from tqdm import tqdm

    ext = "png" if config.image_format == "png" else "tif"
    images, truth = [], []
    for i in tqdm(range(config.num_images), desc="hpf", unit="image", leave=False):
        name = f"hpf_{i:03d}"
        layout = field_layout(config, i)
        image_uri = join_uri(config.output, "images", f"{name}.{ext}")
        csv_uri = join_uri(config.output, "mitoses", f"{name}.csv")
        _write_image(image_uri, render_field(layout), config.image_format, config)
        atomic_write_text(csv_uri, mitosis_csv(layout.mitoses), config.storage)
        images.append({"image_id": name, "image": image_uri, "mitosis_csv": csv_uri,
                       "num_mitoses": len(layout.mitoses)})
        truth.append({"image_id": name, "image": f"images/{name}.{ext}", "csv": f"mitoses/{name}.csv",
                      "mitoses": layout.mitoses, "mimics": layout.mimics,
                      "tumor": layout.tumors[0].polygon})
    truth_uri = join_uri(config.output, "truth.json")
    atomic_write_text(truth_uri, json.dumps({"size": config.size, "mpp": config.mpp,
                                             "images": truth}, indent=1), config.storage)
    return {"output": config.output, "truth": truth_uri, "images": images}

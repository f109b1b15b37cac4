"""Typed config of patch extraction: which slides, which annotations, how patches are chosen and stored."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from medray.config.base import MedrayModel
from medray.config.common import RayOptions, StorageOptions
from medray.errors import ConfigError
from medray.slides.tissue import TissueConfig

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")


class ExtractConfig(MedrayModel):
    """Extract labelled patches from whole slides into a Parquet dataset (Camelyon16-style)."""

    slides: list[str] | str = Field(
        "medray-data/slides", description="Slide URIs, or one folder / glob URI (e.g. s3://b/slides/*.tif)")
    annotations: dict[str, list[str]] = Field(
        default_factory=dict, description="Explicit slide_id -> annotation URIs (.xml, .geojson, _tumor/_normal.csv)")
    annotations_dir: str | None = Field(
        None, description="Folder with <slide_id>.xml/.geojson/_tumor.csv/_normal.csv (default: beside the slide)")
    mode: Literal["annotations", "polygons", "grid"] = Field(
        "annotations", description="annotations: CSV centres as given; polygons: sample in/out of "
                                   "tumor polygons; grid: full tissue grid labelled by polygons")
    classes: list[str] = Field(["normal", "tumor"], description="Class names; index = label (normal=0, tumor=1)")
    tumor_labels: list[str] = Field(
        ["tumor", "_0", "_1", "metastases"], description="Polygon group names (case-insensitive) that mean tumor")
    patch_size: int = Field(256, ge=8, description="Patch side in pixels at the chosen level")
    level: int = Field(0, ge=0, description="Pyramid level to read (ignored when mpp is set)")
    mpp: float | None = Field(None, gt=0, description="Target µm/px; picks the closest level within tolerance")
    mpp_tolerance: float = Field(0.1, ge=0, description="Relative tolerance for the mpp match (0.1 = 10%)")
    mpp_override: float | None = Field(None, gt=0, description="Level-0 µm/px for slides that carry none")
    stride: int | None = Field(None, ge=1, description="Grid stride in pixels at the level (default: patch_size)")
    max_per_label: int | None = Field(
        1000, ge=1, description="Most patches per slide per label (polygons: the N sampled); None = all")
    tissue: TissueConfig = Field(
        default_factory=TissueConfig,
        description="Tissue mask settings; min_tissue_fraction = least tissue in a grid/normal patch")
    encoding: Literal["jpeg", "png"] = Field("jpeg", description="Patch encoding in the image column")
    quality: int = Field(90, ge=1, le=100, description="JPEG quality")
    rows_per_shard: int = Field(512, ge=1, description="Patches per work unit = per Parquet shard")
    output: str = Field("medray-data/patches", description="Dataset folder or s3:// prefix")
    workers: int | None = Field(None, ge=1, description="Parallel readers (default: the cluster's CPUs)")
    seed: int = Field(0, description="Seed of every random choice (sampling, caps)")
    overviews: bool = Field(True, description="Write overviews/<slide_id>.png and contact_sheet.png")
    storage: StorageOptions = Field(default_factory=StorageOptions, description="Object storage access")
    ray: RayOptions = Field(default_factory=RayOptions, description="Ray cluster to run on")

    @model_validator(mode="after")
    def _check(self) -> "ExtractConfig":
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"classes must name >= 2 distinct classes, got {self.classes}")
        return self

    @property
    def normal_class(self) -> str:
        return self.classes[0]

    @property
    def tumor_class(self) -> str:
        return self.classes[1]

    def extraction_hash(self) -> str:
        """Fingerprint of what decides patch content (not where/how fast it runs): resume key."""
        from medray.config.base import config_hash

        keep = self.model_copy(update={"workers": None, "overviews": True, "output": "", "rows_per_shard": 1,
                                       "storage": StorageOptions(), "ray": RayOptions()})
        return config_hash(keep)

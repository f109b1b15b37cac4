"""Typed config of manifest ingest: where the examples are listed, how files load, how rows are stored."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from medray.config.base import MedrayModel
from medray.config.common import RayOptions, StorageOptions
from medray.datasets.loaders import LoaderConfig
from medray.errors import ConfigError

GROUP_KEYS = ["group", "patient", "lesion_id"]


class BuilderOptions(MedrayModel):
    """Build the manifest from a known folder layout instead of reading a manifest file."""

    kind: Literal["class_folders", "mosmed", "ham10000"] = Field(
        "class_folders", description="class_folders: root/<class>/<file>; mosmed: root/studies/CT-k/*.nii.gz; "
                                     "ham10000: metadata_csv + images_dir")
    root: str | None = Field(None, description="Folder (or s3:// prefix) for class_folders and mosmed")
    metadata_csv: str | None = Field(None, description="HAM10000_metadata.csv URI (ham10000)")
    images_dir: str | None = Field(None, description="Folder holding <image_id>.jpg anywhere below (ham10000)")

    @model_validator(mode="after")
    def _needs(self) -> "BuilderOptions":
        if self.kind in ("class_folders", "mosmed") and not self.root:
            raise ConfigError(f"builder.kind={self.kind!r} needs builder.root (the data folder)")
        if self.kind == "ham10000" and not (self.metadata_csv and self.images_dir):
            raise ConfigError("builder.kind='ham10000' needs builder.metadata_csv and builder.images_dir")
        return self


class IngestConfig(MedrayModel):
    """Turn a manifest of image files (PNG/JPEG, DICOM, NIfTI) into a Parquet dataset in object storage."""

    manifest: str | None = Field(
        None, description="JSON-lines or CSV manifest URI (source-ref, class[, group...]); or use builder")
    builder: BuilderOptions | None = Field(None, description="Build the manifest from a folder layout instead")
    class_map: dict[str, str] | None = Field(
        None, description="Manifest class -> dataset class; classes not listed are dropped (and counted). "
                          "mosmed default: CT-0 normal, CT-2/CT-3 abnormal")
    classes: list[str] | None = Field(
        None, description="Dataset classes; order = label index (default: sorted classes found)")
    group_keys: list[str] = Field(
        GROUP_KEYS, description="Manifest keys tried in order for the group (patient/lesion); else the file")
    loader: LoaderConfig = Field(default_factory=LoaderConfig, description="How each file becomes an array")
    encoding: Literal["auto", "png", "jpeg", "npy"] = Field(
        "auto", description="Stored example: png/jpeg = 8-bit HxW[x3] (2D only); npy = float32 channel-first "
                            "in [0, 1]; auto = png for 2D, npy for ct3d")
    quality: int = Field(92, ge=1, le=100, description="JPEG quality (encoding=jpeg)")
    shuffle_seed: int | None = Field(0, description="Shuffle entries with this seed before sharding (None: keep order)")
    rows_per_shard: int = Field(256, ge=1, description="Entries per work unit = per Parquet shard")
    output: str = Field("medray-data/datasets/ct2d", description="Dataset folder or s3:// prefix")
    workers: int | None = Field(None, ge=1, description="Parallel loaders (default: the cluster's CPUs)")
    storage: StorageOptions = Field(default_factory=StorageOptions, description="Object storage access")
    ray: RayOptions = Field(default_factory=RayOptions, description="Ray cluster to run on")

    @model_validator(mode="after")
    def _check(self) -> "IngestConfig":
        if (self.manifest is None) == (self.builder is None):
            raise ConfigError("give exactly one of manifest (a .jsonl/.csv URI) or builder "
                              "(kind class_folders/mosmed/ham10000)")
        if self.classes is not None and (len(self.classes) < 2 or len(set(self.classes)) != len(self.classes)):
            raise ConfigError(f"classes must name >= 2 distinct classes, got {self.classes}")
        if self.loader.kind == "ct3d" and self.encoding in ("png", "jpeg"):
            raise ConfigError(f"encoding={self.encoding!r} cannot store 3D volumes (loader.kind='ct3d'); "
                              "use encoding=npy or auto")
        if self.loader.kind == "ct3d" and self.loader.target_shape is None:
            raise ConfigError("loader.kind='ct3d' needs loader.target_shape (D, H, W) so that every "
                              "volume in the dataset has the same shape")
        if self.loader.kind != "ct3d" and self.loader.image_size is None:
            raise ConfigError("2D ingest needs loader.image_size so that every example has the same size")
        return self

    def resolved_encoding(self) -> str:
        """The stored encoding: ``auto`` becomes npy for volumes, png for 2D images."""
        if self.encoding != "auto":
            return self.encoding
        return "npy" if self.loader.kind == "ct3d" else "png"

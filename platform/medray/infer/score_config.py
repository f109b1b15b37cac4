"""Typed config of slide scoring: which slides, which model, at what resolution, how fast, where to."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from medray.config.base import MedrayModel
from medray.config.common import MlflowOptions, RayOptions, StorageOptions
from medray.slides.tissue import TissueConfig


class ScoreConfig(MedrayModel):
    """Score whole slides with a patch classifier into probability heatmaps and per-slide reports."""

    slides: list[str] | str = Field(
        "medray-data/slides", description="Slide URIs, or one folder / glob URI (e.g. s3://b/slides/*.tif)")
    model: str = Field("medray-data/model", description="Model: bundle folder/URI, models:/name/version or runs:/id/name")
    output: str = Field("medray-data/scores", description="Output folder or s3:// prefix (one sub-folder per slide)")
    annotations: dict[str, str] = Field(
        default_factory=dict, description="Explicit slide_id -> ground-truth polygons (.xml ASAP or .geojson)")
    annotations_dir: str | None = Field(
        None, description="Folder with <slide_id>.xml/.geojson truth (default: beside the slide)")
    evaluate: bool = Field(True, description="Compare with ground-truth polygons when found (AUC, Dice)")
    tumor_labels: list[str] = Field(
        ["tumor", "_0", "_1", "metastases"], description="Polygon labels (case-insensitive) that mean tumor")
    positive_class: str | None = Field(
        None, description="Class whose probability is mapped (default: 'tumor' if the model has it, else the last)")
    level: int | None = Field(None, ge=0, description="Pyramid level to read (default: from the model's preprocessing.info)")
    mpp: float | None = Field(None, gt=0, description="Target µm/px (default: the model's preprocessing.info mpp)")
    mpp_tolerance: float = Field(0.1, ge=0, description="Relative tolerance for the mpp match (0.1 = 10%)")
    mpp_override: float | None = Field(None, gt=0, description="Level-0 µm/px for slides that carry none")
    patch_size: int | None = Field(
        None, ge=8, description="Patch side in pixels at the level (default: info patch_size, else the model input size)")
    stride: int | None = Field(None, ge=1, description="Grid stride in pixels at the level (default: patch_size)")
    tissue: TissueConfig = Field(default_factory=TissueConfig, description="Tissue mask; cells below min_tissue_fraction are background")
    threshold: float | None = Field(
        None, ge=0, le=1, description="Probability threshold for tumor area, regions and Dice (default: the model's, else 0.5)")
    top_k: int = Field(10, ge=1, description="Slide score: mean of the top-k cell probabilities (also reports max)")
    top_regions: int = Field(5, ge=0, description="Connected regions above threshold listed in the report")
    batch_size: int = Field(64, ge=1, description="Patches per model forward pass")
    unit_patches: int = Field(256, ge=1, description="Patches per read work unit (one Ray Data task)")
    buffer_mb: int = Field(512, ge=64, description="Object-store memory (MiB) the job's read-ahead may hold: "
                           "reads faster than the model wait instead of piling patches up")
    readers: int | None = Field(None, ge=1, description="Parallel patch-reading tasks (default: the cluster's CPUs)")
    predictors: int = Field(1, ge=1, description="Model actors in the pool")
    reader_cpus: float = Field(1.0, gt=0, description="CPUs reserved per planning/reading task (fractional "
                               "values let scoring share a cluster with Serve replicas)")
    predictor_cpus: float = Field(1.0, gt=0, description="CPUs reserved per model actor")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per model actor (0: CPU inference)")
    overlay_size: int = Field(1024, ge=64, description="Longest side of the overlay PNG's thumbnail")
    write_tiff: bool = Field(True, description="Write the pyramidal heatmap TIFF")
    log_mlflow: bool = Field(True, description="Log one MLflow run per slide linking slide, model version and outputs")
    mlflow: MlflowOptions = Field(default_factory=MlflowOptions, description="MLflow tracking store")
    progress: bool = Field(True, description="Show a tqdm progress bar over patches")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Model device in the actors (auto: cuda when num_gpus > 0)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="GPU inference precision (auto: bf16 autocast on a GPU; the CPU always runs fp32)")
    storage: StorageOptions = Field(default_factory=StorageOptions, description="Object storage access")
    ray: RayOptions = Field(default_factory=RayOptions, description="Ray cluster to run on")

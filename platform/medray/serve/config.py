"""Typed arguments of the inference app (``args:`` of a ``serve_configs/*.yaml`` application).

``AppArgs`` has one optional section per endpoint (absent → endpoint not deployed) plus what all
endpoints share. ``check_serve_config`` validates a whole Serve config file: Ray's schema, then
each medray application's ``args`` with messages naming the field and the closest valid name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from medray.config.base import MedrayModel, validate_config
from medray.config.common import StorageOptions
from medray.errors import ConfigError
from medray.mitosis.config import ProposalConfig

MiB = 2**20


class ClassifierArgs(MedrayModel):
    """One image-classification endpoint: which model answers and how requests are batched."""

    model_uri: str = Field(..., description="Bundle folder (local or s3://), models:/name/version|@alias, or runs:/id/name")
    device: str = Field("cpu", pattern=r"^(cpu|auto|cuda(:\d+)?)$", description="cpu, cuda, cuda:N or auto (cuda if present)")
    max_batch_size: int = Field(16, ge=1, le=1024, description="Largest batch one forward pass takes (@serve.batch)")
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=5, description="Longest wait for a batch to fill in the ingress (s); "
                                        "the replica adds none: what arrives during a forward pass joins the next")
    max_ongoing_requests: int = Field(64, ge=1, description="Calls a replica holds at once (a batch from the ingress "
                                      "is one call; single calls from other handles batch up to this), so >= max_batch_size")
    max_batches_in_flight: int = Field(2, ge=1, description="Full batches one ingress replica keeps out to this "
                                       "endpoint's replicas at once (a partial batch goes only when none is out). "
                                       "Serve's autoscaler counts these batches as the model's ongoing requests: "
                                       "to reach max_replicas, set >= max_replicas x target_ongoing_requests")
    max_upload_bytes: int = Field(32 * MiB, ge=1024, description="Largest accepted upload (413 above it)")
    max_batch_upload_bytes: int = Field(64 * MiB, ge=1024, description="Most upload bytes in one batch the ingress "
                                        "sends (a batch is one Ray object; a larger single upload goes alone)")

    @model_validator(mode="after")
    def _batch_fits(self) -> "ClassifierArgs":
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= max_batch_size "
                             f"({self.max_batch_size}): Serve never holds more requests than that, so batches "
                             "could not fill")
        return self


class HeatmapArgs(MedrayModel):
    """Slide heatmaps: background scoring jobs (``score_slides``) and synchronous region grids."""

    model_uri: str = Field(..., description="Patch classifier: bundle folder (local or s3://), models:/... or runs:/...")
    output_root: str = Field("medray-data/serve/heatmaps", description="Folder or s3:// prefix; each job writes <output_root>/<job_id>/")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Model device of the scoring actors and the region scorer")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per scoring model actor (0: CPU inference)")
    predictor_cpus: float = Field(1.0, gt=0, description="CPUs reserved per scoring model actor")
    reader_cpus: float = Field(0.25, gt=0, description="CPUs reserved per slide-reading task of a job (small, "
                               "so jobs fit beside the Serve replicas)")
    batch_size: int = Field(64, ge=1, description="Patches per model forward pass")
    unit_patches: int = Field(256, ge=1, description="Patches per read work unit of a job")
    overlay_size: int = Field(1024, ge=64, description="Longest side of a job's overlay PNG")
    write_tiff: bool = Field(True, description="Also write the pyramidal heatmap TIFF of each job")
    log_mlflow: bool = Field(False, description="Log one MLflow run per job (needs mlflow_tracking_uri)")
    max_concurrent_jobs: int = Field(1, ge=1, description="Jobs scored at once; later ones wait as 'queued'")
    persistent_model: bool = Field(True, description="Keep the jobs' model actor between jobs: no model start-up "
                                   "per job (~5 s CPU, ~20 s GPU); it holds predictor_cpus/num_gpus while the "
                                   "replica lives. false: each job starts and ends its own")
    max_jobs_kept: int = Field(1000, ge=1, description="Finished jobs remembered in memory (oldest forgotten "
                               "first; forgotten ones still answer from their stored job.json)")
    record_interval_s: float = Field(2.0, ge=0, description="Least time between progress writes of a job's "
                                     "<output_root>/<job_id>/job.json (state changes are always written)")
    max_region_side: int = Field(8192, ge=64, description="Largest w or h of POST /slides/heatmap/region, level-0 px (413 above)")
    max_region_cells: int = Field(16384, ge=1, description="Most grid cells one region request may score (413 above)")
    max_ongoing_requests: int = Field(32, ge=1, description="Requests the job-manager replica holds at once")


class MitosisArgs(MedrayModel):
    """Mitosis detection in one high-power field: proposals → patch classifier → clustering → threshold."""

    model_uri: str = Field(..., description="Mitosis patch classifier (classes normal/mitosis): bundle, models:/ or runs:/")
    device: str = Field("cpu", pattern=r"^(cpu|auto|cuda(:\d+)?)$", description="cpu, cuda, cuda:N or auto (cuda if present)")
    threshold: float | None = Field(None, gt=0, lt=1, description="Detection threshold (default: the bundle's tuned one, else 0.5)")
    patch_size: int = Field(64, ge=16, description="Side of the patch classified around each candidate (pixels)")
    batch_size: int = Field(128, ge=1, description="Patches per forward pass")
    proposals: ProposalConfig = Field(default_factory=ProposalConfig, description="Stage 1: nuclei candidates")
    cluster_distance: float = Field(32.0, ge=0, description="Detections closer than this merge (pixels); 0: off")
    max_image_pixels: int = Field(4096 * 4096, ge=1024, description="Largest decoded field, width x height (413 above)")
    max_upload_bytes: int = Field(32 * MiB, ge=1024, description="Largest accepted upload (413 above it)")
    max_ongoing_requests: int = Field(8, ge=1, description="Requests a replica holds at once")


class AppArgs(MedrayModel):
    """Arguments of ``medray.serve.app:build_app``; each endpoint section is optional."""

    ct: ClassifierArgs | None = Field(None, description="POST /ct/classify: CT slice (PNG/JPEG/DICOM) or volume (NIfTI)")
    skin: ClassifierArgs | None = Field(None, description="POST /skin/classify: dermoscopy image (PNG/JPEG)")
    slides: HeatmapArgs | None = Field(None, description="POST /slides/heatmap (jobs) and /slides/heatmap/region (sync grid)")
    mitosis: MitosisArgs | None = Field(None, description="POST /mitosis/detect: mitoses in one HPF image (PNG/JPEG/TIFF)")
    allowed_slide_roots: list[str] = Field(
        default_factory=list, description="Folders / s3:// prefixes slide URIs may point into (403 outside)")
    max_body_bytes: int = Field(1 * MiB, ge=1024, description="Upload limit for routes without their own")
    ingress_max_ongoing_requests: int = Field(256, ge=1, description="Requests the HTTP ingress replica holds at once")
    storage: StorageOptions = Field(default_factory=StorageOptions, description="Object storage access for model and slide URIs")
    mlflow_tracking_uri: str | None = Field(None, description="Tracking store for models:/ and runs:/ URIs (else $MLFLOW_TRACKING_URI)")

    @model_validator(mode="after")
    def _ingress_holds_a_batch(self) -> "AppArgs":
        for name in ("ct", "skin"):
            section = getattr(self, name)
            if section is not None and self.ingress_max_ongoing_requests < section.max_batch_size:
                raise ValueError(f"ingress_max_ongoing_requests ({self.ingress_max_ongoing_requests}) must be >= "
                                 f"{name}.max_batch_size ({section.max_batch_size}): the ingress gathers the "
                                 "batches, and it never holds more requests than that")
        return self

    @field_validator("allowed_slide_roots")
    @classmethod
    def _roots_non_empty(cls, value: list[str]) -> list[str]:
        if any(not str(root).strip() for root in value):
            raise ValueError("allowed_slide_roots entries must be non-empty paths or s3:// prefixes")
        return value


def load_serve_config(path: str | Path) -> dict[str, Any]:
    """Read a Serve config YAML into a dict (ConfigError if missing or not a mapping)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"serve config {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"serve config {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"serve config {str(path)!r} must hold a mapping")
    return data


def check_serve_config(path: str | Path) -> dict[str, AppArgs]:
    """Validate a Serve config file: Ray's ``ServeDeploySchema``, then each medray app's ``args``."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    data = load_serve_config(path)
    try:
        ServeDeploySchema.model_validate(data)
    except ValidationError as err:
        lines = [f"  - {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()]
        raise ConfigError(f"serve config {str(path)!r} is not a valid Ray Serve config:\n" + "\n".join(lines)) from None
    out: dict[str, AppArgs] = {}
    for app in data.get("applications", []):
        if str(app.get("import_path", "")).startswith("medray.serve.app:"):
            name = app.get("name", "default")
            out[name] = validate_config(AppArgs, app.get("args") or {}, f"{path}: application {name!r} args")
    return out

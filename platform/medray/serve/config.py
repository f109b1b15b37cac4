"""Typed arguments of the inference app (``args:`` of a ``serve_configs/*.yaml`` application).

``AppArgs`` has one optional section per endpoint (absent → endpoint not deployed) plus what all
endpoints share. ``check_serve_config`` validates a whole Serve config file: Ray's schema, then
each medray application's ``args`` with messages naming the field and the closest valid name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from medray.config.base import MedrayModel, validate_config
from medray.config.common import StorageOptions
from medray.errors import ConfigError

MiB = 2**20


class ClassifierArgs(MedrayModel):
    """One image-classification endpoint: which model answers and how requests are batched."""

    model_uri: str = Field(..., description="Bundle folder (local or s3://), models:/name/version|@alias, or runs:/id/name")
    device: str = Field("cpu", pattern=r"^(cpu|auto|cuda(:\d+)?)$", description="cpu, cuda, cuda:N or auto (cuda if present)")
    max_batch_size: int = Field(16, ge=1, le=1024, description="Largest batch one forward pass takes (@serve.batch)")
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=5, description="Longest wait for a batch to fill (s)")
    max_ongoing_requests: int = Field(64, ge=1, description="Requests a replica holds at once; caps the batch size, so >= max_batch_size")
    max_upload_bytes: int = Field(32 * MiB, ge=1024, description="Largest accepted upload (413 above it)")

    @model_validator(mode="after")
    def _batch_fits(self) -> "ClassifierArgs":
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= max_batch_size "
                             f"({self.max_batch_size}): Serve never holds more requests than that, so batches "
                             "could not fill")
        return self


class AppArgs(MedrayModel):
    """Arguments of ``medray.serve.app:build_app``; each endpoint section is optional."""

    ct: ClassifierArgs | None = Field(None, description="POST /ct/classify: CT slice (PNG/JPEG/DICOM) or volume (NIfTI)")
    skin: ClassifierArgs | None = Field(None, description="POST /skin/classify: dermoscopy image (PNG/JPEG)")
    allowed_slide_roots: list[str] = Field(
        default_factory=list, description="Folders / s3:// prefixes slide URIs may point into (403 outside)")
    max_body_bytes: int = Field(1 * MiB, ge=1024, description="Upload limit for routes without their own")
    ingress_max_ongoing_requests: int = Field(256, ge=1, description="Requests the HTTP ingress replica holds at once")
    storage: StorageOptions = Field(default_factory=StorageOptions, description="Object storage access for model and slide URIs")
    mlflow_tracking_uri: str | None = Field(None, description="Tracking store for models:/ and runs:/ URIs (else $MLFLOW_TRACKING_URI)")

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

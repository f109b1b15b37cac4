"""Config sections shared by several jobs: object storage, Ray, MLflow."""

from __future__ import annotations

import os

from pydantic import Field, SecretStr

from medray.config.base import MedrayModel


class StorageOptions(MedrayModel):
    """How to reach object storage; unset fields fall back to the standard AWS_* variables."""

    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint, e.g. http://127.0.0.1:9000 (AWS_ENDPOINT_URL)")
    region: str | None = Field(None, description="S3 region (AWS_REGION / AWS_DEFAULT_REGION)")
    access_key_id: SecretStr | None = Field(None, description="AWS_ACCESS_KEY_ID")
    secret_access_key: SecretStr | None = Field(None, description="AWS_SECRET_ACCESS_KEY")
    session_token: SecretStr | None = Field(None, description="AWS_SESSION_TOKEN")
    anonymous: bool = Field(False, description="Unsigned requests (public buckets)")

    def resolved(self) -> dict[str, str | None]:
        """The effective S3 settings: config values first, then the AWS_* environment."""
        env = os.environ

        def secret(value: SecretStr | None, var: str) -> str | None:
            return value.get_secret_value() if value is not None else env.get(var)

        return {
            "endpoint_url": self.endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"),
            "region": self.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
            "access_key_id": secret(self.access_key_id, "AWS_ACCESS_KEY_ID"),
            "secret_access_key": secret(self.secret_access_key, "AWS_SECRET_ACCESS_KEY"),
            "session_token": secret(self.session_token, "AWS_SESSION_TOKEN"),
        }


class RayOptions(MedrayModel):
    """Where the job's Ray runs: None starts a local in-process cluster."""

    address: str | None = Field(None, description="Ray address ('auto', ray://host:10001) or None for local")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local cluster (default: all)")
    num_gpus: int | None = Field(None, ge=0, description="GPUs for a local cluster (default: detected)")


class MlflowOptions(MedrayModel):
    """Tracking store; None means MLFLOW_TRACKING_URI, else a local sqlite store under ./medray-data."""

    tracking_uri: str | None = Field(None, description="e.g. sqlite:///mlruns.db or http://mlflow:5000")
    experiment: str = Field("medray", description="MLflow experiment name")
    artifact_location: str | None = Field(
        None, description="Artifact root for a new experiment (local folder or s3:// URI)")

    def resolved_tracking_uri(self) -> str:
        """Config value, then $MLFLOW_TRACKING_URI, then a sqlite file in ./medray-data."""
        if self.tracking_uri:
            return self.tracking_uri
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        default_dir = os.path.abspath(os.environ.get("MEDRAY_HOME", "medray-data"))
        os.makedirs(default_dir, exist_ok=True)
        return f"sqlite:///{default_dir}/mlflow.db"

"""Shared fixtures: one local Ray cluster, one loopback S3 server (moto), a local MLflow store.

Everything a test touches is real and stays on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import sys
import uuid
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Environment before anything imports Ray/MLflow/boto, so Ray workers inherit it.
_S3_PORT = _free_port()
os.environ.update({
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_ACCESS_KEY_ID": "medray-test",
    "AWS_SECRET_ACCESS_KEY": "medray-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "TQDM_MININTERVAL": "5",
})
os.environ.pop("AWS_PROFILE", None)
S3_ENDPOINT = f"http://127.0.0.1:{_S3_PORT}"

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
SHARED_SLIDES = SHARED / "data" / "slides"
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """A real S3-protocol server (moto server mode) on 127.0.0.1 for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_S3_PORT, verbose=False)
    server.start()
    yield S3_ENDPOINT
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    """A fresh, empty bucket; returns its s3:// URI."""
    import boto3

    name = f"medray-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture
def s3_options(s3_endpoint):
    from medray.config import StorageOptions

    return StorageOptions(endpoint_url=s3_endpoint)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster (2 CPUs) shared by every test that needs Ray."""
    import ray

    if not ray.is_initialized():
        from medray.serve.ingress_mode import set_default_ingress

        set_default_ingress(drain_s=1)  # Serve as medray runs it (HAProxy); a short drain keeps redeploys fast
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                     p for p in (str(REPO_ROOT / "platform"), os.environ.get("PYTHONPATH")) if p)}},
                 ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.fixture
def mlflow_uri(tmp_path) -> str:
    """A fresh local MLflow store (sqlite + file artifacts)."""
    return f"sqlite:///{tmp_path}/mlflow.db"


@pytest.fixture(scope="session")
def shared_slides() -> Path:
    if not SHARED_SLIDES.is_dir():
        pytest.skip(f"real Aperio slides not found at {SHARED_SLIDES} (../shared is a dev/CI checkout only)")
    return SHARED_SLIDES

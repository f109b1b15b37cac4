"""The end-to-end demo behind ``make demo``: each step calls the same library code the jobs use."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

from pydantic import Field

from medray.config.base import MedrayModel, write_resolved_config
from medray.config.common import MlflowOptions


class DemoConfig(MedrayModel):
    """Settings of the demo run; the defaults finish in minutes on a 2-core laptop."""

    workdir: str = Field("medray-data/demo", description="Folder (or s3:// URI) for every output")
    seed: int = Field(0, description="Seed for all synthetic data and training")
    num_slides: int = Field(4, ge=2, description="Synthetic slides to generate")
    slide_size: int = Field(6144, ge=2048, description="Side of each synthetic slide in pixels")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for the local Ray cluster (default: all)")
    mlflow: MlflowOptions = Field(default_factory=MlflowOptions, description="Tracking store")


def _step(name: str, fn: Callable[[], dict], outputs: dict) -> None:
    print(f"\n=== {name} ===", flush=True)
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    outputs[name] = {**result, "seconds": round(seconds, 1)}
    print(json.dumps(outputs[name], indent=2, default=str), flush=True)


def run_demo(config: DemoConfig) -> dict:
    """Run every available step; returns (and prints) where each output is."""
    import ray

    workdir = os.path.abspath(config.workdir)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    tracking_uri = config.mlflow.tracking_uri or f"sqlite:///{workdir}/mlflow.db"
    mlflow_opts = config.mlflow.model_copy(update={"tracking_uri": tracking_uri,
                                                   "artifact_location": config.mlflow.artifact_location
                                                   or f"{workdir}/mlartifacts"})
    write_resolved_config(config, workdir, name="demo_config.yaml")
    outputs: dict = {}
    if not ray.is_initialized():
        ray.init(num_cpus=config.num_cpus, include_dashboard=False, log_to_driver=False)

    _step("platform check", lambda: _check_platform(workdir, mlflow_opts), outputs)
    _step("synthetic slides", lambda: _synth_slides(config, workdir), outputs)

    summary_path = Path(workdir) / "demo_outputs.json"
    summary_path.write_text(json.dumps(outputs, indent=2, default=str))
    print(f"\nDemo finished. Every output is listed in {summary_path}")
    print(f"MLflow UI: mlflow ui --backend-store-uri {tracking_uri}")
    return outputs


def _check_platform(workdir: str, mlflow_opts: MlflowOptions) -> dict:
    """Ray runs a task, storage writes atomically and reads back, MLflow records a run."""
    import mlflow
    import ray

    from medray import storage

    @ray.remote
    def square(x: int) -> int:
        return x * x

    assert ray.get([square.remote(i) for i in range(4)]) == [0, 1, 4, 9]
    probe = storage.join_uri(workdir, "storage-check.txt")
    storage.atomic_write_text(probe, "medray")
    assert storage.read_text(probe) == "medray"
    mlflow.set_tracking_uri(mlflow_opts.resolved_tracking_uri())
    if mlflow.get_experiment_by_name(mlflow_opts.experiment) is None:
        mlflow.create_experiment(mlflow_opts.experiment, artifact_location=mlflow_opts.artifact_location)
    mlflow.set_experiment(mlflow_opts.experiment)
    with mlflow.start_run(run_name="demo-platform-check") as run:
        mlflow.log_param("check", "ok")
    return {"ray": ray.cluster_resources(), "storage_probe": probe,
            "mlflow_tracking_uri": mlflow_opts.resolved_tracking_uri(), "mlflow_run": run.info.run_id}


def _synth_slides(config: DemoConfig, workdir: str) -> dict:
    from medray.synth import slides

    synth = slides.Config(output=f"{workdir}/slides", num_slides=config.num_slides,
                          width=config.slide_size, height=config.slide_size, seed=config.seed)
    return slides.generate(synth)

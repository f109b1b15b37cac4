"""The end-to-end demo behind ``make demo``: each step loads the same job configs the
``jobs/`` entrypoints use (``jobs/configs/*.yaml``) with small-budget overrides, and calls the same
library functions, on a local in-process Ray cluster, a local folder and a local MLflow store.

Pathology: synthetic slides → patch extraction → training → slide heatmap.
Radiology/dermoscopy: synthetic CT and skin data → manifest ingest → training.
Serving: all trained models behind Ray Serve on 127.0.0.1, one request per endpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable

from pydantic import Field

from medray.config.base import MedrayModel, load_config, write_resolved_config
from medray.config.common import MlflowOptions

JOB_CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"
STEPS = ("platform", "slides", "extract", "train", "score", "mitosis", "ct", "skin", "serve")


class DemoConfig(MedrayModel):
    """Settings of the demo run; the defaults finish in minutes on a 2-core laptop."""

    workdir: str = Field("medray-data/demo", description="Folder for every output")
    seed: int = Field(0, description="Seed for all synthetic data and training")
    num_slides: int = Field(4, ge=2, description="Synthetic slides to generate (half with tumor)")
    slide_size: int = Field(6144, ge=2048, description="Side of each synthetic slide in pixels")
    patch_size: int = Field(64, ge=32, description="Patch side at level 0 for extraction, training, scoring")
    model: str = Field("smallcnn", description="Network for every demo model (e.g. densenet121, resnet18)")
    epochs: int = Field(3, ge=1, description="Training epochs for each model")
    steps: list[str] = Field(list(STEPS), description=f"Steps to run, in order; any of {list(STEPS)}")
    serve_port: int | None = Field(None, ge=1024, le=65535, description="Serve HTTP port (default: a free one)")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for the local Ray cluster (default: all)")
    mlflow: MlflowOptions = Field(default_factory=MlflowOptions, description="Tracking store (default: workdir sqlite)")


def _job_config(model: type, name: str, overrides: list[str]):
    """The job's own YAML config with the demo's overrides: one schema for jobs and demo."""
    return load_config(model, JOB_CONFIGS / name, overrides)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Demo:
    """Runs the steps in order; each records what it wrote in ``self.outputs``."""

    def __init__(self, config: DemoConfig):
        self.config = config
        self.workdir = os.path.abspath(config.workdir)
        self.tracking_uri = config.mlflow.resolved_tracking_uri() if config.mlflow.tracking_uri \
            else f"sqlite:///{self.workdir}/mlflow.db"
        self.outputs: dict[str, Any] = {}

    def path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)

    def mlflow_overrides(self, experiment: str) -> list[str]:
        return [f"mlflow.tracking_uri={self.tracking_uri}", f"mlflow.experiment={experiment}",
                f"mlflow.artifact_location={self.path('mlartifacts', experiment)}"]

    def train_overrides(self, name: str, in_channels: int, num_classes: int) -> list[str]:
        return [f"dataset={self.path('datasets', name)}", f"output={self.path('train', name)}",
                f"model.name={self.config.model}", f"model.in_channels={in_channels}",
                f"model.num_classes={num_classes}", f"epochs={self.config.epochs}",
                f"registered_model_name=medray-demo-{name}", f"seed={self.config.seed}",
                "scaling.num_workers=1", *self.mlflow_overrides(f"medray-demo-{name}")]

    def publish_model(self, name: str, result: dict) -> str:
        """Copy a trained bundle to models/<name>, where serve_configs/local.yaml looks."""
        target = self.path("models", name)
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(result["bundle_uri"], target)
        return target

    # -- steps ---------------------------------------------------------------------------------
    def platform(self) -> dict:
        """Ray runs tasks, storage writes atomically and reads back, MLflow records a run."""
        import mlflow
        import ray

        from medray import storage

        @ray.remote
        def square(x: int) -> int:
            return x * x

        assert ray.get([square.remote(i) for i in range(4)]) == [0, 1, 4, 9]
        probe = storage.join_uri(self.workdir, "storage-check.txt")
        storage.atomic_write_text(probe, "medray")
        assert storage.read_text(probe) == "medray"
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_experiment("medray-demo")
        with mlflow.start_run(run_name="demo-platform-check") as run:
            mlflow.log_param("check", "ok")
        return {"ray_cpus": ray.cluster_resources().get("CPU"), "storage_probe": probe,
                "mlflow_tracking_uri": self.tracking_uri, "mlflow_run": run.info.run_id}

    def slides(self) -> dict:
        from medray.synth import slides

        cfg = slides.Config(output=self.path("slides"), num_slides=self.config.num_slides,
                            width=self.config.slide_size, height=self.config.slide_size,
                            seed=self.config.seed, points_per_label=150)
        summary = slides.generate(cfg)
        return {"slides_dir": cfg.output, "slides": [s.get("slide") or s.get("uri") or s
                                                     for s in summary.get("slides", [])]}

    def extract(self) -> dict:
        from medray.datasets.extract import run_extract
        from medray.datasets.extract_config import ExtractConfig

        cfg = _job_config(ExtractConfig, "extract.yaml", [
            f"slides={self.path('slides')}", f"output={self.path('datasets', 'patches')}",
            f"patch_size={self.config.patch_size}", f"seed={self.config.seed}", "max_per_label=150"])
        report = run_extract(cfg)
        return {"dataset": cfg.output, "report": os.path.join(cfg.output, "report.json"),
                "contact_sheet": os.path.join(cfg.output, "contact_sheet.png"),
                "overviews": os.path.join(cfg.output, "overviews"),
                "patches": report.get("patches"), "slides": report.get("counts")}

    def train(self) -> dict:
        from medray.train.config import TrainConfig
        from medray.train.trainer import train

        cfg = _job_config(TrainConfig, "patches.yaml", [
            *self.train_overrides("patches", 3, 2), f"preprocessing.size={self.config.patch_size}",
            "fp_oversampling.rounds=1"])
        result = train(cfg)
        self.outputs["_patches_result"] = result
        return {"bundle": result["bundle_uri"], "model": self.publish_model("slides", result),
                "model_uri": result.get("model_uri"), "metrics": _brief(result.get("metrics", {})),
                "threshold": result.get("threshold"), "plots": result.get("plots"),
                "fp_rounds": result.get("fp_rounds")}

    def score(self) -> dict:
        from medray.infer.score import score_slides
        from medray.infer.score_config import ScoreConfig

        slides_dir = Path(self.path("slides"))
        tumor_slides = sorted(str(p) for p in slides_dir.glob("tumor_*.tif"))
        cfg = _job_config(ScoreConfig, "score.yaml", [
            f"slides={tumor_slides[:1]}", f"model={self.path('models', 'slides')}",
            f"output={self.path('scores')}", *self.mlflow_overrides("medray-demo-scores")])
        report = score_slides(cfg)
        slides_out = []
        for entry in report.get("slides", []):
            slides_out.append({k: entry.get(k) for k in ("slide_id", "status", "overlay", "heatmap_npy",
                                                         "heatmap_tiff", "report", "outputs", "evaluation",
                                                         "slide_score", "error") if entry.get(k) is not None})
        return {"output": cfg.output, "slides": slides_out}

    def mitosis(self) -> dict:
        """TUPAC16-style: synthetic HPFs → proposals + 64×64 patches → classifier → detection."""
        from medray.mitosis.config import MitosisConfig
        from medray.mitosis.detect import run_detection
        from medray.mitosis.workflow import prepare
        from medray.mitosis.workflow import train as train_mitosis
        from medray.synth import hpf

        data = self.path("data", "hpf")
        hpf.generate(hpf.Config(output=data, num_images=10, size=512, seed=self.config.seed))
        overrides = [f"inputs.hpf_dir={data}", f"output={self.path('mitosis')}",
                     f"train.model.name={self.config.model}", f"train.epochs={self.config.epochs}",
                     "train.scaling.cpus_per_worker=0.5", "train.registered_model_name=medray-demo-mitosis",
                     *[f"train.{o}" for o in self.mlflow_overrides("medray-demo-mitosis")]]
        cfg = _job_config(MitosisConfig, "mitosis.yaml", overrides)
        prepared = prepare(cfg)
        trained = train_mitosis(cfg)
        detected = run_detection(cfg.model_copy(update={"detect": cfg.detect.model_copy(
            update={"model": trained["bundle_uri"]})}))
        return {"hpf": data, "patches": self.path("mitosis", "patches"), "split": prepared.get("split"),
                "model": self.publish_model("mitosis", trained), "threshold": trained["mitosis"].get("threshold"),
                "detections_csv": detected.get("csv"), "overlays": detected.get("overlays", [])[:3],
                "metrics": (detected.get("metrics") or {}).get("overall"), "tiles": detected.get("tiles")}

    def _ingest_and_train(self, name: str, ingest_overrides: list[str], train_yaml: str,
                          in_channels: int, num_classes: int, extra: list[str], endpoint: str) -> dict:
        from medray.datasets.ingest import run_ingest
        from medray.datasets.ingest_config import IngestConfig
        from medray.train.config import TrainConfig
        from medray.train.trainer import train

        ingest_cfg = _job_config(IngestConfig, f"ingest_{name}.yaml",
                                 [f"output={self.path('datasets', name)}", *ingest_overrides])
        ingest = run_ingest(ingest_cfg, progress=False)
        cfg = _job_config(TrainConfig, train_yaml, [*self.train_overrides(name, in_channels, num_classes),
                                                    *extra])
        result = train(cfg)
        return {"dataset": ingest_cfg.output, "ingested": ingest.get("counts"), "class_counts": ingest.get("class_counts"),
                "skipped": ingest.get("skipped"), "model": self.publish_model(endpoint, result),
                "model_uri": result.get("model_uri"), "metrics": _brief(result.get("metrics", {})),
                "plots": result.get("plots")}

    def ct(self) -> dict:
        from medray.synth import ct

        data = self.path("data", "ct")
        ct.generate(ct.Config(output=data, formats=["png", "dicom"], image_size=64,
                              patients_per_class=6, seed=self.config.seed))
        return self._ingest_and_train("ct2d", [f"manifest={data}/manifest_png.jsonl"], "ct2d.yaml", 1, 2,
                                      ["preprocessing.size=64"], endpoint="ct")

    def skin(self) -> dict:
        from medray.synth import skin

        data = self.path("data", "skin")
        skin.generate(skin.Config(output=data, total_images=420, seed=self.config.seed))
        out = self._ingest_and_train(
            "skin", [f"builder.metadata_csv={data}/HAM10000_metadata.csv", f"builder.images_dir={data}/images"],
            "skin.yaml", 3, 7, ["preprocessing.size=64"], endpoint="skin")
        return out

    def serve(self) -> dict:
        """Bring every endpoint up on 127.0.0.1 with the demo's models and call each once."""
        import httpx
        from ray import serve

        from medray.serve.app import build_app_with_options
        from medray.serve.config import AppArgs

        port = self.config.serve_port or _free_port()
        models = {name: self.path("models", name) for name in ("ct", "skin")}
        args = {"allowed_slide_roots": [self.path("slides")], "mlflow_tracking_uri": self.tracking_uri}
        if os.path.isdir(models["ct"]):
            args["ct"] = {"model_uri": models["ct"]}
        if os.path.isdir(models["skin"]):
            args["skin"] = {"model_uri": models["skin"]}
        if os.path.isdir(self.path("models", "mitosis")):
            args["mitosis"] = {"model_uri": self.path("models", "mitosis")}
        if os.path.isdir(self.path("models", "slides")):
            args["slides"] = {"model_uri": self.path("models", "slides"),
                              "output_root": self.path("serve", "heatmaps"), "predictor_cpus": 0.25}
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        # Small CPU reservations: on a 2-core laptop the replicas, a heatmap job's model actor and
        # its reading tasks must all fit at once (serve_configs/local.yaml sets the same).
        names = {"ct": "CTClassifier", "skin": "SkinClassifier", "mitosis": "MitosisDetector"}
        options = {names[k]: {"ray_actor_options": {"num_cpus": 0.2}} for k in names if k in args}
        serve.run(build_app_with_options(AppArgs(**args), options), name="medray", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        calls: dict[str, Any] = {}
        try:
            with httpx.Client(base_url=base, timeout=60) as client:
                calls["GET /healthz"] = client.get("/healthz").json()
                calls["GET /models"] = client.get("/models").json()
                ct_png = next(Path(self.path("data", "ct")).rglob("*.png"), None)
                if ct_png and "ct" in args:
                    calls["POST /ct/classify"] = client.post(
                        "/ct/classify", files={"file": (ct_png.name, ct_png.read_bytes(), "image/png")}).json()
                skin_jpg = next(Path(self.path("data", "skin")).rglob("*.jpg"), None)
                if skin_jpg and "skin" in args:
                    calls["POST /skin/classify"] = client.post(
                        "/skin/classify", files={"file": (skin_jpg.name, skin_jpg.read_bytes(), "image/jpeg")}
                    ).json()
                field = next(iter(sorted(Path(self.path("data", "hpf")).rglob("*.png"))), None)
                if field and "mitosis" in args:
                    calls["POST /mitosis/detect"] = client.post(
                        "/mitosis/detect", files={"file": (field.name, field.read_bytes(), "image/png")}).json()
                slide = next(iter(sorted(Path(self.path("slides")).glob("tumor_*.tif"))), None)
                if slide and "slides" in args:
                    job = client.post("/slides/heatmap", json={"slide_uri": str(slide)}).json()
                    deadline = time.monotonic() + 600
                    status = job
                    while time.monotonic() < deadline and status.get("status") not in ("succeeded", "failed"):
                        time.sleep(2)
                        status = client.get(f"/slides/heatmap/{job['job_id']}").json()
                    calls["POST /slides/heatmap + GET /slides/heatmap/{id}"] = status
        finally:
            serve.shutdown()
        return {"url": base, "docs": f"{base}/docs", "responses": calls,
                "serve_yourself": "medray serve  (serve_configs/local.yaml; models under medray-data/demo/models)"}


def _brief(metrics: dict) -> dict:
    keys = ("roc_auc", "roc_auc_macro", "accuracy", "balanced_accuracy", "f1", "val_roc_auc", "val_accuracy")
    return {k: round(float(v), 4) for k, v in metrics.items() if k in keys and v is not None}


def _run_step(name: str, fn: Callable[[], dict], outputs: dict) -> None:
    print(f"\n=== {name} ===", flush=True)
    start = time.perf_counter()
    result = fn()
    outputs[name] = {**result, "seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(outputs[name], indent=2, default=str), flush=True)


def run_demo(config: DemoConfig) -> dict:
    """Run the configured steps; returns (and prints, and writes) where each output is."""
    import ray

    unknown = sorted(set(config.steps) - set(STEPS))
    if unknown:
        from medray.errors import ConfigError

        raise ConfigError(f"unknown demo steps {unknown}; choose from {list(STEPS)}")
    demo = Demo(config)
    Path(demo.workdir).mkdir(parents=True, exist_ok=True)
    write_resolved_config(config, demo.workdir, name="demo_config.yaml")
    if not ray.is_initialized():
        from medray.serve.ingress_mode import set_default_ingress

        set_default_ingress(drain_s=2)  # the serve step goes through HAProxy, as `medray serve` does
        ray.init(num_cpus=config.num_cpus, include_dashboard=False, log_to_driver=False)
    for step in STEPS:
        if step in config.steps:
            _run_step(step, getattr(demo, step), demo.outputs)
    outputs = {k: v for k, v in demo.outputs.items() if not k.startswith("_")}
    summary = Path(demo.workdir) / "demo_outputs.json"
    summary.write_text(json.dumps(outputs, indent=2, default=str))
    print(f"\nDemo finished. Every output is listed in {summary}")
    print(f"MLflow UI: mlflow ui --backend-store-uri {demo.tracking_uri}")
    return outputs

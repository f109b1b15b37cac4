"""The GPU paths, on a machine where torch sees a CUDA device (skipped elsewhere, e.g. in CI).

Ray Train with ``use_gpu`` (nccl process group, bf16 and fp16 autocast) learning the synthetic
task; GPU inference (uint8 to the device, channels-last, autocast) agreeing with the CPU; the
scoring job with its model actors on the GPU agreeing with a CPU run of the same slide; and the
production Serve config with every endpoint's replica on the GPU, answering over loopback HTTP.
Run with ``pytest tests/gpu`` (``make test`` collects them too and skips them without a GPU).
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from patch_data import write_patch_dataset

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")]

REPO = Path(__file__).resolve().parents[2]
SLIDE_SIZE = 4096
PATCH = 64


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    from medray.synth.slides import Config, generate

    root = tmp_path_factory.mktemp("gpu-slide")
    summary = generate(Config(output=str(root), num_slides=1, tumor_slides=1, width=SLIDE_SIZE, height=SLIDE_SIZE,
                              mpp=0.25, points_per_label=5, mitoses_per_slide=0, mimics_per_slide=0,
                              progress=False, seed=3))
    return Path(summary["slides"][0]["slide"])


@pytest.fixture(scope="module")
def patch_bundle(tmp_path_factory) -> str:
    """A resnet18 bundle (random weights: agreement between devices needs no learned signal)."""
    from medray.models.preprocess import Preprocessing
    from medray.models.bundle import save_bundle
    from medray.models.registry import ModelSpec, build_model

    torch.manual_seed(0)
    spec = ModelSpec(name="resnet18", num_classes=2)
    prep = Preprocessing(size=PATCH, info={"mpp": 0.25, "patch_size": PATCH, "level": 0})
    return save_bundle(str(tmp_path_factory.mktemp("gpu-model") / "resnet18"), build_model(spec), spec,
                       ["normal", "tumor"], prep, threshold=0.5)


# ---- preprocessing and inference on the device ----

@pytest.mark.parametrize("shape, channels, dims", [((4, 40, 48, 3), 3, 2), ((4, 40, 48), 1, 2),
                                                  ((2, 1, 8, 16, 16), 1, 3), ((2, 8, 16, 16), 1, 3)])
def test_device_tensor_is_the_cpu_tensor(shape, channels, dims):
    from medray.models.preprocess import Preprocessing, to_device_tensor, to_tensor

    prep = Preprocessing(spatial_dims=dims, channels=channels, size=16, mean=[0.4] * channels, std=[0.2] * channels)
    batch = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    on_gpu = to_device_tensor(batch, prep, "cuda")
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.float32
    torch.testing.assert_close(on_gpu.cpu(), to_tensor(batch, prep), rtol=0, atol=1e-6)


def test_gpu_inference_agrees_with_cpu(patch_bundle):
    from medray.models.bundle import load_model

    batch = np.random.default_rng(2).integers(0, 256, (96, PATCH, PATCH, 3), dtype=np.uint8)
    cpu = load_model(patch_bundle, device="cpu")
    assert cpu.precision == "fp32"
    reference = cpu.predict_proba(batch, 32)
    fp32 = load_model(patch_bundle, device="cuda", precision="fp32")
    auto = load_model(patch_bundle, device="cuda")
    assert auto.precision == "bf16" and fp32.precision == "fp32"
    # TF32 convolutions on the GPU: ~1e-3 relative; bf16 autocast: ~1e-2
    assert np.abs(fp32.predict_proba(batch, 32) - reference).max() < 5e-3
    assert np.abs(auto.predict_proba(batch, 32) - reference).max() < 5e-2


# ---- Ray Train on the GPU ----

@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_ray_train_on_gpu_learns_with_mixed_precision(ray_cluster, tmp_path, precision):
    from medray.config.base import validate_config
    from medray.models.bundle import load_model
    from medray.train.config import TrainConfig
    from medray.train.trainer import train

    data = tmp_path / "patches"
    write_patch_dataset(str(data), num_groups=6, per_class=30, size=32, seed=0)
    cfg = validate_config(TrainConfig, {
        "dataset": str(data), "output": str(tmp_path / "out"), "model": {"name": "resnet18"},
        "preprocessing": {"size": 32}, "epochs": 4, "batch_size": 16, "seed": 1,
        "optimizer": {"lr": 0.001}, "augment": {"enabled": False}, "split": {"val_fraction": 0.34},
        "track": False, "mixed_precision": precision,
        "scaling": {"num_workers": 1, "use_gpu": True, "cpus_per_worker": 0.5, "gpus_per_worker": 1}})
    summary = train(cfg)
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3, 4]
    assert summary["metrics"]["roc_auc"] > 0.9, summary["metrics"]
    bundle = load_model(str(tmp_path / "out" / "model"), device="cpu")  # GPU-trained weights load on a CPU
    probs = bundle.predict_proba(np.zeros((2, 32, 32, 3), np.uint8))
    assert probs.shape == (2, 2) and np.isfinite(probs).all()


# ---- the scoring job with its model actors on the GPU ----

def test_gpu_scoring_job_agrees_with_cpu_run(ray_cluster, slide, patch_bundle, tmp_path):
    from medray.infer.score import score_slides
    from medray.infer.score_config import ScoreConfig

    maps = {}
    for name, gpus in (("cpu", 0.0), ("gpu", 0.5)):
        cfg = ScoreConfig(slides=[str(slide)], model=patch_bundle, output=str(tmp_path / name), batch_size=128,
                          predictors=1, predictor_cpus=0.5, reader_cpus=0.5, num_gpus=gpus, log_mlflow=False,
                          progress=False, evaluate=False, write_tiff=False)
        report = score_slides(cfg)
        entry = report["slides"][0]
        assert entry["status"] == "ok", entry
        maps[name] = np.load(entry["outputs"]["map"])
    assert maps["cpu"].shape == maps["gpu"].shape
    scored = np.isfinite(maps["cpu"])
    assert scored.sum() > 100 and (np.isfinite(maps["gpu"]) == scored).all()
    assert np.abs(maps["gpu"][scored] - maps["cpu"][scored]).max() < 5e-2  # bf16 autocast on the GPU


# ---- the production Serve config, every replica on the GPU ----

def test_production_serve_config_runs_every_endpoint_on_the_gpu(ray_cluster, slide, patch_bundle, tmp_path):
    import httpx
    from ray import serve

    from medray.serve import demo_models
    from medray.serve.app import application_from_config
    from medray.synth import ct

    models = tmp_path / "models"
    ct_model = demo_models.untrained_model(str(models / "ct"), 2, 1, 64, ["CT-0", "CT-4"])
    skin = demo_models.untrained_model(str(models / "skin"), 2, 3, 64, list("abcdefg"))
    mitosis = demo_models.untrained_model(str(models / "mitosis"), 2, 3, 64, ["normal", "mitosis"])
    small = {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
             "ray_actor_options": {"num_cpus": 0.1, "num_gpus": 0.2}}
    app, _ = application_from_config(
        REPO / "serve_configs" / "production.yaml",
        args_update={"ct": {"model_uri": ct_model}, "skin": {"model_uri": skin},
                     "mitosis": {"model_uri": mitosis},
                     "slides": {"model_uri": patch_bundle, "output_root": str(tmp_path / "heatmaps"),
                                "num_gpus": 0.2, "predictor_cpus": 0.25, "reader_cpus": 0.25, "log_mlflow": False},
                     "allowed_slide_roots": [str(slide.parent)], "mlflow_tracking_uri": None},
        deployment_updates={name: small for name in ("CTClassifier", "SkinClassifier", "MitosisDetector")}
        | {"SlideHeatmaps": {"ray_actor_options": small["ray_actor_options"]},  # num_replicas: 1 there
           "Ingress": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
                       "ray_actor_options": {"num_cpus": 0.1}}})
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(app, name="medray-gpu", route_prefix="/")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
            cards = http.get("/models").json()["models"]
            assert {name: cards[name]["device"].split(":")[0] for name in ("ct", "skin", "mitosis")} == \
                {"ct": "cuda", "skin": "cuda", "mitosis": "cuda"}, cards
            png = ct.png_bytes(ct.render_slice(64, 4.0, np.random.default_rng(0)))
            r = http.post("/ct/classify", files={"file": ("s.png", png, "image/png")})
            assert r.status_code == 200 and r.json()["class"] in ("CT-0", "CT-4"), r.text
            lesion = demo_models.skin_image("mel", np.random.default_rng(1))
            from medray.datasets.codec import encode_image

            r = http.post("/skin/classify", files={"file": ("l.jpg", encode_image(lesion, "jpeg"), "image/jpeg")})
            assert r.status_code == 200 and len(r.json()["probabilities"]) == 7, r.text
            from medray.synth import hpf

            field = hpf.render_field(hpf.field_layout(hpf.Config(size=256, mitoses_min=2, mitoses_max=2), 0))
            r = http.post("/mitosis/detect", files={"file": ("f.png", encode_image(field, "png"), "image/png")})
            assert r.status_code == 200 and r.json()["candidates"] > 0, r.text
            job = http.post("/slides/heatmap", json={"slide_uri": str(slide)}).json()["job_id"]
            deadline, body = time.monotonic() + 300, {}
            while time.monotonic() < deadline:
                body = http.get(f"/slides/heatmap/{job}").json()
                if body["status"] in ("succeeded", "failed"):
                    break
                time.sleep(1)
            assert body["status"] == "succeeded", body
            report = http.get(body["links"]["report"]).json()
            assert report["patches"]["scored"] > 100, json.dumps(report)[:500]
    finally:
        serve.shutdown()

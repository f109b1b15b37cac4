"""Slide heatmaps on real Ray Serve over loopback HTTP: a job from submit to its overlay PNG and
report, jobs answered from their stored record after the app is torn down and deployed again, the
synchronous region grid, and 403/404/413/422 for what a request may not do."""

from __future__ import annotations

import io
import json
import os
import socket
import time

import numpy as np
import pytest

APP = "medray-heatmap"
PATCH = 64
SIZE = 4096


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _untrained_bundle(path) -> str:
    """A smallcnn bundle that reads 64-px patches at level 0 (0.25 µm/px): shapes and flow only."""
    import torch

    from medray.models.bundle import save_bundle
    from medray.models.preprocess import Preprocessing
    from medray.models.registry import ModelSpec, build_model

    torch.manual_seed(0)
    spec = ModelSpec(name="smallcnn", num_classes=2)
    prep = Preprocessing(size=PATCH, info={"mpp": 0.25, "patch_size": PATCH, "level": 0})
    return save_bundle(str(path), build_model(spec).eval(), spec, ["normal", "tumor"], prep, threshold=0.5)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from medray.synth.slides import Config, generate

    root = tmp_path_factory.mktemp("serve-heatmap")
    slides, outside = root / "slides", root / "outside"
    generate(Config(output=str(slides), num_slides=1, tumor_slides=1, width=SIZE, height=SIZE, levels=3,
                    mpp=0.25, points_per_label=2, mitoses_per_slide=0, mimics_per_slide=0, progress=False,
                    thumbnail_size=128, seed=3))
    outside.mkdir()
    (outside / "secret.tif").write_bytes((slides / "tumor_001.tif").read_bytes())
    os.symlink(outside / "secret.tif", slides / "link.tif")
    return {"root": root, "slides": slides, "outside": outside, "model": _untrained_bundle(root / "model"),
            "output": root / "jobs"}


def _deploy(files) -> None:
    from ray import serve

    from medray.serve.app import build_app
    from medray.serve.config import AppArgs

    args = AppArgs(slides={"model_uri": files["model"], "output_root": str(files["output"]), "predictor_cpus": 0.5,
                           "unit_patches": 256, "overlay_size": 256, "write_tiff": False, "max_region_side": 1024,
                           "max_region_cells": 64},
                   allowed_slide_roots=[str(files["slides"])])
    serve.run(build_app(args), name=APP, route_prefix="/")


@pytest.fixture(scope="module")
def client(ray_cluster, files):
    import httpx
    from ray import serve

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    _deploy(files)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
        yield http
    serve.delete(APP)
    serve.shutdown()


def _wait(client, job_id: str, timeout: float = 150.0) -> dict:
    deadline = time.monotonic() + timeout
    seen = set()
    while time.monotonic() < deadline:
        body = client.get(f"/slides/heatmap/{job_id}").json()
        seen.add(body["status"])
        if body["status"] in ("succeeded", "failed"):
            body["seen"] = seen
            return body
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not finished after {timeout}s: {body}")


@pytest.mark.slow
def test_job_from_submit_to_overlay_and_report(client, files):
    version = client.get("/models").json()["models"]["slides"]["version"]
    r = client.post("/slides/heatmap", json={"slide_uri": str(files["slides"] / "tumor_001.tif"), "threshold": 0.4})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] in ("queued", "running") and job["model_version"] == version == r.headers["x-model-version"]
    assert r.headers["location"] == f"/slides/heatmap/{job['job_id']}"
    done = _wait(client, job["job_id"])
    assert done["status"] == "succeeded", done
    assert done["progress"]["done"] == done["progress"]["total"] > 0 and done["progress"]["fraction"] == 1.0
    assert done["options"] == {"threshold": 0.4} and done["model"]["version"] == version
    png = client.get(done["links"]["overlay"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    from PIL import Image

    image = Image.open(io.BytesIO(png.content))
    assert image.size[1] == 256 and image.size[0] >= 256 and image.mode in ("RGB", "RGBA")  # thumbnail + legend
    report = client.get(done["links"]["report"]).json()
    assert report["status"] == "ok" and report["threshold"] == 0.4 and report["model"]["version"] == version
    assert 0.0 <= report["scores"]["max"] <= 1.0 and "top_k_mean" in report["scores"]
    assert report["patches"]["scored"] == done["progress"]["total"]
    prob_map = np.load(io.BytesIO(client.get(done["links"]["map"]).content))
    assert prob_map.shape == (SIZE // PATCH, SIZE // PATCH)
    assert np.isfinite(prob_map).sum() == report["patches"]["scored"]
    assert (files["output"] / job["job_id"] / "tumor_001" / "overlay.png").is_file()


@pytest.mark.slow
def test_jobs_share_one_model_actor(client, files):
    """The second job is scored by the model actor the first one started (no model start-up),
    and gives the same map."""
    maps, servers = [], []
    for _ in range(2):
        r = client.post("/slides/heatmap", json={"slide_uri": str(files["slides"] / "tumor_001.tif")})
        done = _wait(client, r.json()["job_id"])
        assert done["status"] == "succeeded", done
        servers.append(done["model_server"])
        maps.append(np.load(io.BytesIO(client.get(done["links"]["map"]).content)))
    first, second = servers
    assert first["pid"] == second["pid"] and first["load_seconds"] == second["load_seconds"]
    assert second["patches"] - first["patches"] == done["progress"]["total"] > 0
    assert first["model_version"] == client.get("/models").json()["models"]["slides"]["version"]
    np.testing.assert_array_equal(maps[0], maps[1])


@pytest.mark.slow
def test_jobs_outlive_the_app_through_their_records(client, files):
    """A finished job still answers (status, links, files) after the app is deleted and deployed
    again; jobs that were queued or running when it went away are reported interrupted."""
    from ray import serve

    slide = str(files["slides"] / "tumor_001.tif")
    done = _wait(client, client.post("/slides/heatmap", json={"slide_uri": slide}).json()["job_id"])
    assert done["status"] == "succeeded", done
    record = json.loads((files["output"] / done["job_id"] / "job.json").read_text())
    assert record["status"] == "succeeded" and record["done"] == record["total"] == done["progress"]["total"]
    # max_concurrent_jobs=1: the second job runs (or is about to), the third waits queued
    cut = [client.post("/slides/heatmap", json={"slide_uri": slide, "stride": 32}).json()["job_id"] for _ in range(2)]
    assert json.loads((files["output"] / cut[1] / "job.json").read_text())["status"] == "queued"

    serve.delete(APP)
    assert client.get(f"/slides/heatmap/{done['job_id']}").status_code == 404  # no route while the app is gone
    _deploy(files)

    again = client.get(f"/slides/heatmap/{done['job_id']}")
    assert again.status_code == 200, again.text
    body = again.json()
    for key in ("status", "progress", "links", "outputs", "scores", "submitted_at", "finished_at", "model"):
        assert body[key] == done[key], key
    assert again.headers["x-model-version"] == done["model_version"]
    png = client.get(body["links"]["overlay"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert client.get(body["links"]["report"]).json()["patches"]["scored"] == body["progress"]["total"]
    for job_id in cut:
        gone = client.get(f"/slides/heatmap/{job_id}").json()
        assert gone["status"] == "interrupted", gone
        assert "is gone (redeploy, restart or crash)" in gone["reason"] and "Submit the slide again" in gone["reason"]
        assert client.get(f"/slides/heatmap/{job_id}/overlay.png").status_code == 409
    assert client.get("/slides/heatmap/0123456789abcdef0123456789abcdef").status_code == 404


@pytest.mark.parametrize("uri, match", [
    ("{outside}/secret.tif", "outside the allowed slide roots"),
    ("{slides}/../outside/secret.tif", "outside the allowed slide roots"),
    ("{slides}/link.tif", "outside the allowed slide roots"),
    ("s3://bucket/slide.tif", "outside the allowed slide roots"),
])
def test_slides_outside_the_roots_are_403(client, files, uri, match):
    uri = uri.format(outside=files["outside"], slides=files["slides"])
    for path, extra in (("/slides/heatmap", {}), ("/slides/heatmap/region", {"x": 0, "y": 0, "w": 64, "h": 64})):
        r = client.post(path, json={"slide_uri": uri, **extra})
        assert r.status_code == 403, r.text
        assert r.json()["error"] == "forbidden" and match in r.json()["detail"]


def test_unknown_job_and_missing_slide_are_404(client, files):
    r = client.get("/slides/heatmap/0123456789abcdef")
    assert r.status_code == 404 and "no heatmap job '0123456789abcdef'" in r.json()["detail"]
    assert client.get("/slides/heatmap/0123456789abcdef/overlay.png").status_code == 404
    r = client.post("/slides/heatmap", json={"slide_uri": str(files["slides"] / "nope.tif")})
    assert r.status_code == 404 and "does not exist" in r.json()["detail"]


def test_region_returns_the_grid(client, files):
    slide = str(files["slides"] / "tumor_001.tif")
    r = client.post("/slides/heatmap/region", json={"slide_uri": slide, "x": 256, "y": 512, "w": 300, "h": 128})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["shape"] == [2, 5] and len(body["probabilities"]) == 2 and len(body["probabilities"][0]) == 5
    assert all(0.0 <= p <= 1.0 for row in body["probabilities"] for p in row)
    assert body["stride0"] == PATCH and body["level"] == 0 and body["model_version"] == r.headers["x-model-version"]
    # the same cells as score_region in this process
    from medray.infer.score import score_region

    expected = score_region(slide, files["model"], 256, 512, 300, 128)
    assert np.allclose(np.asarray(body["probabilities"], np.float32), expected, atol=1e-5)
    # stride 32 doubles the grid; the last column's patch leaves the slide → null
    r = client.post("/slides/heatmap/region", json={"slide_uri": slide, "x": SIZE - 128, "y": 0, "w": 128, "h": 64,
                                                    "stride": 32})
    assert r.json()["shape"] == [2, 4] and r.json()["probabilities"][0][3] is None


def test_region_too_large_or_invalid(client, files):
    slide = str(files["slides"] / "tumor_001.tif")
    r = client.post("/slides/heatmap/region", json={"slide_uri": slide, "x": 0, "y": 0, "w": 2000, "h": 64})
    assert r.status_code == 413 and "max_region_side=1024" in r.json()["detail"]
    r = client.post("/slides/heatmap/region", json={"slide_uri": slide, "x": 0, "y": 0, "w": 1024, "h": 1024})
    assert r.status_code == 413 and "256 cells, over max_region_cells=64" in r.json()["detail"]
    r = client.post("/slides/heatmap/region", json={"slide_uri": slide, "x": 0, "y": 0, "w": 0, "h": 64})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "w"]
    r = client.post("/slides/heatmap", json={"slide_uri": slide, "strid": 8})
    assert r.status_code == 422


def test_models_lists_the_heatmap_model(client, files):
    card = client.get("/models").json()["models"]["slides"]
    assert card["uri"] == files["model"] and card["classes"] == ["normal", "tumor"] and len(card["version"]) == 12
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/slides/heatmap", "/slides/heatmap/region", "/slides/heatmap/{job_id}",
            "/slides/heatmap/{job_id}/overlay.png"} <= set(paths)
    json.dumps(card)

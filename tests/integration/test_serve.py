"""The inference app on real Ray Serve over loopback HTTP: CT and skin classification with models
trained on synthetic images, /models and versions, batching, and every error status as JSON."""

from __future__ import annotations

import concurrent.futures
import socket
from pathlib import Path

import numpy as np
import pytest

from medray.datasets.codec import encode_image
from medray.errors import ConfigError
from medray.serve import demo_models
from medray.synth import ct

REPO = Path(__file__).resolve().parents[2]
APP = "medray"
CT_LIMIT = 64 * 1024


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-models")
    return {"ct": demo_models.train_ct_model(str(root / "ct")),
            "skin": demo_models.train_skin_model(str(root / "skin"), per_class=4, epochs=2)}


@pytest.fixture(scope="module")
def client(ray_cluster, bundles):
    import httpx
    from ray import serve

    from medray.serve.app import build_app
    from medray.serve.config import AppArgs

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = AppArgs(ct={"model_uri": bundles["ct"], "max_batch_size": 8, "batch_wait_timeout_s": 0.05,
                       "max_upload_bytes": CT_LIMIT},
                   skin={"model_uri": bundles["skin"]})
    serve.run(build_app(args), name=APP, route_prefix="/")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
        yield http
    serve.shutdown()


def _png(severity: float, seed: int) -> bytes:
    return ct.png_bytes(ct.render_slice(64, severity, np.random.default_rng(seed)))


def _upload(client, path, data, name="slice.png", ctype="image/png", **params):
    return client.post(path, files={"file": (name, data, ctype)}, params=params)


def test_health_models_and_docs(client, bundles):
    assert client.get("/healthz").json() == {"status": "ok", "endpoints": ["ct", "skin"]}
    models = client.get("/models").json()["models"]
    assert models["ct"]["uri"] == bundles["ct"] and models["ct"]["classes"] == ["CT-0", "CT-4"]
    assert models["ct"]["preprocessing"]["info"] == {"window": "lung"} and models["ct"]["spatial_dims"] == 2
    assert len(models["skin"]["classes"]) == 7 and len(models["skin"]["version"]) == 12
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/ct/classify", "/skin/classify", "/ct/batching", "/skin/batching", "/healthz", "/models"} <= set(paths)
    assert client.get("/docs").status_code == 200


def test_ct_png_and_dicom_get_the_right_class(client):
    version = client.get("/models").json()["models"]["ct"]["version"]
    for seed in (101, 102, 103):
        for severity, expected in ((0.0, "CT-0"), (4.0, "CT-4")):
            hu = ct.render_slice(64, severity, np.random.default_rng(seed))
            r = _upload(client, "/ct/classify", ct.png_bytes(hu))
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["class"] == expected, body
            assert body["model_version"] == version == r.headers["x-model-version"]
            r = _upload(client, "/ct/classify", ct.dicom_bytes(hu, "p", 0, 0.7, seed), "s.dcm", "application/dicom")
            assert r.json()["class"] == expected and r.json()["input_kind"] == "dicom"


def test_skin_returns_seven_probabilities(client):
    image = demo_models.skin_image("mel", np.random.default_rng(3))
    r = _upload(client, "/skin/classify", encode_image(image, "jpeg"), "lesion.jpg", "image/jpeg", top_k=3)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["probabilities"]) == 7 and abs(sum(body["probabilities"].values()) - 1) < 1e-4
    assert [t["class"] for t in body["top_k"]][0] == body["class"]
    assert body["top_k"][0]["probability"] >= body["top_k"][1]["probability"] >= body["top_k"][2]["probability"]
    assert body["model"]["version"] == body["model_version"]


def test_concurrent_requests_are_batched(client):
    from ray import serve

    handle = serve.get_deployment_handle("CTClassifier", app_name=APP)
    before = handle.batch_stats.remote().result()
    pngs = [_png(4.0, 200 + i) for i in range(24)]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda d: _upload(client, "/ct/classify", d), pngs))
    assert [r.status_code for r in results] == [200] * 24
    stats = handle.batch_stats.remote().result()
    assert 1 < stats["max"] <= 8, stats
    assert stats["samples_total"] - before["samples_total"] == 24
    assert stats["batches_total"] - before["batches_total"] < 24  # some requests shared a pass
    assert stats["calls_total"] - before["calls_total"] < 24  # the ingress sent them in batches, not one by one
    batching = client.get("/ct/batching").json()  # the ingress's side of the same story
    assert batching["items_sent"] >= 24 and batching["batches_sent"] < batching["items_sent"]
    assert batching["pending"] == 0 and batching["in_flight"] == 0 and batching["max_batch_size"] == 8
    assert batching["ingress_replica"]
    assert stats["forward_s_total"] > before["forward_s_total"]  # pass time is recorded


def test_a_bad_upload_fails_alone_in_its_batch(client):
    uploads = [(_png(4.0, 300 + i), "slice.png") if i % 3 else (b"\x00garbage" * 20, "broken.png") for i in range(12)]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda u: _upload(client, "/ct/classify", u[0], u[1]), uploads))
    for (_, name), r in zip(uploads, results):
        if name == "broken.png":
            assert r.status_code == 400 and r.json()["error"] == "corrupt_input", r.text
            assert "broken.png" in r.json()["detail"]
        else:
            assert r.status_code == 200 and r.json()["class"] == "CT-4", r.text


@pytest.mark.parametrize("case, status, error, match", [
    ("corrupt", 400, "corrupt_input", "claims to be png"),
    ("truncated", 400, "corrupt_input", "slice.png: corrupt or truncated"),
    ("text", 415, "unsupported_media_type", "not a supported file type"),
    ("gif", 415, "unsupported_media_type", "not a supported file type"),
    ("nifti_to_2d", 415, "unsupported_media_type", "nifti file; this endpoint's model accepts png, jpeg, dicom"),
])
def test_bad_uploads_get_json_errors(client, case, status, error, match):
    png = _png(0.0, 1)
    data, name, ctype = {
        "corrupt": (b"\x00garbage" * 20, "slice.png", "image/png"),
        "truncated": (png[: len(png) // 2], "slice.png", "image/png"),
        "text": (b"patient notes", "notes.txt", "text/plain"),
        "gif": (b"GIF89a" + b"\x00" * 50, "x.gif", "image/gif"),
        "nifti_to_2d": (ct.nifti_bytes(np.zeros((8, 8, 4), np.float32), (1.0, 1.0, 1.0), 0), "v.nii.gz", "application/gzip"),
    }[case]
    r = _upload(client, "/ct/classify", data, name, ctype)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == error and match in body["detail"], body
    assert "Traceback" not in body["detail"] and "ray::" not in body["detail"]


def test_oversized_uploads_are_413(client):
    big = b"\x89PNG\r\n\x1a\n" + b"\x00" * CT_LIMIT
    r = _upload(client, "/ct/classify", big)
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
    assert f"upload limit of {CT_LIMIT} bytes" in r.json()["detail"]
    chunks = iter([b"\x00" * 32768] * 4)  # chunked transfer: no Content-Length to check
    r = client.post("/ct/classify", content=chunks, headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 413 and "body of more than" in r.json()["detail"]


def test_bad_parameters_422_and_unknown_route_404(client):
    r = _upload(client, "/ct/classify", _png(0.0, 2), top_k=0)
    assert r.status_code == 422 and r.json()["error"] == "invalid_parameters"
    assert r.json()["detail"][0]["loc"] == ["query", "top_k"]
    r = client.post("/ct/classify", data={"nofile": "x"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "file"]
    r = client.get("/mitosis/nope")
    assert r.status_code == 404 and r.json() == {"error": "not_found",
                                                 "detail": "no route GET /mitosis/nope; see /docs for the endpoints"}


def test_replicas_survive_bad_input(client):
    """After every error above the same replicas still answer."""
    r = _upload(client, "/ct/classify", _png(4.0, 9))
    assert r.status_code == 200 and r.json()["class"] == "CT-4"


# --------------------------------------------------------------------------- config files

def test_serve_config_files_validate():
    from ray.serve.schema import ServeDeploySchema

    from medray.serve.config import check_serve_config, load_serve_config

    for name in ("local.yaml", "production.yaml"):
        path = REPO / "serve_configs" / name
        ServeDeploySchema.model_validate(load_serve_config(path))
        args = check_serve_config(path)["medray"]
        assert args.ct is not None and args.skin is not None
    prod = load_serve_config(REPO / "serve_configs" / "production.yaml")
    deployments = {d["name"]: d for d in prod["applications"][0]["deployments"]}
    assert deployments["CTClassifier"]["ray_actor_options"]["num_gpus"] > 0
    assert deployments["CTClassifier"]["autoscaling_config"]["max_replicas"] > 1
    assert prod["http_options"]["host"] == "0.0.0.0"
    local = load_serve_config(REPO / "serve_configs" / "local.yaml")
    assert local["http_options"]["host"] == "127.0.0.1"


def test_invalid_app_args_name_the_field(tmp_path):
    from medray.serve.config import check_serve_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("applications:\n  - name: medray\n    import_path: medray.serve.app:build_app\n"
                   "    args:\n      ct:\n        model_uri: m\n        max_batch_sise: 8\n")
    with pytest.raises(ConfigError, match=r"unknown field 'ct.max_batch_sise'.*did you mean 'max_batch_size'"):
        check_serve_config(bad)
    bad.write_text("applications:\n  - name: medray\n    import_path: medray.serve.app:build_app\n"
                   "    args:\n      skin:\n        model_uri: m\n        max_batch_size: 64\n"
                   "        max_ongoing_requests: 8\n")
    with pytest.raises(ConfigError, match=r"max_ongoing_requests \(8\) must be >= max_batch_size \(64\)"):
        check_serve_config(bad)
    bad.write_text("applications:\n  - name: medray\n    import_path: medray.serve.app:build_app\n"
                   "    args:\n      ingress_max_ongoing_requests: 8\n      ct:\n        model_uri: m\n")
    with pytest.raises(ConfigError, match=r"ingress_max_ongoing_requests \(8\) must be >= ct.max_batch_size \(16\)"):
        check_serve_config(bad)
    bad.write_text("applications:\n  - name: medray\n    import_path: medray.serve.app:build_app\n"
                   "    deployments: {not: a list}\n")
    with pytest.raises(ConfigError, match="not a valid Ray Serve config"):
        check_serve_config(bad)


def test_builder_rejects_empty_app_and_unknown_deployment_override(tmp_path):
    from medray.serve.app import application_from_config, build_app_with_options
    from medray.serve.config import AppArgs

    with pytest.raises(ConfigError, match="no endpoint configured"):
        build_app_with_options(AppArgs())
    with pytest.raises(ConfigError, match=r"\['CtClassifier'\] match no deployment.*'CTClassifier'"):
        build_app_with_options(AppArgs(ct={"model_uri": "m"}), {"CtClassifier": {"num_replicas": 2}})
    app, entry = application_from_config(REPO / "serve_configs" / "production.yaml",
                                         args_update={"ct": {"model_uri": "x"}})
    assert entry["args"]["ct"]["model_uri"].startswith("models:/")

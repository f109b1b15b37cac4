"""POST /mitosis/detect on real Ray Serve over loopback HTTP, with a smallcnn trained here in
seconds on patches at true mitoses vs elsewhere in generated HPFs; bad uploads → 400/413/415."""

from __future__ import annotations

import io
import socket

import numpy as np
import pytest

from medray.datasets.codec import encode_image

APP = "medray-mitosis"
LIMIT = 2 * 2**20
MAX_PIXELS = 1024 * 1024


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fields(seed: int, n: int, size: int = 512) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(rgb, mitoses (x, y), mimics (x, y)) of ``n`` generated high-power fields."""
    from medray.synth.hpf import Config, field_layout, render_field

    cfg = Config(num_images=n, size=size, mitoses_min=3, mitoses_max=5, mimics_per_image=3, seed=seed)
    out = []
    for i in range(n):
        layout = field_layout(cfg, i)
        out.append((render_field(layout), np.asarray(layout.mitoses, np.float64).reshape(-1, 2),
                    np.asarray(layout.mimics, np.float64).reshape(-1, 2)))
    return out


def _train_detector(path) -> str:
    """smallcnn on 64×64 patches: true mitoses (+ jitter) vs random spots, mimics and far candidates."""
    import torch

    from medray.mitosis.patches import extract_patches, nearest_distance
    from medray.mitosis.proposals import propose
    from medray.models.bundle import save_bundle
    from medray.models.preprocess import Preprocessing, to_tensor
    from medray.models.registry import ModelSpec, build_model

    rng = np.random.default_rng(0)
    pos, neg = [], []
    for rgb, truth, mimics in _fields(1, 4):
        pos.append(extract_patches(rgb, np.concatenate([truth] + [truth + rng.uniform(-6, 6, truth.shape)
                                                                 for _ in range(6)])))
        cand = propose(rgb)
        spots = rng.uniform(0, rgb.shape[0], (30, 2))
        others = np.concatenate([spots, cand, mimics])
        neg.append(extract_patches(rgb, others[nearest_distance(others, truth) > 30]))
    x = np.concatenate(pos + neg)
    y = np.concatenate([np.ones(sum(map(len, pos))), np.zeros(sum(map(len, neg)))]).astype(np.int64)
    torch.manual_seed(0)
    spec = ModelSpec(name="smallcnn", num_classes=2)
    prep = Preprocessing(size=64)
    model = build_model(spec)
    xt, yt = to_tensor(x, prep), torch.from_numpy(y)
    weight = torch.tensor([1.0, float((y == 0).sum() / max(1, (y == 1).sum()))])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(6):
        for idx in torch.randperm(len(yt)).split(32):
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx], weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
    from medray.serve.demo_models import _recalibrate_batchnorm

    _recalibrate_batchnorm(model, xt)
    return save_bundle(str(path), model.eval(), spec, ["normal", "mitosis"], prep, threshold=0.5)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return _train_detector(tmp_path_factory.mktemp("serve-mitosis") / "model")


@pytest.fixture(scope="module")
def client(ray_cluster, model):
    import httpx
    from ray import serve

    from medray.serve.app import build_app
    from medray.serve.config import AppArgs

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = AppArgs(mitosis={"model_uri": model, "max_upload_bytes": LIMIT, "max_image_pixels": MAX_PIXELS})
    serve.run(build_app(args), name=APP, route_prefix="/")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
        yield http
    serve.delete(APP)
    serve.shutdown()


def _post(client, data: bytes, name="hpf.png", ctype="image/png", **params):
    return client.post("/mitosis/detect", files={"file": (name, data, ctype)}, params=params)


def _tiff(rgb: np.ndarray) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, rgb, photometric="rgb", compression="zlib")
    return buf.getvalue()


@pytest.mark.slow
def test_detect_finds_most_true_mitoses(client, model):
    from medray.mitosis.matching import match_detections

    version = client.get("/models").json()["models"]["mitosis"]["version"]
    found = total = false_pos = 0
    for rgb, truth, _ in _fields(7, 2):
        r = _post(client, encode_image(rgb, "png"))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_version"] == version == r.headers["x-model-version"] and body["threshold"] == 0.5
        assert body["count"] == len(body["mitoses"]) and body["image"] == {"width": 512, "height": 512}
        assert [m["probability"] for m in body["mitoses"]] == sorted((m["probability"] for m in body["mitoses"]),
                                                                     reverse=True)
        assert all(m["probability"] >= 0.5 for m in body["mitoses"])
        det = np.array([[m["x"], m["y"]] for m in body["mitoses"]]).reshape(-1, 2)
        match = match_detections(det, truth, 30.0)
        found, total, false_pos = found + match.tp, total + len(truth), false_pos + match.fp
        # the same field as TIFF gives the same answer
        tif = _post(client, _tiff(rgb), "hpf.tif", "image/tiff").json()
        assert tif["mitoses"] == body["mitoses"]
    assert found >= 0.7 * total, (found, total)
    assert false_pos <= total, (false_pos, total)


def test_threshold_override_and_jpeg(client):
    rgb = _fields(7, 1)[0][0]
    data = encode_image(rgb, "jpeg")
    low = _post(client, data, "hpf.jpg", "image/jpeg", threshold=0.05).json()
    high = _post(client, data, "hpf.jpg", "image/jpeg", threshold=0.99).json()
    assert low["threshold"] == 0.05 and high["threshold"] == 0.99 and low["count"] >= 1
    assert all(m["probability"] >= 0.99 for m in high["mitoses"])
    assert all(m["probability"] >= 0.05 for m in low["mitoses"]) and low["candidates"] > low["count"]


@pytest.mark.parametrize("case, status, error, match", [
    ("corrupt_png", 400, "corrupt_input", "claims to be png"),
    ("truncated_png", 400, "corrupt_input", "hpf.png: corrupt or truncated png"),
    ("corrupt_tiff", 400, "corrupt_input", "hpf.tif: corrupt or truncated tiff"),
    ("empty", 400, "corrupt_input", "empty upload"),
    ("text", 415, "unsupported_media_type", "accepts png, jpeg, tiff"),
    ("gif", 415, "unsupported_media_type", "not a supported file type"),
    ("too_many_pixels", 413, "payload_too_large", "over this endpoint's max_image_pixels=1048576"),
])
def test_bad_uploads(client, case, status, error, match):
    png = encode_image(np.full((64, 64, 3), 200, np.uint8), "png")
    data, name, ctype = {
        "corrupt_png": (b"\x00garbage" * 20, "hpf.png", "image/png"),
        "truncated_png": (png[: len(png) // 2], "hpf.png", "image/png"),
        "corrupt_tiff": (b"II*\x00" + b"\x07" * 64, "hpf.tif", "image/tiff"),
        "empty": (b"", "hpf.png", "image/png"),
        "text": (b"notes", "notes.txt", "text/plain"),
        "gif": (b"GIF89a" + b"\x00" * 50, "x.gif", "image/gif"),
        "too_many_pixels": (encode_image(np.zeros((1100, 1000, 3), np.uint8), "png"), "big.png", "image/png"),
    }[case]
    r = _post(client, data, name, ctype)
    assert r.status_code == status, r.text
    assert r.json()["error"] == error and match in r.json()["detail"], r.json()


def test_upload_over_the_byte_limit_is_413(client):
    r = _post(client, b"\x89PNG\r\n\x1a\n" + b"\x00" * LIMIT)
    assert r.status_code == 413 and f"upload limit of {LIMIT} bytes" in r.json()["detail"]


def test_models_lists_the_mitosis_model(client, model):
    card = client.get("/models").json()["models"]["mitosis"]
    assert card["uri"] == model and card["classes"] == ["normal", "mitosis"] and card["patch_size"] == 64
    assert "/mitosis/detect" in client.get("/openapi.json").json()["paths"]

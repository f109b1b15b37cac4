"""Upload checks and decoding for the inference app: file kind by content, 400 vs 415, model-ready arrays,
and the body-size middleware on a real ASGI app (Starlette test client, no Serve needed)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from medray.datasets.codec import encode_image
from medray.models.preprocess import Preprocessing
from medray.serve.errors import CorruptInput, UnsupportedMediaType
from medray.serve.uploads import BodySizeLimit, decode_for_model, sniff, upload_kind
from medray.synth import ct

CT2D = Preprocessing(spatial_dims=2, channels=1, size=32, mean=[0.5], std=[0.5], info={"window": "lung"})
RGB = Preprocessing(spatial_dims=2, channels=3, size=32)
CT3D = Preprocessing(spatial_dims=3, channels=1, size=(8, 16, 16), mean=[0.5], std=[0.5], scale=1.0,
                     info={"hu_clip": [-1000.0, 400.0]})


def _slice(severity=0.0, size=48):
    return ct.render_slice(size, severity, np.random.default_rng(0))


def _dicom(hu):
    return ct.dicom_bytes(hu, "p1", 0, 0.7, 0)


def _nifti():
    volume = ct.render_volume((16, 16, 8), (1.0, 1.0, 2.5), 2.0, np.random.default_rng(1))
    return ct.nifti_bytes(volume, (1.0, 1.0, 2.5), 1)


def test_sniff_by_magic_bytes():
    grey = np.zeros((8, 8), np.uint8)
    assert sniff(encode_image(grey, "png")) == "png"
    assert sniff(encode_image(np.zeros((8, 8, 3), np.uint8), "jpeg")) == "jpeg"
    assert sniff(_dicom(_slice())) == "dicom"
    assert sniff(_nifti()) == "nifti"
    assert sniff(b"GIF89a....") is None


def test_png_becomes_uint8_hwc_at_model_size():
    hu = _slice()
    png = ct.png_bytes(hu)
    sample, kind = decode_for_model(png, "s.png", "image/png", CT2D)
    assert kind == "png" and sample.shape == (32, 32, 1) and sample.dtype == np.uint8


def test_dicom_is_windowed_like_the_png_of_the_same_slice():
    hu = _slice(4.0)
    from_dicom, kind = decode_for_model(_dicom(hu), "s.dcm", "application/dicom", CT2D)
    from_png, _ = decode_for_model(ct.png_bytes(hu), "s.png", "image/png", CT2D)
    assert kind == "dicom"
    # same lung window; DICOM stores rounded HU, so allow one grey level after resizing
    assert np.abs(from_dicom.astype(int) - from_png.astype(int)).max() <= 2


def test_rgb_model_gets_three_channels():
    rgb = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    sample, kind = decode_for_model(encode_image(rgb, "jpeg"), "x.jpg", "image/jpeg", RGB)
    assert kind == "jpeg" and sample.shape == (32, 32, 3) and sample.dtype == np.uint8


def test_nifti_for_3d_model_is_resampled_and_scaled():
    sample, kind = decode_for_model(_nifti(), "v.nii.gz", "application/gzip", CT3D)
    assert kind == "nifti" and sample.shape == (1, 8, 16, 16) and sample.dtype == np.float32
    assert 0.0 <= sample.min() and sample.max() <= 1.0 and sample.max() > 0.5  # body tissue near 1


def test_model_kind_mismatch_is_415():
    with pytest.raises(UnsupportedMediaType, match="nifti file; this endpoint's model accepts png, jpeg, dicom"):
        decode_for_model(_nifti(), "v.nii.gz", None, CT2D)
    with pytest.raises(UnsupportedMediaType, match="png file; this endpoint's model accepts nifti"):
        decode_for_model(ct.png_bytes(_slice()), "s.png", "image/png", CT3D)
    with pytest.raises(UnsupportedMediaType, match="dicom file; this endpoint's model accepts png, jpeg"):
        decode_for_model(_dicom(_slice()), "s.dcm", None, RGB)


def test_unknown_type_is_415_but_a_broken_known_type_is_400():
    with pytest.raises(UnsupportedMediaType, match=r"notes.txt \(text/plain\) is not a supported file type"):
        upload_kind(b"hello", "notes.txt", "text/plain", ("png", "jpeg"))
    with pytest.raises(CorruptInput, match="claims to be png but its bytes are not"):
        upload_kind(b"hello", "x.png", "image/png", ("png", "jpeg"))
    with pytest.raises(CorruptInput, match="empty upload"):
        upload_kind(b"", "x.png", "image/png", ("png",))


def test_truncated_files_are_400():
    png = ct.png_bytes(_slice())
    with pytest.raises(CorruptInput, match="s.png"):
        decode_for_model(png[: len(png) // 2], "s.png", "image/png", CT2D)
    with pytest.raises(CorruptInput, match="v.nii.gz"):
        decode_for_model(_nifti()[:300], "v.nii.gz", None, CT3D)
    dicom = _dicom(_slice())
    with pytest.raises(CorruptInput, match="s.dcm"):
        decode_for_model(dicom[:400], "s.dcm", None, CT2D)


# --------------------------------------------------------------------------- body limits

class LimitedClient:
    """POSTs to ``BodySizeLimit`` around an echo app in this process, through httpx's ASGI
    transport (Starlette's TestClient warns that its httpx support is deprecated)."""

    def __init__(self, app) -> None:
        self.app = app

    def post(self, path: str, content):
        import asyncio

        import httpx

        async def send():
            body = content
            if not isinstance(content, bytes):  # chunked: an async stream, no Content-Length
                chunks = list(content)

                async def stream():
                    for chunk in chunks:
                        yield chunk
                body = stream()
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://test") as client:
                return await client.post(path, content=body)

        return asyncio.run(send())


@pytest.fixture
def limited_client():
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def echo(request: Request):
        return JSONResponse({"size": len(await request.body())})

    app = Starlette(routes=[Route("/ct/classify", echo, methods=["POST"]), Route("/other", echo, methods=["POST"])])
    return LimitedClient(BodySizeLimit(app, {"/ct/": 1000}, default_limit=100))


def test_body_under_limit_is_replayed_to_the_app(limited_client):
    assert limited_client.post("/ct/classify", content=b"x" * 1000).json() == {"size": 1000}


def test_declared_length_over_limit_is_413(limited_client):
    r = limited_client.post("/ct/classify", content=b"x" * 1001)
    assert r.status_code == 413
    assert r.json()["error"] == "payload_too_large"
    assert "Content-Length 1001 bytes is over this endpoint's upload limit of 1000 bytes" in r.json()["detail"]
    assert limited_client.post("/other", content=b"x" * 101).status_code == 413  # default limit


def test_streamed_body_over_limit_is_413(limited_client):
    r = limited_client.post("/ct/classify", content=iter([b"x" * 600, b"x" * 600]))  # chunked, no length
    assert r.status_code == 413 and "body of more than 1200 bytes" in r.json()["detail"]
    assert limited_client.post("/ct/classify", content=iter([b"x" * 500, b"x" * 500])).json() == {"size": 1000}

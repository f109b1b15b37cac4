"""Uploads: size limits (header and streamed body), file type by content, decoding to model input.

``decode_for_model`` turns one uploaded file into exactly what ``preprocess.to_tensor`` takes for
the model's ``Preprocessing``: 2D → uint8 H×W×C at the model's size (as training streams it),
3D → float32 C×D×H×W with ``x * scale`` in [0, 1] (NIfTI clipped to the HU range, resampled).
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from medray.errors import DataError
from medray.models.preprocess import Preprocessing
from medray.serve.errors import CorruptInput, PayloadTooLarge, UnsupportedMediaType, error_response

# kind → (extensions, content types) that claim it
CLAIMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "png": ((".png",), ("image/png",)),
    "jpeg": ((".jpg", ".jpeg"), ("image/jpeg", "image/jpg")),
    "dicom": ((".dcm", ".dicom"), ("application/dicom",)),
    "nifti": ((".nii", ".nii.gz"), ("application/x-nifti", "application/gzip", "application/x-gzip")),
}


def accepted_kinds(prep: Preprocessing) -> tuple[str, ...]:
    """File kinds a model can take: volumes for 3D models, images (and DICOM if grey) for 2D."""
    if prep.spatial_dims == 3:
        return ("nifti",)
    return ("png", "jpeg", "dicom") if prep.channels == 1 else ("png", "jpeg")


def sniff(data: bytes) -> str | None:
    """The file kind from its first bytes (magic numbers), or None if not one we read."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if data[:2] == b"\x1f\x8b":
        return "nifti"  # gzip: only NIfTI is read gzipped; the loader rejects anything else
    if len(data) >= 348 and data[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "nifti"
    if len(data) >= 8 and data[4:8] == b"n+2\x00" and struct.unpack("<i", data[:4])[0] == 540:
        return "nifti"
    return None


def claimed_kind(filename: str | None, content_type: str | None) -> str | None:
    """The kind a file's name or declared content type claims (None if neither names one)."""
    name = (filename or "").lower()
    ctype = (content_type or "").split(";")[0].strip().lower()
    for kind, (exts, ctypes) in CLAIMS.items():
        if any(name.endswith(e) for e in exts) or ctype in ctypes:
            return kind
    return None


def upload_kind(data: bytes, filename: str | None, content_type: str | None,
                accepted: tuple[str, ...]) -> str:
    """Decide the kind of an upload: 415 for a type the model cannot take, 400 for a broken one."""
    label = filename or "upload"
    if not data:
        raise CorruptInput(f"{label}: empty upload")
    kind = sniff(data)
    if kind is None:
        claimed = claimed_kind(filename, content_type)
        if claimed is None or claimed not in accepted:
            raise UnsupportedMediaType(
                f"{label} ({content_type or 'no content type'}) is not a supported file type; "
                f"this endpoint accepts {', '.join(accepted)}")
        raise CorruptInput(f"{label}: claims to be {claimed} but its bytes are not a {claimed} file "
                           "(corrupt or wrongly named)")
    if kind not in accepted:
        raise UnsupportedMediaType(f"{label} is a {kind} file; this endpoint's model accepts "
                                   f"{', '.join(accepted)}")
    return kind


# --------------------------------------------------------------------------- decoding

def _resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a uint8 H×W×C image to (H, W)."""
    if image.shape[:2] == tuple(shape):
        return image
    from PIL import Image

    planes = [np.asarray(Image.fromarray(image[..., c]).resize((shape[1], shape[0]), Image.BILINEAR))
              for c in range(image.shape[2])]
    return np.stack(planes, axis=-1)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint16:
        return (image.astype(np.uint32) // 257).astype(np.uint8)
    return image.astype(np.uint8)


def decode_image_2d(data: bytes, kind: str, prep: Preprocessing, label: str) -> np.ndarray:
    """PNG/JPEG/DICOM → uint8 H×W×C at the model's size (DICOM windowed by ``prep.info['window']``)."""
    from medray.datasets.loaders import load_dicom, load_png, window

    if kind == "dicom":
        unit = window(load_dicom(data, name=label), prep.info.get("window", "lung"))
        image = np.round(unit * 255).astype(np.uint8)
    else:
        image = _to_uint8(load_png(data, 1 if prep.channels == 1 else 3, name=label))
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] != prep.channels:
        image = np.repeat(image[..., :1], prep.channels, axis=-1)
    return np.ascontiguousarray(_resize(image, prep.shape))


def decode_volume(data: bytes, prep: Preprocessing, label: str) -> np.ndarray:
    """NIfTI → float32 C×D×H×W at the model's shape, HU clipped to ``prep.info['hu_clip']``."""
    from medray.datasets.loaders import load_nifti

    low, high = prep.info.get("hu_clip", (-1000.0, 400.0))
    volume = load_nifti(data, (low, high), None, tuple(prep.shape), name=label)
    unit = (volume - np.float32(low)) / np.float32(high - low)
    out = unit / np.float32(prep.scale)
    if prep.channels > 1:
        out = np.repeat(out, prep.channels, axis=0)
    return np.ascontiguousarray(out, dtype=np.float32)


def decode_for_model(data: bytes, filename: str | None, content_type: str | None,
                     prep: Preprocessing) -> tuple[np.ndarray, str]:
    """One upload → (model-ready sample, kind); typed errors (400/415) for anything else."""
    label = filename or "upload"
    kind = upload_kind(data, filename, content_type, accepted_kinds(prep))
    try:
        if kind == "nifti":
            return decode_volume(data, prep, label), kind
        return decode_image_2d(data, kind, prep, label), kind
    except DataError as err:
        raise CorruptInput(str(err)) from None


# --------------------------------------------------------------------------- size limits

class BodySizeLimit:
    """ASGI middleware: 413 when Content-Length or the streamed body exceeds the route's limit.

    The body (at most the limit) is buffered here, then replayed to the app, so a chunked upload
    without Content-Length is cut off as soon as it passes the limit.
    """

    def __init__(self, app: Any, limits: dict[str, int], default_limit: int) -> None:
        self.app = app
        self.limits = sorted(limits.items(), key=lambda kv: len(kv[0]), reverse=True)
        self.default_limit = default_limit

    def limit_for(self, path: str) -> int:
        for prefix, limit in self.limits:
            if path.startswith(prefix):
                return limit
        return self.default_limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = -1
            if size < 0:
                await error_response(400, "bad_request", f"invalid Content-Length {declared!r}")(
                    scope, receive, send)
                return
            if size > limit:
                await self._too_large(scope, receive, send, f"Content-Length {size} bytes", limit)
                return
        chunks: list[bytes] = []
        total = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > limit:
                await self._too_large(scope, receive, send, f"body of more than {total} bytes", limit)
                return
            chunks.append(body)
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _too_large(scope, receive, send, what: str, limit: int) -> None:
        detail = f"{what} is over this endpoint's upload limit of {limit} bytes ({limit / 2**20:.1f} MiB)"
        await error_response(413, PayloadTooLarge.code, detail, {"Connection": "close"})(scope, receive, send)

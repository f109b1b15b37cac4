"""Mitosis detection deployment: one HPF upload → proposals → 64×64 patch classifier → clustering.

The per-image pipeline is ``medray.mitosis.scoring.run_approach("proposals", ...)``, the same one
the batch job (``mitosis/detect.py``) runs; this module only decodes uploads and shapes the answer.
"""

from __future__ import annotations

import asyncio
import io
import os
from typing import Any

import numpy as np
from ray import serve

from medray.config.common import StorageOptions
from medray.serve.config import MitosisArgs
from medray.serve.errors import CorruptInput, PayloadTooLarge, UnsupportedMediaType

KINDS = {"png": ((".png",), ("image/png",)), "jpeg": ((".jpg", ".jpeg"), ("image/jpeg", "image/jpg")),
         "tiff": ((".tif", ".tiff"), ("image/tiff", "image/tif"))}


def sniff_image(data: bytes) -> str | None:
    """png / jpeg / tiff from the magic bytes, else None."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    return None


def hpf_kind(data: bytes, filename: str | None, content_type: str | None) -> str:
    """The upload's image kind; 415 for other types, 400 for empty or mislabelled bytes."""
    label = filename or "upload"
    if not data:
        raise CorruptInput(f"{label}: empty upload")
    kind = sniff_image(data)
    if kind is not None:
        return kind
    name = (filename or "").lower()
    ctype = (content_type or "").split(";")[0].strip().lower()
    claimed = next((k for k, (exts, ctypes) in KINDS.items() if name.endswith(exts) or ctype in ctypes), None)
    if claimed is None:
        raise UnsupportedMediaType(f"{label} ({content_type or 'no content type'}) is not a supported file type; "
                                   "this endpoint accepts png, jpeg, tiff")
    raise CorruptInput(f"{label}: claims to be {claimed} but its bytes are not a {claimed} file "
                       "(corrupt or wrongly named)")


def _check_pixels(width: int, height: int, limit: int, label: str) -> None:
    if width * height > limit:
        raise PayloadTooLarge(f"{label} is {width}x{height} = {width * height} pixels, over this endpoint's "
                              f"max_image_pixels={limit}; send one high-power field, not a slide")


def _to_rgb(image: np.ndarray, label: str) -> np.ndarray:
    if image.dtype == np.uint16:
        image = (image.astype(np.uint32) // 257).astype(np.uint8)
    if image.dtype != np.uint8:
        raise CorruptInput(f"{label}: pixels of type {image.dtype} are not supported; send 8-bit RGB")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise CorruptInput(f"{label}: expected an RGB image, got shape {image.shape}")
    return np.ascontiguousarray(image[..., :3])


def decode_hpf(data: bytes, filename: str | None, content_type: str | None, max_pixels: int) -> np.ndarray:
    """One upload → RGB uint8 (H, W, 3); 400 corrupt, 413 too many pixels, 415 wrong type."""
    label = filename or "upload"
    kind = hpf_kind(data, filename, content_type)
    try:
        if kind == "tiff":
            import tifffile

            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                shape = tif.pages[0].shape
                _check_pixels(int(shape[1]), int(shape[0]), max_pixels, label)
                image = tif.pages[0].asarray()
        else:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as img:
                _check_pixels(img.width, img.height, max_pixels, label)
                image = np.asarray(img.convert("RGB"))
    except (PayloadTooLarge, CorruptInput):
        raise
    except Exception as err:  # noqa: BLE001 - PIL/tifffile raise many types for broken files
        raise CorruptInput(f"{label}: corrupt or truncated {kind} ({type(err).__name__}: {err})") from None
    return _to_rgb(image, label)


def mitosis_config(args: MitosisArgs):
    """The ``MitosisConfig`` slice ``run_approach`` reads: proposals, patch size, clustering, batch."""
    from medray.mitosis.config import MitosisConfig

    return MitosisConfig(proposals=args.proposals, patches={"size": args.patch_size},
                         clustering={"distance": args.cluster_distance},
                         detect={"batch_size": args.batch_size, "threshold": args.threshold})


def detections_body(result: dict, threshold: float, model: Any, shape: tuple[int, ...]) -> dict[str, Any]:
    """The JSON answer: mitoses (x, y in image pixels, best first), count, threshold, model version."""
    mitoses = [{"x": round(float(x), 2), "y": round(float(y), 2), "probability": round(float(p), 6)}
               for (x, y), p in zip(result["detections"], result["det_probs"])]
    return {"mitoses": mitoses, "count": len(mitoses), "threshold": float(threshold),
            "model_version": model.version, "model": {"uri": model.uri, "version": model.version},
            "image": {"width": int(shape[1]), "height": int(shape[0])}, "candidates": int(result["tiles"]),
            "seconds": {k: round(float(v), 4) for k, v in result["seconds"].items()}}


@serve.deployment(name="MitosisDetector", max_ongoing_requests=8, ray_actor_options={"num_cpus": 0.5})
class MitosisDetector:
    """Holds the mitosis patch classifier; ``detect`` runs the whole per-image pipeline."""

    def __init__(self, args: MitosisArgs, storage: StorageOptions | None = None,
                 mlflow_tracking_uri: str | None = None) -> None:
        from medray.models.bundle import load_model
        from medray.serve.classifier import resolve_device

        if mlflow_tracking_uri:
            os.environ["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri
        self.args = args
        self.model = load_model(args.model_uri, storage, device=resolve_device(args.device))
        self.cfg = mitosis_config(args)

    async def detect(self, data: bytes, filename: str | None = None, content_type: str | None = None,
                     threshold: float | None = None) -> dict[str, Any]:
        from medray.mitosis.scoring import model_threshold, run_approach

        rgb = decode_hpf(data, filename, content_type, self.args.max_image_pixels)
        cut = model_threshold(self.model, threshold if threshold is not None else self.args.threshold)
        result = await asyncio.get_running_loop().run_in_executor(
            None, lambda: run_approach("proposals", rgb, self.model, self.cfg, cut))
        return detections_body(result, cut, self.model, rgb.shape)

    def describe(self) -> dict[str, Any]:
        m = self.model
        return {"endpoint": "mitosis", "uri": m.uri, "version": m.version, "model": m.spec.name,
                "classes": list(m.classes), "preprocessing": m.preprocessing.model_dump(mode="json"),
                "threshold": self.args.threshold if self.args.threshold is not None else None,
                "patch_size": self.args.patch_size, "proposals": self.args.proposals.model_dump(mode="json"),
                "cluster_distance": self.args.cluster_distance, "device": str(m.device)}

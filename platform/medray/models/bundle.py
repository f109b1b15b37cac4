"""A model bundle: weights plus everything needed to use them (spec, classes, preprocessing, threshold).

This is how a trained model travels from trainer to batch scorer to Serve: a folder with
``model.pt`` (state dict) and ``bundle.json``, or an MLflow model logged by ``tracking.log_model``
that carries the same ``bundle.json``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from typing import Any

import numpy as np
import torch
from torch import nn

import medray
from medray.config.common import StorageOptions
from medray.errors import MedrayError, ModelError
from medray.models.preprocess import Preprocessing, to_device_tensor
from medray.models.registry import ModelSpec, build_model
from medray.models.weights import BUNDLE_META, BUNDLE_WEIGHTS, extract_state_dict, is_mlflow_uri

BUNDLE_FORMAT = 1
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 autocast on a GPU (tensor cores), exact fp32 on the CPU; else as asked."""
    if precision not in PRECISIONS:
        raise ModelError(f"precision {precision!r} is not one of {list(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP / DataParallel wrapper."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def bundle_metadata(spec: ModelSpec, classes: list[str], preprocessing: Preprocessing,
                    threshold: float | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON-able description of a model stored as ``bundle.json`` (and as MLflow metadata)."""
    if len(classes) != spec.num_classes:
        raise ModelError(f"{len(classes)} class names {classes} for a model with num_classes={spec.num_classes}")
    return {
        "format": BUNDLE_FORMAT,
        "medray_version": medray.__version__,
        "spec": spec.model_dump(mode="json"),
        "classes": list(classes),
        "preprocessing": preprocessing.model_dump(mode="json"),
        "threshold": None if threshold is None else float(threshold),
        "extra": dict(extra or {}),
    }


def save_bundle(directory: str, model: nn.Module, spec: ModelSpec, classes: list[str],
                preprocessing: Preprocessing, threshold: float | None = None,
                extra: dict[str, Any] | None = None, storage: StorageOptions | None = None) -> str:
    """Write ``model.pt`` then ``bundle.json`` (last, so a folder with it is complete); returns ``directory``."""
    from medray.storage import atomic_write_bytes, join_uri

    meta = bundle_metadata(spec, classes, preprocessing, threshold, extra)
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    meta["weights_sha256"] = hashlib.sha256(data).hexdigest()
    atomic_write_bytes(join_uri(directory, BUNDLE_WEIGHTS), data, storage)
    atomic_write_bytes(join_uri(directory, BUNDLE_META), json.dumps(meta, indent=2).encode(), storage)
    return directory


class LoadedModel:
    """A ready-to-use model (eval mode) with its spec, classes, preprocessing and threshold."""

    def __init__(self, model: nn.Module, meta: dict[str, Any], uri: str, version: str) -> None:
        self.model = model.eval()
        self.spec = ModelSpec.model_validate(meta["spec"])
        self.classes: list[str] = list(meta["classes"])
        self.preprocessing = Preprocessing.model_validate(meta["preprocessing"])
        self.threshold: float | None = meta.get("threshold")
        self.extra: dict[str, Any] = dict(meta.get("extra") or {})
        self.uri = uri
        self.version = str(version)
        self.device = torch.device("cpu")
        self.precision = "fp32"

    def to(self, device: str | torch.device, precision: str = "auto") -> "LoadedModel":
        """Move to ``device``; on a GPU, 2D models go channels-last and run under ``precision`` autocast."""
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model.to(self.device)
        if self.device.type == "cuda" and self.preprocessing.spatial_dims == 2:
            self.model.to(memory_format=torch.channels_last)
        return self

    def predict_proba(self, batch: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Raw pixels (as ``preprocess.to_tensor`` takes them) → softmax probabilities (N, num_classes)."""
        arr = np.asarray(batch)
        out = []
        with torch.inference_mode():
            for start in range(0, max(len(arr), 1), batch_size):
                chunk = arr[start:start + batch_size]
                if len(chunk) == 0:
                    break
                x = to_device_tensor(chunk, self.preprocessing, self.device)
                amp = _AMP_DTYPES.get(self.precision)
                with torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
                    logits = self.model(x)
                out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        if not out:
            return np.zeros((0, len(self.classes)), np.float32)
        return np.concatenate(out)

    def __repr__(self) -> str:
        return f"LoadedModel({self.spec.name}, classes={self.classes}, uri={self.uri!r}, version={self.version})"


def _build(meta: dict[str, Any], state: dict[str, torch.Tensor], uri: str) -> nn.Module:
    spec = ModelSpec.model_validate({**meta["spec"], "pretrained": None})
    model = build_model(spec)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelError(f"weights in {uri!r} do not fit its own spec {spec.name}: {err}") from None
    return model


def _load_bundle_dir(uri: str, storage: StorageOptions | None) -> LoadedModel:
    from medray.storage import join_uri, local_copy, read_bytes

    try:
        raw = read_bytes(join_uri(uri, BUNDLE_META), storage)
    except MedrayError:
        raise ModelError(f"cannot load model {uri!r}: no {BUNDLE_META} there (not a medray bundle "
                         "folder, or the job writing it has not finished); use a bundle folder, "
                         "models:/<name>/<version|@alias> or runs:/<run_id>/<name>") from None
    meta = json.loads(raw)
    path = local_copy(join_uri(uri, BUNDLE_WEIGHTS), storage)
    state = extract_state_dict(torch.load(path, map_location="cpu", weights_only=True), uri)
    version = (meta.get("weights_sha256") or "")[:12] or "unknown"
    return LoadedModel(_build(meta, state, uri), meta, uri, version)


def _mlflow_version(uri: str, info: Any) -> str:
    """Registered version for models:/name/..., else the run id (or logged model id)."""
    from mlflow import MlflowClient

    body = uri[len("models:/"):] if uri.startswith("models:/") else ""
    if "@" in body:
        name, alias = body.split("@", 1)
        return str(MlflowClient().get_model_version_by_alias(name.rstrip("/"), alias).version)
    parts = body.split("/")
    if len(parts) == 2 and parts[1]:
        if parts[1].isdigit():
            return parts[1]
        return str(MlflowClient().get_latest_versions(parts[0], stages=[parts[1]])[0].version)
    return str(info.run_id or info.model_id or uri)


def _load_mlflow(uri: str) -> LoadedModel:
    import mlflow
    import mlflow.pytorch

    try:
        info = mlflow.models.get_model_info(uri)
        with tempfile.TemporaryDirectory(prefix="medray-model-") as tmp:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
            meta_path = os.path.join(local, "extra_files", BUNDLE_META)
            if os.path.isfile(meta_path):
                with open(meta_path) as f:
                    meta = json.load(f)
            elif info.metadata and "medray_bundle" in info.metadata:
                meta = info.metadata["medray_bundle"]
            else:
                raise ModelError(f"MLflow model {uri!r} carries no medray {BUNDLE_META}; log it with "
                                 "medray.train.tracking.log_model")
            module = mlflow.pytorch.load_model(local, map_location="cpu")
        version = _mlflow_version(uri, info)
    except ModelError:
        raise
    except Exception as err:  # MlflowException, OSError, ...: name the URI and why
        raise ModelError(f"cannot load MLflow model {uri!r}: {type(err).__name__}: {err}") from None
    return LoadedModel(_build(meta, extract_state_dict(module, uri), uri), meta, uri, version)


def load_model(uri: str, storage: StorageOptions | None = None, device: str = "cpu",
               precision: str = "auto") -> LoadedModel:
    """Load a bundle folder (local or s3://), ``models:/name/version|@alias`` or ``runs:/id/name``.

    ``precision`` applies on a GPU only (``auto`` = bf16 autocast there); the CPU always runs fp32.
    """
    uri = str(uri)
    loaded = _load_mlflow(uri) if is_mlflow_uri(uri) else _load_bundle_dir(uri, storage)
    return loaded.to(device, precision)

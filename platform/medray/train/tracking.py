"""MLflow tracking for medray runs: store setup, flat params, data lineage, code version, models.

Callers log from rank 0 only. Models are logged in MLflow's pickle format (any input size) and
carry the medray bundle metadata, so ``medray.models.bundle.load_model("models:/name/1")`` rebuilds
the model with its classes, preprocessing and threshold.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
import warnings
from typing import Any, Mapping

import numpy as np

import medray
from medray.config.common import MlflowOptions
from medray.errors import ModelError

log = logging.getLogger(__name__)

MAX_PARAM_VALUE = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_KEY = 250
MAX_BATCH = 100


def configure(mlflow_opts: MlflowOptions) -> str:
    """Point MLflow at the tracking store and experiment (created with its artifact root if new)."""
    import mlflow

    uri = mlflow_opts.resolved_tracking_uri()
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(mlflow_opts.experiment)
    if experiment is None:
        mlflow.create_experiment(mlflow_opts.experiment, artifact_location=mlflow_opts.artifact_location)
    elif mlflow_opts.artifact_location and experiment.artifact_location.rstrip("/") != \
            mlflow_opts.artifact_location.rstrip("/"):
        log.warning("experiment %r already exists with artifact root %s; artifact_location %s is ignored",
                    mlflow_opts.experiment, experiment.artifact_location, mlflow_opts.artifact_location)
    mlflow.set_experiment(mlflow_opts.experiment)
    return uri


def flatten(config: Any, prefix: str = "") -> dict[str, str]:
    """Nested config (pydantic model or dict) → {"a.b.c": "value"} with values as strings."""
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    out: dict[str, str] = {}
    if isinstance(config, Mapping):
        for key, value in config.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, Mapping) or hasattr(value, "model_dump"):
                out.update(flatten(value, name))
            else:
                out[name] = value if isinstance(value, str) else json.dumps(value)
    else:
        out[prefix or "value"] = json.dumps(config)
    return out


def log_params_flat(config: Any) -> dict[str, str]:
    """Log a nested config as dotted params, values truncated to MLflow's limits; returns them."""
    import mlflow

    params = {k[:MAX_KEY]: v[:MAX_PARAM_VALUE] for k, v in flatten(config).items()}
    items = list(params.items())
    for start in range(0, len(items), MAX_BATCH):
        mlflow.log_params(dict(items[start:start + MAX_BATCH]))
    return params


def _log_dataset_input(info: Any, splits: Mapping[str, list[str]]) -> bool:
    """Record the dataset as an MLflow run input (one per split); False when the source is unsupported."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "can be interpreted in multiple ways" for local paths
            source = resolve_dataset_source(info.uri)
    except Exception as err:  # no MLflow source type for this URI scheme: lineage stays in tags
        log.info("dataset %s not logged as an MLflow input: %s", info.uri, err)
        return False
    name = os.path.basename(str(info.uri).rstrip("/")) or "dataset"
    for split in splits:
        mlflow.log_input(MetaDataset(source, name=f"{name}:{split}", digest=str(info.fingerprint)[:36]),
                         context=split)
    return True


def log_lineage(info: Any, splits: Mapping[str, list[str]], counts: Mapping[str, Any]) -> dict[str, Any]:
    """Which data trained the model: dataset URI + fingerprint, groups and class counts per split.

    Tags/params hold the summary; ``lineage.json`` holds the full group lists.
    """
    import mlflow

    lineage = {
        "dataset_uri": info.uri, "fingerprint": info.fingerprint, "kind": info.kind,
        "classes": list(info.classes), "num_rows": info.num_rows,
        "splits": {name: sorted(groups) for name, groups in splits.items()},
        "counts": {name: dict(c) if isinstance(c, Mapping) else c for name, c in counts.items()},
    }
    mlflow.set_tags({"medray.dataset.uri": info.uri, "medray.dataset.fingerprint": info.fingerprint,
                     "medray.dataset.kind": info.kind})
    params = {"data.uri": info.uri, "data.fingerprint": info.fingerprint,
              "data.classes": json.dumps(list(info.classes))}
    for name, groups in splits.items():
        params[f"data.{name}.groups"] = str(len(groups))
        split_counts = counts.get(name)
        if isinstance(split_counts, Mapping):
            for cls, n in split_counts.items():
                params[f"data.{name}.n_{cls}"] = str(n)
    log_params_flat(params)
    mlflow.log_dict(lineage, "lineage.json")
    lineage["mlflow_input"] = _log_dataset_input(info, splits)
    return lineage


def code_version() -> str:
    """Git commit of the medray checkout (``-dirty`` with local changes), else the medray version."""
    here = os.path.dirname(os.path.abspath(medray.__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return medray.__version__
    return f"{sha}-dirty" if dirty else (sha or medray.__version__)


MODEL_PACKAGES = ("torch", "monai", "numpy", "cloudpickle", "mlflow")  # what unpickling a medray network imports


def model_requirements() -> list[str]:
    """Pinned pip requirements of a logged medray model, from this environment: the packages its
    pickled network needs and medray itself (its classes are medray's or MONAI's).

    Given explicitly because MLflow's inference of them loads the model in a fresh Python process
    (~11 s per logged model here) and still misses MONAI. Local version labels (``+cpu``) are
    dropped so the pins install from PyPI.
    """
    from importlib import metadata

    pins = []
    for name in MODEL_PACKAGES:
        try:
            pins.append(f"{name}=={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:  # not installed: the model cannot need it
            continue
    return pins + [f"medray=={medray.__version__}"]


def _model_input(example: np.ndarray, preprocessing: Any) -> np.ndarray:
    """The network's input for ``example``: raw pixels go through ``to_tensor``; NC[D]HW floats pass."""
    from medray.models.preprocess import to_tensor

    arr = np.asarray(example)
    channels_first = arr.ndim == preprocessing.spatial_dims + 2 and arr.shape[1] == preprocessing.channels
    if arr.dtype == np.float32 and channels_first and (preprocessing.spatial_dims == 3 or
                                                       arr.shape[-1] != preprocessing.channels):
        return arr
    return to_tensor(arr, preprocessing).numpy()


def log_model(model: Any, spec: Any, classes: list[str], preprocessing: Any, threshold: float | None,
              registered_name: str | None, input_example: np.ndarray, name: str = "model",
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Log ``model`` (pickle format) with a signature and the medray bundle metadata; register it
    under ``registered_name`` when given. Returns ``{"model_uri", "version"}``.

    ``input_example``: raw pixels (as ``to_tensor`` takes them) or the network input (NC[D]HW float32).
    """
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    from medray.models.bundle import bundle_metadata, unwrap
    from medray.models.weights import BUNDLE_META

    net = unwrap(model)
    meta = bundle_metadata(spec, classes, preprocessing, threshold, extra)
    meta["code_version"] = code_version()
    x = _model_input(input_example, preprocessing)[:2]
    was_training = net.training
    net.eval()
    try:
        device = next(net.parameters()).device
        with torch.inference_mode():
            logits = net(torch.from_numpy(x).to(device)).float().cpu().numpy()
        signature = infer_signature(x, logits)
        with tempfile.TemporaryDirectory(prefix="medray-bundle-") as tmp:
            meta_path = os.path.join(tmp, BUNDLE_META)
            with open(meta_path, "w") as f:
                json.dump(meta, f, indent=2)
            info = mlflow.pytorch.log_model(
                net.cpu() if device.type != "cpu" else net, name=name, serialization_format="pickle",
                signature=signature, input_example=x, extra_files=[meta_path],
                metadata={"medray_bundle": meta}, registered_model_name=registered_name,
                pip_requirements=model_requirements())
        if device.type != "cpu":
            net.to(device)
    finally:
        net.train(was_training)
    if registered_name:
        version = info.registered_model_version
        if version is None:
            raise ModelError(f"MLflow did not register model {registered_name!r} (is the tracking store "
                             "a database or server? a plain file store cannot register models)")
        return {"model_uri": f"models:/{registered_name}/{version}", "version": str(version),
                "logged_model_uri": info.model_uri, "run_id": info.run_id}
    return {"model_uri": info.model_uri, "version": info.run_id or info.model_id,
            "logged_model_uri": info.model_uri, "run_id": info.run_id}

"""Load weights into a network from any place medray keeps them, checking keys by name.

Accepted: a state dict file (.pt/.pth/.bin), a checkpoint dict holding ``model_state_dict`` /
``state_dict`` / ``model``, DDP ``module.`` prefixes, a medray bundle folder, and MLflow
``models:/`` / ``runs:/`` URIs. Remote files go through ``medray.storage.local_copy``.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from torch import nn

from medray.config.common import StorageOptions
from medray.errors import MedrayError, ModelError

log = logging.getLogger(__name__)

CHECKPOINT_KEYS = ("model_state_dict", "state_dict", "model")
BUNDLE_WEIGHTS = "model.pt"
BUNDLE_META = "bundle.json"
_SHOWN = 10


def is_mlflow_uri(uri: str) -> bool:
    return str(uri).startswith(("models:/", "runs:/"))


def extract_state_dict(obj: Any, source: str = "weights") -> dict[str, torch.Tensor]:
    """The state dict inside ``obj`` (a state dict, a checkpoint dict or a module), ``module.`` stripped."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in CHECKPOINT_KEYS:
            if key in obj and isinstance(obj[key], (Mapping, nn.Module)):
                return extract_state_dict(obj[key], source)
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        kind = type(obj).__name__
        keys = list(obj)[:_SHOWN] if isinstance(obj, Mapping) else []
        raise ModelError(
            f"{source!r} holds no state dict (a {kind}{f' with keys {keys}' if keys else ''}); expected "
            f"a state dict or a checkpoint dict with one of {list(CHECKPOINT_KEYS)}")
    return strip_prefix(dict(obj), "module.")


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove ``prefix`` from keys when every key has it (DDP / torch.compile wrappers)."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _torch_load(path: str, source: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise ModelError(f"cannot read weights {source!r}: {type(err).__name__}: {err}") from None


def _read_mlflow(uri: str) -> dict[str, torch.Tensor]:
    import mlflow.pytorch

    try:
        module = mlflow.pytorch.load_model(uri, map_location="cpu")
    except Exception as err:  # MLflow raises MlflowException, OSError, ...
        raise ModelError(f"cannot load MLflow model {uri!r}: {err}") from None
    return extract_state_dict(module, uri)


def read_state_dict(uri: str, storage: StorageOptions | None = None) -> dict[str, torch.Tensor]:
    """Fetch the state dict ``uri`` points at (file, checkpoint, bundle folder or MLflow URI)."""
    from medray.storage import is_file, join_uri, local_copy

    uri = str(uri)
    if is_mlflow_uri(uri):
        return _read_mlflow(uri)
    try:
        target = uri if is_file(uri, storage) else join_uri(uri, BUNDLE_WEIGHTS)
        path = local_copy(target, storage)
    except MedrayError as err:
        raise ModelError(f"weights {uri!r} not found: it is neither a weight file nor a bundle folder "
                         f"with {BUNDLE_WEIGHTS} ({err})") from None
    return extract_state_dict(_torch_load(path, uri), uri)


def _short(keys: list[str]) -> str:
    more = f" ... (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return f"{len(keys)} {keys[:_SHOWN]}{more}"


def compare_keys(model: nn.Module, state: Mapping[str, torch.Tensor],
                 ignore_prefixes: tuple[str, ...] = ()) -> dict[str, Any]:
    """Which keys of ``state`` fit ``model``: loadable, missing, unexpected, shape mismatches."""
    own = model.state_dict()
    ignored = [k for k in state if k.startswith(tuple(ignore_prefixes))] if ignore_prefixes else []
    skip = set(ignored)
    given = {k: v for k, v in state.items() if k not in skip}
    skip_own = {k for k in own if ignore_prefixes and k.startswith(tuple(ignore_prefixes))}
    missing = [k for k in own if k not in given and k not in skip_own]
    unexpected = [k for k in given if k not in own]
    mismatched = {k: (tuple(given[k].shape), tuple(own[k].shape))
                  for k in given if k in own and given[k].shape != own[k].shape}
    loadable = {k: v for k, v in given.items() if k in own and k not in mismatched}
    return {"loaded": sorted(loadable), "missing": missing, "unexpected": unexpected,
            "mismatched": mismatched, "ignored": ignored, "_state": loadable}


def describe_report(report: Mapping[str, Any]) -> str:
    parts = []
    if report["missing"]:
        parts.append(f"missing keys {_short(report['missing'])}")
    if report["unexpected"]:
        parts.append(f"unexpected keys {_short(report['unexpected'])}")
    if report["mismatched"]:
        items = list(report["mismatched"].items())
        shown = ", ".join(f"{k}: file {a} vs model {b}" for k, (a, b) in items[:_SHOWN])
        parts.append(f"shape mismatches {len(items)} [{shown}]")
    return "; ".join(parts)


def load_weights(model: nn.Module, uri: str, storage: StorageOptions | None = None, strict: bool = True,
                 ignore_prefixes: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """Load weights from ``uri`` into ``model`` (in place); returns the key report.

    strict: any missing/unexpected key or shape mismatch is a ``ModelError`` naming the keys.
    Non-strict: loads the keys that fit, logs a warning naming the rest. Keys starting with
    ``ignore_prefixes`` (e.g. the classifier head when the class count changes) are skipped.
    """
    state = read_state_dict(uri, storage)
    target = model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
    report = compare_keys(target, state, tuple(ignore_prefixes))
    loadable = report.pop("_state")
    problems = describe_report(report)
    if problems and strict:
        raise ModelError(
            f"weights {uri!r} do not fit the {type(target).__name__} model: {problems}. "
            "Set strict_weights: false to load only the matching keys, or check the model name, "
            "in_channels and num_classes")
    if not loadable:
        raise ModelError(f"weights {uri!r} share no key with the {type(target).__name__} model: {problems}")
    target.load_state_dict(loadable, strict=False)
    if problems:
        log.warning("loaded %d/%d tensors from %s; %s", len(loadable), len(target.state_dict()), uri, problems)
    return report

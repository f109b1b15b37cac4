"""Config machinery shared by every job: strict models, YAML loading, key=value overrides.

A wrong field name or type is a ``ConfigError`` naming the field, what was given, and what is
allowed (for an unknown name, the allowed names and the closest one).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from medray.errors import ConfigError

M = TypeVar("M", bound="MedrayModel")


class MedrayModel(BaseModel):
    """Base of every config: unknown fields are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Turn ``["a.b=3", "c=[1, 2]"]`` into a nested dict; values are parsed as YAML scalars/lists."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.epochs=3)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key")
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override of {part!r}")
            node = child
        node[parts[-1]] = value
    return nested


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """Follow a validation error location down nested models, to list the allowed fields there."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = field.annotation
        args = getattr(current, "__args__", ())
        nested = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if nested:
            current = nested[0]
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def format_validation_error(model: type[BaseModel], err: ValidationError, source: str) -> str:
    """One line per problem: the dotted field, the input, and what is allowed."""
    lines = [f"invalid {model.__name__} config ({source}):"]
    for problem in err.errors():
        loc = tuple(problem["loc"])
        dotted = ".".join(str(p) for p in loc) or "<root>"
        if problem["type"] == "extra_forbidden":
            parent = _model_at(model, loc[:-1]) or model
            allowed = sorted(parent.model_fields)
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            lines.append(f"  - unknown field {dotted!r}; allowed fields here: {allowed}{hint}")
        else:
            given = problem.get("input")
            shown = repr(given) if not isinstance(given, dict) else "{...}"
            lines.append(f"  - {dotted}: {problem['msg']} (got {shown})")
    return "\n".join(lines)


def validate_config(model: type[M], data: dict[str, Any], source: str = "config") -> M:
    """Validate a plain dict into ``model``; errors become ``ConfigError`` with readable lines."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(model, err, source)) from None


def load_config(
    model: type[M],
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> M:
    """Load ``model`` from a YAML file (or defaults when ``path`` is None), then apply overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping, got {type(loaded).__name__}")
        data = loaded
        source = str(path)
    if overrides:
        data = _deep_merge(data, parse_overrides(overrides))
        source += " + overrides"
    return validate_config(model, data, source)


def config_hash(config: BaseModel) -> str:
    """A short, stable fingerprint of a config's resolved values (for lineage and dataset rows)."""
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def dump_config_yaml(config: BaseModel) -> str:
    """The fully resolved config as YAML, secrets masked by pydantic's SecretStr."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def write_resolved_config(config: BaseModel, output_uri: str, storage: Any = None,
                          name: str = "resolved_config.yaml") -> str:
    """Write the resolved config next to a job's outputs (atomically); returns its URI."""
    from medray.storage import atomic_write_bytes, join_uri

    uri = join_uri(output_uri, name)
    atomic_write_bytes(uri, dump_config_yaml(config).encode(), storage)
    return uri

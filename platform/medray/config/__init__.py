"""Typed, validated job configs: one pydantic model per job, loaded from YAML plus overrides."""

from medray.config.base import (
    MedrayModel,
    config_hash,
    load_config,
    parse_overrides,
    write_resolved_config,
)
from medray.config.common import MlflowOptions, RayOptions, StorageOptions

__all__ = [
    "MedrayModel",
    "MlflowOptions",
    "RayOptions",
    "StorageOptions",
    "config_hash",
    "load_config",
    "parse_overrides",
    "write_resolved_config",
]

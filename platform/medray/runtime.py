"""Small runtime helpers shared by the batch jobs (extract, ingest, score)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from medray.config.common import RayOptions


def ensure_ray(options: RayOptions) -> None:
    """Join the configured cluster (or start a local one) unless this process is already connected."""
    import ray

    if not ray.is_initialized():
        ray.init(address=options.address, num_cpus=options.num_cpus, num_gpus=options.num_gpus,
                 ignore_reinit_error=True)


def json_safe(value: Any) -> Any:
    """Nested reports → plain JSON: NaN/inf become null, numpy scalars become Python numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return json_safe(value.item())
    return value

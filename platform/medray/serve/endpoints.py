"""The endpoint registry: each endpoint is one module adding a deployment and a FastAPI router.

An endpoint named ``x`` reads its settings from ``AppArgs.x`` (None → not deployed). Its
``deployment(name, section, args)`` returns the bound model deployment and ``router(name,
handle, section, args)`` the routes; the deployment also answers ``describe()`` for
``GET /models``. Adding ``POST /mitosis/detect`` is one module plus one line here.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where an endpoint's code lives: ``module`` exposes ``deployment`` and ``router``."""

    name: str
    module: str
    deployment_name: str

    def load(self) -> Any:
        return importlib.import_module(self.module)


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("ct", "medray.serve.classify_routes", "CTClassifier"),
    Endpoint("skin", "medray.serve.classify_routes", "SkinClassifier"),
    Endpoint("slides", "medray.serve.heatmap_routes", "SlideHeatmaps"),
    Endpoint("mitosis", "medray.serve.mitosis_routes", "MitosisDetector"),
)


def enabled(args: Any) -> list[tuple[Endpoint, Any]]:
    """The endpoints whose section is set in ``args``, with that section."""
    return [(ep, getattr(args, ep.name)) for ep in ENDPOINTS if getattr(args, ep.name, None) is not None]


def upload_limits(args: Any) -> dict[str, int]:
    """Route prefix → upload limit, for every enabled endpoint whose section sets one."""
    return {f"/{ep.name}/": section.max_upload_bytes for ep, section in enabled(args)
            if hasattr(section, "max_upload_bytes")}

"""Slide access (OpenSlide), tissue detection, annotations and level-0 coordinate grids.

``reader`` (open_slide, Slide), ``tissue`` (TissueConfig, TissueMask, tissue_mask), ``annotations``
(readers for ASAP XML / point CSV / GeoJSON, contains, rasterize) and ``grid`` (pure coordinate
logic). ``open_slide`` and ``Slide`` are importable from here; OpenSlide loads on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Slide", "open_slide"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from medray.slides import reader

        return getattr(reader, name)
    raise AttributeError(f"module 'medray.slides' has no attribute {name!r}")

"""Ground truth in the formats real datasets ship: Camelyon16 ASAP XML, NCRF patch-centre CSVs,
QuPath GeoJSON, TUPAC16 mitosis CSVs, plus an exact ``truth.json``. Text builders are pure."""

from __future__ import annotations

import json
from xml.sax.saxutils import quoteattr

from medray.synth.layout import Polygon, SlideLayout

TUMOR_COLOR = "#F4FA58"
EXCLUSION_COLOR = "#64FE2E"
GROUP_COLORS = {"Tumor": "#FF0000", "_0": "#FF0000", "_1": "#FF0000", "_2": "#00FF00"}


def _coords_xml(poly: Polygon, indent: str) -> str:
    return "\n".join(f'{indent}<Coordinate Order="{i}" X="{x!r}" Y="{y!r}" />'
                     for i, (x, y) in enumerate(poly))


def asap_xml(layout: SlideLayout, tumor_group: str = "Tumor") -> str:
    """Camelyon16 ASAP XML: one polygon per tumor region in ``tumor_group`` ('Tumor' or '_0'),
    one per exclusion hole in group '_2'."""
    items: list[tuple[Polygon, str, str]] = []
    for region in layout.tumors:
        items.append((region.polygon, tumor_group, TUMOR_COLOR))
    for region in layout.tumors:
        for hole in region.holes:
            items.append((hole, "_2", EXCLUSION_COLOR))
    parts = ['<?xml version="1.0"?>', "<ASAP_Annotations>", "\t<Annotations>"]
    for i, (poly, group, color) in enumerate(items):
        parts.append(f'\t\t<Annotation Name="Annotation {i}" Type="Polygon" '
                     f'PartOfGroup={quoteattr(group)} Color="{color}">')
        parts.append("\t\t\t<Coordinates>")
        parts.append(_coords_xml(poly, "\t\t\t\t"))
        parts.append("\t\t\t</Coordinates>")
        parts.append("\t\t</Annotation>")
    parts.append("\t</Annotations>")
    parts.append("\t<AnnotationGroups>")
    groups = [tumor_group] + (["_2"] if any(r.holes for r in layout.tumors) else [])
    for group in groups:
        parts.append(f'\t\t<Group Name={quoteattr(group)} PartOfGroup="None" '
                     f'Color="{GROUP_COLORS.get(group, "#FF0000")}">')
        parts.append("\t\t\t<Attributes />")
        parts.append("\t\t</Group>")
    parts.append("\t</AnnotationGroups>")
    parts.append("</ASAP_Annotations>")
    return "\n".join(parts) + "\n"


def points_csv(points: list[list[int]]) -> str:
    """NCRF patch-centre list: ``x,y`` per line at level 0, no header."""
    return "".join(f"{x},{y}\n" for x, y in points)


def mitosis_csv(points: list[list[int]]) -> str:
    """TUPAC16 ground truth: ``row,col`` (y, x) per line, no header."""
    return "".join(f"{y},{x}\n" for x, y in points)


def _ring(poly: Polygon) -> list[list[float]]:
    return [list(p) for p in poly] + [list(poly[0])]


def qupath_geojson(layout: SlideLayout) -> str:
    """QuPath FeatureCollection: one Tumor polygon per region, holes as interior rings."""
    features = []
    for region in layout.tumors:
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon",
                         "coordinates": [_ring(region.polygon)] + [_ring(h) for h in region.holes]},
            "properties": {"objectType": "annotation",
                           "classification": {"name": "Tumor", "color": [200, 0, 0]}},
        })
    return json.dumps({"type": "FeatureCollection", "features": features})


def truth_json(layout: SlideLayout, mpp: float | None, extra: dict | None = None) -> str:
    """Everything exact: layout (polygons, holes, tissue, mitoses, mimics), mpp, dims, extras."""
    data = {"mpp": mpp, "dims": [layout.width, layout.height], **layout.to_dict(), **(extra or {})}
    return json.dumps(data, indent=1)

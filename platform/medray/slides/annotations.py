"""Slide annotations: ASAP XML (Camelyon16), NCRF point CSVs and QuPath GeoJSON, in level-0 px.

Polygons are plain arrays (no shapely): point-in-polygon by ``matplotlib.path.Path``, rasters by
``skimage.draw.polygon``. A point is inside an annotation when it is inside its exterior and in
none of its holes; Camelyon16 exclusion regions (group ``_2``) become holes of the tumour
polygons they overlap, so points in them are not tumour.
"""

from __future__ import annotations

import json
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Union

import numpy as np

from medray.config.common import StorageOptions
from medray.errors import AnnotationError

Source = Union[str, Path, bytes, IO]

# Camelyon16 ASAP groups: which are tumour, which cut holes into tumour.
ASAP_TUMOR_GROUPS = {"_0", "_1", "tumor"}
ASAP_EXCLUSION_GROUPS = {"_2", "exclusion"}


@dataclass(eq=False)
class Annotation:
    """One labelled polygon in level-0 pixels: exterior ring (N×2 x, y) and optional holes."""

    label: str
    exterior: np.ndarray
    holes: list[np.ndarray] = field(default_factory=list)
    name: str = ""

    def __post_init__(self) -> None:
        self.exterior = _ring(self.exterior, self.name or self.label)
        self.holes = [_ring(h, f"{self.name or self.label} hole") for h in self.holes]

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of the exterior."""
        (x0, y0), (x1, y1) = self.exterior.min(axis=0), self.exterior.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)

    @property
    def area(self) -> float:
        """Exterior area minus hole areas (level-0 px²; holes assumed inside, non-overlapping)."""
        return max(0.0, _shoelace(self.exterior) - sum(_shoelace(h) for h in self.holes))

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Bool per (x, y) point: inside the exterior and outside every hole."""
        from matplotlib.path import Path as MplPath

        points = np.asarray(points, np.float64).reshape(-1, 2)
        out = np.zeros(len(points), bool)
        x0, y0, x1, y1 = self.bounds
        near = ((points[:, 0] >= x0) & (points[:, 0] <= x1) & (points[:, 1] >= y0) & (points[:, 1] <= y1))
        if not near.any():
            return out
        candidates = points[near]
        inside = MplPath(self.exterior).contains_points(candidates)
        for hole in self.holes:
            if inside.any():
                inside &= ~MplPath(hole).contains_points(candidates)
        out[near] = inside
        return out


def _ring(coords: Any, what: str) -> np.ndarray:
    ring = np.asarray(coords, np.float64)
    if ring.ndim != 2 or ring.shape[1] != 2:
        raise AnnotationError(f"annotation {what!r}: polygon must be N×2 (x, y), got shape {ring.shape}")
    if len(ring) > 1 and np.array_equal(ring[0], ring[-1]):
        ring = ring[:-1]
    if len(ring) < 3:
        raise AnnotationError(f"annotation {what!r}: a polygon needs at least 3 vertices, got {len(ring)}")
    if not np.isfinite(ring).all():
        raise AnnotationError(f"annotation {what!r}: polygon has non-finite coordinates")
    return ring


def _shoelace(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def _read_source(source: Source, storage: StorageOptions | None = None) -> tuple[bytes, str]:
    """(bytes, a name for messages) from bytes, a file object, a path or a URI."""
    if isinstance(source, bytes):
        return source, "<bytes>"
    if hasattr(source, "read"):
        data = source.read()
        return (data.encode() if isinstance(data, str) else data), getattr(source, "name", "<stream>")
    from medray.errors import StorageError
    from medray.storage import read_bytes

    try:
        return read_bytes(str(source), storage), str(source)
    except StorageError as err:
        raise AnnotationError(f"annotation file {str(source)!r} cannot be read: {err}") from err


# -- ASAP XML -------------------------------------------------------------------------------
def _number(text: str | None, where: str) -> float:
    if text is None:
        raise AnnotationError(f"{where}: coordinate attribute missing")
    try:
        return float(text.replace(",", "."))  # some Camelyon16 files use decimal commas
    except ValueError:
        raise AnnotationError(f"{where}: coordinate {text!r} is not a number") from None


def read_asap_xml(source: Source, storage: StorageOptions | None = None) -> list[Annotation]:
    """Camelyon16/ASAP XML polygons: groups ``_0``/``_1``/``Tumor`` → label "tumor" with the
    ``_2``/``Exclusion`` polygons they overlap as holes; other groups keep their lower-cased name."""
    data, name = _read_source(source, storage)
    try:
        root = ET.fromstring(data)
    except ET.ParseError as err:
        raise AnnotationError(f"annotation file {name!r} is not valid XML: {err}") from None
    polygons: list[Annotation] = []
    exclusions: list[np.ndarray] = []
    for index, element in enumerate(root.iter("Annotation")):
        title = element.get("Name") or f"Annotation {index}"
        where = f"{name}: annotation {title!r}"
        group = (element.get("PartOfGroup") or "").strip()
        coords = sorted(element.iter("Coordinate"), key=lambda c: _number(c.get("Order", "0"), where))
        ring = [(_number(c.get("X"), where), _number(c.get("Y"), where)) for c in coords]
        if (element.get("Type") or "Polygon").lower() in ("dot", "pointset"):
            raise AnnotationError(f"{where} is a {element.get('Type')} annotation; only polygons are supported")
        if group.lower() in ASAP_EXCLUSION_GROUPS:
            exclusions.append(_ring(ring, where))
            continue
        label = "tumor" if group.lower() in ASAP_TUMOR_GROUPS else (group.lower() or "annotation")
        polygons.append(Annotation(label, ring, name=title))
    for hole in exclusions:
        hx0, hy0 = hole.min(axis=0)
        hx1, hy1 = hole.max(axis=0)
        for polygon in polygons:
            x0, y0, x1, y1 = polygon.bounds
            if hx0 <= x1 and hx1 >= x0 and hy0 <= y1 and hy1 >= y0:
                polygon.holes.append(hole)
    return polygons


def write_asap_xml(annotations: Iterable[Annotation], uri: str, storage: StorageOptions | None = None) -> None:
    """Write polygons as ASAP XML: "tumor" → group ``_0``, holes → group ``_2`` (atomic write)."""
    from medray.storage import atomic_write_bytes

    root = ET.Element("ASAP_Annotations")
    parent = ET.SubElement(root, "Annotations")
    count = 0

    def add(ring: np.ndarray, group: str) -> None:
        nonlocal count
        element = ET.SubElement(parent, "Annotation", Name=f"Annotation {count}", Type="Polygon",
                                PartOfGroup=group, Color="#F4FA58")
        coords = ET.SubElement(element, "Coordinates")
        for order, (x, y) in enumerate(ring):
            ET.SubElement(coords, "Coordinate", Order=str(order), X=repr(float(x)), Y=repr(float(y)))
        count += 1

    for annotation in annotations:
        add(annotation.exterior, "_0" if annotation.label == "tumor" else annotation.label)
        for hole in annotation.holes:
            add(hole, "_2")
    atomic_write_bytes(uri, ET.tostring(root, encoding="utf-8", xml_declaration=True), storage)


# -- point CSV ------------------------------------------------------------------------------
def read_point_csv(source: Source, label: str = "", storage: StorageOptions | None = None) -> np.ndarray:
    """NCRF-style ``x,y`` level-0 patch centres, one per line → (N, 2) int64.

    A non-numeric first line is taken as a header; blank lines are skipped; any other bad row
    is an AnnotationError listing the line numbers.
    """
    data, name = _read_source(source, storage)
    what = f"{label} points file {name!r}" if label else f"points file {name!r}"
    points: list[tuple[int, int]] = []
    bad: list[str] = []
    for number, line in enumerate(data.decode("utf-8-sig").splitlines(), start=1):
        text = line.strip()
        if not text:
            continue
        parts = [p.strip() for p in text.split(",")]
        try:
            if len(parts) != 2:
                raise ValueError
            x, y = float(parts[0]), float(parts[1])
            if not (np.isfinite(x) and np.isfinite(y)):
                raise ValueError
        except ValueError:
            if number == 1 and not any(ch.isdigit() for ch in text):
                continue  # header such as "x,y"
            bad.append(f"line {number}: {text[:60]!r}")
            continue
        points.append((int(round(x)), int(round(y))))
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise AnnotationError(f"{what}: {len(bad)} malformed row(s), expected 'x,y': {shown}")
    return np.asarray(points, np.int64).reshape(-1, 2)


def write_point_csv(points: np.ndarray, uri: str, storage: StorageOptions | None = None) -> None:
    """Write (N, 2) points as ``x,y`` lines (no header), atomically."""
    from medray.storage import atomic_write_text

    points = np.asarray(points).reshape(-1, 2)
    atomic_write_text(uri, "".join(f"{int(x)},{int(y)}\n" for x, y in points), storage)


# -- GeoJSON --------------------------------------------------------------------------------
def _feature_label(properties: dict | None, default: str) -> str:
    properties = properties or {}
    classification = properties.get("classification")
    if isinstance(classification, dict) and classification.get("name"):
        return str(classification["name"]).lower()
    if isinstance(classification, str) and classification:
        return classification.lower()
    if properties.get("name"):
        return str(properties["name"]).lower()
    return default


def read_geojson(source: Source, storage: StorageOptions | None = None,
                 default_label: str = "annotation") -> list[Annotation]:
    """QuPath GeoJSON (FeatureCollection, Feature or a list of features): Polygon/MultiPolygon,
    interior rings as holes; label from ``classification.name`` or ``name``, lower-cased."""
    data, name = _read_source(source, storage)
    try:
        doc = json.loads(data)
    except json.JSONDecodeError as err:
        raise AnnotationError(f"annotation file {name!r} is not valid JSON: {err}") from None
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        features = doc.get("features", [])
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        features = [doc]
    elif isinstance(doc, list):
        features = doc
    else:
        raise AnnotationError(f"{name!r}: expected a GeoJSON FeatureCollection, Feature or list of "
                              f"features, got {type(doc).__name__} {str(doc)[:80]!r}")
    out: list[Annotation] = []
    skipped: dict[str, int] = {}
    for index, feature in enumerate(features):
        geometry = (feature or {}).get("geometry") or {}
        kind = geometry.get("type")
        label = _feature_label(feature.get("properties"), default_label)
        title = f"{name} feature {index}"
        if kind == "Polygon":
            polygons = [geometry.get("coordinates") or []]
        elif kind == "MultiPolygon":
            polygons = geometry.get("coordinates") or []
        else:
            skipped[str(kind)] = skipped.get(str(kind), 0) + 1
            continue
        for rings in polygons:
            if not rings:
                raise AnnotationError(f"{title}: polygon has no rings")
            out.append(Annotation(label, rings[0], list(rings[1:]), name=title))
    if skipped:
        warnings.warn(f"{name}: skipped non-polygon features {skipped}", stacklevel=2)
    return out


def to_geojson(annotations: Iterable[Annotation]) -> dict:
    """A QuPath-style FeatureCollection (closed rings, label in ``classification.name``)."""
    def closed(ring: np.ndarray) -> list[list[float]]:
        coords = ring.tolist()
        return coords + [coords[0]]

    return {"type": "FeatureCollection", "features": [
        {"type": "Feature",
         "geometry": {"type": "Polygon", "coordinates": [closed(a.exterior)] + [closed(h) for h in a.holes]},
         "properties": {"objectType": "annotation", "classification": {"name": a.label}}}
        for a in annotations]}


def write_geojson(annotations: Iterable[Annotation], uri: str, storage: StorageOptions | None = None) -> None:
    from medray.storage import atomic_write_text

    atomic_write_text(uri, json.dumps(to_geojson(annotations)), storage)


# -- dispatch and geometry ------------------------------------------------------------------
def load_annotations(uri: str, storage: StorageOptions | None = None,
                     label: str | None = None) -> list[Annotation] | np.ndarray:
    """Read by extension: .xml → ASAP polygons, .geojson/.json → polygons, .csv → (N, 2) points.

    ``label`` names the class of a CSV's points (required for .csv), and replaces polygon labels
    when given for the other formats.
    """
    suffix = Path(str(uri).split("?", 1)[0]).suffix.lower()
    if suffix == ".csv":
        if not label:
            raise AnnotationError(f"{uri!r}: a points CSV carries no class; pass label= (e.g. 'tumor')")
        return read_point_csv(uri, label, storage)
    if suffix == ".xml":
        annotations = read_asap_xml(uri, storage)
    elif suffix in (".geojson", ".json"):
        annotations = read_geojson(uri, storage)
    else:
        raise AnnotationError(f"{uri!r}: unknown annotation format {suffix!r}; supported: "
                              f".xml (ASAP/Camelyon16), .csv (x,y points), .geojson/.json (QuPath)")
    if label:
        for annotation in annotations:
            annotation.label = label
    return annotations


def contains(annotations: Iterable[Annotation], points: np.ndarray) -> np.ndarray:
    """Bool per point: inside any annotation (exterior and not in that annotation's holes)."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    out = np.zeros(len(points), bool)
    for annotation in annotations:
        remaining = ~out
        if not remaining.any():
            break
        out[remaining] = annotation.contains(points[remaining])
    return out


def rasterize(annotations: Iterable[Annotation], shape: tuple[int, int], downsample: float) -> np.ndarray:
    """Bool (H, W) mask of the annotations where one pixel covers ``downsample`` level-0 px.

    A mask pixel is set when its centre lies inside an annotation (and outside its holes).
    """
    from skimage.draw import polygon as draw_polygon

    mask = np.zeros(shape, bool)
    for annotation in annotations:
        one = np.zeros(shape, bool)
        ext = annotation.exterior / downsample - 0.5
        rr, cc = draw_polygon(ext[:, 1], ext[:, 0], shape)
        one[rr, cc] = True
        for hole in annotation.holes:
            h = hole / downsample - 0.5
            rr, cc = draw_polygon(h[:, 1], h[:, 0], shape)
            one[rr, cc] = False
        mask |= one
    return mask


def bounds_check(annotations_or_points: Iterable[Annotation] | np.ndarray, dims: tuple[int, int],
                 name: str) -> None:
    """AnnotationError naming the coordinates (up to 5) that fall off a slide of level-0 ``dims``."""
    width, height = dims
    if isinstance(annotations_or_points, np.ndarray):
        coords = annotations_or_points.reshape(-1, 2).astype(np.float64)
    else:
        rings = [r for a in annotations_or_points for r in [a.exterior, *a.holes]]
        coords = np.concatenate(rings) if rings else np.zeros((0, 2))
    off = (coords[:, 0] < 0) | (coords[:, 1] < 0) | (coords[:, 0] >= width) | (coords[:, 1] >= height)
    if off.any():
        shown = ", ".join(f"({x:g}, {y:g})" for x, y in coords[off][:5])
        raise AnnotationError(
            f"{name}: {int(off.sum())} coordinate(s) lie off the slide (level-0 size {width}×{height}): "
            f"{shown}{' ...' if off.sum() > 5 else ''}; are the annotations for another slide or "
            f"another level?")


__all__ = [
    "Annotation", "bounds_check", "contains", "load_annotations", "rasterize", "read_asap_xml",
    "read_geojson", "read_point_csv", "to_geojson", "write_asap_xml", "write_geojson", "write_point_csv",
]

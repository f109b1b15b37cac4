"""Reading the inputs: HPF images (PNG/TIFF), TUPAC16 ``row,col`` CSVs, HPF folders, slide regions.

Every failure names the file and how to fix it; a batch job records it per item and goes on.
"""

from __future__ import annotations

import io
import posixpath
from dataclasses import dataclass, field

import numpy as np

from medray.config.common import StorageOptions
from medray.errors import DataError, StorageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass
class WorkUnit:
    """One image or one slide region to search; ``truth_csv`` is optional."""

    unit_id: str
    image: str | None = None
    truth_csv: str | None = None
    slide: str | None = None
    region: tuple[int, int, int, int] | None = None
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"unit_id": self.unit_id, "image": self.image, "truth_csv": self.truth_csv,
                "slide": self.slide, "region": list(self.region) if self.region else None}


def parse_mitosis_csv(text: str, name: str = "<csv>") -> np.ndarray:
    """TUPAC16 CSV (``row,col`` per line, no header, extra columns ignored) → (N, 2) (x, y) float."""
    points = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        parts = [p.strip() for p in line.split(",")]
        try:
            row, col = float(parts[0]), float(parts[1])
        except (ValueError, IndexError):
            raise DataError(f"{name}: line {number} {line!r} is not 'row,col' numbers "
                            "(TUPAC16 mitosis CSV: one 'row,col' per line, no header)") from None
        if not (np.isfinite(row) and np.isfinite(col)) or row < 0 or col < 0:
            raise DataError(f"{name}: line {number} {line!r} has a negative or non-finite coordinate")
        points.append((col, row))
    return np.asarray(points, np.float64).reshape(-1, 2)


def read_mitosis_csv(uri: str, storage: StorageOptions | None = None) -> np.ndarray:
    from medray.storage import read_text

    try:
        text = read_text(uri, storage)
    except StorageError as err:
        raise DataError(f"mitosis CSV {uri!r} cannot be read: {err}") from None
    return parse_mitosis_csv(text, uri)


def load_image(uri: str, storage: StorageOptions | None = None) -> np.ndarray:
    """RGB uint8 H×W×3 of a PNG/JPEG (``datasets.loaders.load_png``) or TIFF image."""
    lower = uri.lower()
    if lower.endswith((".tif", ".tiff")):
        import tifffile

        from medray.storage import read_bytes

        try:
            data = read_bytes(uri, storage)
        except StorageError as err:
            raise DataError(f"image {uri!r} cannot be read: {err}") from None
        try:
            arr = tifffile.imread(io.BytesIO(data))
        except Exception as err:  # tifffile raises many types for a broken file
            raise DataError(f"{uri}: corrupt or unreadable TIFF ({type(err).__name__}: {err})") from None
        if arr.size == 0:
            raise DataError(f"{uri}: corrupt or unreadable TIFF (no pixel data)")
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] < 3:
            raise DataError(f"{uri}: expected an RGB TIFF, got shape {arr.shape}")
        return np.ascontiguousarray(arr[..., :3]).astype(np.uint8)
    from medray.datasets.loaders import load_png

    try:
        return load_png(uri, channels=3, storage=storage)
    except StorageError as err:
        raise DataError(f"image {uri!r} cannot be read: {err}") from None


def image_id(uri: str) -> str:
    return posixpath.splitext(posixpath.basename(uri.rstrip("/")))[0]


def _truth_beside(image_uri: str, storage: StorageOptions | None) -> str | None:
    """``<dir>/../mitoses/<name>.csv`` when it exists (the HPF folder layout)."""
    from medray.storage import exists

    parent = posixpath.dirname(posixpath.dirname(image_uri.rstrip("/")))
    csv = posixpath.join(parent, "mitoses", image_id(image_uri) + ".csv")
    return csv if exists(csv, storage) else None


def hpf_units(hpf_dir: str, storage: StorageOptions | None = None, limit: int | None = None) -> list[WorkUnit]:
    """One unit per image in ``hpf_dir/images`` (sorted), with its ``mitoses/<name>.csv`` when present."""
    from medray.storage import exists, join_uri, list_files

    images_dir = join_uri(hpf_dir, "images")
    if not exists(images_dir, storage):
        raise DataError(f"HPF folder {hpf_dir!r} has no images/ subfolder; expected images/<name>.png|tif "
                        "and mitoses/<name>.csv (medray synth hpf writes this layout)")
    files = sorted(f for f in list_files(images_dir, storage) if f.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise DataError(f"{images_dir!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    files = files[:limit] if limit else files
    units = []
    for f in files:
        csv = join_uri(hpf_dir, "mitoses", image_id(f) + ".csv")
        units.append(WorkUnit(image_id(f), image=f, truth_csv=csv if exists(csv, storage) else None))
    return units


def collect_units(inputs, storage: StorageOptions | None = None) -> list[WorkUnit]:
    """All work units of an ``InputConfig``: HPF folder images, explicit images, slide regions."""
    units: list[WorkUnit] = []
    if inputs.hpf_dir:
        units += hpf_units(inputs.hpf_dir, storage)
    for uri in inputs.images:
        units.append(WorkUnit(image_id(uri), image=uri, truth_csv=_truth_beside(uri, storage)))
    for entry in inputs.slides:
        name = image_id(entry.slide)
        for x, y, w, h in entry.regions:
            units.append(WorkUnit(f"{name}@{x}_{y}_{w}_{h}", slide=entry.slide, region=(x, y, w, h),
                                  truth_csv=entry.mitoses_csv))
    if not units:
        raise DataError("no inputs: set inputs.hpf_dir, inputs.images or inputs.slides")
    seen = set()
    for u in units:
        if u.unit_id in seen:
            raise DataError(f"two inputs share the id {u.unit_id!r}; give images distinct file names")
        seen.add(u.unit_id)
    return units[: inputs.limit] if inputs.limit else units


def load_unit(unit: WorkUnit, storage: StorageOptions | None = None) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int]]:
    """(RGB pixels, truth (x, y) in the unit's pixel frame or None, level-0 offset (x0, y0))."""
    if unit.slide:
        from medray.slides.reader import open_slide

        x, y, w, h = unit.region
        with open_slide(unit.slide, storage) as slide:
            rgb = slide.read_region(x, y, 0, (w, h))
        truth = None
        if unit.truth_csv:
            pts = read_mitosis_csv(unit.truth_csv, storage)
            inside = (pts[:, 0] >= x) & (pts[:, 0] < x + w) & (pts[:, 1] >= y) & (pts[:, 1] < y + h)
            truth = pts[inside] - np.array([x, y], np.float64)
        return rgb, truth, (x, y)
    rgb = load_image(unit.image, storage)
    truth = read_mitosis_csv(unit.truth_csv, storage) if unit.truth_csv else None
    return rgb, truth, (0, 0)

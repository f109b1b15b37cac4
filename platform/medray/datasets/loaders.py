"""Image and volume loaders: PNG/JPEG, DICOM and NIfTI bytes or URIs → numpy arrays.

Pure functions shared by ingest, training and serving. Each accepts raw bytes (an upload) or a
URI (read through ``medray.storage``) and rejects a wrong or corrupt file with a ``DataError``
naming the file and the reason. ``load_any`` turns a file into a model-ready float32 array.
"""

from __future__ import annotations

import gzip
import io
import os
from typing import Literal, Union

import numpy as np
from pydantic import Field, field_validator

from medray.config.base import MedrayModel
from medray.config.common import StorageOptions
from medray.errors import DataError

Source = Union[bytes, bytearray, memoryview, str, os.PathLike]

WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),          # center, width (HU)
    "mediastinal": (40.0, 400.0),
}
EXTENSIONS = {
    ".png": "image", ".jpg": "image", ".jpeg": "image",
    ".dcm": "dicom",
    ".nii": "nifti", ".nii.gz": "nifti",
}
KIND_READERS = {"ct2d": ("image", "dicom"), "skin": ("image",), "ct3d": ("nifti",)}


class LoaderConfig(MedrayModel):
    """How raw files become model inputs; shared by ingest, training and serving."""

    kind: Literal["ct2d", "ct3d", "skin"] = Field(
        "ct2d", description="ct2d: PNG/DICOM slices; ct3d: NIfTI volumes; skin: RGB PNG/JPEG")
    window: Literal["lung", "mediastinal"] = Field(
        "lung", description="HU window preset applied to DICOM slices (center/width in WINDOW_PRESETS)")
    hu_clip: tuple[float, float] = Field(
        (-1000.0, 400.0), description="HU range volumes are clipped to, then scaled to [0, 1] (ct3d)")
    target_spacing: tuple[float, float, float] | None = Field(
        None, description="Resample volumes to this spacing in mm, output axis order (D, H, W) = (z, y, x)")
    target_shape: tuple[int, int, int] | None = Field(
        (32, 64, 64), description="Resample volumes to this shape (D, H, W) after any spacing step")
    image_size: int | None = Field(
        64, ge=8, description="Resize 2D images to image_size x image_size (None keeps their size)")
    channels: Literal[1, 3] | None = Field(
        None, description="Channels of 2D inputs; None means 1 for ct2d, 3 for skin")

    @field_validator("hu_clip")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] >= value[1]:
            raise ValueError(f"hu_clip must be (low, high) with low < high, got {value}")
        return value

    def resolved_channels(self) -> int:
        return self.channels if self.channels is not None else (3 if self.kind == "skin" else 1)


# --------------------------------------------------------------------------- reading bytes

def _read(source: Source, storage: StorageOptions | None, name: str | None) -> tuple[bytes, str]:
    """The bytes of ``source`` and a name for messages (the URI, or ``name`` for raw bytes)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), name or "<bytes>"
    from medray.errors import StorageError
    from medray.storage import is_file, read_bytes

    uri = os.fspath(source)
    try:
        return read_bytes(uri, storage), name or uri
    except StorageError as err:
        if is_file(uri, storage):  # there but unreadable, e.g. a truncated .gz the stream inflates
            raise DataError(f"{name or uri}: corrupt or truncated file ({err})") from err
        raise


def file_type(name: str) -> str:
    """'image', 'dicom' or 'nifti' from a file name; DataError listing the supported extensions."""
    lower = name.lower()
    for ext in sorted(EXTENSIONS, key=len, reverse=True):
        if lower.endswith(ext):
            return EXTENSIONS[ext]
    raise DataError(f"{name}: unsupported file extension; supported: {', '.join(EXTENSIONS)}")


# --------------------------------------------------------------------------- 2D images

def load_png(source: Source, channels: int = 1, storage: StorageOptions | None = None,
             name: str | None = None) -> np.ndarray:
    """PNG/JPEG → uint8 H×W (channels=1) or H×W×3 (channels=3); 16-bit grey PNGs stay uint16."""
    from PIL import Image, UnidentifiedImageError

    if channels not in (1, 3):
        raise DataError(f"{name or 'image'}: channels must be 1 or 3, got {channels}")
    data, label = _read(source, storage, name)
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ("PNG", "JPEG"):
                raise DataError(f"{label}: expected a PNG or JPEG image, found {image.format}")
            image.load()
            if channels == 1 and image.mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(image, dtype=np.uint16)
            return np.asarray(image.convert("L" if channels == 1 else "RGB"))
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError(f"{label}: not a PNG or JPEG image (cannot identify image data)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{label}: corrupt or truncated image ({err})") from err


# --------------------------------------------------------------------------- DICOM

def load_dicom(source: Source, storage: StorageOptions | None = None,
               name: str | None = None) -> np.ndarray:
    """DICOM → float32 Hounsfield units (stored value × RescaleSlope + RescaleIntercept)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    data, label = _read(source, storage, name)
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError as err:
        raise DataError(f"{label}: not a DICOM file ({err})") from None
    except Exception as err:  # pydicom raises many types on damaged headers
        raise DataError(f"{label}: corrupt DICOM header ({type(err).__name__}: {err})") from err
    if "PixelData" not in ds:
        raise DataError(f"{label}: DICOM file has no pixel data (modality {ds.get('Modality', '?')})")
    try:
        pixels = ds.pixel_array
    except Exception as err:  # missing decoder, truncated pixel data, ...
        raise DataError(f"{label}: cannot decode DICOM pixel data ({type(err).__name__}: {err})") from err
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return (pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)).astype(np.float32)


def window(hu: np.ndarray, center: float | str = "lung", width: float | None = None) -> np.ndarray:
    """HU → float32 in [0, 1]: ``(hu - (center - width/2)) / width`` clipped; ``center`` may be a preset."""
    if isinstance(center, str):
        if center not in WINDOW_PRESETS:
            raise DataError(f"unknown window preset {center!r}; presets: {sorted(WINDOW_PRESETS)}")
        if width is not None:
            raise DataError("give either a preset name or center and width, not a preset and a width")
        center, width = WINDOW_PRESETS[center]
    if width is None or width <= 0:
        raise DataError(f"window width must be > 0, got {width}")
    low = float(center) - float(width) / 2.0
    out = (np.asarray(hu, dtype=np.float32) - np.float32(low)) / np.float32(width)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- NIfTI

def read_nifti(source: Source, storage: StorageOptions | None = None,
               name: str | None = None) -> tuple[np.ndarray, tuple[float, float, float]]:
    """NIfTI (.nii / .nii.gz) → (float32 D×H×W in RAS order, spacing (z, y, x) mm).

    The volume is reoriented with nibabel's ``as_closest_canonical`` (RAS+), then its (x, y, z)
    axes are transposed to (z, y, x) so the first axis walks axial slices.
    """
    import nibabel as nib

    data, label = _read(source, storage, name)
    try:
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"{label}: truncated or corrupt gzip stream ({err})") from None
    try:
        image = nib.Nifti1Image.from_bytes(data)
        canonical = nib.as_closest_canonical(image)
        volume = np.asarray(canonical.get_fdata(dtype=np.float32))
    except Exception as err:  # nibabel raises several types on bad headers / short data
        raise DataError(f"{label}: not a readable NIfTI volume ({type(err).__name__}: {err})") from err
    if volume.ndim == 4 and volume.shape[3] == 1:
        volume = volume[..., 0]
    if volume.ndim != 3:
        raise DataError(f"{label}: expected a 3D volume, got shape {volume.shape}")
    zooms = canonical.header.get_zooms()[:3]
    spacing = (float(zooms[2]), float(zooms[1]), float(zooms[0]))
    return np.ascontiguousarray(volume.transpose(2, 1, 0)), spacing


def resample(volume: np.ndarray, spacing: tuple[float, float, float],
             target_spacing: tuple[float, float, float] | None = None,
             target_shape: tuple[int, int, int] | None = None,
             order: int = 1) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Linear resampling of a D×H×W volume to a spacing, then (if given) to an exact shape."""
    from scipy.ndimage import zoom

    spacing = tuple(float(s) for s in spacing)
    if target_spacing is not None:
        factors = [s / t for s, t in zip(spacing, target_spacing)]
        shape = [max(1, int(round(n * f))) for n, f in zip(volume.shape, factors)]
        volume, spacing = _zoom_to(volume, shape, spacing, order, zoom)
    if target_shape is not None:
        volume, spacing = _zoom_to(volume, list(target_shape), spacing, order, zoom)
    return volume.astype(np.float32), spacing


def _zoom_to(volume, shape, spacing, order, zoom):
    if tuple(shape) == volume.shape:
        return volume, spacing
    factors = [t / n for t, n in zip(shape, volume.shape)]
    out = zoom(volume, factors, order=order, mode="nearest", grid_mode=True)
    assert out.shape == tuple(shape), (out.shape, shape)
    new_spacing = tuple(s * n / t for s, n, t in zip(spacing, volume.shape, shape))
    return out, new_spacing


def load_nifti(source: Source, hu_clip: tuple[float, float] | None = (-1000.0, 400.0),
               target_spacing: tuple[float, float, float] | None = None,
               target_shape: tuple[int, int, int] | None = None,
               storage: StorageOptions | None = None, name: str | None = None) -> np.ndarray:
    """NIfTI → float32 1×D×H×W HU: reoriented to RAS, clipped to ``hu_clip``, resampled."""
    volume, spacing = read_nifti(source, storage, name)
    if hu_clip is not None:
        volume = np.clip(volume, hu_clip[0], hu_clip[1])
    volume, _ = resample(volume, spacing, target_spacing, target_shape)
    return volume[None].astype(np.float32)


# --------------------------------------------------------------------------- dispatch

def _resize2d(image: np.ndarray, size: int | None) -> np.ndarray:
    """Bilinear resize to size×size (uint8 via PIL directly, other dtypes as float32 planes)."""
    if size is None or image.shape[:2] == (size, size):
        return image
    from PIL import Image

    if image.dtype == np.uint8:
        return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    planes = image[..., None] if image.ndim == 2 else image
    out = np.stack([np.asarray(Image.fromarray(planes[..., c].astype(np.float32)).resize(
        (size, size), Image.BILINEAR)) for c in range(planes.shape[2])], axis=-1)
    return out[..., 0] if image.ndim == 2 else out


def load_any(source: Source, kind: str | None = None, config: LoaderConfig | None = None,
             storage: StorageOptions | None = None, name: str | None = None) -> np.ndarray:
    """Any supported file → model-ready float32, channel first, values in [0, 1].

    ct2d: 1×S×S (PNG/JPEG scaled from 8 bit, DICOM windowed); skin: 3×S×S; ct3d: 1×D×H×W
    (NIfTI clipped to ``hu_clip`` and scaled to [0, 1]). The reader is chosen by extension
    (of ``name`` for raw bytes); ``kind`` overrides ``config.kind``.
    """
    config = config or LoaderConfig()
    kind = kind or config.kind
    if kind not in KIND_READERS:
        raise DataError(f"unknown kind {kind!r}; kinds: {sorted(KIND_READERS)}")
    if kind != config.kind:
        config = config.model_copy(update={"kind": kind})
    label = name or (os.fspath(source) if not isinstance(source, (bytes, bytearray, memoryview)) else None)
    if label is None:
        raise DataError("raw bytes need a file name (name=...) to choose a reader by extension")
    ftype = file_type(label)
    if ftype not in KIND_READERS[kind]:
        allowed = [e for e, t in EXTENSIONS.items() if t in KIND_READERS[kind]]
        raise DataError(f"{label}: a {ftype} file cannot be used for kind {kind!r}; expected {allowed}")
    if ftype == "nifti":
        low, high = config.hu_clip
        volume = load_nifti(source, (low, high), config.target_spacing, config.target_shape,
                            storage, label)
        return ((volume - np.float32(low)) / np.float32(high - low)).astype(np.float32)
    if ftype == "dicom":
        image = window(load_dicom(source, storage, label), config.window)
        channels = config.resolved_channels()
        image = _resize2d(image, config.image_size)
        return np.repeat(image[None], channels, axis=0).astype(np.float32)
    channels = config.resolved_channels()
    image = load_png(source, channels, storage, label)
    scale = np.float32(65535.0 if image.dtype == np.uint16 else 255.0)
    out = _resize2d(image, config.image_size).astype(np.float32) / scale
    return (out[None] if out.ndim == 2 else out.transpose(2, 0, 1)).astype(np.float32)

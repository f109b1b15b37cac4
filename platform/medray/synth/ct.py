"""Synthetic chest CT with a learnable severity signal: 2D slices (PNG, DICOM) and 3D NIfTI.

Each image shows air (-1000 HU), a body ellipse of soft tissue (~40 HU), two lungs (~-850 HU
with noise and vessels) and soft-edged ground-glass opacities (GGO, -600..-300 HU) whose count
and size grow with the class (CT-0 none … CT-4 very extensive), as in MosMedData's CT-0..CT-4.
Slices: ``png/<class>/<patient>_sNN.png`` (lung window), ``dicom/<class>/<patient>_sNN.dcm``
(int16, slope 1, intercept -1024); volumes: ``studies/<class>/study_NNNN.nii.gz``. Every kind
gets a JSON-lines manifest (``manifest_png.jsonl``...) with source-ref relative to the output.
"""

from __future__ import annotations

import gzip
import io
from typing import Literal

import numpy as np
from pydantic import Field, field_validator
from tqdm import tqdm

from medray.config.base import MedrayModel
from medray.config.common import StorageOptions

AIR_HU, TISSUE_HU, LUNG_HU = -1000.0, 40.0, -850.0
GGO_HU = (-600.0, -300.0)
GGO_COUNT = (0, 2, 5, 9, 14)          # opacities per slice at severity 0..4 (interpolated)
GGO_RADIUS = (0.0, 0.05, 0.065, 0.08, 0.1)  # blob sigma as a fraction of the image side
RESCALE_INTERCEPT = -1024.0
UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's registered root for generated UIDs


class Config(MedrayModel):
    """What ``medray synth ct`` writes."""

    output: str = Field("medray-data/ct", description="Output folder or s3:// prefix")
    classes: list[str] = Field(["CT-0", "CT-1", "CT-2", "CT-3", "CT-4"],
                               description="Class names, mildest first; severity grows along the list")
    patients_per_class: int = Field(4, ge=1, description="Synthetic patients per class (2D slices)")
    slices_per_patient: int = Field(3, ge=1, description="Axial slices written per patient")
    image_size: int = Field(128, ge=32, description="Side of each 2D slice in pixels")
    pixel_spacing: float = Field(0.7, gt=0, description="In-plane pixel size of the 2D slices (mm)")
    studies_per_class: int = Field(4, ge=1, description="NIfTI volumes per class")
    volume_shape: tuple[int, int, int] = Field(
        (64, 64, 32), description="NIfTI array shape (x, y, z) as stored before any reorientation")
    volume_spacing: tuple[float, float, float] = Field(
        (1.0, 1.0, 2.5), description="Voxel size (x, y, z) in mm")
    formats: list[Literal["png", "dicom", "nifti"]] = Field(
        ["png", "dicom", "nifti"], description="Which outputs to write")
    seed: int = Field(7, description="Random seed; the same seed writes the same bytes")
    storage: StorageOptions = Field(default_factory=StorageOptions, description="Object storage access")

    @field_validator("classes")
    @classmethod
    def _at_least_two(cls, value: list[str]) -> list[str]:
        if len(value) < 2 or len(set(value)) != len(value):
            raise ValueError(f"need at least two distinct class names, got {value}")
        return value


def severity_of(index: int, n_classes: int) -> float:
    """Class index → severity on the CT-0..CT-4 scale (0..4)."""
    return 4.0 * index / (n_classes - 1)


def _interp(table: tuple[float, ...], severity: float) -> float:
    return float(np.interp(severity, np.arange(len(table)), table))


# --------------------------------------------------------------------------- pure rendering

def _ellipse(coords: list[np.ndarray], center, radii) -> np.ndarray:
    """Normalised squared distance: < 1 inside the ellipse(-oid)."""
    return sum(((c - c0) / r) ** 2 for c, c0, r in zip(coords, center, radii))


def _lung_masks(coords: list[np.ndarray], rng: np.random.Generator, z_scale: np.ndarray | float = 1.0):
    """Body and lung masks on normalised coordinates in [-1, 1] (y, x[, z])."""
    y, x = coords[0], coords[1]
    body = _ellipse([y, x], (0.0, 0.0), (0.62 + rng.uniform(-0.03, 0.03), 0.86 + rng.uniform(-0.03, 0.03))) < 1
    lungs = np.zeros_like(body)
    for side in (-1, 1):
        cy, cx = rng.uniform(-0.1, 0.0), side * rng.uniform(0.36, 0.42)
        ry, rx = rng.uniform(0.4, 0.46) * z_scale, rng.uniform(0.26, 0.3) * z_scale
        lungs |= _ellipse([y, x], (cy, cx), (np.maximum(ry, 1e-3), np.maximum(rx, 1e-3))) < 1
    return body, lungs & body


def _add_blobs(hu: np.ndarray, coords: list[np.ndarray], lungs: np.ndarray, rng: np.random.Generator,
               count: int, sigma: float, level: tuple[float, float], sigma_scale: tuple[float, ...]) -> None:
    """Soft Gaussian blobs pulling lung HU towards ``level`` (in place), centred inside the lungs."""
    inside = np.argwhere(lungs)
    if count == 0 or len(inside) == 0:
        return
    for _ in range(count):
        centre = inside[rng.integers(len(inside))]
        target = rng.uniform(*level)
        s = sigma * rng.uniform(0.7, 1.3)
        d2 = sum(((c - c[tuple(centre)]) / (s * k)) ** 2 for c, k in zip(coords, sigma_scale))
        weight = np.exp(-0.5 * d2) * lungs
        hu += weight * (target - hu)


def render_slice(size: int, severity: float, rng: np.random.Generator) -> np.ndarray:
    """One axial slice in HU (float32 size×size) for a severity on the 0..4 scale."""
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    y, x = np.meshgrid(axis, axis, indexing="ij")
    coords = [y, x]
    body, lungs = _lung_masks(coords, rng)
    hu = np.full((size, size), AIR_HU, dtype=np.float32)
    hu[body] = TISSUE_HU + rng.normal(0, 12, int(body.sum()))
    hu[lungs] = LUNG_HU + rng.normal(0, 25, int(lungs.sum()))
    # Vessels: small bright dots and short branches inside the lungs, equally at every severity.
    _add_blobs(hu, coords, lungs, rng, 10, 0.012 * 2, (-150.0, 20.0), (1.0, 1.0))
    count = int(round(_interp(GGO_COUNT, severity) * rng.uniform(0.8, 1.2)))
    _add_blobs(hu, coords, lungs, rng, count, 2 * _interp(GGO_RADIUS, severity), GGO_HU, (1.0, 1.0))
    return hu.astype(np.float32)


def render_volume(shape_xyz: tuple[int, int, int], spacing_xyz: tuple[float, float, float],
                  severity: float, rng: np.random.Generator) -> np.ndarray:
    """A chest volume in HU, float32 (x, y, z) in RAS voxel order; lungs taper at both ends."""
    nx, ny, nz = shape_xyz
    x = np.linspace(-1, 1, nx, dtype=np.float32)[:, None, None]
    y = np.linspace(-1, 1, ny, dtype=np.float32)[None, :, None]
    z = np.linspace(-1, 1, nz, dtype=np.float32)[None, None, :]
    y, x, z = np.broadcast_arrays(y, x, z)
    taper = np.sqrt(np.clip(1.0 - (z / 1.05) ** 2, 0.0, 1.0))
    body, lungs = _lung_masks([y, x, z], rng, z_scale=taper)
    hu = np.full(x.shape, AIR_HU, dtype=np.float32)
    hu[body] = TISSUE_HU + rng.normal(0, 12, int(body.sum()))
    hu[lungs] = LUNG_HU + rng.normal(0, 25, int(lungs.sum()))
    # Normalised coordinates span different millimetres per axis; keep blobs round in mm.
    scale = (1.0, 1.0, (nx * spacing_xyz[0]) / (nz * spacing_xyz[2]))
    _add_blobs(hu, [y, x, z], lungs, rng, 20, 0.03, (-150.0, 20.0), scale)
    count = int(round(_interp(GGO_COUNT, severity) * 2 * rng.uniform(0.8, 1.2)))
    _add_blobs(hu, [y, x, z], lungs, rng, count, 2 * _interp(GGO_RADIUS, severity), GGO_HU, scale)
    return hu.astype(np.float32)


# --------------------------------------------------------------------------- encoders

def png_bytes(hu: np.ndarray) -> bytes:
    """Lung-windowed 8-bit PNG of a HU slice."""
    from medray.datasets.codec import encode_image
    from medray.datasets.loaders import window

    return encode_image(np.round(window(hu, "lung") * 255).astype(np.uint8), "png")


def dicom_bytes(hu: np.ndarray, patient: str, slice_index: int, spacing: float, seed: int) -> bytes:
    """A valid CT Image Storage file: int16 stored = HU + 1024, slope 1, intercept -1024."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    def uid(*parts) -> str:
        return generate_uid(UID_PREFIX, entropy_srcs=[str(seed), *map(str, parts)])

    stored = np.clip(np.round(hu - RESCALE_INTERCEPT), -32768, 32767).astype(np.int16)
    sop_uid = uid(patient, "sop", slice_index)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid(patient, "study"), uid(patient, "series")
    ds.FrameOfReferenceUID = uid(patient, "frame")
    ds.Modality, ds.Manufacturer = "CT", "medray synthetic"
    ds.PatientName, ds.PatientID = f"Synthetic^{patient}", patient
    ds.StudyDate, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "20260101", "1", 1, slice_index + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [0.0, 0.0, float(slice_index) * 5.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.SliceThickness, ds.PixelSpacing = 5.0, [spacing, spacing]
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, int(RESCALE_INTERCEPT), "HU"
    ds.WindowCenter, ds.WindowWidth = -600, 1500
    ds.PixelData = stored.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, little_endian=True, implicit_vr=False)
    return buf.getvalue()


def orient(volume_xyz: np.ndarray, spacing_xyz, variant: int) -> tuple[np.ndarray, np.ndarray]:
    """Store a RAS volume as RAS (0), LPS (1, flipped x/y) or PLS (2, x/y swapped too).

    Returns (data, affine) describing the same physical image, so reorientation to RAS must give
    back ``volume_xyz`` exactly.
    """
    sx, sy, sz = spacing_xyz
    nx, ny, nz = volume_xyz.shape
    origin = np.array([-(nx - 1) * sx / 2, -(ny - 1) * sy / 2, -(nz - 1) * sz / 2])
    affine = np.diag([sx, sy, sz, 1.0])
    affine[:3, 3] = origin
    if variant == 0:
        return volume_xyz, affine
    flipped = volume_xyz[::-1, ::-1, :]
    lps = np.diag([-sx, -sy, sz, 1.0])
    lps[:3, 3] = origin + np.array([(nx - 1) * sx, (ny - 1) * sy, 0.0])
    if variant == 1:
        return np.ascontiguousarray(flipped), lps
    swapped = np.ascontiguousarray(flipped.transpose(1, 0, 2))  # voxel axes (y, x, z)
    pls = np.zeros((4, 4))
    pls[:, 0], pls[:, 1], pls[:, 2], pls[:, 3] = lps[:, 1], lps[:, 0], lps[:, 2], lps[:, 3]
    return swapped, pls


def nifti_bytes(volume_xyz: np.ndarray, spacing_xyz, variant: int) -> bytes:
    """A gzip'd NIfTI-1 (int16 HU) in one of three orientations; gzip mtime 0 for reproducibility."""
    import nibabel as nib

    data, affine = orient(volume_xyz, spacing_xyz, variant)
    image = nib.Nifti1Image(np.round(data).astype(np.int16), affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


# --------------------------------------------------------------------------- writing

def _write_gzip_file(uri: str, data: bytes, options: StorageOptions) -> None:
    """Publish already-gzipped bytes as-is.

    Locally this goes through a plain file copy: pyarrow's output streams (behind
    ``atomic_write_bytes``) gzip a ``*.gz`` name a second time unless given ``compression=None``.
    """
    from medray.storage import atomic_local_path

    with atomic_local_path(uri, options, suffix=".nii.gz") as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)


def generate(config: Config) -> dict:
    """Write every requested format plus its manifest; returns a summary naming every file."""
    from medray.datasets.manifests import ManifestEntry, write_manifest
    from medray.storage import atomic_write_bytes, join_uri

    out, opts = config.output, config.storage
    n = len(config.classes)
    summary: dict = {"output": out, "classes": config.classes, "files": {}, "manifests": {}}
    slice_formats = [f for f in ("png", "dicom") if f in config.formats]
    if slice_formats:
        entries = {f: [] for f in slice_formats}
        jobs = [(ci, p) for ci in range(n) for p in range(config.patients_per_class)]
        for ci, p in tqdm(jobs, desc="synth ct slices", unit="patient"):
            label = config.classes[ci]
            patient = f"P{ci * config.patients_per_class + p + 1:04d}"
            rng = np.random.default_rng([config.seed, 1, ci, p])
            for s in range(config.slices_per_patient):
                hu = render_slice(config.image_size, severity_of(ci, n), rng)
                for fmt in slice_formats:
                    ext = "png" if fmt == "png" else "dcm"
                    rel = f"{fmt}/{label}/{patient}_s{s:02d}.{ext}"
                    data = png_bytes(hu) if fmt == "png" else dicom_bytes(
                        hu, patient, s, config.pixel_spacing, config.seed)
                    atomic_write_bytes(join_uri(out, rel), data, opts)
                    entries[fmt].append(ManifestEntry(rel, label, {"patient": patient, "group": patient}))
        for fmt in slice_formats:
            summary["files"][fmt] = [join_uri(out, e.source_ref) for e in entries[fmt]]
            summary["manifests"][fmt] = write_manifest(entries[fmt], join_uri(out, f"manifest_{fmt}.jsonl"), opts)
    if "nifti" in config.formats:
        entries_3d = []
        jobs = [(ci, k) for ci in range(n) for k in range(config.studies_per_class)]
        for ci, k in tqdm(jobs, desc="synth ct volumes", unit="study"):
            label = config.classes[ci]
            number = ci * config.studies_per_class + k + 1
            rng = np.random.default_rng([config.seed, 3, ci, k])
            volume = render_volume(config.volume_shape, config.volume_spacing, severity_of(ci, n), rng)
            rel = f"studies/{label}/study_{number:04d}.nii.gz"
            _write_gzip_file(join_uri(out, rel), nifti_bytes(volume, config.volume_spacing, number % 3), opts)
            study = f"study_{number:04d}"
            entries_3d.append(ManifestEntry(rel, label, {"patient": study, "group": study}))
        summary["files"]["nifti"] = [join_uri(out, e.source_ref) for e in entries_3d]
        summary["manifests"]["nifti"] = write_manifest(entries_3d, join_uri(out, "manifest_nifti.jsonl"), opts)
    summary["num_files"] = sum(len(v) for v in summary["files"].values())
    return summary

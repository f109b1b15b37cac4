"""Synthetic CT and dermoscopy: determinism, file validity, class signal, HAM10000 imbalance."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from medray.config import load_config
from medray.datasets.loaders import load_dicom, load_nifti, load_png
from medray.datasets.manifests import read_manifest
from medray.errors import ConfigError
from medray.synth import ct, skin

CT_SMALL = dict(patients_per_class=2, slices_per_patient=2, image_size=64, studies_per_class=2,
                volume_shape=(24, 24, 12))


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ct_out(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ct")
    return out, ct.generate(ct.Config(output=str(out), **CT_SMALL))


@pytest.fixture(scope="module")
def skin_out(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("skin")
    return out, skin.generate(skin.Config(output=str(out), total_images=84))


# --------------------------------------------------------------------------- CT

def test_ct_is_deterministic_by_seed(ct_out, tmp_path):
    out, _ = ct_out
    again = ct.generate(ct.Config(output=str(tmp_path / "a"), **CT_SMALL))
    assert _digest(tmp_path / "a") == _digest(out)
    assert again["num_files"] == 5 * 2 * 2 * 2 + 5 * 2
    ct.generate(ct.Config(output=str(tmp_path / "b"), seed=8, formats=["png"], **CT_SMALL))
    assert (tmp_path / "b/png/CT-1/P0003_s00.png").read_bytes() != (out / "png/CT-1/P0003_s00.png").read_bytes()


def test_ct_layout_and_manifests(ct_out):
    out, summary = ct_out
    assert sorted(summary["manifests"]) == ["dicom", "nifti", "png"]
    for fmt, count in (("png", 20), ("dicom", 20), ("nifti", 10)):
        entries = read_manifest(str(out / f"manifest_{fmt}.jsonl"))
        assert len(entries) == count and all(Path(e.source_ref).is_file() for e in entries)
        assert Counter(e.label for e in entries) == {f"CT-{k}": count // 5 for k in range(5)}
        assert all(e.extra["patient"] == e.extra["group"] for e in entries)
    png = read_manifest(str(out / "manifest_png.jsonl"))
    assert Counter(e.extra["patient"] for e in png) == {f"P{i:04d}": 2 for i in range(1, 11)}
    assert (out / "studies/CT-0/study_0001.nii.gz").is_file() and (out / "studies/CT-4/study_0010.nii.gz").is_file()
    assert load_png(str(out / "png/CT-0/P0001_s00.png")).shape == (64, 64)


def test_ct_dicom_files_are_valid_ct_images(ct_out):
    out, _ = ct_out
    for entry in read_manifest(str(out / "manifest_dicom.jsonl"))[:4]:
        ds = pydicom.dcmread(entry.source_ref)  # no force=True
        assert ds.file_meta.MediaStorageSOPClassUID == pydicom.uid.CTImageStorage == ds.SOPClassUID
        assert ds.PatientID == entry.extra["patient"] and ds.Modality == "CT"
        assert (ds.Rows, ds.Columns, float(ds.PixelSpacing[0])) == (64, 64, 0.7)
        hu = load_dicom(entry.source_ref)
        np.testing.assert_array_equal(hu, ds.pixel_array.astype(np.float32) - 1024)
        assert hu.min() == -1000 and -900 < np.median(hu[(hu > -990) & (hu < -500)]) < -700  # air, lung
    series = {pydicom.dcmread(e.source_ref).SeriesInstanceUID for e in read_manifest(str(out / "manifest_dicom.jsonl"))}
    assert len(series) == 10  # one series per patient


def test_ct_nifti_volumes_are_readable_and_some_not_ras(ct_out):
    out, _ = ct_out
    codes = set()
    for path in sorted((out / "studies").rglob("*.nii.gz")):
        image = nib.load(path)  # plain nibabel, straight from disk
        codes.add("".join(nib.aff2axcodes(image.affine)))
        assert sorted(image.header.get_zooms()) == [1.0, 1.0, 2.5]
        volume = load_nifti(str(path), hu_clip=None)
        assert volume.shape == (1, 12, 24, 24) and volume.min() == -1000
    assert codes == {"RAS", "LPS", "PLS"}


def test_ct_class_signal_mean_lung_hu_rises_with_class(ct_out):
    out, _ = ct_out
    means = []
    for k in range(5):
        values = [load_dicom(str(p)) for p in sorted((out / f"dicom/CT-{k}").glob("*.dcm"))]
        lung = np.concatenate([v[(v > -990) & (v < -150)] for v in values])  # lungs, GGO; no air or tissue
        means.append(float(lung.mean()))
    assert all(b > a + 15 for a, b in zip(means, means[1:])), means
    assert means[0] < -780 and means[4] > -700, means
    vol_means = []
    for k in range(5):
        vols = [load_nifti(str(p), hu_clip=None) for p in sorted((out / f"studies/CT-{k}").glob("*.nii.gz"))]
        vol_means.append(float(np.mean([v[(v > -990) & (v < -150)].mean() for v in vols])))
    assert all(b > a for a, b in zip(vol_means, vol_means[1:])), vol_means


def test_ct_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="formats"):
        load_config(ct.Config, overrides=["formats=[png, jpeg]"])
    with pytest.raises(ConfigError, match="at least two distinct class names"):
        load_config(ct.Config, overrides=["classes=[CT-0]"])


# --------------------------------------------------------------------------- skin

def test_skin_class_counts_follow_ham10000():
    assert skin.class_counts(10015) == skin.HAM_COUNTS
    counts = skin.class_counts(300)
    assert sum(counts.values()) == 300 and min(counts.values()) >= 5
    exact = {c: 300 * n / 10015 for c, n in skin.HAM_COUNTS.items()}  # df 3.4, vasc 4.3 → floor of 5
    assert counts["df"] == counts["vasc"] == 5
    assert all(abs(counts[c] - exact[c]) < 1 for c in ("akiec", "bcc", "bkl", "mel"))
    assert counts["nv"] == 300 - sum(v for c, v in counts.items() if c != "nv")  # the largest pays the floor
    order = ["nv", "mel", "bkl", "bcc", "akiec", "vasc", "df"]  # HAM10000's order of frequency
    assert [counts[c] for c in order] == sorted(counts.values(), reverse=True)
    assert skin.class_counts(84)["df"] == 5
    with pytest.raises(ConfigError, match="total_images=20 is too small"):
        skin.class_counts(20)


def test_skin_files_metadata_and_repeats(skin_out, tmp_path):
    out, summary = skin_out
    with open(out / "HAM10000_metadata.csv") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
    assert len(rows) == 84 == summary["num_images"]
    assert Counter(r["dx"] for r in rows) == skin.class_counts(84)
    assert [r["dx"] for r in rows] == sorted(r["dx"] for r in rows)  # sorted like the real file
    per_lesion = Counter(r["lesion_id"] for r in rows)
    assert max(per_lesion.values()) >= 2 and len(per_lesion) < 84
    assert all(len({r["dx"] for r in rows if r["lesion_id"] == lid}) == 1 for lid in per_lesion)
    for row in rows[:5]:
        assert row["image_id"].startswith("ISIC_00") and row["lesion_id"].startswith("HAM_")
        with Image.open(out / "images" / f"{row['image_id']}.jpg") as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (64, 64))
    skin.generate(skin.Config(output=str(tmp_path / "again"), total_images=84))
    assert _digest(tmp_path / "again") == _digest(out)


def test_skin_classes_are_separable_but_not_by_one_pixel():
    """Nearest-centroid on simple colour statistics separates held-out lesions; the centre pixel alone does worse."""
    rng = np.random.default_rng(0)
    features, centre, labels, lesions = [], [], [], []
    for label in skin.CLASSES:
        for lesion in range(12):
            params = skin.lesion_params(label, rng)
            image = skin.render_lesion(params, 64, rng).astype(np.float32)
            core = image[16:48, 16:48].reshape(-1, 3)
            features.append(np.concatenate([core.mean(0), core.std(0), image.reshape(-1, 3).std(0)]))
            centre.append(image[32, 32])
            labels.append(label)
            lesions.append(lesion)
    features, centre, labels, lesions = map(np.array, (features, centre, labels, lesions))

    def accuracy(x: np.ndarray) -> float:
        train, test = lesions < 8, lesions >= 8
        mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
        z = (x - mu) / sd
        cents = np.stack([z[train & (labels == c)].mean(0) for c in skin.CLASSES])
        pred = np.array(skin.CLASSES)[np.argmin(((z[test][:, None] - cents[None]) ** 2).sum(-1), axis=1)]
        return float((pred == labels[test]).mean())

    assert accuracy(features) >= 0.85
    assert accuracy(centre) < accuracy(features)

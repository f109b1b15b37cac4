"""Loaders: PNG/JPEG, DICOM (synthetic and pydicom's real CT), NIfTI reorientation/resampling, errors."""

from __future__ import annotations

import gzip
import io

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medray.config import load_config
from medray.datasets.codec import encode_image
from medray.datasets.loaders import (
    LoaderConfig,
    load_any,
    load_dicom,
    load_nifti,
    load_png,
    read_nifti,
    resample,
    window,
)
from medray.errors import ConfigError, DataError
from medray.synth.ct import dicom_bytes, nifti_bytes


@pytest.fixture
def hu_slice() -> np.ndarray:
    hu = np.full((16, 20), -1000.0, dtype=np.float32)
    hu[3, 5], hu[7, 11], hu[15, 19] = 40.0, -850.0, 1200.0
    return hu


# --------------------------------------------------------------------------- window

def test_window_presets_hand_checked():
    hu = np.array([-1350, -600, 150, -1000, 500], dtype=np.float32)
    np.testing.assert_allclose(window(hu, "lung"), [0.0, 0.5, 1.0, 350 / 1500, 1.0], atol=1e-6)
    hu = np.array([-160, 40, 240, 0, -1000], dtype=np.float32)
    np.testing.assert_allclose(window(hu, "mediastinal"), [0.0, 0.5, 1.0, 0.4, 0.0], atol=1e-6)
    out = window(np.array([0.0, 50.0, 100.0]), 50, 100)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0])


def test_window_rejects_unknown_preset_and_bad_width():
    with pytest.raises(DataError, match="unknown window preset 'bone'.*lung"):
        window(np.zeros(3), "bone")
    with pytest.raises(DataError, match="width must be > 0"):
        window(np.zeros(3), 40, 0)


# --------------------------------------------------------------------------- DICOM

def test_synthetic_dicom_hu_equals_stored_times_slope_plus_intercept(tmp_path, hu_slice):
    path = tmp_path / "slice.dcm"
    path.write_bytes(dicom_bytes(hu_slice, "P0007", 2, 0.7, seed=1))
    ds = pydicom.dcmread(path)  # no force: valid preamble and file meta
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage == ds.file_meta.MediaStorageSOPClassUID
    assert ds.PatientID == "P0007" and [float(v) for v in ds.PixelSpacing] == [0.7, 0.7]
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
    stored = ds.pixel_array
    assert stored.dtype == np.int16
    # Hand-computed: stored = HU + 1024, so HU = stored * 1 - 1024.
    assert (stored[3, 5], stored[7, 11], stored[15, 19], stored[0, 0]) == (1064, 174, 2224, 24)
    hu = load_dicom(str(path))
    assert hu.dtype == np.float32
    assert (hu[3, 5], hu[7, 11], hu[15, 19], hu[0, 0]) == (40.0, -850.0, 1200.0, -1000.0)


def test_dicom_with_other_slope_and_intercept(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
    buf = io.BytesIO()
    ds.save_as(buf)
    stored = ds.pixel_array
    hu = load_dicom(buf.getvalue(), name="rescaled.dcm")
    for y, x in [(0, 0), (10, 20), (64, 64), (127, 5)]:
        assert hu[y, x] == stored[y, x] * 2 - 1000


def test_real_ct_small_from_pydicom_test_data():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = load_dicom(path)
    expected = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(hu, expected)
    assert hu.shape == (128, 128)
    assert -1100 <= hu.min() < -500 and 500 < hu.max() <= 3100  # air/lung to bone: a plausible CT range
    assert hu[64, 64] == ds.pixel_array[64, 64] - 1024


def test_non_dicom_dcm_file_is_rejected(tmp_path):
    path = tmp_path / "scan.dcm"
    path.write_bytes(b"this is a text file, not a scan\n" * 10)
    with pytest.raises(DataError, match=r"scan\.dcm: not a DICOM file"):
        load_dicom(str(path))
    with pytest.raises(DataError, match=r"scan\.dcm: not a DICOM file"):
        load_any(str(path), "ct2d")


def test_dicom_with_truncated_pixel_data(tmp_path, hu_slice):
    data = dicom_bytes(hu_slice, "P1", 0, 0.7, seed=1)
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[:-200])
    with pytest.raises(DataError, match=r"cut\.dcm: cannot decode DICOM pixel data"):
        load_dicom(str(path))


# --------------------------------------------------------------------------- PNG / JPEG

def test_png_and_jpeg_channels(tmp_path):
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8)
    (tmp_path / "g.png").write_bytes(encode_image(grey, "png"))
    np.testing.assert_array_equal(load_png(str(tmp_path / "g.png")), grey)
    assert load_png(str(tmp_path / "g.png"), channels=3).shape == (6, 8, 3)
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200
    out = load_png(encode_image(rgb, "jpeg", 95), channels=3)
    assert out.shape == (8, 8, 3) and abs(int(out[..., 0].mean()) - 200) <= 2 and out[..., 2].max() < 10


def test_corrupt_and_wrong_images_are_rejected(tmp_path):
    good = encode_image(np.full((32, 32), 7, np.uint8), "png")
    (tmp_path / "half.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"half\.png: corrupt or truncated image"):
        load_png(str(tmp_path / "half.png"))
    (tmp_path / "junk.png").write_bytes(b"\x00junk" * 50)
    with pytest.raises(DataError, match=r"junk\.png: not a PNG or JPEG"):
        load_png(str(tmp_path / "junk.png"))
    buf = io.BytesIO()
    from PIL import Image

    Image.new("L", (4, 4)).save(buf, format="BMP")
    with pytest.raises(DataError, match=r"upload\.png: expected a PNG or JPEG image, found BMP"):
        load_png(buf.getvalue(), name="upload.png")


# --------------------------------------------------------------------------- NIfTI

def test_nifti_reorientation_to_ras_gives_the_same_volume(tmp_path):
    volume_xyz = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5) - 30
    results = []
    for variant in (0, 1, 2):  # RAS, LPS (x/y flipped), PLS (flipped and x/y swapped)
        path = tmp_path / f"v{variant}.nii.gz"
        path.write_bytes(nifti_bytes(volume_xyz, (1.0, 2.0, 3.0), variant))
        import nibabel as nib

        assert "".join(nib.aff2axcodes(nib.load(path).affine)) == ["RAS", "LPS", "PLS"][variant]
        results.append(read_nifti(str(path)))
    for volume, spacing in results:
        np.testing.assert_array_equal(volume, volume_xyz.transpose(2, 1, 0))  # D×H×W = z, y, x
        assert spacing == (3.0, 2.0, 1.0)


def test_resample_hand_checked():
    volume = np.zeros((2, 2, 2), np.float32)
    volume[1] = 10.0
    out, spacing = resample(volume, (2.0, 1.0, 1.0), target_spacing=(1.0, 1.0, 1.0))
    assert out.shape == (4, 2, 2) and spacing == (1.0, 1.0, 1.0)
    # grid_mode: output centres at -0.25, 0.25, 0.75, 1.25 input voxels; edges held (mode nearest)
    np.testing.assert_allclose(out[:, 0, 0], [0.0, 2.5, 7.5, 10.0])
    out, spacing = resample(volume, (2.0, 1.0, 1.0), target_shape=(4, 4, 1))
    assert out.shape == (4, 4, 1) and spacing == (1.0, 0.5, 2.0)


def test_load_nifti_clips_and_resamples_to_shape_and_spacing(tmp_path):
    volume_xyz = np.full((8, 6, 4), -2000.0, np.float32)
    volume_xyz[2:5, 2:4, 1:3] = 1500.0
    path = tmp_path / "s.nii.gz"
    path.write_bytes(nifti_bytes(volume_xyz, (1.0, 1.0, 2.5), 1))
    out = load_nifti(str(path), hu_clip=(-1000, 400), target_shape=(8, 12, 16))
    assert out.shape == (1, 8, 12, 16) and out.dtype == np.float32
    assert out.min() == -1000 and out.max() == 400
    out = load_nifti(str(path), target_spacing=(1.25, 0.5, 0.5))
    assert out.shape == (1, 8, 12, 16)  # z: 4×2.5/1.25, y: 6×1/0.5, x: 8×1/0.5


def test_truncated_nifti_is_rejected(tmp_path):
    data = nifti_bytes(np.zeros((16, 16, 8), np.float32), (1.0, 1.0, 2.5), 0)
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.nii\.gz: .*truncated"):
        load_nifti(str(tmp_path / "cut.nii.gz"))
    raw = gzip.decompress(data)
    (tmp_path / "cut.nii").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"cut\.nii: not a readable NIfTI volume"):
        load_nifti(str(tmp_path / "cut.nii"))


# --------------------------------------------------------------------------- dispatch

def test_load_any_dispatch_and_shapes(tmp_path, hu_slice):
    (tmp_path / "a.png").write_bytes(encode_image(np.full((40, 40), 255, np.uint8), "png"))
    out = load_any(str(tmp_path / "a.png"), "ct2d")
    assert out.shape == (1, 64, 64) and out.dtype == np.float32 and out.min() == 1.0
    (tmp_path / "b.dcm").write_bytes(dicom_bytes(hu_slice, "P1", 0, 0.7, seed=1))
    out = load_any(str(tmp_path / "b.dcm"), config=LoaderConfig(kind="ct2d", image_size=None))
    assert out.shape == (1, 16, 20) and out[0, 7, 11] == pytest.approx(window(-850.0, "lung"))
    (tmp_path / "c.jpg").write_bytes(encode_image(np.zeros((70, 50, 3), np.uint8), "jpeg"))
    assert load_any(str(tmp_path / "c.jpg"), "skin").shape == (3, 64, 64)
    (tmp_path / "d.nii.gz").write_bytes(nifti_bytes(np.full((10, 10, 6), -1000.0), (1, 1, 2.5), 2))
    out = load_any(str(tmp_path / "d.nii.gz"), "ct3d")
    assert out.shape == (1, 32, 64, 64) and float(out.max()) == 0.0  # -1000 is the clip floor


def test_load_any_rejects_unsupported_and_mismatched_files(tmp_path):
    with pytest.raises(DataError, match=r"scan\.bmp: unsupported file extension; supported: .png.*\.nii\.gz"):
        load_any(str(tmp_path / "scan.bmp"), "ct2d")
    with pytest.raises(DataError, match=r"vol\.nii\.gz: a nifti file cannot be used for kind 'ct2d'"):
        load_any(str(tmp_path / "vol.nii.gz"), "ct2d")
    with pytest.raises(DataError, match="need a file name"):
        load_any(b"\x89PNG", "ct2d")


def test_loader_config_validation():
    assert LoaderConfig(kind="skin").resolved_channels() == 3
    with pytest.raises(ConfigError, match="hu_clip"):
        load_config(LoaderConfig, overrides=["hu_clip=[400, -1000]"])
    with pytest.raises(ConfigError, match="window"):
        load_config(LoaderConfig, overrides=["window=bone"])


def test_loaders_read_from_s3(s3_bucket, s3_options, hu_slice):
    from medray.storage import atomic_write_bytes

    uri = f"{s3_bucket}/ct/x.dcm"
    atomic_write_bytes(uri, dicom_bytes(hu_slice, "P1", 0, 0.7, seed=1), s3_options)
    assert load_dicom(uri, s3_options)[3, 5] == 40.0
    assert load_any(uri, "ct2d", storage=s3_options).shape == (1, 64, 64)

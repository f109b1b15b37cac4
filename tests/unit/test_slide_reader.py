"""Slide reader on real pyramidal TIFFs through real OpenSlide (files written by slide_factory)."""

from __future__ import annotations

import os
import pickle
import time

import numpy as np
import pytest

from medray.errors import SlideError
from medray.slides.reader import open_slide, premultiplied_argb_to_bgrx, premultiplied_argb_to_rgb
from slide_factory import gradient_slide, make_slide


@pytest.fixture(scope="module")
def gradient(tmp_path_factory):
    """1024×768 at 0.25 µm/px, levels ×1, ×4, ×16 → mpps 0.25, 1.0, 4.0."""
    path, rgb = gradient_slide(tmp_path_factory.mktemp("slides") / "gradient.tiff")
    return path, rgb


def test_geometry_and_mpp(gradient):
    path, _ = gradient
    with open_slide(str(path)) as slide:
        assert slide.slide_id == "gradient"
        assert slide.vendor == "generic-tiff"
        assert slide.dimensions == (1024, 768)
        assert slide.level_count == 3
        assert slide.level_dimensions == ((1024, 768), (256, 192), (64, 48))
        assert slide.level_downsamples == (1.0, 4.0, 16.0)
        assert slide.mpp == pytest.approx(0.25)
        assert slide.level_mpps == pytest.approx((0.25, 1.0, 4.0))
        assert slide.properties["tiff.ResolutionUnit"] == "centimeter"


def test_level_for_mpp_choices_and_error(gradient):
    path, _ = gradient
    with open_slide(str(path)) as slide:
        assert slide.level_for_mpp(0.25) == (0, pytest.approx(0.25))
        assert slide.level_for_mpp(1.05) == (1, pytest.approx(1.0))
        assert slide.level_for_mpp(4.0) == (2, pytest.approx(4.0))
        assert slide.level_for_mpp(1.2, tolerance=0.25)[0] == 1
        with pytest.raises(SlideError, match=r"slide gradient: no level at 0\.5 µm/px \(±10%\); "
                                             r"available mpps: \[0\.25, 1\.0, 4\.0\]; the closest is 0\.25"):
            slide.level_for_mpp(0.5)


def test_missing_mpp_error_and_override(tmp_path):
    path, _ = gradient_slide(tmp_path / "nompp.tiff", mpp=None)
    with open_slide(str(path)) as slide:
        assert slide.mpp is None
        with pytest.raises(SlideError, match="no mpp metadata.*mpp_override.*ask by level"):
            slide.level_for_mpp(0.5)
    with open_slide(str(path), mpp_override=0.5) as slide:
        assert slide.mpp == 0.5
        assert slide.level_for_mpp(2.0) == (1, pytest.approx(2.0))


def test_read_region_values_and_levels(gradient):
    path, rgb = gradient
    with open_slide(str(path)) as slide:
        patch = slide.read_region(300, 200, 0, 64)
        assert patch.shape == (64, 64, 3) and patch.dtype == np.uint8 and patch.flags.c_contiguous
        # JPEG tiles: close to the source pixels, not identical.
        assert np.abs(patch.astype(int) - rgb[200:264, 300:364]).mean() < 3
        low = slide.read_region(512, 256, 1, (32, 16))
        assert low.shape == (16, 32, 3)
        expected = rgb[256:320:4, 512:640:4].astype(int)
        assert np.abs(low.astype(int) - expected).mean() < 4
        # The whole of level 2 is on the slide; its last pixel starts inside it.
        assert slide.read_level(2).shape == (48, 64, 3)


def test_region_off_slide_names_bounds(gradient):
    path, _ = gradient
    with open_slide(str(path)) as slide:
        with pytest.raises(SlideError, match=r"slide gradient: region x=1000, y=0, size=\(64, 64\) at level 0"
                                             r".*0 <= x < 1024, 0 <= y < 768"):
            slide.read_region(1000, 0, 0, 64)
        with pytest.raises(SlideError, match="leaves the slide"):
            slide.read_region(-1, 0, 0, 16)
        with pytest.raises(SlideError, match="leaves the slide"):
            slide.read_region(0, 0, 1, (257, 10))  # level 1 is 256 wide
        slide.read_region(1024 - 64, 768 - 64, 0, 64)  # exactly at the corner is fine
        with pytest.raises(SlideError, match=r"level 3 does not exist; levels 0..2"):
            slide.read_region(0, 0, 3, 16)


def test_premultiplied_alpha_composited_on_white():
    # Native ARGB uint32: opaque red, fully transparent, half-transparent premultiplied blue.
    argb = np.array([[0xFFFF0000, 0x00000000, 0x80000080]], dtype=np.uint32)
    rgb = premultiplied_argb_to_rgb(argb)
    assert rgb.tolist() == [[[255, 0, 0], [255, 255, 255], [127, 127, 255]]]
    opaque = np.full((2, 2), 0xFF102030, np.uint32)
    assert premultiplied_argb_to_rgb(opaque).tolist() == [[[16, 32, 48]] * 2] * 2


def test_premultiplied_alpha_to_bgrx_in_place():
    argb = np.array([[0xFFFF0000, 0x00000000, 0x80000080]], dtype=np.uint32)
    bgrx = premultiplied_argb_to_bgrx(argb)
    assert np.shares_memory(bgrx, argb)
    assert bgrx[..., 2::-1].tolist() == premultiplied_argb_to_rgb(
        np.array([[0xFFFF0000, 0x00000000, 0x80000080]], dtype=np.uint32)).tolist()
    assert bgrx[..., 3].tolist() == [[255, 255, 255]]
    opaque = np.full((2, 2), 0xFF102030, np.uint32)
    assert premultiplied_argb_to_bgrx(opaque).tolist() == [[[48, 32, 16, 255]] * 2] * 2


def test_read_region_bgrx_is_read_region_in_openslide_order(gradient):
    path, _ = gradient
    with open_slide(str(path)) as slide:
        out = np.empty(64 * 128, np.uint32)
        bgrx = slide.read_region_bgrx(300, 200, 0, (128, 64), out=out)
        assert bgrx.shape == (64, 128, 4) and np.shares_memory(bgrx, out)
        assert np.array_equal(bgrx[..., 2::-1], slide.read_region(300, 200, 0, (128, 64)))
        assert np.array_equal(slide.read_region_bgrx(512, 256, 1, (32, 16))[..., 2::-1],
                              slide.read_region(512, 256, 1, (32, 16)))
        with pytest.raises(ValueError, match=">= 8192 elements"):
            slide.read_region_bgrx(300, 200, 0, (128, 64), out=np.empty(100, np.uint32))
        with pytest.raises(SlideError, match="leaves the slide"):
            slide.read_region_bgrx(1000, 0, 0, 64, out=out)


def test_thumbnail_and_downsample(tmp_path):
    path, rgb, _ = make_slide(tmp_path / "t.tiff", width=1200, height=800, levels=2)
    with open_slide(str(path)) as slide:
        thumb, ds = slide.thumbnail(300)
        assert thumb.shape == (200, 300, 3)
        assert ds == pytest.approx(4.0)
        with pytest.raises(SlideError, match="over the 0 Mpx guard"):
            slide.read_level(0, max_pixels=1000)


def test_pickle_reopens(gradient):
    path, _ = gradient
    with open_slide(str(path), mpp_override=0.3) as slide:
        clone = pickle.loads(pickle.dumps(slide))
    assert clone.mpp == 0.3 and clone.dimensions == (1024, 768)
    assert clone.read_region(0, 0, 0, 8).shape == (8, 8, 3)
    clone.close()


def test_text_file_named_svs(tmp_path):
    fake = tmp_path / "notes.svs"
    fake.write_bytes(b"this is not a slide\n" * 50)
    with pytest.raises(SlideError, match="notes.svs.*does not recognise this file as a slide"):
        open_slide(str(fake))


def test_truncated_corrupt_and_missing(tmp_path, gradient):
    path, _ = gradient
    data = path.read_bytes()
    truncated = tmp_path / "truncated.tiff"
    truncated.write_bytes(data[: len(data) * 99 // 100])  # last tile of the smallest level cut short
    with pytest.raises(SlideError, match=r"truncated\.tiff.*OpenSlide says: .*[Ss]hort read"):
        open_slide(str(truncated))
    headless = tmp_path / "headless.tiff"
    headless.write_bytes(data[: len(data) // 2])  # later IFDs gone
    with pytest.raises(SlideError, match=r"headless\.tiff.*does not recognise.*damaged/truncated"):
        open_slide(str(headless))
    corrupt = tmp_path / "corrupt.tiff"
    damaged = bytearray(data)
    damaged[5000:9000] = bytes(4000)  # level-0 tile data zeroed: shows only when read
    corrupt.write_bytes(bytes(damaged))
    with open_slide(str(corrupt)) as slide:
        with pytest.raises(SlideError, match=r"slide corrupt: reading region .* failed.*OpenSlide says"):
            slide.read_region(0, 0, 0, (1024, 768))
        assert slide.read_region(0, 0, 2, (64, 48)).shape == (48, 64, 3)  # handle reopened
    with pytest.raises(SlideError, match=r"nothing\.svs.* does not exist"):
        open_slide(str(tmp_path / "nothing.svs"))


def test_remote_slide_cached_once(gradient, s3_bucket, s3_options, tmp_path, monkeypatch):
    from medray.storage import atomic_write_bytes

    path, _ = gradient
    uri = f"{s3_bucket}/slides/gradient.tiff"
    atomic_write_bytes(uri, path.read_bytes(), s3_options)
    monkeypatch.setenv("MEDRAY_CACHE_DIR", str(tmp_path / "cache"))
    with open_slide(uri, s3_options) as slide:
        assert slide.slide_id == "gradient"
        assert slide.path.startswith(str(tmp_path / "cache"))
        first = slide.read_region(100, 100, 0, 32)
        cached = slide.path
    mtime = os.stat(cached).st_mtime_ns
    time.sleep(0.05)
    with open_slide(uri, s3_options) as again:
        assert again.path == cached
        np.testing.assert_array_equal(again.read_region(100, 100, 0, 32), first)
    assert os.stat(cached).st_mtime_ns == mtime
    with pytest.raises(SlideError, match="cannot be fetched"):
        open_slide(f"{s3_bucket}/slides/missing.svs", s3_options)


def test_thumbnail_in_strips_matches_whole_level(tmp_path, monkeypatch):
    from medray.slides import reader

    path, _, _ = make_slide(tmp_path / "strips.tiff", width=1024, height=768, levels=1)
    with open_slide(str(path)) as slide:
        whole, ds = slide.thumbnail(256)
        monkeypatch.setattr(reader, "MAX_LEVEL_PIXELS", 100_000)  # force the strip path
        strips, ds_strips = slide.thumbnail(256)
    assert strips.shape == whole.shape == (192, 256, 3) and ds_strips == ds == 4.0
    assert np.abs(strips.astype(int) - whole.astype(int)).mean() < 1.0


def test_remote_multi_file_formats_refused(s3_bucket, s3_options):
    with pytest.raises(SlideError, match=r"spans several files.*copy the slide to a local"):
        open_slide(f"{s3_bucket}/slides/case.mrxs", s3_options)

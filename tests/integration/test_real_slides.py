"""Real Aperio slides (JPEG and JPEG 2000 tiles, with and without mpp) through medray.slides."""

from __future__ import annotations

import numpy as np
import pytest

from medray.errors import SlideError
from medray.slides.grid import tissue_grid
from medray.slides.reader import open_slide
from medray.slides.tissue import tissue_mask


def test_cmu_small_region(shared_slides):
    with open_slide(str(shared_slides / "CMU-1-Small-Region.svs")) as slide:
        assert slide.vendor == "aperio"
        assert slide.slide_id == "CMU-1-Small-Region"
        assert slide.dimensions == (2220, 2967) and slide.level_count == 1
        assert slide.mpp == pytest.approx(0.499)
        assert set(slide.associated_images) == {"label", "macro", "thumbnail"}
        assert slide.associated_image("label").ndim == 3
        assert slide.level_for_mpp(0.5) == (0, pytest.approx(0.499))
        with pytest.raises(SlideError, match=r"no level at 2\.0 µm/px.*available mpps: \[0\.499\]; the closest is 0\.499"):
            slide.level_for_mpp(2.0)
        patch = slide.read_region(1000, 1000, 0, 256)
        assert patch.shape == (256, 256, 3) and patch.dtype == np.uint8
        assert patch.std() > 10  # real tissue texture, not padding
        corner = slide.read_region(2220 - 256, 2967 - 256, 0, 256)
        assert corner.shape == (256, 256, 3)
        with pytest.raises(SlideError, match=r"leaves the slide; level-0 bounds are 0 <= x < 2220, 0 <= y < 2967"):
            slide.read_region(2220 - 255, 0, 0, 256)
        mask = tissue_mask(slide)
        assert 0.15 < mask.tissue_fraction < 0.6
        coords = tissue_grid(mask, 256, 256, 0.5)
        assert 10 < len(coords) < 8 * 11  # some, not all, of the 8×11 grid


def test_aperio_jpeg_tiles_decoded_directly_match_openslide(shared_slides):
    """Aperio's RGB JPEG tiles (shared JPEGTables, 240² tiles) take the direct path, same pixels."""
    path = str(shared_slides / "CMU-1-Small-Region.svs")
    rng = np.random.default_rng(3)
    with open_slide(path) as fast, open_slide(path, tile_decode=False) as plain:
        assert fast.direct_tile_levels == (0,)
        for _ in range(40):
            w, h = (int(v) for v in rng.integers(1, 700, 2))
            x, y = int(rng.integers(0, 2220 - w)), int(rng.integers(0, 2967 - h))
            assert np.array_equal(fast.read_region(x, y, 0, (w, h)), plain.read_region(x, y, 0, (w, h)))
        assert fast._tiles._verified == {0: True}
    with open_slide(str(shared_slides / "tcga-cr-7395-01a-01-ts1.svs")) as jp2k:
        assert jp2k.direct_tile_levels == ()  # JPEG 2000 tiles: OpenSlide decodes them


def test_tcga_jpeg2000_without_mpp(shared_slides):
    path = str(shared_slides / "tcga-cr-7395-01a-01-ts1.svs")
    with open_slide(path) as slide:
        assert slide.dimensions == (4443, 3567) and slide.level_count == 2
        assert slide.level_dimensions[1] == (2221, 1783)
        assert slide.level_downsamples[1] == pytest.approx(2.0, abs=0.01)
        assert slide.mpp is None
        with pytest.raises(SlideError, match="tcga-cr-7395-01a-01-ts1.*no mpp metadata.*set mpp_override"):
            slide.level_for_mpp(0.5)
        low = slide.read_region(2000, 1500, 1, 128)
        assert low.shape == (128, 128, 3) and low.std() > 10
        mask = tissue_mask(slide)
        assert 0.4 < mask.tissue_fraction < 0.85
    with open_slide(path, mpp_override=0.25) as slide:
        assert slide.level_for_mpp(0.5) == (1, pytest.approx(0.5, rel=0.01))


@pytest.mark.slow
def test_slide_travels_to_ray_workers(shared_slides, ray_cluster):
    """A Slide pickles as its URI; the worker reopens it and reads the same pixels."""
    ray = ray_cluster
    with open_slide(str(shared_slides / "CMU-1-Small-Region.svs")) as slide:
        local = slide.read_region(500, 700, 0, 64)

        @ray.remote(num_cpus=0.5)
        def read(s):
            return s.read_region(500, 700, 0, 64), s.mpp

        remote, mpp = ray.get(read.remote(slide))
    np.testing.assert_array_equal(remote, local)
    assert mpp == pytest.approx(0.499)

"""Tissue detection against the known tissue of factory slides; exact box fractions."""

from __future__ import annotations

import numpy as np
import pytest

from medray.errors import ConfigError
from medray.config import load_config
from medray.slides.reader import open_slide
from medray.slides.tissue import TissueConfig, TissueMask, detect_tissue, tissue_mask
from slide_factory import make_slide, tissue_image


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_slide_tissue_matches_known_mask(tmp_path):
    path, _, truth = make_slide(tmp_path / "tissue.tiff", width=1024, height=768, mpp=1.0, levels=3)
    with open_slide(str(path)) as slide:
        # 16 µm/px on a 1 µm/px slide: ×16 → 64×48 mask.
        result = tissue_mask(slide, TissueConfig(mask_mpp=16.0, min_size=64, min_object_um2=1000.0))
    assert result.mask.shape == (48, 64)
    assert result.downsample == pytest.approx(16.0)
    assert result.dimensions == (1024, 768)
    small_truth = truth[8::16, 8::16]  # truth at the mask pixel centres
    iou = _iou(result.mask, small_truth)
    assert iou > 0.9, iou
    assert result.tissue_fraction == pytest.approx(small_truth.mean(), abs=0.03)


def test_blank_slide_has_no_tissue():
    rng = np.random.default_rng(1)
    white = np.clip(rng.normal(238, 3, (200, 300, 3)), 0, 255).astype(np.uint8)
    assert not detect_tissue(white).any()
    assert not detect_tissue(np.full((50, 50, 3), 255, np.uint8)).any()


def test_small_objects_removed_by_area_in_um2():
    rgb, truth = tissue_image(400, 300, seed=3, blobs=((100, 100, 60, 60), (300, 220, 4, 4)))
    config = TissueConfig(open_radius=0, close_radius=0)
    # At 10 µm/px the small blob (~50 px = 5,000 µm²) is under 20,000 µm² and goes; the big one stays.
    mask = detect_tissue(rgb, config, mpp_of_image=10.0)
    assert mask[100, 100] and not mask[220, 300]
    # Without mpp the pixel floor (16 px) keeps it.
    assert detect_tissue(rgb, config)[220, 300]
    big = truth.copy()
    big[:, 200:] = False
    assert _iou(mask, big) > 0.9


def test_holes_filled():
    rgb, _ = tissue_image(200, 200, seed=2, blobs=((100, 100, 80, 80),))
    rgb[90:110, 90:110] = 240  # a white hole inside the tissue
    assert detect_tissue(rgb, TissueConfig(close_radius=0))[100, 100]
    assert not detect_tissue(rgb, TissueConfig(close_radius=0, fill_holes=False))[100, 100]


def test_fraction_exact_on_hand_mask():
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True  # tissue covers level-0 [10, 30) × [10, 30) at downsample 10
    tm = TissueMask(mask, downsample=10.0)
    assert tm.dimensions == (40, 40)
    assert tm.fraction(10, 10, 20, 20) == pytest.approx(1.0)
    assert tm.fraction(0, 0, 20, 20) == pytest.approx(0.25)
    assert tm.fraction(15, 15, 10, 10) == pytest.approx(1.0)
    assert tm.fraction(5, 10, 10, 10) == pytest.approx(0.5)  # half a mask pixel column
    assert tm.fraction(25, 25, 10, 10) == pytest.approx(0.25)
    assert tm.fraction(35, 35, 10, 10) == 0.0  # partly off the mask: counts as no tissue
    fr = tm.fractions(np.array([0, 10, 20]), np.array([0, 10, 20]), 20, 20)
    np.testing.assert_allclose(fr, [0.25, 1.0, 0.25])


def test_config_is_strict():
    with pytest.raises(ConfigError, match="min_saturaton.*did you mean 'min_saturation'"):
        load_config(TissueConfig, overrides=["min_saturaton=0.1"])
    with pytest.raises(ConfigError, match="min_tissue_fraction"):
        load_config(TissueConfig, overrides=["min_tissue_fraction=2"])

"""Coordinate grids and sampling, checked against hand-computed coordinates."""

from __future__ import annotations

import numpy as np
import pytest

from medray.errors import AnnotationError
from medray.slides.annotations import Annotation
from medray.slides.grid import (
    centres_to_topleft,
    filter_in_bounds,
    label_points,
    sample_in_annotations,
    sample_in_tissue_outside,
    tissue_grid,
    topleft_to_centres,
)
from medray.slides.tissue import TissueMask


@pytest.fixture
def top_half():
    """256×256 level-0 slide, mask px = 64 level-0 px, tissue in the top half (y < 128)."""
    mask = np.zeros((4, 4), bool)
    mask[:2] = True
    return TissueMask(mask, downsample=64.0)


def test_grid_non_overlapping(top_half):
    coords = tissue_grid(top_half, patch_size=128, stride=128, min_fraction=0.5)
    np.testing.assert_array_equal(coords, [[0, 0], [128, 0]])
    assert coords.dtype == np.int64


def test_grid_overlapping_keeps_half_tissue(top_half):
    coords = tissue_grid(top_half, patch_size=128, stride=64, min_fraction=0.5)
    np.testing.assert_array_equal(coords, [[0, 0], [64, 0], [128, 0], [0, 64], [64, 64], [128, 64]])
    assert len(tissue_grid(top_half, 128, 64, min_fraction=0.51)) == 3
    assert len(tissue_grid(top_half, 128, 64, min_fraction=0.0)) == 9


def test_grid_at_lower_level(top_half):
    # 64 px at a ×2 level = 128 level-0 px.
    np.testing.assert_array_equal(tissue_grid(top_half, 64, 64, 0.5, level_downsample=2), [[0, 0], [128, 0]])


def test_grid_only_whole_patches_on_slide():
    everywhere = TissueMask(np.ones((2, 3), bool), downsample=100.0, dimensions=(300, 200))
    np.testing.assert_array_equal(tissue_grid(everywhere, 128, 100, 0.5), [[0, 0], [100, 0]])
    assert tissue_grid(everywhere, 256, 100, 0.0).shape == (0, 2)


def test_centre_conversions_and_bounds():
    np.testing.assert_array_equal(centres_to_topleft([[100, 100], [64, 10]], 64), [[68, 68], [32, -22]])
    np.testing.assert_array_equal(topleft_to_centres([[68, 68]], 64), [[100, 100]])
    kept, dropped = filter_in_bounds(np.array([[0, 0], [-1, 0], [72, 0], [73, 0], [0, 73]]), 128, (200, 200))
    np.testing.assert_array_equal(kept, [[0, 0], [72, 0]])
    assert dropped == 3


def _two_regions():
    small = Annotation("tumor", [[0, 0], [100, 0], [100, 100], [0, 100]])
    big = Annotation("tumor", [[1000, 1000], [1300, 1000], [1300, 1300], [1000, 1300]],
                     holes=[[[1100, 1100], [1200, 1100], [1200, 1200], [1100, 1200]]])
    return small, big


def test_sampling_inside_polygons_minus_holes():
    small, big = _two_regions()
    points = sample_in_annotations([small, big], 2000, np.random.default_rng(0))
    assert points.shape == (2000, 2) and points.dtype == np.int64
    in_small, in_big = small.contains(points), big.contains(points)
    assert (in_small | in_big).all()
    in_hole = ((points > 1100) & (points < 1200)).all(axis=1)  # boundary: either way
    assert not in_hole.any()
    # Uniform over area: 10,000 vs 80,000 px² → ~1/9 in the small square.
    assert in_small.mean() == pytest.approx(1 / 9, abs=0.03)
    again = sample_in_annotations([small, big], 2000, np.random.default_rng(0))
    np.testing.assert_array_equal(points, again)


def test_sampling_with_patch_inside():
    small, _ = _two_regions()
    points = sample_in_annotations([small], 200, np.random.default_rng(1), patch_size=80)
    assert ((points >= 40) & (points <= 60)).all()
    with pytest.raises(AnnotationError, match="found only 0 of 5 .*120-px patch.*smaller patch_size"):
        sample_in_annotations([small], 5, np.random.default_rng(1), patch_size=120, max_rounds=3)
    with pytest.raises(AnnotationError, match="no annotation with a positive area"):
        sample_in_annotations([], 5, np.random.default_rng(1))


def test_normal_sampling_outside_annotations(top_half):
    tumour = Annotation("tumor", [[0, 0], [128, 0], [128, 128], [0, 128]])  # top-left quarter
    points = sample_in_tissue_outside(top_half, [tumour], 300, np.random.default_rng(2),
                                      min_fraction=0.5, patch_size=64)
    assert len(points) == 300
    assert not tumour.contains(points).any()
    tl = points - 32
    assert (tl >= 0).all() and (tl + 64 <= 256).all()
    assert (top_half.fractions(tl[:, 0], tl[:, 1], 64, 64) >= 0.5).all()
    # Tissue is y < 128 and the box must be half tissue → centre y < 128; left half is tumour.
    assert (points[:, 1] < 128).all() and (points[:, 0] >= 128).all()
    with pytest.warns(UserWarning, match="found only 0 of 10"):
        none = sample_in_tissue_outside(top_half, [Annotation("t", [[0, 0], [256, 0], [256, 256], [0, 256]])],
                                        10, np.random.default_rng(2), 0.5, 64, max_rounds=2)
    assert none.shape == (0, 2)


def test_label_points():
    small, big = _two_regions()
    big.label = "stroma"
    labels = label_points([[50, 50], [1050, 1050], [1150, 1150], [500, 500]], [small, big])
    assert labels.tolist() == ["tumor", "stroma", "normal", "normal"]

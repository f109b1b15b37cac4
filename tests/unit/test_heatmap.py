"""Pure scoring math with hand-computed numbers: grid geometry, tissue cells, work units, map
assembly, slide scores, tumor area, regions, AUC, Dice, overlay colours and the heatmap TIFF."""

from __future__ import annotations

import numpy as np
import pytest

from medray.infer import heatmap as H
from medray.infer import score_plan as P
from medray.slides.tissue import TissueMask


def test_grid_geometry_hand_computed():
    # 1000 × 700 level-0 px, level 1 at downsample 4, 32-px patches, stride 16 → stride0 64, extent0 128
    g = P.ScoreGrid((1000, 700), 1, 4.0, 32, 16, 0.25)
    assert (g.extent0, g.stride0) == (128, 64)
    assert g.shape == (11, 16)                       # ceil(700/64), ceil(1000/64)
    assert g.cell_mpp == 16.0 and g.cell_area_mm2 == pytest.approx(2.56e-4)
    xs, ys = g.origins([0, 2], [3, 1])
    assert xs.tolist() == [192, 64] and ys.tolist() == [0, 128]
    assert g.centres([1], [1]).tolist() == [[128.0, 128.0]]
    on = g.on_slide()
    # a patch fits when x + 31·4 < 1000 → x <= 832 → col <= 13; y + 124 < 700 → row <= 8
    assert on.sum(axis=1)[0] == 14 and on.sum(axis=0)[0] == 9


def test_a_100k_slide_map_is_small():
    g = P.ScoreGrid((100_000, 100_000), 0, 1.0, 256, 256, 0.25)
    assert g.shape == (391, 391)
    assert P.map_bytes((100_000, 100_000), 64) == 4 * 1563 * 1563  # ~9.8 MB even at a 64-px stride


def test_tissue_cells_and_work_units():
    # 4×4 mask pixels of 100 level-0 px; tissue in the left half only
    mask = np.zeros((4, 4), bool)
    mask[:, :2] = True
    tm = TissueMask(mask, 100.0, (400, 400))
    g = P.ScoreGrid((400, 400), 0, 1.0, 100, 100, None)
    cells = P.tissue_cells(g, tm.fractions, 0.5, chunk_rows=3)
    assert cells.tolist() == [[True, True, False, False]] * 4
    units = list(P.work_units(cells, 3))
    assert [len(r) for r, _ in units] == [3, 3, 2]
    assert units[0][0].tolist() == [0, 0, 1] and units[0][1].tolist() == [0, 1, 0]
    assert list(P.strip_runs(np.array([0, 0, 0, 1, 1]), np.array([2, 3, 5, 0, 1]), 8)) == [(0, 2), (2, 1), (3, 2)]
    assert list(P.strip_runs(np.zeros(5, int), np.arange(5), 2)) == [(0, 2), (2, 2), (4, 1)]


def test_map_assembly_and_slide_scores():
    m = H.new_map((3, 4))
    assert np.isnan(m).all() and m.dtype == np.float32
    H.put(m, [0, 1, 2], [0, 1, 3], [0.2, 0.9, 0.6])
    H.put(m, [2], [2], [0.7])
    s = H.slide_scores(m, top_k=2)
    assert s["max"] == pytest.approx(0.9) and s["top_k_mean"] == pytest.approx(0.8)
    assert s["mean"] == pytest.approx(0.6)
    assert H.slide_scores(H.new_map((2, 2)), 3)["max"] is None
    # two cells >= 0.65 (0.9, 0.7) × (16 µm)² each
    assert H.tumor_area_mm2(m, 0.65, 2.56e-4) == pytest.approx(5.12e-4)
    assert H.tumor_area_mm2(m, 0.65, None) is None


def test_top_regions_in_level0_pixels():
    m = H.new_map((4, 5))
    m[:] = 0.1
    m[0, 0], m[0, 1], m[1, 1] = 0.8, 0.95, 0.7    # one 8-connected region
    m[3, 4] = 0.99                                # a single strong cell
    regions = H.top_regions(m, 0.5, stride0=64, count=5, cell_area_mm2=1e-3)
    assert len(regions) == 2
    first, second = regions
    assert (first["x"], first["y"], first["width"], first["height"]) == (256, 192, 64, 64)
    assert (first["peak_x"], first["peak_y"], first["cells"]) == (288, 224, 1)
    assert (second["x"], second["y"], second["width"], second["height"]) == (0, 0, 128, 128)
    assert (second["peak_x"], second["peak_y"]) == (96, 32)
    assert second["cells"] == 3 and second["mean_prob"] == pytest.approx((0.8 + 0.95 + 0.7) / 3)
    assert second["area_mm2"] == pytest.approx(3e-3)
    assert H.top_regions(m, 0.999, 64, 5) == []


def test_auc_and_dice_hand_computed():
    # positives 0.9, 0.4; negatives 0.5, 0.1: pairs won 3 of 4 → 0.75
    assert H.roc_auc(np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.5, 0.1])) == pytest.approx(0.75)
    assert H.roc_auc(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert H.roc_auc(np.array([1, 1]), np.array([0.5, 0.2])) is None
    a = np.array([[1, 1, 0], [0, 0, 0]], bool)
    b = np.array([[0, 1, 1], [0, 0, 1]], bool)
    assert H.dice(a, b) == pytest.approx(2 * 1 / 5)
    assert H.dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


def test_evaluate_ignores_background_for_auc_but_not_dice():
    m = H.new_map((2, 3))
    H.put(m, [0, 0, 1], [0, 1, 1], [0.9, 0.2, 0.8])
    labels = np.array([[1, 0, 1], [0, 1, 0]], bool)   # (0, 2) is tumor but background: no AUC, a Dice miss
    ev = H.evaluate(m, 0.5, labels, labels)
    assert ev["auc"] == pytest.approx(1.0)
    assert ev["dice"] == pytest.approx(2 * 2 / (2 + 3))
    assert (ev["scored_tumor_cells"], ev["scored_normal_cells"]) == (2, 1)


def test_truth_maps_use_patch_centres():
    from medray.slides.annotations import Annotation

    g = P.ScoreGrid((400, 300), 0, 1.0, 100, 100, 0.5)
    square = Annotation("tumor", [[90, 90], [260, 90], [260, 160], [90, 160]])
    labels, mask = H.truth_maps([square], g)
    # centres (150, 150) and (250, 150) are inside; (50, 150) and (350, 150) are not
    assert labels.tolist() == [[False] * 4, [False, True, True, False], [False] * 4]
    assert mask.tolist() == labels.tolist()


def test_overlay_is_transparent_below_threshold():
    from medray.infer.overlay import heat_rgba, map_to_image, overlay_image

    rgb, alpha = heat_rgba(np.array([np.nan, 0.2, 0.5, 1.0]), 0.5)
    assert alpha.tolist()[:2] == [0, 0] and alpha[2] == pytest.approx(0.35) and alpha[3] == pytest.approx(0.85)
    assert rgb[3].tolist() == [150, 0, 0]
    m = np.array([[0.1, 0.9]], np.float32)
    # an image pixel of 32 level-0 px, cells of 64: two pixels per cell
    assert map_to_image(m, (2, 4), 32, 64) == pytest.approx(np.array([[0.1, 0.1, 0.9, 0.9]] * 2))
    thumb = np.full((200, 400, 3), 200, np.uint8)
    image = overlay_image(thumb, 1.0, np.array([[0.1, 0.9]], np.float32), 200, 0.5)
    assert image.shape[0] == 200 and image.shape[1] > 400
    assert (image[:, :200] == 200).all()                  # below threshold: thumbnail untouched
    assert image[100, 300, 0] > image[100, 300, 1] + 50   # above: red


def test_heatmap_tiff_resolution_and_pyramid(tmp_path):
    import tifffile

    from medray.infer.heatmap_tiff import colourize, write_heatmap_tiff

    m = H.new_map((300, 600))
    m[:100, :100] = 1.0
    path = str(tmp_path / "map.tif")
    sizes = write_heatmap_tiff(path, m, cell_mpp=16.0)
    assert sizes == [(600, 300), (300, 150), (150, 75)]
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.shape == (300, 600, 3) and page.is_tiled
        xres = page.tags["XResolution"].value
        assert 1e4 / (xres[0] / xres[1]) == pytest.approx(16.0, rel=1e-6)   # µm per pixel
        assert tif.pages[1].tags["NewSubfileType"].value == 1
        assert (page.asarray() == colourize(m)).all()
    assert (colourize(m)[200, 200] == 255).all()

"""Synthetic whole slides: real pyramidal TIFFs that OpenSlide opens, truth files that parse back
to the exact layout, a visible tumor/mitosis signal, determinism, bounded memory, S3 output."""

from __future__ import annotations

import json
import tracemalloc
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import openslide
import pytest

from medray.config import load_config
from medray.errors import ConfigError
from medray.synth import slides
from medray.synth.layout import (
    LABEL_TISSUE,
    LABEL_TUMOR,
    SlideLayout,
    make_layout,
    points_in_polygon,
    rasterize_polygon,
    truth_mask,
)
from medray.synth.pyramid import write_pyramid
from medray.synth.render import render_region

SIZE = 4096


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict:
    """One tumor and one normal 4096² slide, written once for the module."""
    out = tmp_path_factory.mktemp("slides")
    config = slides.Config(output=str(out), num_slides=2, width=SIZE, height=SIZE, seed=3,
                           mitoses_per_slide=12, mimics_per_slide=6, points_per_label=50,
                           thumbnail_size=256, progress=False)
    summary = slides.generate(config)
    by_id = {s["slide_id"]: s for s in summary["slides"]}
    return {"out": out, "summary": summary, "by_id": by_id, "config": config}


def _truth(entry: dict) -> dict:
    return json.loads(Path(entry["truth"]).read_text())


def _layout(entry: dict) -> SlideLayout:
    return SlideLayout.from_dict(_truth(entry))


def _region(slide: openslide.OpenSlide, x: int, y: int, size: int = 256, level: int = 0) -> np.ndarray:
    ds = int(slide.level_downsamples[level])
    rgba = slide.read_region((x - size * ds // 2, y - size * ds // 2), level, (size, size))
    return np.asarray(rgba.convert("RGB"), np.float32)


def _darkest(rgb: np.ndarray, count: int = 40) -> float:
    """Mean grey of the ``count`` darkest pixels: how dark the darkest structure is."""
    return float(np.sort(rgb.mean(axis=2).ravel())[:count].mean())


def test_plan_names_tumor_and_normal_slides(generated):
    assert sorted(generated["by_id"]) == ["normal_001", "tumor_001"]
    assert generated["by_id"]["tumor_001"]["has_tumor"] is True
    assert json.loads(Path(generated["summary"]["index"]).read_text())["slides"][0]["slide_id"] == "tumor_001"
    with pytest.raises(ConfigError, match="tumor_slides=3 exceeds num_slides=2"):
        slides.slide_plan(slides.Config(num_slides=2, tumor_slides=3))
    with pytest.raises(ConfigError, match="levels"):
        load_config(slides.Config, overrides=["levels=0"])


def test_openslide_opens_pyramid_with_mpp(generated):
    for entry in generated["summary"]["slides"]:
        slide = openslide.OpenSlide(entry["slide"])
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert slide.level_count == 3
        assert slide.level_dimensions == ((SIZE, SIZE), (SIZE // 4, SIZE // 4), (SIZE // 16, SIZE // 16))
        assert slide.level_downsamples == pytest.approx((1.0, 4.0, 16.0))
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.25)
        assert slide.properties["openslide.level[0].tile-width"] == "256"
        assert entry["mpp"] == 0.25 and entry["dims"] == [SIZE, SIZE]


def test_slide_without_mpp(tmp_path):
    config = slides.Config(output=str(tmp_path), num_slides=1, width=1024, height=1024, mpp=None,
                           mitoses_per_slide=2, mimics_per_slide=1, points_per_label=5,
                           thumbnail_size=128, progress=False)
    entry = slides.generate(config)["slides"][0]
    slide = openslide.OpenSlide(entry["slide"])
    assert slide.level_count == 3
    assert "openslide.mpp-x" not in slide.properties
    assert _truth(entry)["mpp"] is None and entry["mpp"] is None


def test_tumor_is_darker_and_denser_than_normal_and_background_is_white(generated):
    entry = generated["by_id"]["tumor_001"]
    truth, layout = _truth(entry), _layout(entry)
    slide = openslide.OpenSlide(entry["slide"])
    for level, size in ((0, 128), (1, 32)):  # the same 128 level-0 px around each point
        tumor = [_region(slide, x, y, size, level) for x, y in truth["points"]["tumor"][:8]]
        normal = [_region(slide, x, y, size, level) for x, y in truth["points"]["normal"][:8]]
        tumor_grey = np.mean([t.mean() for t in tumor])
        normal_grey = np.mean([n.mean() for n in normal])
        assert tumor_grey < normal_grey - 25, (level, tumor_grey, normal_grey)
        if level == 0:  # fraction of hematoxylin-dark pixels (nuclei)
            nuclear = lambda rgb: float((rgb.mean(axis=2) < 150).mean())  # noqa: E731
            assert np.mean([nuclear(t) for t in tumor]) > 3 * np.mean([nuclear(n) for n in normal])
    # background: a 256 px window with no tissue at all in the truth
    tissue16 = truth_mask(layout, 16, "tissue")
    rows, cols = np.nonzero(~tissue16)
    clear = [(r, c) for r, c in zip(rows, cols)
             if 8 <= r < tissue16.shape[0] - 8 and 8 <= c < tissue16.shape[1] - 8
             and not tissue16[r - 8:r + 8, c - 8:c + 8].any()]
    r, c = clear[len(clear) // 2]
    background = _region(slide, c * 16 + 8, r * 16 + 8)
    assert 232 <= background.mean() <= 248 and background.std() < 8


def test_mitoses_are_darkest_and_mimics_are_dark_hard_negatives(generated):
    entry = generated["by_id"]["tumor_001"]
    truth, layout = _truth(entry), _layout(entry)
    slide = openslide.OpenSlide(entry["slide"])
    assert len(truth["mitoses"]) == 12 and len(truth["mimics"]) == 6
    labels = layout.label_at([m[0] for m in truth["mitoses"]], [m[1] for m in truth["mitoses"]])
    assert (labels >= LABEL_TISSUE).all() and (labels == LABEL_TUMOR).sum() >= 8
    mitosis = [_darkest(_region(slide, x, y, 32)) for x, y in truth["mitoses"]]
    mimic = [_darkest(_region(slide, x, y, 32)) for x, y in truth["mimics"]]
    figures = np.asarray(truth["mitoses"] + truth["mimics"], float)
    plain = [_darkest(_region(slide, x, y, 32)) for x, y in truth["points"]["tumor"]
             if np.hypot(*(figures - [x, y]).T).min() > 48]
    assert len(plain) >= 10
    # every mitosis is darker than 90 % of plain tumor spots; mimics are dark too (hard negatives)
    assert np.median(mitosis) < np.percentile(plain, 10) - 15, (np.median(mitosis), np.percentile(plain, 10))
    assert np.median(mimic) < np.median(plain) - 15
    pairwise = np.hypot(figures[:, None, 0] - figures[None, :, 0], figures[:, None, 1] - figures[None, :, 1])
    assert pairwise[~np.eye(len(figures), dtype=bool)].min() >= 64


def test_truth_files_parse_back_exactly(generated):
    entry = generated["by_id"]["tumor_001"]
    truth, layout = _truth(entry), _layout(entry)
    assert layout.tumors and layout.tumors[0].holes, "the first tumor region carries an exclusion hole"
    (_, seed, _), _ = slides.slide_plan(generated["config"])
    assert slides.slide_layout(generated["config"], seed, True) == layout  # truth.json is exact
    # ASAP XML
    root = ET.parse(entry["xml"]).getroot()
    polys: dict[str, list] = {}
    for ann in root.iter("Annotation"):
        assert ann.get("Type") == "Polygon"
        coords = sorted(ann.iter("Coordinate"), key=lambda c: int(c.get("Order")))
        polys.setdefault(ann.get("PartOfGroup"), []).append([[float(c.get("X")), float(c.get("Y"))]
                                                              for c in coords])
    assert polys[truth["tumor_group"]] == [t.polygon for t in layout.tumors]
    assert polys["_2"] == [h for t in layout.tumors for h in t.holes]
    groups = {g.get("Name") for g in root.iter("Group")}
    assert groups == {truth["tumor_group"], "_2"}
    # NCRF CSVs: every point has the label its file names
    for label, want in (("tumor", LABEL_TUMOR), ("normal", LABEL_TISSUE)):
        rows = [list(map(int, line.split(","))) for line in Path(entry["csv"][label]).read_text().splitlines()]
        assert rows == truth["points"][label] and len(rows) == 50
        assert (layout.label_at([p[0] for p in rows], [p[1] for p in rows]) == want).all()
    # QuPath GeoJSON: closed rings, holes as interior rings
    features = json.loads(Path(entry["geojson"]).read_text())["features"]
    assert [f["properties"]["classification"]["name"] for f in features] == ["Tumor"] * len(layout.tumors)
    for feature, region in zip(features, layout.tumors):
        rings = feature["geometry"]["coordinates"]
        assert rings[0][:-1] == region.polygon and rings[0][-1] == rings[0][0]
        assert [r[:-1] for r in rings[1:]] == region.holes
    # TUPAC16 mitosis CSV: row,col = y,x
    rows = [list(map(int, line.split(","))) for line in Path(entry["mitosis_csv"]).read_text().splitlines()]
    assert rows == [[y, x] for x, y in truth["mitoses"]]
    assert Path(entry["thumbnail"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_normal_slide_has_no_tumor_truth(generated):
    entry = generated["by_id"]["normal_001"]
    truth = _truth(entry)
    assert truth["tumors"] == [] and Path(entry["csv"]["tumor"]).read_text() == ""
    assert len(Path(entry["csv"]["normal"]).read_text().splitlines()) == 50
    assert list(ET.parse(entry["xml"]).getroot().iter("Annotation")) == []
    assert len(truth["mitoses"]) == 12  # all in normal tissue


def test_hole_renders_as_normal_tissue(generated):
    layout = _layout(generated["by_id"]["tumor_001"])
    hole = np.asarray(layout.tumors[0].holes[0])
    cx, cy = hole.mean(axis=0)
    assert layout.label_at([cx], [cy])[0] == LABEL_TISSUE
    tumor16 = truth_mask(layout, 16, "tumor")
    assert not tumor16[int(cy // 16), int(cx // 16)] and truth_mask(layout, 16, "tissue")[int(cy // 16), int(cx // 16)]
    assert (tumor16 <= truth_mask(layout, 16, "tissue")).all()


def test_round_trip_through_project_annotation_parsers(generated):
    annotations = pytest.importorskip("medray.slides.annotations")
    entry = generated["by_id"]["tumor_001"]
    layout = _layout(entry)
    parsed = annotations.read_asap_xml(entry["xml"])
    assert [a.label for a in parsed] == ["tumor"] * len(layout.tumors)
    for ann, region in zip(parsed, layout.tumors):
        np.testing.assert_allclose(ann.exterior[: len(region.polygon)], region.polygon)
        assert len(ann.holes) == len(region.holes)
    shape = (SIZE // 16, SIZE // 16)
    mismatch = annotations.rasterize(parsed, shape, 16) != truth_mask(layout, 16, "tumor")
    assert mismatch.mean() < 0.002
    geo = annotations.read_geojson(entry["geojson"])
    assert [a.label for a in geo] == ["tumor"] * len(layout.tumors) and len(geo[0].holes) == 1
    points = annotations.read_point_csv(entry["csv"]["tumor"], "tumor")
    assert annotations.contains(parsed, points).all()
    normal = annotations.read_point_csv(entry["csv"]["normal"], "normal")
    assert not annotations.contains(parsed, normal).any()


def test_same_seed_same_pixels_and_truth(tmp_path):
    def make(folder: str, seed: int) -> dict:
        config = slides.Config(output=str(tmp_path / folder), num_slides=1, width=1024, height=1024,
                               seed=seed, mitoses_per_slide=3, mimics_per_slide=2, points_per_label=10,
                               thumbnail_size=128, progress=False)
        return slides.generate(config)["slides"][0]

    a, b = make("a", 5), make("b", 5)
    assert _truth(a) == _truth(b)
    assert Path(a["slide"]).read_bytes() == Path(b["slide"]).read_bytes()
    sa, sb = openslide.OpenSlide(a["slide"]), openslide.OpenSlide(b["slide"])
    assert np.array_equal(np.asarray(sa.read_region((0, 0), 0, (1024, 1024))),
                          np.asarray(sb.read_region((0, 0), 0, (1024, 1024))))


def test_layout_geometry_is_exact():
    rng = np.random.default_rng(0)
    layout = make_layout(6000, 4000, seed=11, tumors=3, mitoses=10, mimics=4)
    assert layout == make_layout(6000, 4000, seed=11, tumors=3, mitoses=10, mimics=4)
    assert layout != make_layout(6000, 4000, seed=12, tumors=3, mitoses=10, mimics=4)
    # scanline raster == point-in-polygon at pixel centres, at an offset and a scale
    poly = layout.tumors[0].polygon
    xs0, ys0 = np.min(poly, axis=0) - 40
    mask = rasterize_polygon(poly, (120, 150), offset=(xs0, ys0), scale=8)
    rr, cc = np.mgrid[0:120, 0:150]
    ref = points_in_polygon(xs0 + (cc + 0.5) * 8, ys0 + (rr + 0.5) * 8, poly)
    assert mask.any() and np.array_equal(mask, ref)
    # the whole-slide truth mask agrees with label_at at its pixel centres
    mask8 = truth_mask(layout, 8, "tumor")
    assert mask8.shape == (500, 750)
    rows, cols = rng.integers(0, 500, 400), rng.integers(0, 750, 400)
    labels = layout.label_at((cols + 0.5) * 8, (rows + 0.5) * 8)
    assert np.array_equal(mask8[rows, cols], labels == LABEL_TUMOR)


def test_writer_and_renderer_stream_tile_by_tile():
    """An 8192² level 0 would be 200 MB: writing it must stay far below that."""
    tile = np.full((256, 256, 3), 200, np.uint8)
    calls = []

    def render(x0, y0, ds, w, h):
        calls.append(ds)
        return tile

    tracemalloc.start()
    try:
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            dims = write_pyramid(f"{folder}/big.tif", render, 8192, 8192, levels=3, progress=False)
            peak_writer = tracemalloc.get_traced_memory()[1]
            assert openslide.OpenSlide(f"{folder}/big.tif").level_dimensions == tuple(dims)
        tracemalloc.reset_peak()
        layout = make_layout(50_000, 50_000, seed=1)
        before = tracemalloc.get_traced_memory()[0]
        tile_px = render_region(layout, 20_000, 20_000, 1, 256, 256)
        peak_tile = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert len(calls) == 32 * 32 + 8 * 8 + 2 * 2
    assert peak_writer < 25e6, peak_writer
    assert tile_px.shape == (256, 256, 3) and peak_tile < 12e6, peak_tile


def test_slides_to_s3(s3_bucket, s3_options):
    import pyarrow.fs as pafs

    from medray.storage import get_filesystem, list_files, local_copy

    out = f"{s3_bucket}/synth"
    config = slides.Config(output=out, num_slides=1, width=1024, height=1024, mitoses_per_slide=2,
                           mimics_per_slide=1, points_per_label=5, thumbnail_size=128, progress=False,
                           storage=s3_options)
    entry = slides.generate(config)["slides"][0]
    names = sorted(u.rsplit("/", 1)[1] for u in list_files(out, s3_options))
    assert names == sorted(["slides.json", "tumor_001.tif", "tumor_001.xml", "tumor_001.geojson",
                            "tumor_001_mitoses.csv", "tumor_001_thumbnail.png", "tumor_001_truth.json",
                            "tumor_001_tumor.csv", "tumor_001_normal.csv"])
    fs, path = get_filesystem(out, s3_options)
    every = [i.path for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))]
    assert not [p for p in every if "/.tmp-" in p]
    slide = openslide.OpenSlide(local_copy(entry["slide"], s3_options))
    assert slide.level_count == 3 and float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25)

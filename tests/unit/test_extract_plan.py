"""Pure planning of patch extraction: names, annotation lookup, caps, bounds, chunks, strips."""

from __future__ import annotations

import numpy as np
import pytest

from medray.config.base import load_config
from medray.datasets import extract_plan as P
from medray.datasets.extract_config import ExtractConfig
from medray.errors import ConfigError

CLASSES = ["normal", "tumor"]


def test_slide_id_and_csv_class():
    assert P.slide_id_of("s3://b/slides/tumor_001.tif") == "tumor_001"
    assert P.slide_id_of("/data/x/normal_7.svs") == "normal_7"
    assert P.csv_class("/a/tumor_001_tumor.csv", "tumor_001", CLASSES) == "tumor"
    assert P.csv_class("/a/tumor_001_normal.csv", "tumor_001", CLASSES) == "normal"
    assert P.csv_class("/a/tumor_001_mitoses.csv", "tumor_001", CLASSES) is None


def test_find_annotations_prefers_first_folder_and_one_polygon_file():
    available = {"/ann/s1.geojson", "/ann/s1_tumor.csv", "/slides/s1.xml", "/slides/s1_normal.csv",
                 "/slides/s2.xml", "/slides/s2.geojson", "/slides/s2_normal.csv", "/slides/s2_mitoses.csv"}
    # The annotations folder wins as a whole: no mixing with files beside the slide.
    assert P.find_annotation_uris("s1", ["/ann", "/slides"], available, CLASSES) == \
        ["/ann/s1.geojson", "/ann/s1_tumor.csv"]
    # .xml and .geojson hold the same polygons: only the first is used; unrelated CSVs ignored.
    assert P.find_annotation_uris("s2", ["/ann", "/slides"], available, CLASSES) == \
        ["/slides/s2.xml", "/slides/s2_normal.csv"]
    assert P.find_annotation_uris("s3", ["/ann", "/slides"], available, CLASSES) == []


def test_slide_rng_depends_on_seed_and_slide_only():
    a = P.slide_rng(0, "s1").integers(0, 1 << 30, 4)
    assert np.array_equal(a, P.slide_rng(0, "s1").integers(0, 1 << 30, 4))
    assert not np.array_equal(a, P.slide_rng(1, "s1").integers(0, 1 << 30, 4))
    assert not np.array_equal(a, P.slide_rng(0, "s2").integers(0, 1 << 30, 4))


def test_cap_per_label_keeps_at_most_n_each_deterministically():
    labels = np.array([0] * 10 + [1] * 3)
    keep = P.cap_per_label(labels, 4, np.random.default_rng(0))
    assert np.bincount(labels[keep]).tolist() == [4, 3]
    assert np.all(np.diff(keep) > 0)
    assert np.array_equal(keep, P.cap_per_label(labels, 4, np.random.default_rng(0)))
    assert len(P.cap_per_label(labels, None, np.random.default_rng(0))) == 13


def test_points_become_corners_and_off_slide_ones_are_counted_per_class():
    points = {1: np.array([[100, 100], [10, 10], [990, 500]]), 0: np.array([[500, 500], [500, 500]])}
    corners, labels = P.coordinates_from_points(points, 64)
    plan = P.finish_plan("s", "/s.tif", 0, 0.5, 64, 64, (1000, 800), corners, labels, CLASSES, None,
                         np.random.default_rng(0))
    # (10,10) and (990,500) leave the slide with a 64-px box around them; the duplicate normal row goes.
    assert plan.dropped == {"normal": 0, "tumor": 2}
    assert plan.requested == {"normal": 2, "tumor": 3}
    assert sorted(zip(plan.xs.tolist(), plan.ys.tolist(), plan.labels.tolist())) == [(68, 68, 1), (468, 468, 0)]
    # Reading order: rows top to bottom.
    assert plan.ys.tolist() == [68, 468]
    assert plan.counts(CLASSES) == {"normal": 1, "tumor": 1}


def test_work_units_cover_every_patch_once_with_stable_shard_names():
    n = 1000
    plan = P.SlidePlan("s1", "/s1.tif", 1, 1.0, 64, 128, (10000, 10000), np.arange(n) * 128,
                       np.zeros(n, np.int64), np.arange(n) % 2, {}, {})
    units = P.work_units(plan, 256, {"encoding": "jpeg"})
    assert [u["shard"] for u in units] == [f"s1-{i:05d}.parquet" for i in range(4)]
    assert [len(u["xs"]) for u in units] == [250, 250, 250, 250]  # at most 256, near-equal
    assert sum((u["xs"] for u in units), []) == plan.xs.tolist()
    assert all(u["num_chunks"] == 4 and u["encoding"] == "jpeg" and u["extent"] == 128 for u in units)
    # Three readers: 4 chunks would leave two idle for the last one; 6 keep all three busy.
    units = P.work_units(plan, 256, {}, parallelism=3)
    assert [len(u["xs"]) for u in units] == [166, 167, 167, 166, 167, 167]
    assert sum((u["xs"] for u in units), []) == plan.xs.tolist()
    assert P.work_units(plan, 256, {}, parallelism=3) == units  # same split, same shard names
    empty = P.SlidePlan("s2", "/s2.tif", 0, 1.0, 64, 64, (10, 10), np.zeros(0, np.int64),
                        np.zeros(0, np.int64), np.zeros(0, np.int64), {}, {})
    assert P.work_units(empty, 256, {}) == []


def test_unit_bounds_balance_readers_but_keep_chunks_worth_a_task():
    assert P.unit_bounds(724, 512) == [(0, 362), (362, 724)]
    assert P.unit_bounds(724, 512, parallelism=2) == [(0, 362), (362, 724)]
    assert [hi - lo for lo, hi in P.unit_bounds(4400, 512, parallelism=2)] == [440] * 10
    assert [hi - lo for lo, hi in P.unit_bounds(4400, 512, parallelism=16)] == [275] * 16
    # Too few patches to be worth splitting for the readers: chunks stay >= 64 patches.
    assert P.unit_bounds(80, 1000, parallelism=2) == [(0, 80)]
    assert P.unit_bounds(200, 1000, parallelism=4) == [(0, 66), (66, 133), (133, 200)]
    assert P.unit_bounds(0, 512, parallelism=2) == []


def test_strip_runs_join_adjacent_patches_on_a_row():
    xs = np.array([0, 64, 128, 192, 320, 0, 64])
    ys = np.array([0, 0, 0, 0, 0, 64, 64])
    assert P.strip_runs(xs, ys, 64, 8) == [(0, 4), (4, 1), (5, 2)]
    assert P.strip_runs(xs, ys, 64, 3) == [(0, 3), (3, 1), (4, 1), (5, 2)]
    assert P.strip_runs(xs, ys, 64, 1) == [(i, 1) for i in range(7)]


def test_config_rejects_bad_classes_and_unknown_fields(tmp_path):
    with pytest.raises(ConfigError, match="distinct classes"):
        load_config(ExtractConfig, None, ["classes=[tumor]"])
    with pytest.raises(ConfigError, match="did you mean 'patch_size'"):
        load_config(ExtractConfig, None, ["patchsize=64"])
    cfg = load_config(ExtractConfig, None, ["mode=grid", "patch_size=128", "tissue.min_tissue_fraction=0.2"])
    assert (cfg.mode, cfg.patch_size, cfg.tissue.min_tissue_fraction) == ("grid", 128, 0.2)
    # Where it runs does not change what it extracts: same resume key.
    same = cfg.model_copy(update={"workers": 7, "output": "s3://x/y", "rows_per_shard": 64})
    assert cfg.extraction_hash() == same.extraction_hash()
    assert cfg.extraction_hash() != cfg.model_copy(update={"patch_size": 64}).extraction_hash()


def test_slides_from_folder_glob_or_nothing(tmp_path):
    from medray.datasets.extract import resolve_slide_uris

    for name in ("a.tif", "b.svs", "a.xml", "a_tumor.csv", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert resolve_slide_uris(str(tmp_path)) == [str(tmp_path / "a.tif"), str(tmp_path / "b.svs")]
    assert resolve_slide_uris(f"{tmp_path}/*.svs") == [str(tmp_path / "b.svs")]
    assert resolve_slide_uris([str(tmp_path / "notes.txt")]) == [str(tmp_path / "notes.txt")]
    with pytest.raises(ConfigError, match="matches no slide file"):
        resolve_slide_uris(str(tmp_path / "missing"))

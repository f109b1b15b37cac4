"""End-to-end patch extraction on real generated pyramidal slides: Ray Data, Parquet, resume, S3.

One module-scoped run over five slides (two sizes, one without mpp, one truncated, one not a
slide, one whose annotations lie off the slide) feeds most checks; resume, grid and S3 runs
are smaller.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medray.datasets.codec import decode_image
from medray.datasets.extract import marker_uri, run_extract, shard_paths
from medray.datasets.extract_config import ExtractConfig
from medray.datasets.reader import read_dataset, read_info, split_groups
from medray.slides.annotations import contains, load_annotations, read_point_csv

PATCH = 64


def _rename_slide(folder: Path, old: str, new: str) -> None:
    for path in folder.glob(f"{old}*"):
        path.rename(folder / path.name.replace(old, new, 1))


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    """tumor_001/002 + normal_001 (3072×2048, mpp 0.25), nompp_001 (2048², no mpp), broken files."""
    from medray.synth.slides import Config, generate

    root = tmp_path_factory.mktemp("slides")
    generate(Config(output=str(root), num_slides=3, tumor_slides=2, width=3072, height=2048,
                    points_per_label=40, progress=False, seed=1))
    other = tmp_path_factory.mktemp("nompp")
    generate(Config(output=str(other), num_slides=1, tumor_slides=1, width=2048, height=2048, mpp=None,
                    points_per_label=30, progress=False, seed=2))
    _rename_slide(other, "tumor_001", "nompp_001")
    for path in other.glob("nompp_001*"):
        shutil.move(str(path), root / path.name)
    data = (root / "tumor_002.tif").read_bytes()
    (root / "truncated.tif").write_bytes(data[: len(data) // 3])
    shutil.copy(root / "tumor_002_tumor.csv", root / "truncated_tumor.csv")
    (root / "notaslide.tif").write_text("this is a text file, not a slide\n")
    shutil.copy(root / "tumor_002_tumor.csv", root / "notaslide_tumor.csv")
    shutil.copy(root / "normal_001.tif", root / "offslide.tif")
    (root / "offslide_normal.csv").write_text("x,y\n50000,100\n100,60000\n")
    return root


@pytest.fixture(scope="module")
def first_run(slides, ray_cluster, tmp_path_factory):
    output = tmp_path_factory.mktemp("patches") / "ds"
    cfg = ExtractConfig(slides=str(slides), output=str(output), patch_size=PATCH, mpp=0.25,
                        mpp_override=0.25, rows_per_shard=32, max_per_label=None)
    return cfg, run_extract(cfg, progress=False)


def _rows(uri, storage=None):
    """Every row of the dataset's listed shards (pyarrow, no Ray: quick checks of exact content)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from medray.storage import get_filesystem

    tables = []
    for shard in read_info(uri, storage).shards:
        fs, path = get_filesystem(shard["uri"], storage)
        with fs.open_input_file(path) as handle:
            tables.append(pq.read_table(handle, columns=["image", "encoding", "label_name", "slide_id",
                                                         "x", "y", "mpp"]))
    return pa.concat_tables(tables).to_pandas()


def test_report_statuses_and_reasons(first_run):
    cfg, report = first_run
    by_id = {e["slide_id"]: e for e in report["slides"]}
    assert {k: v["status"] for k, v in by_id.items()} == {
        "nompp_001": "ok", "normal_001": "ok", "tumor_001": "ok", "tumor_002": "ok",
        "notaslide": "failed", "offslide": "failed", "truncated": "failed"}
    assert "not recognise this file as a slide" in by_id["notaslide"]["reason"]
    assert "lie off the slide" in by_id["offslide"]["reason"] and by_id["offslide"]["dropped"]["normal"] == 2
    assert "SlideError" in by_id["truncated"]["reason"]
    report_file = json.loads((Path(cfg.output) / "report.json").read_text())
    assert report_file["counts"] == {"ok": 4, "skipped-complete": 0, "failed": 3}
    assert (Path(cfg.output) / "resolved_config.yaml").is_file()
    # No marker for a failed slide: a re-run tries it again.
    assert not (Path(cfg.output) / "_markers" / "truncated.json").exists()


def test_patches_are_the_csv_centres_with_the_right_pixels(first_run, slides):
    cfg, report = first_run
    info = read_info(cfg.output)
    assert info.class_counts == report["patches"]
    assert sorted(info.groups) == ["nompp_001", "normal_001", "tumor_001", "tumor_002"]
    rows = _rows(cfg.output)
    assert len(rows) == info.num_rows
    assert not rows.duplicated(["slide_id", "x", "y"]).any()
    for slide_id in info.groups:
        mine = rows[rows.slide_id == slide_id]
        for label in ("tumor", "normal"):
            csv = slides / f"{slide_id}_{label}.csv"
            expected = {tuple(p) for p in read_point_csv(str(csv))} if csv.exists() else set()
            got = {(x + PATCH // 2, y + PATCH // 2) for x, y in mine[mine.label_name == label][["x", "y"]].values}
            assert got == expected, (slide_id, label)
        # Centres of tumor patches are inside the tumor polygons, normal ones outside.
        polygons = [a for a in load_annotations(str(slides / f"{slide_id}.xml")) if a.label == "tumor"]
        centres = mine[["x", "y"]].values + PATCH // 2
        inside = contains(polygons, centres) if polygons else np.zeros(len(mine), bool)
        assert np.array_equal(inside, (mine.label_name == "tumor").values), slide_id
    assert set(rows[rows.slide_id == "nompp_001"].mpp) == {0.25}  # from mpp_override
    means = {label: np.mean([decode_image(r.image, r.encoding).mean() for r in part.itertuples()])
             for label, part in rows.groupby("label_name")}
    assert means["tumor"] < means["normal"] - 10, means  # tumor is denser, darker tissue


def test_reads_back_streaming_and_splits_by_slide(first_run):
    cfg, report = first_run
    info = read_info(cfg.output)
    ds = read_dataset(cfg.output, labels=["tumor"])
    assert ds.count() == report["patches"]["tumor"]
    train, val = split_groups(info, val_fraction=0.25, seed=0)
    assert train and val and not set(train) & set(val)
    assert set(train) | set(val) == set(info.groups)
    val_rows = read_dataset(cfg.output, groups=val, columns=["group", "slide_id"]).to_pandas()
    assert set(val_rows.slide_id) == set(val)


def test_contact_sheet_and_overviews(first_run):
    from PIL import Image

    cfg, _ = first_run
    with Image.open(Path(cfg.output) / "contact_sheet.png") as sheet:
        assert sheet.width >= 500 and sheet.height >= 2 * 96
    for slide_id in ("tumor_001", "normal_001", "nompp_001"):
        with Image.open(Path(cfg.output) / "overviews" / f"{slide_id}.png") as image:
            assert max(image.size) == 1024 and min(image.size) >= 256


def test_resume_redoes_only_the_unfinished_slide(first_run, tmp_path):
    cfg, report = first_run
    output = tmp_path / "ds"
    shutil.copytree(cfg.output, output)
    before = read_info(str(output))
    # Simulate a run killed while writing tumor_001: its marker, one shard and dataset.json gone.
    (output / "_markers" / "tumor_001.json").unlink()
    victim = sorted((output / "shards").glob("tumor_001-*.parquet"))[1]
    victim.unlink()
    (output / "dataset.json").unlink()
    again = run_extract(cfg.model_copy(update={"output": str(output), "overviews": False}), progress=False)
    status = {e["slide_id"]: e["status"] for e in again["slides"]}
    assert status["tumor_001"] == "ok" and victim.exists()
    assert [status[s] for s in ("normal_001", "tumor_002", "nompp_001")] == ["skipped-complete"] * 3
    redone = next(e for e in report["slides"] if e["slide_id"] == "tumor_001")
    assert again["patches_written_this_run"] == sum(redone["patches"].values())
    after = read_info(str(output))
    assert after.num_rows == before.num_rows and after.class_counts == before.class_counts
    assert after.fingerprint == before.fingerprint  # byte-identical shards: nothing duplicated or missing
    rows = _rows(str(output))
    assert not rows.duplicated(["slide_id", "x", "y"]).any()
    # Re-chunked on a later resume (bigger shards): the old chunks of that slide are removed.
    (output / "_markers" / "tumor_001.json").unlink()
    run_extract(cfg.model_copy(update={"output": str(output), "overviews": False, "rows_per_shard": 1000}),
                progress=False)
    assert [p.name for p in (output / "shards").glob("tumor_001-*.parquet")] == ["tumor_001-00000.parquet"]
    final = read_info(str(output))
    assert final.num_rows == before.num_rows and final.class_counts == before.class_counts


def test_grid_mode_labels_by_polygon(slides, ray_cluster, tmp_path):
    cfg = ExtractConfig(slides=[str(slides / "tumor_001.tif")], output=str(tmp_path / "grid"), mode="grid",
                        patch_size=PATCH, level=0, max_per_label=None, rows_per_shard=200, overviews=False)
    report = run_extract(cfg, progress=False)
    assert report["counts"]["ok"] == 1 and report["patches"]["tumor"] > 0
    # Near-equal chunks of at most rows_per_shard, as many as keep every reader busy.
    sizes = [s["rows"] for s in read_info(cfg.output).shards]
    assert max(sizes) <= 200 and max(sizes) - min(sizes) <= 1 and sum(sizes) == sum(report["patches"].values())
    assert set(report["stage_seconds"]) == {"read", "encode", "table", "write"}
    assert all(v > 0 for v in report["stage_seconds"].values()) and report["plan_seconds"] > 0
    rows = _rows(cfg.output)
    assert np.all(rows.x % PATCH == 0) and np.all(rows.y % PATCH == 0)
    polygons = [a for a in load_annotations(str(slides / "tumor_001.xml")) if a.label == "tumor"]
    inside = contains(polygons, rows[["x", "y"]].values + PATCH // 2)
    assert np.array_equal(inside, (rows.label_name == "tumor").values)


def test_no_mpp_without_override_fails_with_the_fix(slides, ray_cluster, tmp_path):
    cfg = ExtractConfig(slides=[str(slides / "nompp_001.tif")], output=str(tmp_path / "x"), mpp=0.25,
                        patch_size=PATCH, overviews=False)
    report = run_extract(cfg, progress=False)
    entry = report["slides"][0]
    assert entry["status"] == "failed" and "set mpp_override" in entry["reason"]
    assert report["dataset"] is None and not (tmp_path / "x" / "dataset.json").exists()


@pytest.mark.slow
def test_polygons_mode_from_and_to_s3(slides, ray_cluster, s3_bucket, s3_options):
    from medray.storage import atomic_write_bytes, exists, join_uri

    src = join_uri(s3_bucket, "slides")
    for name in ("tumor_001.tif", "tumor_001.xml"):
        atomic_write_bytes(join_uri(src, name), (slides / name).read_bytes(), s3_options)
    output = join_uri(s3_bucket, "patches")
    cfg = ExtractConfig(slides=f"{src}/*.tif", output=output, mode="polygons", patch_size=PATCH,
                        max_per_label=24, rows_per_shard=16, storage=s3_options)
    report = run_extract(cfg, progress=False)
    assert report["counts"]["ok"] == 1, report
    info = read_info(output, s3_options)
    assert info.class_counts == {"normal": 24, "tumor": 24}
    rows = read_dataset(output, s3_options, columns=["label_name", "x", "y"]).to_pandas()  # streamed from S3
    polygons = [a for a in load_annotations(str(slides / "tumor_001.xml")) if a.label == "tumor"]
    inside = contains(polygons, rows[["x", "y"]].values + PATCH // 2)
    assert np.array_equal(inside, (rows.label_name == "tumor").values)
    assert exists(marker_uri(output, "tumor_001"), s3_options)
    assert exists(join_uri(output, "overviews", "tumor_001.png"), s3_options)
    assert len(shard_paths(output, s3_options)) == 3

"""Manifest ingest with Ray Data: local and S3, bad files reported and skipped, groups never split."""

from __future__ import annotations

import gzip
import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from medray.datasets.manifests import MOSMED_CLASS_MAP, ManifestEntry, read_manifest, write_manifest

CT_CLASSES = ["normal", "abnormal"]


@pytest.fixture(scope="module")
def ct_data(tmp_path_factory) -> dict:
    from medray.synth import ct

    root = tmp_path_factory.mktemp("ct")
    return ct.generate(ct.Config(output=str(root), patients_per_class=2, slices_per_patient=2, image_size=32,
                                 studies_per_class=1, volume_shape=(32, 32, 16), seed=3))


@pytest.fixture(scope="module")
def skin_data(tmp_path_factory) -> dict:
    from medray.synth import skin

    root = tmp_path_factory.mktemp("skin")
    return skin.generate(skin.Config(output=str(root), total_images=70, min_per_class=5, repeat_fraction=0.5,
                                     image_size=32, seed=3))


def _config(**fields):
    from medray.config.base import validate_config
    from medray.datasets.ingest_config import IngestConfig

    return validate_config(IngestConfig, fields)


def _rows(output: str, storage=None) -> list[dict]:
    from medray.datasets.reader import read_dataset

    return read_dataset(output, storage).take_all()


def _patient(source: str) -> str:
    return re.search(r"(P\d{4})_s\d\d", source).group(1)


def test_png_manifest_to_local_dataset(ray_cluster, ct_data, tmp_path):
    from medray.cli import main
    from medray.datasets.codec import decode_image
    from medray.datasets.loaders import load_png
    from medray.datasets.reader import read_info

    out = tmp_path / "ct2d"
    args = ["ingest", "--no-progress", f"manifest={ct_data['manifests']['png']}", "loader.kind=ct2d",
            "loader.image_size=32", "rows_per_shard=3", f"output={out}", "classes=[normal, abnormal]",
            "class_map={CT-0: normal, CT-2: abnormal, CT-3: abnormal}"]
    assert main(args) == 0

    info = read_info(str(out))
    assert info.kind == "ct2d" and info.classes == CT_CLASSES
    assert info.class_counts == {"normal": 4, "abnormal": 8}  # 2 patients x 2 slices per kept CT class
    assert len(info.shards) == 4 and info.extra["shape"] == [1, 32, 32]
    rows = _rows(str(out))
    assert len(rows) == 12
    for row in rows:
        assert row["encoding"] == "png"
        assert row["label"] == CT_CLASSES.index(row["label_name"])
        assert row["group"] == _patient(row["source"])  # the manifest's patient id, not the file
        original = load_png(row["source"], channels=1)
        assert np.array_equal(decode_image(row["image"], "png"), original)  # 8-bit pixels kept exactly
    report = json.loads((out / "report.json").read_text())
    assert report["counts"] == {"entries": 12, "ingested": 12, "skipped": 0, "dropped_by_class_map": 8,
                                "shards": 4}
    assert report["dropped_by_class_map"] == {"CT-1": 4, "CT-4": 4}
    assert len(report["items"]) == 12 and all(i["status"] == "ok" for i in report["items"])
    assert "class_map" in (out / "resolved_config.yaml").read_text()


def test_s3_manifest_to_s3_dataset(ray_cluster, ct_data, s3_bucket, s3_options):
    from medray.datasets.codec import decode_image
    from medray.datasets.ingest import run_ingest
    from medray.datasets.reader import read_info
    from medray.storage import atomic_write_bytes, exists, join_uri

    src = join_uri(s3_bucket, "raw")
    entries = read_manifest(ct_data["manifests"]["dicom"])  # absolute local paths
    moved = []
    for i, entry in enumerate(entries):
        rel = f"dicom/{entry.label}/{i:03d}.dcm"
        atomic_write_bytes(join_uri(src, rel), open(entry.source_ref, "rb").read(), s3_options)
        moved.append(ManifestEntry(rel, entry.label, entry.extra))  # relative to the manifest's folder
    manifest = write_manifest(moved, join_uri(src, "manifest.csv"), s3_options)

    out = join_uri(s3_bucket, "datasets", "ct2d")
    summary = run_ingest(_config(manifest=manifest, class_map=MOSMED_CLASS_MAP, classes=CT_CLASSES,
                                 loader={"kind": "ct2d", "image_size": 32}, rows_per_shard=5, output=out,
                                 storage=s3_options.model_dump()), progress=False)
    assert summary["counts"]["ingested"] == 12 and summary["skipped"] == []
    assert summary["dataset"] == join_uri(out, "dataset.json")
    assert exists(join_uri(out, "report.json"), s3_options)
    assert exists(join_uri(out, "resolved_config.yaml"), s3_options)
    info = read_info(out, s3_options)
    assert info.num_rows == 12 and all(s["uri"].startswith(s3_bucket) for s in info.shards)
    rows = _rows(out, s3_options)
    assert sorted(r["source"] for r in rows) == sorted(join_uri(src, e.source_ref) for e in moved
                                                       if e.label in MOSMED_CLASS_MAP)
    image = decode_image(rows[0]["image"], "png")
    assert image.shape == (32, 32) and image.dtype == np.uint8 and image.std() > 10  # a windowed slice


def test_bad_files_are_reported_and_the_rest_ingested(ray_cluster, ct_data, tmp_path):
    from medray.datasets.ingest import run_ingest
    from medray.datasets.reader import read_info

    good = read_manifest(ct_data["manifests"]["png"])[:4] + read_manifest(ct_data["manifests"]["dicom"])[:3]
    png_bytes = open(good[0].source_ref, "rb").read()
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(png_bytes[: len(png_bytes) // 2])  # truncated mid-stream
    not_dicom = tmp_path / "report.dcm"
    not_dicom.write_text("radiology report, not an image\n" * 20)
    missing = tmp_path / "gone.png"
    bad = [ManifestEntry(str(missing), "CT-0", {"patient": "PX1"}),
           ManifestEntry(str(corrupt), "CT-0", {"patient": "PX2"}),
           ManifestEntry(str(not_dicom), "CT-1", {"patient": "PX3"})]
    manifest = write_manifest(good[:2] + bad + good[2:], str(tmp_path / "manifest.jsonl"))

    out = tmp_path / "ds"
    summary = run_ingest(_config(manifest=manifest, loader={"kind": "ct2d", "image_size": 32},
                                 rows_per_shard=2, output=str(out)), progress=False)
    assert summary["counts"]["ingested"] == len(good) and summary["counts"]["skipped"] == 3
    reasons = {s["source"]: s["reason"] for s in summary["skipped"]}
    assert set(reasons) == {str(missing), str(corrupt), str(not_dicom)}
    assert "missing or unreadable file" in reasons[str(missing)]
    assert "corrupt or truncated image" in reasons[str(corrupt)]
    assert "not a DICOM file" in reasons[str(not_dicom)]
    report = json.loads((out / "report.json").read_text())
    assert report["skipped"] == summary["skipped"]
    assert read_info(str(out)).num_rows == len(good) == len(_rows(str(out)))


def test_volumes_from_mosmed_layout_and_a_wrong_nifti(ray_cluster, ct_data, tmp_path):
    import shutil

    from medray.datasets.codec import decode_image
    from medray.datasets.ingest import run_ingest

    studies = tmp_path / "studies"
    shutil.copytree(ct_data["output"] + "/studies", studies)
    (studies / "CT-0" / "study_0999.nii.gz").write_bytes(gzip.compress(b"not a nifti header" * 40))
    summary = run_ingest(_config(builder={"kind": "mosmed", "root": str(studies)},
                                 loader={"kind": "ct3d", "target_shape": [16, 32, 32]},
                                 output=str(tmp_path / "ct3d")), progress=False)
    assert summary["encoding"] == "npy" and summary["shape"] == [1, 16, 32, 32]
    assert summary["counts"]["ingested"] == 3 and summary["dropped_by_class_map"] == {"CT-1": 1, "CT-4": 1}
    (skipped,) = summary["skipped"]
    assert skipped["source"].endswith("study_0999.nii.gz") and "not a readable NIfTI" in skipped["reason"]
    for row in _rows(str(tmp_path / "ct3d")):
        volume = decode_image(row["image"], "npy")
        assert volume.shape == (1, 16, 32, 32) and volume.dtype == np.float32
        assert 0.0 <= volume.min() and volume.max() <= 1.0
        assert row["group"] == row["source"].rsplit("/", 1)[-1].split(".nii")[0]  # the study id


def test_grouped_split_never_leaks_a_lesion(ray_cluster, skin_data, tmp_path):
    import csv

    from medray.datasets.ingest import run_ingest
    from medray.datasets.reader import read_dataset, read_info, split_groups
    from medray.synth.skin import CLASSES

    out = str(tmp_path / "skin")
    summary = run_ingest(_config(builder={"kind": "ham10000", "metadata_csv": skin_data["metadata"],
                                          "images_dir": skin_data["images_dir"]},
                                 classes=CLASSES, loader={"kind": "skin", "image_size": 32},
                                 rows_per_shard=16, output=out), progress=False)
    assert summary["counts"]["ingested"] == 70
    lesion_of = {r["image_id"]: r["lesion_id"] for r in csv.DictReader(open(skin_data["metadata"]))}
    assert len(set(lesion_of.values())) < 70  # some lesions have several photographs
    info = read_info(out)
    rows = _rows(out)
    for row in rows:
        assert row["group"] == lesion_of[row["source"].rsplit("/", 1)[-1][:-4]]
        assert row["label"] == CLASSES.index(row["label_name"])
    # shards hold several groups; their records carry exact per-group class counts
    assert sum(n for s in info.shards for g in s["group_class_counts"].values() for n in g.values()) == 70
    for seed in range(3):
        train_groups, val_groups = split_groups(info, 0.25, seed)
        train = read_dataset(out, groups=train_groups, columns=["group", "source"]).take_all()
        val = read_dataset(out, groups=val_groups, columns=["group", "source"]).take_all()
        assert {r["group"] for r in train}.isdisjoint({r["group"] for r in val})
        assert len(train) + len(val) == 70 and val
    first = pq.read_table(info.shards[0]["uri"])
    assert first.column("encoding").to_pylist()[0] == "png"


def test_user_errors_name_the_fix(ray_cluster, ct_data, tmp_path):
    from medray.datasets.ingest import run_ingest
    from medray.errors import ConfigError, DataError

    with pytest.raises(ConfigError, match="exactly one of manifest"):
        _config(output=str(tmp_path))
    with pytest.raises(ConfigError, match="use encoding=npy"):
        _config(manifest="m.jsonl", loader={"kind": "ct3d"}, encoding="png")
    with pytest.raises(ConfigError, match=r"\['CT-1', 'CT-4'\] are not in classes"):
        run_ingest(_config(manifest=ct_data["manifests"]["png"], output=str(tmp_path / "a"),
                           classes=["CT-0", "CT-2", "CT-3"]), progress=False)
    manifest = write_manifest([ManifestEntry(str(tmp_path / f"{i}.png"), c) for i, c in enumerate("ab")],
                              str(tmp_path / "gone.jsonl"))
    with pytest.raises(DataError, match="no item of 2 could be ingested"):
        run_ingest(_config(manifest=manifest, output=str(tmp_path / "b")), progress=False)
    assert (tmp_path / "b" / "report.json").exists() and not (tmp_path / "b" / "dataset.json").exists()

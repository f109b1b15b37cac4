"""Manifests: JSONL/CSV round trips, line-numbered errors, builders on generated layouts, splits."""

from __future__ import annotations

import csv
import os
from collections import Counter

import pytest

from medray.datasets.manifests import (
    ManifestEntry,
    class_counts,
    from_class_folders,
    from_ham10000,
    from_mosmed,
    read_manifest,
    shuffle,
    split_grouped,
    write_manifest,
)
from medray.errors import DataError
from medray.synth import ct, skin


@pytest.fixture(scope="module")
def ct_root(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("ct"))
    ct.generate(ct.Config(output=out, patients_per_class=2, slices_per_patient=2, image_size=32,
                          studies_per_class=2, volume_shape=(16, 16, 8), formats=["png", "nifti"]))
    return out


@pytest.fixture(scope="module")
def skin_root(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("skin"))
    skin.generate(skin.Config(output=out, total_images=120, image_size=32, repeat_fraction=0.5))
    return out


def _entries() -> list[ManifestEntry]:
    return [ManifestEntry(f"/data/img_{i}.png", "a" if i % 3 else "b", {"group": f"g{i // 2}", "patient": f"p{i}"})
            for i in range(6)]


@pytest.mark.parametrize("name", ["m.jsonl", "m.csv"])
def test_round_trip(tmp_path, name):
    entries = _entries()
    uri = write_manifest(entries, str(tmp_path / name))
    assert read_manifest(uri) == entries
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no temp file left behind
    first = (tmp_path / name).read_text().splitlines()[0]
    expected = "source-ref,class,group,patient" if name.endswith(".csv") else \
        '{"source-ref": "/data/img_0.png", "class": "b", "group": "g0", "patient": "p0"}'
    assert first == expected


def test_round_trip_on_s3(s3_bucket, s3_options):
    uri = write_manifest(_entries(), f"{s3_bucket}/manifests/m.jsonl", s3_options)
    assert read_manifest(uri, s3_options) == _entries()


def test_relative_refs_resolve_against_the_manifest_folder(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"source-ref": "png/x.png", "class": "c"}\n'
                                      '{"source-ref": "s3://b/y.png", "class": "c"}\n')
    refs = [e.source_ref for e in read_manifest(str(tmp_path / "m.jsonl"))]
    assert refs == [f"{tmp_path}/png/x.png", "s3://b/y.png"]
    assert read_manifest(str(tmp_path / "m.jsonl"), resolve=False)[0].source_ref == "png/x.png"


def test_malformed_lines_are_reported_with_numbers(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"source-ref": "a.png", "class": "x"}\n'
                                        '{"source-ref": "b.png", "class": \n'
                                        '\n'
                                        '{"source-ref": "c.png"}\n'
                                        '["d.png", "x"]\n')
    with pytest.raises(DataError, match=r"(?s)bad\.jsonl: 3 malformed.*line 2: not valid JSON.*"
                                        r"line 4: missing \['class'\].*line 5: expected a JSON object"):
        read_manifest(str(tmp_path / "bad.jsonl"))
    (tmp_path / "bad.csv").write_text("source-ref,class,group\na.png,x,g1\nb.png,x\nc.png,,g3\n")
    with pytest.raises(DataError, match=r"(?s)line 3: expected 3 columns.*line 4: missing \['class'\]"):
        read_manifest(str(tmp_path / "bad.csv"))
    (tmp_path / "nohead.csv").write_text("path,label\na.png,x\n")
    with pytest.raises(DataError, match=r"nohead\.csv: CSV header must name 'source-ref' and 'class'.*'label'\]"):
        read_manifest(str(tmp_path / "nohead.csv"))


def test_from_class_folders_on_generated_png_layout(ct_root):
    entries = from_class_folders(f"{ct_root}/png")
    assert class_counts(entries) == {f"CT-{k}": 4 for k in range(5)}  # 2 patients × 2 slices
    assert all(e.source_ref.endswith(".png") and f"/png/{e.label}/" in e.source_ref for e in entries)
    with pytest.raises(DataError, match="no images in class folders"):
        from_class_folders(f"{ct_root}/studies/CT-0")


def test_from_mosmed_applies_the_class_map(ct_root):
    entries, dropped = from_mosmed(ct_root)
    assert dropped == {"CT-1": 2, "CT-4": 2}
    assert class_counts(entries) == {"abnormal": 4, "normal": 2}
    assert {e.extra["category"] for e in entries if e.label == "abnormal"} == {"CT-2", "CT-3"}
    assert all(e.source_ref.endswith(".nii.gz") and e.extra["group"].startswith("study_") for e in entries)
    entries, dropped = from_mosmed(ct_root, {"CT-4": "severe"})
    assert class_counts(entries) == {"severe": 2} and sum(dropped.values()) == 8
    with pytest.raises(DataError, match=r"no NIfTI study falls in class_map \['CT-9'\].*CT-0"):
        from_mosmed(ct_root, {"CT-9": "x"})


def test_synth_manifest_matches_the_mosmed_builder(ct_root):
    written = read_manifest(f"{ct_root}/manifest_nifti.jsonl")
    built, _ = from_mosmed(ct_root, {f"CT-{k}": f"CT-{k}" for k in range(5)})
    assert sorted((e.source_ref, e.label) for e in written) == sorted((e.source_ref, e.label) for e in built)


def test_ham10000_group_split_never_leaks_a_lesion(skin_root):
    entries = from_ham10000(f"{skin_root}/HAM10000_metadata.csv", f"{skin_root}/images")
    assert len(entries) == 120
    assert all(e.extra["group"] == e.extra["lesion_id"] and e.source_ref.endswith(e.extra["image_id"] + ".jpg")
               for e in entries)
    assert max(Counter(e.extra["lesion_id"] for e in entries).values()) >= 2
    splits = split_grouped(entries, {"train": 0.8, "val": 0.2}, seed=3)
    train_groups = {e.extra["group"] for e in splits["train"]}
    val_groups = {e.extra["group"] for e in splits["val"]}
    assert not train_groups & val_groups
    assert sorted(e.source_ref for s in splits.values() for e in s) == sorted(e.source_ref for e in entries)
    # Stratified: the big class lands near 80/20 and every class is in train.
    nv = [sum(e.label == "nv" for e in splits[s]) for s in ("train", "val")]
    assert abs(nv[1] / sum(nv) - 0.2) < 0.08
    assert set(class_counts(splits["train"])) == set(skin.CLASSES)
    # The metadata CSV is sorted by class; each split comes back shuffled.
    assert [e.label for e in splits["train"]] != sorted(e.label for e in splits["train"])
    assert split_grouped(entries, {"train": 0.8, "val": 0.2}, seed=3) == splits


def test_ham10000_missing_image_is_named(skin_root, tmp_path):
    rows = list(csv.DictReader(open(f"{skin_root}/HAM10000_metadata.csv")))
    rows[5]["image_id"] = "ISIC_9999999"
    with open(tmp_path / "meta.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(DataError, match=r"meta\.csv: 1 image\(s\) not found under .*\['ISIC_9999999'\]"):
        from_ham10000(str(tmp_path / "meta.csv"), f"{skin_root}/images")


def test_shuffle_is_a_seeded_permutation():
    entries = [ManifestEntry(f"f{i}.png", str(i % 4)) for i in range(50)]
    once = shuffle(entries, seed=1)
    assert sorted(once, key=lambda e: e.source_ref) == sorted(entries, key=lambda e: e.source_ref)
    assert len(set(e.source_ref for e in once)) == 50
    assert once != entries and once == shuffle(entries, seed=1) and once != shuffle(entries, seed=2)


def test_split_errors():
    entries = [ManifestEntry("a.png", "x"), ManifestEntry("b.png", "y", {"group": "g"})]
    with pytest.raises(DataError, match=r"entry 0 \(a\.png\) has no 'group'.*group_key='source-ref'"):
        split_grouped(entries)
    with pytest.raises(DataError, match="sum to 1"):
        split_grouped(entries, {"train": 0.8, "val": 0.3}, group_key="source-ref")
    splits = split_grouped(entries, {"train": 0.5, "val": 0.5}, group_key="source-ref")
    assert sum(len(s) for s in splits.values()) == 2

"""Dataset shards: only shards listed in dataset.json are read; filters and group splits."""

import json

import numpy as np
import pytest

from medray import storage
from medray.datasets import codec, reader, schema, shards
from medray.errors import DataError


def _rows(group: str, labels: list[str], classes=("normal", "tumor")):
    rows = []
    for i, name in enumerate(labels):
        pixels = np.full((8, 8, 3), 40 * i % 255, np.uint8)
        rows.append({"image": codec.encode_image(pixels, "png"), "encoding": "png",
                     "label": classes.index(name), "label_name": name, "group": group,
                     "source": f"mem://{group}/{i}"})
    return rows


@pytest.fixture
def dataset(tmp_path):
    out = str(tmp_path / "ds")
    records = [
        shards.write_shard(shards.rows_to_table(_rows(g, labels)), out, f"{g}-0")
        for g, labels in [("s1", ["normal"] * 3 + ["tumor"] * 2), ("s2", ["normal"] * 4),
                          ("s3", ["tumor"] * 3 + ["normal"]), ("s4", ["normal"] * 2)]
    ]
    meta = shards.finalize_dataset(out, records, ["normal", "tumor"], kind="patches")
    return out, meta


def test_dataset_json_lists_counts_and_fingerprint(dataset):
    out, meta = dataset
    info = reader.read_info(out)
    assert info.num_rows == 15 and info.class_counts == {"normal": 10, "tumor": 5}
    assert info.groups == ["s1", "s2", "s3", "s4"]
    assert info.fingerprint == meta["fingerprint"] and len(info.fingerprint) == 64


def test_folder_without_dataset_json_is_not_a_dataset(tmp_path):
    shards.write_shard(shards.rows_to_table(_rows("s1", ["normal"])), str(tmp_path / "x"), "s1-0")
    with pytest.raises(DataError, match="dataset.json is missing"):
        reader.read_info(str(tmp_path / "x"))


def test_unlisted_shards_are_never_read(ray_cluster, dataset):
    out, _ = dataset
    # A shard from a crashed run that never made it into dataset.json.
    shards.write_shard(shards.rows_to_table(_rows("s9", ["tumor"] * 7)), out, "s9-0")
    ds = reader.read_dataset(out)
    assert ds.count() == 15
    groups = {row["group"] for row in ds.take_all()}
    assert "s9" not in groups


def test_filters_by_label_and_group(ray_cluster, dataset):
    out, _ = dataset
    assert reader.read_dataset(out, labels=["tumor"]).count() == 5
    rows = reader.read_dataset(out, groups=["s1", "s3"], labels=["normal"]).take_all()
    assert len(rows) == 4 and {r["group"] for r in rows} == {"s1", "s3"}
    img = codec.decode_image(rows[0]["image"], rows[0]["encoding"])
    assert img.shape == (8, 8, 3)
    with pytest.raises(DataError, match=r"labels \['mitosis'\] are not in"):
        reader.read_dataset(out, labels=["mitosis"])


def test_split_by_group_never_shares_a_group(dataset):
    out, _ = dataset
    info = reader.read_info(out)
    for seed in range(5):
        train, val = reader.split_groups(info, val_fraction=0.5, seed=seed)
        assert set(train).isdisjoint(val) and set(train) | set(val) == set(info.groups)
        assert val and train


def test_shards_on_loopback_s3(ray_cluster, s3_bucket, s3_options):
    out = f"{s3_bucket}/patches"
    record = shards.write_shard(shards.rows_to_table(_rows("a", ["tumor", "normal"])), out, "a-0",
                                s3_options)
    shards.finalize_dataset(out, [record], ["normal", "tumor"], "patches", s3_options)
    meta = json.loads(storage.read_bytes(f"{out}/{schema.METADATA_FILE}", s3_options))
    assert meta["num_rows"] == 2
    assert reader.read_dataset(out, s3_options).count() == 2


def test_filters_work_with_a_column_subset(ray_cluster, dataset):
    out, _ = dataset
    rows = reader.read_dataset(out, groups=["s2"], columns=["label"]).take_all()
    assert len(rows) == 4 and all(set(r) == {"label"} for r in rows)


def test_split_is_stratified_by_exact_group_counts_in_mixed_shards(tmp_path):
    # One shard mixing every group (as manifest ingest writes): strata come from group_class_counts.
    rows = []
    for g in range(8):
        rows += _rows(f"p{g}", ["tumor"] if g < 4 else ["normal"])
    record = shards.write_shard(shards.rows_to_table(rows), str(tmp_path / "mixed"), "all")
    record["group_class_counts"] = {f"p{g}": {"tumor" if g < 4 else "normal": 1} for g in range(8)}
    shards.finalize_dataset(str(tmp_path / "mixed"), [record], ["normal", "tumor"], "images")
    info = reader.read_info(str(tmp_path / "mixed"))
    train, val = reader.split_groups(info, val_fraction=0.25, seed=1)
    assert sum(g in {"p0", "p1", "p2", "p3"} for g in val) == 1
    assert sum(g in {"p4", "p5", "p6", "p7"} for g in val) == 1

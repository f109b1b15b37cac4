"""Two-stage mitosis detection end to end on generated HPFs: patch datasets, training with FP
oversampling, threshold tuning, distributed detection (CSV + overlays), the sliding-window
comparison, and per-image failures recorded while the batch goes on."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

F1_FLOOR = 0.6


def _hpf(root, seed, n):
    from medray.synth.hpf import Config, generate

    generate(Config(output=str(root), num_images=n, size=512, mitoses_min=2, mitoses_max=5,
                    mimics_per_image=4, seed=seed))
    return str(root)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("mitosis")
    return {"train": _hpf(base / "hpf", 1, 10), "test": _hpf(base / "test", 2, 4), "base": base}


def _config(hpf_dir, output, **over):
    from medray.mitosis.config import MitosisConfig

    data = {"inputs": {"hpf_dir": hpf_dir}, "output": str(output),
            "train": {"labels": ["normal", "mitosis"], "model": {"name": "smallcnn"},
                      "preprocessing": {"size": 64}, "epochs": 6, "batch_size": 32, "num_threads": 1,
                      "optimizer": {"lr": 0.002}, "imbalance": "balanced_sampling",
                      "fp_oversampling": {"rounds": 1, "negative_class": "normal", "positive_class": "mitosis"}},
            "detect": {"torch_threads": 1, "cpus_per_actor": 1.0}}
    data.update(over)
    return MitosisConfig.model_validate(data)


def test_prepare_writes_labelled_patches_and_records_bad_images(data, tmp_path):
    from medray.datasets.reader import read_info
    from medray.mitosis.workflow import prepare

    hpf = tmp_path / "hpf"
    shutil.copytree(data["train"], hpf)
    (hpf / "images" / "hpf_000.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")      # corrupt PNG
    (hpf / "mitoses" / "hpf_001.csv").write_text("100,200\nrow,col\n")               # bad CSV row
    (hpf / "mitoses" / "hpf_002.csv").unlink()                                         # truth missing
    out = prepare(_config(str(hpf), tmp_path / "out", patches={"val_fraction": 0.3, "seed": 0}))
    failures = {f["unit_id"]: f["error"] for part in ("train", "val") for f in out[part]["failures"]}
    assert set(failures) == {"hpf_000", "hpf_001", "hpf_002"}
    assert "corrupt or truncated image" in failures["hpf_000"]
    assert "line 2 'row,col' is not 'row,col' numbers" in failures["hpf_001"]
    assert "no mitosis CSV" in failures["hpf_002"]
    for part in ("train", "val"):
        info = read_info(str(tmp_path / "out" / "patches" / part))
        assert info.classes == ["normal", "mitosis"]
        assert info.class_counts["mitosis"] > 0 and info.class_counts["normal"] > info.class_counts["mitosis"]
        assert set(info.groups) == set(out["split"][part]) - set(failures)
        assert info.extra["proposal_recall"] >= 0.95
    row = _first_rows(tmp_path / "out" / "patches" / "train")
    assert {"image_id", "x", "y", "kind", "distance"} <= set(row)
    pos = [r for r in row["rows"] if r["label_name"] == "mitosis"]
    assert all(r["distance"] <= 20 for r in pos)
    assert all(r["distance"] > 30 for r in row["rows"] if r["label_name"] == "normal")


def _first_rows(uri):
    import pyarrow.parquet as pq

    from medray.datasets.reader import read_info

    info = read_info(str(uri))
    table = pq.read_table(info.shards[0]["uri"]).drop_columns(["image"])
    rows = table.to_pylist()
    return {**{k: None for k in table.column_names}, "rows": rows}


@pytest.mark.slow
def test_train_detect_compare_end_to_end(ray_cluster, data, tmp_path):
    from medray.mitosis.compare import compare
    from medray.mitosis.detect import run_detection
    from medray.mitosis.workflow import prepare, train
    from medray.models.bundle import load_model

    cfg = _config(data["train"], tmp_path / "out")
    prepare(cfg)
    result = train(cfg)
    assert result["fp_rounds"] and result["fp_rounds"][0]["round"] == 1  # FP oversampling ran
    model = load_model(result["bundle_uri"])
    tuned = model.extra["mitosis"]
    assert model.threshold == tuned["threshold"] and 0 < tuned["threshold"] < 1
    assert tuned["val_f1"] >= F1_FLOOR

    # test images + one corrupt image: the batch records the failure and goes on
    test = tmp_path / "test"
    shutil.copytree(data["test"], test)
    (test / "images" / "hpf_broken.png").write_bytes(b"garbage")
    tcfg = _config(str(test), tmp_path / "out")
    summary = run_detection(tcfg)
    assert summary["succeeded"] == 4 and summary["failed"] == 1
    assert summary["failures"][0]["unit_id"] == "hpf_broken"
    assert "not a PNG or JPEG" in summary["failures"][0]["error"]
    assert summary["metrics"]["overall"]["f1"] >= F1_FLOOR
    with open(tmp_path / "out" / "detect" / "detections.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and set(rows[0]) == {"image", "source", "x", "y", "probability"}
    assert all(float(r["probability"]) >= tuned["threshold"] for r in rows)
    assert len(rows) == summary["detections"]
    overlay = tmp_path / "out" / "detect" / "overlays" / "hpf_000.png"
    assert overlay.read_bytes()[:4] == b"\x89PNG"

    (test / "images" / "hpf_broken.png").unlink()
    report = compare(tcfg)
    p, s = report["approaches"]["proposals"], report["approaches"]["sliding_window"]
    assert s["tiles"] > 5 * p["tiles"]
    assert p["f1"] >= F1_FLOOR
    assert json.loads((tmp_path / "out" / "compare" / "compare.json").read_text())["tiles_ratio"] > 5
    assert "| sliding_window |" in (tmp_path / "out" / "compare" / "compare.md").read_text()


def test_slide_regions_use_level0_coordinates(data, tmp_path):
    """A slide region's truth is clipped to the region and shifted into its pixel frame."""
    from medray.mitosis.config import InputConfig
    from medray.mitosis.inputs import collect_units, load_unit
    from medray.synth.slides import Config, generate

    out = generate(Config(output=str(tmp_path / "slides"), num_slides=1, width=1024, height=1024, levels=1,
                          mitoses_per_slide=6, mimics_per_slide=2, points_per_label=4, progress=False))
    entry = out["slides"][0]
    truth = json.loads((tmp_path / "slides" / f"{entry['slide_id']}_truth.json").read_text())["mitoses"]
    x, y = truth[0]
    box = (max(0, x - 100), max(0, y - 100), 256, 256)
    units = collect_units(InputConfig(slides=[{"slide": entry["slide"], "regions": [box],
                                               "mitoses_csv": entry["mitosis_csv"]}]))
    rgb, local_truth, offset = load_unit(units[0])
    assert rgb.shape == (256, 256, 3) and offset == box[:2]
    assert [x - box[0], y - box[1]] in local_truth.tolist()
    assert np.all((local_truth >= 0) & (local_truth < 256))

"""Synthetic high-power fields: images, TUPAC16 row,col CSVs and truth.json agree; mitoses are
the darkest structures; same seed, same bytes; PNG, TIFF and S3 outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medray.config import load_config
from medray.errors import ConfigError
from medray.synth import hpf


@pytest.fixture(scope="module")
def fields(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("hpf")
    config = hpf.Config(output=str(out), num_images=3, size=512, mitoses_min=2, mitoses_max=4,
                        mimics_per_image=3, seed=4)
    return {"out": out, "config": config, "summary": hpf.generate(config)}


def _darkest(image: np.ndarray, x: int, y: int, half: int = 16, count: int = 40) -> float:
    window = image[max(0, y - half):y + half, max(0, x - half):x + half].mean(axis=2)
    return float(np.sort(window.ravel())[:count].mean())


def test_files_and_csvs_match_truth(fields):
    out = fields["out"]
    truth = json.loads((out / "truth.json").read_text())
    assert truth["size"] == 512 and truth["mpp"] == 0.25
    assert sorted(p.name for p in (out / "images").iterdir()) == ["hpf_000.png", "hpf_001.png", "hpf_002.png"]
    assert sorted(p.name for p in (out / "mitoses").iterdir()) == ["hpf_000.csv", "hpf_001.csv", "hpf_002.csv"]
    for entry, summary in zip(truth["images"], fields["summary"]["images"]):
        image = np.asarray(Image.open(out / entry["image"]))
        assert image.shape == (512, 512, 3) and image.dtype == np.uint8
        rows = [list(map(int, line.split(","))) for line in (out / entry["csv"]).read_text().splitlines()]
        assert rows == [[y, x] for x, y in entry["mitoses"]]  # TUPAC16: row,col
        assert 2 <= len(rows) <= 4 and summary["num_mitoses"] == len(rows)
        assert len(entry["mimics"]) == 3
        for x, y in entry["mitoses"] + entry["mimics"]:
            assert 24 <= x < 512 - 24 and 24 <= y < 512 - 24


def test_mitoses_are_darker_than_plain_nuclei(fields):
    out = fields["out"]
    truth = json.loads((out / "truth.json").read_text())
    mitosis, mimic, plain = [], [], []
    rng = np.random.default_rng(0)
    for entry in truth["images"]:
        image = np.asarray(Image.open(out / entry["image"]), np.float32)
        figures = np.asarray(entry["mitoses"] + entry["mimics"], float)
        mitosis += [_darkest(image, x, y) for x, y in entry["mitoses"]]
        mimic += [_darkest(image, x, y) for x, y in entry["mimics"]]
        for x, y in rng.integers(32, 480, (40, 2)):
            if np.hypot(*(figures - [x, y]).T).min() > 48:
                plain.append(_darkest(image, x, y))
    assert np.max(mitosis) < np.percentile(plain, 10), (mitosis, np.percentile(plain, 10))
    assert np.median(mimic) < np.median(plain) - 20


def test_same_seed_same_bytes(fields, tmp_path):
    again = hpf.generate(fields["config"].model_copy(update={"output": str(tmp_path), "num_images": 1}))
    first = fields["summary"]["images"][0]
    assert Path(again["images"][0]["image"]).read_bytes() == Path(first["image"]).read_bytes()
    assert Path(again["images"][0]["mitosis_csv"]).read_text() == Path(first["mitosis_csv"]).read_text()
    other = hpf.field_layout(fields["config"].model_copy(update={"seed": 5}), 0)
    assert other.mitoses != hpf.field_layout(fields["config"], 0).mitoses


def test_tiff_output_and_zero_mitosis_fields(tmp_path):
    import tifffile

    config = hpf.Config(output=str(tmp_path), num_images=1, size=256, mitoses_min=0, mitoses_max=0,
                        mimics_per_image=1, image_format="tiff")
    summary = hpf.generate(config)
    image = tifffile.imread(summary["images"][0]["image"])
    assert image.shape == (256, 256, 3)
    assert Path(summary["images"][0]["mitosis_csv"]).read_text() == ""


def test_bad_range_is_a_config_error():
    with pytest.raises(ConfigError, match="mitoses_min=5 > mitoses_max=2"):
        load_config(hpf.Config, overrides=["mitoses_min=5", "mitoses_max=2"])


def test_hpf_to_s3(s3_bucket, s3_options):
    from medray.storage import list_files, read_bytes

    out = f"{s3_bucket}/hpf"
    config = hpf.Config(output=out, num_images=1, size=256, mitoses_min=1, mitoses_max=1,
                        mimics_per_image=1, storage=s3_options)
    hpf.generate(config)
    names = [u[len(out) + 1:] for u in list_files(out, s3_options)]
    assert names == ["images/hpf_000.png", "mitoses/hpf_000.csv", "truth.json"]
    truth = json.loads(read_bytes(f"{out}/truth.json", s3_options))
    (x, y), = truth["images"][0]["mitoses"]
    assert read_bytes(f"{out}/mitoses/hpf_000.csv", s3_options).decode() == f"{y},{x}\n"

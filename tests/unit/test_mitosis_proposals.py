"""Stage 1 proposals on generated HPFs (known mitoses), patch extraction/labelling, input errors."""

from __future__ import annotations

import numpy as np
import pytest

from medray.errors import DataError
from medray.mitosis.config import PatchConfig, ProposalConfig
from medray.mitosis.patches import extract_patches, label_points
from medray.mitosis.proposals import merge_close, propose, proposal_recall
from medray.mitosis.sliding_window import window_centres


@pytest.fixture(scope="module")
def fields():
    from medray.synth.hpf import Config, field_layout, render_field

    cfg = Config(size=512, num_images=6, mitoses_min=2, mitoses_max=5, mimics_per_image=3, seed=5)
    return [(field_layout(cfg, i), render_field(field_layout(cfg, i))) for i in range(6)]


@pytest.mark.parametrize("method", ["threshold", "log"])
def test_proposal_recall_on_generated_hpfs(fields, method):
    found = total = 0
    counts = []
    for layout, rgb in fields:
        cand = propose(rgb, ProposalConfig(method=method))
        counts.append(len(cand))
        found += proposal_recall(cand, layout.mitoses, 30) * len(layout.mitoses)
        total += len(layout.mitoses)
    assert total >= 12
    assert found / total >= 0.95
    # a proposal stage, not a classifier: it proposes more than the figures, far fewer than windows
    assert np.mean(counts) < len(window_centres((512, 512), 64, 16)) / 4


def test_proposal_recall_hand_cases():
    assert proposal_recall([[0, 0]], [[0, 30]], 30) == 1.0
    assert proposal_recall([[0, 0]], [[0, 31], [0, 5]], 30) == 0.5
    assert proposal_recall([], [[1, 1]], 30) == 0.0
    assert proposal_recall([[1, 1]], [], 30) == 1.0


def test_blank_image_has_no_candidates_and_bad_shapes_are_refused():
    assert propose(np.full((128, 128, 3), 240, np.uint8)).shape == (0, 2)
    with pytest.raises(DataError, match=r"RGB image \(H, W, 3\)"):
        propose(np.zeros((64, 64), np.uint8))


def test_merge_close_collapses_to_the_mean():
    out = merge_close(np.array([[0.0, 0.0], [4.0, 0.0], [50.0, 50.0]]), 6)
    assert sorted(out.tolist()) == [[2.0, 0.0], [50.0, 50.0]]


def test_extract_patches_centred_and_reflect_padded():
    img = np.arange(100 * 100 * 3, dtype=np.uint32).reshape(100, 100, 3).astype(np.uint8)
    img[50, 40] = (1, 2, 3)
    p = extract_patches(img, [[40, 50], [0, 0]], 8)
    assert p.shape == (2, 8, 8, 3)
    assert p[0, 4, 4].tolist() == [1, 2, 3]  # centre pixel at (size/2, size/2)
    assert p[1, 4, 4].tolist() == img[0, 0].tolist()


def test_label_points_by_distance_with_ignore_band():
    cfg = PatchConfig(positive_radius=10, ignore_radius=30, truth_jitter_copies=1, include_mimics=True)
    centres, labels, kinds, dist = label_points([[100, 100], [120, 100], [200, 200]], [[105, 100]],
                                                [[300, 300], [110, 100]], cfg, np.random.default_rng(0))
    # (100,100): 5 px -> positive; (120,100): 15 px -> ambiguous, dropped; (200,200) negative
    assert kinds == ["candidate", "candidate", "truth", "jitter", "mimic"]
    assert labels.tolist() == [1, 0, 1, 1, 0]
    assert centres[:3].tolist() == [[100, 100], [200, 200], [105, 100]]
    assert np.all(np.abs(centres[3] - [105, 100]) <= 5)
    assert dist[0] == 5 and centres[4].tolist() == [300, 300]  # the mimic next to the mitosis is left out


def test_window_centres_cover_the_image():
    c = window_centres((128, 100), 64, 16)
    xs, ys = np.unique(c[:, 0]), np.unique(c[:, 1])
    assert xs.tolist() == [32, 48, 64, 68] and ys.tolist() == [32, 48, 64, 80, 96]
    assert len(c) == 20


def test_csv_parsing_errors_name_the_line():
    from medray.mitosis.inputs import parse_mitosis_csv

    assert parse_mitosis_csv("10,20\n\n30,40,extra\n").tolist() == [[20, 10], [40, 30]]
    assert parse_mitosis_csv("").shape == (0, 2)
    with pytest.raises(DataError, match=r"m.csv: line 2 'row,col' is not 'row,col' numbers"):
        parse_mitosis_csv("1,2\nrow,col\n", "m.csv")
    with pytest.raises(DataError, match="line 1 '5' is not"):
        parse_mitosis_csv("5\n", "m.csv")
    with pytest.raises(DataError, match="negative or non-finite"):
        parse_mitosis_csv("-1,3\n", "m.csv")


def test_missing_and_corrupt_images_are_clear_errors(tmp_path):
    from medray.mitosis.inputs import hpf_units, load_image

    with pytest.raises(DataError, match="cannot be read"):
        load_image(str(tmp_path / "nope.png"))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="bad.png"):
        load_image(str(bad))
    bad_tif = tmp_path / "bad.tif"
    bad_tif.write_bytes(b"II*\x00garbage")
    with pytest.raises(DataError, match="corrupt or unreadable TIFF"):
        load_image(str(bad_tif))
    with pytest.raises(DataError, match="no images/ subfolder"):
        hpf_units(str(tmp_path))


def test_disk_mask_is_exact():
    from medray.mitosis.segmentation import disk_mask

    m = disk_mask((20, 20), [[5, 5]], radius=2)
    assert m.sum() == 13 and m[5, 7] == 1 and m[5, 8] == 0 and m[7, 5] == 1


def test_unet_segmenter_shapes_and_load_errors(tmp_path):
    import torch

    from medray.errors import ModelError, StorageError
    from medray.mitosis.segmentation import Segmenter, build_unet, load_segmenter

    prob = Segmenter(build_unet())(np.zeros((30, 42, 3), np.uint8))  # one window, padded to 32x44 inside
    assert prob.shape == (30, 42) and 0 <= prob.min() and prob.max() <= 1
    torch.save({"wrong": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ModelError, match=r"bad.pt.*format None, expected 'medray.mitosis.unet_proposals/1'"):
        load_segmenter(str(tmp_path / "bad.pt"))
    (tmp_path / "garbage.pt").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="garbage.pt.*not a torch checkpoint.*train_from_hpf"):
        load_segmenter(str(tmp_path / "garbage.pt"))
    with pytest.raises(StorageError, match="missing.pt"):
        load_segmenter(str(tmp_path / "missing.pt"))
    with pytest.raises(DataError, match=r"RGB image \(H, W, 3\)"):
        Segmenter(build_unet())(np.zeros((64, 64), np.uint8))


def test_unet_training_input_errors():
    from medray.mitosis.segmentation import train_unet

    img = np.zeros((128, 128, 3), np.uint8)
    with pytest.raises(DataError, match="no figures"):
        train_unet([img], [[]], steps=1)
    with pytest.raises(DataError, match="training image 0 is 128x48 px, smaller than the 64 px crop"):
        train_unet([np.zeros((48, 128, 3), np.uint8)], [[[10, 10]]], steps=1)
    with pytest.raises(ValueError, match="2 images but 1 figure lists"):
        train_unet([img, img], [[[10, 10]]], steps=1)
    with pytest.raises(ValueError, match="method 'unet' needs unet_model"):
        ProposalConfig(method="unet")


@pytest.fixture(scope="module")
def held_out():
    """12 generated 512 px fields (the first 6 are ``fields``): ~39 mitoses, 3 mimics each."""
    from medray.synth.hpf import Config, field_layout, render_field

    cfg = Config(size=512, num_images=12, mitoses_min=2, mitoses_max=5, mimics_per_image=3, seed=5)
    return [(field_layout(cfg, i), render_field(field_layout(cfg, i))) for i in range(12)]


def test_unet_proposals_learn_on_generated_hpfs(tmp_path, held_out):
    """Train the UNet on 6 generated HPFs written to disk (19-43 s in all on 2 busy cores), select it from
    the mitosis config, and check its proposals on 12 other fields against the known mitoses.

    Measured: recall 1.0 (39/39) for init seeds 0-5 with 6-17 candidates per field, against ~66
    for the stain threshold; the floor is the issue's 0.95 (one miss of 39 allowed)."""
    from medray.mitosis.config import MitosisConfig
    from medray.mitosis.segmentation import load_segmenter, train_from_hpf
    from medray.synth.hpf import Config, generate

    generate(Config(output=str(tmp_path / "train"), size=512, num_images=6, mitoses_min=2, mitoses_max=5,
                    mimics_per_image=3, seed=21))
    ckpt = str(tmp_path / "models" / "unet.pt")
    summary = train_from_hpf(str(tmp_path / "train"), ckpt, seed=0)
    assert summary["images"] == 6 and summary["figures"] >= 6 * 3 + 12  # mimics from truth.json + mitoses
    loaded = load_segmenter(ckpt)
    assert loaded.info["steps"] == 500 and loaded.info["final_loss"] == summary["final_loss"]

    cfg = MitosisConfig.model_validate({"proposals": {"method": "unet", "unet_model": ckpt}})
    found = total = 0
    unet_counts, stain_counts = [], []
    for layout, rgb in held_out:
        cand = propose(rgb, cfg.proposals)  # loads the checkpoint named in the config
        unet_counts.append(len(cand))
        stain_counts.append(len(propose(rgb, ProposalConfig(method="threshold"))))
        found += proposal_recall(cand, layout.mitoses, 30) * len(layout.mitoses)
        total += len(layout.mitoses)
    assert total >= 36
    assert found / total >= 0.95, f"UNet proposal recall {found / total:.3f} ({found:.0f}/{total})"
    # it learned the figures, not every nucleus: far fewer candidates than the stain threshold
    assert np.mean(unet_counts) < np.mean(stain_counts) / 3, (unet_counts, stain_counts)
    # what the config loaded is what was trained: same probabilities as a fresh load
    np.testing.assert_allclose(loaded(held_out[0][1]), load_segmenter(ckpt)(held_out[0][1]))


def test_cli_trains_the_unet_proposer_from_an_hpf_folder(tmp_path, capsys):
    """`medray mitosis train-proposals` trains on a generated HPF folder and writes a loadable model;
    without inputs.hpf_dir it is a config error (exit 2), not a traceback."""
    import json

    from medray.cli import main
    from medray.mitosis.segmentation import load_segmenter
    from medray.synth import hpf

    folder = tmp_path / "hpf"
    hpf.generate(hpf.Config(output=str(folder), num_images=2, size=256, mitoses_min=2, mitoses_max=3, seed=2))
    out = tmp_path / "mitosis"
    assert main(["mitosis", "train-proposals", "--steps", "40", f"inputs.hpf_dir={folder}", f"output={out}"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(printed[printed.index("{"):])
    assert result["images"] == 2 and result["figures"] >= 4
    assert result["use_with"] == f"proposals.method=unet proposals.unet_model={out / 'unet.pt'}"
    assert (out / "unet.pt").is_file()
    assert load_segmenter(str(out / "unet.pt")) is not None
    assert main(["mitosis", "train-proposals", f"output={out}"]) == 2
    assert "inputs.hpf_dir" in capsys.readouterr().err


def test_unet_checkpoint_in_object_storage_reaches_propose(s3_bucket, s3_options):
    """A UNet saved to s3:// (loopback S3 server) is loaded by ``propose`` with the storage options."""
    from medray.mitosis.segmentation import train_unet
    from medray.synth import hpf

    layout = hpf.field_layout(hpf.Config(size=256, mitoses_min=2, mitoses_max=2, seed=5), 0)
    image = hpf.render_field(layout)
    uri = f"{s3_bucket}/models/unet.pt"
    train_unet([image], [[[128.0, 128.0]]], steps=3, output=uri, storage=s3_options)
    cfg = ProposalConfig(method="unet", unet_model=uri)
    points = propose(image, cfg, storage=s3_options)
    assert points.ndim == 2 and points.shape[1] == 2

"""End-to-end slide scoring on generated pyramidal slides with a smallcnn trained here in seconds.

One module-scoped job scores a tumor slide (with ASAP truth beside it), a normal slide, a file
that is not a slide and a truncated slide; the checks read its outputs back. Smaller runs cover a
model that cannot load and output on the loopback S3 bucket.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from medray.infer.score import score_region, score_slides
from medray.infer.score_config import ScoreConfig

PATCH = 64
MPP = 0.25
SIZE = 4096


def _train_bundle(slide_path: Path, xml_path: Path, out: Path) -> str:
    """A smallcnn trained for a few seconds on tumor vs normal patches of one generated slide."""
    import torch

    from medray.models.bundle import save_bundle
    from medray.models.preprocess import Preprocessing, to_tensor
    from medray.models.registry import ModelSpec, build_model
    from medray.slides.annotations import load_annotations
    from medray.slides.grid import sample_in_annotations, sample_in_tissue_outside
    from medray.slides.reader import open_slide
    from medray.slides.tissue import tissue_mask

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    tumor = load_annotations(str(xml_path))
    with open_slide(str(slide_path)) as slide:
        mask = tissue_mask(slide)
        pos = sample_in_annotations(tumor, 96, rng, patch_size=PATCH)
        neg = sample_in_tissue_outside(mask, tumor, 96, rng, 0.5, PATCH)
        centres = np.concatenate([pos, neg])
        w, h = slide.dimensions
        tl = np.clip(centres - PATCH // 2, 0, [w - PATCH, h - PATCH])
        x = np.stack([slide.read_region(int(a), int(b), 0, PATCH) for a, b in tl])
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))]).astype(np.int64)
    prep = Preprocessing(size=PATCH, info={"mpp": MPP, "patch_size": PATCH, "level": 0})
    spec = ModelSpec(name="smallcnn", num_classes=2)
    model = build_model(spec)
    xt, yt = to_tensor(x, prep), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(8):
        for idx in torch.randperm(len(yt)).split(32):
            flip = xt[idx].flip(3) if torch.rand(1) < 0.5 else xt[idx]
            loss = torch.nn.functional.cross_entropy(model(flip), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return save_bundle(str(out), model, spec, ["normal", "tumor"], prep, threshold=0.5)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    from medray.synth.slides import Config, generate

    root = tmp_path_factory.mktemp("score_slides")
    summary = generate(Config(output=str(root / "train"), num_slides=1, tumor_slides=1, width=SIZE, height=SIZE,
                              mpp=MPP, points_per_label=5, mitoses_per_slide=0, mimics_per_slide=0,
                              progress=False, seed=11))
    entry = summary["slides"][0]
    model = _train_bundle(Path(entry["slide"]), Path(entry["xml"]), root / "model")
    slides = root / "slides"
    generate(Config(output=str(slides), num_slides=2, tumor_slides=1, width=SIZE, height=SIZE, mpp=MPP,
                    points_per_label=5, mitoses_per_slide=0, mimics_per_slide=0, progress=False, seed=5))
    (slides / "notaslide.tif").write_text("this is a text file, not a slide\n")
    data = (slides / "normal_001.tif").read_bytes()
    (slides / "truncated.tif").write_bytes(data[: int(len(data) * 0.6)])
    return {"root": root, "slides": slides, "model": model}


@pytest.fixture(scope="module")
def job(generated, ray_cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("scores")
    mlflow_uri = f"sqlite:///{out}/mlflow.db"
    cfg = ScoreConfig(slides=str(generated["slides"]), model=generated["model"], output=str(out / "run"),
                      batch_size=64, unit_patches=128, progress=False, overlay_size=512,
                      mlflow={"tracking_uri": mlflow_uri, "experiment": "score-test"})
    events = []
    report = score_slides(cfg, progress_callback=events.append)
    return {"cfg": cfg, "report": report, "events": events, "out": out / "run", "mlflow": mlflow_uri}


def _slide(report, slide_id):
    return next(e for e in report["slides"] if e["slide_id"] == slide_id)


@pytest.mark.slow
def test_heatmap_finds_the_tumor(job):
    entry = _slide(job["report"], "tumor_001")
    assert entry["status"] == "ok", entry
    ev = entry["evaluation"]
    assert ev["truth_polygons"] >= 1 and entry["truth"].endswith("tumor_001.xml")
    assert ev["auc"] > 0.85, ev
    assert ev["dice"] > 0.5, ev
    assert entry["scores"]["max"] > 0.9 and entry["tumor_area_mm2"] > 0
    # the strongest region's peak lies on tumor truth
    from medray.slides.annotations import contains, load_annotations

    truth = load_annotations(entry["truth"])
    top = entry["top_regions"][0]
    assert contains(truth, np.array([[top["peak_x"], top["peak_y"]]]))[0]
    normal = _slide(job["report"], "normal_001")
    assert normal["status"] == "ok" and normal["tumor_area_mm2"] < 0.1 * entry["tumor_area_mm2"]


@pytest.mark.slow
def test_map_geometry_and_background(job):
    entry = _slide(job["report"], "tumor_001")
    prob_map = np.load(entry["outputs"]["map"])
    assert prob_map.dtype == np.float32 and prob_map.shape == (SIZE // PATCH, SIZE // PATCH)
    assert tuple(entry["grid"]["shape"]) == prob_map.shape
    scored = np.isfinite(prob_map)
    p = entry["patches"]
    assert p["scored"] == scored.sum() and p["background"] == (~scored).sum() and p["off_slide"] == 0
    assert p["background"] > p["scored"] > 100  # the slide is mostly glass: masking saved work
    assert ((prob_map[scored] >= 0) & (prob_map[scored] <= 1)).all()
    report = json.loads(Path(entry["outputs"]["report"]).read_text())
    assert report["map_background"] == "NaN" and report["model"]["version"] == entry["model"]["version"]


@pytest.mark.slow
def test_tiff_opens_with_openslide_at_slide_physical_size(job):
    import openslide

    entry = _slide(job["report"], "tumor_001")
    with openslide.OpenSlide(entry["outputs"]["tiff"]) as tif:
        w, h = tif.dimensions
        assert (h, w) == tuple(entry["grid"]["shape"])
        mpp = float(tif.properties[openslide.PROPERTY_NAME_MPP_X])
        assert mpp == pytest.approx(MPP * PATCH, rel=1e-4)
        assert w * mpp == pytest.approx(SIZE * MPP, rel=1e-4)  # same physical width as the slide
        region = np.asarray(tif.read_region((0, 0), 0, (w, h)))[..., :3]
    prob_map = np.load(entry["outputs"]["map"])
    assert (region[~np.isfinite(prob_map)] == 255).all()  # background white
    hot = np.unravel_index(np.nanargmax(prob_map), prob_map.shape)
    assert region[hot][0] > 100 and region[hot][2] < 100  # jet: high probability is red


@pytest.mark.slow
def test_overlay_png(job):
    from PIL import Image

    entry = _slide(job["report"], "tumor_001")
    image = np.asarray(Image.open(entry["outputs"]["overlay"]))
    assert image.shape[0] == 512 and image.shape[1] > 512  # thumbnail + colour bar


@pytest.mark.slow
def test_bad_slides_fail_alone(job):
    report = job["report"]
    assert report["counts"] == {"ok": 2, "failed": 2}
    bad = _slide(report, "notaslide")
    assert bad["status"] == "failed" and "does not recognise this file as a slide" in bad["reason"]
    truncated = _slide(report, "truncated")
    assert truncated["status"] == "failed" and truncated["reason"]
    saved = json.loads((job["out"] / "report.json").read_text())
    assert [e["status"] for e in saved["slides"]] == [e["status"] for e in report["slides"]]
    assert not (job["out"] / "notaslide").exists()
    done = [e for e in job["events"] if e["event"] == "slide_done"]
    assert {e["slide_id"] for e in done} == {"tumor_001", "normal_001", "notaslide", "truncated"}


@pytest.mark.slow
def test_mlflow_run_links_slide_model_and_outputs(job):
    import mlflow

    entry = _slide(job["report"], "tumor_001")
    run = mlflow.MlflowClient(job["mlflow"]).get_run(entry["mlflow_run_id"])
    assert run.data.tags["slide_id"] == "tumor_001"
    assert run.data.tags["model_version"] == entry["model"]["version"]
    assert run.data.tags["output.map"] == entry["outputs"]["map"]
    assert run.data.metrics["dice"] == pytest.approx(entry["evaluation"]["dice"])


@pytest.mark.slow
def test_model_that_cannot_load_fails_every_slide(generated, tmp_path):
    cfg = ScoreConfig(slides=str(generated["slides"] / "tumor_001.tif"), model=str(tmp_path / "nomodel"),
                      output=str(tmp_path / "out"), progress=False, log_mlflow=False)
    report = score_slides(cfg)
    assert report["counts"] == {"ok": 0, "failed": 1}
    assert "cannot be loaded" in report["slides"][0]["reason"] and "bundle.json" in report["slides"][0]["reason"]
    assert json.loads((tmp_path / "out" / "report.json").read_text())["error"] == report["error"]


@pytest.mark.slow
def test_output_on_s3(generated, ray_cluster, s3_bucket, s3_options, tmp_path):
    from medray.storage import exists, join_uri, read_bytes

    slide = tmp_path / "one"
    slide.mkdir()
    shutil.copy(generated["slides"] / "tumor_001.tif", slide / "tumor_001.tif")
    out = join_uri(s3_bucket, "scores")
    cfg = ScoreConfig(slides=[str(slide / "tumor_001.tif")], model=generated["model"], output=out, progress=False,
                      log_mlflow=False, write_tiff=False, storage=s3_options)
    report = score_slides(cfg)
    entry = report["slides"][0]
    assert entry["status"] == "ok" and entry["evaluation"] is None  # no truth beside this copy
    assert entry["outputs"]["map"] == join_uri(out, "tumor_001", "heatmap.npy")
    import io

    prob_map = np.load(io.BytesIO(read_bytes(entry["outputs"]["map"], s3_options)))
    assert prob_map.shape == (SIZE // PATCH, SIZE // PATCH)
    assert exists(join_uri(out, "report.json"), s3_options)


@pytest.mark.slow
def test_score_region_matches_the_job_map(generated, job):
    entry = _slide(job["report"], "tumor_001")
    prob_map = np.load(entry["outputs"]["map"])
    r, c = np.unravel_index(np.nanargmax(prob_map), prob_map.shape)
    x, y = c * PATCH - 2 * PATCH, r * PATCH - 2 * PATCH
    region = score_region(str(generated["slides"] / "tumor_001.tif"), generated["model"], x, y, 5 * PATCH, 5 * PATCH)
    assert region.shape == (5, 5)
    assert region[2, 2] == pytest.approx(prob_map[r, c], abs=1e-4)


@pytest.mark.slow
def test_shared_model_servers_give_the_same_map(generated, job, tmp_path):
    """A job handed running ModelServer actors uses them (no actors of its own) with the same result."""
    import ray

    from medray.infer.model_server import start_model_servers
    from medray.infer.score import predictor_kwargs

    cfg = ScoreConfig(slides=[str(generated["slides"] / "tumor_001.tif")], model=generated["model"],
                      output=str(tmp_path / "shared"), batch_size=64, unit_patches=128, progress=False,
                      log_mlflow=False, write_tiff=False, evaluate=False)
    # the server holds a whole CPU of the 2: reads get the other, the forwarding stage reserves none
    # (it once reserved a sliver and waited forever behind the read tasks)
    servers = start_model_servers(1, 1.0, 0, **predictor_kwargs(cfg, None))
    try:
        report = score_slides(cfg, model_servers=servers)
        info = ray.get(servers[0].info.remote())
    finally:
        ray.kill(servers[0])
    entry = report["slides"][0]
    assert entry["status"] == "ok" and info["patches"] == entry["patches"]["scored"] > 0
    if sys.platform.startswith("linux"):  # model actors start with glibc's malloc tuned (medray.allocator)
        assert info["allocator"] == {"tuned": True, "started_with_env": True}
    expected = np.load(_slide(job["report"], "tumor_001")["outputs"]["map"])
    np.testing.assert_allclose(np.load(entry["outputs"]["map"]), expected, atol=1e-6, equal_nan=True)

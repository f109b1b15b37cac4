"""Distributed detection with Ray Data: one work unit per image or slide region; an actor pool
holds the model and runs proposals + patch classification + clustering per unit.

Outputs under ``<output>``: ``detections.csv`` (image, x, y, probability; slide regions in level-0
coordinates), ``overlays/<unit>.png``, ``failures.json`` and ``summary.json`` (written last).
A unit that fails (missing image, corrupt file, bad CSV) is recorded and the job goes on.
"""

from __future__ import annotations

import json
import time

import numpy as np

from medray.allocator import with_malloc_env
from medray.mitosis.config import MitosisConfig


class DetectWorker:
    """Ray Data actor: loads the model once, then detects in one unit per call."""

    def __init__(self, config: dict, model_uri: str, overlays_uri: str | None) -> None:
        from medray.models.bundle import load_model

        self.cfg = MitosisConfig.model_validate(config)
        if self.cfg.detect.torch_threads:
            import torch

            torch.set_num_threads(self.cfg.detect.torch_threads)
        self.model = load_model(model_uri, self.cfg.storage)
        self.overlays_uri = overlays_uri

    def __call__(self, batch: dict) -> dict:
        out = {"unit_id": [], "result": [], "error": []}
        for raw in batch["unit"]:
            unit = json.loads(str(raw))
            out["unit_id"].append(unit["unit_id"])
            try:
                out["result"].append(json.dumps(detect_unit(unit, self.model, self.cfg, self.overlays_uri)))
                out["error"].append("")
            except Exception as err:  # recorded per unit; the job goes on
                out["result"].append("")
                out["error"].append(f"{type(err).__name__}: {err}")
        return {k: np.asarray(v, dtype=object) for k, v in out.items()}


def detect_unit(unit: dict, model, cfg: MitosisConfig, overlays_uri: str | None = None) -> dict:
    """Detections (in the unit's own pixels and level-0), truth and timings for one unit."""
    from medray.infer.overlay import write_png
    from medray.mitosis.inputs import WorkUnit, load_unit
    from medray.mitosis.matching import match_detections
    from medray.mitosis.overlay import draw_overlay
    from medray.mitosis.scoring import model_threshold, run_approach
    from medray.storage import join_uri

    work = WorkUnit(unit["unit_id"], image=unit["image"], truth_csv=unit["truth_csv"], slide=unit["slide"],
                    region=tuple(unit["region"]) if unit["region"] else None)
    t0 = time.perf_counter()
    rgb, truth, (x0, y0) = load_unit(work, cfg.storage)
    load_s = time.perf_counter() - t0
    threshold = model_threshold(model, cfg.detect.threshold)
    res = run_approach("proposals", rgb, model, cfg, threshold)
    det, probs = res["detections"], res["det_probs"]
    matched = None
    if truth is not None:
        matched = match_detections(det, truth, cfg.matching.radius, probs).detection_to_truth
    overlay = None
    if overlays_uri:
        overlay = write_png(draw_overlay(rgb, det, probs, truth, cfg.matching.radius, matched),
                            join_uri(overlays_uri, f"{work.unit_id}.png"), cfg.storage)
    offset = np.array([x0, y0], np.float64)
    return {"unit_id": work.unit_id, "source": work.image or work.slide, "offset": [x0, y0],
            "detections": (det + offset).tolist(), "probs": probs.tolist(),
            "truth": None if truth is None else (truth + offset).tolist(),
            "tiles": res["tiles"], "threshold": threshold, "overlay": overlay,
            "seconds": {"load": load_s, **res["seconds"]}}


def detections_csv(results: list[dict]) -> str:
    """``image,source,x,y,probability`` rows, one per detection, images in order."""
    lines = ["image,source,x,y,probability"]
    for r in sorted(results, key=lambda r: r["unit_id"]):
        for (x, y), p in zip(r["detections"], r["probs"]):
            lines.append(f"{r['unit_id']},{r['source']},{x:.1f},{y:.1f},{p:.6f}")
    return "\n".join(lines) + "\n"


def run_detection(cfg: MitosisConfig) -> dict:
    """Detect in every unit of ``cfg.inputs`` on Ray; write CSV, overlays, failures, summary."""
    import ray
    import ray.data

    from medray.mitosis.inputs import collect_units
    from medray.mitosis.matching import evaluate
    from medray.storage import atomic_write_text, join_uri

    units = collect_units(cfg.inputs, cfg.storage)
    model_uri = cfg.detect.model or join_uri(cfg.output, "train", "model")
    from medray.models.bundle import load_model

    load_model(model_uri, cfg.storage)  # fail fast on the driver with a clear error
    if not ray.is_initialized():
        ray.init(address=cfg.ray.address, num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus)
    out_dir = join_uri(cfg.output, "detect")
    overlays = join_uri(out_dir, "overlays") if cfg.detect.overlays else None
    t0 = time.perf_counter()
    ds = ray.data.from_items([{"unit": json.dumps(u.to_dict())} for u in units],
                             override_num_blocks=len(units))
    rows = ds.map_batches(DetectWorker, batch_size=1, batch_format="numpy",
                          compute=ray.data.ActorPoolStrategy(size=cfg.detect.actors),
                          fn_constructor_args=(cfg.model_dump(mode="json"), model_uri, overlays),
                          **with_malloc_env({"num_cpus": cfg.detect.cpus_per_actor})).take_all()
    wall = time.perf_counter() - t0
    results = [json.loads(r["result"]) for r in rows if not r["error"]]
    failures = [{"unit_id": r["unit_id"], "error": r["error"]} for r in rows if r["error"]]
    atomic_write_text(join_uri(out_dir, "detections.csv"), detections_csv(results), cfg.storage)
    atomic_write_text(join_uri(out_dir, "failures.json"), json.dumps(failures, indent=1), cfg.storage)
    with_truth = {r["unit_id"]: (r["detections"], r["probs"], r["truth"]) for r in results if r["truth"] is not None}
    metrics = evaluate(with_truth, cfg.matching.radius) if with_truth else None
    summary = {"output": out_dir, "model": model_uri, "units": len(units), "succeeded": len(results),
               "failed": len(failures), "failures": failures, "wall_seconds": wall,
               "tiles": sum(r["tiles"] for r in results), "detections": sum(len(r["detections"]) for r in results),
               "metrics": metrics, "csv": join_uri(out_dir, "detections.csv"),
               "overlays": [r["overlay"] for r in results if r["overlay"]]}
    atomic_write_text(join_uri(out_dir, "summary.json"), json.dumps(summary, indent=1), cfg.storage)
    return summary

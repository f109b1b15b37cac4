"""Both approaches on the same images with the same model: tiles evaluated, wall time, F1 → one
report (``compare.json`` + ``compare.md``). Runs in one process so the timings are like for like."""

from __future__ import annotations

import json
import time

import numpy as np

from medray.errors import DataError
from medray.mitosis.config import MitosisConfig

APPROACHES = ("proposals", "sliding_window")


def compare(cfg: MitosisConfig, model_uri: str | None = None) -> dict:
    from tqdm import tqdm

    from medray.mitosis.inputs import collect_units, load_unit
    from medray.mitosis.matching import best_threshold, evaluate
    from medray.mitosis.scoring import model_threshold, run_approach
    from medray.models.bundle import load_model
    from medray.storage import atomic_write_text, join_uri

    model_uri = model_uri or cfg.detect.model or join_uri(cfg.output, "train", "model")
    model = load_model(model_uri, cfg.storage)
    if cfg.detect.torch_threads:
        import torch

        torch.set_num_threads(cfg.detect.torch_threads)
    threshold = model_threshold(model, cfg.detect.threshold)
    images = []
    for unit in collect_units(cfg.inputs, cfg.storage):
        rgb, truth, _ = load_unit(unit, cfg.storage)
        if truth is None:
            raise DataError(f"{unit.unit_id}: compare needs truth for every image "
                            f"(mitoses/{unit.unit_id}.csv is missing)")
        images.append((unit.unit_id, rgb, truth))
    # warm-up, so the first approach is not charged for lazy initialisation
    model.predict_proba(np.zeros((2, cfg.patches.size, cfg.patches.size, 3), np.uint8))
    report: dict = {"model": model_uri, "threshold": threshold, "images": len(images),
                    "image_shape": list(images[0][1].shape) if images else None,
                    "stride": cfg.sliding_window.stride, "patch_size": cfg.patches.size, "approaches": {}}
    for approach in APPROACHES:
        per_eval, per_raw, tiles = {}, {}, 0
        t0 = time.perf_counter()
        for name, rgb, truth in tqdm(images, desc=approach, unit="image", leave=False):
            res = run_approach(approach, rgb, model, cfg, threshold)
            per_eval[name] = (res["detections"], res["det_probs"], truth)
            per_raw[name] = (res["points"], res["probs"], truth)
            tiles += res["tiles"]
        wall = time.perf_counter() - t0
        scores = evaluate(per_eval, cfg.matching.radius)
        oracle_t, oracle = best_threshold(per_raw, cfg.matching.radius, cfg.clustering.distance)
        report["approaches"][approach] = {
            "tiles": tiles, "wall_seconds": wall, **scores["overall"],
            "per_image": scores["per_image"], "best_threshold_on_these_images": oracle_t,
            "best_f1_on_these_images": oracle["f1"]}
    p, s = report["approaches"]["proposals"], report["approaches"]["sliding_window"]
    report["tiles_ratio"] = s["tiles"] / max(p["tiles"], 1)
    report["time_ratio"] = s["wall_seconds"] / max(p["wall_seconds"], 1e-9)
    out = join_uri(cfg.output, "compare")
    atomic_write_text(join_uri(out, "compare.md"), markdown(report), cfg.storage)
    atomic_write_text(join_uri(out, "compare.json"), json.dumps(report, indent=1), cfg.storage)
    report["report_uri"] = join_uri(out, "compare.json")
    return report


def markdown(report: dict) -> str:
    lines = [f"# Mitosis detection: proposals vs sliding window ({report['images']} images, "
             f"threshold {report['threshold']:.3f}, stride {report['stride']})", "",
             "| approach | tiles | wall time (s) | precision | recall | F1 | best F1 (oracle threshold) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, a in report["approaches"].items():
        lines.append(f"| {name} | {a['tiles']} | {a['wall_seconds']:.2f} | {a['precision']:.3f} | "
                     f"{a['recall']:.3f} | {a['f1']:.3f} | {a['best_f1_on_these_images']:.3f} |")
    lines += ["", f"Sliding window / proposals: {report['tiles_ratio']:.1f}x tiles, "
                  f"{report['time_ratio']:.1f}x wall time."]
    return "\n".join(lines) + "\n"

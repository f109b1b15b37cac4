"""Scoring memory: peak resident memory of scoring a 100,000² px slide against a 25,000² one.

The scoring job holds only the grid-resolution probability map; patches stream through Ray Data.
So a slide with 16× the area (and ~16× the patches) must not need much more memory. Generates
both slides once (the 100,000² one takes ~12 min on 2 cores; ``--workdir`` keeps them), saves an
untrained model bundle (memory does not depend on the weights), then runs the real scoring job
(``score_slides``: plan, read tasks, model actor, map, TIFF/PNG/JSON outputs) in a fresh child
process per slide, each with its own local Ray cluster. The parent sums the resident memory of the
child and every descendant (driver, GCS, raylet, Ray workers) from ``/proc`` every 0.1 s and keeps
the peak. Last line: ``score-memory ratio: <peak(big) / peak(reference)>`` (target <= 1.5).

  python bench/bench_score_memory.py [--size 100000] [--reference 25000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
sys.path.insert(0, str(ROOT / "bench"))

from proc_memory import add_child_arguments, peak_of_child, prepare_environment  # noqa: E402


def child_main(args: argparse.Namespace) -> None:
    """One scoring job over ``args.paths[0]``; prints a JSON summary last."""
    import ray

    from medray.infer.score import score_slides
    from medray.infer.score_config import ScoreConfig

    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    cfg = ScoreConfig(slides=[args.paths[0]], model=args.model, output=args.output, batch_size=64, predictors=1,
                      predictor_cpus=1, log_mlflow=False, progress=False, evaluate=False)
    report = score_slides(cfg)
    entry = report["slides"][0]
    if entry["status"] != "ok":
        raise SystemExit(f"scoring failed: {entry.get('reason')}")
    print(json.dumps({"cells": entry["patches"]["total_cells"], "scored": entry["patches"]["scored"],
                      "seconds": round(report["seconds"], 1)}))


def generate_slide(folder: Path, size: int) -> str:
    from medray.synth.slides import Config, generate

    if not (folder / "slides.json").exists():
        start = time.perf_counter()
        generate(Config(output=str(folder), num_slides=1, tumor_slides=1, width=size, height=size, levels=5,
                        points_per_label=5, mitoses_per_slide=0, mimics_per_slide=0, progress=False, seed=7))
        print(f"generated a {size:,}² slide in {time.perf_counter() - start:.0f} s")
    return str(folder / "tumor_001.tif")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000, help="the big slide's side in px")
    parser.add_argument("--reference", type=int, default=25_000, help="the reference slide's side in px")
    parser.add_argument("--patch", type=int, default=256, help="model input = patch side at level 0")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--workdir", default=None, help="keeps the generated slides (default: a temp dir)")
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    add_child_arguments(parser)
    args = parser.parse_args()
    prepare_environment(str(ROOT / "platform"))
    if args.child:
        child_main(args)
        return

    from medray.models.bundle import save_bundle
    from medray.models.preprocess import Preprocessing
    from medray.models.registry import ModelSpec, build_model

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-score-mem-"))
    spec = ModelSpec(name="smallcnn", num_classes=2)
    prep = Preprocessing(size=args.patch, info={"mpp": 0.25, "patch_size": args.patch, "level": 0})
    model = save_bundle(str(work / f"model-smallcnn-{args.patch}"), build_model(spec), spec, ["normal", "tumor"],
                        prep, threshold=0.5)
    peaks = {}
    for size in (args.reference, args.size):
        slide = generate_slide(work / f"slides-{size}", size)
        peak, summary = peak_of_child([__file__, "--child", "--workers", str(args.workers), "--model", model,
                                       "--output", str(work / f"scores-{size}"), slide], "scoring")
        peaks[size] = peak
        print(f"{size:>7,}² slide: peak {peak:7.0f} MiB (driver + Ray processes); {summary['cells']:,} grid cells, "
              f"{summary['scored']:,} patches scored in {summary['seconds']} s")
    area = (args.size / args.reference) ** 2
    print(f"the big slide has {area:.0f}× the area; memory grew {peaks[args.size] / peaks[args.reference]:.2f}×")
    print(f"score-memory ratio: {peaks[args.size] / peaks[args.reference]:.3f}")


if __name__ == "__main__":
    main()

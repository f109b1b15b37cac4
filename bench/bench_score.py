"""Benchmark slide scoring: patches/s of the whole job vs the bare model on in-memory batches.

Generates one synthetic slide (``--size``; the brief's 40,000 px takes several minutes to render
on 2 cores, so the default is smaller and says so), saves an untrained model bundle (throughput
does not depend on the weights), measures the bare forward rate on in-memory uint8 batches of
the job's batch size with the same threads a model actor gets (before and after the job; the
faster is the baseline), then runs ``score_slides``.
Last line: ``score ratio: <job patches/s ÷ bare patches/s>`` (target >= 0.8).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

try:
    import medray  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

import numpy as np

BRIEF_SIZE = 40_000


def bare_rate(model, batch_size: int, size: int, threads: int, seconds: float = 8.0) -> float:
    """Patches/s of ``predict_proba`` on random in-memory uint8 batches (after warm-up batches).

    ``predict_proba`` returns host arrays, so GPU work is finished when it returns.
    """
    import torch

    torch.set_num_threads(threads)
    batch = np.random.default_rng(0).integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
    for _ in range(3):
        model.predict_proba(batch, batch_size)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.predict_proba(batch, batch_size)
        done += batch_size
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16384, help=f"slide side in px (brief: {BRIEF_SIZE})")
    parser.add_argument("--model", default="resnet18", choices=["resnet18", "resnet50", "densenet121", "smallcnn"])
    parser.add_argument("--patch", type=int, default=128, help="patch side at level 0 (= model input)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray cluster (default: all)")
    parser.add_argument("--workdir", default=None, help="reuse generated data here (default: a temp dir)")
    parser.add_argument("--gpu", action="store_true", help="model actors on the GPU (one actor, one GPU)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="GPU inference precision (auto: bf16 on a GPU)")
    parser.add_argument("--predictors", type=int, default=None, help="model actors (default: CPUs/2, or 1 on --gpu)")
    parser.add_argument("--slides", type=int, default=1,
                        help="score the slide this many times in one job (links under other names): start-up "
                             "amortised over a many-slide job, as in production")
    args = parser.parse_args()
    if args.size < BRIEF_SIZE:
        print(f"note: slide {args.size}×{args.size} px (the brief's {BRIEF_SIZE} px takes minutes to generate "
              f"on 2 cores; pass --size {BRIEF_SIZE} for it)")

    import ray

    from medray.infer.score import score_slides
    from medray.infer.score_config import ScoreConfig
    from medray.models.bundle import load_model, save_bundle
    from medray.models.preprocess import Preprocessing
    from medray.models.registry import ModelSpec, build_model
    from medray.synth.slides import Config, generate

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-score-"))
    slide = work / "slides" / "tumor_001.tif"
    if not slide.exists():
        start = time.perf_counter()
        generate(Config(output=str(work / "slides"), num_slides=1, tumor_slides=1, width=args.size,
                        height=args.size, mitoses_per_slide=0, mimics_per_slide=0, points_per_label=5,
                        progress=True, seed=7))
        print(f"generated {args.size}×{args.size} slide in {time.perf_counter() - start:.1f} s")
    spec = ModelSpec(name=args.model, num_classes=2)
    prep = Preprocessing(size=args.patch, info={"mpp": 0.25, "patch_size": args.patch, "level": 0})
    bundle = save_bundle(str(work / f"model-{args.model}-{args.patch}"), build_model(spec), spec,
                         ["normal", "tumor"], prep, threshold=0.5)

    predictor_cpus = 1
    device = "cuda" if args.gpu else "cpu"
    bare_model = load_model(bundle, device=device, precision=args.precision)
    bare_before = bare_rate(bare_model, args.batch_size, args.patch, predictor_cpus)
    print(f"bare model ({args.model}, {args.patch} px, batch {args.batch_size}, {device}, precision "
          f"{args.precision}, {predictor_cpus} thread), before the job: {bare_before:.1f} patches/s")

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    predictors = args.predictors or (1 if args.gpu else max(1, int(ray.cluster_resources()["CPU"]) // 2))
    slide_uris = [str(slide)]
    for k in range(2, args.slides + 1):  # the same pixels under other slide ids: one job, many slides
        link = work / "slides" / f"copy_{k:03d}.tif"
        if not link.exists():
            link.symlink_to(slide.name)
        slide_uris.append(str(link))
    cfg = ScoreConfig(slides=slide_uris, model=bundle, output=str(work / "scores"), batch_size=args.batch_size,
                      predictors=predictors, predictor_cpus=predictor_cpus, num_gpus=1.0 / predictors if args.gpu else 0,
                      precision=args.precision, log_mlflow=False, progress=True, evaluate=False)
    report = score_slides(cfg)
    failed = [e for e in report["slides"] if e["status"] != "ok"]
    if failed:
        raise SystemExit(f"scoring failed: {failed[0]['reason']}")
    entry = report["slides"][0]
    p = entry["patches"]
    job_rate = report["patches_scored"] / report["seconds"]
    ray.shutdown()
    # measured again once the cluster is gone; the faster of the two is the baseline (a noisy
    # machine slows one of them, and a slow baseline would flatter the job)
    bare_after = bare_rate(bare_model, args.batch_size, args.patch, predictor_cpus)
    bare = max(bare_before, bare_after)
    print(f"bare model after the job: {bare_after:.1f} patches/s; baseline: {bare:.1f}")
    bare_total = bare if args.gpu else bare * cfg.predictors  # actors share the one GPU
    print(f"slide {entry['slide_id']}: wall {report['seconds']:.1f} s (plan {entry['seconds']['plan']:.1f} s, "
          f"score {entry['seconds']['score']:.1f} s, write {entry['seconds']['write']:.1f} s)")
    print(f"cells {p['total_cells']}: scored {p['scored']}, background {p['background']} "
          f"(tissue masking saved {p['background'] / max(p['total_cells'], 1):.0%} of the reads and forwards)")
    if args.slides > 1:
        print(f"{args.slides} slides in one job: {report['patches_scored']} patches, wall {report['seconds']:.1f} s "
              f"= {report['seconds'] / args.slides:.1f} s per slide")
    print(f"job: {job_rate:.1f} patches/s with {cfg.predictors} model actor(s); bare: {bare_total:.1f} patches/s "
          f"for as many")
    print(f"score ratio: {job_rate / bare_total:.3f}")


if __name__ == "__main__":
    main()

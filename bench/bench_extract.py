"""Patch extraction throughput: the Ray Data pipeline against raw single-process OpenSlide reads.

(a) a plain ``OpenSlide.read_region`` loop (one process) over a sample of the tissue-grid patches;
(b) the full pipeline (plan, read, JPEG q90, Parquet shards on local disk, markers, dataset.json)
over the whole grid with every core. Prints patches/s for both; the last line is
``extract ratio: b / (a × cores)`` (1.0 = perfect scaling, with encoding and writing for free).

The default slide is 16,384² px: generating 40,000² (``--size 40000``) takes several minutes on
2 cores. Example: ``python bench/bench_extract.py --size 40000 --workers 16``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=16384, help="slide side in level-0 px (40000 = Camelyon-like)")
    parser.add_argument("--patch", type=int, default=256, help="patch side at level 0")
    parser.add_argument("--sample", type=int, default=2000, help="patches in the raw single-process loop")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="cores for the pipeline")
    parser.add_argument("--rows-per-shard", type=int, default=512, help="patches per work unit / shard")
    parser.add_argument("--workdir", default=None, help="where the slide and dataset go (default: a temp dir)")
    args = parser.parse_args()

    import numpy as np
    import openslide
    import ray

    from medray.datasets.extract import plan_slide, run_extract
    from medray.datasets.extract_config import ExtractConfig
    from medray.synth.slides import Config, generate

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-extract-"))
    slides = work / f"slides-{args.size}"
    if args.size < 40000:
        print(f"note: {args.size}² px slide (40,000² takes minutes to generate on 2 cores; use --size 40000)")
    if not (slides / "slides.json").exists():
        start = time.perf_counter()
        generate(Config(output=str(slides), num_slides=1, tumor_slides=1, width=args.size, height=args.size,
                        levels=4, points_per_label=10, mitoses_per_slide=0, mimics_per_slide=0, progress=True))
        print(f"generated {args.size}² slide in {time.perf_counter() - start:.1f} s")
    slide_path = str(slides / "tumor_001.tif")
    cfg = ExtractConfig(slides=[slide_path], output=str(work / "patches"), mode="grid", patch_size=args.patch,
                        max_per_label=None, rows_per_shard=args.rows_per_shard, workers=args.workers,
                        overviews=False, ray={"num_cpus": args.workers})
    plan, _ = plan_slide(slide_path, [str(slides / "tumor_001.xml")], cfg)
    print(f"tissue grid: {plan.num_patches} patches of {args.patch}² at level 0")

    # (a) raw single-process OpenSlide loop over a random sample of the same coordinates
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(plan.num_patches, min(args.sample, plan.num_patches), replace=False))
    osr = openslide.OpenSlide(slide_path)
    osr.read_region((int(plan.xs[0]), int(plan.ys[0])), 0, (args.patch, args.patch))  # warm the handle
    start = time.perf_counter()
    for i in pick:
        osr.read_region((int(plan.xs[i]), int(plan.ys[i])), 0, (args.patch, args.patch))
    raw = len(pick) / (time.perf_counter() - start)
    osr.close()
    print(f"(a) raw OpenSlide read_region, 1 process: {raw:.0f} patches/s ({len(pick)} patches)")

    # (b) the full pipeline with every core, into a fresh folder (else it would resume: nothing to do)
    import shutil

    shutil.rmtree(work / "patches", ignore_errors=True)
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    report = run_extract(cfg, progress=False)
    written = report["patches_written_this_run"]
    pipeline = written / report["extract_seconds"]
    print(f"(b) pipeline, {args.workers} workers, JPEG q90 -> Parquet: {pipeline:.0f} patches/s "
          f"({written} patches; read+encode+write {report['extract_seconds']:.1f} s, whole job "
          f"{report['seconds']:.1f} s incl. planning)")
    ray.shutdown()
    print(f"extract ratio: {pipeline / (raw * args.workers):.3f}")


if __name__ == "__main__":
    main()

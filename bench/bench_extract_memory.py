"""Extraction memory: peak resident memory of a 20-slide job against a 2-slide job (streaming check).

Generates ``--slides`` (default 20) small pyramidal slides once, then runs the real extraction job
(``run_extract``, grid mode, JPEG, Parquet on local disk) in a fresh child process per run: first
over 2 of the slides, then over all of them, each with its own local Ray cluster. The parent polls
``/proc`` every 0.1 s and sums the resident memory (VmRSS) of the child and every descendant (the
driver, GCS, raylet and Ray workers), keeping the peak. Streaming means the peak does not grow with
the number of slides; last line: ``extract-memory ratio: <peak(all) / peak(2)>`` (target <= 1.5).

  python bench/bench_extract_memory.py [--slides 20] [--size 4096] [--workers N]
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


def measure(slides: list[str], output: str, workers: int) -> tuple[float, dict]:
    """Run one extraction in a child process; (peak MiB of its process tree, the job's summary)."""
    return peak_of_child([__file__, "--child", "--workers", str(workers), "--output", output, *slides], "extraction")


def child_main(args: argparse.Namespace) -> None:
    import ray

    from medray.datasets.extract import run_extract
    from medray.datasets.extract_config import ExtractConfig

    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    cfg = ExtractConfig(slides=args.paths, output=args.output, mode="grid", max_per_label=None,
                        overviews=False, workers=args.workers, ray={"num_cpus": args.workers})
    report = run_extract(cfg, progress=False)
    ok = sum(1 for s in report["slides"] if s["status"] == "ok")
    print(json.dumps({"slides_ok": ok, "patches": report["patches_written_this_run"],
                      "seconds": round(report["seconds"], 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=20)
    parser.add_argument("--size", type=int, default=4096, help="slide side in px")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--workdir", default=None)
    add_child_arguments(parser)
    args = parser.parse_args()
    prepare_environment(str(ROOT / "platform"))
    if args.child:
        child_main(args)
        return

    from medray.synth.slides import Config, generate

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-extract-mem-"))
    folder = work / "slides"
    if not (folder / "slides.json").exists():
        start = time.perf_counter()
        generate(Config(output=str(folder), num_slides=args.slides, tumor_slides=args.slides // 2, width=args.size,
                        height=args.size, levels=3, points_per_label=5, mitoses_per_slide=0, mimics_per_slide=0,
                        progress=False))
        print(f"generated {args.slides} slides of {args.size}² in {time.perf_counter() - start:.1f} s")
    paths = sorted(str(p) for p in folder.glob("*.tif"))[: args.slides]
    peaks = {}
    for n in (2, len(paths)):
        peak, summary = measure(paths[:n], str(work / f"patches-{n}"), args.workers)
        peaks[n] = peak
        print(f"{n:>3} slides: peak {peak:7.0f} MiB (driver + Ray processes), {summary['patches']} patches, "
              f"{summary['slides_ok']} slides ok, {summary['seconds']} s")
    print(f"extract-memory ratio: {peaks[len(paths)] / peaks[2]:.3f}")


if __name__ == "__main__":
    main()

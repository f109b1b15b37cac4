"""Extract labelled patches from whole slides into a Parquet dataset (local folder or s3://), on Ray.

Resumable: a re-run skips slides already complete for the same settings and redoes the rest.
Writes shards/, _markers/, dataset.json (last), report.json, overviews/<slide>.png and
contact_sheet.png under ``output``.

Examples:
  medray extract slides=medray-data/slides output=medray-data/patches
  medray extract --config jobs/configs/extract.yaml mode=grid patch_size=128 workers=8
  medray extract slides='s3://bucket/camelyon16/*.tif' output=s3://bucket/patches mpp=0.5
"""

from __future__ import annotations

import argparse
import json

from medray.commands.common import add_config_arguments, config_from_args, maybe_print_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "mode=polygons patch_size=256")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    from medray.datasets.extract import run_extract
    from medray.datasets.extract_config import ExtractConfig

    config = config_from_args(ExtractConfig, args)
    if maybe_print_config(config, args):
        return 0
    report = run_extract(config, progress=not args.no_progress)
    summary = {k: report[k] for k in ("output", "counts", "patches", "patches_per_second", "seconds", "dataset")}
    summary["failed"] = {e["slide_id"]: e["reason"] for e in report["slides"] if e["status"] == "failed"}
    print(json.dumps(summary, indent=2))
    return 0 if report["dataset"] else 1  # failed slides are listed; the job fails only with no dataset

"""Ingest a manifest of image files (PNG/JPEG, DICOM, NIfTI) into a Parquet dataset with Ray Data.

Training then streams a few shards instead of opening every file (like SageMaker pipe mode).
Files that cannot be loaded are skipped and listed with the reason in <output>/report.json.

Examples:
  medray ingest --config jobs/configs/ingest_ct2d.yaml
  medray ingest manifest=medray-data/ct/manifest_png.jsonl loader.kind=ct2d output=s3://bucket/ct2d
  medray ingest --config jobs/configs/ingest_skin.yaml rows_per_shard=512
"""

from __future__ import annotations

import argparse
import json

from medray.commands.common import add_config_arguments, config_from_args, maybe_print_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "manifest=data/manifest.jsonl output=s3://bucket/ds")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from medray.datasets.ingest_config import IngestConfig

    config = config_from_args(IngestConfig, args)
    if maybe_print_config(config, args):
        return 0
    from medray.datasets.ingest import run_ingest

    summary = run_ingest(config, progress=not args.no_progress)
    print(json.dumps(summary, indent=2, default=str))
    return 0

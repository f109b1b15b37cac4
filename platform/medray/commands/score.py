"""Score whole slides with a patch classifier: probability heatmaps (.npy, pyramidal TIFF), overlay
PNGs and per-slide reports, tissue only, through a Ray Data read → model-actor pipeline.

Examples:
  medray score --config jobs/configs/score.yaml
  medray score slides=medray-data/slides model=models:/tumor/3 output=s3://bucket/scores
  medray score --config jobs/configs/score.yaml stride=128 predictors=2 num_gpus=0.5
"""

from __future__ import annotations

import argparse
import json

from medray.commands.common import add_config_arguments, config_from_args, maybe_print_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "model=models:/tumor/1 stride=128")


def run(args: argparse.Namespace) -> int:
    from medray.infer.score_config import ScoreConfig

    config = config_from_args(ScoreConfig, args)
    if maybe_print_config(config, args):
        return 0
    from medray.infer.score import score_slides

    report = score_slides(config)
    summary = {k: report.get(k) for k in ("output", "counts", "patches_scored", "patches_background",
                                          "patches_per_second", "seconds", "error")}
    summary["slides"] = [{k: e.get(k) for k in ("slide_id", "status", "reason")} for e in report["slides"]]
    print(json.dumps(summary, indent=2, default=str))
    return 0 if report.get("counts", {}).get("failed", 0) == 0 else 1

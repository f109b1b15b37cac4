"""Train a classifier on a medray dataset with Ray Train (fine-tuning) or a frozen backbone + head.

Examples:
  medray train --config jobs/configs/patches.yaml
  medray train --config jobs/configs/patches.yaml epochs=5 model.name=densenet121
  medray train --config jobs/configs/patches.yaml epochs=8 --resume   # continue the same output
"""

from __future__ import annotations

import argparse
import json

from medray.commands.common import add_config_arguments, config_from_args, maybe_print_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "epochs=5 model.name=resnet18")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint in the config's output location")


def run(args: argparse.Namespace) -> int:
    from medray.train.config import TrainConfig

    config = config_from_args(TrainConfig, args)
    if maybe_print_config(config, args):
        return 0
    from medray.train.trainer import train

    summary = train(config, resume=bool(args.resume))
    print(json.dumps(summary, indent=2, default=str))
    return 0

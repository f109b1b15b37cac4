"""Run the main workflow end to end on embedded defaults and print where every output is.

Local Ray started in-process, a local folder as object storage, a local MLflow sqlite store,
synthetic data: generate slides → extract patches → train → score a slide → heatmap PNG → serve.

Examples:
  medray demo
  medray demo workdir=/tmp/medray-demo slide_size=4096
"""

from __future__ import annotations

import argparse

from medray.commands.common import add_config_arguments, config_from_args, maybe_print_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "workdir=/tmp/medray-demo")


def run(args: argparse.Namespace) -> int:
    from medray.demo import DemoConfig, run_demo

    config = config_from_args(DemoConfig, args)
    if maybe_print_config(config, args):
        return 0
    run_demo(config)
    return 0

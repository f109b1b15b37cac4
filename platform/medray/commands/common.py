"""Argument and config helpers shared by every subcommand and job entrypoint."""

from __future__ import annotations

import argparse
from typing import TypeVar

from medray.config.base import MedrayModel, load_config

M = TypeVar("M", bound=MedrayModel)


def add_config_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    """``--config FILE`` plus positional ``key=value`` overrides."""
    parser.add_argument("--config", "-c", default=None, help="YAML config file (default: built-in defaults)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help=f"override any config field, dotted for nested ones (e.g. {example})")
    parser.add_argument("--print-config", action="store_true",
                        help="print the fully resolved config and exit")


def config_from_args(model: type[M], args: argparse.Namespace) -> M:
    return load_config(model, args.config, list(args.overrides or ()))


def maybe_print_config(config: MedrayModel, args: argparse.Namespace) -> bool:
    """Print the resolved config when asked; True means the caller should stop there."""
    if getattr(args, "print_config", False):
        from medray.config.base import dump_config_yaml

        print(dump_config_yaml(config), end="")
        return True
    return False

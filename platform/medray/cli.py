"""The ``medray`` command: thin subcommands (parse → config → library call).

Each subcommand lives in ``medray.commands.<name>`` with ``add_arguments(parser)`` and
``run(args) -> int``; heavy imports happen inside ``run`` so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from medray import __version__
from medray.errors import MedrayError

# name → (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("medray.commands.synth", "generate synthetic slides, HPFs, CT and dermoscopy data"),
    "ingest": ("medray.commands.ingest", "turn a manifest of PNG/DICOM/NIfTI files into Parquet shards (Ray Data)"),
    "train": ("medray.commands.train", "train a classifier on a dataset with Ray Train (fine-tune or transfer)"),
    "score": ("medray.commands.score", "score whole slides into probability heatmaps, overlays and reports (Ray Data)"),
    "demo": ("medray.commands.demo", "run the main workflow end to end on synthetic data"),
    "serve": ("medray.commands.serve", "validate a Serve config and run the inference app (serve run)"),
    "extract": ("medray.commands.extract", "extract labelled slide patches into a Parquet dataset on Ray"),
    "mitosis": ("medray.commands.mitosis", "two-stage mitosis detection: train-proposals (optional UNet), prepare, train, detect, compare"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medray",
        description="medray: medical images from storage to trained models to live HTTP inference, on Ray.",
    )
    parser.add_argument("--version", action="version", version=f"medray {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        child = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(child)
        child.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except MedrayError as err:
        print(f"medray {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Generate synthetic data with known ground truth (deterministic by seed).

Kinds: slides (pyramidal TIFF whole slides + ASAP XML / CSV / GeoJSON / mitosis CSV truth),
hpf (high-power fields with TUPAC16-style mitosis CSVs), ct (2D PNG/DICOM slices and 3D NIfTI
volumes in a MosMedData-like CT-0..CT-4 layout), skin (HAM10000-like images + metadata CSV).

Examples:
  medray synth slides output=medray-data/slides num_slides=2 width=8192 height=8192
  medray synth ct output=medray-data/ct
  medray synth skin --config my-skin.yaml seed=3
"""

from __future__ import annotations

import argparse
import importlib
import json

from medray.commands.common import add_config_arguments, config_from_args, maybe_print_config
from medray.synth import KINDS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=sorted(KINDS), help="what to generate")
    add_config_arguments(parser, "seed=7")


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(KINDS[args.kind])
    config = config_from_args(module.Config, args)
    if maybe_print_config(config, args):
        return 0
    summary = module.generate(config)
    print(json.dumps(summary, indent=2, default=str))
    return 0

"""Two-stage mitosis detection (TUPAC16-style): proposals, 64x64 classifier, clustering, evaluation.

Steps (one config, jobs/configs/mitosis.yaml):
  medray mitosis train-proposals --config jobs/configs/mitosis.yaml inputs.hpf_dir=medray-data/hpf  (optional UNet)
  medray mitosis prepare --config jobs/configs/mitosis.yaml inputs.hpf_dir=medray-data/hpf
  medray mitosis train   --config jobs/configs/mitosis.yaml
  medray mitosis detect  --config jobs/configs/mitosis.yaml inputs.hpf_dir=medray-data/hpf-test
  medray mitosis compare --config jobs/configs/mitosis.yaml inputs.hpf_dir=medray-data/hpf-test
"""

from __future__ import annotations

import argparse
import json

from medray.commands.common import add_config_arguments, config_from_args, maybe_print_config

STEPS = ("train-proposals", "prepare", "train", "detect", "compare")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    helps = {"train-proposals": "train the optional stage-1 UNet on inputs.hpf_dir; writes proposals.unet_model "
                                "(default <output>/unet.pt) for proposals.method=unet",
             "prepare": "proposals + labelled 64x64 patch datasets (train/val split by image)",
             "train": "train the classifier (shared trainer), then tune the F1-optimal threshold",
             "detect": "distributed detection with Ray Data: CSV + overlay PNGs (+ metrics with truth)",
             "compare": "proposal pipeline vs sliding window on the same images: tiles, time, F1"}
    sub = parser.add_subparsers(dest="step", metavar="STEP", required=True)
    for step in STEPS:
        child = sub.add_parser(step, help=helps[step], description=helps[step])
        add_config_arguments(child, "inputs.hpf_dir=medray-data/hpf train.model.name=resnet18")
        if step == "train":
            child.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
        if step == "train-proposals":
            child.add_argument("--steps", type=int, default=500, help="optimizer steps (default 500)")


def run(args: argparse.Namespace) -> int:
    from medray.mitosis.config import MitosisConfig

    config = config_from_args(MitosisConfig, args)
    if maybe_print_config(config, args):
        return 0
    if args.step == "train-proposals":
        result = train_proposals(config, args.steps)
    elif args.step == "prepare":
        from medray.mitosis.workflow import prepare

        result = prepare(config)
    elif args.step == "train":
        from medray.mitosis.workflow import train

        result = train(config, resume=bool(getattr(args, "resume", False)))
    elif args.step == "detect":
        from medray.mitosis.detect import run_detection

        result = run_detection(config)
    else:
        from medray.mitosis.compare import compare, markdown

        result = compare(config)
        print(markdown(result))
        result = {k: v for k, v in result.items() if k != "approaches"} | {
            "f1": {k: v["f1"] for k, v in result["approaches"].items()}}
    print(json.dumps(result, indent=2, default=str))
    return 0


def train_proposals(config, steps: int = 500) -> dict:
    """Train the stage-1 UNet on ``inputs.hpf_dir`` and save it where ``proposals.unet_model`` points
    (default ``<output>/unet.pt``)."""
    from medray.errors import ConfigError
    from medray.mitosis.segmentation import train_from_hpf
    from medray.storage import join_uri

    if not config.inputs.hpf_dir:
        raise ConfigError("train-proposals needs inputs.hpf_dir=<folder with images/ and mitoses/*.csv>")
    if steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {steps}")
    output = config.proposals.unet_model or join_uri(config.output, "unet.pt")
    result = train_from_hpf(config.inputs.hpf_dir, output, storage=config.storage, steps=steps)
    result["use_with"] = f"proposals.method=unet proposals.unet_model={output}"
    return result

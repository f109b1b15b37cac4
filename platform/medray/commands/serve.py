"""Run the inference app: validate a Serve config file, then ``serve run`` it.

Examples:
  medray serve                                   # serve_configs/local.yaml on 127.0.0.1:8000
  medray serve --demo-models                     # first train tiny stand-in models where missing
  medray serve --check serve_configs/production.yaml
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", default="serve_configs/local.yaml",
                        help="Serve config file (default: serve_configs/local.yaml)")
    parser.add_argument("--check", action="store_true", help="only validate the config file and exit")
    parser.add_argument("--demo-models", action="store_true",
                        help="train tiny synthetic-data models at local model_uri paths that have no bundle yet")


def _demo_models(args_by_app: dict) -> None:
    import os

    from medray.serve import demo_models

    trainers = {"ct": demo_models.train_ct_model, "skin": demo_models.train_skin_model}
    for app_args in args_by_app.values():
        for name, train in trainers.items():
            section = getattr(app_args, name)
            uri = section.model_uri if section else ""
            if uri and "://" not in uri and ":/" not in uri and not os.path.isfile(os.path.join(uri, "bundle.json")):
                print(f"training a demo {name} model into {uri} ...", flush=True)
                train(uri)


def run(args: argparse.Namespace) -> int:
    import subprocess
    import sys

    from medray.serve.config import check_serve_config

    apps = check_serve_config(args.config)
    print(f"{args.config}: valid ({', '.join(apps) or 'no medray app'})", flush=True)
    if args.check:
        return 0
    if args.demo_models:
        _demo_models(apps)
    # `serve run` stops cleanly on SIGTERM (it ignores SIGINT when backgrounded)
    return subprocess.call([sys.executable, "-m", "ray.serve.scripts", "run", args.config])

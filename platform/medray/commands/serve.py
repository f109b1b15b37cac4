"""Run the inference app: validate a Serve config file, then ``serve run`` it.

Examples:
  medray serve                                   # serve_configs/local.yaml on 127.0.0.1:8000
  medray serve --demo-models                     # first run the demo's training steps if models are missing
  medray serve --check serve_configs/production.yaml
  medray serve --ingress proxy                   # Ray's Python proxy instead of HAProxy
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", default="serve_configs/local.yaml",
                        help="Serve config file (default: serve_configs/local.yaml)")
    parser.add_argument("--check", action="store_true", help="only validate the config file and exit")
    parser.add_argument("--demo-models", action="store_true",
                        help="first train the demo's models (medray demo) where local model_uri paths have no bundle")
    parser.add_argument("--ingress", choices=["auto", "haproxy", "proxy"], default="auto",
                        help="haproxy: HAProxy in front of ingress replicas that serve HTTP themselves; proxy: Ray "
                             "Serve's Python proxy; auto (default): haproxy where its binary exists (ray[serve] on "
                             "Linux), else proxy. Applies to the local cluster `serve run` starts; a cluster given "
                             "by RAY_ADDRESS keeps the mode it was started with")


def _missing_local_models(args_by_app: dict) -> list[str]:
    """Local bundle folders named by the config that hold no bundle yet."""
    import os

    missing = []
    for app_args in args_by_app.values():
        for name in ("ct", "skin", "slides", "mitosis"):
            section = getattr(app_args, name, None)
            uri = section.model_uri if section else ""
            if uri and "://" not in uri and ":/" not in uri and not os.path.isfile(os.path.join(uri, "bundle.json")):
                missing.append(uri)
    return missing


def _demo_models(args_by_app: dict) -> None:
    """Train every missing demo model by running the demo (without its serve step)."""
    missing = _missing_local_models(args_by_app)
    if not missing:
        return
    from medray.demo import STEPS, DemoConfig, run_demo

    print(f"no bundle at {missing}: running the demo's training steps into medray-data/demo ...", flush=True)
    run_demo(DemoConfig(workdir="medray-data/demo", steps=[s for s in STEPS if s != "serve"]))


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
    missing = _missing_local_models(apps)
    if missing:
        print(f"no model bundle at {missing}: run `make demo` (or `medray serve --demo-models`) first",
              file=sys.stderr)
        return 2
    import os

    from medray.serve.ingress_mode import DRAIN_ENV, ingress_env

    env = {**os.environ, **ingress_env(args.ingress)}
    env.setdefault(DRAIN_ENV, "2")  # one machine, no load balancer to wait for (Ray's default: 30 s)
    # `serve run` stops cleanly on SIGTERM (it ignores SIGINT when backgrounded)
    return subprocess.call([sys.executable, "-m", "ray.serve.scripts", "run", args.config], env=env)

"""Typed Serve application builder: ``import_path: medray.serve.app:build_app`` + ``args:``.

``build_app`` deploys one model deployment per enabled endpoint and the FastAPI ingress.
``application_from_config`` builds the same app from a Serve config file's application entry,
applying its ``deployments:`` overrides (autoscaling, GPUs) the way ``serve run`` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.serve import Application

from medray.config.base import validate_config
from medray.errors import ConfigError
from medray.serve.config import AppArgs, load_serve_config

INGRESS_NAME = "Ingress"


def build_app_with_options(args: AppArgs, deployment_options: dict[str, dict[str, Any]] | None = None) -> Application:
    """The app with per-deployment ``.options()`` (keyed by deployment name) applied."""
    from medray.serve import endpoints
    from medray.serve.ingress import Ingress

    options = dict(deployment_options or {})
    active = endpoints.enabled(args)
    if not active:
        raise ConfigError("no endpoint configured: set at least one of "
                          f"{[ep.name for ep in endpoints.ENDPOINTS]} in the app args")
    known = {ep.deployment_name for ep, _ in active} | {INGRESS_NAME}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"deployment overrides for {unknown} match no deployment of this app; "
                          f"its deployments: {sorted(known)}")
    args = _absolute_local_paths(args)
    handles = {ep.name: ep.load().deployment(ep.name, ep.deployment_name, section, args,
                                             options.get(ep.deployment_name, {}))
               for ep, section in active}
    ingress_opts = {"max_ongoing_requests": args.ingress_max_ongoing_requests, **options.get(INGRESS_NAME, {})}
    return Ingress.options(**ingress_opts).bind(args, handles)


def _absolute_local_paths(args: AppArgs) -> AppArgs:
    """Relative local model paths and slide roots are taken from where the app is built
    (``serve run``'s cwd), since replicas may run in another directory."""
    import os

    from medray.serve import endpoints

    update: dict[str, Any] = {}
    roots = [r if "://" in r or os.path.isabs(r) else os.path.abspath(r) for r in args.allowed_slide_roots]
    if roots != args.allowed_slide_roots:
        update["allowed_slide_roots"] = roots
    for ep, section in endpoints.enabled(args):
        uri = getattr(section, "model_uri", None)
        if uri and "://" not in uri and not uri.startswith(("models:/", "runs:/")) and not os.path.isabs(uri):
            update[ep.name] = section.model_copy(update={"model_uri": os.path.abspath(uri)})
    return args.model_copy(update=update) if update else args


def build_app(args: AppArgs) -> Application:
    """Serve's typed builder entry point (Serve validates ``args`` into ``AppArgs`` first)."""
    if isinstance(args, dict):
        args = validate_config(AppArgs, args, "serve app args")
    return build_app_with_options(args)


def application_from_config(path: str | Path, app_name: str | None = None,
                            args_update: dict[str, Any] | None = None,
                            deployment_updates: dict[str, dict[str, Any]] | None = None,
                            ) -> tuple[Application, dict[str, Any]]:
    """(Application, app entry) for one medray app of a Serve config file, its ``deployments:``
    overrides applied; ``args_update`` / ``deployment_updates`` are deep-merged on top (tests, CLI)."""
    from medray.config.base import _deep_merge

    data = load_serve_config(path)
    apps = [a for a in data.get("applications", []) if str(a.get("import_path", "")).startswith("medray.serve.app:")]
    if app_name is not None:
        apps = [a for a in apps if a.get("name") == app_name]
    if not apps:
        raise ConfigError(f"{path}: no medray application{f' named {app_name!r}' if app_name else ''}")
    entry = apps[0]
    args = validate_config(AppArgs, _deep_merge(entry.get("args") or {}, args_update or {}),
                           f"{path}: application {entry.get('name', 'default')!r} args")
    options = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in entry.get("deployments", [])}
    for name, update in (deployment_updates or {}).items():
        options[name] = _deep_merge(options.get(name, {}), update)
    return build_app_with_options(args, options), entry

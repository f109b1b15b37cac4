"""The ingress-mode switches: what each mode sets, and what an environment selects."""

from __future__ import annotations

import pytest

from medray.serve.ingress_mode import DRAIN_ENV, active_mode, haproxy_binary, ingress_env, resolve_mode


def test_modes_set_both_switches_and_an_optional_drain():
    haproxy = ingress_env("haproxy")
    assert haproxy == {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}
    assert active_mode(haproxy) == "haproxy"
    proxy = ingress_env("proxy", drain_s=2.5)
    assert active_mode(proxy) == "proxy" and proxy[DRAIN_ENV] == "2.5"
    assert active_mode({}) == "proxy"  # Ray's own default
    assert active_mode({"RAY_SERVE_ENABLE_HA_PROXY": "1"}) == "proxy"  # HAProxy needs direct ingress too


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown ingress mode 'nginx'; choose one of \\['auto', 'haproxy', 'proxy'\\]"):
        ingress_env("nginx")


def test_auto_picks_haproxy_only_where_a_binary_exists(tmp_path, monkeypatch):
    import os

    assert haproxy_binary() and os.access(haproxy_binary(), os.X_OK)  # ray[serve] on Linux ships one
    assert resolve_mode("auto") == "haproxy" and ingress_env() == ingress_env("haproxy")
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(tmp_path / "missing"))  # as on a Mac without one
    assert haproxy_binary() is None
    assert resolve_mode("auto") == "proxy" and active_mode(ingress_env()) == "proxy"
    with pytest.raises(ValueError, match="'haproxy' needs an HAProxy binary"):
        ingress_env("haproxy")

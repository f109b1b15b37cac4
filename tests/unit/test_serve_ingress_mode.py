"""The ingress-mode switches: what each mode sets, and what an environment selects."""

from __future__ import annotations

import pytest

from medray.serve.ingress_mode import DRAIN_ENV, active_mode, ingress_env


def test_modes_set_both_switches_and_an_optional_drain():
    haproxy = ingress_env("haproxy")
    assert haproxy == {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}
    assert active_mode(haproxy) == "haproxy"
    proxy = ingress_env("proxy", drain_s=2.5)
    assert active_mode(proxy) == "proxy" and proxy[DRAIN_ENV] == "2.5"
    assert active_mode({}) == "proxy"  # Ray's own default
    assert active_mode({"RAY_SERVE_ENABLE_HA_PROXY": "1"}) == "proxy"  # HAProxy needs direct ingress too


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown ingress mode 'nginx'; choose one of \\['haproxy', 'proxy'\\]"):
        ingress_env("nginx")

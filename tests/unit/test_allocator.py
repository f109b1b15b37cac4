"""glibc malloc tuning: batch-sized buffers stop being unmapped and faulted back in.

Each case runs in a fresh interpreter (allocator settings are per process); buffers are made on a
worker thread, where Ray Data's actor pools and Serve replicas run model code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medray import allocator
from medray.models.bundle import save_bundle
from medray.models.preprocess import Preprocessing
from medray.models.registry import ModelSpec, build_model

def _glibc_version() -> tuple[int, ...]:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        return tuple(int(p) for p in version.split(".")[:2]) if name == "glibc" else ()
    except (ValueError, OSError, AttributeError):
        return ()


PLATFORM = str(Path(__file__).resolve().parents[2] / "platform")

LOAD_PROBE = r"""
import json, sys
from medray import allocator
from medray.models.bundle import load_model

load_model(sys.argv[1])
print(json.dumps({"applied": allocator._applied}))
"""

# a 40 MB buffer made and freed on a worker thread: above glibc's largest dynamic mmap threshold
# (32 MiB), so untuned it is mapped for every batch (zeroed by the kernel) and unmapped on free
BUFFER_PROBE = r"""
import ctypes, json, sys
from concurrent.futures import ThreadPoolExecutor
import numpy as np
from medray import allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
applied = allocator.tune_malloc() if sys.argv[1] == "call" else False

def cycle():
    buf = np.ones(10_000_000, np.float32)
    during = libc.mallinfo2()
    del buf
    after = libc.mallinfo2()
    return {"mapped_during": during.hblkhd, "heap_free_after": after.fordblks}

print(json.dumps({"applied": applied, **ThreadPoolExecutor(1).submit(cycle).result()}))
"""

glibc_linux = pytest.mark.skipif(not sys.platform.startswith("linux") or not _glibc_version() >= (2, 33),
                                 reason="malloc tuning applies to glibc (Linux); mallinfo2 needs glibc >= 2.33")


def _run(probe: str, tuning: str | None, *args: str, extra_env: dict[str, str] | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": PLATFORM}
    for key in ["MEDRAY_MALLOC_TUNING", *allocator.malloc_env()]:
        env.pop(key, None)
    if tuning is not None:
        env["MEDRAY_MALLOC_TUNING"] = tuning
    env.update(extra_env or {})
    out = subprocess.run([sys.executable, "-c", probe, *args], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> str:
    spec = ModelSpec(name="smallcnn", num_classes=2)
    prep = Preprocessing(size=128, info={"patch_size": 128})
    return save_bundle(str(tmp_path_factory.mktemp("alloc") / "model"), build_model(spec), spec, ["a", "b"], prep)


@glibc_linux
def test_batch_sized_buffers_stay_in_the_heap():
    tuned = _run(BUFFER_PROBE, None, "call")
    untuned = _run(BUFFER_PROBE, "0", "call")
    assert tuned["applied"] is True and untuned["applied"] is False
    size = 40_000_000
    assert untuned["mapped_during"] >= size and untuned["heap_free_after"] < size, untuned  # mapped, then gone
    assert tuned["mapped_during"] < size and tuned["heap_free_after"] >= size, tuned  # heap, kept for the next batch


@glibc_linux
def test_environment_form_tunes_a_process_from_its_start():
    """What Ray actors get (``with_malloc_env``): glibc reads it at start-up, before any thread exists."""
    started_with = _run(BUFFER_PROBE, None, "skip", extra_env=allocator.malloc_env())
    assert started_with["applied"] is False  # no in-process call: the environment alone does it
    assert started_with["mapped_during"] < 40_000_000 <= started_with["heap_free_after"], started_with


def test_with_malloc_env_merges_into_ray_options(monkeypatch):
    monkeypatch.delenv("MEDRAY_MALLOC_TUNING", raising=False)
    caller = {"num_cpus": 1, "runtime_env": {"pip": ["x"], "env_vars": {"A": "1", "MALLOC_ARENA_MAX": "4"}}}
    merged = allocator.with_malloc_env(caller)
    if sys.platform.startswith("linux"):
        assert merged["runtime_env"]["env_vars"] == {**allocator.malloc_env(), "A": "1", "MALLOC_ARENA_MAX": "4"}
    assert merged["num_cpus"] == 1 and merged["runtime_env"]["pip"] == ["x"]
    assert caller["runtime_env"]["env_vars"] == {"A": "1", "MALLOC_ARENA_MAX": "4"}  # the caller's dict untouched
    monkeypatch.setenv("MEDRAY_MALLOC_TUNING", "0")
    assert allocator.malloc_env() == {} and allocator.with_malloc_env({"num_cpus": 1}) == {"num_cpus": 1}


@glibc_linux
def test_loading_a_model_tunes_its_process(bundle):  # build_model applies it: every model path
    assert _run(LOAD_PROBE, None, bundle) == {"applied": True}
    assert _run(LOAD_PROBE, "0", bundle) == {"applied": False}


def test_switch_off_is_honoured(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setenv("MEDRAY_MALLOC_TUNING", "off")
    assert allocator.tune_malloc() is False  # (monkeypatch restores this process's own state afterwards)

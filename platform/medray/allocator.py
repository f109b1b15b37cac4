"""glibc malloc tuning for processes that run models on batches.

By default glibc hands every freed buffer above a small, slowly growing threshold back to the
kernel and trims the heap top above 128 KiB, so each forward pass page-faults its input and
activation buffers back in: measured on the CPU, a small CNN ran at half speed and resnet18 at
two thirds. Keeping batch-sized buffers in the heap removes that cost; peak memory is unchanged
(the buffers are live during every batch anyway), the process just keeps its working set between
batches.

Two forms: ``tune_malloc()`` in-process (``build_model`` calls it, so every process that makes a
network is covered), and ``malloc_env()`` / ``with_malloc_env()`` for the model actors medray
starts. The second matters because Ray Data and Serve run model code on worker threads: a thread
that already has its own glibc arena keeps it (64 MiB heaps, anything larger mapped per batch),
and only settings present at process start hold for every thread. ``MEDRAY_MALLOC_TUNING=0``
turns both off; other C libraries (musl, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

MMAP_THRESHOLD = 256 << 20  # buffers above this (rare: batch activations of big CNNs) still map and unmap
TRIM_THRESHOLD = 512 << 20  # free heap kept per process before it is returned to the kernel
TOP_PAD = 64 << 20  # a thread arena's spare room: keeps its emptied 64 MiB heaps instead of unmapping them
ARENA_MAX = 1  # threads started after tuning share the main heap (Ray Data and Serve run models on threads)
# (mallopt parameter number from glibc's malloc.h, the environment variable glibc reads at start-up, value);
# both thresholds or neither: setting one switches off glibc's dynamic threshold, and a trim
# threshold alone leaves every buffer above 128 KiB on mmap (slower than the default)
_SETTINGS = [(-3, "MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD), (-1, "MALLOC_TRIM_THRESHOLD_", TRIM_THRESHOLD),
             (-2, "MALLOC_TOP_PAD_", TOP_PAD), (-8, "MALLOC_ARENA_MAX", ARENA_MAX)]

_applied: bool | None = None


def _wanted() -> bool:
    off = os.environ.get("MEDRAY_MALLOC_TUNING", "1").strip().lower() in {"0", "false", "off", "no"}
    return not off and sys.platform.startswith("linux")


def tune_malloc() -> bool:
    """Keep batch-sized buffers in this process's heap (once per process); True where glibc took it."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not _wanted():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = all(mallopt(param, value) == 1 for param, _, value in _SETTINGS)
    return _applied


def malloc_env() -> dict[str, str]:
    """The same settings as environment variables, for processes Ray starts (read by glibc at
    start-up, so they hold for every thread, even ones made before medray's code runs); empty
    where tuning is off or not Linux."""
    if not _wanted():
        return {}
    return {name: str(value) for _, name, value in _SETTINGS}


def with_malloc_env(remote_args: dict) -> dict:
    """Ray actor/task options with ``malloc_env`` added to their runtime env (Ray merges a
    per-actor ``env_vars`` with the job's; variables the caller already set win)."""
    env = malloc_env()
    if not env:
        return dict(remote_args)
    runtime_env = dict(remote_args.get("runtime_env") or {})
    runtime_env["env_vars"] = {**env, **(runtime_env.get("env_vars") or {})}
    return {**remote_args, "runtime_env": runtime_env}


def state() -> dict[str, bool]:
    """This process's tuning, for diagnostics: tuned in-process, and started with ``malloc_env``."""
    env = malloc_env()
    return {"tuned": bool(_applied), "started_with_env": bool(env) and all(os.environ.get(k) == v for k, v in env.items())}

"""Peak resident memory of a child process and all its descendants (driver, GCS, raylet, Ray workers).

Shared by the memory benchmarks: they run a real job in a child process and poll ``/proc`` every
0.1 s, summing VmRSS over the process tree and keeping the peak (no psutil needed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _children() -> dict[int, list[int]]:
    """ppid → pids, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mib(root: int) -> float:
    """Resident memory of ``root`` and all its descendants, MiB."""
    tree, total, todo = _children(), 0, [root]
    while todo:
        pid = todo.pop()
        total += _rss_kib(pid)
        todo.extend(tree.get(pid, []))
    return total / 1024


def add_child_arguments(parser: argparse.ArgumentParser) -> None:
    """The hidden arguments a memory bench passes to its own child process (``--child``)."""
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", default=None, help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)


def prepare_environment(platform_dir: str) -> None:
    """Quiet telemetry and put ``platform_dir`` on PYTHONPATH (inherited by the child and Ray workers)."""
    for key, value in {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true",
                       "DO_NOT_TRACK": "true", "NO_ALBUMENTATIONS_UPDATE": "1"}.items():
        os.environ.setdefault(key, value)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (platform_dir, os.environ.get("PYTHONPATH")) if p)


def peak_of_child(args: list[str], what: str) -> tuple[float, dict]:
    """Run ``python <args>`` as a child; (peak MiB of its process tree, the JSON on its last stdout line)."""
    child = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True)
    peak = 0.0
    while child.poll() is None:
        peak = max(peak, tree_rss_mib(child.pid))
        time.sleep(0.1)
    out = child.stdout.read()
    if child.returncode != 0:
        raise SystemExit(f"{what} child failed ({child.returncode}):\n{out[-2000:]}")
    return peak, json.loads(out.strip().splitlines()[-1])

"""A real ``ray start --head`` + ``ray job submit`` round trip, as jobs/README.md tells users to do it.

A separate cluster (not the session ``ray_cluster``): its own temp dir and ports on 127.0.0.1,
token authentication with a per-test token, stopped by process group / temp dir (never ``ray stop``,
which would stop every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).parent / "ray"
# Kept out of the working-dir upload (gitignore-style patterns, relative to --working-dir).
EXCLUDES = [".git", ".venv", "medray-data", "mlruns", ".pytest_cache", "**/__pycache__", "bench", "tests"]


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _own_pids(pgid: int, marker: str) -> list[int]:
    """PIDs of the processes this test started: same process group as `ray start`, or our temp dir in argv."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid or marker in cmdline:
            pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _stop(pgid: int, marker: str, grace_s: float = 15.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _own_pids(pgid, marker)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            time.sleep(0.5)
        if not pids:
            return


@dataclass
class Head:
    address: str
    env: dict[str, str]
    temp_dir: Path


def _start_head() -> tuple[subprocess.Popen, Path, str]:
    """`ray start --head` in its own session; (its process, temp dir, output). All ports explicit and free."""
    temp_dir = Path(tempfile.mkdtemp(prefix="mrjob", dir="/tmp"))  # short: unix socket paths are capped
    gcs, dashboard, agent_http, agent_grpc, runtime_env, metrics, node_manager, object_manager, client = \
        _free_ports(9)
    command = [str(RAY), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
               f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
               f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
               f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
               f"--ray-client-server-port={client}", "--num-cpus=1", "--object-store-memory=100000000",
               f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    starter = subprocess.Popen(command, env=HEAD_ENV, cwd=temp_dir, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = starter.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        starter.kill()
        out, _ = starter.communicate()
    return starter, temp_dir, f"http://127.0.0.1:{dashboard}" if starter.returncode == 0 else out


HEAD_ENV = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
            # Job entrypoints run `python` from the head's PATH: the venv's, as after `source .venv/bin/activate`.
            "PATH": f"{RAY.parent}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.fixture(scope="module")
def ray_head():
    """A one-CPU Ray head on 127.0.0.1 with token auth, for `ray job submit`.

    Ray gives the raylet a fixed 30 s to register; on a saturated machine that can pass, so a
    failed start is cleaned up and tried once more.
    """
    for attempt in (1, 2):
        starter, temp_dir, result = _start_head()
        if starter.returncode == 0:
            break
        _stop(starter.pid, str(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)
        if attempt == 2:
            pytest.fail(f"ray start failed twice:\n{result[-3000:]}")
    try:
        yield Head(address=result, env=HEAD_ENV, temp_dir=temp_dir)
    finally:
        _stop(starter.pid, str(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)


def _job_cli(head: Head, *args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(RAY), "job", *args], env=env or head.env, cwd=REPO_ROOT, timeout=timeout,
                          capture_output=True, text=True)


def _wait_for(head: Head, job_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        result = _job_cli(head, "status", "--address", head.address, job_id)
        status = result.stdout + result.stderr
        match = re.search(r"Job '[^']+' (succeeded|failed|was stopped)", status)
        if match:
            return {"succeeded": "SUCCEEDED", "failed": "FAILED", "was stopped": "STOPPED"}[match.group(1)]
        time.sleep(2)
    return f"TIMEOUT after {timeout}s: {status[-500:]}"


def _submit(head: Head, entrypoint: list[str], env_vars: dict[str, str], timeout: float = 300) -> tuple[str, str]:
    """Submit from the repo root with --working-dir ., wait (bounded); (final status, logs)."""
    job_id = f"medray-test-{uuid.uuid4().hex[:8]}"
    runtime_env = {"env_vars": env_vars, "excludes": EXCLUDES}
    submit = _job_cli(head, "submit", "--address", head.address, "--submission-id", job_id, "--no-wait",
                      "--working-dir", ".", "--runtime-env-json", json.dumps(runtime_env),
                      "--", *entrypoint, timeout=120)
    assert submit.returncode == 0, f"ray job submit failed:\n{submit.stdout}\n{submit.stderr}"
    final = _wait_for(head, job_id, timeout)
    logs = _job_cli(head, "logs", "--address", head.address, job_id).stdout
    return final, logs


def test_submit_without_the_token_is_rejected(ray_head):
    """The pitfall jobs/README.md documents: a client without token auth gets 'Missing authentication token'."""
    env = {k: v for k, v in ray_head.env.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env["RAY_AUTH_MODE"] = "disabled"
    result = _job_cli(ray_head, "list", "--address", ray_head.address, env=env)
    assert result.returncode != 0
    assert "Missing authentication token" in result.stdout + result.stderr


def test_submitted_synth_job_writes_its_outputs(ray_head, tmp_path):
    """`ray job submit --working-dir .` runs a medray command on the cluster; the upload stays small."""
    output = tmp_path / "ct"
    final, logs = _submit(ray_head, [
        "python", "-m", "medray.cli", "synth", "ct", f"output={output}", "classes=[CT-0,CT-3]",
        "patients_per_class=1", "slices_per_patient=2", "image_size=32", "studies_per_class=1",
        "volume_shape=[8,8,4]", "formats=[png]"], {"MEDRAY_TEST_JOB": "1"})
    assert final == "SUCCEEDED", logs[-3000:]
    pngs = sorted(p.relative_to(output).as_posix() for p in output.rglob("*.png"))
    assert len(pngs) == 2 * 1 * 2, pngs  # classes × patients × slices
    assert {p.split("/")[1] for p in pngs if p.startswith("studies/")} <= {"CT-0", "CT-3"}
    # The working-dir package the cluster received: the repo without .venv / tests / data.
    packages = [p for p in ray_head.temp_dir.glob("session_*/runtime_resources/working_dir_files/*") if p.is_dir()]
    assert packages, "no working_dir package found on the cluster"
    for package in packages:
        names = {p.name for p in package.iterdir()}
        assert {"platform", "jobs"} <= names and not names & {".venv", "tests", ".git"}, names
        size = sum(f.stat().st_size for f in package.rglob("*") if f.is_file())
        assert size < 20 * 2**20, f"working_dir upload is {size / 2**20:.1f} MiB"


def test_submitted_extract_patches_job(ray_head, tmp_path):
    """jobs/extract_patches.py on a tiny generated slide, through `ray job submit`."""
    import importlib

    from medray.synth import KINDS

    slides = importlib.import_module(KINDS["slides"])
    slides.generate(slides.Config(output=str(tmp_path / "slides"), num_slides=1, width=2048, height=2048,
                                  levels=2, mitoses_per_slide=0, mimics_per_slide=0, points_per_label=20,
                                  thumbnail_size=256, progress=False))
    output = tmp_path / "patches"
    final, logs = _submit(ray_head, [
        "python", "jobs/extract_patches.py", f"slides={tmp_path / 'slides'}", f"output={output}",
        "patch_size=64", "max_per_label=4", "rows_per_shard=8", "overviews=false", "workers=1"],
        {"TQDM_MININTERVAL": "30"})
    assert final == "SUCCEEDED", logs[-3000:]
    info = json.loads((output / "dataset.json").read_text())  # written last: the dataset is complete
    assert info["classes"] == ["normal", "tumor"]
    assert 1 <= info["class_counts"]["tumor"] <= 4 and 1 <= info["class_counts"]["normal"] <= 4, info["class_counts"]
    assert info["num_rows"] == sum(s["rows"] for s in info["shards"]) == sum(info["class_counts"].values())
    assert all((output / "shards" / Path(s["uri"]).name).is_file() for s in info["shards"])

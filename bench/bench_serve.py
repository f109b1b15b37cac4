"""Serve overhead: requests/s through Ray Serve (HTTP + dynamic batching) vs the bare model in
this process, and single-request p50 latency vs one bare decode + forward pass.

Fair by construction: both sides run the same randomly initialised bundle (``--model``, built by
``medray.models.registry``; nothing downloaded; default the skin endpoint's DenseNet121 at its
64 px input, ``jobs/configs/skin.yaml``), the same batch size (``--batch`` is the bare batch and
Serve's ``max_batch_size``), the same input, and the same torch threads (``--threads``, default
every core: the bare model gets them in this process, the replica through OMP_NUM_THREADS), both
with ``OMP_WAIT_POLICY=PASSIVE`` (spinning OpenMP threads that share 2 cores with anything else
— here the proxy, the ingress and the client — made a DenseNet forward pass over 10x slower here).
The bare side does the per-image work a replica does (decode the uploaded JPEG to the model's
input, batched forward pass) without HTTP, Ray or batching queues. This machine's speed swings by
up to 2x within minutes, so the two sides are measured in turns, not one after the other: single
requests alternate with single bare passes (the overhead is the median of the paired
differences), and bare batches run just before and just after the load run (the faster is the
baseline) while the Serve cluster sits idle.

Serve side, sized for a small machine: one ``SkinClassifier`` replica reserving 1 CPU (the
ingress 0.1, the proxy and controller 0: it fits 2 cores); the ingress holds every request in
flight (``ingress_max_ongoing_requests``, 256) and gathers them into batches for the replica,
and ``--clients`` (default 3 x batch) keep-alive connections from an asyncio client keep the next
batch waiting in the ingress (a partial batch goes only while the model has none) when one pass
ends. ``--wait-ms`` is ``batch_wait_timeout_s``: a lone request waits that long, so it is part of
the p50 overhead; full batches under load never wait.

It also prints the CPU time each Serve process spent per request under load (Linux ``/proc``):
on 2 cores that, not the model, bounds requests/s for a small model. And it prints how much of the
load run the replica's model was busy and how long its passes took per image against the bare
pass: busy near 100 % with slower passes means the model is sharing cores with the HTTP path,
busy well below 100 % would mean requests do not reach the batch queue fast enough. The ingress
sends uploads to the replica in batches (``medray.serve.batch_relay``); the bench prints how many
each replica call brought. ``--ingress`` picks how HTTP
reaches the app (``medray.serve.ingress_mode``): ``haproxy`` (medray's default: HAProxy in front
of an ingress replica that serves HTTP itself) or ``proxy`` (Ray Serve's Python proxy actor).

Last lines: ``p50 overhead: <ms>`` (target <= 20 ms) and ``serve ratio: <Serve throughput /
bare batched throughput>`` (target >= 0.7).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

PLATFORM = str(Path(__file__).resolve().parents[1] / "platform")
sys.path.insert(0, PLATFORM)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp; the replica gets the same

import numpy as np  # noqa: E402

CLASSES = list("abcdefg")  # HAM10000's 7 classes (names do not matter here)


class Bare:
    """The bare model in this process: the per-image work a replica does (decode the uploaded JPEG
    to the model's input, batched forward pass) without HTTP, Ray or batching queues."""

    def __init__(self, bundle: str, payload: bytes, batch: int, threads: int, device: str = "cpu") -> None:
        import torch

        from medray.models.bundle import load_model
        from medray.serve.uploads import decode_for_model

        torch.set_num_threads(threads)
        self.model = load_model(bundle, device=device)
        prep = self.model.preprocessing
        self.decode = lambda: decode_for_model(payload, "x.jpg", "image/jpeg", prep)[0]  # noqa: E731
        self.batch = batch
        for _ in range(3):
            self.single()
            self.model.predict_proba(np.stack([self.decode() for _ in range(batch)]), batch_size=batch)

    def single(self) -> float:
        """Seconds for one image, decode to probabilities."""
        start = time.perf_counter()
        self.model.predict_proba(self.decode()[None])
        return time.perf_counter() - start

    def throughput(self, seconds: float) -> float:
        """Images/s with full batches for ``seconds``."""
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            self.model.predict_proba(np.stack([self.decode() for _ in range(self.batch)]), batch_size=self.batch)
            done += self.batch
        return done / (time.perf_counter() - start)


async def _post(session, url: str, payload: bytes) -> tuple[bool, float]:
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("file", payload, filename="x.jpg", content_type="image/jpeg")
    start = time.perf_counter()
    async with session.post(url, data=form) as response:
        await response.read()
        return response.status == 200, time.perf_counter() - start


async def _load(url: str, payload: bytes, clients: int, seconds: float, singles: int, bare: Bare) -> dict:
    """Single requests alternating with single bare passes (so both sample the same moments of a
    noisy machine), then bare batches, ``clients`` concurrent loops for ``seconds``, bare batches."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        served, direct = [], []
        for _ in range(singles):
            ok, took = await _post(session, url, payload)
            if not ok:
                raise RuntimeError(f"POST {url} failed; see the Serve logs under /tmp/ray/session_latest/logs/serve")
            served.append(took)
            direct.append(bare.single())
        out = {"p50_ms": float(np.median(served)) * 1000, "bare_p50_ms": float(np.median(direct)) * 1000,
               "paired_overhead_ms": float(np.median(np.subtract(served, direct))) * 1000,
               "bare_ips": [bare.throughput(seconds / 2)]}

        async def run(duration: float) -> tuple[int, int, list[float], float]:
            count, errors, latencies = [0], [0], []
            start = time.perf_counter()
            stop = start + duration

            async def client() -> None:
                while time.perf_counter() < stop:
                    ok, took = await _post(session, url, payload)
                    count[0] += 1
                    errors[0] += not ok
                    latencies.append(took)

            await asyncio.gather(*(client() for _ in range(clients)))
            return count[0], errors[0], latencies, time.perf_counter() - start

        await run(min(3.0, seconds / 2))  # warm-up: connections open, batches flowing
        out["stats_before"] = await asyncio.to_thread(_stats)
        cpu_before = _cpu_seconds()
        count, errors, latencies, elapsed = await run(seconds)
        out["load_elapsed_s"] = elapsed
        cpu_after = _cpu_seconds()
        out["stats_after"] = await asyncio.to_thread(_stats)
        out["cpu_ms"] = {role: (cpu_after[role] - cpu_before.get(role, 0.0)) * 1000 / max(count, 1)
                         for role in cpu_after if role.startswith(("Proxy", "HAProxy", "ServeReplica:bench", "client"))}
        out["bare_ips"].append(bare.throughput(seconds / 2))
        out.update(rps=count / elapsed, requests=count, errors=errors,
                   load_p50_ms=float(np.median(latencies)) * 1000,
                   load_p99_ms=float(np.percentile(latencies, 99)) * 1000)
    return out


def _cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of this process (the client) and of the Ray workers of the cluster this
    process started (children of its raylet), by role: ``ProxyActor``, ``ServeReplica:bench:...``."""
    def read(pid: str) -> tuple[int, str, float] | None:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return int(fields[1]), cmd, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    if not os.path.isdir("/proc"):
        return {}
    procs = {pid: info for pid in os.listdir("/proc") if pid.isdigit() and (info := read(pid))}
    raylets = {int(pid) for pid, (ppid, cmd, _) in procs.items() if ppid == os.getpid() and "raylet" in cmd}
    children: dict[int, list[int]] = collections.defaultdict(list)
    for pid, (ppid, _, _) in procs.items():
        children[ppid].append(int(pid))
    ours, todo = set(), list(raylets)
    while todo:  # every process under this cluster's raylet (HAProxy is a Serve actor's child)
        pid = todo.pop()
        ours.add(pid)
        todo.extend(children.get(pid, []))
    out: collections.Counter = collections.Counter()
    for pid, (ppid, cmd, cpu) in procs.items():
        if int(pid) == os.getpid():
            out["client"] += cpu
        elif ppid in raylets and cmd.startswith("ray::"):
            out[cmd.removeprefix("ray::").split(".")[0]] += cpu
        elif int(pid) in ours and os.path.basename(cmd) == "haproxy":
            out["HAProxy"] += cpu
    return out


def _stats() -> dict:
    from ray import serve

    return serve.get_deployment_handle("SkinClassifier", app_name="bench").batch_stats.remote().result()


def through_serve(bundle: str, payload: bytes, opts: argparse.Namespace) -> dict:
    """The real app (ingress + SkinClassifier) on 127.0.0.1, driven over HTTP, with the bare model
    measured in this process between the Serve phases (the cluster idles meanwhile)."""
    import ray
    from ray import serve

    from medray.serve.app import build_app_with_options
    from medray.serve.config import AppArgs

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ray.init(num_cpus=opts.cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                 p for p in (PLATFORM, os.environ.get("PYTHONPATH")) if p)}})
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = AppArgs(skin={"model_uri": bundle, "device": "cuda" if opts.gpu else "cpu", "max_batch_size": opts.batch, "batch_wait_timeout_s": opts.wait_ms / 1000,
                         "max_ongoing_requests": opts.clients + opts.batch})
    path = os.pathsep.join(p for p in (PLATFORM, os.environ.get("PYTHONPATH")) if p)
    classifier = {"ray_actor_options": {"num_cpus": 1, "num_gpus": 1 if opts.gpu else 0, "runtime_env": {
        "env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": str(opts.threads),
                     "OMP_WAIT_POLICY": os.environ["OMP_WAIT_POLICY"]}}}}
    ingress = {"num_replicas": opts.ingress_replicas}  # HAProxy balances over them; each gathers its own batches
    if opts.no_access_log:  # Serve's per-request access log line, in both processes
        for options in (ingress, classifier):
            options["logging_config"] = {"enable_access_log": False}
    serve.run(build_app_with_options(args, {"SkinClassifier": classifier, "Ingress": ingress}), name="bench",
              route_prefix="/")
    try:
        bare = Bare(bundle, payload, opts.batch, opts.threads, "cuda" if opts.gpu else "cpu")
        out = asyncio.run(_load(f"http://127.0.0.1:{port}/skin/classify", payload, opts.clients, opts.seconds,
                                opts.singles, bare))
    finally:
        serve.shutdown()
        ray.shutdown()
    before, after = out.pop("stats_before"), out.pop("stats_after")
    batches = after["batches_total"] - before["batches_total"]
    forward_s = after["forward_s_total"] - before["forward_s_total"]
    calls = after["calls_total"] - before["calls_total"]
    out.update(mean_batch=(after["samples_total"] - before["samples_total"]) / max(batches, 1),
               per_call=(after["samples_total"] - before["samples_total"]) / max(calls, 1),
               max_batch=after["max"], torch_threads=after["torch_threads"],
               busy=forward_s / out["load_elapsed_s"], forward_ms=forward_s * 1000 / max(batches, 1))
    return out


def main() -> int:
    from medray.models.registry import available_models

    cores = os.cpu_count() or 2
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="densenet121", choices=available_models(),
                        help="registry model, random init (default: the skin endpoint's densenet121)")
    parser.add_argument("--size", type=int, default=64, help="input side in pixels (skin endpoint: 64)")
    parser.add_argument("--batch", type=int, default=16, help="bare batch size and Serve max_batch_size")
    parser.add_argument("--clients", type=int, default=None, help="concurrent HTTP connections (default 3 x batch)")
    parser.add_argument("--wait-ms", type=float, default=2.0, help="Serve batch_wait_timeout_s, in ms")
    parser.add_argument("--threads", type=int, default=cores, help="torch threads, bare and replica alike")
    parser.add_argument("--cpus", type=int, default=cores, help="CPUs of the local Ray cluster")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="length of the Serve load run (the bare batches run half as long before and after it)")
    parser.add_argument("--singles", type=int, default=50, help="sequential single-image runs for the p50s")
    parser.add_argument("--ingress-replicas", type=int, default=1,
                        help="HTTP ingress replicas (a fast GPU model outruns one: ~2.5 ms of CPU per request each)")
    parser.add_argument("--no-access-log", action="store_true",
                        help="turn off Serve's access log in the ingress and the replica (logging_config)")
    parser.add_argument("--gpu", action="store_true", help="bare model and replica on the GPU (bf16 autocast)")
    parser.add_argument("--ingress", choices=["auto", "haproxy", "proxy"], default="auto",
                        help="how HTTP reaches the app (medray.serve.ingress_mode; default: medray's, auto = "
                             "haproxy where its binary exists)")
    opts = parser.parse_args()
    opts.clients = opts.clients or 3 * opts.batch

    from medray.serve.ingress_mode import ingress_env, resolve_mode

    opts.ingress = resolve_mode(opts.ingress)
    os.environ.update(ingress_env(opts.ingress, drain_s=1))  # before ray.init: the cluster inherits it

    from medray.datasets.codec import encode_image
    from medray.serve.demo_models import skin_image, untrained_model

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        bundle = untrained_model(f"{tmp}/model", 2, 3, opts.size, CLASSES, name=opts.model)
        payload = encode_image(skin_image("mel", np.random.default_rng(0), opts.size), "jpeg")
        srv = through_serve(bundle, payload, opts)
    bare_ips = max(srv["bare_ips"])  # the faster of before and after: a slow baseline would flatter Serve
    print(f"model      : {opts.model} {opts.size}x{opts.size}, batch {opts.batch}, torch threads {opts.threads} "
          f"(replica: {srv['torch_threads']}), {'GPU' if opts.gpu else 'CPU'}, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
          f"{opts.cpus} CPUs, ingress {opts.ingress} x {opts.ingress_replicas}"
          f"{', no access log' if opts.no_access_log else ''}")
    print(f"bare model : {bare_ips:8.1f} images/s (batch {opts.batch}; before / after the load run: "
          f"{srv['bare_ips'][0]:.1f} / {srv['bare_ips'][1]:.1f}), p50 one image {srv['bare_p50_ms']:7.2f} ms")
    print(f"ray serve  : {srv['rps']:8.1f} requests/s ({opts.clients} clients, {srv['requests']} requests, "
          f"p50 {srv['load_p50_ms']:.1f} ms, p99 {srv['load_p99_ms']:.1f} ms under load), "
          f"p50 one request {srv['p50_ms']:7.2f} ms, batches mean {srv['mean_batch']:.1f} max {srv['max_batch']}, "
          f"{srv['per_call']:.1f} uploads per replica call, errors {srv['errors']}")
    per_image = srv["forward_ms"] / max(srv["mean_batch"], 1e-9)
    print(f"replica    : model busy {srv['busy']:.0%} of the load run; a pass of {srv['mean_batch']:.1f} images took "
          f"{srv['forward_ms']:.1f} ms = {per_image:.1f} ms per image vs {1000 / bare_ips:.1f} ms bare "
          f"({per_image * bare_ips / 1000:.2f}x: the HTTP path's processes and threads share the cores)")
    cpu = ", ".join(f"{role.removeprefix('ServeReplica:bench:')} {ms:.1f}" for role, ms in
                    sorted(srv["cpu_ms"].items(), key=lambda kv: -kv[1]))
    print(f"CPU per request under load (ms): {cpu}; total {sum(srv['cpu_ms'].values()):.1f}")
    print(f"p50 overhead: {srv['paired_overhead_ms']:.2f} ms (median of request - bare pass, taken in turns; "
          f"difference of the p50s {srv['p50_ms'] - srv['bare_p50_ms']:.2f} ms; target <= 20 ms; "
          f"includes --wait-ms {opts.wait_ms:g})")
    print(f"serve ratio: {srv['rps'] / bare_ips:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

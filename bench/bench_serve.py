"""Serve overhead: requests/s through Ray Serve (HTTP + dynamic batching) vs the bare model in
this process, and single-request p50 latency vs one bare decode + forward pass.

The bare baseline does the same per-image work as a replica (decode the uploaded JPEG to the
model's input, batched forward pass), without HTTP, Ray or batching queues.
Last line: ``serve ratio: <Serve throughput / bare batched throughput>`` (target >= 0.7; p50
overhead target <= 20 ms).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import numpy as np  # noqa: E402


def bare(bundle: str, payload: bytes, batch: int, seconds: float) -> tuple[float, float]:
    """(images/s with batched forward passes, p50 ms of one decode + forward)."""
    from medray.models.bundle import load_model
    from medray.serve.uploads import decode_for_model

    model = load_model(bundle)
    prep = model.preprocessing
    one = lambda: model.predict_proba(decode_for_model(payload, "x.jpg", "image/jpeg", prep)[0][None])  # noqa: E731
    for _ in range(10):
        one()
    single = []
    for _ in range(100):
        start = time.perf_counter()
        one()
        single.append(time.perf_counter() - start)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        samples = [decode_for_model(payload, "x.jpg", "image/jpeg", prep)[0] for _ in range(batch)]
        model.predict_proba(np.stack(samples), batch_size=batch)
        done += batch
    return done / (time.perf_counter() - start), float(np.median(single)) * 1000


def through_serve(bundle: str, payload: bytes, batch: int, clients: int, seconds: float) -> tuple[float, float, dict]:
    """(requests/s with ``clients`` concurrent clients, p50 ms of sequential requests, batch stats)."""
    import httpx
    import ray
    from ray import serve

    from medray.serve.app import build_app_with_options
    from medray.serve.config import AppArgs

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "platform")}})
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = AppArgs(skin={"model_uri": bundle, "max_batch_size": batch, "batch_wait_timeout_s": 0.002,
                         "max_ongoing_requests": 4 * batch})
    serve.run(build_app_with_options(args, {"SkinClassifier": {"ray_actor_options": {"num_cpus": 1}}}),
              name="bench", route_prefix="/")
    url = f"http://127.0.0.1:{port}/skin/classify"
    files = {"file": ("x.jpg", payload, "image/jpeg")}
    with httpx.Client(timeout=30) as http:
        for _ in range(20):
            http.post(url, files=files).raise_for_status()
        single = []
        for _ in range(100):
            start = time.perf_counter()
            http.post(url, files=files).raise_for_status()
            single.append(time.perf_counter() - start)
    count, errors, lock = [0], [0], threading.Lock()
    stop = time.perf_counter() + seconds

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while time.perf_counter() < stop:
                ok = http.post(url, files=files).status_code == 200
                with lock:
                    count[0] += 1
                    errors[0] += 0 if ok else 1

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rps = count[0] / (time.perf_counter() - start)
    stats = serve.get_deployment_handle("SkinClassifier", app_name="bench").batch_stats.remote().result()
    stats["errors"] = errors[0]
    serve.shutdown()
    ray.shutdown()
    return rps, float(np.median(single)) * 1000, stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="input side in pixels")
    parser.add_argument("--batch", type=int, default=16, help="max_batch_size (and the bare batch)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent HTTP clients")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each throughput run")
    opts = parser.parse_args()

    from medray.datasets.codec import encode_image
    from medray.serve.demo_models import skin_image, untrained_model

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        bundle = untrained_model(f"{tmp}/model", 2, 3, opts.size, list("abcdefg"))
        payload = encode_image(skin_image("mel", np.random.default_rng(0), opts.size), "jpeg")
        bare_ips, bare_p50 = bare(bundle, payload, opts.batch, opts.seconds / 2)
        serve_rps, serve_p50, stats = through_serve(bundle, payload, opts.batch, opts.clients, opts.seconds)
    print(f"bare model : {bare_ips:8.1f} images/s (batch {opts.batch}), p50 one image {bare_p50:6.2f} ms")
    print(f"ray serve  : {serve_rps:8.1f} requests/s ({opts.clients} clients), p50 one request {serve_p50:6.2f} ms, "
          f"batches mean {stats['mean']:.1f} max {stats['max']}, errors {stats['errors']}")
    print(f"p50 overhead: {serve_p50 - bare_p50:.2f} ms (target <= 20 ms)")
    print(f"serve ratio: {serve_rps / bare_ips:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

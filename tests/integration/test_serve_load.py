"""Load test on loopback: concurrent clients against each classification endpoint for a fixed
time (p50/p99 latency, throughput, zero errors) with production.yaml's autoscaling shrunk to
min 1 / max 2 replicas: replicas scale up under load and back down after. Every wait is bounded.
The ingress sends uploads in batches (an ongoing request of a classifier is a batch), so batches
of 4 for 8 clients keep two out at once: twice the target of 1."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import yaml
import pytest

from medray.datasets.codec import encode_image
from medray.serve import demo_models

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
APP = "medray-load"
CLIENTS = 8
LOAD_SECONDS = 12.0
SCALE = {"min_replicas": 1, "max_replicas": 2, "initial_replicas": 1, "target_ongoing_requests": 1,
         "upscale_delay_s": 1.0, "downscale_delay_s": 3.0, "metrics_interval_s": 0.5, "look_back_period_s": 2.0}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _running(deployment: str, states_counted=("RUNNING",)) -> int:
    """Replicas of ``deployment`` in the given states (the autoscaler's decision shows as STARTING
    first; on a busy 2-core machine a new replica can take longer than the load lasts)."""
    from ray import serve

    app = serve.status().applications.get(APP)
    if app is None or deployment not in app.deployments:
        return 0
    states = app.deployments[deployment].replica_states
    return sum(n for state, n in states.items() if str(getattr(state, "value", state)).upper() in states_counted)


WANTED = ("STARTING", "UPDATING", "RECOVERING", "RUNNING")


@pytest.fixture(scope="module")
def base_url(ray_cluster, tmp_path_factory):
    from ray import serve

    from medray.serve.app import application_from_config

    root = tmp_path_factory.mktemp("load-models")
    ct = demo_models.untrained_model(str(root / "ct"), 2, 1, 64, ["CT-0", "CT-4"])
    skin = demo_models.untrained_model(str(root / "skin"), 2, 3, 64, list("abcdefg"))
    classifier = {"max_ongoing_requests": 16, "autoscaling_config": SCALE,
                  "ray_actor_options": {"num_cpus": 0.25, "num_gpus": 0}}
    # The production config minus the slide and mitosis endpoints (GPU actors; not load-tested here).
    config = yaml.safe_load((REPO / "serve_configs" / "production.yaml").read_text())
    for entry in config["applications"]:
        for section in ("slides", "mitosis"):
            (entry.get("args") or {}).pop(section, None)
        entry["deployments"] = [d for d in entry.get("deployments", [])
                                if d["name"] not in ("SlideHeatmaps", "MitosisDetector")]
    production = root / "production-ct-skin.yaml"
    production.write_text(yaml.safe_dump(config))
    app, _ = application_from_config(
        production,
        args_update={"ct": {"model_uri": ct, "device": "cpu", "max_batch_size": 4, "max_ongoing_requests": 16},
                     "skin": {"model_uri": skin, "device": "cpu", "max_batch_size": 4, "max_ongoing_requests": 16}},
        deployment_updates={"CTClassifier": classifier, "SkinClassifier": classifier,
                            "Ingress": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
                                        "ray_actor_options": {"num_cpus": 0.1}}})
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app, name=APP, route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def _load(url: str, path: str, payload: tuple, seconds: float) -> tuple[list[float], int]:
    """CLIENTS threads posting ``payload`` back to back for ``seconds``; (latencies, errors)."""
    import httpx

    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while time.monotonic() < stop:
                start = time.perf_counter()
                try:
                    ok = http.post(path, files={"file": payload}).status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    latencies.append(time.perf_counter() - start)
                    errors[0] += 0 if ok else 1

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 60)
    return latencies, errors[0]


@pytest.mark.parametrize("endpoint, deployment", [("ct", "CTClassifier"), ("skin", "SkinClassifier")])
def test_load_and_autoscaling(base_url, endpoint, deployment):
    rng = np.random.default_rng(0)
    if endpoint == "ct":
        payload = ("s.png", encode_image(demo_models.ct_slice_uint8(4.0, rng)[1], "png"), "image/png")
    else:
        payload = ("l.jpg", encode_image(demo_models.skin_image("nv", rng), "jpeg"), "image/jpeg")
    deadline = time.monotonic() + 60
    while _running(deployment) != 1 and time.monotonic() < deadline:  # start from one replica
        time.sleep(0.5)
    assert _running(deployment) == 1

    peak = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _running(deployment, WANTED))
            time.sleep(0.5)

    watcher = threading.Thread(target=watch)
    watcher.start()
    start = time.perf_counter()
    latencies, errors = _load(base_url, f"/{endpoint}/classify", payload, LOAD_SECONDS)
    elapsed = time.perf_counter() - start
    done.set()
    watcher.join(timeout=10)

    ms = np.array(latencies) * 1000
    print(f"\n{endpoint}: {len(ms)} requests in {elapsed:.1f}s = {len(ms) / elapsed:.1f} req/s, "
          f"p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms, errors {errors}, "
          f"peak replicas {peak[0]}")
    assert errors == 0
    assert len(ms) > CLIENTS
    assert peak[0] == 2, f"{deployment} did not scale up under {CLIENTS} concurrent clients"

    deadline = time.monotonic() + 60
    while _running(deployment, WANTED) > 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _running(deployment, WANTED) == 1, f"{deployment} did not scale back down within 60 s"

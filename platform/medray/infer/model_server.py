"""A long-lived model actor that scoring jobs share, so a job does not pay model start-up again.

A scoring job normally starts its own model actors (Ray Data's actor pool): importing the model
library, loading the weights and, on a GPU, creating the CUDA context — ~5 s on a CPU here and
~20 s on the H100 machine, longer than scoring a whole slide there. A service that scores slide
after slide (Serve's heatmap endpoint) keeps ``ModelServer`` actors instead and hands them to
``score_slides(..., model_servers=...)``, whose pipeline then forwards patch batches to them
through ``RemotePredictor`` (a thin Ray Data stage: no model, no CPU reserved).
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any


class ModelServer:
    """The model, loaded once; ``predict`` is ``Predictor.__call__`` (ids in, ids + ``prob`` out)."""

    def __init__(self, **predictor_kwargs: Any) -> None:
        from medray.infer.predictor import Predictor

        started = time.perf_counter()
        self._predictor = Predictor(**predictor_kwargs)
        self._load_seconds = time.perf_counter() - started
        self._batches = 0
        self._patches = 0

    def predict(self, batch: dict[str, Any]) -> dict[str, Any]:
        self._batches += 1
        self._patches += len(batch["image"])
        return self._predictor(batch)

    def info(self) -> dict[str, Any]:
        """Who answers (process id), the model, its load time, what it has scored so far and the
        process's allocator tuning (``medray.allocator.state``)."""
        from medray import allocator

        model = self._predictor.model
        return {"pid": os.getpid(), "model_uri": model.uri, "model_version": model.version,
                "device": str(model.device), "load_seconds": round(self._load_seconds, 3),
                "batches": self._batches, "patches": self._patches, "allocator": allocator.state()}


class RemotePredictor:
    """Ray Data stage: each batch goes to the next ``ModelServer`` (round robin) and back."""

    def __init__(self, servers: list[Any]) -> None:
        if not servers:
            raise ValueError("RemotePredictor needs at least one ModelServer handle")
        self._servers = itertools.cycle(servers)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import ray

        return ray.get(next(self._servers).predict.remote(batch))


def start_model_servers(count: int, num_cpus: float, num_gpus: float, **predictor_kwargs: Any) -> list[Any]:
    """``count`` ModelServer actors with the model loaded (raises the load error if it fails).

    The actors belong to the calling process (they end with it), one request at a time each.
    """
    import ray

    from medray.allocator import with_malloc_env

    remote = ray.remote(ModelServer).options(
        **with_malloc_env({"num_cpus": num_cpus, "num_gpus": num_gpus or None, "max_concurrency": 1}))
    servers = [remote.remote(**predictor_kwargs) for _ in range(max(1, int(count)))]
    ray.get([s.info.remote() for s in servers])  # ready, or the model's load error
    return servers

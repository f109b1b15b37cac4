"""Batched image classifier deployment (CT and skin): decode uploads, classify many at once.

The HTTP ingress sends uploads in lists (``classify_many``, one call per batch: see
``medray.serve.batch_relay``); other callers may send one at a time (``classify``). Each upload is
decoded on its own (bad files fail alone, with 400/415); decoded samples then meet in
``@serve.batch``, so one forward pass answers up to ``max_batch_size`` uploads, whichever call
brought them.

Samples join the batch queue only while the model is free. ``@serve.batch`` forms the next batch
as soon as the previous one is handed over, not when it has finished: with the forward pass off
the event loop, requests arriving during it would otherwise be cut into batches of one or two
and queue up behind it. Held back until the pass ends, they form full batches. The replica's
queue waits for nothing more (its timeout is 0): the ingress already waited
``batch_wait_timeout_s`` to gather its list, and what arrives during a pass joins the next one,
so a lone request is not made to wait twice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
from typing import Any

import numpy as np
from ray import serve

from medray.config.common import StorageOptions
from medray.serve.config import ClassifierArgs


def resolve_device(device: str) -> str:
    """``auto`` → cuda when torch sees a GPU, else cpu; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def model_card(endpoint: str, model: Any, args: ClassifierArgs) -> dict[str, Any]:
    """What ``GET /models`` shows for one endpoint."""
    return {"endpoint": endpoint, "uri": model.uri, "version": model.version, "model": model.spec.name,
            "spatial_dims": model.spec.spatial_dims, "classes": list(model.classes),
            "preprocessing": model.preprocessing.model_dump(mode="json"), "device": str(model.device),
            "max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait_timeout_s,
            "max_batches_in_flight": args.max_batches_in_flight, "max_batch_upload_bytes": args.max_batch_upload_bytes}


def result(endpoint: str, model: Any, probs: np.ndarray, kind: str, top_k: int | None) -> dict[str, Any]:
    """One classification answer: best class, all probabilities, optional top-k, model version."""
    order = np.argsort(-probs)
    body = {"endpoint": endpoint, "class": model.classes[int(order[0])],
            "probabilities": {c: float(p) for c, p in zip(model.classes, probs)},
            "model": {"uri": model.uri, "version": model.version}, "model_version": model.version,
            "input_kind": kind}
    if top_k is not None:
        body["top_k"] = [{"class": model.classes[int(i)], "probability": float(probs[i])} for i in order[:top_k]]
    return body


@serve.deployment(name="ImageClassifier", max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.5})
class ImageClassifier:
    """Loads one model bundle; ``classify`` decodes an upload and joins a dynamic batch."""

    def __init__(self, endpoint: str, args: ClassifierArgs, storage: StorageOptions | None = None,
                 mlflow_tracking_uri: str | None = None) -> None:
        from medray.models.bundle import load_model

        if mlflow_tracking_uri:
            os.environ["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri
        self.endpoint = endpoint
        self.args = args
        self.model = load_model(args.model_uri, storage, device=resolve_device(args.device))
        self._predict.set_max_batch_size(args.max_batch_size)
        self._predict.set_batch_wait_timeout_s(0.0)  # the ingress gathered the batch (see module doc)
        self.batch_sizes: list[int] = []
        self.batches_total = self.samples_total = 0  # since start (batch_sizes keeps the last 1000)
        self.calls_total = 0  # classify / classify_many calls since start (one per batch from the ingress)
        self.forward_s_total = 0.0  # seconds spent in forward passes since start
        # One thread each for forward passes and for decoding: the model always runs on the same
        # thread (one OpenMP team, one malloc arena), and decoding never waits behind a pass.
        self._forward_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="forward")
        self._decode_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="decode")
        self._model_free: asyncio.Event | None = None  # set while no forward pass runs (made on the loop)

    def _free(self) -> asyncio.Event:
        if self._model_free is None:
            self._model_free = asyncio.Event()
            self._model_free.set()
        return self._model_free

    async def classify(self, data: bytes, filename: str | None = None, content_type: str | None = None,
                       top_k: int | None = None) -> dict[str, Any]:
        """One upload → its answer; a bad upload raises its ``HttpError``."""
        outcome = (await self.classify_many([(data, filename, content_type, top_k)]))[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def classify_many(self, uploads: list[tuple[bytes, str | None, str | None, int | None]]) -> list[Any]:
        """``(data, filename, content_type, top_k)`` per upload → its answer, or the ``HttpError``
        it earned (returned, not raised: one bad file must not fail the others in its batch)."""
        from medray.serve.errors import as_http_error
        from medray.serve.uploads import decode_for_model

        self.calls_total += 1

        def decode_all() -> list[Any]:
            out: list[Any] = []
            for data, filename, content_type, _ in uploads:
                try:
                    out.append(decode_for_model(data, filename, content_type, self.model.preprocessing))
                except Exception as err:  # noqa: BLE001 - mapped per upload (unexpected ones are logged)
                    out.append(as_http_error(err))
            return out

        # Off the event loop: a batch of NIfTI volumes takes seconds to decode and resample, and the
        # loop must keep answering other calls and Serve's health checks meanwhile.
        decoded = await asyncio.get_running_loop().run_in_executor(self._decode_pool, decode_all)
        good = [i for i, item in enumerate(decoded) if not isinstance(item, Exception)]
        if good:
            await self._free().wait()  # join the next batch once the model is free (see module doc)
            probs = await asyncio.gather(*(self._predict(decoded[i][0]) for i in good))
            for i, p in zip(good, probs):
                sample_kind, top_k = decoded[i][1], uploads[i][3]
                decoded[i] = result(self.endpoint, self.model, p, sample_kind, top_k)
        return decoded

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _predict(self, samples: list[np.ndarray]) -> list[np.ndarray]:
        self.batch_sizes.append(len(samples))
        del self.batch_sizes[:-1000]
        self.batches_total += 1
        self.samples_total += len(samples)
        batch = np.stack(samples)
        free = self._free()
        free.clear()
        start = time.perf_counter()
        try:
            probs = await asyncio.get_running_loop().run_in_executor(
                self._forward_pool, lambda: self.model.predict_proba(batch, batch_size=len(samples)))
        finally:
            free.set()
            self.forward_s_total += time.perf_counter() - start
        return list(probs)

    def describe(self) -> dict[str, Any]:
        return model_card(self.endpoint, self.model, self.args)

    def batch_stats(self) -> dict[str, Any]:
        """Recent batch sizes, totals since start (batches, samples, seconds in forward passes,
        calls received) and torch's thread count: proves batching happened, and (from two readings)
        shows how much of a load run the model was busy, how long each pass took with how many
        threads, and how many uploads each call brought."""
        import torch

        sizes = self.batch_sizes
        return {"batches": len(sizes), "max": max(sizes, default=0),
                "mean": float(np.mean(sizes)) if sizes else 0.0, "batches_total": self.batches_total,
                "samples_total": self.samples_total, "forward_s_total": self.forward_s_total,
                "calls_total": self.calls_total,
                "torch_threads": torch.get_num_threads()}

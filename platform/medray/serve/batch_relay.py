"""Batching at the ingress: many HTTP requests, one call to the model replica.

A Ray Serve handle call costs about as much CPU as a small model's forward pass per image (the
actor call, Serve's request wrapper, metrics and logs on both sides), so calling the replica once
per request spends a small machine's cores on plumbing. ``BatchRelay`` queues one endpoint's
requests in the ingress and sends them on as lists: one call per batch. The replica's own
``@serve.batch`` then merges lists that arrive together (several ingress replicas).

When to send: a full batch (``max_batch_size`` items, or ``max_batch_bytes`` by ``size_of``: a
batch of large volumes is one Ray object, so it is capped) goes as soon as fewer than
``max_in_flight`` batches are out; a partial one only when none is out, after its oldest item has
waited ``wait_s``. While the model works, new requests pile up into the next, fuller batch instead
of trickling after it in ones and twos; under load, up to ``max_in_flight`` full batches are out at
once, which is what spreads them over several replicas and what Serve's autoscaler counts as the
model deployment's ongoing requests.

Pure asyncio (no Ray), so the rule is testable on its own; ``send`` is any coroutine function
taking a list of items and returning one outcome per item (an ``Exception`` outcome is raised to
that item's caller only).
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any, Awaitable, Callable

Send = Callable[[list[Any]], Awaitable[list[Any]]]


class BatchRelay:
    """Queues items on the running event loop and sends them to ``send`` in batches (see module doc)."""

    def __init__(self, send: Send, max_batch_size: int, wait_s: float, max_in_flight: int = 1,
                 size_of: Callable[[Any], int] | None = None, max_batch_bytes: int | None = None) -> None:
        if max_batch_size < 1 or max_in_flight < 1 or wait_s < 0 or (max_batch_bytes is not None and max_batch_bytes < 1):
            raise ValueError("max_batch_size, max_in_flight and max_batch_bytes must be >= 1 and wait_s >= 0")
        self.send = send
        self.size_of = size_of or (lambda item: 0)
        self.max_batch_bytes = max_batch_bytes
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.batches_sent = self.items_sent = 0
        self._pending: collections.deque[tuple[Any, asyncio.Future, float, int]] = collections.deque()
        self._pending_bytes = 0
        self._wake: asyncio.Event | None = None
        self._dispatcher: asyncio.Task | None = None
        self._sends: set[asyncio.Task] = set()

    async def submit(self, item: Any) -> Any:
        """This item's outcome, once its batch has been answered."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        size = self.size_of(item)
        self._pending.append((item, future, time.monotonic(), size))
        self._pending_bytes += size
        if self._dispatcher is None or self._dispatcher.done():
            self._wake = asyncio.Event()
            self._dispatcher = loop.create_task(self._dispatch())
        self._wake.set()
        return await future

    def stats(self) -> dict[str, Any]:
        """Batches and items sent so far, batches out now, items waiting."""
        return {"batches_sent": self.batches_sent, "items_sent": self.items_sent,
                "in_flight": self.in_flight, "pending": len(self._pending)}

    def _drop_cancelled(self) -> None:
        """Callers that went away (client disconnected) leave the queue before a batch is cut."""
        if any(entry[1].done() for entry in self._pending):
            self._pending = collections.deque(entry for entry in self._pending if not entry[1].done())
            self._pending_bytes = sum(entry[3] for entry in self._pending)

    def _full(self) -> bool:
        return len(self._pending) >= self.max_batch_size or (
            self.max_batch_bytes is not None and self._pending_bytes >= self.max_batch_bytes)

    def _cut(self) -> list[tuple[Any, asyncio.Future, float, int]]:
        """The next batch from the front of the queue: up to max_batch_size items and, past the
        first, max_batch_bytes."""
        batch, total = [], 0
        while self._pending and len(batch) < self.max_batch_size:
            size = self._pending[0][3]
            if batch and self.max_batch_bytes is not None and total + size > self.max_batch_bytes:
                break
            batch.append(self._pending.popleft())
            total += size
        self._pending_bytes -= total
        return batch

    def _due_in(self) -> float | None:
        """Seconds until a batch may go: 0 now, a wait for a partial batch, None: wait for news."""
        self._drop_cancelled()
        if not self._pending or self.in_flight >= self.max_in_flight:
            return None
        if self._full():
            return 0.0
        if self.in_flight:
            return None  # a partial batch waits for the model: it fills meanwhile
        return max(0.0, self._pending[0][2] + self.wait_s - time.monotonic())

    async def _dispatch(self) -> None:
        while True:
            due = self._due_in()
            if due == 0.0:
                batch = self._cut()
                self.in_flight += 1
                task = asyncio.get_running_loop().create_task(self._send(batch))
                self._sends.add(task)
                task.add_done_callback(self._sends.discard)
                continue
            if due is None and not self._pending and not self.in_flight:
                return  # idle: the next submit starts a new dispatcher
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), due)
            except asyncio.TimeoutError:
                pass

    async def _send(self, batch: list[tuple[Any, asyncio.Future, float, int]]) -> None:
        try:
            outcomes = await self.send([entry[0] for entry in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} items got {len(outcomes)} outcomes")
        except Exception as err:  # noqa: BLE001 - the whole call failed: every caller hears why
            outcomes = [err] * len(batch)
        finally:
            self.in_flight -= 1
            self.batches_sent += 1
            self.items_sent += len(batch)
            self._wake.set()
        for (_, future, _, _), outcome in zip(batch, outcomes):
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

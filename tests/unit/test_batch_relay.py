"""BatchRelay's sending rule, without Ray: full batches go at once (up to max_in_flight), partial
ones only when nothing is out, callers get their own outcome, failures reach only their batch."""

from __future__ import annotations

import asyncio

import pytest

from medray.serve.batch_relay import BatchRelay


class Model:
    """A stand-in replica: records each call's items, answers after ``gate`` opens."""

    def __init__(self, auto: bool = True) -> None:
        self.calls: list[list] = []
        self.gate = asyncio.Event()
        if auto:
            self.gate.set()

    async def send(self, items: list) -> list:
        self.calls.append(list(items))
        await self.gate.wait()
        return [ValueError(f"bad {x}") if isinstance(x, str) else x * 10 for x in items]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_a_lone_item_waits_wait_s_then_goes_alone():
    async def main():
        model = Model()
        relay = BatchRelay(model.send, max_batch_size=8, wait_s=0.05)
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await relay.submit(3) == 30
        return loop.time() - start, model.calls

    took, calls = run(main())
    assert calls == [[3]] and 0.04 <= took < 1.0


def test_items_arriving_while_a_batch_is_out_form_one_fuller_batch():
    async def main():
        model = Model(auto=False)
        relay = BatchRelay(model.send, max_batch_size=8, wait_s=0.0, max_in_flight=4)
        first = asyncio.ensure_future(relay.submit(1))
        await asyncio.sleep(0.02)
        assert model.calls == [[1]]
        rest = [asyncio.ensure_future(relay.submit(i)) for i in range(2, 7)]
        await asyncio.sleep(0.05)
        assert model.calls == [[1]], "a partial batch went while another was out"
        assert relay.stats()["pending"] == 5
        model.gate.set()
        return await first, await asyncio.gather(*rest), model.calls, relay.stats()

    first, rest, calls, stats = run(main())
    assert first == 10 and rest == [20, 30, 40, 50, 60]
    assert calls == [[1], [2, 3, 4, 5, 6]]
    assert stats == {"batches_sent": 2, "items_sent": 6, "in_flight": 0, "pending": 0}


def test_full_batches_go_at_once_up_to_max_in_flight():
    async def main():
        model = Model(auto=False)
        relay = BatchRelay(model.send, max_batch_size=3, wait_s=0.3, max_in_flight=2)
        futures = [asyncio.ensure_future(relay.submit(i)) for i in range(10)]
        await asyncio.sleep(0.05)
        out_early = [list(c) for c in model.calls]
        assert relay.stats()["in_flight"] == 2
        model.gate.set()
        results = await asyncio.gather(*futures)
        return out_early, model.calls, results

    out_early, calls, results = run(main())
    assert out_early == [[0, 1, 2], [3, 4, 5]]  # two full batches without waiting wait_s; the third waits
    assert results == [i * 10 for i in range(10)]
    assert sorted(x for c in calls for x in c) == list(range(10)) and max(map(len, calls)) == 3


def test_one_bad_item_fails_alone_and_a_failed_call_fails_its_batch():
    async def main():
        model = Model()
        relay = BatchRelay(model.send, max_batch_size=4, wait_s=0.01)
        outcomes = await asyncio.gather(relay.submit(1), relay.submit("x"), relay.submit(2),
                                        return_exceptions=True)

        async def broken(items):
            raise ConnectionError("replica died")

        relay.send = broken
        failed = await asyncio.gather(relay.submit(1), relay.submit(2), return_exceptions=True)
        relay.send = model.send
        after = await relay.submit(4)  # the relay still works after a failed call
        return outcomes, failed, after

    outcomes, failed, after = run(main())
    assert outcomes[0] == 10 and outcomes[2] == 20
    assert isinstance(outcomes[1], ValueError) and str(outcomes[1]) == "bad x"
    assert all(isinstance(f, ConnectionError) for f in failed) and after == 40


def test_a_caller_that_goes_away_is_not_sent():
    async def main():
        model = Model(auto=False)
        relay = BatchRelay(model.send, max_batch_size=8, wait_s=0.0)
        busy = asyncio.ensure_future(relay.submit(1))
        await asyncio.sleep(0.02)
        gone = asyncio.ensure_future(relay.submit(2))
        kept = asyncio.ensure_future(relay.submit(3))
        await asyncio.sleep(0.02)
        gone.cancel()
        model.gate.set()
        return await busy, await kept, model.calls

    busy, kept, calls = run(main())
    assert (busy, kept) == (10, 30) and calls == [[1], [3]]


def test_wrong_outcome_count_is_an_error_for_each_caller():
    async def short(items):
        return items[:-1]

    async def main():
        relay = BatchRelay(short, max_batch_size=2, wait_s=0.0)
        return await asyncio.gather(relay.submit(1), relay.submit(2), return_exceptions=True)

    outcomes = run(main())
    assert all(isinstance(o, RuntimeError) and "got 1 outcomes" in str(o) for o in outcomes)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        BatchRelay(Model().send, max_batch_size=0, wait_s=0.0)
    with pytest.raises(ValueError):
        BatchRelay(Model().send, max_batch_size=4, wait_s=-1.0)


def test_batches_are_capped_by_bytes_and_a_big_item_goes_alone():
    async def main():
        model = Model(auto=False)
        relay = BatchRelay(model.send, max_batch_size=8, wait_s=0.3, max_in_flight=8,
                           size_of=lambda x: x, max_batch_bytes=10)
        futures = [asyncio.ensure_future(relay.submit(x)) for x in (4, 4, 4, 30, 1)]
        await asyncio.sleep(0.1)
        early = [list(c) for c in model.calls]  # sent by size, without waiting wait_s
        model.gate.set()
        return early, await asyncio.gather(*futures), model.calls

    early, results, calls = run(main())
    assert early == [[4, 4], [4], [30]]
    assert results == [40, 40, 40, 300, 10] and calls[-1] == [1]

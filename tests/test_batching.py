"""Dynamic batching: the queue's policy over arbitrary arrival patterns (hypothesis), and the batcher on a loop."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuflex import errors
from gpuflex.runtime._batch import Batcher, BatchQueue

# an arrival pattern: gaps between arrivals (seconds), and how long each started batch runs
gaps = st.lists(st.floats(min_value=0, max_value=0.05, allow_nan=False), min_size=1, max_size=60)
durations = st.lists(st.floats(min_value=0, max_value=0.05, allow_nan=False), min_size=1, max_size=10)


def simulate(max_size: int, wait_s: float, slots: int, arrival_gaps: list[float], run_times: list[float]):
    """Drive a BatchQueue through discrete events (arrivals, deadlines, batch ends) and record every decision."""
    queue: BatchQueue[int] = BatchQueue(max_size, wait_s, slots)
    arrivals, t = [], 0.0
    for gap in arrival_gaps:
        t += gap
        arrivals.append(t)
    started: list[tuple[float, list[int]]] = []
    running: list[float] = []  # end times of running batches
    arrived: dict[int, float] = {}
    next_item, now = 0, 0.0
    while next_item < len(arrivals) or len(queue) or running:
        candidates = [arrivals[next_item]] if next_item < len(arrivals) else []
        candidates += running
        deadline = queue.deadline()
        if deadline is not None and queue.running < slots:
            candidates.append(deadline)
        now = max(now, min(candidates))
        for end in [e for e in running if e <= now]:
            running.remove(end)
            queue.finished()
        while next_item < len(arrivals) and arrivals[next_item] <= now:
            queue.arrive(next_item, now)
            arrived[next_item] = now
            next_item += 1
        for batch in queue.take(now):
            started.append((now, batch))
            running.append(now + run_times[len(started) % len(run_times)])
            assert len(running) <= slots, "never more batches at once than slots"
        # the wait bound: with a slot free, nothing waits past its deadline
        if queue.running < slots and (deadline := queue.deadline()) is not None:
            assert deadline > now
    return started, arrived


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 8), st.floats(0, 0.03), st.integers(1, 3), gaps, durations)
def test_every_item_runs_once_in_order_in_bounded_batches(max_size, wait_s, slots, arrival_gaps, run_times):
    started, arrived = simulate(max_size, wait_s, slots, arrival_gaps, run_times)
    items = [item for _, batch in started for item in batch]
    assert items == sorted(arrived), "every item runs exactly once, in arrival order"
    for at, batch in started:
        assert 1 <= len(batch) <= max_size
        oldest = arrived[batch[0]]
        # a batch starts only when it is full or its oldest item has waited wait_s
        assert len(batch) == max_size or at >= oldest + wait_s - 1e-12


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 8), st.integers(1, 3))
def test_a_burst_fills_whole_batches(max_size, slots):
    started, _ = simulate(max_size, 10.0, slots, [0.0] * (max_size * 3), [0.01])
    assert [len(batch) for _, batch in started] == [max_size] * 3


def test_a_removed_item_never_runs_and_bad_settings_are_refused():
    queue: BatchQueue[str] = BatchQueue(4, 1.0)
    queue.arrive("a", 0.0)
    queue.arrive("b", 0.0)
    assert queue.remove("a") and not queue.remove("a")
    assert queue.take(1.0) == [["b"]]
    with pytest.raises(RuntimeError):
        BatchQueue(1, 0).finished()
    with pytest.raises(ValueError):
        BatchQueue(0, 0.1)


def run(coro):
    return asyncio.run(coro)


def test_batcher_groups_calls_and_routes_each_result():
    async def main():
        seen = []

        async def double(items):
            seen.append(list(items))
            return [2 * x for x in items]

        batcher = Batcher(BatchQueue(4, 0.05), double)
        results = await asyncio.gather(*(batcher.add(i) for i in range(10)))
        return results, seen, batcher.sizes

    results, seen, sizes = run(main())
    assert results == [2 * i for i in range(10)]
    assert sizes == [4, 4, 2] and seen[0] == [0, 1, 2, 3]


def test_batcher_fails_every_call_of_a_batch_with_its_exception_and_checks_lengths():
    async def main():
        async def boom(items):
            raise KeyError("batch")

        async def short(items):
            return items[:-1]

        out = []
        for fn in (boom, short):
            batcher = Batcher(BatchQueue(3, 0.01), fn)
            out.append(await asyncio.gather(*(batcher.add(i) for i in range(3)), return_exceptions=True))
        return out

    raised, wrong_length = run(main())
    assert all(isinstance(e, KeyError) for e in raised)
    assert all(isinstance(e, errors.BatchError) and "3 items and returned 2 results" in str(e) for e in wrong_length)


def test_batcher_cancels_a_waiting_call_without_running_it():
    async def main():
        ran = []

        async def record(items):
            ran.extend(items)
            return items

        batcher = Batcher(BatchQueue(8, 0.05), record)
        kept = batcher.add("kept", key="k")
        dropped = batcher.add("dropped", key="d")
        assert batcher.cancel("d") and not batcher.cancel("d")
        assert await kept == "kept"
        assert dropped.cancelled()
        return ran

    assert run(main()) == ["kept"]


# -- through the local backend, the dev server's schema, and the decorator's checks ----------------------------

def _app():
    from pathlib import Path

    from gpuflex.testing import load_module

    return load_module(Path(__file__).parent / "apps" / "batched_app.py")


def test_batched_calls_on_the_local_backend_and_their_http_schema():
    import gpuflex
    from gpuflex.server._schema import routes_for

    app = _app()
    try:
        with gpuflex.use("local"):
            assert sorted(app.shout.map(["a", "b", "c"]))[0].startswith("A/")
            assert app.shout.local("x") == "X/1"
            assert asyncio.run(app.lengths.aio("four")) == 4
            [route] = routes_for(app.shout)
            body = route.model.model_validate({"texts": "one text"})  # one item, not a list
            assert route.arguments(body) == (("one text",), {})
            assert route.result_type is str
            assert route.spawn(body).result(timeout=60).startswith("ONE TEXT/")
    finally:
        gpuflex.shutdown()


def test_batching_options_are_checked_where_they_are_written():
    import gpuflex

    with pytest.raises(errors.ConfigError, match="generators cannot be batched"):
        @gpuflex.endpoint(max_batch_size=4)
        def gen(items: list[int]):
            yield items
    with pytest.raises(errors.ConfigError, match="max_batch_size"):
        gpuflex.endpoint(name="zero", max_batch_size=0)(lambda items: items)
    with pytest.raises(errors.ConfigError, match="batch_wait_ms"):
        gpuflex.endpoint(name="neg", max_batch_size=2, batch_wait_ms=-1)(lambda items: items)
    app = _app()
    with pytest.raises(errors.BatchError, match="exactly one item"):
        app.shout.spawn("a", "b")

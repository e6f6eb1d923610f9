"""An open-loop load generator: requests arrive at a fixed offered rate (Poisson arrivals, seeded) for a fixed
time, whatever the server answers, and each latency runs from the request's *scheduled* arrival, so a generator
that falls behind, or a server that backs up, shows in the latency instead of lowering the load (no coordinated
omission). Used by ``_batch_bench.py`` for gpuflex and by ``_batch_serve.py`` for Ray Serve alike.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import statistics
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence


def arrivals(rate: float, duration: float, seed: int) -> list[float]:
    """Poisson arrival times (seconds from the start) at ``rate`` requests/s over ``duration`` seconds."""
    rng = random.Random(seed)
    times, t = [], rng.expovariate(rate)
    while t < duration:
        times.append(t)
        t += rng.expovariate(rate)
    return times


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of sorted values, nearest rank; ``inf`` counts as a value (a request that never
    finished)."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[rank]


async def open_loop(call: Callable[[Any], Awaitable[Any]], items: Sequence[Any], rate: float, duration: float,
                    seed: int = 0, drain_s: float | None = None) -> dict[str, Any]:
    """Offer ``rate`` requests/s to ``call`` for ``duration`` s, then wait up to ``drain_s`` (default: as long
    again, at least 5 s) for the requests still running; cancel the rest and count them as unfinished.

    ``call(item)`` returns ``(output, batch_size)``. Returns the counts, completed/s (completions over the time from
    the first arrival to the last completion), latency percentiles over *every* request sent (an unfinished one
    counts as infinitely slow), the mean batch size and how late the generator itself launched requests."""
    loop = asyncio.get_running_loop()
    schedule = arrivals(rate, duration, seed)
    latencies: list[float] = []
    batch_sizes: list[int] = []
    errors: list[str] = []
    last_done = 0.0
    start = loop.time() + 0.02

    async def one(at: float, item: Any) -> None:
        nonlocal last_done
        try:
            _, size = await call(item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
            return
        now = loop.time()
        latencies.append(now - (start + at))
        batch_sizes.append(size)
        last_done = max(last_done, now)

    load_before = os.getloadavg()[0]
    tasks: list[asyncio.Task[None]] = []
    lags: list[float] = []
    for i, at in enumerate(schedule):
        delay = start + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append(loop.time() - (start + at))
        tasks.append(loop.create_task(one(at, items[i % len(items)])))
    wait = drain_s if drain_s is not None else max(5.0, duration)
    _, pending = await asyncio.wait(tasks, timeout=wait) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=30)
    ordered = sorted(latencies) + [float("inf")] * len(pending)
    span = last_done - (start + schedule[0]) if latencies else float("nan")
    return {
        "rate": rate, "duration": duration, "sent": len(schedule), "completed": len(latencies),
        "errors": len(errors), "error_sample": errors[:3], "unfinished": len(pending),
        "completed_per_s": len(latencies) / span if latencies and span > 0 else 0.0,
        "p50_ms": 1e3 * percentile(ordered, 0.50), "p99_ms": 1e3 * percentile(ordered, 0.99),
        "mean_batch": statistics.fmean(batch_sizes) if batch_sizes else float("nan"),
        "max_batch": max(batch_sizes, default=0),
        "generator_lag_ms_p99": 1e3 * percentile(sorted(lags), 0.99),
        "drain_s": wait, "load1": (load_before + os.getloadavg()[0]) / 2,
    }


async def closed_loop_rate(call: Callable[[Any], Awaitable[Any]], items: Sequence[Any], seconds: float,
                           callers: int = 8) -> float:
    """``callers`` callers, each calling again as soon as its answer came, for ``seconds``: the calls/s a server
    sustains when it always has work (its capacity)."""
    loop = asyncio.get_running_loop()
    done = 0
    started = loop.time()

    async def caller(k: int) -> None:
        nonlocal done
        while loop.time() - started < seconds:
            await call(items[(done + k) % len(items)])
            done += 1

    await asyncio.gather(*(caller(k) for k in range(callers)))
    return done / (loop.time() - started)

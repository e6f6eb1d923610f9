"""Endpoints for the serverless backend's own tests. Module-level, so workers import them from the bundle."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import gpuflex


@gpuflex.endpoint(name="rp_nap", max_workers=1)
def nap(seconds: float, started: str | None = None) -> float:
    if started:
        Path(started).touch()
    time.sleep(seconds)
    return seconds


@gpuflex.endpoint(name="rp_cold", max_workers=1)
def cold() -> int:
    return os.getpid()


@gpuflex.endpoint(name="rp_gpu", gpu="H100", min_workers=0, max_workers=3, idle_timeout=30, timeout=120,
                  env={"MODE": "test"})
def on_h100(value: int) -> int:
    return value * 2


#: this endpoint's workers keep bundles here (not in the session's shared cache), so a test can empty it
PRIVATE_CACHE = os.environ.setdefault("GPUFLEX_TEST_PRIVATE_CACHE", tempfile.mkdtemp(prefix="gpuflex-rp-cache-"))


@gpuflex.endpoint(name="rp_private_cache", max_workers=1, env={"GPUFLEX_RUNPOD_CACHE": PRIVATE_CACHE})
def private_pid() -> int:
    return os.getpid()


@gpuflex.endpoint(name="rp_blob", max_workers=1, timeout=60)
def blob(size: int) -> bytes:
    return b"x" * size


@gpuflex.endpoint(name="rp_chunks", max_workers=1, timeout=60)
def chunks(sizes: list[int]):
    for size in sizes:
        yield bytes([size % 251]) * size


#: a local package whose build sleeps: installing it takes longer than the endpoint's timeout
SLOW_PACKAGE = os.environ.setdefault("GPUFLEX_TEST_SLOW_PACKAGE", tempfile.mkdtemp(prefix="gpuflex-slowdep-"))


@gpuflex.endpoint(name="rp_with_deps", max_workers=1, timeout=4,
                  dependencies=[f"gpuflex-slowdep @ file://{SLOW_PACKAGE}"])
def uses_slow_dependency() -> str:
    import gpuflex_slowdep

    return str(gpuflex_slowdep.VALUE)


@gpuflex.endpoint(name="rp_talk", max_workers=1)
async def talk(lines: list[str]) -> int:
    """Hands lines to the worker's output channel as the core's output capture does (``("output", stream, text)``
    through the runtime's send), so the transport is tested on its own."""
    import asyncio

    from gpuflex_runpod import worker

    for text in lines:
        worker._state.send(("output", "stdout", text))
        await asyncio.sleep(0.05)
    return len(lines)


@gpuflex.endpoint(name="rp_packed", max_workers=1, timeout=60)
def packed(index: int, marks: str) -> int:
    """Marks each run (``ran-<index>-<n>``); fails for 13; waits while the file ``<marks>/hold`` exists."""
    Path(marks, f"ran-{index}-{time.monotonic_ns()}").touch()
    while Path(marks, "hold").exists():
        time.sleep(0.02)
    if index == 13:
        raise ValueError("thirteen")
    return index * 2


@gpuflex.endpoint(name="rp_packed_batch", max_workers=1, max_batch_size=8, batch_wait_ms=50)
def batch_sizes(items: list[int]) -> list[int]:
    return [len(items)] * len(items)

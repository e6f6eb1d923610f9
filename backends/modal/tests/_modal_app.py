"""Endpoints the Modal backend's tests translate (and run in process through the container-side runner)."""

from __future__ import annotations

import asyncio

import gpuflex


@gpuflex.endpoint(name="modal_big", gpu=gpuflex.GPU("H100", 2), cpu=4, memory=16384, min_workers=1, max_workers=5,
                  idle_timeout=90, timeout=120, retries=2, concurrency=4, dependencies=("numpy==2.0.0",),
                  system_dependencies=("ffmpeg",), env={"MODE": "fast"}, secrets=("HF_TOKEN",))
def big(x: int) -> int:
    return x * 2


@gpuflex.endpoint(name="modal_small", gpu="L4")
def small(text: str) -> str:
    return text.upper()


@gpuflex.endpoint(name="modal_cpu")
async def cpu_echo(value):
    await asyncio.sleep(0)
    return value


@gpuflex.endpoint(name="modal_gen")
def countdown(n: int):
    yield from range(n, 0, -1)


@gpuflex.endpoint(name="modal_fails")
def fails(message: str) -> None:
    raise KeyError(message)


@gpuflex.endpoint(name="modal_counter", gpu="any")
class Counter:
    def setup(self) -> None:
        self.count = 100

    def __call__(self, step: int = 1) -> int:
        self.count += step
        return self.count

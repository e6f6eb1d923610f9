"""Endpoints that tests/test_server.py serves with ``gpuflex serve`` (module level, so workers import this file
from the bundle). Only the standard library and gpuflex are imported, to keep worker start-up fast."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import gpuflex

if TYPE_CHECKING:
    from collections.abc import Iterator


@gpuflex.endpoint
def greet(name: str, times: int = 1) -> str:
    """Say hello, ``times`` times."""
    return " ".join([f"hello {name}"] * times)


@gpuflex.endpoint
def reverse_bytes(data: bytes) -> bytes:
    return data[::-1]


@gpuflex.endpoint
async def add(a: float, b: float = 0.0) -> dict[str, float]:
    return {"sum": a + b}


@gpuflex.endpoint
def count(n: int, delay: float = 0.0) -> Iterator[int]:
    for i in range(n):
        time.sleep(delay)
        yield i


@gpuflex.endpoint
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@gpuflex.endpoint
def fail(message: str) -> None:
    raise ValueError(message)


@gpuflex.endpoint
class Counter:
    def setup(self) -> None:
        self.base = 100

    def __call__(self, x: int) -> int:
        return self.base + x

    def scaled(self, x: int, factor: int = 2) -> int:
        return x * factor


@gpuflex.endpoint
def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


@gpuflex.endpoint
def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")  # NaN has no JSON form


@gpuflex.endpoint
def make_lock() -> object:
    return threading.Lock()  # cannot be pickled to come back


@gpuflex.endpoint
class Broken:
    def setup(self) -> None:
        self.scale = 1 / 0

    def __call__(self, x: int) -> int:
        return x * self.scale

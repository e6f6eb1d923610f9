"""Every kind of endpoint the dev server serves, for the schemathesis run in tests/test_server.py: sync and async
functions, a generator and an async generator, a batched function, a class with sync, async and generator methods,
bytes in and out, optional arguments, constrained values, a dataclass, a literal. Each one answers any input its
schema allows (sizes are bounded where the work would grow with them), so the fuzzer may expect a 2xx for every
valid body. Only the standard library and gpuflex are imported, to keep worker start-up fast."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

import gpuflex

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

Small = Annotated[int, Field(ge=0, le=5)]
Finite = Annotated[float, Field(ge=-1e6, le=1e6)]


@dataclasses.dataclass
class Box:
    width: Annotated[int, Field(ge=0, le=1000)]
    height: Annotated[int, Field(ge=0, le=1000)]


@gpuflex.endpoint
def echo(text: str, times: int = 1, ratio: float = 1.0, loud: bool = False, tags: list[str] | None = None
         ) -> dict[str, Any]:
    """Every argument back, as it arrived."""
    return {"text": text.upper() if loud else text, "times": times, "ratio": ratio, "tags": tags or []}


@gpuflex.endpoint
async def add(a: int, b: int = 0) -> int:
    await asyncio.sleep(0)
    return a + b


@gpuflex.endpoint
def mean(values: list[Finite]) -> float | None:
    return sum(values) / len(values) if values else None


@gpuflex.endpoint
def reverse(data: bytes) -> bytes:
    return data[::-1]


@gpuflex.endpoint
def maybe_bytes(data: bytes | None = None, repeat: Small = 1) -> bytes | None:
    return None if data is None else data * repeat


@gpuflex.endpoint
def area(box: Box, unit: Literal["px", "cm"] = "px") -> str:
    return f"{box.width * box.height} {unit}"


@gpuflex.endpoint
def count(n: Small) -> Iterator[int]:
    yield from range(n)


@gpuflex.endpoint
async def letters(word: Annotated[str, Field(max_length=16)]) -> AsyncIterator[str]:
    for letter in word:
        await asyncio.sleep(0)
        yield letter


@gpuflex.endpoint(max_batch_size=4, batch_wait_ms=5)
def double(values: list[int]) -> list[int]:
    """Batched: HTTP callers send one item and get one back."""
    return [2 * v for v in values]


@gpuflex.endpoint
def nothing() -> None:
    return None


@gpuflex.endpoint
class Store:
    def setup(self) -> None:
        self.items: dict[str, bytes] = {}

    def __call__(self, key: str) -> bytes | None:
        return self.items.get(key)

    def put(self, key: str, value: bytes) -> int:
        self.items[key] = value
        return len(self.items)

    async def size(self) -> int:
        return len(self.items)

    def keys(self, prefix: str = "") -> Iterator[str]:
        yield from sorted(k for k in self.items if k.startswith(prefix))

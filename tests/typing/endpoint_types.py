"""What a type checker sees of ``@gpuflex.endpoint``: checked by ``mypy --strict`` in ``nox -s tests`` (never run).

``assert_type`` fails the check when an endpoint's type drifts; a ``# type: ignore[...]`` that stops being needed
fails it too (``warn_unused_ignores`` is on under ``--strict``), so the refused calls below stay refused.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, assert_type

import gpuflex


@gpuflex.endpoint(max_batch_size=8, batch_wait_ms=5)
def embed(texts: list[str]) -> list[list[float]]:
    return [[float(len(t))] for t in texts]


@gpuflex.endpoint(max_batch_size=8)
async def score(texts: list[str]) -> list[float]:
    return [1.0 for _ in texts]


@gpuflex.endpoint(max_workers=2)
def plain(x: int, scale: float = 1.0) -> str:
    return str(x * scale)


@gpuflex.endpoint
def bare(x: int) -> int:
    return x


@gpuflex.endpoint(gpu="any")
class Model:
    def predict(self, x: int) -> int:
        return x


def check() -> None:
    # a batched endpoint: one item in, one result out
    assert_type(embed("one text"), list[float])
    pending = score("one text")
    _ = assert_type(pending, Coroutine[Any, Any, float])
    pending.close()
    embed(["a list"])  # type: ignore[arg-type]
    # unbatched: the function's own signature
    assert_type(plain(1, scale=2.0), str)
    assert_type(bare(3), int)
    plain("1")  # type: ignore[arg-type]
    assert_type(Model(), Model)

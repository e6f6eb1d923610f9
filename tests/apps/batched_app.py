"""A batched endpoint, for tests/test_batching.py (imported by reference on the workers)."""

from __future__ import annotations

import gpuflex


@gpuflex.endpoint(max_batch_size=8, batch_wait_ms=50)
def shout(texts: list[str]) -> list[str]:
    return [text.upper() + f"/{len(texts)}" for text in texts]


@gpuflex.endpoint(max_batch_size=4)
async def lengths(texts: list[str]) -> list[int]:
    return [len(text) for text in texts]

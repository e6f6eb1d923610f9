"""The functions every benchmark runs, at module level so workers (gpuflex's and the baselines') import them by
reference. Each gpuflex endpoint wraps the very function the baselines call, so both run the same code."""

from __future__ import annotations

import time
from typing import Any

import gpuflex


def noop(x: Any = None) -> Any:
    """The no-op call: returns its argument."""
    return x


def identity(value: Any) -> Any:
    """Sends its input straight back (the transport benchmark)."""
    return value


def matmul(n: int = 4096, reps: int = 20, device: str = "cuda") -> dict[str, Any]:
    """``reps`` n x n fp16 matmuls on ``device``; returns the seconds they took inside the call."""
    import torch

    dtype = torch.float16 if device == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(reps):
        c = a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"device": device, "seconds": seconds, "checksum": float(c[0, 0])}


noop_ep = gpuflex.endpoint(name="bench_noop", max_workers=2, idle_timeout=120)(noop)
identity_ep = gpuflex.endpoint(name="bench_identity", max_workers=1, idle_timeout=120)(identity)
cold_noop_ep = gpuflex.endpoint(name="bench_cold_noop", min_workers=0, max_workers=1)(noop)
matmul_ep = gpuflex.endpoint(name="bench_matmul", gpu="any", max_workers=1, idle_timeout=120)(matmul)

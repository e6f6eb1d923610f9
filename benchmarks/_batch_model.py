"""The batching benchmark's model, and the two gpuflex endpoints that serve it (imported by reference on gpuflex's
workers and by the Ray Serve replica, so every server runs this very code).

A two-layer MLP, ``D_IN -> D_HIDDEN -> D_IN`` with GELU, random weights (``torch.manual_seed(0)``), in eval mode
under ``torch.inference_mode``; built once per process on first use, with ``torch.set_num_threads(THREADS)``. One
request is one float32 vector of ``D_IN``; its answer is the output vector and the size of the batch it rode in.

The device comes from ``GPUFLEX_BATCH_BENCH_DEVICE`` (``cpu`` or ``cuda``), set by ``_batch_bench.py`` before this
module is imported and passed on to the workers with the endpoints' ``env=``.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

import gpuflex

D_IN, D_HIDDEN = 1024, 4096
MAX_BATCH_SIZE, BATCH_WAIT_MS = 32, 10
DEVICE = os.environ.get("GPUFLEX_BATCH_BENCH_DEVICE", "cpu")
THREADS = int(os.environ.get("GPUFLEX_BATCH_BENCH_THREADS", "1"))
ENV = {"GPUFLEX_BATCH_BENCH_DEVICE": DEVICE, "GPUFLEX_BATCH_BENCH_THREADS": str(THREADS)}


@functools.cache
def model() -> Any:
    """The MLP, built once per process (the first call, or a warm-up, pays for it)."""
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(D_IN, D_HIDDEN), torch.nn.GELU(), torch.nn.Linear(D_HIDDEN, D_IN))
    return mlp.eval().to(DEVICE)


def infer(items: list[np.ndarray]) -> list[tuple[np.ndarray, int]]:
    """One forward pass over a batch: each item's output vector, and the batch's size."""
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(np.stack(items)).to(DEVICE)
        y = model()(x).cpu().numpy()  # .cpu() waits for a CUDA device to finish
    return [(row.copy(), len(items)) for row in y]


def infer_one(item: np.ndarray) -> tuple[np.ndarray, int]:
    """The unbatched server's function: one item, one forward pass."""
    return infer([item])[0]


def make_items(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(D_IN, dtype=np.float32) for _ in range(n)]


_GPU = "any" if DEVICE == "cuda" else None
unbatched_ep = gpuflex.endpoint(name="bench_mlp", gpu=_GPU, max_workers=1, idle_timeout=300, env=ENV)(infer_one)
batched_ep = gpuflex.endpoint(name="bench_mlp_batched", gpu=_GPU, max_workers=1, idle_timeout=300, env=ENV,
                              max_batch_size=MAX_BATCH_SIZE, batch_wait_ms=BATCH_WAIT_MS)(infer)

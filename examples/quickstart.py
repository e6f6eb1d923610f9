"""gpuflex quick start: four kinds of endpoint, called like ordinary Python, on the local backend.

    python examples/quickstart.py                      # local backend (CUDA if present, else CPU)
    GPUFLEX_BACKEND=<name> python examples/quickstart.py   # the same file on another backend

Needs torch (``pip install torch``); the README's demo command installs it.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from typing import TYPE_CHECKING

import gpuflex

if TYPE_CHECKING:
    from collections.abc import Iterator


@gpuflex.endpoint(gpu="any", max_workers=2, idle_timeout=30)
def matmul(n: int) -> dict[str, object]:
    """A GPU function: multiplies two n x n matrices on the worker's device."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    started = time.perf_counter()
    c = a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return {"device": device, "checksum": float(c.sum()), "ms": 1000 * (time.perf_counter() - started)}


@gpuflex.endpoint
async def shout(text: str) -> str:
    """An async function: the call returns an awaitable."""
    await asyncio.sleep(0)
    return text.upper() + "!"


@gpuflex.endpoint
def count_up(limit: int) -> Iterator[int]:
    """A generator: chunks are streamed to the caller as they are produced."""
    for i in range(limit):
        time.sleep(0.05)
        yield i


@gpuflex.endpoint(gpu="L4", min_workers=0, max_workers=1)
class TinyClassifier:
    """A class: setup() runs once per worker, so the model is built (or loaded) once."""

    def setup(self) -> None:
        import torch

        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))

    def __call__(self, features: list[float]) -> int:
        import torch

        with torch.no_grad():
            return int(self.model(torch.tensor(features)).argmax())


def main() -> None:
    warnings.simplefilter("default", gpuflex.errors.GpuflexWarning)  # show the CPU-fallback note once
    print(f"backends installed: {gpuflex.list_backends()}")

    result = matmul(256)
    print(f"matmul(256) on {result['device']}: checksum {result['checksum']:.2f} in {result['ms']:.2f} ms")

    print("async:", asyncio.run(shout("hello from a worker")))

    print("streamed:", end=" ", flush=True)
    for chunk in count_up(5):
        print(chunk, end=" ", flush=True)
    print()

    classifier = TinyClassifier()
    print("classes:", [classifier([float(i + j) for j in range(8)]) for i in range(3)])

    job = matmul.spawn(128)
    job.result()
    print(f"job {job.id}: {job.status.value}, queued {job.queue_time:.3f} s, ran {job.run_time:.3f} s, "
          f"worker {job.worker}, cost ${job.cost.usd:.6f}")

    squares = list(matmul.map([32, 64, 96]))
    print("map:", [round(r["checksum"], 1) for r in squares])

    for name, entry in gpuflex.costs().items():
        print(f"  {name:16} {entry.calls} calls  ${entry.cost.usd:.6f}")
    gpuflex.shutdown()


if __name__ == "__main__":
    main()

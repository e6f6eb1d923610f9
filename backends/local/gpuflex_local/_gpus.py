"""Which CUDA devices this machine has, and which worker holds which."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

import attrs

__all__ = ["GpuAllocator", "LocalGpu", "detect_gpus"]


@attrs.frozen
class LocalGpu:
    index: str  # as CUDA_VISIBLE_DEVICES spells it
    name: str
    memory_mib: int


@functools.lru_cache(maxsize=1)
def detect_gpus() -> tuple[LocalGpu, ...]:
    """Ask nvidia-smi (no torch import, no CUDA context); honour an existing CUDA_VISIBLE_DEVICES."""
    if os.environ.get("GPUFLEX_LOCAL_NO_GPU"):
        return ()
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    gpus = []
    for line in out.strip().splitlines():
        index, name, memory = (part.strip() for part in line.split(",", 2))
        gpus.append(LocalGpu(index, name, int(float(memory))))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        wanted = [v.strip() for v in visible.split(",") if v.strip()]
        gpus = [g for g in gpus if g.index in wanted]
    return tuple(gpus)


class GpuAllocator:
    """Hands whole devices to workers; a worker holds its devices until it stops."""

    def __init__(self, gpus: tuple[LocalGpu, ...]) -> None:
        self.gpus = gpus
        self._holder: dict[str, str | None] = {g.index: None for g in gpus}

    def free_count(self) -> int:
        return sum(1 for holder in self._holder.values() if holder is None)

    def take(self, worker_id: str, count: int) -> tuple[str, ...] | None:
        free = [index for index, holder in self._holder.items() if holder is None]
        if len(free) < count:
            return None
        chosen = tuple(free[:count])
        for index in chosen:
            self._holder[index] = worker_id
        return chosen

    def release(self, worker_id: str) -> None:
        for index, holder in self._holder.items():
            if holder == worker_id:
                self._holder[index] = None

"""Default hourly prices per GPU, for the uptime of an actor that holds GPUs.

A Ray cluster runs on machines you pay for by the hour, used or not; gpuflex charges each call its running time at
the rate of the GPUs its actor holds, and :meth:`RayBackend.usage` adds up each actor's whole uptime. Only models
with a listed on-demand price are here; any other GPU is priced ``unknown`` (nothing counted, never shown as free)
until you set ``gpu_hourly_rates``. A price per GPU is the instance's price over its GPUs, so it includes the
instance's CPUs and memory.
"""

from __future__ import annotations

__all__ = ["KNOWN_GPU_HOURLY_USD", "gpu_rate"]

#: portable GPU name -> (USD per GPU-hour, where the figure comes from)
KNOWN_GPU_HOURLY_USD: dict[str, tuple[float, str]] = {
    "H100": (2.69, "RunPod Secure Cloud on-demand, May 2026 (the pod backend's figure)"),
    "T4": (0.526, "AWS g4dn.xlarge on-demand, us-east-1 list price (not re-checked in 2026)"),
    "A10": (1.006, "AWS g5.xlarge (A10G) on-demand, us-east-1 list price (not re-checked in 2026)"),
    "L4": (0.805, "AWS g6.xlarge on-demand, us-east-1 list price (not re-checked in 2026)"),
    "L40S": (1.861, "AWS g6e.xlarge on-demand, us-east-1 list price (not re-checked in 2026)"),
}


def gpu_rate(model: str, overrides: dict[str, float]) -> tuple[float, str] | None:
    """USD per GPU-hour of ``model`` (a portable name) and its source; ``None`` when unknown."""
    if model in overrides:
        return overrides[model], "gpu_hourly_rates"
    return KNOWN_GPU_HOURLY_USD.get(model)

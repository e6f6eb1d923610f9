"""Default hourly prices of pod hosts by GPU, for hosts whose ``hourly_rate`` is not set.

Only prices we have a dated source for are listed; any other host costs $0 until you set its ``hourly_rate``
(a warning-free default would be a guess). Source: RunPod Secure Cloud on-demand list prices as reported in
May 2026 (H100 SXM ~$2.69/h per GPU). Set ``hourly_rate`` per host for exact figures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpuflex.gpus import CATALOG

if TYPE_CHECKING:
    from ._remote import RemoteHost

__all__ = ["KNOWN_GPU_HOURLY_USD", "host_hourly_rate", "portable_gpu_name"]

#: portable GPU name -> USD per GPU-hour (RunPod Secure Cloud on-demand, May 2026)
KNOWN_GPU_HOURLY_USD = {"H100": 2.69}


def portable_gpu_name(smi_name: str) -> str | None:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"H100"``; ``None`` for a model the catalog does not know."""
    for model in CATALOG.values():
        if smi_name.strip().lower() == model.runpod_id.lower():
            return model.name
    spaced = f" {smi_name.upper().replace('-', ' ')} "
    best = None
    for model in CATALOG.values():
        for key in (model.name, *model.aliases):
            token = f" {key.upper().replace('-', ' ')} "
            if token in spaced and (best is None or len(key) > len(best[1])):
                best = (model.name, key)
    return best[0] if best else None


def host_hourly_rate(host: RemoteHost) -> float | None:
    """The host's own ``hourly_rate``, else its GPUs at a known price, else ``None`` (unknown)."""
    if host.spec.hourly_rate is not None:
        return host.spec.hourly_rate
    if not host.facts or not host.facts["gpus"]:
        return None
    total = 0.0
    for gpu in host.facts["gpus"][: len(host.gpu_holders) or None]:
        name = portable_gpu_name(gpu["name"])
        if name not in KNOWN_GPU_HOURLY_USD:
            return None
        total += KNOWN_GPU_HOURLY_USD[name]
    return total

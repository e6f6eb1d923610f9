"""Default hourly prices of pod hosts by GPU, for hosts whose ``hourly_rate`` is not set.

Only prices we have a dated source for are listed, by the exact device name the driver prints (an H100 PCIe or
NVL is priced differently from the SXM one); any other host costs $0 until you set its ``hourly_rate`` (a
warning-free default would be a guess). Source: RunPod Secure Cloud on-demand list prices as reported in May 2026
(H100 SXM ~$2.69/h per GPU). Set ``hourly_rate`` per host for exact figures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._remote import RemoteHost

__all__ = ["KNOWN_GPU_HOURLY_USD", "host_hourly_rate"]

#: nvidia-smi device name -> USD per GPU-hour (RunPod Secure Cloud on-demand, May 2026)
KNOWN_GPU_HOURLY_USD = {"NVIDIA H100 80GB HBM3": 2.69}


def host_hourly_rate(host: RemoteHost) -> float | None:
    """The host's own ``hourly_rate``, else its GPUs at a known price, else ``None`` (unknown)."""
    if host.spec.hourly_rate is not None:
        return host.spec.hourly_rate
    if not host.facts or not host.facts["gpus"]:
        return None
    total = 0.0
    for gpu in host.facts["gpus"][: len(host.gpu_holders) or None]:
        if gpu["name"] not in KNOWN_GPU_HOURLY_USD:
            return None
        total += KNOWN_GPU_HOURLY_USD[gpu["name"]]
    return total

"""The hardware the emulator offers: RunPod's GPU types, its serverless GPU pools and its CPU flavours.

GPU type ids and memory are RunPod's (runpod/docs ``references/gpu-types.mdx``); pool membership follows
runpod-flash's ``POOLS_TO_TYPES`` and its docstrings (which add H100 PCIe/NVL, L40/L40S and RTX 2000 Ada); CPU
flavours and their disk limits follow runpod-flash's ``CpuInstanceType`` and its container-disk sizing notes.
Hourly prices here are illustrative pod prices (what ``gpuTypes`` reports), not serverless prices, and several are
left out on purpose: RunPod reports no price for GPUs it does not rent.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["CPU_FLAVORS", "GPU_TYPES", "SERVERLESS_POOLS", "cpu_instance", "gpu_type_view"]

#: id -> (display name, memory GB, illustrative secure-cloud $/hour or None)
GPU_TYPES: dict[str, tuple[str, int, float | None]] = {
    "NVIDIA RTX A4000": ("RTX A4000", 16, 0.25),
    "NVIDIA RTX A4500": ("RTX A4500", 20, 0.27),
    "NVIDIA RTX 4000 Ada Generation": ("RTX 4000 Ada", 20, 0.26),
    "NVIDIA RTX 2000 Ada Generation": ("RTX 2000 Ada", 16, 0.24),
    "NVIDIA RTX A5000": ("RTX A5000", 24, 0.27),
    "NVIDIA L4": ("L4", 24, 0.43),
    "NVIDIA GeForce RTX 3090": ("RTX 3090", 24, 0.46),
    "NVIDIA GeForce RTX 4090": ("RTX 4090", 24, 0.69),
    "NVIDIA GeForce RTX 5090": ("RTX 5090", 32, 0.94),
    "NVIDIA A40": ("A40", 48, 0.40),
    "NVIDIA RTX A6000": ("RTX A6000", 48, 0.49),
    "NVIDIA L40": ("L40", 48, 0.99),
    "NVIDIA L40S": ("L40S", 48, 0.86),
    "NVIDIA RTX 6000 Ada Generation": ("RTX 6000 Ada", 48, 0.77),
    "NVIDIA A100 80GB PCIe": ("A100 PCIe", 80, 1.64),
    "NVIDIA A100-SXM4-80GB": ("A100 SXM", 80, 1.74),
    "NVIDIA H100 80GB HBM3": ("H100 SXM", 80, 2.69),
    "NVIDIA H100 PCIe": ("H100 PCIe", 80, 2.39),
    "NVIDIA H100 NVL": ("H100 NVL", 94, 2.79),
    "NVIDIA H200": ("H200 SXM", 141, 3.59),
    "NVIDIA RTX PRO 6000 Blackwell Server Edition": ("RTX PRO 6000", 96, 1.79),
    "NVIDIA RTX PRO 6000 Blackwell Workstation Edition": ("RTX PRO 6000 WK", 96, None),
    "NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition": ("RTX PRO 6000 MaxQ", 96, None),
    "NVIDIA B200": ("B200", 180, 5.98),
    "NVIDIA GeForce RTX 3070": ("RTX 3070", 8, None),  # pods only: in no serverless pool
    "Tesla V100-SXM2-16GB": ("V100 SXM2", 16, None),
}

#: pool id (what ``gpuIds`` takes) -> member GPU type ids
SERVERLESS_POOLS: dict[str, tuple[str, ...]] = {
    "AMPERE_16": ("NVIDIA RTX A4000", "NVIDIA RTX A4500", "NVIDIA RTX 4000 Ada Generation",
                  "NVIDIA RTX 2000 Ada Generation"),
    "AMPERE_24": ("NVIDIA RTX A5000", "NVIDIA L4", "NVIDIA GeForce RTX 3090"),
    "ADA_24": ("NVIDIA GeForce RTX 4090",),
    "ADA_32_PRO": ("NVIDIA GeForce RTX 5090",),
    "AMPERE_48": ("NVIDIA A40", "NVIDIA RTX A6000"),
    "ADA_48_PRO": ("NVIDIA RTX 6000 Ada Generation", "NVIDIA L40", "NVIDIA L40S"),
    "AMPERE_80": ("NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB"),
    "ADA_80_PRO": ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H100 NVL"),
    "HOPPER_141": ("NVIDIA H200",),
    "BLACKWELL_96": ("NVIDIA RTX PRO 6000 Blackwell Server Edition",
                     "NVIDIA RTX PRO 6000 Blackwell Workstation Edition",
                     "NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition"),
    "BLACKWELL_180": ("NVIDIA B200",),
}

#: flavour id -> (display name, GB of RAM per vCPU, GB of container disk allowed per vCPU)
CPU_FLAVORS: dict[str, tuple[str, float, int]] = {
    "cpu3g": ("General Purpose", 4.0, 10),
    "cpu3c": ("Compute-Optimized", 2.0, 10),
    "cpu5c": ("Compute-Optimized (5th gen)", 2.0, 15),
}
CPU_VCPUS = (1, 2, 4, 8)

_INSTANCE = re.compile(r"^(cpu\d+[a-z])-(\d+)-(\d+)$")


def cpu_instance(instance_id: str) -> tuple[str, int, int] | None:
    """``cpu3c-2-4`` -> (flavour, vCPUs, GB of disk allowed); None when RunPod has no such instance."""
    match = _INSTANCE.match(instance_id)
    if match is None or match.group(1) not in CPU_FLAVORS:
        return None
    flavour, vcpus, ram = match.group(1), int(match.group(2)), int(match.group(3))
    _, ram_per_vcpu, disk_per_vcpu = CPU_FLAVORS[flavour]
    if vcpus not in CPU_VCPUS or ram != int(vcpus * ram_per_vcpu):
        return None
    return flavour, vcpus, vcpus * disk_per_vcpu


def gpu_type_view(gpu_id: str) -> dict[str, Any]:
    name, memory, price = GPU_TYPES[gpu_id]
    return {
        "id": gpu_id, "displayName": name, "manufacturer": "Nvidia", "memoryInGb": memory, "cudaCores": 0,
        "secureCloud": price is not None, "communityCloud": price is not None, "securePrice": price,
        "communityPrice": None if price is None else round(price * 0.8, 2), "secureSpotPrice": None,
        "communitySpotPrice": None, "oneWeekPrice": None, "oneMonthPrice": None, "threeMonthPrice": None,
        "maxGpuCount": 8, "maxGpuCountCommunityCloud": 8, "maxGpuCountSecureCloud": 8, "minPodGpuCount": 1,
    }

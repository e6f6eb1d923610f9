"""GPU and CPU hardware on RunPod Serverless: which RunPod GPU type ids a gpuflex GPU request means, the ``gpuIds``
string that pins them, and the container disk a CPU flavour allows.

RunPod places workers by *pool* (``AMPERE_24``); ``gpuIds`` names pools, then excludes members with
``-<gpu type id>``. Pool membership comes from RunPod itself (``serverlessGpuPools``, as runpodctl does), so a
member gpuflex does not know (an RTX 2000 Ada in AMPERE_16, an H100 NVL in ADA_80_PRO) is excluded too; only when
the API does not offer that query does gpuflex fall back to the members it knows (its GPU catalog).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from gpuflex.errors import BackendError, ConfigError
from gpuflex.gpus import CATALOG

if TYPE_CHECKING:
    from gpuflex.gpus import GPU, GpuModel

    from ._errors import RunPodApi
    from ._schema import ApiSchema

__all__ = ["cpu_disk_limit", "gpu_ids", "runpod_gpu_ids", "serverless_pools"]

log = logging.getLogger("gpuflex.runpod")

#: gpuflex models whose RunPod GPU type ids differ from the catalog's single id. RunPod's GPU list
#: (runpod/docs references/gpu-types) has no T4, no A10 and no 40 GB A100; its A100 80GB comes as PCIe and SXM4.
_IDS: dict[str, tuple[str, ...]] = {
    "T4": (),
    "A10": (),
    "A100-40GB": (),
    "A100-80GB": ("NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB"),
}
#: container disk allowed per vCPU, by CPU flavour family (runpod-flash's sizing notes), when the API's
#: ``cpuFlavors { diskLimitPerVcpu }`` is not available
_DISK_PER_VCPU = {"cpu3": 10, "cpu5": 15}
_INSTANCE = re.compile(r"^(cpu\d+)([a-z])-(\d+)-(\d+)$")

_POOLS: dict[str, dict[str, tuple[str, ...]]] = {}
_DISK: dict[str, dict[str, int]] = {}

POOLS_QUERY = "query gpuflexPools { serverlessGpuPools { id gpuTypeIds } }"
FLAVORS_QUERY = "query gpuflexCpuFlavors { cpuFlavors { id diskLimitPerVcpu } }"


def runpod_gpu_ids(model: GpuModel) -> tuple[str, ...]:
    return _IDS.get(model.name, (model.runpod_id,))


def _catalog_pools() -> dict[str, tuple[str, ...]]:
    pools: dict[str, tuple[str, ...]] = {}
    for model in CATALOG.values():
        pools[model.runpod_pool] = pools.get(model.runpod_pool, ()) + runpod_gpu_ids(model)
    return {pool: members for pool, members in pools.items() if members}


async def serverless_pools(api: RunPodApi, schema: ApiSchema) -> dict[str, tuple[str, ...]]:
    """Pool id -> member GPU type ids, from RunPod (once per process), else from gpuflex's catalog."""
    url = api.config.graphql_url
    if url not in _POOLS:
        pools: dict[str, tuple[str, ...]] = {}
        if "serverlessGpuPools" in schema.queries:
            try:
                data = await api.graphql(POOLS_QUERY, {})
            except BackendError as exc:
                log.warning("could not read RunPod's serverless GPU pools (%s)", exc)
                data = {}
            pools = {str(p["id"]): tuple(str(g) for g in p.get("gpuTypeIds") or ())
                     for p in data.get("serverlessGpuPools") or [] if p and p.get("id")}
        if not pools:
            log.warning("RunPod's API does not list its serverless GPU pools; gpuflex excludes only the pool "
                        "members it knows, so a pool member it does not know may still take the work")
            pools = _catalog_pools()
        _POOLS[url] = pools
    return _POOLS[url]


def gpu_ids(gpu: GPU, pools: dict[str, tuple[str, ...]]) -> str:
    """RunPod's ``gpuIds`` for ``gpu``: the pools holding the acceptable GPU types (in preference order), then
    ``-<id>`` for every other member of those pools. Acceptable models RunPod does not offer are skipped; a
    request with none left is a :class:`ConfigError`."""
    pool_of = {member: pool for pool, members in pools.items() for member in members}
    if gpu.is_any:
        known = [m.runpod_pool for m in CATALOG.values()]
        return ",".join(sorted(pools, key=lambda p: known.index(p) if p in known else len(known)))
    accepted = [gpu_id for model in gpu.models for gpu_id in runpod_gpu_ids(model) if gpu_id in pool_of]
    missing = [model.name for model in gpu.models if not any(i in pool_of for i in runpod_gpu_ids(model))]
    if not accepted:
        offered = sorted(m.name for m in CATALOG.values() if any(i in pool_of for i in runpod_gpu_ids(m)))
        hint = " ('A100' means the 40 GB model: ask for 'A100-80GB')" if "A100-40GB" in missing else ""
        raise ConfigError(f"RunPod Serverless offers no {' or '.join(missing)}{hint}; choose one of "
                          f"{', '.join(offered)}, a pool such as 'AMPERE_24', or 'any'")
    if missing:
        log.info("RunPod Serverless offers no %s; %s runs on the rest of its choices", ", ".join(missing), gpu)
    chosen: list[str] = []
    for gpu_id in accepted:
        if pool_of[gpu_id] not in chosen:
            chosen.append(pool_of[gpu_id])
    excluded = [f"-{member}" for pool in chosen for member in pools[pool] if member not in accepted]
    return ",".join(chosen + excluded)


async def cpu_disk_limit(api: RunPodApi, schema: ApiSchema, instance: str) -> int:
    """GB of container disk a worker of CPU instance ``instance`` (``cpu3c-2-4``) may have."""
    match = _INSTANCE.match(instance)
    if match is None:
        raise ConfigError(f"cpu_instance {instance!r} is not a RunPod CPU instance id such as 'cpu3g-2-8' "
                          "(flavour-vCPUs-GB of RAM)")
    family, flavour, vcpus = match.group(1), match.group(1) + match.group(2), int(match.group(3))
    url = api.config.graphql_url
    if url not in _DISK:
        _DISK[url] = {}
        if "cpuFlavors" in schema.queries:
            try:
                data = await api.graphql(FLAVORS_QUERY, {})
            except BackendError as exc:  # the sizes below are the documented ones: deploying can go on
                log.warning("could not read RunPod's CPU flavours (%s); using the documented disk limits", exc)
            else:
                _DISK[url] = {str(f["id"]): int(f["diskLimitPerVcpu"]) for f in data.get("cpuFlavors") or []
                              if f and f.get("id") and f.get("diskLimitPerVcpu")}
    per_vcpu = _DISK[url].get(flavour) or _DISK_PER_VCPU.get(family, 10)
    return vcpus * per_vcpu

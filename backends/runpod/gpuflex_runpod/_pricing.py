"""RunPod Serverless prices and billing rule (flex workers, per second, by GPU pool; runpod docs' serverless
pricing table as of 2026) and the ``gpuIds`` pool string for a GPU request."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from gpuflex import Price
from gpuflex.gpus import CATALOG

if TYPE_CHECKING:
    from gpuflex import EndpointSpec
    from gpuflex.gpus import GPU

__all__ = ["POOL_USD_PER_SECOND", "gpu_ids", "serverless_price"]

#: USD per second per GPU of a flex worker, by pool.
POOL_USD_PER_SECOND: dict[str, float] = {
    "AMPERE_16": 0.00016,
    "AMPERE_24": 0.00019,
    "ADA_24": 0.00031,
    "AMPERE_48": 0.00034,
    "ADA_48_PRO": 0.00053,
    "AMPERE_80": 0.00076,
    "ADA_80_PRO": 0.00116,
    "BLACKWELL_96": 0.00111,
    "HOPPER_141": 0.00155,
    "BLACKWELL_180": 0.00240,
}


def _pools(gpu: GPU) -> list[str]:
    models = gpu.models if not gpu.is_any else tuple(CATALOG.values())
    pools: list[str] = []
    for model in models:
        if model.runpod_pool not in pools:
            pools.append(model.runpod_pool)
    return pools


def gpu_ids(gpu: GPU) -> str:
    """RunPod's ``gpuIds``: the pools holding the acceptable models (in preference order), then a negation
    (``-<gpu id>``) for every other model in those pools, since RunPod places by pool."""
    pools = _pools(gpu)
    if gpu.is_any:
        return ",".join(pools)
    excluded = [f"-{m.runpod_id}" for m in CATALOG.values()
                if m.runpod_pool in pools and m.name not in gpu.choices]
    return ",".join(pools + excluded)


def serverless_price(spec: EndpointSpec) -> Price:
    """What one worker of ``spec`` costs. Several acceptable pools: the dearest (RunPod may place on any)."""
    if spec.gpu is None:
        return Price(source="RunPod CPU workers: no price in gpuflex's table (estimated as free)")
    priced = [(POOL_USD_PER_SECOND[p], p) for p in _pools(spec.gpu) if p in POOL_USD_PER_SECOND]
    if not priced:
        return Price(source=f"no published RunPod serverless price for {spec.gpu} (estimated as free)")
    per_second, pool = max(priced)
    hourly = per_second * 3600 * spec.gpu.count
    # a flex worker bills its idle timeout after the last job (an upper bound per job: back-to-back jobs share one
    # tail); workers kept by min_workers bill around the clock instead, with no tail of their own
    tail = float(math.ceil(spec.idle_timeout)) if spec.min_workers == 0 else 0.0
    return Price(
        usd_per_hour=hourly, billing="per-second", increment=1.0, tail_seconds=tail, idle_usd_per_hour=hourly,
        source=f"RunPod serverless flex price of {pool} (${per_second}/s per GPU)",
    )

"""RunPod Serverless prices and billing rule (per second, by GPU pool; RunPod's serverless pricing page as of 2026:
flex workers at the standard rate, active workers, the ones ``min_workers`` keeps, 20-30 % cheaper).

A price RunPod does not publish (CPU workers, the RTX 5090 pool, active RTX PRO 6000 workers) is reported as
unknown (billing ``"unknown"``, nothing counted), never as free: RunPod bills those workers too. Set a price of your
own with the ``gpuflex_price`` hook.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from gpuflex import Price
from gpuflex.gpus import CATALOG

if TYPE_CHECKING:
    from gpuflex import EndpointSpec
    from gpuflex.gpus import GPU

    from ._config import RunPodConfig

__all__ = ["ACTIVE_USD_PER_SECOND", "FLEX_USD_PER_SECOND", "idle_timeout", "serverless_price"]

#: USD per second per GPU of a flex worker (scales to zero), by pool.
FLEX_USD_PER_SECOND: dict[str, float] = {
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
#: USD per second per GPU of an active worker (kept up around the clock by ``workersMin``), by pool.
ACTIVE_USD_PER_SECOND: dict[str, float] = {
    "AMPERE_16": 0.00011,
    "AMPERE_24": 0.00013,
    "ADA_24": 0.00021,
    "AMPERE_48": 0.00024,
    "ADA_48_PRO": 0.00037,
    "AMPERE_80": 0.00060,
    "ADA_80_PRO": 0.00093,
    "HOPPER_141": 0.00124,
    "BLACKWELL_180": 0.00190,
}
GPUFLEX_DEFAULT_IDLE_TIMEOUT = 60.0  # what an endpoint that sets no idle_timeout carries


def idle_timeout(spec: EndpointSpec, config: RunPodConfig) -> int:
    """RunPod's ``idleTimeout`` (whole seconds, 1..3600) for ``spec``: its own ``idle_timeout``, or, when that is
    gpuflex's default, ``config.default_idle_timeout`` (RunPod's console default is 5 s)."""
    seconds = spec.idle_timeout
    if seconds == GPUFLEX_DEFAULT_IDLE_TIMEOUT and config.default_idle_timeout is not None:
        seconds = config.default_idle_timeout
    return min(3600, max(1, math.ceil(seconds)))


def _pools(gpu: GPU) -> list[str]:
    models = gpu.models if not gpu.is_any else tuple(CATALOG.values())
    pools: list[str] = []
    for model in models:
        if model.runpod_pool not in pools:
            pools.append(model.runpod_pool)
    return pools


def serverless_price(spec: EndpointSpec, config: RunPodConfig) -> Price:
    """What one worker of ``spec`` costs. Several acceptable pools: the dearest (RunPod may place on any)."""
    if spec.gpu is None:
        return Price(billing="unknown", source=f"RunPod publishes no serverless price for CPU workers "
                                               f"({config.cpu_instance}); RunPod bills them: the cost is unknown, "
                                               "not zero")
    pools = _pools(spec.gpu)
    unpriced = [p for p in pools if p not in FLEX_USD_PER_SECOND]
    if spec.gpu.is_any:  # the dearest pool bounds it: RunPod may place on any
        pools = [p for p in pools if p in FLEX_USD_PER_SECOND]
    elif unpriced:
        return Price(billing="unknown", source=f"RunPod publishes no serverless price for {spec.gpu} "
                                               f"(pool {', '.join(unpriced)}); the cost is unknown, not zero")
    per_second, pool = max((FLEX_USD_PER_SECOND[p], p) for p in pools)
    hourly = per_second * 3600 * spec.gpu.count
    # an active worker (min_workers) bills around the clock at the active rate; where RunPod publishes none, the
    # flex rate stands in (an upper bound)
    active = max(ACTIVE_USD_PER_SECOND.get(p, FLEX_USD_PER_SECOND[p]) for p in pools)
    source = f"RunPod serverless flex price of {pool} (${per_second}/s per GPU)"
    if spec.min_workers:
        source += f"; its {spec.min_workers} active worker(s) at ${active}/s per GPU, around the clock"
    # a flex worker bills its idle timeout after the last job (an upper bound per job: back-to-back jobs share
    # one tail); with min_workers the first jobs run on active workers, which have no tail of their own
    tail = float(idle_timeout(spec, config)) if spec.min_workers == 0 else 0.0
    return Price(usd_per_hour=hourly, billing="per-second", increment=1.0, tail_seconds=tail,
                 idle_usd_per_hour=active * 3600 * spec.gpu.count, source=source)

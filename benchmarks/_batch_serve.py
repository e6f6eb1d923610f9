"""The Ray Serve baseline of the batching benchmark, run by ``_batch_bench.py`` in its own process
(``RAY_USAGE_STATS_ENABLED=0``, loopback only, a private temp dir, no HTTP proxy):
``python benchmarks/_batch_serve.py '<json settings>'`` prints one ``RESULT {json}`` line.

One deployment, ``num_replicas=1``, serves ``_batch_model.infer`` under ``@serve.batch`` with gpuflex's batch
settings (``max_batch_size``, ``batch_wait_timeout_s = batch_wait_ms / 1000``) and ``max_ongoing_requests=1024``,
high enough that Serve's router never holds requests back: it sends each to the replica, whose batch queue groups
them, as gpuflex's worker groups what reaches it. Measured here with lower settings: with 32 (the batch size, which
Ray allows) the router stalled (42 calls/s closed loop, the replica 19% busy, "Failed to get queue length from
Replica ... within 0.1s" warnings); with 64 it reached 240 calls/s closed loop but, offered 161 req/s open loop,
completed 45/s and left 1,052 requests unfinished once requests queued in the router. The batch runs on a thread
(``asyncio.to_thread``) as gpuflex runs a sync batched function, so the replica's loop keeps taking requests. It is
called through its ``DeploymentHandle`` from this process, with the same open-loop generator as gpuflex's rows.

Settings: ``rates``, ``duration``, ``drain_s``, ``seed``, ``warmup``, ``calibrate_s`` and ``callers`` (the
closed-loop capacity probe), ``temp_dir``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import _batch_load  # noqa: E402
import _batch_model as bm  # noqa: E402

ONGOING = 1024  # see above


def main(settings: dict[str, Any]) -> dict[str, Any]:
    import ray
    from ray import serve

    out: dict[str, Any] = {"version": ray.__version__, "max_ongoing_requests": ONGOING}
    t0 = time.perf_counter()
    ray.init(num_cpus=2, num_gpus=1 if bm.DEVICE == "cuda" else 0, include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=False, _temp_dir=settings["temp_dir"],
             runtime_env={"env_vars": {"PYTHONPATH": str(HERE), **bm.ENV}})
    serve.start(proxy_location="Disabled")

    @serve.deployment(num_replicas=1, max_ongoing_requests=ONGOING,
                      ray_actor_options={"num_cpus": 1, "num_gpus": 1 if bm.DEVICE == "cuda" else 0})
    class BatchedMLP:
        def __init__(self) -> None:
            bm.model()  # loaded once per replica, before it takes requests

        @serve.batch(max_batch_size=bm.MAX_BATCH_SIZE, batch_wait_timeout_s=bm.BATCH_WAIT_MS / 1000)
        async def __call__(self, items: list[Any]) -> list[tuple[Any, int]]:
            return await asyncio.to_thread(bm.infer, items)

    handle = serve.run(BatchedMLP.bind(), name="batch_bench", route_prefix=None)  # type: ignore[attr-defined]
    out["start_s"] = time.perf_counter() - t0
    items = bm.make_items(64)

    async def call(item: Any) -> Any:
        return await handle.remote(item)

    async def measure() -> list[dict[str, Any]]:
        await asyncio.gather(*(call(item) for item in items[: settings["warmup"]]))
        out["capacity"] = await _batch_load.closed_loop_rate(call, items, settings["calibrate_s"],
                                                             settings["callers"])
        rows = []
        for rate in settings["rates"]:
            rows.append(await _batch_load.open_loop(call, items, rate, settings["duration"], settings["seed"],
                                                    settings["drain_s"]))
        return rows

    out["rows"] = asyncio.run(measure())
    serve.shutdown()  # type: ignore[no-untyped-call]
    ray.shutdown()
    return out


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(json.loads(sys.argv[1]))), flush=True)

"""The Ray baseline, run by ``run.py`` in its own process (``RAY_USAGE_STATS_ENABLED=0``, loopback only, a private
temp dir): ``python benchmarks/_ray_bench.py '<json settings>'`` prints one ``RESULT {json}`` line.

Settings: ``mode`` ("cold": import, init, first task, shutdown; "full": also the warm round trip, map and
array transfer), ``temp_dir``, ``roundtrip_n``, ``warmup``, ``map_n``, ``array_mib``, ``array_reps``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time


def main(settings: dict) -> dict:
    out: dict = {}
    started = time.perf_counter()
    import ray

    out["version"] = ray.__version__
    out["import_s"] = time.perf_counter() - started
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             _temp_dir=settings["temp_dir"])
    out["init_s"] = time.perf_counter() - started

    @ray.remote
    def noop(x=None):
        return x

    @ray.remote
    def identity(value):
        return value

    started = time.perf_counter()
    ray.get(noop.remote(1))
    out["first_task_s"] = time.perf_counter() - started

    if settings["mode"] == "full":
        for _ in range(settings["warmup"]):
            ray.get(noop.remote())
        samples = []
        for _ in range(settings["roundtrip_n"]):
            t0 = time.perf_counter_ns()
            ray.get(noop.remote())
            samples.append(time.perf_counter_ns() - t0)
        out["roundtrip_ns"] = samples

        n = settings["map_n"]
        ray.get([noop.remote(i) for i in range(min(n, 1000))])  # warm both workers
        map_times = []
        for _ in range(settings.get("map_reps", 1)):
            t0 = time.perf_counter()
            results = ray.get([noop.remote(i) for i in range(n)])
            map_times.append(time.perf_counter() - t0)
            assert results == list(range(n))
        out["map_s"] = map_times

        import numpy as np

        arr = np.random.default_rng(0).random(settings["array_mib"] * 2**20 // 4, dtype=np.float32)
        back = ray.get(identity.remote(arr))
        out["array_equal"] = bool(np.array_equal(back, arr))
        del back
        array_times = []
        for _ in range(settings["array_reps"]):
            t0 = time.perf_counter()
            back = ray.get(identity.remote(arr))
            array_times.append(time.perf_counter() - t0)
            del back
        out["array_s"] = array_times
        out["roundtrip_median_ms"] = statistics.median(samples) / 1e6

    started = time.perf_counter()
    ray.shutdown()
    out["shutdown_s"] = time.perf_counter() - started
    return out


if __name__ == "__main__":
    result = main(json.loads(sys.argv[1]))
    print("RESULT " + json.dumps(result), flush=True)

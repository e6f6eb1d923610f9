"""The Ray backend against raw Ray on the same cluster, run by ``run.py`` in its own process (section 10):
``python benchmarks/_ray_backend_bench.py '<json settings>'`` prints one ``RESULT {json}`` line.

The cluster is ``ray.cluster_utils.Cluster`` on this machine: a head node and one worker node, one CPU each, every
file under a private ``RAY_TMPDIR`` that is removed at the end. Measured:

1. a warm no-op call through gpuflex-on-Ray (one warm actor) against a raw Ray actor method call (``def noop``
   on a plain actor), alternating blocks so background load drifts onto both alike (target: at most 1.3x);
2. ``.map`` over ``map_n`` no-op calls with two actors against ``ray.get([noop.remote(i) ...])`` raw Ray tasks;
3. hot reload: save a file, then the first call that answers with the new code (the actor loads it in place).

Settings: ``roundtrip_n``, ``warmup``, ``blocks``, ``map_n``, ``map_reps``, ``reload_reps``.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

APP = '''
import gpuflex


@gpuflex.endpoint(name="ray_reload_bench")
def version() -> str:
    return "{version}"
'''


def _timed(fn: Any, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def _reload(reps: int, work: Path) -> list[float]:
    import gpuflex
    from gpuflex.client._session import get_session

    project = work / "reload_app"
    project.mkdir()
    (project / "pyproject.toml").write_text("[project]\nname = 'ray-reload-bench'\n")
    source = project / "ray_reload_app.py"
    source.write_text(APP.format(version="v0"))
    sys.path.insert(0, str(project))
    module = importlib.import_module("ray_reload_app")
    assert module.version() == "v0"  # the actor is up and warm
    samples = []
    for i in range(1, reps + 1):
        source.write_text(APP.format(version=f"v{i}"))
        t0 = time.perf_counter()
        get_session().invalidate_bundles()  # what `gpuflex serve`'s watcher does on save
        answer = module.version()
        samples.append(time.perf_counter() - t0)
        assert answer == f"v{i}", answer
    gpuflex.shutdown()
    return samples


def main(settings: dict[str, Any]) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="gfrb-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    os.environ.update(RAY_TMPDIR=str(work), RAY_USAGE_STATS_ENABLED="0")
    import ray
    from ray.cluster_utils import Cluster

    import gpuflex

    out: dict[str, Any] = {"version": ray.__version__}
    started = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "object_store_memory": 80 * 2**20})
    cluster.add_node(num_cpus=1, object_store_memory=80 * 2**20)
    out["cluster_start_s"] = time.perf_counter() - started
    try:
        import _endpoints as ep

        with gpuflex.use("ray", address=cluster.address):
            started = time.perf_counter()
            ep.cold_noop_ep()
            out["first_call_s"] = time.perf_counter() - started  # connect, ship, place and start one actor

            @ray.remote
            class Raw:
                def noop(self, x: Any = None) -> Any:
                    return x

            @ray.remote
            def noop_task(x: Any = None) -> Any:
                return x

            raw = Raw.remote()
            for _ in range(settings["warmup"]):
                ray.get(raw.noop.remote())
                ep.cold_noop_ep()
            gf: list[float] = []
            rr: list[float] = []
            block = settings["roundtrip_n"] // settings["blocks"]
            for _ in range(settings["blocks"]):
                rr += _timed(lambda: ray.get(raw.noop.remote()), block)
                gf += _timed(ep.cold_noop_ep, block)
            out["call_gpuflex_s"], out["call_raw_s"] = gf, rr

            n = settings["map_n"]
            expected = list(range(n))
            list(ep.noop_ep.map(range(min(n, 500))))  # two actors up (max_workers=2) and warm
            ray.get([noop_task.remote(i) for i in range(min(n, 500))])
            out["map_gpuflex_s"], out["map_raw_s"] = [], []
            for _ in range(settings["map_reps"]):
                t0 = time.perf_counter()
                assert list(ep.noop_ep.map(range(n))) == expected
                out["map_gpuflex_s"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                assert ray.get([noop_task.remote(i) for i in range(n)]) == expected
                out["map_raw_s"].append(time.perf_counter() - t0)
            out["map_n"] = n
        gpuflex.shutdown()
        with gpuflex.use("ray", address=cluster.address):
            out["reload_s"] = _reload(settings["reload_reps"], work)
    finally:
        gpuflex.shutdown()
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    return out


if __name__ == "__main__":
    result = main(json.loads(sys.argv[1]))
    print("RESULT " + json.dumps(result), flush=True)

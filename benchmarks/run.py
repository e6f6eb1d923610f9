"""gpuflex against its baselines, side by side in one run; writes docs/benchmarks.md.

    python benchmarks/run.py                  # full run (about two minutes on 2 cores)
    python benchmarks/run.py --quick          # small N, for a CI smoke run (under a minute)
    python benchmarks/run.py --output PATH    # write the Markdown somewhere else
    nox -s benchmarks                         # the same, in a fresh environment with numpy, ray and torch

Measures (1) the warm round trip of a no-op call, (2) ``.map`` throughput with two workers, (3) a large numpy
array sent to a worker and back, (4) the cold start of a ``min_workers=0`` endpoint and (5) a GPU matmul
endpoint against the same function called directly (CUDA hosts only); then hot reload, the dev server, the pod
backend (8), the serverless backend (9), the Ray backend against raw Ray on one local cluster (10) and dynamic
batching of a torch MLP, unbatched and batched through gpuflex and batched by Ray Serve (11). Baselines:
``ProcessPoolExecutor(2)``, Ray (when installed; run in a child process with ``RAY_USAGE_STATS_ENABLED=0``, on
loopback, in a network namespace where ``unshare`` allows one) and ``numpy.copy``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import gc
import importlib.util
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import _endpoints as ep  # noqa: E402
import numpy as np  # noqa: E402
from _batch_bench import bench_batch, section_batch  # noqa: E402
from _pod_bench import bench_pod, section_pod  # noqa: E402
from _ray_child import netns_prefix, run_ray_child  # noqa: E402
from _reload import bench_reload, section_reload  # noqa: E402
from _runpod_bench import bench_runpod, section_runpod  # noqa: E402
from _runpod_deploy_bench import measure as bench_deployed  # noqa: E402
from _runpod_deploy_bench import section as section_deployed  # noqa: E402
from _serve import bench_serve, section_serve  # noqa: E402

import gpuflex  # noqa: E402

warnings.simplefilter("ignore", gpuflex.errors.GpuflexWarning)  # GPU endpoints on a CPU-only host

FULL = {"runpod_calls": 30, "runpod_inflight": 10_000, "runpod_fanin": 1000, "runpod_baseline": 200,
        "roundtrip_n": 2000, "warmup": 200, "blocks": 4, "map_n": 10_000, "map_reps": 3, "array_mib": 256,
        "array_reps": 5, "cold_reps": 5, "ray_cold_reps": 3, "matmul_n": 4096, "matmul_reps": 20, "gpu_reps": 5,
        "reload_reps": 9, "serve_calls": 1000, "deployed_calls": 30}
QUICK = {"runpod_calls": 3, "runpod_inflight": 0, "runpod_fanin": 100, "runpod_baseline": 10,
         "roundtrip_n": 200, "warmup": 50, "blocks": 2, "map_n": 1000, "map_reps": 1, "array_mib": 32,
         "array_reps": 3, "cold_reps": 3, "ray_cold_reps": 1, "matmul_n": 2048, "matmul_reps": 10, "gpu_reps": 3,
         "reload_reps": 3, "serve_calls": 100, "deployed_calls": 3}
MIB = 2**20


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def p90(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=10, method="inclusive")[8]


def timed_ns(fn: Callable[[], Any], n: int) -> list[int]:
    gc.collect()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    return samples


def wait_for_workers(endpoint: Any, want: int, timeout: float = 60.0) -> int:
    """Call until ``want`` distinct workers have answered (the autoscaler starts them on queue depth)."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < want and time.monotonic() < deadline:
        jobs = [endpoint.spawn(i) for i in range(64)]
        for job in jobs:
            job.result()
            if job.worker:
                seen.add(job.worker)
    return len(seen)


# -- Ray, in a child process -------------------------------------------------------------------------------------


def ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


def run_ray(settings: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One Ray child process (``_ray_bench.py``), cleaned up after."""
    return run_ray_child(HERE / "_ray_bench.py", settings, timeout, what="Ray", cwd=ROOT)


# -- 1. warm round trip ---------------------------------------------------------------------------------------


def bench_roundtrip(cfg: dict[str, Any]) -> dict[str, Any]:
    n, blocks = cfg["roundtrip_n"], cfg["blocks"]
    ppe_samples: list[int] = []
    gf_samples: list[int] = []
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        for _ in range(cfg["warmup"]):  # the pool forks its workers here, before gpuflex starts a thread
            pool.submit(ep.noop).result()
        for _ in range(cfg["warmup"]):
            ep.noop_ep()
        for _ in range(blocks):  # alternate blocks so background load drifts onto both alike
            ppe_samples += timed_ns(lambda: pool.submit(ep.noop).result(), n // blocks)
            gf_samples += timed_ns(ep.noop_ep, n // blocks)
    gpuflex.shutdown()
    return {"gpuflex": gf_samples, "ppe": ppe_samples}


# -- 2. map throughput ----------------------------------------------------------------------------------------


def bench_map(cfg: dict[str, Any]) -> dict[str, Any]:
    n, reps = cfg["map_n"], cfg["map_reps"]
    expected = list(range(n))
    out: dict[str, Any] = {"ppe_1": [], "ppe_100": [], "gpuflex": []}

    def timed_map(key: str, run_map: Callable[[], list[Any]]) -> None:
        gc.collect()
        t0 = time.perf_counter()
        got = run_map()
        out[key].append(time.perf_counter() - t0)
        assert got == expected

    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        list(pool.map(ep.noop, range(min(n, 1000))))  # the pool forks its workers before gpuflex starts a thread
        out["gpuflex_workers"] = wait_for_workers(ep.noop_ep, 2)
        for _ in range(reps):  # interleaved, so background load drifts onto all three alike
            timed_map("ppe_1", lambda: list(pool.map(ep.noop, range(n))))
            timed_map("gpuflex", lambda: list(ep.noop_ep.map(range(n))))
            timed_map("ppe_100", lambda: list(pool.map(ep.noop, range(n), chunksize=100)))
    gpuflex.shutdown()
    return out


# -- 3. a large array there and back --------------------------------------------------------------------------


def shmem_mib() -> float | None:
    """Shared memory (tmpfs, /dev/shm) in use on the machine, from /proc/meminfo; None off Linux."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("Shmem:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def prefault(nbytes: int) -> int:
    """Touch and free ``nbytes`` of memory once. On a VM the first touch of guest memory can cost far more than
    later ones; this keeps that one-off cost out of whichever transfer happens to run first."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        available = nbytes
    block = np.ones(min(nbytes, available // 4) // 8)
    touched = int(block.nbytes)
    del block
    return touched


def bench_array(cfg: dict[str, Any]) -> dict[str, Any]:
    reps = cfg["array_reps"]
    arr = np.random.default_rng(0).random(cfg["array_mib"] * MIB // 4, dtype=np.float32)
    out: dict[str, Any] = {"nbytes": arr.nbytes}
    t0 = time.perf_counter()
    out["prefault_bytes"] = prefault(4 * (reps + 2) * arr.nbytes)
    out["prefault_s"] = time.perf_counter() - t0

    def run(call: Callable[[], Any]) -> list[float]:
        back = call()
        if not np.array_equal(back, arr):
            raise AssertionError("the array came back different")
        del back
        times = []
        for _ in range(reps):
            gc.collect()
            t0 = time.perf_counter()
            back = call()
            times.append(time.perf_counter() - t0)
            del back
        gc.collect()
        return times

    out["memcpy"] = run(lambda: np.copy(arr))
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        out["ppe"] = run(lambda: pool.submit(ep.identity, arr).result())
    before = shmem_mib()
    out["gpuflex"] = run(lambda: ep.identity_ep(arr))
    after = shmem_mib()
    # shared memory still in use once every result was dropped: what gpuflex keeps alive after the calls
    out["shm_held_mib"] = None if before is None or after is None else max(0.0, after - before)
    with gpuflex.use("local", shared_memory=False):
        out["gpuflex_pipe"] = run(lambda: ep.identity_ep(arr))
    gpuflex.shutdown()
    closed = shmem_mib()
    out["shm_after_shutdown_mib"] = None if before is None or closed is None else max(0.0, closed - before)
    return out


# -- 4. cold start ------------------------------------------------------------------------------------------


def _child_seconds(command: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(command, check=True, cwd=str(ROOT), capture_output=True)
    return time.perf_counter() - t0


def _cold_child(which: str) -> dict[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(HERE / "_cold.py"), which], cwd=str(ROOT), capture_output=True,
                          text=True, timeout=120)
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, float] = json.loads(line[len("RESULT "):])
            result["wall_s"] = wall
            return result
    raise RuntimeError(f"cold-start child ({which}) failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")


def bench_cold(cfg: dict[str, Any]) -> dict[str, Any]:
    reps = cfg["cold_reps"]
    bare = [_child_seconds([sys.executable, "-c", "pass"]) for _ in range(reps)]
    gf = [_cold_child("gpuflex") for _ in range(reps)]
    ppe = [_cold_child("ppe") for _ in range(reps)]
    return {"bare": bare, "gpuflex": gf, "ppe": ppe}


# -- 5. GPU ----------------------------------------------------------------------------------------------------


def bench_gpu(cfg: dict[str, Any]) -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"skip": "no CUDA device on this machine (torch is not installed); run on a GPU host"}
    if not torch.cuda.is_available():
        return {"skip": "no CUDA device on this machine (torch.cuda.is_available() is False); run on a GPU host"}
    n, reps, calls = cfg["matmul_n"], cfg["matmul_reps"], cfg["gpu_reps"]

    def run(call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        call()  # warm-up: worker start, CUDA context, kernels
        walls, inside = [], []
        for _ in range(calls):
            t0 = time.perf_counter()
            result = call()
            walls.append(time.perf_counter() - t0)
            inside.append(result["seconds"])
            if result["device"] != "cuda":
                raise AssertionError(f"the matmul ran on {result['device']}, not CUDA")
        return {"wall": walls, "inside": inside}

    out: dict[str, Any] = {"n": n, "reps": reps, "device_name": torch.cuda.get_device_name(0)}
    out["gpuflex"] = run(lambda: ep.matmul_ep(n, reps))
    gpuflex.shutdown()
    out["direct"] = run(lambda: ep.matmul(n, reps))
    return out


# -- Markdown --------------------------------------------------------------------------------------------------


def bench_ray_backend(cfg: dict[str, Any]) -> dict[str, Any]:
    """benchmarks/_ray_backend_bench.py in a child process (it starts its own two-node Ray cluster)."""
    if not ray_installed() or importlib.util.find_spec("gpuflex_ray") is None:
        return {"skip": "gpuflex-ray or ray is not installed"}
    settings = {"roundtrip_n": cfg["roundtrip_n"] // 2, "warmup": cfg["warmup"], "blocks": cfg["blocks"],
                "map_n": cfg["map_n"] // 5, "map_reps": cfg["map_reps"], "reload_reps": cfg["reload_reps"]}
    command = [*netns_prefix(), sys.executable, str(HERE / "_ray_backend_bench.py"), json.dumps(settings)]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT "):])
            result["netns"] = command[0] == "unshare"
            return result
    return {"error": f"exit code {done.returncode}: {done.stderr.strip()[-1500:]}"}


def section_ray_backend(res: dict[str, Any]) -> str:
    title = "## 10. Ray backend against raw Ray on the same cluster\n\n"
    if "error" in res:
        return title + f"Failed: {res['error']}\n"
    if "skip" in res:
        return title + f"Not measured: {res['skip']}.\n"
    call, raw = statistics.median(res["call_gpuflex_s"]) * 1e6, statistics.median(res["call_raw_s"]) * 1e6
    call90, raw90 = p90(res["call_gpuflex_s"]) * 1e6, p90(res["call_raw_s"]) * 1e6
    n = res["map_n"]
    gmap, rmap = n / statistics.median(res["map_gpuflex_s"]), n / statistics.median(res["map_raw_s"])
    reload = statistics.median(res["reload_s"])
    ratio = call / raw
    lines = [
        title.rstrip("\n") + "\n",
        f"Ray {res['version']}, `ray.cluster_utils.Cluster` on this machine: a head node and one worker node, one CPU "
        f"each{' (in its own network namespace, loopback only)' if res.get('netns') else ''}; starting it took "
        f"{res['cluster_start_s']:.1f} s and the first call (connect, ship gpuflex, place and start an actor) "
        f"{res['first_call_s']:.1f} s. Both sides run on the same cluster in the same driver process.\n",
        "| what | gpuflex on Ray | raw Ray | ratio | target | result |",
        "|---|---|---|---|---|---|",
        f"| warm no-op call, median of {len(res['call_gpuflex_s'])} (one actor vs a plain actor's `def noop`) | "
        f"{call:,.0f} µs | {raw:,.0f} µs | {ratio:.2f}x | ≤ 1.3x | {'PASS' if ratio <= 1.3 else 'MISS'} |",
        f"| the same, p90 | {call90:,.0f} µs | {raw90:,.0f} µs | {call90 / raw90:.2f}x | — | — |",
        f"| `.map` of {n:,} no-op calls, 2 actors vs `ray.get([f.remote(i) ...])` tasks (calls/s, median of "
        f"{len(res['map_gpuflex_s'])}) | {gmap:,.0f} | {rmap:,.0f} | {gmap / rmap:.2f}x | — | — |",
        "",
        f"Hot reload on Ray (save, rebuild the bundle, put the changed file in the object store, the actor loads the "
        f"new code in place, the call answers): median {reload * 1000:.0f} ms over {len(res['reload_s'])} edits; "
        f"target under 1 s (issue #4): {'PASS' if reload < 1.0 else 'MISS'}.\n",
    ]
    return "\n".join(lines)



def mark(ok: bool | None) -> str:
    return "—" if ok is None else ("**PASS**" if ok else "**MISS**")


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 0, unit: str = "") -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}{unit}"


def ray_cell(ray: dict[str, Any] | str, value: Callable[[dict[str, Any]], str]) -> str:
    if isinstance(ray, str):
        return ray
    try:
        return value(ray)
    except (KeyError, TypeError, ValueError):
        return "—"


def section_roundtrip(res: dict[str, Any], ray: dict[str, Any] | str, cfg: dict[str, Any]) -> str:
    title = f"## 1. Warm round trip of a no-op call (sequential, {cfg['roundtrip_n']:,} calls after warm-up)\n\n"
    if "error" in res:
        return title + f"Failed: {res['error']}\n"
    gf, ppe = [x / 1e3 for x in res["gpuflex"]], [x / 1e3 for x in res["ppe"]]
    ray_us = [x / 1e3 for x in ray["roundtrip_ns"]] if isinstance(ray, dict) and "roundtrip_ns" in ray else None
    rows = []
    for label, stat in (("median (µs)", statistics.median), ("p90 (µs)", p90)):
        g, p = stat(gf), stat(ppe)
        r = stat(ray_us) if ray_us else None
        ratio_ppe = g / p
        ratio_ray = r / g if r else None
        if stat is statistics.median:
            target = "gpuflex ≤ 1.5× PPE; Ray ≥ 5× gpuflex"
            result = f"{mark(ratio_ppe <= 1.5)} / {mark(ratio_ray >= 5 if ratio_ray else None)}"
        else:
            target, result = "—", "—"
        rows.append([label, fmt(g, 1), fmt(p, 1), ray_cell(ray, lambda _, r=r: fmt(r, 1)),
                     f"{ratio_ppe:.2f}× PPE; " + (f"Ray is {ratio_ray:.1f}× slower" if ratio_ray else "Ray —"),
                     target, result])
    return title + table(["statistic", "gpuflex local", "ProcessPoolExecutor(2)", "Ray", "ratio", "target",
                          "result"], rows) + "\n"


def section_map(res: dict[str, Any], ray: dict[str, Any] | str, cfg: dict[str, Any]) -> str:
    n = cfg["map_n"]
    title = (f"## 2. `.map` throughput: {n:,} no-op calls, 2 workers (calls/s, median of {cfg['map_reps']} "
             f"run{'s' if cfg['map_reps'] > 1 else ''})\n\n")
    if "error" in res:
        return title + f"Failed: {res['error']}\n"
    g = n / statistics.median(res["gpuflex"])
    p1 = n / statistics.median(res["ppe_1"])
    p100 = n / statistics.median(res["ppe_100"])
    r = n / statistics.median(ray["map_s"]) if isinstance(ray, dict) and "map_s" in ray else None
    rows = [
        ["calls/s (PPE chunksize=1)", fmt(g), fmt(p1), ray_cell(ray, lambda _: fmt(r)),
         f"{g / p1:.2f}× PPE" + (f"; {g / r:.2f}× Ray" if r else ""), "gpuflex ≥ 1× PPE (chunksize=1)",
         mark(g >= p1)],
        ["calls/s (PPE chunksize=100, extra)", fmt(g), fmt(p100), "—", f"{g / p100:.2f}× PPE", "—", "—"],
    ]
    note = (f"\ngpuflex: `list(fn.map(range({n})))` on an endpoint with `max_workers=2` "
            f"({res['gpuflex_workers']} workers answered during warm-up). PPE: `pool.map(f, range({n}))`. "
            f"Ray: `ray.get([f.remote(i) for i in range({n})])` with `num_cpus=2`.\n")
    return title + table(["statistic", "gpuflex local", "ProcessPoolExecutor(2)", "Ray", "ratio", "target",
                          "result"], rows) + "\n" + note


def section_array(res: dict[str, Any], ray: dict[str, Any] | str, cfg: dict[str, Any]) -> str:
    mib = cfg["array_mib"]
    title = (f"## 3. A {mib} MiB float32 array to a worker and back (identity endpoint; median of "
             f"{cfg['array_reps']})\n\n")
    if "error" in res:
        return title + f"Failed: {res['error']}\n"
    nbytes = res["nbytes"]

    def gbps(times: list[float], factor: int = 2) -> float:
        return factor * nbytes / statistics.median(times) / 1e9

    g, gp, p, m = gbps(res["gpuflex"]), gbps(res["gpuflex_pipe"]), gbps(res["ppe"]), gbps(res["memcpy"], 1)
    r = gbps(ray["array_s"]) if isinstance(ray, dict) and "array_s" in ray else None

    def best(times: list[float], factor: int = 2) -> str:
        return fmt(factor * nbytes / min(times) / 1e9, 2)

    def ms(times: list[float]) -> str:
        return fmt(1e3 * statistics.median(times), 1)

    held = res.get("shm_held_mib")
    rows = [
        ["GB/s (median)", fmt(g, 2), fmt(p, 2), ray_cell(ray, lambda _: fmt(r, 2)), fmt(m, 2),
         f"{g / m:.2f}× memcpy; {g / p:.1f}× PPE", "gpuflex ≥ 0.5× memcpy", mark(g >= 0.5 * m)],
        ["GB/s (best)", best(res["gpuflex"]), best(res["ppe"]), ray_cell(ray, lambda x: best(x["array_s"])),
         best(res["memcpy"], 1), "—", "—", "—"],
        ["round-trip time (ms, median)", ms(res["gpuflex"]), ms(res["ppe"]),
         ray_cell(ray, lambda x: ms(x["array_s"])), ms(res["memcpy"]), "—", "—", "—"],
        ["GB/s (median), gpuflex with `shared_memory=False` (pipe; extra)", fmt(gp, 2), fmt(p, 2), "—", fmt(m, 2),
         f"{gp / m:.2f}× memcpy", "—", "—"],
        ["shared memory gpuflex keeps for reuse after the calls, results dropped (MiB; its segment pools)",
         "—" if held is None else fmt(held, 0), "—", "—", "—", "—", "—", "—"],
        ["shared memory still in use after `gpuflex.shutdown()` (MiB)",
         "—" if res.get("shm_after_shutdown_mib") is None else fmt(res["shm_after_shutdown_mib"], 0), "—", "—",
         "—", "—", "—", "—"],
    ]
    note = (f"\nGB/s = 2 × {nbytes:,} bytes / round-trip time for transfers and {nbytes:,} bytes / time for "
            "`numpy.copy`. The returned array equalled the input (`np.array_equal`, checked once outside the "
            "timing) for gpuflex, ProcessPoolExecutor" + (" and Ray" if isinstance(ray, dict)
                                                          and ray.get("array_equal") else "") + ". "
            f"Before the transfers the run touched and freed {res['prefault_bytes'] / 2**30:.1f} GiB "
            f"({res['prefault_s']:.1f} s), so a VM's one-off cost of first touching guest memory does not land on "
            "whichever transfer runs first. gpuflex copies a buffer into a shared-memory segment whose pages both "
            "processes have mapped already (reused once the other side dropped its views), so each direction costs "
            "one memcpy; the pools keep such segments (at most 1 GiB free per pool, 120 s) until shutdown.\n")
    return title + table(["statistic", "gpuflex local (shared memory)", "ProcessPoolExecutor(2) (pipe)", "Ray",
                          "numpy.copy (memcpy)", "ratio", "target", "result"], rows) + "\n" + note


def section_cold(res: dict[str, Any], rays: list[dict[str, Any]] | str, cfg: dict[str, Any]) -> str:
    title = (f"## 4. Cold start of a `min_workers=0` endpoint (fresh process each time; median of "
             f"{cfg['cold_reps']})\n\n")
    if "error" in res:
        return title + f"Failed: {res['error']}\n"
    med = lambda xs: 1e3 * statistics.median(xs)  # noqa: E731
    bare = med(res["bare"])
    g_first = med([x["first_call_s"] for x in res["gpuflex"]])
    g_import = med([x["import_s"] for x in res["gpuflex"]])
    g_second = med([x["second_call_s"] for x in res["gpuflex"]])
    p_first = med([x["first_call_s"] for x in res["ppe"]])
    if isinstance(rays, str):
        ray: dict[str, Any] | str = rays
    else:
        ray = {"import": med([x["import_s"] for x in rays]), "init": med([x["init_s"] for x in rays]),
               "first": med([x["first_task_s"] for x in rays]),
               "init_first": med([x["init_s"] + x["first_task_s"] for x in rays]),
               "shutdown": med([x["shutdown_s"] for x in rays]), "n": len(rays)}
    rows = [
        ["first call (ms)", fmt(g_first, 1), fmt(p_first, 1),
         ray_cell(ray, lambda x: f"{fmt(x['init_first'], 1)} (init + first task)"),
         ray_cell(ray, lambda x: f"gpuflex {x['init_first'] / g_first:.1f}× faster than Ray") , "none set", "—"],
        ["first call − bare interpreter start-up (ms)", fmt(g_first - bare, 1),
         "n/a (fork starts no interpreter)" if multiprocessing.get_start_method() == "fork"
         else fmt(p_first - bare, 1),
         ray_cell(ray, lambda x: fmt(x["init_first"] - bare, 1)), "—", "none set", "—"],
        ["bare interpreter start-up, `python -c pass` (ms)", fmt(bare, 1), fmt(bare, 1), fmt(bare, 1), "—", "—",
         "—"],
        ["import (ms)", fmt(g_import, 1), "—", ray_cell(ray, lambda x: fmt(x["import"], 1)), "—", "—", "—"],
        ["second call (ms)", fmt(g_second, 2), fmt(med([x["second_call_s"] for x in res["ppe"]]), 2),
         "—", "—", "—", "—"],
        ["Ray: `ray.init` / first task / `ray.shutdown` (ms)", "—", "—",
         ray_cell(ray, lambda x: f"{fmt(x['init'], 0)} / {fmt(x['first'], 1)} / {fmt(x['shutdown'], 0)}"), "—",
         "—", "—"],
    ]
    note = ("\ngpuflex: a child process imports gpuflex and a `min_workers=0` endpoint, then times its first call "
            "(session start, project bundle hashed and reused from the on-disk cache, one worker process started, "
            "the call). ProcessPoolExecutor: the first `submit(...).result()` of a fresh `ProcessPoolExecutor(2)` "
            f"({multiprocessing.get_start_method()} start method). Ray: `ray.init(num_cpus=2)` plus its first "
            "task" + (f", median of {ray['n']} fresh processes" if isinstance(ray, dict) and ray["n"] > 1
                        else ", one fresh process" if isinstance(ray, dict) else "") + ".\n")
    return title + table(["statistic", "gpuflex local", "ProcessPoolExecutor(2)", "Ray", "ratio", "target",
                          "result"], rows) + "\n" + note


def section_gpu(res: dict[str, Any], cfg: dict[str, Any]) -> str:
    title = "## 5. GPU: a torch fp16 matmul endpoint vs the same function called directly\n\n"
    if "error" in res:
        return title + f"Failed: {res['error']}\n"
    header = ["statistic", "gpuflex endpoint", "direct call", "ratio", "target", "result"]
    if "skip" in res:
        return title + table(header, [[res["skip"], "—", "—", "—", "—", "—"]]) + "\n"
    n, reps = res["n"], res["reps"]
    g_wall, d_wall = statistics.median(res["gpuflex"]["wall"]), statistics.median(res["direct"]["wall"])
    g_in, d_in = statistics.median(res["gpuflex"]["inside"]), statistics.median(res["direct"]["inside"])
    flops = 2 * n**3 * reps
    rows = [
        ["call wall time (ms)", fmt(1e3 * g_wall, 1), fmt(1e3 * d_wall, 1), f"{g_wall / d_wall:.2f}×", "none set",
         "—"],
        ["matmul time inside the call (ms)", fmt(1e3 * g_in, 1), fmt(1e3 * d_in, 1), f"{g_in / d_in:.2f}×",
         "—", "—"],
        ["TFLOP/s (inside the call)", fmt(flops / g_in / 1e12, 1), fmt(flops / d_in / 1e12, 1), "—", "—", "—"],
    ]
    return (title + table(header, rows) + f"\n\n{reps} matmuls of {n}×{n} fp16 per call on {res['device_name']}; "
            f"median of {cfg['gpu_reps']} warm calls.\n")


def machine_info() -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError):
        memory = "RAM unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return [f"{platform.platform()}, {cpu}, {os.cpu_count()} CPUs, {memory}",
            f"Python {platform.python_version()}, gpuflex {gpuflex.__version__} (commit {commit}), "
            f"numpy {np.__version__}"]


def render(results: dict[str, Any], cfg: dict[str, Any], quick: bool, started: datetime.datetime,
           loads: tuple[tuple[float, ...], tuple[float, ...]], elapsed: float) -> str:
    ray_full = results["ray_full"]
    ray_version = f"Ray {ray_full['version']}" if isinstance(ray_full, dict) else f"Ray: {ray_full}"
    netns = isinstance(ray_full, dict) and ray_full.get("netns")
    machine = machine_info()
    intro = [
        "# Benchmarks",
        "",
        "gpuflex's local backend against `concurrent.futures.ProcessPoolExecutor(2)`, Ray and `numpy.copy`, all "
        "measured in one run of `benchmarks/run.py` on the same machine.",
        "",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC{' (quick mode: small N, a smoke run)' if quick else ''}; "
        f"the run took {elapsed:.0f} s.",
        f"- Machine: {machine[0]}.",
        f"- Software: {machine[1]}, {ray_version}"
        + (" (in its own network namespace, loopback only)" if netns else "") + "; ProcessPoolExecutor uses the "
        f"`{multiprocessing.get_start_method()}` start method.",
        f"- Load average (1/5/15 min) at start {'/'.join(f'{x:.2f}' for x in loads[0])}, at end "
        f"{'/'.join(f'{x:.2f}' for x in loads[1])}.",
        "- Rerun: `nox -s benchmarks` (fresh environment with numpy, ray and torch) or "
        "`python benchmarks/run.py` (`--quick` for a smoke run, `--output PATH` to write elsewhere).",
        "- PPE = ProcessPoolExecutor. PASS/MISS compares gpuflex with the targets of the issues (#2 to #4).",
        "",
    ]
    parts = [
        "\n".join(intro),
        section_roundtrip(results["roundtrip"], ray_full, cfg),
        section_map(results["map"], ray_full, cfg),
        section_array(results["array"], ray_full, cfg),
        section_cold(results["cold"], results["ray_cold"], cfg),
        section_gpu(results["gpu"], cfg),
        section_reload(results["reload"]),
        section_serve(results["serve"]),
        section_pod(results["pod"]),
        section_runpod(results["runpod"]),
        section_ray_backend(results["ray_backend"]),
        section_batch(results["batch"]),
        "## 12. " + section_deployed(results["deployed"]).removeprefix("## "),
    ]
    return "\n".join(parts)


# -- main ---------------------------------------------------------------------------------------------------------


def guarded(name: str, fn: Callable[[], Any]) -> Any:
    log(f"{name} ...")
    t0 = time.perf_counter()
    try:
        return fn()
    except Exception as exc:
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        gpuflex.shutdown()
        log(f"{name} done in {time.perf_counter() - t0:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small N, for a CI smoke run")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md",
                        help="where to write the Markdown (default: docs/benchmarks.md)")
    parser.add_argument("--no-ray", action="store_true", help="skip Ray even when it is installed")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    started = datetime.datetime.now(datetime.UTC)
    load_start = os.getloadavg()
    t_start = time.perf_counter()

    results: dict[str, Any] = {}
    ray_settings = {"roundtrip_n": cfg["roundtrip_n"], "warmup": cfg["warmup"], "map_n": cfg["map_n"],
                    "map_reps": cfg["map_reps"], "array_mib": cfg["array_mib"], "array_reps": cfg["array_reps"]}
    if args.no_ray:
        results["ray_full"] = results["ray_cold"] = "skipped (--no-ray)"
    elif not ray_installed():
        log("Ray is not installed: its columns say so")
        results["ray_full"] = results["ray_cold"] = "not installed"
    else:
        def ray_all() -> None:
            full = run_ray(dict(ray_settings, mode="full"), timeout=300)
            colds = [full] + [run_ray(dict(ray_settings, mode="cold"), timeout=120)
                              for _ in range(cfg["ray_cold_reps"] - 1)]
            results["ray_full"], results["ray_cold"] = full, colds

        outcome = guarded("Ray (child process)", ray_all)
        if isinstance(outcome, dict) and "error" in outcome:
            results["ray_full"] = results["ray_cold"] = f"failed: {outcome['error']}"
    results["roundtrip"] = guarded("1. warm round trip", lambda: bench_roundtrip(cfg))
    results["map"] = guarded("2. map throughput", lambda: bench_map(cfg))
    results["array"] = guarded("3. array transfer", lambda: bench_array(cfg))
    results["cold"] = guarded("4. cold start", lambda: bench_cold(cfg))
    results["gpu"] = guarded("5. GPU", lambda: bench_gpu(cfg))
    results["reload"] = guarded("6. hot reload", lambda: bench_reload(cfg["reload_reps"]))
    results["serve"] = guarded("7. dev server", lambda: bench_serve(cfg["serve_calls"], cfg["reload_reps"]))
    results["pod"] = guarded("8. pod backend over sshd", lambda: bench_pod(cfg))
    results["runpod"] = guarded("9. serverless backend against the RunPod emulator", lambda: bench_runpod(cfg))
    if args.no_ray:
        results["ray_backend"] = {"skip": "skipped (--no-ray)"}
    else:
        results["ray_backend"] = guarded("10. Ray backend against raw Ray", lambda: bench_ray_backend(cfg))
    results["batch"] = guarded("11. dynamic batching (gpuflex, Ray Serve)",
                               lambda: bench_batch(quick=args.quick, ray_serve=not args.no_ray))
    results["deployed"] = guarded("12. deployed endpoint: plain HTTP vs gpuflex client (RunPod emulator)",
                                  lambda: bench_deployed(cfg["deployed_calls"]))

    markdown = render(results, cfg, args.quick, started, (load_start, os.getloadavg()),
                      time.perf_counter() - t_start)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(markdown)
    print(markdown)
    log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

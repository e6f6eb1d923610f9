"""Dynamic batching, measured: one torch MLP served unbatched and batched through gpuflex's local backend, and
batched by Ray Serve's ``@serve.batch``, at the same offered loads (open loop), in one run.

    python benchmarks/_batch_bench.py                   # full run (about six minutes on 2 cores)
    python benchmarks/_batch_bench.py --quick           # a smoke run (seconds)
    python benchmarks/_batch_bench.py --device cuda     # the same rows on a CUDA device
    python benchmarks/_batch_bench.py --no-ray-serve    # gpuflex's rows only

``run.py`` calls :func:`bench_batch` and :func:`section_batch` for its section 11. The model and the endpoints are
in ``_batch_model.py``, the load generator in ``_batch_load.py``, the Ray Serve child in ``_batch_serve.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import _batch_load  # noqa: E402
from _ray_child import run_ray_child  # noqa: E402

FULL: dict[str, Any] = {"duration": 15.0, "drain_s": 15.0, "calibrate_s": 3.0, "multipliers": [0.5, 1.5, 3.0],
                        "warmup": 64, "seed": 1, "max_rate": 3000.0}
QUICK: dict[str, Any] = {"duration": 1.0, "drain_s": 5.0, "calibrate_s": 0.5, "multipliers": [0.5, 2.0],
                         "warmup": 8, "seed": 1, "max_rate": 400.0}
SERVERS = {"unbatched": "gpuflex, unbatched", "batched": "gpuflex, batched", "ray_serve": "Ray Serve, `@serve.batch`"}


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


# Serve's router asks the replica for its queue length before it sends a request and gives up after 0.1 s by
# default; on this loaded 2-core machine the answers come later, and at an offered 180 req/s (below its closed-loop
# capacity; max_ongoing_requests=64) Serve completed 42/s with 756 requests unfinished, against 134/s and none
# unfinished with 1 s. Its warning
# ("Failed to get queue length ... configure the deadline using RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S") says to.
QUEUE_DEADLINE_ENV, QUEUE_DEADLINE_S = "RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S", "1.0"


def run_ray_serve(settings: dict[str, Any], device: str, timeout: float) -> dict[str, Any]:
    """``_batch_serve.py`` in a child process, cleaned up after."""
    deadline = os.environ.get(QUEUE_DEADLINE_ENV, QUEUE_DEADLINE_S)
    result = run_ray_child(HERE / "_batch_serve.py", settings, timeout, what="Ray Serve", cwd=HERE.parent,
                           temp_prefix="gfserve-", env={"PYTHONPATH": str(HERE), "GPUFLEX_BATCH_BENCH_DEVICE": device,
                                                        QUEUE_DEADLINE_ENV: deadline})
    result["queue_deadline_s"] = deadline
    return result


async def _gpuflex_rows(cfg: dict[str, Any], rates: list[float] | None) -> dict[str, Any]:
    import _batch_model as bm

    items = bm.make_items(64)

    async def unbatched(item: Any) -> Any:
        return await bm.unbatched_ep.aio(item)

    async def batched(item: Any) -> Any:
        return await bm.batched_ep.aio(item)

    # start both workers (at once) and build their models
    await asyncio.gather(*(call(item) for call in (unbatched, batched) for item in items[: cfg["warmup"]]))
    capacity = {"unbatched": await _batch_load.closed_loop_rate(unbatched, items, cfg["calibrate_s"], callers=8),
                "batched": await _batch_load.closed_loop_rate(batched, items, cfg["calibrate_s"],
                                                              callers=2 * bm.MAX_BATCH_SIZE)}
    if rates is None:
        rates = [min(cfg["max_rate"], float(round(m * capacity["unbatched"]))) for m in cfg["multipliers"]]
    rows: dict[str, list[dict[str, Any]]] = {"unbatched": [], "batched": []}
    for rate in rates:  # the two gpuflex servers alternate, so background load drifts onto both alike
        rows["unbatched"].append(await _batch_load.open_loop(unbatched, items, rate, cfg["duration"], cfg["seed"],
                                                             cfg["drain_s"]))
        rows["batched"].append(await _batch_load.open_loop(batched, items, rate, cfg["duration"], cfg["seed"],
                                                           cfg["drain_s"]))
    return {"rates": rates, "capacity": capacity, "rows": rows}


def bench_batch(quick: bool = False, ray_serve: bool = True, device: str = "auto",
                rates: list[float] | None = None) -> dict[str, Any]:
    """gpuflex's two servers at each offered load, then Ray Serve's (in a child) at the same loads."""
    import gpuflex

    cfg: dict[str, Any] = dict(QUICK if quick else FULL)
    device = resolve_device(device)
    os.environ["GPUFLEX_BATCH_BENCH_DEVICE"] = device  # read by _batch_model at import, here and on the workers
    import _batch_model as bm

    if bm.DEVICE != device:
        raise RuntimeError(f"_batch_model was imported for {bm.DEVICE} before the device ({device}) was chosen")
    try:
        out = asyncio.run(_gpuflex_rows(cfg, rates))
    finally:
        gpuflex.shutdown()  # gpuflex's workers are gone before Ray Serve starts
    out.update(cfg=cfg, device=device, threads=bm.THREADS, model=f"{bm.D_IN}->{bm.D_HIDDEN}->{bm.D_IN}",
               max_batch_size=bm.MAX_BATCH_SIZE, batch_wait_ms=bm.BATCH_WAIT_MS)
    if not ray_serve:
        out["ray_serve"] = "skipped (--no-ray-serve)"
    elif importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None:
        out["ray_serve"] = "not installed (`pip install 'ray[serve]'`; `nox -s benchmarks` installs it)"
    else:
        settings = {"rates": out["rates"], "duration": cfg["duration"], "drain_s": cfg["drain_s"],
                    "seed": cfg["seed"], "warmup": cfg["warmup"], "calibrate_s": cfg["calibrate_s"],
                    "callers": 2 * bm.MAX_BATCH_SIZE}
        timeout = 180 + len(out["rates"]) * (cfg["duration"] + cfg["drain_s"] + 35)
        try:
            out["ray_serve"] = run_ray_serve(settings, device, timeout)
        except Exception as exc:
            out["ray_serve"] = f"failed: {type(exc).__name__}: {exc}"
    return out


# -- Markdown --------------------------------------------------------------------------------------------------


def _ms(value: float) -> str:
    if value != value:  # nan
        return "—"
    return "∞ (some never finished)" if value == float("inf") else f"{value:,.1f}"


def section_batch(res: dict[str, Any]) -> str:
    title = "## 11. Dynamic batching: a torch MLP, unbatched and batched through gpuflex, and Ray Serve\n\n"
    if "error" in res:
        return title + f"Failed: {res['error']}\n"
    ray = res.get("ray_serve")
    rows_by = dict(res["rows"])
    if isinstance(ray, dict):
        rows_by["ray_serve"] = ray["rows"]
    header = ["offered load (req/s)", "server", "completed/s", "p50 latency (ms)", "p99 latency (ms)",
              "mean batch", "errors", "unfinished"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, rate in enumerate(res["rates"]):
        for key, label in SERVERS.items():
            if key not in rows_by:
                continue
            row = rows_by[key][i]
            lines.append(f"| {rate:,.0f} | {label} | {row['completed_per_s']:,.0f} | {_ms(row['p50_ms'])} | "
                         f"{_ms(row['p99_ms'])} | {row['mean_batch']:.1f} | {row['errors']} | {row['unfinished']} |")
    capacity = res["capacity"]
    cap_ray = ray.get("capacity") if isinstance(ray, dict) else None
    lines.append("| closed loop (capacity) | gpuflex unbatched / batched"
                 + (" / Ray Serve" if cap_ray else "") + f" | {capacity['unbatched']:,.0f} / "
                 f"{capacity['batched']:,.0f}" + (f" / {cap_ray:,.0f}" if cap_ray else "") + " | — | — | — | — | — |")
    top = len(res["rates"]) - 1
    ratio = rows_by["batched"][top]["completed_per_s"] / max(rows_by["unbatched"][top]["completed_per_s"], 1e-9)
    cfg = res["cfg"]
    if isinstance(ray, dict):
        ray_note = (f"Ray Serve {ray['version']}: one deployment, `num_replicas=1`, "
                    f"`@serve.batch(max_batch_size={res['max_batch_size']}, batch_wait_timeout_s="
                    f"{res['batch_wait_ms'] / 1000:g})`, `max_ongoing_requests={ray['max_ongoing_requests']}` "
                    "(so its router sends every request on to the replica: with 32 or 64 its router stalled or "
                    "collapsed on this machine once requests queued in it; see `_batch_serve.py`) and "
                    "`RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S="
                    f"{ray.get('queue_deadline_s')}` (default 0.1 s; Serve's own warning says to raise it when its "
                    "router's queue-length probes time out, as they did here), the batch "
                    "run on a thread (`asyncio.to_thread`, as gpuflex runs a sync batched function), called through "
                    "its `DeploymentHandle` from the driver (no HTTP proxy)"
                    + (", in its own network namespace" if ray.get("netns") else "")
                    + f"; measured after gpuflex's rows, once gpuflex's workers had stopped "
                    f"(Ray and Serve started in {ray['start_s']:.1f} s).")
    else:
        ray_note = f"Ray Serve: {ray}."
    lag = max(row["generator_lag_ms_p99"] for rows in rows_by.values() for row in rows)
    load = [row["load1"] for rows in rows_by.values() for row in rows]
    note = (f"\nOne model, `torch.nn.Sequential(Linear({res['model'].split('->')[0]}, "
            f"{res['model'].split('->')[1]}), GELU(), Linear(...))` with random weights (`torch.manual_seed(0)`), on "
            f"{res['device']} with `torch.set_num_threads({res['threads']})`, built once per worker; one request is "
            f"one float32 vector of {res['model'].split('->')[0]}. Every server has one worker: gpuflex's local "
            f"backend with `max_workers=1`, unbatched (`def f(item)`) and batched (`max_batch_size="
            f"{res['max_batch_size']}, batch_wait_ms={res['batch_wait_ms']:g}`, `def f(items: list)`), called with "
            f"`await f.aio(item)`. {ray_note} Load: an open-loop generator (`benchmarks/_batch_load.py`) offers "
            f"Poisson arrivals at a fixed rate for {cfg['duration']:g} s, whatever the server answers, then waits "
            f"{cfg['drain_s']:g} s at most for the rest; latency runs from each request's scheduled arrival, and a "
            "request still unfinished then counts as infinitely slow in the percentiles. The offered loads are "
            f"{', '.join(f'{m:g}×' for m in cfg['multipliers'])} the unbatched server's capacity, measured just "
            "before with 8 closed-loop callers (the last row: closed-loop capacity, 8 callers unbatched, "
            f"{2 * res['max_batch_size']} batched). completed/s = completions over the time from the first arrival "
            f"to the last completion. The generator launched 99% of requests within {lag:.1f} ms of their "
            f"scheduled time in every row; the 1-minute load average during the rows was {min(load):.1f} to "
            f"{max(load):.1f}. At the highest load batching completes {ratio:.1f}× the calls/s of the unbatched "
            "server.\n")
    return title + "\n".join(lines) + "\n" + note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny duration, low rates")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where the model runs (auto: cuda when torch sees a CUDA device)")
    parser.add_argument("--no-ray-serve", action="store_true", help="gpuflex's rows only")
    parser.add_argument("--rates", type=float, nargs="+", help="offered loads (req/s) instead of the calibrated")
    parser.add_argument("--output", type=Path, help="also write the Markdown section here")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    res = bench_batch(args.quick, not args.no_ray_serve, args.device, args.rates)
    markdown = section_batch(res)
    if args.output:
        args.output.write_text(markdown)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The serverless backend against the RunPod emulator (RunPod's unmodified worker loop on 127.0.0.1), side by side.

* **Fan-in** (issue 12 §2): N no-op calls on an endpoint with ``max_workers=2`` (both workers warm), as a burst of
  ``.spawn`` and as ``.map``, with gpuflex packing calls into jobs while the queue is long, against one RunPod job
  per call (the same backend with ``max_pack=1``). RunPod's worker loop pauses about a second between the jobs a
  worker takes (its ``JobScaler`` sleeps while busy), so one job per call runs ~2 calls/s on two workers.
* **Per-job client overhead**: one call at a time on a warm, idle worker (each call waits until the worker is back
  polling for work, so RunPod's one-second pause falls outside the measurement): ``raw`` is httpx doing
  ``POST /run`` then polling ``/status`` every 5 ms; ``gpuflex`` is a plain call of the endpoint. The difference of
  the medians is what the client adds per job.
* **In flight** (``--inflight N``): one worker is kept busy and N more calls are spawned; reported: the time to
  accept them and the client process's memory (RSS) after a few seconds of following them.
* **Hot reload**: save an edited endpoint file, then time until a call answers with the new code.

    python benchmarks/_runpod_bench.py [--calls 15] [--fanin 1000] [--baseline 200] [--inflight 10000] [--json F]
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gpuflex
from gpuflex.testing import _endpoints as ep

if TYPE_CHECKING:
    import httpx

# the workers import this module for its endpoints: what only the caller needs is imported where it is used

LOGS = Path("/tmp/gpuflex-runpod-bench-logs")
IDLE_GAP = 1.2  # seconds between sequential calls: the worker is back waiting for a job when the next one comes


def _idle() -> None:
    """Wait until the worker is idle again, by a random amount past a second, so that the calls do not lock into
    the phase of the worker loop's 0.1 s cycle (which would bias one side's pick-up delay)."""
    time.sleep(IDLE_GAP + random.random() / 10)


@gpuflex.endpoint(name="bench_noop", min_workers=2, max_workers=2)
def noop(x: Any = None) -> Any:
    return x


@gpuflex.endpoint(name="bench_hold", max_workers=1)
def hold(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


RELOAD_SOURCE = """
import gpuflex


@gpuflex.endpoint(name="bench_reload")
def version() -> str:
    return "{version}"
"""


def _server_seconds(body: dict[str, Any]) -> float:
    """What RunPod counts of a job: its time in the queue (the worker loop's pick-up included) and its run."""
    return (body["delayTime"] + body["executionTime"]) / 1000


def _raw_call(client: httpx.Client, endpoint_id: str, body: bytes) -> tuple[float, float]:
    started = time.perf_counter()
    job = client.post(f"/v2/{endpoint_id}/run", content=body, headers={"Content-Type": "application/json"}).json()
    while True:
        status = client.get(f"/v2/{endpoint_id}/status/{job['id']}").json()
        if status["status"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"):
            return time.perf_counter() - started, _server_seconds(status)
        time.sleep(0.005)


def _recording(backend: Any) -> list[dict[str, Any]]:
    """Keep the final answer of every job the backend follows (bench instrumentation: RunPod's own timing)."""
    api, seen = backend.api, []
    original = api.request

    async def request(*args: Any, **kwargs: Any) -> Any:
        response = await original(*args, **kwargs)
        if response.status_code == 200 and b'"delayTime"' in response.content:
            seen.append(response.json())
        return response

    api.request = request
    return seen


def _overhead(url: str, key: str, calls: int) -> dict[str, Any]:
    import httpx
    from gpuflex_runpod import RunPodBackend, RunPodConfig
    from gpuflex_runpod._protocol import b64encode_payload

    from gpuflex._envelope import encode_call
    from gpuflex.testing import backend_in_use

    config = RunPodConfig(api_url=url, api_key=key, delete_on_close=False)
    with backend_in_use(lambda: RunPodBackend(config)) as backend:
        assert isinstance(backend, RunPodBackend)
        ep.echo(0)  # deploy and warm a worker
        deployment = backend.deployed["conformance_echo"]
        request = {**deployment.request, "bundle": {"hash": deployment.request["bundle"]["hash"]},
                   "runtime": {"hash": deployment.request["runtime"]["hash"]},
                   "blocking": True, "calls": [b64encode_payload(encode_call(None, (1,), {}))]}
        body = json.dumps({"input": {"gpuflex": request}}).encode()
        endpoint_id = deployment.remote["id"]
        raw, flex, raw_own, flex_own = [], [], [], []
        answers = _recording(backend)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client:
            _raw_call(client, endpoint_id, body)
            for _ in range(calls):  # interleaved, so drift hits both sides alike
                _idle()
                wall, server = _raw_call(client, endpoint_id, body)
                raw.append(wall)
                raw_own.append(wall - server)
                _idle()
                answers.clear()
                started = time.perf_counter()
                ep.echo(1)
                wall = time.perf_counter() - started
                flex.append(wall)
                flex_own.append(wall - _server_seconds(answers[-1]))
    ms = 1000
    return {"raw_ms": statistics.median(raw) * ms, "flex_ms": statistics.median(flex) * ms,
            "raw_own_ms": statistics.median(raw_own) * ms, "flex_own_ms": statistics.median(flex_own) * ms,
            "calls": calls}


def _rate(count: int, how: str) -> float:
    started = time.perf_counter()
    if how == "map":
        got = list(noop.map(range(count)))
    else:
        jobs = [noop.spawn(i) for i in range(count)]
        got = [job.result(timeout=3600) for job in jobs]
    assert got == list(range(count)), "wrong results"
    return count / (time.perf_counter() - started)


def _fanin(url: str, key: str, count: int, baseline: int) -> dict[str, Any]:
    from gpuflex_runpod import RunPodBackend, RunPodConfig

    from gpuflex.testing import backend_in_use

    packed = RunPodConfig(api_url=url, api_key=key, delete_on_close=False)
    with backend_in_use(lambda: RunPodBackend(packed)):
        noop(0)  # deployed; both workers up (min_workers=2)
        time.sleep(3)
        spawn_rate = _rate(count, "spawn")
        map_rate = _rate(count, "map")
    alone = RunPodConfig(api_url=url, api_key=key, delete_on_close=False, max_pack=1)
    with backend_in_use(lambda: RunPodBackend(alone)):
        noop(0)  # adopts the same endpoint and its warm workers
        single_rate = _rate(baseline, "spawn")
    return {"count": count, "baseline_count": baseline, "spawn": spawn_rate, "map": map_rate, "single": single_rate}


def _reload_times(rounds: int) -> list[float]:
    import importlib
    import tempfile

    project = Path(tempfile.mkdtemp(prefix="gpuflex-rp-reload-"))
    (project / "pyproject.toml").write_text("[project]\nname = 'bench'\n")
    source = project / "bench_reload_app.py"
    source.write_text(RELOAD_SOURCE.format(version="v0"))
    sys.path.insert(0, str(project))
    module = importlib.import_module("bench_reload_app")
    assert module.version() == "v0"  # deployed, warm
    times = []
    for i in range(1, rounds + 1):
        source.write_text(RELOAD_SOURCE.format(version=f"v{i}"))
        started = time.perf_counter()
        gpuflex.reload()
        while module.version() != f"v{i}":
            pass
        times.append(time.perf_counter() - started)
    return times


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _in_flight(url: str, key: str, count: int) -> dict[str, Any]:
    from gpuflex_runpod import RunPodBackend, RunPodConfig

    from gpuflex.testing import backend_in_use

    config = RunPodConfig(api_url=url, api_key=key, run_rate=0)  # submission pace: the emulator's, not RunPod's
    with backend_in_use(lambda: RunPodBackend(config)):
        hold(0)  # deployed and warm
        blocker = hold.spawn(3600)
        before = _rss_mb()
        started = time.perf_counter()
        jobs = [hold.spawn(0) for _ in range(count)]
        while sum(job._handle is not None or job.done() for job in jobs) < count:
            time.sleep(0.05)
        submitted = time.perf_counter() - started
        failed = [job for job in jobs if job.done()]
        time.sleep(5)  # a few polling rounds
        queued = sum(job.status is gpuflex.JobStatus.QUEUED for job in jobs)
        after = _rss_mb()
        blocker.cancel()
        for job in jobs:
            job.cancel()
    gpuflex.shutdown()
    return {"count": count, "submitted_s": submitted, "queued": queued, "failed": len(failed),
            "failure": failed[0].reason if failed else None, "rss_before_mb": before, "rss_after_mb": after}


def report(res: dict[str, Any]) -> str:
    over, fan = res["overhead"], res["fanin"]
    lines = [
        f"RunPod emulator (gpuflex {gpuflex.__version__}, Python {sys.version.split()[0]})",
        f"  {fan['count']:,} no-op calls, max_workers=2, both workers warm:",
        f"    gpuflex, burst of .spawn (packed):  {fan['spawn']:7.1f} calls/s",
        f"    gpuflex, .map (packed):             {fan['map']:7.1f} calls/s",
        f"    one RunPod job per call ({fan['baseline_count']:,} calls): {fan['single']:7.1f} calls/s",
        f"    speed-up: {fan['spawn'] / fan['single']:.0f}x (spawn), {fan['map'] / fan['single']:.0f}x (map)",
        f"  {over['calls']} sequential calls on an idle warm worker (median wall time; beyond RunPod's own "
        "delayTime + executionTime):",
        f"    raw HTTP (/run + /status every 5 ms): {over['raw_ms']:6.1f} ms; {over['raw_own_ms']:5.1f} ms",
        f"    gpuflex serverless backend call:      {over['flex_ms']:6.1f} ms; {over['flex_own_ms']:5.1f} ms",
        f"    client overhead per job vs raw HTTP: {over['flex_own_ms'] - over['raw_own_ms']:+.1f} ms (wall: "
        f"{over['flex_ms'] - over['raw_ms']:+.1f} ms, which adds the worker loop's 0-100 ms pick-up of each job)",
    ]
    if res.get("reload"):
        reloads = res["reload"]
        median = statistics.median(reloads) * 1000
        lines.append(f"  hot reload, save -> first response from new code: median {median:.0f} ms "
                     f"(min {min(reloads) * 1000:.0f}, {len(reloads)} edits)")
    if res.get("inflight"):
        fl = res["inflight"]
        lines.append(f"  {fl['count']:,} calls in flight: accepted in {fl['submitted_s']:.1f} s, {fl['queued']:,} "
                     f"still queued, {fl['failed']} failed; client RSS {fl['rss_before_mb']:.0f} MB -> "
                     f"{fl['rss_after_mb']:.0f} MB")
        if fl["failure"]:
            lines.append(f"    e.g. {fl['failure']}")
    return "\n".join(lines)


TARGETS = {"speedup": 20.0, "overhead_ms": 5.0, "rss_mb": 150.0}  # issue 12 §2


def bench_runpod(cfg: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """This file in a child process (it starts its own emulators and RunPod workers); its numbers as a dict."""
    import importlib.util
    import tempfile

    if importlib.util.find_spec("runpod") is None or importlib.util.find_spec("gpuflex_runpod") is None:
        return {"skip": "gpuflex-runpod or the runpod SDK is not installed"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "runpod.json"
        command = [sys.executable, __file__, "--calls", str(cfg["runpod_calls"]), "--fanin", str(cfg["runpod_fanin"]),
                   "--baseline", str(cfg["runpod_baseline"]), "--inflight", str(cfg["runpod_inflight"]),
                   "--json", str(out)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              cwd=Path(__file__).resolve().parent.parent)
        if done.returncode != 0:
            return {"error": f"exit code {done.returncode}: {done.stderr[-1500:]}"}
        return {**json.loads(out.read_text()), "report": done.stdout.strip()}


def section_runpod(res: dict[str, Any]) -> str:
    title = "## 9. Serverless backend against the RunPod emulator\n\n"
    if "error" in res:
        return title + f"Failed: {res['error']}\n"
    if "skip" in res:
        return title + f"Not measured: {res['skip']}.\n"
    fan, over, flight = res["fanin"], res["overhead"], res.get("inflight")

    def verdict(ok: bool) -> str:
        return "**PASS**" if ok else "**MISS**"

    speedup = fan["spawn"] / fan["single"]
    overhead = over["flex_own_ms"] - over["raw_own_ms"]
    rows = [
        "| what | gpuflex | baseline | result | target (issue 12 §2) |",
        "|---|---|---|---|---|",
        f"| {fan['count']:,} no-op calls, `max_workers=2`, burst of `.spawn`, vs one RunPod job per call "
        f"({fan['baseline_count']:,} calls) | {fan['spawn']:.0f} calls/s | {fan['single']:.1f} calls/s | "
        f"{speedup:.0f}x | >= {TARGETS['speedup']:.0f}x: {verdict(speedup >= TARGETS['speedup'])} |",
        f"| the same through `.map` (in order, at most 64 calls in flight: the core's map window) | "
        f"{fan['map']:.0f} calls/s | {fan['single']:.1f} calls/s | {fan['map'] / fan['single']:.0f}x | "
        f">= {TARGETS['speedup']:.0f}x: {verdict(fan['map'] / fan['single'] >= TARGETS['speedup'])} |",
        f"| per-job client overhead vs raw HTTP (`/run` + `/status` every 5 ms), beyond RunPod's own "
        f"`delayTime` + `executionTime`, median of {over['calls']} | {over['flex_own_ms']:.1f} ms | "
        f"{over['raw_own_ms']:.1f} ms | {overhead:+.1f} ms | <= +{TARGETS['overhead_ms']:.0f} ms: "
        f"{verdict(overhead <= TARGETS['overhead_ms'])} |",
    ]
    if flight:
        rows.append(f"| {flight['count']:,} calls in flight, client RSS (fresh process; before: "
                    f"{flight['rss_before_mb']:.0f} MB) | {flight['rss_after_mb']:.0f} MB | 201 MB before packing | "
                    f"{flight['rss_after_mb'] - flight['rss_before_mb']:+.0f} MB | < {TARGETS['rss_mb']:.0f} MB: "
                    f"{verdict(flight['rss_after_mb'] < TARGETS['rss_mb'])} |")
    return title + (
        "The emulator (`gpuflex-runpod-emulator`) on 127.0.0.1 runs RunPod's unmodified worker loop, which pauses "
        "about a second between the jobs a worker takes; gpuflex packs calls into jobs while an endpoint's queue is "
        "long. The per-job overhead subtracts RunPod's own timing of each job (its queue time includes the worker "
        "loop's 0-100 ms pick-up, the same for both sides) from the wall time, so only the client and HTTP remain. "
        "Numbers of `benchmarks/_runpod_bench.py`:\n\n" + "\n".join(rows)
        + f"\n\n```text\n{res['report']}\n```\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=15, help="sequential calls for the per-job overhead")
    parser.add_argument("--fanin", type=int, default=1000, help="no-op calls for the fan-in rows")
    parser.add_argument("--baseline", type=int, default=200, help="calls for the one-job-per-call row")
    parser.add_argument("--reloads", type=int, default=5)
    parser.add_argument("--inflight", type=int, default=0, help="also measure N calls in flight (e.g. 10000)")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here too")
    parser.add_argument("--inflight-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from gpuflex_runpod import RunPodBackend, RunPodConfig
    from gpuflex_runpod.emulator import start_emulator

    from gpuflex.testing import backend_in_use

    key = secrets.token_hex(8)
    if args.inflight_only:
        with start_emulator(api_key=key, log_dir=LOGS) as url:
            print(json.dumps(_in_flight(url, key, args.inflight)))
        return
    res: dict[str, Any] = {}
    with start_emulator(api_key=key, log_dir=LOGS) as url:
        res["fanin"] = _fanin(url, key, args.fanin, args.baseline)
        res["overhead"] = _overhead(url, key, args.calls)
        config = RunPodConfig(api_url=url, api_key=key)
        with backend_in_use(lambda: RunPodBackend(config)):
            res["reload"] = _reload_times(args.reloads) if args.reloads else []
    if args.inflight:  # a fresh process (and emulator): its memory is the calls' alone
        done = subprocess.run([sys.executable, __file__, "--inflight-only", "--inflight", str(args.inflight)],
                              capture_output=True, text=True, check=True)
        res["inflight"] = json.loads(done.stdout.strip().splitlines()[-1])
    print(report(res))
    if args.json:
        args.json.write_text(json.dumps(res))


if __name__ == "__main__":
    main()

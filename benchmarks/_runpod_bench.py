"""The serverless backend against the RunPod emulator: per-job client overhead vs raw HTTP calls to it.

Both sides run the same job (the same gpuflex job input, on the same warm worker running RunPod's unmodified loop):
``raw`` is httpx doing ``POST /run`` then polling ``/status`` every 5 ms; ``gpuflex`` is a plain call of the
endpoint through the backend. The difference of the medians is what the client adds per job (encoding, polling
backoff, decoding). RunPod's worker loop itself waits about 1 s between back-to-back jobs on one worker (its
``JobScaler`` sleeps while busy), which both sides pay.

In flight (``--inflight N``): one worker is kept busy and N more calls are spawned, so all of them wait
IN_QUEUE while the client follows each one (its polling paced under RunPod's /status limit); reported: the time to
submit them and the client process's memory before and after.

Hot reload: save an edited endpoint file, then time until a call answers with the new code (a warm worker gets
the new bundle inline in the job, unpacks it once and re-imports the module in place).

    python benchmarks/_runpod_bench.py [--calls 15]
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time
from pathlib import Path

import httpx
from gpuflex_runpod import RunPodBackend, RunPodConfig
from gpuflex_runpod._protocol import b64encode_payload
from gpuflex_runpod.emulator import start_emulator

import gpuflex
from gpuflex._envelope import encode_call
from gpuflex.testing import _endpoints as ep
from gpuflex.testing import backend_in_use


def _raw_call(client: httpx.Client, endpoint_id: str, body: bytes) -> float:
    started = time.perf_counter()
    job = client.post(f"/v2/{endpoint_id}/run", content=body, headers={"Content-Type": "application/json"}).json()
    while True:
        status = client.get(f"/v2/{endpoint_id}/status/{job['id']}").json()
        if status["status"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"):
            return time.perf_counter() - started
        time.sleep(0.005)


RELOAD_SOURCE = """
import gpuflex


@gpuflex.endpoint(name="bench_reload")
def version() -> str:
    return "{version}"
"""


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


@gpuflex.endpoint(name="bench_hold", max_workers=1)
def hold(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _in_flight(url: str, key: str, count: int) -> None:
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
        if failed:
            print(f"  {len(failed)} submissions failed, e.g. {failed[0].reason}")
        time.sleep(5)  # a few polling rounds
        queued = sum(job.status is gpuflex.JobStatus.QUEUED for job in jobs)
        after = _rss_mb()
        print(f"  {count:,} calls in flight: submitted in {submitted:.1f} s ({count / submitted:.0f}/s), "
              f"{queued:,} still queued and followed; client RSS {before:.0f} MB -> {after:.0f} MB "
              f"({(after - before) * 1024 / count:.1f} KB per job in flight)")
        blocker.cancel()
    gpuflex.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--inflight", type=int, default=0, help="also measure N calls in flight (e.g. 10000)")
    args = parser.parse_args()
    key = secrets.token_hex(8)
    with start_emulator(api_key=key, log_dir=Path("/tmp/gpuflex-runpod-bench-logs")) as url:
        config = RunPodConfig(api_url=url, api_key=key, delete_on_close=False)
        with backend_in_use(lambda: RunPodBackend(config)) as backend:
            assert isinstance(backend, RunPodBackend)
            ep.echo(0)  # deploy and warm one worker
            deployment = backend.deployed["conformance_echo"]
            request = {**deployment.request, "bundle": {"hash": deployment.request["bundle"]["hash"]},
                       "blocking": True, "payload": b64encode_payload(encode_call(None, (1,), {}))}
            body = json.dumps({"input": {"gpuflex": request}}).encode()
            endpoint_id = deployment.remote["id"]
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client:
                _raw_call(client, endpoint_id, body)
                raw, flex = [], []
                for _ in range(args.calls):  # interleaved, so drift hits both sides alike
                    raw.append(_raw_call(client, endpoint_id, body))
                    started = time.perf_counter()
                    ep.echo(1)
                    flex.append(time.perf_counter() - started)
            reloads = _reload_times(5)
    raw_ms, flex_ms = statistics.median(raw) * 1000, statistics.median(flex) * 1000
    print(f"RunPod emulator, {args.calls} sequential calls each, one warm worker (gpuflex {gpuflex.__version__}, "
          f"Python {sys.version.split()[0]})")
    print(f"  raw HTTP (/run + /status every 5 ms): median {raw_ms:.1f} ms  (min {min(raw) * 1000:.1f})")
    print(f"  gpuflex serverless backend call:      median {flex_ms:.1f} ms  (min {min(flex) * 1000:.1f})")
    print(f"  client overhead per job (difference of medians): {flex_ms - raw_ms:+.1f} ms")
    print(f"  hot reload, save -> first response from new code: median {statistics.median(reloads) * 1000:.0f} ms "
          f"(min {min(reloads) * 1000:.0f}, {len(reloads)} edits)")
    if args.inflight:
        with start_emulator(api_key=key, log_dir=Path("/tmp/gpuflex-runpod-bench-logs")) as url:
            _in_flight(url, key, args.inflight)


if __name__ == "__main__":
    main()

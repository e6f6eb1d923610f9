"""The serverless backend against the RunPod emulator: per-job client overhead vs raw HTTP calls to it.

Both sides run the same job (the same gpuflex job input, on the same warm worker running RunPod's unmodified loop):
``raw`` is httpx doing ``POST /run`` then polling ``/status`` every 5 ms; ``gpuflex`` is a plain call of the
endpoint through the backend. The difference of the medians is what the client adds per job (encoding, polling
backoff, decoding). RunPod's worker loop itself waits about 1 s between back-to-back jobs on one worker (its
``JobScaler`` sleeps while busy), which both sides pay.

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=15)
    args = parser.parse_args()
    key = secrets.token_hex(8)
    with start_emulator(api_key=key, log_dir=Path("/tmp/gpuflex-runpod-bench-logs")) as url:
        config = RunPodConfig(api_url=url, api_key=key, delete_on_close=False)
        with backend_in_use(lambda: RunPodBackend(config)) as backend:
            assert isinstance(backend, RunPodBackend)
            ep.echo(0)  # deploy and warm one worker
            deployment = backend.deployed["conformance_echo"]
            request = {**deployment.request, "blocking": True,
                       "payload": b64encode_payload(encode_call(None, (1,), {}))}
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


if __name__ == "__main__":
    main()

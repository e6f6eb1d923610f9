"""A deployed endpoint on the RunPod emulator (code in moto's local S3): a plain HTTP ``/runsync`` call vs a gpuflex
client call of the same endpoint, on the same warm worker.

* ``plain``: httpx, ``POST /v2/<id>/runsync`` with ``{"input": {"name": ...}}``: JSON in, the worker validates it
  against the function's schema, the result comes back as JSON in the same response.
* ``gpuflex``: the endpoint called from Python with ``gpuflex.use("serverless", env=...)``: the pickled fast path
  (``/run``, then ``/status`` and ``/stream`` polled with backoff), running the deployed code.

Calls alternate between the two, after a warm-up of each. The endpoint takes 4 jobs at once (``concurrency=4``), so
RunPod's worker loop does not sleep between back-to-back jobs as it does at concurrency 1.

    python benchmarks/_runpod_deploy_bench.py [--calls 20]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from gpuflex_runpod.emulator import start_emulator

import gpuflex
from gpuflex._apps import load_app

sys.path.insert(0, str(Path(__file__).parents[1] / "backends" / "runpod" / "tests"))
from _s3server import start_s3  # noqa: E402

APP = '''
import gpuflex


@gpuflex.endpoint(name="bench_greet", max_workers=1, concurrency=4, timeout=60)
def greet(name: str) -> str:
    return f"hello {name}"
'''


def _stats(times: list[float]) -> str:
    ms = [t * 1000 for t in times]
    return f"median {statistics.median(ms):.1f} ms, min {min(ms):.1f} ms, max {max(ms):.1f} ms (n={len(ms)})"


def measure(calls: int = 20) -> dict[str, Any]:
    """Deploy the app on a fresh emulator (code in moto's S3), then time ``calls`` plain and gpuflex calls each;
    seconds."""
    key = secrets.token_hex(8)
    work = Path(tempfile.mkdtemp(prefix="gpuflex-deploy-bench-"))
    with start_emulator(api_key=key, log_dir=work / "logs") as url, start_s3(str(work / "moto.log")) as s3:
        assert s3.request("PUT", "/emuvol0001").status_code == 200
        project = work / "project"
        project.mkdir()
        (project / "app.py").write_text(APP)
        (project / "pyproject.toml").write_text(
            f'[tool.gpuflex.backends.serverless]\napi_url = "{url}"\nnetwork_volume_id = "emuvol0001"\n'
            f'store_endpoint_url = "{s3.url}"\nstore_region = "us-east-1"\n')
        env = {**os.environ, "RUNPOD_API_KEY": key, "RUNPOD_S3_ACCESS_KEY": s3.access_key,
               "RUNPOD_S3_SECRET_KEY": s3.secret_key, "GPUFLEX_HOME": str(work / "home")}
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "gpuflex.cli", "deploy", "app.py", "--backend", "serverless",
                               "--env", "bench", "--json"], cwd=project, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        deploy_seconds = time.perf_counter() - started
        (entry,) = json.loads(done.stdout)["endpoints"]
        os.environ.update(RUNPOD_API_KEY=key, RUNPOD_S3_ACCESS_KEY=s3.access_key, RUNPOD_S3_SECRET_KEY=s3.secret_key)
        loaded = load_app(project / "app.py")
        greet = loaded.endpoints["bench_greet"]
        client = httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=120)
        options = {"api_url": url, "network_volume_id": "emuvol0001", "store_endpoint_url": s3.url,
                   "store_region": "us-east-1", "env": "bench"}

        def plain() -> float:
            t = time.perf_counter()
            answer = client.post(entry["url"], json={"input": {"name": "http"}}).json()
            assert answer["output"] == "hello http", answer
            return time.perf_counter() - t

        def through_gpuflex() -> float:
            t = time.perf_counter()
            assert greet("py") == "hello py"
            return time.perf_counter() - t

        with gpuflex.use("serverless", **options):
            cold = plain()
            through_gpuflex()
            plains, clients = [], []
            for _ in range(calls):
                plains.append(plain())
                clients.append(through_gpuflex())
        subprocess.run([sys.executable, "-m", "gpuflex.cli", "teardown", "app.py", "--backend", "serverless",
                        "--env", "bench"], cwd=project, env=env, capture_output=True, text=True)
        gpuflex.shutdown()
    return {"deploy_s": deploy_seconds, "cold_s": cold, "plain_s": plains, "gpuflex_s": clients}


def section(res: dict[str, Any]) -> str:
    """The Markdown section of ``benchmarks/run.py`` (or why it was not measured)."""
    title = "## Deployed endpoint on the RunPod emulator: a plain HTTP call vs a gpuflex client call\n\n"
    if "error" in res or "skip" in res:
        return title + f"Not measured: {res.get('error') or res.get('skip')}\n"
    plain = statistics.median(res["plain_s"]) * 1000
    client = statistics.median(res["gpuflex_s"]) * 1000
    rows = [
        f"| warm call, median of {len(res['plain_s'])} (alternating) | {plain:.1f} ms | {client:.1f} ms | "
        f"{client / plain:.2f}x |",
        f"| first plain call (a cold worker fetches the release from S3) | {res['cold_s'] * 1000:.0f} ms | — | — |",
        f"| `gpuflex deploy` (plan + apply, a fresh endpoint, code to S3) | — | {res['deploy_s']:.2f} s | — |",
    ]
    return (title + "`gpuflex deploy` on the emulator with moto's S3 as the network volume's store; then the same "
            "warm worker (`concurrency=4`) answers a plain `POST /v2/<id>/runsync` with JSON input (httpx, the "
            "worker validates the JSON against the function's schema) and a gpuflex client call (pickled, `/run` "
            "then `/status`/`/stream`), alternating.\n\n"
            "| what | plain HTTP `/runsync` (JSON) | gpuflex client | gpuflex / plain |\n|---|---|---|---|\n"
            + "\n".join(rows) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    res = measure(args.calls)
    print(f"deploy (plan + apply, a fresh endpoint, code to S3): {res['deploy_s']:.2f} s")
    print(f"first plain call (cold worker, fetches the release from S3): {res['cold_s']:.2f} s")
    print(f"plain HTTP /runsync (JSON)      : {_stats(res['plain_s'])}")
    print(f"gpuflex client (pickled, /run)  : {_stats(res['gpuflex_s'])}")
    print(section(res))


if __name__ == "__main__":
    main()

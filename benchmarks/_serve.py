"""The dev server, measured: HTTP overhead over a direct Python call, and save -> first response from new code.

The server is the real ``gpuflex serve`` (uvicorn) in a subprocess on 127.0.0.1, driven with a keep-alive httpx
client; the app lives in a temporary project so the benchmark can edit it.
"""

from __future__ import annotations

import importlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gpuflex

APP = '''
import gpuflex


@gpuflex.endpoint(name="serve_bench_echo")
def echo(text: str) -> str:
    return "{version}:" + text
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


TORCH_APP = '''
import torch  # imported once by the worker; a reload must not pay for it again

import gpuflex


@gpuflex.endpoint(name="serve_bench_echo")
def echo(text: str) -> str:
    return "{version}:" + text + str(int(torch.ones(1).item()))
'''


def bench_serve(calls: int, reloads: int) -> dict[str, Any]:
    out = _bench_serve(APP, calls, reloads)
    try:
        import torch  # noqa: F401
    except ImportError:
        out["torch_reload"] = None
    else:
        out["torch_reload"] = _bench_serve(TORCH_APP, 10, reloads)["reload"]
    return out


def _bench_serve(template: str, calls: int, reloads: int) -> dict[str, Any]:
    import httpx

    project = Path(tempfile.mkdtemp(prefix="gpuflex-serve-bench-"))
    (project / "pyproject.toml").write_text("[project]\nname = 'serve-bench'\n")
    app = project / "serve_bench_app.py"
    app.write_text(template.format(version="v0"))
    port = _free_port()
    log = (project / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "gpuflex.cli", "serve", str(app), "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, cwd=project, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"gpuflex serve did not start: {(project / 'server.log').read_text()[-2000:]}")
            time.sleep(0.05)

        def post(text: str) -> str:
            response = client.post("/serve_bench_echo", json={"text": text})
            response.raise_for_status()
            return str(response.json())

        for _ in range(20):
            post("warm")
        http = []
        for _ in range(calls):
            t0 = time.perf_counter()
            post("x")
            http.append(time.perf_counter() - t0)

        reload = []
        for i in range(1, reloads + 1):
            time.sleep(0.3)  # let the watcher settle between saves
            app.write_text(template.format(version=f"v{i}"))
            t0 = time.perf_counter()
            while not post("x").startswith(f"v{i}:"):
                if time.perf_counter() - t0 > 30:
                    raise RuntimeError("the new code never answered")
                time.sleep(0.002)
            reload.append(time.perf_counter() - t0)
    finally:
        client.close()
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()

    # the same endpoint called from Python in this process, for the overhead ratio
    sys.path.insert(0, str(project))
    try:
        module = importlib.import_module("serve_bench_app")
        for _ in range(20):
            module.echo("warm")
        direct = []
        for _ in range(calls):
            t0 = time.perf_counter()
            module.echo("x")
            direct.append(time.perf_counter() - t0)
    finally:
        gpuflex.shutdown()
        sys.path.remove(str(project))
        sys.modules.pop("serve_bench_app", None)
    return {"http": http, "direct": direct, "reload": reload}


def section_serve(res: dict[str, Any]) -> str:
    title = "## 7. Dev server: HTTP overhead, and save -> first response from the new code\n"
    if "error" in res:
        return title + f"\nFailed: {res['error']}\n"
    http, direct = statistics.median(res["http"]) * 1e3, statistics.median(res["direct"]) * 1e3
    reload = statistics.median(res["reload"])
    verdict = "PASS" if reload < 0.3 else "MISS"
    torch_row = "| save -> first new response, endpoint module imports torch | not measured (torch missing) | — | — " \
        "| < 100 ms | — |"
    if res.get("torch_reload"):
        torch_reload = statistics.median(res["torch_reload"])
        torch_row = (f"| save -> first new response, endpoint module imports torch, median of "
                     f"{len(res['torch_reload'])} | {torch_reload * 1000:.0f} ms | — | — | < 100 ms | "
                     f"{'PASS' if torch_reload < 0.1 else 'MISS'} |")
    return "\n".join([
        title,
        "`gpuflex serve` (uvicorn, 127.0.0.1) driven by a keep-alive httpx client, against the same endpoint called "
        "from Python. The reload row times from writing the file to the first HTTP response that carries the new "
        "code (the watcher notices the save, re-imports the app, the worker loads the new bundle in place).\n",
        "| measurement | gpuflex serve | direct Python call | ratio | target | result |",
        "|---|---|---|---|---|---|",
        f"| round trip, median of {len(res['http'])} | {http:.2f} ms | {direct:.2f} ms | {http / direct:.1f}x "
        "| — | — |",
        f"| save -> first new response, median of {len(res['reload'])} | {reload * 1000:.0f} ms | — | — | < 300 ms | "
        f"{verdict} |",
        torch_row,
        "",
    ])

"""An offline emulator of RunPod Serverless that runs the real ``runpod`` worker loop.

It serves RunPod's job API (``/v2/<endpoint>/run``, ``runsync``, ``status``, ``stream``, ``cancel``, ``retry``,
``health``, ``purge-queue``), its GraphQL control plane (graphql-core over a mirror of RunPod's schema:
``schema.graphql``), and the webhooks RunPod's worker loop polls (job-take, job-done, job-stream, job-stop, ping).
It starts **unmodified** worker processes (``runpod.serverless.start``) per endpoint according to workersMin/Max,
idleTimeout and the scaler, kills them on scale-down, cancel and execution timeout, and fails a job whose worker
dies.

Command line::

    gpuflex-runpod-emulator --port 8765 --api-key dev-key       # or: python -m gpuflex_runpod.emulator ...

then point the backend at it: ``gpuflex.use("serverless", api_url="http://127.0.0.1:8765", api_key="dev-key")``.
From Python (tests)::

    with start_emulator(api_key="k") as url: ...
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shlex
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn

from ._app import build_app
from ._emulator import Emulator

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import FrameType

__all__ = ["Emulator", "build_app", "main", "start_emulator"]

READY_LINE = "gpuflex RunPod emulator listening on "
DEFAULT_PACKAGE_CACHE = Path.home() / ".cache" / "gpuflex" / "runpod-emulator" / "uv"


class _EmulatorServer(uvicorn.Server):
    """uvicorn, plus: on a stop signal, held long polls answer at once so the shutdown is clean."""

    def __init__(self, config: uvicorn.Config, emulator: Emulator) -> None:
        super().__init__(config)
        self.emulator = emulator

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.emulator.closing = True
        super().handle_exit(sig, frame)


def serve(*, host: str, port: int, api_key: str, log_dir: Path, worker_command: list[str] | None,
          images: dict[str, Path] | None = None, package_cache: Path | None = None) -> None:
    """Bind, print the ready line with the real port, and serve until interrupted."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)  # accept connections from the moment the ready line is printed
    base_url = f"http://{host}:{sock.getsockname()[1]}"
    emulator = Emulator(api_key=api_key, base_url=base_url, log_dir=log_dir, worker_command=worker_command,
                        images=images, package_cache=package_cache)
    config = uvicorn.Config(build_app(emulator), log_level="warning", timeout_graceful_shutdown=1,
                            timeout_keep_alive=30)
    server = _EmulatorServer(config, emulator)
    print(f"{READY_LINE}{base_url} (worker logs in {log_dir})", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        emulator.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gpuflex-runpod-emulator", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (0 picks a free one; default 8765)")
    parser.add_argument("--api-key", default=os.environ.get("RUNPOD_EMULATOR_API_KEY"),
                        help="the key clients must send (default: $RUNPOD_EMULATOR_API_KEY, else a random one, "
                             "printed once)")
    parser.add_argument("--log-dir", type=Path, default=None, help="where worker logs go (default: a temp dir)")
    parser.add_argument("--worker-command", default=None,
                        help="the command a worker runs when the template has no dockerArgs (the image's CMD; "
                             "default: python -m gpuflex_runpod.worker with the emulator's own Python)")
    parser.add_argument("--image", action="append", default=[], metavar="NAME=DIR",
                        help="an image workers may use: DIR/bin (or DIR) is their PATH (repeatable)")
    parser.add_argument("--package-cache", type=Path, default=DEFAULT_PACKAGE_CACHE,
                        help=f"the uv cache workers install packages through (default {DEFAULT_PACKAGE_CACHE})")
    args = parser.parse_args(argv)
    images = {}
    for item in args.image:
        name, sep, where = item.partition("=")
        if not sep:
            parser.error(f"--image takes NAME=DIR, not {item!r}")
        images[name] = Path(where)
    api_key = args.api_key
    if not api_key:
        api_key = secrets.token_urlsafe(18)
        print(f"API key for this emulator: {api_key}", flush=True)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="gpuflex-runpod-emulator-"))
    command = shlex.split(args.worker_command) if args.worker_command else None
    try:
        serve(host=args.host, port=args.port, api_key=api_key, log_dir=log_dir, worker_command=command,
              images=images, package_cache=args.package_cache)
    except KeyboardInterrupt:
        pass


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, get SIGKILL when the process that started the emulator dies (its
    workers follow), so a killed test run leaves nothing behind."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL


@contextlib.contextmanager
def start_emulator(*, api_key: str, log_dir: Path | None = None, env: dict[str, str] | None = None,
                   images: dict[str, Path] | None = None, package_cache: Path | None = None) -> Iterator[str]:
    """Run the emulator in a child process on a free loopback port; yield its base URL; stop it afterwards.
    ``env`` is the emulator's own environment (its workers get a fresh one)."""
    command = [sys.executable, "-m", "gpuflex_runpod.emulator", "--port", "0", "--api-key", api_key]
    if log_dir is not None:
        command += ["--log-dir", str(log_dir)]
    if package_cache is not None:
        command += ["--package-cache", str(package_cache)]
    for name, where in (images or {}).items():
        command += ["--image", f"{name}={where}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
                               start_new_session=True, preexec_fn=_die_with_parent)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if READY_LINE not in line:
            raise RuntimeError(f"the RunPod emulator did not start (exit code {process.poll()}): {line!r}")
        yield line.split(READY_LINE, 1)[1].split()[0]
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

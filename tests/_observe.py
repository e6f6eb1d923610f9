"""Helpers of the tests of what gpuflex observes (test_metrics, test_dashboard): the dev server run for real in a
subprocess (test_server uses it too), and headless Chromium driven over the DevTools protocol.

Test files load this module by path under its own name (see tests/_gpuflex_app.py for why).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "tests" / "apps" / "observe_app.py"
START_TIMEOUT = 60.0


def project(tmp_path: Path, hourly_rate: float = 3600.0) -> Path:
    """A project holding the observe app, with the local backend at ``hourly_rate`` (default $1 a second)."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "pyproject.toml").write_text(f"[tool.gpuflex.backends.local]\nhourly_rate = {hourly_rate}\n")
    shutil.copy(APP, root / "observe_app.py")
    return root


class Server:
    """``gpuflex serve APP`` on a free port of 127.0.0.1, from ``cwd`` (whose project file it reads), its state in
    ``cwd/home`` unless ``env`` names a ``GPUFLEX_HOME``; ``reload`` watches the files (off by default)."""

    def __init__(self, app: Path, log: Path, *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None,
                 token: str | None = None, reload: bool = False) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._log_file = log.open("w")
        clean = {k: v for k, v in os.environ.items()
                 if k not in ("GPUFLEX_TOKEN", "GPUFLEX_BACKEND", "GPUFLEX_MAX_COST", "GPUFLEX_TRACING")}
        full_env = {**clean, "PYTHONUNBUFFERED": "1", "GPUFLEX_HOME": str(cwd / "home"), **(env or {})}
        command = [sys.executable, "-m", "gpuflex.cli", "serve", str(app), "--port", str(self.port),
                   *([] if reload else ["--no-reload"]), *(["--token", token] if token else []), *args]
        self.proc = subprocess.Popen(command, stdout=self._log_file, stderr=subprocess.STDOUT, env=full_env,
                                     cwd=cwd)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=self.url, timeout=60, headers=headers)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if self.client.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"server did not start:\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        return self.log.read_text()

    def wait_job(self, job_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            job = self.client.get(f"/jobs/{job_id}").json()
            if job["status"] not in ("QUEUED", "RUNNING"):
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} did not finish: {job}")

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()


def chromium_binary() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def _high(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class Browser:
    """Headless Chromium over ``--remote-debugging-pipe``: the DevTools protocol as NUL-terminated JSON on file
    descriptors 3 (commands in) and 4 (answers and events out). One page; ``evaluate`` runs JavaScript in it."""

    def __init__(self, binary: str, profile: Path) -> None:
        commands_in, self._commands = os.pipe()
        self._answers, answers_out = os.pipe()
        # above 3 and 4, which the child gets them as: moving one there cannot close the other
        commands_in, answers_out = (_high(fd) for fd in (commands_in, answers_out))
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                "--disable-extensions", f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        def protocol_fds() -> None:  # in the child, before exec: the pipes become its fds 3 and 4
            os.dup2(commands_in, 3)
            os.dup2(answers_out, 4)

        self.proc = subprocess.Popen([binary, *args], pass_fds=(3, 4), preexec_fn=protocol_fds,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(commands_in)
        os.close(answers_out)
        self._ids = iter(range(1, 1_000_000))
        self._waiting: dict[int, Future[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def _read(self) -> None:
        buffer = b""
        with os.fdopen(self._answers, "rb", buffering=0) as answers:
            while chunk := answers.read(65536):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for raw in messages:
                    message = json.loads(raw)
                    with self._lock:
                        future = self._waiting.pop(message.get("id", -1), None)
                    if future is not None:
                        future.set_result(message)

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        future: Future[dict[str, Any]] = Future()
        with self._lock:
            self._waiting[message_id] = future
        message = {"id": message_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        answer = future.result(timeout=30)
        if "error" in answer:
            raise AssertionError(f"{method}: {answer['error']}")
        return answer["result"]

    def goto(self, url: str) -> None:
        self.send("Page.navigate", self.session, url=url)

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", self.session, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, limit: float = 60.0) -> Any:
        """Evaluate ``expression`` until it is truthy; return its value."""
        deadline = time.monotonic() + limit
        while True:
            try:
                value = self.evaluate(expression)
            except AssertionError:
                value = None  # the page is navigating: no context to evaluate in yet
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting for {what}; the page shows:\n"
                                     f"{self.evaluate('document.body && document.body.innerText')}")
            time.sleep(0.05)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._commands)

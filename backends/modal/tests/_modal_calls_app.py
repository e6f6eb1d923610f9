"""Endpoints the Modal call tests run in the fake's containers (processes of their own). They leave marks in a
directory the test reads (``MC_DIR``, passed in each endpoint's env), named by a tag unique to each test."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import gpuflex

DIR = os.environ.get("MC_DIR") or str(Path(tempfile.gettempdir()) / "gpuflex-modal-calls")
ENV = {"MC_DIR": DIR}


def mark(name: str, text: str = "") -> None:
    directory = Path(os.environ["MC_DIR"])
    directory.mkdir(parents=True, exist_ok=True)  # in a remote container, the caller's directory is not there
    (directory / name).write_text(text)


def wait_for(name: str, limit: float = 60.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if Path(os.environ["MC_DIR"], name).exists():
            return True
        time.sleep(0.02)
    return False


@gpuflex.endpoint(name="mc_slow_setup", timeout=1, env=ENV)
class SlowSetup:
    """setup() takes three times the call's timeout."""

    def setup(self) -> None:
        time.sleep(3)
        mark("setup-done", repr(time.time()))

    def __call__(self, value: str) -> str:
        return value


@gpuflex.endpoint(name="mc_slow_async", env=ENV)
class SlowAsync:
    def setup(self) -> None:
        time.sleep(3)

    async def __call__(self, tag: str) -> str:
        return await async_wait.__gpuflex_raw__(tag)


@gpuflex.endpoint(name="mc_never_starts", env=ENV)
class NeverStarts:
    def setup(self) -> None:
        time.sleep(120)

    def __call__(self) -> str:
        return "unreachable"


@gpuflex.endpoint(name="mc_bad_setup", env=ENV)
class BadSetup:
    def setup(self) -> None:
        raise LookupError("setup failed on purpose")

    def __call__(self) -> str:
        return "unreachable"


@gpuflex.endpoint(name="mc_async_wait", env=ENV)
async def async_wait(tag: str) -> str:
    mark(f"{tag}-started", str(os.getpid()))
    try:
        await asyncio.sleep(120)
    except asyncio.CancelledError:
        mark(f"{tag}-cancelled")
        raise
    return "finished"


@gpuflex.endpoint(name="mc_sync_wait", env=ENV)
def sync_wait(tag: str, seconds: float = 120) -> int:
    mark(f"{tag}-started", str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


@gpuflex.endpoint(name="mc_pid", env=ENV)
def pid() -> int:
    return os.getpid()


@gpuflex.endpoint(name="mc_flaky", retries=2, env=ENV)
def flaky(tag: str) -> int:
    """Raises on its first two attempts; answers how many attempts it took."""
    attempts = len(list(Path(os.environ["MC_DIR"]).glob(f"{tag}-attempt-*"))) + 1
    mark(f"{tag}-attempt-{attempts}")
    if attempts < 3:
        raise ValueError(f"attempt {attempts} fails on purpose")
    return attempts


@gpuflex.endpoint(name="mc_die_once", env=ENV)
def die_once(tag: str) -> int:
    if not Path(os.environ["MC_DIR"], f"{tag}-died").exists():
        mark(f"{tag}-died", str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


@gpuflex.endpoint(name="mc_die_always", retries=1, env=ENV)
def die_always() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@gpuflex.endpoint(name="mc_talk", env=ENV)
def talk(tag: str, wait: float = 60.0) -> str:
    """Prints, writes to stderr and logs, then waits (up to ``wait`` s) for the caller to have seen it."""
    print(f"{tag} hello from the worker", flush=True)
    print(f"{tag} a line on stderr", file=sys.stderr, flush=True)
    logging.getLogger("user-code").warning("%s a log record", tag)
    return "seen" if wait_for(f"{tag}-gate", wait) else "not seen"


@gpuflex.endpoint(name="embed-v1", env=ENV)
def embed_dash() -> str:
    return "dash"


@gpuflex.endpoint(name="embed_v1", env=ENV)
def embed_underscore() -> str:
    return "underscore"


@gpuflex.endpoint(name="café", env=ENV)
def cafe() -> str:
    return "café"


@gpuflex.endpoint(name="mc_echo_bytes", env=ENV)
def echo_bytes(data: bytes) -> bytes:
    return data


@gpuflex.endpoint(name="mc_any_gpu", gpu="any", env=ENV)
def any_gpu() -> int:
    return os.getpid()


@gpuflex.endpoint(name="mc_bad_build", dependencies=("gpuflex-no-such-package-4c1d",), env=ENV)
def bad_build() -> None:
    """Its image cannot be built: the dependency does not exist."""

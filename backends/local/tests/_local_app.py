"""Endpoints for the local backend's own tests. Module-level, so worker processes import them by reference.

Only the standard library and gpuflex at import time: numpy is imported inside the functions that need it.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import gpuflex


def _wait_for(path: str, limit: float = 60.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return True
        time.sleep(0.01)
    return False


@gpuflex.endpoint(name="local_gpu_env", gpu="any")
def gpu_env(x: int) -> dict[str, Any]:
    return {"square": x * x, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}


@gpuflex.endpoint(name="local_missing_dep", dependencies=["definitely-not-installed-pkg==1.0"])
def missing_dep() -> str:
    return "unreachable"


@gpuflex.endpoint(name="local_satisfied_dep", dependencies=["attrs"])
def satisfied_dep() -> str:
    import attrs

    return attrs.__name__


@gpuflex.endpoint(name="local_wrong_version", dependencies=["attrs<1"])
def wrong_version() -> str:
    return "unreachable"


@gpuflex.endpoint(name="local_env_and_secret", env={"GPUFLEX_TEST_GREETING": "hello-from-env"},
                  secrets=["GPUFLEX_TEST_SECRET"])
def env_and_secret() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in ("GPUFLEX_TEST_GREETING", "GPUFLEX_TEST_SECRET")}


@gpuflex.endpoint(name="local_missing_secret", secrets=["GPUFLEX_TEST_SECRET", "GPUFLEX_TEST_ABSENT_SECRET"])
def missing_secret() -> str:
    return "unreachable"


def _report_then_sleep(pid_file: str, seconds: float) -> int:
    """The first attempt writes its pid and sleeps ``seconds``; an attempt that finds the file returns at once."""
    if not os.path.exists(pid_file):
        tmp = f"{pid_file}.tmp"
        Path(tmp).write_text(str(os.getpid()))
        os.replace(tmp, pid_file)
        time.sleep(seconds)
    return os.getpid()


@gpuflex.endpoint(name="local_killed_retry", retries=1)
def killed_retry(pid_file: str, seconds: float) -> int:
    return _report_then_sleep(pid_file, seconds)


@gpuflex.endpoint(name="local_killed_no_retry", retries=0, max_workers=1)
def killed_no_retry(pid_file: str, seconds: float) -> int:
    return _report_then_sleep(pid_file, seconds)


@gpuflex.endpoint(name="local_array_echo")
def array_echo(array: Any) -> Any:
    return array


@gpuflex.endpoint(name="local_array_info")
def array_info(array: Any) -> dict[str, Any]:
    return {"shm": os.environ.get("GPUFLEX_WORKER_SHM"), "sum": float(array.sum(dtype="float64")),
            "shape": array.shape, "dtype": str(array.dtype)}


@gpuflex.endpoint(name="local_array_hold", max_workers=1)
def array_hold(array: Any, pid_file: str, seconds: float) -> float:
    """Holds its argument (a view of the caller's shared memory) while it sleeps."""
    _report_then_sleep(pid_file, seconds)
    return float(array[0])


@gpuflex.endpoint(name="local_warm", min_workers=1, max_workers=1)
def warm() -> int:
    return os.getpid()


@gpuflex.endpoint(name="local_wave", concurrency=3, max_workers=2)
async def wave(seconds: float) -> tuple[int, float, float]:
    started = time.time()
    await asyncio.sleep(seconds)
    return os.getpid(), started, time.time()


@gpuflex.endpoint(name="local_square", max_workers=2)
def square(x: int) -> int:
    return x * x


@gpuflex.endpoint(name="local_gated", max_workers=1)
def gated(started: str | None, gate: str | None, ran: str | None = None) -> int:
    """Touch ``started`` (and ``ran``), then wait for ``gate`` to exist; return the worker's pid."""
    if ran:
        Path(ran).touch()
    if started:
        Path(started).touch()
    if gate:
        _wait_for(gate)
    return os.getpid()


@gpuflex.endpoint(name="local_model")
class Model:
    def setup(self) -> None:
        self.ready = True

    def predict(self, x: int) -> int:
        return x + 1


@gpuflex.endpoint(name="local_priced")
def priced(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@gpuflex.endpoint(name="local_where")
def where() -> dict[str, Any]:
    return {"prefix": sys.prefix, "executable": sys.executable, "pid": os.getpid()}


@gpuflex.endpoint(name="local_isolated_six", dependencies=["six==1.16.0"])
def isolated_six() -> dict[str, Any]:
    import importlib.util

    import six

    return {"six": six.__version__, "prefix": sys.prefix, "six_file": six.__file__, "pid": os.getpid(),
            "has_numpy": importlib.util.find_spec("numpy") is not None}

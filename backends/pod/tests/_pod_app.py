"""Endpoints of the pod backend's own tests (imported by reference from the bundle on the hosts)."""

from __future__ import annotations

import os
import time

import gpuflex


@gpuflex.endpoint(name="pod_where", max_workers=2)
def where(seconds: float = 0.0) -> dict:
    time.sleep(seconds)
    return {"pid": os.getpid(), "cwd": os.getcwd(), "secret": os.environ.get("POD_TEST_SECRET"),
            "env": os.environ.get("POD_TEST_ENV"), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}


@gpuflex.endpoint(name="pod_slow_retry", retries=1)
def slow_retry(seconds: float, marker: str) -> dict:
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return {"pid": os.getpid()}


@gpuflex.endpoint(name="pod_slow")
def slow(seconds: float, marker: str) -> int:
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return os.getpid()


@gpuflex.endpoint(name="pod_spread", max_workers=2, idle_timeout=1)
def spread(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@gpuflex.endpoint(name="pod_secret", secrets=("POD_TEST_SECRET",), env={"POD_TEST_ENV": "from-env"})
def secret() -> dict:
    return {"secret": os.environ.get("POD_TEST_SECRET"), "env": os.environ.get("POD_TEST_ENV")}


@gpuflex.endpoint(name="pod_with_dependency", dependencies=("six==1.16.0",))
def with_dependency() -> dict:
    import sys

    import six

    return {"six": six.__version__, "python": sys.executable}


@gpuflex.endpoint(name="pod_gpu", gpu="H100", max_workers=3, idle_timeout=5)
def on_gpu(seconds: float) -> str | None:
    time.sleep(seconds)
    return os.environ.get("CUDA_VISIBLE_DEVICES")


@gpuflex.endpoint(name="pod_wrong_gpu", gpu="A100-80GB")
def on_wrong_gpu() -> str:
    return "never"


@gpuflex.endpoint(name="pod_environ")
def environ() -> dict:
    import sys

    keys = ("SSH_AUTH_SOCK", "POD_HOST_VAR", "CUDA_DEVICE_ORDER", "CUDA_VISIBLE_DEVICES")
    return {"env": {k: os.environ.get(k) for k in keys}, "python": sys.version.split()[0],
            "executable": sys.executable, "pid": os.getpid()}


@gpuflex.endpoint(name="pod_a100_80", gpu="A100-80GB")
def on_a100_80() -> tuple:
    return os.environ["CUDA_VISIBLE_DEVICES"], os.environ.get("CUDA_DEVICE_ORDER")


@gpuflex.endpoint(name="pod_4090", gpu="RTX4090", max_workers=2)
def on_4090() -> str:
    return os.environ["CUDA_VISIBLE_DEVICES"]


@gpuflex.endpoint(name="pod_run_tool")
def run_tool() -> str:
    import subprocess
    from pathlib import Path

    tool = Path(__file__).with_name("_pod_tool.sh")
    return subprocess.run([str(tool)], capture_output=True, text=True, check=True).stdout.strip()


@gpuflex.endpoint(name="pod_many", max_workers=12, idle_timeout=30)
def many(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@gpuflex.endpoint(name="pod_noisy")
def noisy() -> str:
    import sys

    print("printed on the pod")
    print("to stderr on the pod", file=sys.stderr)
    os.write(2, b"straight to file descriptor 2\n")  # what a C library or a child process writes
    return "done"

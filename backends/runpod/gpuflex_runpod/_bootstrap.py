"""What a RunPod template needs so that workers start from a public image with no gpuflex in it: the image, the
POSIX-sh start command (``dockerArgs``) that runs :mod:`._boot`, the environment it reads, and the runtime (gpuflex's
own package plus this backend's worker modules) that rides in the jobs by hash."""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import io
import json
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import cloudpickle

import gpuflex

if TYPE_CHECKING:
    from gpuflex import EndpointSpec

    from ._config import RunPodConfig

__all__ = ["boot_env", "image_for", "runtime_ref", "start_command"]

#: RunPod's own images: Ubuntu 22.04 with Python 3.9 to 3.13 side by side (deadsnakes), pip and uv, from
#: github.com/runpod/containers (official-templates/base). The PyTorch one adds torch 2.8.0 (CUDA 12.8) for its
#: default ``python`` (3.12); other minors install torch themselves (``dependencies``).
DEFAULT_GPU_IMAGE = "runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2204"
DEFAULT_CPU_IMAGE = "runpod/base:1.0.2-ubuntu2204"
IMAGE_PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13")
RUNPOD_SDK = "runpod==1.12.0"
_BOOT = Path(__file__).with_name("_boot.py")
_WORKER_MODULES = ("worker.py", "_calls.py", "_protocol.py", "_jsonjobs.py", "_boot.py")  # worker: _boot.unpack
_CPU_FLAVOUR = re.compile(r"cpu\d+[a-z]-(\d+)-(\d+)")


def python_version() -> str:
    import sys

    return f"{sys.version_info.major}.{sys.version_info.minor}"


def image_for(spec: EndpointSpec, config: RunPodConfig) -> str:
    return config.image or (DEFAULT_GPU_IMAGE if spec.gpu is not None else DEFAULT_CPU_IMAGE)


def start_command(python: str) -> str:
    """The template's ``dockerArgs``: find a Python, decode the boot script from ``$GPUFLEX_BOOT``, run it. One
    ``sh -c '...'`` with no single quote inside (RunPod lexes dockerArgs like a shell)."""
    script = (
        f'for p in python{python} python3 python; do command -v "$p" >/dev/null 2>&1 && break; p=""; done; '
        'if [ -z "$p" ]; then echo "[gpuflex] this image has no python" >&2; exit 1; fi; '
        'f="${TMPDIR:-/tmp}/gpuflex-boot-$$.py"; '
        'printf %s "$GPUFLEX_BOOT" | "$p" -m base64 -d | "$p" -m gzip -d > "$f" && exec "$p" "$f"'
    )
    assert "'" not in script
    return f"sh -c '{script}'"


@functools.lru_cache(maxsize=1)
def boot_source() -> str:
    """The boot script, gzipped and base64-encoded for the template's environment (deterministic bytes)."""
    return base64.b64encode(gzip.compress(_BOOT.read_bytes(), mtime=0)).decode("ascii")


def runtime_requirements() -> list[str]:
    """What the runtime imports besides the standard library; cloudpickle pinned to the caller's version, since
    functions held by value must unpickle on the worker."""
    return [RUNPOD_SDK, f"cloudpickle=={cloudpickle.__version__}", "attrs>=23.1", "anyio>=4.4", "pluggy>=1.5",
            "packaging>=23"]


@functools.lru_cache(maxsize=1)
def runtime_ref() -> dict[str, str]:
    """gpuflex's package and this backend's worker modules as one zip, by hash: the jobs carry it to workers that
    lack it, so workers run exactly the caller's gpuflex, released or not."""
    files: list[tuple[str, bytes]] = []
    package = Path(gpuflex.__file__).parent
    for path in sorted(package.rglob("*.py")):
        if "__pycache__" not in path.parts:
            files.append((f"gpuflex/{path.relative_to(package).as_posix()}", path.read_bytes()))
    here = Path(__file__).parent
    files.append(("gpuflex_runpod/__init__.py", b'"""gpuflex\'s RunPod worker modules (the runtime bundle)."""\n'))
    files += [(f"gpuflex_runpod/{name}", (here / name).read_bytes()) for name in _WORKER_MODULES]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    digest = hashlib.sha256(b"".join(hashlib.sha256(n.encode() + d).digest() for n, d in files)).hexdigest()[:16]
    return {"hash": f"{gpuflex.__version__}-{digest}", "zip": base64.b64encode(out.getvalue()).decode("ascii")}


def _min_memory_gb(flavour: str) -> str | None:
    """RunPod's SDK refuses to start with under ``RUNPOD_MIN_MEMORY_GB`` (default 4) available; a CPU flavour with
    4 GB or less never has that much free, so its workers would crash at start: ask for half the flavour's RAM."""
    match = _CPU_FLAVOUR.fullmatch(flavour)
    if match is None:
        return None
    ram = int(match.group(2))
    return f"{ram / 2:g}" if ram < 8 else None


def boot_env(spec: EndpointSpec, config: RunPodConfig) -> dict[str, str]:
    env = {
        "GPUFLEX_BOOT": boot_source(),
        "GPUFLEX_PYTHON": python_version(),
        "GPUFLEX_REQUIREMENTS": json.dumps(runtime_requirements()),
        "GPUFLEX_DEPENDENCIES": json.dumps(sorted(spec.dependencies)),
        "GPUFLEX_RUNTIME": runtime_ref()["hash"],
    }
    if spec.gpu is None and (memory := _min_memory_gb(config.cpu_instance)) is not None:
        env["RUNPOD_MIN_MEMORY_GB"] = memory
    return env

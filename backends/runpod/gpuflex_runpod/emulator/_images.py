"""What a worker's container holds in the emulator: the image's programs, a fresh container disk, the network volume
when one is attached, and nothing of the emulator's own environment.

RunPod's images (``runpod/pytorch:*``, ``runpod/base:*``) are emulated by a bare Python (a venv with only the standard
library, of the emulator's own minor version; the real images carry 3.9 to 3.13), ``uv`` and ``sh``, which is all
gpuflex's start command uses of them. Other images are registered with ``--image NAME=DIR`` (``DIR/bin`` goes on the
PATH); an image the emulator does not know runs as RunPod's, with a note in the worker's log. Packages come from the
package index this machine reaches, through a uv cache shared by every worker (as RunPod's images point uv at one).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["Images", "flavour_memory_failure", "fresh_env"]

RUNPOD_IMAGES = ("runpod/pytorch:", "runpod/base:")
_PASSED = ("LANG", "LC_ALL", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
           "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy", "ALL_PROXY", "all_proxy")
_PASSED_PREFIXES = ("PIP_", "UV_INDEX", "UV_EXTRA_INDEX", "UV_DEFAULT_INDEX", "UV_NATIVE_TLS", "UV_HTTP_TIMEOUT",
                    "UV_FIND_LINKS")
# a CPU flavour's RAM is never all free in its container: what the SDK's start-up check sees, as a share of it
_FREE_SHARE = 0.85
_FLAVOUR = re.compile(r"cpu\d+[a-z]-(\d+)-(\d+)")


def _uv() -> str | None:
    """The uv binary: the ``uv`` package's own (a real binary, never a version manager's shim), else the PATH's."""
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


class Images:
    """Image name -> the directory whose programs a worker of that image sees on its PATH."""

    def __init__(self, root: Path, registered: dict[str, Path] | None = None) -> None:
        self.root = root
        self.registered = dict(registered or {})
        self._lock = threading.Lock()

    def bin_for(self, image: str) -> tuple[Path, str | None]:
        """The PATH directory for ``image``, and a note for the worker's log when the image is not known."""
        if image in self.registered:
            path = self.registered[image]
            return (path / "bin" if (path / "bin").is_dir() else path), None
        note = None
        if not image.startswith(RUNPOD_IMAGES):
            note = (f"[emulator] image {image!r} is not known to the emulator (register it with --image NAME=DIR); "
                    "running it as RunPod's own image: a bare Python, uv and sh")
        return self.runpod_image(), note

    def runpod_image(self) -> Path:
        """RunPod's base image, as far as gpuflex uses it: built once per emulator."""
        target = self.root / "runpod-base" / "bin"
        with self._lock:
            if not (target / "sh").exists():
                staging = self.root / "runpod-base"
                shutil.rmtree(staging, ignore_errors=True)
                subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(staging)], check=True)
                for name in ("activate", "activate.csh", "activate.fish", "Activate.ps1"):
                    (target / name).unlink(missing_ok=True)
                uv = _uv()
                if uv:
                    (target / "uv").symlink_to(uv)
                (target / "sh").symlink_to(shutil.which("sh") or "/bin/sh")
        return target


def fresh_env(path: Path, home: Path, package_cache: Path | None, volume: Path | None) -> dict[str, str]:
    """A container's environment: the image's PATH, its own disk, and only the host's network settings."""
    env = {k: v for k, v in os.environ.items() if k in _PASSED or k.startswith(_PASSED_PREFIXES)}
    home.mkdir(parents=True, exist_ok=True)
    (home / "tmp").mkdir(exist_ok=True)
    env.update(PATH=str(path), HOME=str(home), TMPDIR=str(home / "tmp"), PYTHONUNBUFFERED="1")
    if package_cache is not None:
        env["UV_CACHE_DIR"] = str(package_cache)
    if volume is not None:
        volume.mkdir(parents=True, exist_ok=True)
        env["GPUFLEX_RUNPOD_VOLUME"] = str(volume)  # RunPod mounts it at /runpod-volume
    return env


def flavour_memory_failure(settings: dict[str, Any], env: dict[str, str]) -> str | None:
    """What RunPod's SDK says at start on a CPU flavour too small for its free-memory check
    (``RUNPOD_MIN_MEMORY_GB``, 4 GB by default), or None when the check passes."""
    if env.get("RUNPOD_SKIP_AUTO_SYSTEM_CHECKS", "").lower() == "true":
        return None
    flavours = settings.get("instanceIds") or []
    match = _FLAVOUR.fullmatch(str(flavours[0])) if flavours else None
    if match is None:
        return None
    available = int(match.group(2)) * _FREE_SHARE
    required = float(env.get("RUNPOD_MIN_MEMORY_GB") or 4.0)
    if available >= required:
        return None
    return (f"Insufficient memory: {available:.2f}GB available, {required}GB required (emulated {flavours[0]}: "
            f"{match.group(2)} GB, about {_FREE_SHARE:.0%} of it free); the worker exits (os._exit(1))")

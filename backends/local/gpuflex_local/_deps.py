"""An endpoint's ``dependencies`` on this machine: checked against the current environment, or (``isolate=True``)
installed into a virtual environment per dependency-set hash, built once with uv and cached."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.requirements import InvalidRequirement, Requirement

import gpuflex
from gpuflex.errors import BackendUnavailable, ConfigError

if TYPE_CHECKING:
    from gpuflex import EndpointSpec

    from ._config import LocalConfig

__all__ = ["missing_dependencies", "worker_python"]

_lock = threading.Lock()


def _parse(spec: str) -> Requirement:
    try:
        return Requirement(spec)
    except InvalidRequirement as exc:
        raise ConfigError(f"dependency {spec!r} is not a valid requirement: {exc}") from None


def missing_dependencies(dependencies: tuple[str, ...]) -> list[str]:
    """Requirements the current environment does not satisfy (absent, or the wrong version)."""
    missing = []
    for spec in dependencies:
        req = _parse(spec)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            missing.append(f"{spec} (not installed)")
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            missing.append(f"{spec} (found {version})")
    return missing


def _runtime_requirements() -> list[str]:
    """What the worker runtime itself imports: gpuflex's own dependencies (gpuflex comes via PYTHONPATH)."""
    reqs = metadata.requires("gpuflex") or []
    return [r for r in reqs if "extra ==" not in r]


def _cache_dir(config: LocalConfig) -> Path:
    base = config.cache_dir or os.environ.get("GPUFLEX_CACHE_DIR") or Path.home() / ".cache" / "gpuflex"
    return Path(base) / "envs"


def worker_python(spec: EndpointSpec, config: LocalConfig) -> str:
    """The interpreter a worker of ``spec`` runs under; raises when dependencies cannot be met."""
    if not config.isolate:
        missing = missing_dependencies(spec.dependencies)
        if missing:
            raise ConfigError(
                f"endpoint {spec.name!r} needs {', '.join(missing)} in this environment; install them "
                "(pip install ...) or use the local backend with isolate=True to build an environment for it"
            )
        return config.python or sys.executable
    for dep in spec.dependencies:
        _parse(dep)
    deps = sorted(spec.dependencies)
    key = hashlib.sha256("\n".join([sys.version, *deps]).encode()).hexdigest()[:16]
    env_dir = _cache_dir(config) / key
    python = env_dir / "bin" / "python"
    with _lock:
        if (env_dir / ".gpuflex-complete").exists():
            return str(python)
        uv = shutil.which("uv")
        if uv is None:
            raise BackendUnavailable("isolate=True needs uv on PATH to build environments (pip install uv)")
        shutil.rmtree(env_dir, ignore_errors=True)
        env_dir.parent.mkdir(parents=True, exist_ok=True)
        steps = [
            [uv, "venv", "--quiet", "--python", config.python or sys.executable, str(env_dir)],
            [uv, "pip", "install", "--quiet", "--python", str(python), *_runtime_requirements(), *deps],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode != 0:
                raise ConfigError(
                    f"could not build the environment for endpoint {spec.name!r} ({', '.join(deps) or 'no deps'}):"
                    f"\n{done.stderr.strip()[-2000:]}"
                )
        # gpuflex itself: a link to the caller's copy, so the worker runs exactly the caller's version and
        # nothing else from the caller's environment leaks in
        site = next((env_dir / "lib").glob("python*/site-packages"))
        link_dir = env_dir / "gpuflex-runtime"
        link_dir.mkdir(exist_ok=True)
        (link_dir / "gpuflex").symlink_to(Path(gpuflex.__file__ or "gpuflex").resolve().parent)
        (site / "_gpuflex_runtime.pth").write_text(f"{link_dir}\n")
        (env_dir / ".gpuflex-complete").write_text(key)
    return str(python)

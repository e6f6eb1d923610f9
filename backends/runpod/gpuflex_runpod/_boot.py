"""gpuflex's start-up on a RunPod worker, from any image that has a Python: the template's start command
(:func:`gpuflex_runpod._bootstrap.start_command`) decodes this file from ``$GPUFLEX_BOOT`` and runs it.

Standard library only, and Python 3.8 syntax: it runs on whatever interpreter the image offers first.

1. **Python.** The caller's minor version (``$GPUFLEX_PYTHON``): ``python3.X`` on the PATH (RunPod's own images
   carry 3.9 to 3.13), else ``uv python install`` (kept under the cache root). Without one, the worker still starts,
   and answers every job with a version mismatch naming both versions.
2. **Packages, once per worker.** RunPod's worker SDK and the runtime's packages (``$GPUFLEX_REQUIREMENTS``) plus the
   endpoint's ``dependencies`` (``$GPUFLEX_DEPENDENCIES``) go into an environment under the cache root, keyed by the
   interpreter and the requirement sets; a marker inside it is written last, so it can never outlive the packages
   it vouches for. The cache root is on the network volume when one is mounted (``/runpod-volume``), so later
   workers (and FlashBoot restarts) skip the install; else on the container disk. An image that already has
   everything (a baked image, ``backends/runpod/Dockerfile``) needs no environment at all.
3. **The runtime.** gpuflex itself is not installed: it rides in the jobs, as a zip by hash (like the project
   bundle), unpacked once per hash. The handler below loads it with the first job and hands every job to
   ``gpuflex_runpod.worker``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

STAGE_ENV = "GPUFLEX_BOOT_STAGE"
MISMATCH_ENV = "GPUFLEX_BOOT_MISMATCH"
MARKER = "gpuflex-env.json"
MISSING_KEY = "gpuflex_bundle_missing"  # as in _protocol: the client resends the call with code inline
MISMATCH_KEY = "gpuflex_version_mismatch"


def log(message: str) -> None:
    print("[gpuflex boot] " + message, file=sys.stderr, flush=True)


def cache_root() -> str:
    explicit = os.environ.get("GPUFLEX_RUNPOD_CACHE")
    if explicit:
        return explicit
    volume = os.environ.get("GPUFLEX_RUNPOD_VOLUME") or "/runpod-volume"
    if os.path.isdir(volume):
        return os.path.join(volume, ".cache", "gpuflex", "runpod")
    return os.path.join(os.path.expanduser("~"), ".cache", "gpuflex", "runpod")


def this_python() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def find_python(want: str) -> str | None:
    """An interpreter of minor version ``want``: this one, ``python3.X`` on the PATH, or one uv installs."""
    if this_python() == want:
        return sys.executable
    found = shutil.which("python" + want)
    if found:
        return found
    uv = shutil.which("uv")
    if uv is None:
        return None
    env = dict(os.environ, UV_PYTHON_INSTALL_DIR=os.path.join(cache_root(), "python"))
    log(f"no python{want} in this image: installing it with uv (once; kept under {cache_root()})")
    if subprocess.run([uv, "python", "install", want], env=env, stdout=sys.stderr).returncode != 0:
        return None
    done = subprocess.run([uv, "python", "find", want], env=env, stdout=subprocess.PIPE, text=True)
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def satisfied(requirement: str) -> bool:
    """Whether this interpreter already has ``requirement``: full specifiers where ``packaging`` can be imported,
    else only the ``==``/``>=`` forms gpuflex writes (anything else counts as missing)."""
    from importlib import metadata

    try:
        from packaging.requirements import Requirement
    except ImportError:
        try:
            from pip._vendor.packaging.requirements import Requirement  # type: ignore[assignment]
        except ImportError:
            Requirement = None  # type: ignore[assignment,misc]
    if Requirement is not None:
        parsed = Requirement(requirement)
        try:
            installed = metadata.version(parsed.name)
        except metadata.PackageNotFoundError:
            return False
        return not parsed.specifier or parsed.specifier.contains(installed, prereleases=True)
    match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(==|>=)?\s*([0-9][0-9A-Za-z.]*)?\s*", requirement)
    if match is None:
        return False
    try:
        installed = metadata.version(match.group(1))
    except metadata.PackageNotFoundError:
        return False
    if match.group(2) == "==":
        return installed == match.group(3)
    if match.group(2) == ">=":
        return _version_tuple(installed) >= _version_tuple(match.group(3))
    return True


def _run(command: list[str], what: str) -> None:
    log(what + ": " + " ".join(command))
    if subprocess.run(command, stdout=sys.stderr).returncode != 0:
        raise SystemExit("[gpuflex boot] failed to " + what)


def build_env(requirements: list[str], dependencies: list[str]) -> str:
    """The environment holding ``requirements`` and ``dependencies``, built once (atomically) per key."""
    import site
    import sysconfig

    key = hashlib.sha256(json.dumps([os.path.realpath(sys.executable), sys.version, requirements,
                                     dependencies]).encode()).hexdigest()[:16]
    root = os.path.join(cache_root(), "envs")
    target = os.path.join(root, f"py{this_python()}-{key}")
    if os.path.isfile(os.path.join(target, MARKER)):
        return target
    os.makedirs(root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".py{this_python()}-{key}-", dir=root)
    os.rmdir(staging)
    uv = shutil.which("uv")
    if uv:
        _run([uv, "venv", "--quiet", "--python", sys.executable, staging], "create the worker environment")
    else:
        _run([sys.executable, "-m", "venv", staging], "create the worker environment")
        _run([os.path.join(staging, "bin", "python"), "-m", "pip", "install", "--quiet", "uv"], "install uv")
        uv = os.path.join(staging, "bin", "uv")
    python = os.path.join(staging, "bin", "python")
    # the image's own packages (torch on RunPod's PyTorch images) stay importable, after the environment's own
    own = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if os.path.isdir(p)]
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             stdout=subprocess.PIPE, text=True, check=True).stdout.strip()
    with open(os.path.join(purelib, "_gpuflex_image_site.pth"), "w") as pth:
        pth.write("".join(path + "\n" for path in sorted(set(own))))
    _run([uv, "pip", "install", "--quiet", "--python", python] + list(requirements), "install the worker runtime")
    if dependencies:
        # pip, not uv: pip sees the image's packages through the .pth above and does not install them again
        _run([uv, "pip", "install", "--quiet", "--python", python, "pip"], "install pip")
        _run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"] + list(dependencies),
             "install the endpoint's dependencies")
    with open(os.path.join(staging, MARKER), "w") as marker:
        json.dump({"python": sys.version, "requirements": requirements, "dependencies": dependencies}, marker)
    try:
        os.rename(staging, target)
    except OSError:  # another worker on the same volume finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def stage_one(boot_path: str) -> None:
    """Pick the interpreter, make sure the packages are there, then run stage two with them."""
    want = os.environ.get("GPUFLEX_PYTHON") or this_python()
    if os.environ.get(MISMATCH_ENV) is None:
        python = find_python(want)
        if python is None:
            log(f"no Python {want} here, nor a way to install one: every job will fail naming both versions")
            os.environ[MISMATCH_ENV] = f"{sys.version.split()[0]} ({sys.executable})"
        elif this_python() != want:
            os.execv(python, [python, boot_path])
    requirements = json.loads(os.environ.get("GPUFLEX_REQUIREMENTS") or "[]")
    dependencies = json.loads(os.environ.get("GPUFLEX_DEPENDENCIES") or "[]")
    if os.environ.get(MISMATCH_ENV):  # only RunPod's SDK, to answer the jobs
        requirements, dependencies = [r for r in requirements if r.startswith("runpod")], []
    missing = [r for r in requirements if not satisfied(r)]
    missing_deps = [d for d in dependencies if not satisfied(d)]
    os.environ.update(GPUFLEX_BOOT_PYTHON=sys.executable, **{STAGE_ENV: "2"})
    os.environ.setdefault("GPUFLEX_RUNPOD_CACHE", cache_root())
    if not missing and not missing_deps:
        log(f"the image has every package the worker needs ({sys.executable})")
        os.execv(sys.executable, [sys.executable, boot_path])
    env = build_env(requirements, missing_deps)
    python = os.path.join(env, "bin", "python")
    log("worker environment ready: " + env)
    os.execv(python, [python, boot_path])


# -- stage two: RunPod's worker loop ----------------------------------------------------------------------------

_loaded: dict[str, Any] = {}


def _runtime_dir(ref: dict[str, str]) -> str | None:
    """The directory holding the runtime ``ref`` names, unpacked once per hash; None when this worker lacks it."""
    target = os.path.join(os.environ["GPUFLEX_RUNPOD_CACHE"], "runtime", ref["hash"])
    if os.path.isdir(target):
        return target
    if not ref.get("zip"):
        return None
    os.makedirs(os.path.dirname(target), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".runtime-", dir=os.path.dirname(target))
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(ref["zip"]))) as archive:
        archive.extractall(staging)
    try:
        os.rename(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _fail(payload: dict[str, Any]) -> dict[str, str]:
    return {"error": json.dumps(payload)}


async def handler(job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """Every job: load the runtime it names (once), then let gpuflex's handler run it."""
    request = (job.get("input") or {}).get("gpuflex") or {}
    mismatch = os.environ.get(MISMATCH_ENV)
    if mismatch:
        want = os.environ.get("GPUFLEX_PYTHON", "?")
        yield _fail({MISMATCH_KEY: {"caller": want, "worker": mismatch},
                     "message": f"the worker has no Python {want} (it has {mismatch})"})
        return
    ref = request.get("runtime") or {}
    if "module" not in _loaded:
        where = _runtime_dir(ref) if ref.get("hash") else None
        if where is None:
            yield _fail({MISSING_KEY: ref.get("hash", ""), "message": "this worker does not have the runtime"})
            return
        sys.path.insert(0, where)
        import gpuflex_runpod.worker as worker

        _loaded.update(module=worker, hash=ref["hash"])
    elif ref.get("hash") != _loaded["hash"]:  # the caller runs another gpuflex: let RunPod start a fresh worker
        yield _fail({MISSING_KEY: ref.get("hash", ""), "message": "this worker runs another gpuflex runtime"})
        import asyncio

        asyncio.get_running_loop().call_later(0.5, os._exit, 0)
        return
    async for item in _loaded["module"].handler(job):
        yield item


def stage_two(boot_path: str) -> None:
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        import runpod
    except ImportError as exc:  # the environment lost its packages: build it again, once
        if os.environ.get("GPUFLEX_BOOT_RETRY") or sys.prefix == sys.base_prefix:
            raise
        log(f"the worker environment is broken ({exc}): building it again")
        shutil.rmtree(sys.prefix, ignore_errors=True)
        os.environ.update(GPUFLEX_BOOT_RETRY="1", **{STAGE_ENV: "1"})
        python = os.environ["GPUFLEX_BOOT_PYTHON"]
        os.execv(python, [python, boot_path])
    os.environ["GPUFLEX_IN_WORKER"] = "1"
    # importing RunPod's SDK configures the root logger (logging.basicConfig in its upload helper): undo it, so the
    # function's log records reach gpuflex's output capture as they would in a plain Python process
    root.handlers[:] = handlers
    root.setLevel(level)

    concurrency = max(1, int(os.environ.get("GPUFLEX_CONCURRENCY", "1")))
    runpod.serverless.start({
        "handler": handler,
        "return_aggregate_stream": True,
        "concurrency_modifier": lambda current: concurrency,
    })


def main() -> None:
    boot_path = os.path.abspath(sys.argv[0] if sys.argv and sys.argv[0].endswith(".py") else __file__)
    if os.environ.get(STAGE_ENV) == "2":
        stage_two(boot_path)
    else:
        stage_one(boot_path)


if __name__ == "__main__":
    main()

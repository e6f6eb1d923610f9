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
4. **A deployed endpoint** (``gpuflex deploy``: ``$GPUFLEX_RELEASE`` names its release by hash) takes plain JSON
   jobs from any HTTP client, so its code cannot ride in the jobs: before the loop starts, the runtime, the
   release's manifest and its bundle are fetched by hash from the object store (``$GPUFLEX_STORE_*``: an
   S3-compatible store, RunPod's network volumes through their S3 API by default; read from the mounted volume
   when the store is the worker's own volume), with the S3 signing below (AWS Signature Version 4, standard
   library only; the client signs its uploads with the same code).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

STAGE_ENV = "GPUFLEX_BOOT_STAGE"
MISMATCH_ENV = "GPUFLEX_BOOT_MISMATCH"
MARKER = "gpuflex-env.json"
MISSING_KEY = "gpuflex_bundle_missing"  # as in _protocol: the client resends the call with code inline
MISMATCH_KEY = "gpuflex_version_mismatch"
RELEASE_ERROR_ENV = "GPUFLEX_RELEASE_ERROR"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


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


# -- the object store: S3 with AWS Signature Version 4 -----------------------------------------------------------

def _quote(text: str, safe: str = "-_.~") -> str:
    return urllib.parse.quote(text, safe=safe)


def sigv4_headers(method: str, url: str, *, region: str, access_key: str, secret_key: str,
                  payload_sha256: str = EMPTY_SHA256, headers: dict[str, str] | None = None,
                  now: datetime.datetime | None = None, service: str = "s3") -> dict[str, str]:
    """The headers that sign one request with AWS Signature Version 4 (``host``, ``x-amz-date``,
    ``x-amz-content-sha256``, ``authorization``, plus ``headers``, which are signed too). ``url`` holds its path
    already percent-encoded, as sent."""
    parts = urllib.parse.urlsplit(url)
    stamp = (now or datetime.datetime.now(datetime.UTC)).strftime("%Y%m%dT%H%M%SZ")
    signed = {k.lower(): " ".join(str(v).split()) for k, v in (headers or {}).items()}
    signed.update({"host": parts.netloc, "x-amz-date": stamp, "x-amz-content-sha256": payload_sha256})
    names = sorted(signed)
    pairs = sorted(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    canonical = "\n".join([
        method, parts.path or "/", "&".join(f"{_quote(k)}={_quote(v)}" for k, v in pairs),
        "".join(f"{name}:{signed[name]}\n" for name in names), ";".join(names), payload_sha256])
    scope = f"{stamp[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret_key).encode()
    for part in (stamp[:8], region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    signed["authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={';'.join(names)}, "
                               f"Signature={signature}")
    return signed


def store_url(key: str) -> str:
    """The URL of object ``key`` (relative to the store's prefix) in the store ``$GPUFLEX_STORE_*`` names."""
    base = os.environ["GPUFLEX_STORE_URL"].rstrip("/")
    prefix = os.environ.get("GPUFLEX_STORE_PREFIX", "").strip("/")
    return f"{base}/{_quote(os.environ['GPUFLEX_STORE_BUCKET'])}/" + _quote(f"{prefix}/{key}" if prefix else key,
                                                                        safe="-_.~/")


def store_get(key: str) -> bytes:
    """Object ``key`` from the store: from the mounted network volume when the store is the worker's own volume
    (RunPod maps ``s3://<volume id>/<path>`` to ``/runpod-volume/<path>``), else with a signed S3 GET."""
    prefix = os.environ.get("GPUFLEX_STORE_PREFIX", "").strip("/")
    path = f"{prefix}/{key}" if prefix else key
    mount = os.environ.get("GPUFLEX_RUNPOD_VOLUME") or "/runpod-volume"
    if os.environ.get("GPUFLEX_STORE_BUCKET") == os.environ.get("GPUFLEX_STORE_VOLUME") \
            and os.path.isfile(os.path.join(mount, path)):
        with open(os.path.join(mount, path), "rb") as f:
            return f.read()
    url = store_url(key)
    headers = sigv4_headers("GET", url, region=os.environ.get("GPUFLEX_STORE_REGION") or "us-east-1",
                            access_key=os.environ.get("GPUFLEX_STORE_ACCESS_KEY", ""),
                            secret_key=os.environ.get("GPUFLEX_STORE_SECRET_KEY", ""))
    request = urllib.request.Request(url, headers={k: v for k, v in headers.items() if k != "host"})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.read()  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        raise OSError(f"the object store answered {exc.code} for {path!r} "
                      f"({os.environ.get('GPUFLEX_STORE_URL')}, bucket {os.environ.get('GPUFLEX_STORE_BUCKET')})") \
            from None


def unpack(data: bytes, target: str) -> str:
    """Unzip ``data`` into ``target`` atomically (file modes kept); another process may have done it first."""
    if os.path.isdir(target):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".unpack-", dir=os.path.dirname(target))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            path = archive.extract(info, staging)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(path, mode)
    try:
        os.rename(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def prepare_release() -> None:
    """A deployed endpoint: fetch its runtime, manifest and bundle by hash before the first job. A failure is
    kept (without secrets) and answered to every JSON job; gpuflex's own jobs carry their code and still run."""
    release = os.environ.get("GPUFLEX_RELEASE")
    if not release or os.environ.get(MISMATCH_ENV):
        return
    cache = os.environ["GPUFLEX_RUNPOD_CACHE"]
    try:
        runtime = os.environ["GPUFLEX_RUNTIME"]
        if not os.path.isdir(os.path.join(cache, "runtime", runtime)):
            unpack(store_get(f"runtime/{runtime}.zip"), os.path.join(cache, "runtime", runtime))
        manifest_path = os.path.join(cache, "releases", f"{release}.json")
        if not os.path.isfile(manifest_path):
            data = store_get(f"releases/{release}.json")
            os.makedirs(os.path.dirname(manifest_path), exist_ok=True)
            with open(manifest_path + ".tmp", "wb") as f:
                f.write(data)
            os.replace(manifest_path + ".tmp", manifest_path)
        with open(manifest_path) as f:
            bundle = json.load(f)["bundle"]
        if not os.path.isdir(os.path.join(cache, "bundles", bundle)):
            unpack(store_get(f"bundles/{bundle}.zip"), os.path.join(cache, "bundles", bundle))
        os.environ["GPUFLEX_RELEASE_MANIFEST"] = manifest_path
        log(f"release {release}: code {bundle} from the object store")
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        secret = os.environ.get("GPUFLEX_STORE_SECRET_KEY")
        if secret:
            message = message.replace(secret, "***")
        os.environ[RELEASE_ERROR_ENV] = message
        log(f"could not fetch release {release} from the object store: {message}")


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


def _load_runtime(ref: dict[str, Any]) -> Any:
    """The worker module of the runtime ``ref`` names (loaded once per worker), or None when this worker lacks
    that runtime."""
    if "module" not in _loaded:
        where = _runtime_dir(ref) if ref.get("hash") else None
        if where is None:
            return None
        sys.path.insert(0, where)
        import gpuflex_runpod.worker as worker

        if os.environ.get("GPUFLEX_STORE_URL"):
            worker.fetch_object = store_get
        _loaded.update(module=worker, hash=ref["hash"])
    return _loaded["module"]


def _gpuflex_request(job: dict[str, Any]) -> dict[str, Any] | None:
    """The gpuflex part of a job's input; None for a plain JSON job (an HTTP client's arguments)."""
    data = job.get("input")
    request = data.get("gpuflex") if isinstance(data, dict) else None
    return request if isinstance(request, dict) else None


def _refusal(job: dict[str, Any]) -> dict[str, str] | None:
    """Why this worker cannot run ``job`` at all (no Python of the caller's version, not the caller's runtime),
    or None; loads the runtime the job names."""
    mismatch = os.environ.get(MISMATCH_ENV)
    request = _gpuflex_request(job)
    if mismatch:
        want = os.environ.get("GPUFLEX_PYTHON", "?")
        if request is None:
            return _fail({"error": "VersionMismatch", "message": f"the worker has no Python {want} "
                                                                 f"(it has {mismatch})"})
        return _fail({MISMATCH_KEY: {"caller": want, "worker": mismatch},
                      "message": f"the worker has no Python {want} (it has {mismatch})"})
    if request is None:  # a plain JSON job: the deployed release's runtime, fetched at start
        if _load_runtime({"hash": os.environ.get("GPUFLEX_RUNTIME", "")}) is None:
            return _fail({"error": "NotDeployed", "message": "this endpoint takes gpuflex's own jobs only (a "
                                                             "development endpoint): `gpuflex deploy` it to call "
                                                             "it with plain JSON"})
        return None
    ref = request.get("runtime") or {}
    if "module" not in _loaded:
        if _load_runtime(ref) is None:
            return _fail({MISSING_KEY: ref.get("hash", ""), "message": "this worker does not have the runtime"})
    elif ref.get("hash") != _loaded["hash"]:  # the caller runs another gpuflex: let RunPod start a fresh worker
        import asyncio

        asyncio.get_running_loop().call_later(0.5, os._exit, 0)
        return _fail({MISSING_KEY: ref.get("hash", ""), "message": "this worker runs another gpuflex runtime"})
    return None


async def handler(job: dict[str, Any]) -> AsyncIterator[Any]:
    """Every job: load the runtime it names (once), then let gpuflex's handler run it, streaming what it yields."""
    refusal = _refusal(job)
    if refusal is not None:
        yield refusal
        return
    async for item in _loaded["module"].handler(job):
        yield item


async def plain_handler(job: dict[str, Any]) -> Any:
    """``handler`` for a deployed endpoint with no generator: the job's output is the function's result itself
    (RunPod's ``/runsync`` answers it as it is, not in a list of streamed items)."""
    refusal = _refusal(job)
    if refusal is not None:
        return refusal
    return await _loaded["module"].plain_handler(job)


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

    prepare_release()
    if os.environ.get("GPUFLEX_RELEASE_MANIFEST"):
        _load_runtime({"hash": os.environ["GPUFLEX_RUNTIME"]})  # before the first job: no import on its clock
    concurrency = max(1, int(os.environ.get("GPUFLEX_CONCURRENCY", "1")))
    runpod.serverless.start({
        "handler": plain_handler if os.environ.get("GPUFLEX_HANDLER") == "plain" else handler,
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

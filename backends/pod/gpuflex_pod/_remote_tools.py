"""Part of the pod backend's host agent (see ``_remote_agent``): uv, Python installs and environments.

Standard library only, Python 3.8 or later. The agent's source is this module followed by ``_remote_agent``, run
as one ``python -c`` script; as modules, ``_remote_agent`` imports these names from here.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
import zipfile
from typing import Any, NoReturn

__all__ = ["answer", "ensure_uv", "fail", "install_python", "interpreter_facts", "local_uv", "make_env",
           "managed_pythons"]

_PROBE_SNIPPET = ("import json, sys\nout = {'python': '.'.join(map(str, sys.version_info[:3])), "
                  "'executable': sys.executable, 'importable': {}}\nfor name in sys.argv[1].split(','):\n"
                  "    try:\n        m = __import__(name)\n"
                  "        out['importable'][name] = str(getattr(m, '__version__', '') or '?')\n"
                  "    except Exception:\n        out['importable'][name] = ''\nprint(json.dumps(out))\n")


def answer(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def fail(message: str) -> NoReturn:
    sys.stderr.write(f"gpuflex pod agent: {message}\n")
    raise SystemExit(3)


def interpreter_facts(executable: str, packages: str) -> dict[str, Any] | None:
    try:
        out = subprocess.run([executable, "-c", _PROBE_SNIPPET, packages], capture_output=True, text=True,
                             timeout=60)
        facts: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return facts
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def managed_pythons(root: str, want: str) -> list[str]:
    """Interpreters of version ``want`` that gpuflex installed with uv under ``<root>/pythons``."""
    base = os.path.join(root, "pythons")
    found = []
    if os.path.isdir(base):
        for name in sorted(os.listdir(base), reverse=True):
            exe = os.path.join(base, name, "bin", f"python{want}")
            if name.startswith(f"cpython-{want}.") and os.access(exe, os.X_OK):
                found.append(exe)
    return found


# -- uv, Python, environments ----------------------------------------------------------------------------------


def local_uv(root: str) -> str:
    return os.path.join(root, "tools", "uv", "bin", "uv")


def _wheel_rank(filename: str) -> int | None:
    """How well a uv wheel fits this host (lower is better); ``None``: it does not run here."""
    machine = platform.machine().lower()
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    if sys.platform.startswith("linux"):
        if f"musllinux_1_1_{arch}" in filename:  # a static binary: runs on any Linux libc
            return 0
        if "manylinux" in filename and filename.endswith(f"_{arch}.whl"):
            return 1
    elif sys.platform == "darwin":
        if "macosx" in filename and (("arm64" in filename) == (arch == "aarch64")):
            return 0
    return None


def _index_files(index: str) -> list[tuple[str, str, str]]:
    """``(filename, url, sha256)`` of uv's wheels on a package index (PEP 691 JSON, or PEP 503 HTML)."""
    url = index.rstrip("/") + "/uv/"
    request = urllib.request.Request(url, headers={
        "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1", "User-Agent": "gpuflex-pod"})
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read().decode()
        kind = response.headers.get("Content-Type", "")
    files = []
    if "json" in kind:
        for f in json.loads(body)["files"]:
            if not f.get("yanked") and f["filename"].endswith(".whl"):
                files.append((f["filename"], urllib.parse.urljoin(url, f["url"]), f["hashes"].get("sha256", "")))
    else:
        for href, name in re.findall(r'<a[^>]*href="([^"]+)"[^>]*>([^<]+\.whl)</a>', body):
            digest = href.split("#sha256=")[1] if "#sha256=" in href else ""
            files.append((name.strip(), urllib.parse.urljoin(url, href.split("#")[0]), digest))
    return files


def _version_key(filename: str) -> tuple[int, ...] | None:
    match = re.match(r"uv-(\d+(?:\.\d+)*)-", filename)
    return tuple(int(p) for p in match.group(1).split(".")) if match else None


def ensure_uv(root: str) -> str:
    """uv on PATH, or the one gpuflex put under ``<root>/tools``, or a fresh one from the package index: its
    wheel holds a single binary, so neither pip nor ``python3 -m venv`` (missing on stock Debian/Ubuntu) is
    needed."""
    found = shutil.which("uv")
    if found:
        return found
    target = local_uv(root)
    if os.access(target, os.X_OK):
        return target
    index = os.environ.get("UV_DEFAULT_INDEX") or os.environ.get("UV_INDEX_URL") or \
        os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple"
    try:
        files = _index_files(index)
    except Exception as exc:  # noqa: BLE001 - any failure: say where uv was looked for
        fail(f"uv is not installed and could not be fetched from {index}: {exc}. Install uv on the host "
             "(https://docs.astral.sh/uv/) or set UV_DEFAULT_INDEX in host_env to an index the host can reach")
    fitting = [(key, rank, f) for f in files
               if (key := _version_key(f[0])) is not None and (rank := _wheel_rank(f[0])) is not None]
    if not fitting:
        fail(f"no uv wheel on {index} for {platform.system()} {platform.machine()}; install uv on the host")
    _, _, (name, url, digest) = max(fitting, key=lambda item: (item[0], -item[1]))
    with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "gpuflex-pod"}),
                                timeout=600) as response:
        data = response.read()
    if digest and hashlib.sha256(data).hexdigest() != digest:
        fail(f"{name} from {index} does not match its sha256")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(data)) as wheel:
        member = next((m for m in wheel.namelist() if re.search(r"\.data/scripts/uv$", m)), None)
        if member is None:
            fail(f"{name} holds no uv binary")
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target))
        with os.fdopen(fd, "wb") as out:
            out.write(wheel.read(member))
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)
    return target


def _uv_env(root: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("UV_CACHE_DIR", os.path.join(root, "uv-cache"))  # beside the envs: uv hard-links from it
    env["UV_PYTHON_INSTALL_DIR"] = os.path.join(root, "pythons")
    return env


def _run_uv(args: list[str], root: str) -> str:
    result = subprocess.run(args, capture_output=True, text=True, env=_uv_env(root))
    if result.returncode != 0:
        fail(f"{' '.join(args[:3])} failed: {result.stderr.strip()[-3000:]}")
    return result.stdout


def install_python(root: str, want: str, packages: str) -> None:
    found = managed_pythons(root, want)
    if not found:
        uv = ensure_uv(root)
        _run_uv([uv, "python", "install", "--no-bin", "--install-dir", os.path.join(root, "pythons"), want], root)
        found = managed_pythons(root, want)
    if not found:
        fail(f"uv installed Python {want} but it is not under {root}/pythons")
    facts = interpreter_facts(found[0], packages)
    if facts is None:
        fail(f"the Python uv installed ({found[0]}) does not run")
    answer({**facts, "match": facts})


def make_env(root: str, python: str, key: str) -> None:
    requirements = json.loads(sys.stdin.buffer.readline())
    env_dir = os.path.join(root, "envs", key)
    ready = os.path.join(env_dir, ".ready")
    if not os.path.exists(ready):
        uv = ensure_uv(root)
        _run_uv([uv, "venv", "-q", "--allow-existing", "--python", python, env_dir], root)
        _run_uv([uv, "pip", "install", "-q", "--python", os.path.join(env_dir, "bin", "python"), *requirements],
                root)
        with open(ready, "w"):
            pass
    answer({"python": os.path.join(env_dir, "bin", "python")})

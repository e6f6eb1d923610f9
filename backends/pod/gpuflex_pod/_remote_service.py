"""Part of the pod backend's host agent (see ``_remote_agent``): the deployed services of ``gpuflex deploy``.

Standard library only, Python 3.8 or later; its source travels between ``_remote_tools`` and ``_remote_agent``.
A deployed endpoint of environment ``env`` lives in ``<root>/services/<env>/<name>/`` (mode 0700):

* ``versions.json``: the app, and every deploy (code hash, settings, git commit; the client writes it whole);
* ``config.json``: what the service runs now (code tree, app file, settings, interpreter, address);
* ``service.json``: written by the running service: its pid (it leads its own session), address and port;
* ``secrets.json`` and ``token`` (mode 0600): the endpoint's secret values; the bearer token a service bound to
  anything but loopback requires. Neither is ever printed; ``service.log`` holds the service's output;
* ``code-<bundle>/``: the bundle's files (hard links), where the service and its workers run.

Actions: ``svc-state <root> <env>``, ``svc-start <root> <env> <name>`` (a JSON request on stdin),
``svc-stop <root> <env> <name> <remove>``, ``svc-call <root> <env> <name>`` (a JSON body on stdin; the host
calls its own service, so the token never leaves it), ``importable <root> <python> <packages>``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

try:  # as a module (tests, type checks); in the agent these come from _remote_tools' source, sent first
    from ._remote_tools import answer, fail, interpreter_facts
except ImportError:
    pass

SERVICE_MODULE = "gpuflex_pod._service"
_MARKERS = ("pyproject.toml", "gpuflex.toml", "setup.py", ".git")


def _dir(root: str, env: str, name: str = "") -> str:
    return os.path.join(root, "services", env, name) if name else os.path.join(root, "services", env)


def _read(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write(path: str, data: Any, mode: int = 0o600) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))
    with os.fdopen(fd, "w") as out:
        json.dump(data, out)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _ours(pid: int, directory: str) -> bool:
    """Whether ``pid`` is the service of ``directory`` (not a process that reused its pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        if os.path.isdir("/proc"):
            return False
        try:  # no /proc (macOS hosts): trust a live pid
            os.kill(pid, 0)
            return True
        except OSError:
            return False
    return SERVICE_MODULE.encode() in cmdline and directory.encode() in cmdline


def _url(service: dict[str, Any], path: str) -> str:
    host = service.get("bind") or "127.0.0.1"
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{service['port']}{path}"


def _healthy(service: dict[str, Any] | None, directory: str, timeout: float = 3.0) -> bool:
    if not service or not _ours(int(service.get("pid") or 0), directory):
        return False
    try:
        with urllib.request.urlopen(_url(service, "/health"), timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False


def service_state(root: str, env: str) -> None:
    """Every endpoint deployed in ``env``: its versions and whether its service is up."""
    out = {}
    base = _dir(root, env)
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        directory = os.path.join(base, name)
        versions = _read(os.path.join(directory, "versions.json"))
        if versions is None:
            continue
        service = _read(os.path.join(directory, "service.json"))
        config = _read(os.path.join(directory, "config.json")) or {}
        out[name] = {"versions": versions, "running": _healthy(service, directory),
                     "port": (service or {}).get("port") or config.get("port"),
                     "bind": config.get("bind"), "bundle": config.get("bundle"),
                     "token_file": os.path.join(directory, "token") if config.get("token") else None}
    answer({"endpoints": out})


def _service_pids(directory: str) -> list[int]:
    """Processes of a service: its own, and any left in its code trees (its workers)."""
    pids = []
    service = _read(os.path.join(directory, "service.json")) or {}
    pid = int(service.get("pid") or 0)
    if pid and _ours(pid, directory):
        pids.append(pid)
    if os.path.isdir("/proc"):
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                continue
            if (cwd + os.sep).startswith(directory + os.sep) and int(entry) not in pids:
                pids.append(int(entry))
    return pids


def _stop(directory: str, grace: float = 10.0) -> None:
    """SIGTERM the service's session (it stops its workers), then SIGKILL whatever is left."""
    pids = _service_pids(directory)
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGTERM)
        except OSError:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in _service_pids(directory) + pids:
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except OSError:
                pass
    try:
        os.unlink(os.path.join(directory, "service.json"))
    except OSError:
        pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False


def _code_tree(root: str, directory: str, bundle: str) -> str:
    """The bundle's files in the service's directory (hard links), with a project marker when the bundle has
    none, so gpuflex finds the project there and not in a folder above."""
    code = os.path.join(directory, f"code-{bundle[:16]}")
    if os.path.isdir(code):
        return code
    source = os.path.join(root, "bundles", bundle)
    if not os.path.isdir(source):
        fail(f"the code {bundle[:12]} is not on this host any more ({source}): deploy it again")
    staging = tempfile.mkdtemp(dir=directory, prefix=".code-")
    for base, dirs, files in os.walk(source):
        rel = os.path.relpath(base, source)
        for d in dirs:
            os.makedirs(os.path.join(staging, rel, d), exist_ok=True)
        for name in files:
            try:
                os.link(os.path.join(base, name), os.path.join(staging, rel, name))
            except OSError:
                shutil.copy2(os.path.join(base, name), os.path.join(staging, rel, name))
    if not any(os.path.exists(os.path.join(staging, m)) for m in _MARKERS):
        with open(os.path.join(staging, "gpuflex.toml"), "w") as f:
            f.write("# the project root of a deployed gpuflex endpoint\n")
    os.rename(staging, code)
    return code


def service_start(root: str, env: str, name: str) -> None:
    """Stop the endpoint's service if one runs, write its versions, configuration and secrets, start it in a
    session of its own (it outlives this SSH session), and wait until it answers ``/health``."""
    request = json.loads(sys.stdin.buffer.readline())
    directory = _dir(root, env, name)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    _stop(directory)
    config = dict(request["config"])
    config["code"] = _code_tree(root, directory, config["bundle"])
    token_path = os.path.join(directory, "token")
    if config.get("token"):
        if not os.path.exists(token_path):  # kept across deploys: clients keep theirs
            fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
    elif os.path.exists(token_path):
        os.unlink(token_path)
    _write(os.path.join(directory, "secrets.json"), request.get("secrets") or {})
    _write(os.path.join(directory, "config.json"), config)
    _write(os.path.join(directory, "versions.json"), request["versions"])
    for old in os.listdir(directory):  # code trees no version runs any more
        if old.startswith("code-") and os.path.join(directory, old) != config["code"]:
            shutil.rmtree(os.path.join(directory, old), ignore_errors=True)
    env_vars = dict(os.environ)
    env_vars["PYTHONPATH"] = os.pathsep.join(config["pythonpath"])
    env_vars["PYTHONUNBUFFERED"] = "1"
    with open(os.path.join(directory, "service.log"), "ab") as log:
        child = subprocess.Popen([config["python"], "-m", SERVICE_MODULE, directory], cwd=config["code"],
                                 env=env_vars, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 start_new_session=True, close_fds=True)
    deadline = time.monotonic() + float(request.get("timeout") or 120)
    while time.monotonic() < deadline:
        if child.poll() is not None:
            fail(f"the service of {name!r} exited with code {child.returncode} at start:\n{_tail(directory)}")
        service = _read(os.path.join(directory, "service.json"))
        if service and service.get("pid") == child.pid and _healthy(service, directory, timeout=2):
            answer({"pid": child.pid, "port": service["port"], "bind": service["bind"],
                    "token_file": token_path if config.get("token") else None})
            return
        time.sleep(0.1)
    _stop(directory)
    fail(f"the service of {name!r} did not answer /health within {request.get('timeout')} s:\n{_tail(directory)}")


def _tail(directory: str) -> str:
    try:
        with open(os.path.join(directory, "service.log"), errors="replace") as f:
            return f.read()[-3000:]
    except OSError:
        return ""


def service_stop(root: str, env: str, name: str, remove: str = "0") -> None:
    directory = _dir(root, env, name)
    if os.path.isdir(directory):
        _stop(directory)
        if remove == "1":
            shutil.rmtree(directory, ignore_errors=True)
    answer({"stopped": name})


def service_call(root: str, env: str, name: str) -> None:
    """POST stdin's JSON to the endpoint's service on this host; answer its status and JSON body."""
    body = sys.stdin.buffer.read()
    directory = _dir(root, env, name)
    service = _read(os.path.join(directory, "service.json"))
    if not _healthy(service, directory):
        fail(f"{name!r} is deployed in {env!r} on this host, but its service is not running: run gpuflex deploy")
    assert service is not None
    headers = {"Content-Type": "application/json"}
    token_path = os.path.join(directory, "token")
    if os.path.exists(token_path):
        with open(token_path) as f:
            headers["Authorization"] = "Bearer " + f.read().strip()
    request = urllib.request.Request(_url(service, f"/{name}"), data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=3600) as response:
            status, text = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read()
    try:
        result = json.loads(text)
    except ValueError:
        result = text.decode(errors="replace")
    answer({"status": status, "body": result})


def importable(root: str, python: str, packages: str) -> None:
    answer({"facts": interpreter_facts(python, packages)})

"""The small program the pod backend runs on a host with ``python -c``: standard library only, one action per run.

Runs on any Python 3.8 or later (the host's own, whatever its version), in an environment that already holds
the pool's ``host_env`` (the shell line that starts it reads the values from stdin). Actions (``sys.argv[1]``),
each answering one JSON line on stdout:

* ``probe <root> <packages> <want> <env names>``: the cache root (made private), Python, GPUs (nvidia-smi, row by
  row, with the reason when some or all are missing), usable CPUs, uv, which of ``packages`` import, ``match``: an
  interpreter of version ``want`` (``3.11``) on the host, if there is one (this one, ``python3.11``, ``python3``,
  ``python`` or one gpuflex installed under ``<root>/pythons``), and ``env_file``: the ``host_env`` variables
  (``env names``) written to a private file for worker commands to source.
* ``missing <root>``: then a JSON tree manifest ``{"tree": "bundles/<hash>", "files": [...]}``; answers
  ``{"tree_exists": bool, "missing": [object names]}``.
* ``put <root>``: then a manifest line and a tar stream whose members are named by object; stores each (checking
  its hash), then materialises the tree with hard links and renames it into place.
* ``python <root> <want>``: install CPython ``want`` with uv under ``<root>/pythons`` (once); answers its facts.
* ``env <root> <python> <key>``: then a JSON list of requirements; makes ``<root>/envs/<key>`` with uv (once).
* ``svc-*`` and ``importable``: the services ``gpuflex deploy`` leaves on the host (see ``_remote_service``).
* ``kill <root> <module> <pid>...``: SIGKILL the process groups these gpuflex workers (``python -m <module>``)
  lead; a pid that is no longer such a worker under ``root`` is left alone.

The uv, Python and environment helpers live in ``_remote_tools``, whose source the client sends ahead of this
one. Objects are named by sha256, with ``.x`` for an executable copy (a file has one mode, and hard links share it).
Trees are read-only snapshots of hard links into ``<root>/objects``, so a push sends only changed contents.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
from typing import Any

try:  # as modules (tests, type checks); the agent itself is one script, _remote_tools' source coming first
    from ._remote_service import importable, service_call, service_start, service_state, service_stop
    from ._remote_tools import answer, fail, install_python, interpreter_facts, local_uv, make_env, managed_pythons
except ImportError:
    pass


def private_root(root: str) -> str:
    """The cache root, made if needed (mode 0700); refused when another user owns it or anyone may write it:
    workers run the code stored there."""
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        os.makedirs(root, mode=0o700, exist_ok=True)
        os.chmod(root, 0o700)
    info = os.lstat(root)
    if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o002:
        fail(f"remote_dir {root} is not private (owner uid {info.st_uid}, mode {oct(info.st_mode & 0o777)}, "
             f"{'a symlink' if stat.S_ISLNK(info.st_mode) else 'a directory'}): gpuflex runs the code stored there, "
             "so it must belong to this user and be writable by no one else; pick another remote_dir")
    return root


# -- probe -----------------------------------------------------------------------------------------------------


def parse_smi(out: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of ``nvidia-smi --query-gpu=index,name,memory.total,uuid --format=csv,noheader,nounits``: the GPUs it
    could read, and a note for each line it could not (a failed GPU does not hide the others)."""
    gpus, problems = [], []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if not line.strip():
            continue
        if len(parts) < 3 or not parts[0].isdigit():
            problems.append(line.strip()[:200])
            continue
        index, name, memory = parts[0], parts[1], parts[2]
        uuid = parts[3] if len(parts) > 3 and parts[3].startswith(("GPU-", "MIG-")) else ""
        try:
            memory_mib = int(float(memory))
        except ValueError:  # "[N/A]" (GB10 and other unified-memory parts) or "[Unknown Error]"
            memory_mib = None
        gpus.append({"index": index, "name": name, "memory_mib": memory_mib, "uuid": uuid})
    return gpus, problems


def discover_gpus() -> tuple[list[dict[str, Any]], str]:
    """GPUs and, when some or all could not be read, why."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        devices = sorted(d for d in os.listdir("/dev") if re.fullmatch(r"nvidia\d+", d)) if os.path.isdir("/dev") \
            else []
        if devices:
            return [], (f"{len(devices)} NVIDIA device(s) in /dev but no nvidia-smi on PATH (a container without the "
                        "'utility' driver capability?); declare them with the host's gpus=")
        return [], "no nvidia-smi on PATH"
    try:
        result = subprocess.run([smi, "--query-gpu=index,name,memory.total,uuid", "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return [], f"nvidia-smi failed: {exc}"
    gpus, problems = parse_smi(result.stdout)
    notes = problems + [line.strip() for line in result.stderr.splitlines() if line.strip()][:5]
    if result.returncode != 0:
        notes.insert(0, f"nvidia-smi exited with code {result.returncode}")
    return gpus, "; ".join(notes)[:1000]


def usable_cpus(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """CPUs this process may use: its affinity, capped by a cgroup CPU quota (containers get a share)."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = None
    try:
        with open(os.path.join(cgroup_root, "cpu.max")) as f:  # cgroup v2: "<quota> <period>" or "max <period>"
            text = f.read().split()
        if text and text[0] != "max":
            quota = int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        try:
            with open(os.path.join(cgroup_root, "cpu", "cpu.cfs_quota_us")) as f:
                q = int(f.read())
            with open(os.path.join(cgroup_root, "cpu", "cpu.cfs_period_us")) as f:
                period = int(f.read())
            if q > 0 and period > 0:
                quota = q / period
        except (OSError, ValueError):
            pass
    if quota is not None:
        count = min(count, max(1, int(quota + 0.999)))
    return max(1, count)


def _own_facts(packages: str) -> dict[str, Any]:
    importable = {}
    for name in filter(None, packages.split(",")):
        try:
            module = __import__(name)
            importable[name] = str(getattr(module, "__version__", "") or "?")
        except Exception:  # noqa: BLE001 - any failure to import means "not usable here"
            importable[name] = ""
    return {"python": ".".join(map(str, sys.version_info[:3])), "executable": sys.executable,
            "importable": importable}


def findinterpreter_facts(root: str, packages: str, want: str) -> dict[str, Any] | None:
    own = _own_facts(packages)
    if not want or own["python"].split(".")[:2] == want.split("."):
        return own
    seen = {os.path.realpath(sys.executable)}
    candidates = [shutil.which(n) for n in (f"python{want}", "python3", "python")] + managed_pythons(root, want)
    for exe in filter(None, candidates):
        if os.path.realpath(exe) in seen:
            continue
        seen.add(os.path.realpath(exe))
        facts = interpreter_facts(exe, packages)
        if facts and facts["python"].split(".")[:2] == want.split("."):
            return facts
    return None


def _write_env_file(root: str, env: dict[str, str]) -> str:
    """``host_env`` as a file the worker command sources (mode 0600): values stay off every command line."""
    text = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))
    path = os.path.join(root, f"host-env-{hashlib.sha256(text.encode()).hexdigest()[:16]}.sh")
    if not os.path.exists(path):
        fd, tmp = tempfile.mkstemp(dir=root)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    return path


def probe(root: str, packages: str, want: str = "", env_names: str = "") -> None:
    root = private_root(root)
    host_env = {name: os.environ.get(name, "") for name in filter(None, env_names.split(","))}
    gpus, gpu_problem = discover_gpus()
    own = _own_facts(packages)
    answer({
        **own,
        "agent_python": sys.executable,
        "match": findinterpreter_facts(root, packages, want) if want else own,
        "root": root,
        "gpus": gpus,
        "gpu_problem": gpu_problem,
        "cpus": usable_cpus(),
        "uv": shutil.which("uv") or (local_uv(root) if os.access(local_uv(root), os.X_OK) else ""),
        "pid": os.getpid(),
        "platform": f"{platform.system()}-{platform.machine()}",
        "env_file": _write_env_file(root, host_env) if host_env else "",
    })


# -- files -----------------------------------------------------------------------------------------------------


def _object_name(entry: dict[str, Any]) -> str:
    return str(entry["sha256"]) + (".x" if entry.get("executable") else "")


def _read_manifest(stream: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(stream.readline())
    return manifest


def missing(root: str) -> None:
    manifest = _read_manifest(sys.stdin.buffer)
    tree = os.path.join(root, manifest["tree"])
    if os.path.isdir(tree):
        answer({"tree_exists": True, "missing": []})
        return
    objects = os.path.join(root, "objects")
    wanted = sorted({_object_name(f) for f in manifest["files"]})
    answer({"tree_exists": False, "missing": [h for h in wanted if not os.path.exists(os.path.join(objects, h))]})


def put(root: str) -> None:
    stream = sys.stdin.buffer
    manifest = _read_manifest(stream)
    objects = os.path.join(root, "objects")
    os.makedirs(objects, exist_ok=True)
    received = 0
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            name = os.path.basename(member.name)
            source = tar.extractfile(member)
            if source is None:
                continue
            data = source.read()
            if hashlib.sha256(data).hexdigest() != name.split(".")[0]:
                fail(f"object {name} arrived corrupted")
            fd, tmp = tempfile.mkstemp(dir=objects)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.chmod(tmp, 0o555 if name.endswith(".x") else 0o444)
            os.replace(tmp, os.path.join(objects, name))
            received += 1
    tree = os.path.join(root, manifest["tree"])
    lost = sorted({_object_name(f) for f in manifest["files"]} - set(os.listdir(objects)))
    if lost and not os.path.isdir(tree):  # the client thought the host had these: it must send them
        answer({"received": received, "tree": tree, "missing": lost})
        return
    if not os.path.isdir(tree):
        os.makedirs(os.path.dirname(tree), exist_ok=True)
        staging = tempfile.mkdtemp(dir=os.path.dirname(tree), prefix=".staging-")
        for entry in manifest["files"]:
            path = os.path.join(staging, entry["path"])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                _link_or_copy(os.path.join(objects, _object_name(entry)), path)
            except FileNotFoundError:  # gone since it was counted: the client sends it again
                shutil.rmtree(staging, ignore_errors=True)
                answer({"received": received, "tree": tree, "missing": [_object_name(entry)]})
                return
        try:
            os.rename(staging, tree)
        except OSError:  # another client put the same tree first: same content, keep theirs
            shutil.rmtree(staging, ignore_errors=True)
    answer({"received": received, "tree": tree, "missing": []})


def _link_or_copy(source: str, dest: str) -> None:
    try:
        os.link(source, dest)
    except FileNotFoundError:
        raise
    except OSError:  # a file system without hard links (some network volumes): a copy, same mode
        shutil.copy2(source, dest)


# -- workers ---------------------------------------------------------------------------------------------------


def _is_worker(pid: int, root: str, module: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return not os.path.isdir("/proc")  # no /proc (macOS hosts): trust the pid
    return f"-m\0{module}\0".encode() in cmdline and (cwd + os.sep).startswith(root + os.sep)


def kill(root: str, module: str, *pids: str) -> None:
    killed = []
    for pid in map(int, pids):
        if not _is_worker(pid, root, module):
            continue
        try:
            os.killpg(pid, signal.SIGKILL)
            killed.append(pid)
        except (ProcessLookupError, PermissionError):
            pass
    answer({"killed": killed})


def main(argv: list[str]) -> None:
    action, args = argv[1], argv[2:]
    if action == "probe":
        probe(*args)
        return
    root = private_root(args[0])
    actions: dict[str, Any] = {"missing": missing, "put": put, "python": install_python, "env": make_env,
                               "kill": kill, "importable": importable, "svc-state": service_state,
                               "svc-start": service_start, "svc-stop": service_stop, "svc-call": service_call}
    actions[action](root, *args[1:])


if __name__ == "__main__":
    main(sys.argv)

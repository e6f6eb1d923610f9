"""The small program the pod backend runs on a host with ``python -c``: standard library only, one action per run.

Actions (``sys.argv[1]``), each answering one JSON line on stdout:

* ``probe <root> <packages>``: Python version and path, the absolute cache root, GPUs (nvidia-smi), CPU count,
  whether uv is there, and which of ``packages`` (comma-separated import names) import.
* ``missing <root>``: stdin is a JSON tree manifest ``{"tree": "bundles/<hash>", "files": [...]}``; answers
  ``{"tree_exists": bool, "missing": [sha256, ...]}``.
* ``put <root>``: stdin is a manifest line, then a tar stream whose members are named by sha256; stores each
  object (checking its hash), then materialises the tree with hard links and renames it into place.
* ``kill <pid>``: SIGKILL the process group ``pid`` leads.

Trees are read-only snapshots: ``<root>/objects/<sha256>`` holds each file once; ``<root>/<tree>/<path>`` are hard
links to them, so an incremental push sends only the files whose content changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from typing import Any


def _answer(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def probe(root: str, packages: str) -> None:
    root = os.path.abspath(os.path.expanduser(root))
    os.makedirs(root, exist_ok=True)
    gpus: list[dict[str, Any]] = []
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=20, check=True).stdout
            for line in out.strip().splitlines():
                index, name, memory = (part.strip() for part in line.split(",", 2))
                gpus.append({"index": index, "name": name, "memory_mib": int(float(memory))})
        except (OSError, subprocess.SubprocessError, ValueError):
            gpus = []
    importable = {}
    for name in filter(None, packages.split(",")):
        try:
            module = __import__(name)
            importable[name] = str(getattr(module, "__version__", "") or "?")
        except Exception:  # noqa: BLE001 - any failure to import means "not usable here"
            importable[name] = ""
    local_uv = os.path.join(root, "tools", "uv", "bin", "uv")
    _answer({
        "python": ".".join(map(str, sys.version_info[:3])),
        "executable": sys.executable,
        "root": root,
        "gpus": gpus,
        "cpus": os.cpu_count() or 1,
        "uv": shutil.which("uv") or (local_uv if os.path.exists(local_uv) else ""),
        "importable": importable,
        "pid": os.getpid(),
    })


def _read_manifest(stream: Any) -> dict[str, Any]:
    line = stream.readline()
    manifest: dict[str, Any] = json.loads(line)
    return manifest


def missing(root: str) -> None:
    manifest = _read_manifest(sys.stdin.buffer)
    tree = os.path.join(root, manifest["tree"])
    if os.path.isdir(tree):
        _answer({"tree_exists": True, "missing": []})
        return
    objects = os.path.join(root, "objects")
    wanted = sorted({f["sha256"] for f in manifest["files"]})
    _answer({"tree_exists": False, "missing": [h for h in wanted if not os.path.exists(os.path.join(objects, h))]})


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
            if hashlib.sha256(data).hexdigest() != name:
                raise SystemExit(f"gpuflex pod agent: object {name} arrived corrupted")
            fd, tmp = tempfile.mkstemp(dir=objects)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.chmod(tmp, 0o444)
            os.replace(tmp, os.path.join(objects, name))
            received += 1
    tree = os.path.join(root, manifest["tree"])
    lost = sorted({f["sha256"] for f in manifest["files"]} - set(os.listdir(objects)))
    if lost and not os.path.isdir(tree):  # the client thought the host had these: it must send them
        _answer({"received": received, "tree": tree, "missing": lost})
        return
    if not os.path.isdir(tree):
        os.makedirs(os.path.dirname(tree), exist_ok=True)
        staging = tempfile.mkdtemp(dir=os.path.dirname(tree), prefix=".staging-")
        for entry in manifest["files"]:
            path = os.path.join(staging, entry["path"])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                os.link(os.path.join(objects, entry["sha256"]), path)
            except FileNotFoundError:  # gone since it was counted: the client sends it again
                shutil.rmtree(staging, ignore_errors=True)
                _answer({"received": received, "tree": tree, "missing": [entry["sha256"]]})
                return
        try:
            os.rename(staging, tree)
        except OSError:  # another client put the same tree first: same content, keep theirs
            shutil.rmtree(staging, ignore_errors=True)
    _answer({"received": received, "tree": tree, "missing": []})


def kill(pid: str) -> None:
    try:
        os.killpg(int(pid), signal.SIGKILL)
        _answer({"killed": True})
    except ProcessLookupError:
        _answer({"killed": False})


def main(argv: list[str]) -> None:
    actions: dict[str, Any] = {"probe": probe, "missing": missing, "put": put, "kill": kill}
    actions[argv[1]](*argv[2:])


if __name__ == "__main__":
    main(sys.argv)

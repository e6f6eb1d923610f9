"""Helpers of the pod backend's tests (a module of its own: test files import it by name)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from gpuflex_pod import PodConfig

from gpuflex import testing


def known_hosts_of(servers, directory):
    path = Path(directory) / "known_hosts"
    path.write_text("".join(Path(s.known_hosts).read_text() for s in servers))
    return str(path)


def pod_config(servers, remote_dir, **options):
    """A pool of the given servers; workers use this interpreter (it has gpuflex's runtime packages)."""
    hosts = [{"host": s.host, "identity_file": s.identity_file} for s in servers]
    options.setdefault("python", sys.executable)
    return PodConfig(hosts=hosts, known_hosts=known_hosts_of(servers, remote_dir), remote_dir=str(remote_dir),
                     **options)


def remote_workers(remote_dir):
    """Pids of worker processes running from ``remote_dir`` (the hosts are this machine)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if b"gpuflex.runtime" in cmdline and cwd.startswith(str(remote_dir)):
            pids.append(int(entry.name))
    return pids


def wait_until(predicate, what, limit=30.0):
    """gpuflex.testing's wait_until, with this suite's shorter default limit."""
    testing.wait_until(predicate, what, limit)



def host_path(directory, python=None, tools=("env", "cat", "ls", "rm", "mkdir", "uname", "id", "sleep", "touch")):
    """A PATH for the loopback host holding only ``tools`` (and ``python`` as ``python3``): the host is this machine,
    so a bare PATH is what hides its own Pythons and uv from the remote side."""
    import shutil

    path = Path(directory) / "host-bin"
    path.mkdir(exist_ok=True)
    for tool in tools:
        found = shutil.which(tool)
        if found:
            (path / tool).symlink_to(found)
    if python:
        (path / "python3").symlink_to(python)
    return str(path)


def stage_debian_python(directory, *, without=()):
    """This machine's Debian CPython 3.11 (/usr/bin/python3.11 and its standard library), copied into one
    relocatable directory laid out as python-build-standalone's install_only archives are; ``without`` drops
    standard-library packages (``ensurepip``: what a stock Debian or Ubuntu host lacks without python3-venv).
    Returns the ``python`` directory, or None where this machine has no such Python."""
    import shutil

    if not (Path("/usr/bin/python3.11").is_file() and Path("/usr/lib/python3.11/os.py").is_file()):
        return None
    root = Path(directory) / "python"
    (root / "bin").mkdir(parents=True)
    shutil.copy2("/usr/bin/python3.11", root / "bin" / "python3.11")
    for name in ("python3", "python"):
        (root / "bin" / name).symlink_to("python3.11")
    shutil.copytree("/usr/lib/python3.11", root / "lib" / "python3.11", symlinks=True,
                    ignore=shutil.ignore_patterns("test", "__pycache__", "EXTERNALLY-MANAGED", *without))
    for link in (root / "lib").rglob("*"):
        if link.is_symlink() and os.readlink(link).startswith("/"):
            link.unlink()  # Debian's sitecustomize.py points into /etc
    return root


def python_downloads(directory):
    """A local stand-in for uv's Python downloads: the staged Debian CPython as an install_only archive and a
    downloads list naming it (uv's UV_PYTHON_DOWNLOADS_JSON_URL), for hosts that cannot reach GitHub, as this
    machine cannot. Returns (the list's path, the Python version) or None."""
    import hashlib
    import json
    import subprocess
    import tarfile

    root = stage_debian_python(directory)
    if root is None:
        return None
    version = subprocess.run([str(root / "bin" / "python3")], input="import sys; print(*sys.version_info[:3])",
                             capture_output=True, text=True, check=True).stdout.split()
    name = f"cpython-{'.'.join(version)}-linux-x86_64-gnu"
    archive = Path(directory) / f"{name}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="python")
    listing = Path(directory) / "python-downloads.json"
    listing.write_text(json.dumps({name: {
        "name": "cpython", "arch": {"family": "x86_64", "variant": None}, "os": "linux", "libc": "gnu",
        "major": int(version[0]), "minor": int(version[1]), "patch": int(version[2]), "prerelease": "",
        "url": archive.as_uri(), "sha256": hashlib.sha256(archive.read_bytes()).hexdigest(), "variant": None}}))
    return str(listing), ".".join(version)


def network_env():
    """What the host needs to reach the package index from this machine's network (its CA bundle, proxies,
    mirrors): the loopback host's sessions start with sshd's bare environment."""
    names = ("SSL_CERT_FILE", "SSL_CERT_DIR", "PIP_CERT", "PIP_FIND_LINKS", "PIP_INDEX_URL", "UV_INDEX_URL",
             "UV_DEFAULT_INDEX", "HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "NO_PROXY")
    return {k: v for k, v in os.environ.items() if k in names}

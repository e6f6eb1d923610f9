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


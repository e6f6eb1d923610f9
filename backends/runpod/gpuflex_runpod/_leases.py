"""Which live processes on this machine use a RunPod endpoint, so that one never deletes an endpoint another uses.

A dev server and a script with the same name prefix share the endpoints they deploy: each process that deploys
(or adopts) an endpoint holds a *lease* on it, a file under ``$GPUFLEX_HOME/runpod-leases/<endpoint>/`` that it
keeps locked (``flock``) for as long as it lives. A process closing with ``delete_on_close`` deletes the endpoint
only when no other lease on it is still locked: the last user removes it. A lease whose process died is unlocked
by the kernel, and removed by the next process that looks. Processes on other machines cannot be seen: an endpoint
deleted under one of them is created again by its next call.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no leases, every process deletes what it deployed
    fcntl = None  # type: ignore[assignment]

__all__ = ["Lease", "lease_root"]


def lease_root() -> Path:
    """``$GPUFLEX_HOME/runpod-leases`` (``$GPUFLEX_HOME`` defaults to ``$XDG_DATA_HOME/gpuflex``, else
    ``~/.local/share/gpuflex``, as for the job ledger)."""
    home = os.environ.get("GPUFLEX_HOME")
    if home:
        return Path(home) / "runpod-leases"
    data = os.environ.get("XDG_DATA_HOME")
    return (Path(data) if data else Path.home() / ".local" / "share") / "gpuflex" / "runpod-leases"


def _locked_by_someone(path: Path) -> bool:
    """Whether a live process holds ``path`` locked; a stale lease (its process died) is removed."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False  # released meanwhile
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also drops the lock we may have taken
    with contextlib.suppress(OSError):
        path.unlink()
    return False


class Lease:
    """This process's hold on one endpoint (``where``: the job API's URL and the endpoint id)."""

    def __init__(self, where: str) -> None:
        self.folder = lease_root() / hashlib.sha256(where.encode()).hexdigest()[:24]
        self.path: Path | None = None
        self.fd: int | None = None
        if fcntl is None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            name = f"{os.getpid()}-{secrets.token_hex(4)}"
            staging = self.folder / f".{name}"
            fd = os.open(staging, os.O_CREAT | os.O_RDWR, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            staging.rename(self.folder / name)  # locked before it is visible: never mistaken for a stale one
        except OSError:
            return  # no writable home: behave as if alone
        self.path, self.fd = self.folder / name, fd

    def others(self) -> bool:
        """Whether another live process on this machine holds a lease on the same endpoint."""
        if fcntl is None or not self.folder.is_dir():
            return False
        return any(_locked_by_someone(path) for path in self.folder.iterdir()
                   if path != self.path and not path.name.startswith("."))

    def release(self) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.path = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        with contextlib.suppress(OSError):
            self.folder.rmdir()  # only when empty

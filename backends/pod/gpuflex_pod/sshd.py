"""A real OpenSSH server on 127.0.0.1 with throwaway keys: a pod to test against, offline.

``LoopbackSshd`` runs the system's ``sshd`` (``apt-get install openssh-server``) with its own host key, client key,
known_hosts and config in a temporary directory, touching no system configuration. The pod backend's own tests
use it; so can yours::

    with LoopbackSshd() as server:
        with gpuflex.use("pod", **server.pod_options()):
            ...

``kill()`` takes the server down the hard way, sessions and all (the connection drops, as when a pod dies);
``start()`` brings it back on the same port and keys.

To stand in for hosts that differ from a clean server, ``extra_config`` adds sshd_config lines ahead of the
defaults (sshd keeps the first value it reads: ``SetEnv BASH_ENV=...`` for a login shell that prints,
``ForceCommand`` for a host that runs something else, ``MaxSessions 4`` for a stricter limit than the stock 10,
which the server otherwise keeps like every other sshd default), and ``launcher`` prefixes the sshd command (e.g.
``["taskset", "-c", "0"]`` for a host with one usable CPU).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["LoopbackSshd", "SshdUnavailable"]


class SshdUnavailable(RuntimeError):
    """This machine cannot run a loopback sshd (no openssh-server installed)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class LoopbackSshd:
    def __init__(self, port: int | None = None, *, user: str | None = None, extra_config: Sequence[str] = (),
                 launcher: Sequence[str] = ()) -> None:
        self.sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
        self.keygen = shutil.which("ssh-keygen")
        if self.sshd is None or self.keygen is None:
            raise SshdUnavailable("no OpenSSH server here: apt-get install -y openssh-server openssh-client")
        self.port = port or _free_port()
        self.user = user or getpass.getuser()
        self.dir = Path(tempfile.mkdtemp(prefix="gpuflex-sshd-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.extra_config, self.launcher = list(extra_config), list(launcher)
        self._make_keys()

    # -- set-up -------------------------------------------------------------------------------------------------

    def _make_keys(self) -> None:
        assert self.keygen is not None
        os.chmod(self.dir, 0o700)
        for name in ("host_ed25519", "client_ed25519"):
            subprocess.run([self.keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / name)], check=True)
        shutil.copy(self.dir / "client_ed25519.pub", self.dir / "authorized_keys")
        host_key = (self.dir / "host_ed25519.pub").read_text().split()[:2]
        (self.dir / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {' '.join(host_key)}\n")
        (self.dir / "sshd_config").write_text("\n".join([
            *self.extra_config,
            "ListenAddress 127.0.0.1",
            f"Port {self.port}",
            f"HostKey {self.dir / 'host_ed25519'}",
            f"PidFile {self.dir / 'sshd.pid'}",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
            "UsePAM no",
            "StrictModes no",  # keys under /tmp (world-writable) are refused otherwise
            "Subsystem sftp internal-sftp",
            "",
        ]))

    # -- what clients need ----------------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    @property
    def identity_file(self) -> str:
        return str(self.dir / "client_ed25519")

    @property
    def known_hosts(self) -> str:
        return str(self.dir / "known_hosts")

    @property
    def authorized_keys(self) -> Path:
        return self.dir / "authorized_keys"

    @property
    def log(self) -> str:
        """What sshd logged so far."""
        path = self.dir / "sshd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def pod_options(self, **extra: Any) -> dict[str, Any]:
        """Options for ``gpuflex.use("pod", ...)`` that reach this server."""
        return {"hosts": [self.host], "identity_file": self.identity_file, "known_hosts": self.known_hosts,
                **extra}

    # -- life cycle ---------------------------------------------------------------------------------------------

    def start(self) -> LoopbackSshd:
        assert self.sshd is not None
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
        with open(self.dir / "sshd.log", "ab") as log:  # the child keeps its own descriptor
            argv = [*self.launcher, self.sshd, "-D", "-e", "-f", str(self.dir / "sshd_config")]
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SshdUnavailable(f"sshd exited at start: {(self.dir / 'sshd.log').read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                if s.recv(4).startswith(b"SSH-"):
                    return self
            time.sleep(0.01)
        raise SshdUnavailable(f"sshd did not answer on 127.0.0.1:{self.port} within 10 s")

    def kill(self) -> None:
        """SIGKILL the server and every session it serves: each client sees its connection drop."""
        if self.process is None:
            return
        sessions = [pid for pid in _children(self.process.pid) if _comm(pid) == "sshd"]
        for pid in [self.process.pid, *sessions]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()
        self.process = None

    def stop(self) -> None:
        self.kill()

    def cleanup(self) -> None:
        """Stop the server and end whatever its sessions left running (a test's hung or stranded commands)."""
        left = _children(self.process.pid) if self.process is not None else []
        self.stop()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LoopbackSshd:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

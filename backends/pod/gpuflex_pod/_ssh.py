"""One SSH connection per host, shared by every command and worker (OpenSSH ``ControlMaster``).

The master connection is an ``ssh -M -N`` process this module owns; workers and commands open channels on it
(``ssh -S <socket>``), so a new worker costs a channel, not a TCP connection and a key exchange. When the master
dies (the network dropped, sshd went away) every channel on it closes; the next user reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shlex
import shutil
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any

import anyio

from gpuflex.errors import AuthenticationError, BackendUnavailable, ConfigError

if TYPE_CHECKING:
    from ._config import HostSpec, PodConfig

__all__ = ["SshConnection", "ssh_error"]

_PR_SET_PDEATHSIG = 1
_prctl: Any
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the forked child only calls it
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _die_with_parent() -> None:
    """In the forked child: get SIGTERM when this process dies, so a killed client leaves no master connection
    (and, through it, no remote worker) behind."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def ssh_error(host: str, stderr: str, config: PodConfig) -> Exception:
    """Turn ssh's complaint into an error that says what to fix."""
    text = stderr.strip().splitlines()
    detail = text[-1] if text else "no message"
    lowered = stderr.lower()
    if "host key verification failed" in lowered or "no ed25519 host key is known" in lowered \
            or "host key is known" in lowered:
        known = config.known_hosts or "~/.ssh/known_hosts"
        return AuthenticationError(
            f"pod host {host}: its host key is not in {known} (ssh: {detail}). Check the host's fingerprint and "
            f"add it (ssh-keyscan -p PORT HOST >> {known}), or pass accept_new_host_keys=True to trust it on first "
            "use")
    if "remote host identification has changed" in lowered:
        return AuthenticationError(
            f"pod host {host}: its host key changed since it was recorded; if the machine was rebuilt, remove the "
            "old key (ssh-keygen -R HOST) and connect again")
    if "permission denied" in lowered or "too many authentication failures" in lowered:
        key = config.identity_file or "ssh's default keys"
        return AuthenticationError(
            f"pod host {host}: login refused ({detail}). Check the user name and that the public key of {key} is "
            "in the host's ~/.ssh/authorized_keys (identity_file= picks another key)")
    if "could not resolve hostname" in lowered:
        return ConfigError(f"pod host {host}: the host name does not resolve ({detail}); check the address or the "
                           "alias in your ssh config")
    return BackendUnavailable(f"pod host {host} is unreachable: {detail}. Check that it is running, that sshd "
                              "listens on that port and that a firewall lets you in")


class SshConnection:
    """The shared connection to one host, and the argv of commands that use it."""

    def __init__(self, host: HostSpec, config: PodConfig, control_dir: str) -> None:
        self.host, self.config = host, config
        self.control_path = os.path.join(control_dir, f"{abs(hash(host.label)) % 10**8}.sock")
        self._master: asyncio.subprocess.Process | None = None
        self._lock = anyio.Lock()
        self.connected_at: float | None = None
        self.uptime_before = 0.0  # seconds connected in earlier connections
        self.reconnects = 0
        ssh = shutil.which("ssh")
        if ssh is None:
            raise ConfigError("the pod backend needs the OpenSSH client (ssh) on this machine; install openssh-client")
        self.ssh = ssh

    # -- argv --------------------------------------------------------------------------------------------------

    def options(self) -> list[str]:
        config, host = self.config, self.host
        args = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, int(config.connect_timeout))}",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3", "-o", "LogLevel=ERROR",
                "-o", f"StrictHostKeyChecking={'accept-new' if config.accept_new_host_keys else 'yes'}"]
        if config.ssh_config:
            args = ["-F", config.ssh_config, *args]
        if config.known_hosts:
            args += ["-o", f"UserKnownHostsFile={config.known_hosts}"]
        identity = host.identity_file or config.identity_file
        if identity:
            args += ["-i", identity, "-o", "IdentitiesOnly=yes"]
        if host.port:
            args += ["-p", str(host.port)]
        return args

    def command(self, remote_command: str) -> list[str]:
        """The argv that runs ``remote_command`` (a shell line) on the host over the shared connection, with the
        pool's ``host_env`` exported first."""
        if self.config.host_env:
            exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.config.host_env.items())
            remote_command = f"export {exports}; {remote_command}"
        return [self.ssh, "-S", self.control_path, "-o", "ControlMaster=no", *self.options(), "-T",
                self.host.destination, remote_command]

    # -- the master connection ------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._master is not None and self._master.returncode is None

    def uptime(self) -> float:
        current = time.time() - self.connected_at if self.connected_at and self.alive else 0.0
        return self.uptime_before + current

    async def ensure(self, *, verify: bool = False) -> None:
        """Connect, or reconnect with exponential backoff; raise an error that says what to fix.

        With ``verify``, a master that looks alive is asked whether it still serves (``ssh -O check``): its
        process may not have been reaped yet after the connection dropped, and a client that finds no master
        quietly opens a connection of its own instead of sharing one.
        """
        async with self._lock:
            if self.alive and (not verify or await self._serving()):
                return
            self.drop()  # a dead or silent master: forget it (and count the disconnection)
            delay, last_error = 0.25, None
            for attempt in range(self.config.reconnect_attempts):
                try:
                    await self._connect()
                    return
                except AuthenticationError:
                    raise  # retrying a refused key or an unknown host key changes nothing
                except ConfigError:
                    raise
                except BackendUnavailable as exc:
                    last_error = exc
                if attempt + 1 < self.config.reconnect_attempts:
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            assert last_error is not None
            raise BackendUnavailable(f"{last_error} (tried {self.config.reconnect_attempts} times)")

    def _note_disconnected(self) -> None:
        if self.connected_at is not None:
            end = time.time()
            self.uptime_before += end - self.connected_at
            self.connected_at = None
            self.reconnects += 1

    async def _connect(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.control_path)  # a stale socket from a master that died
        argv = [self.ssh, "-M", "-N", "-S", self.control_path, "-o", "ControlPersist=no", *self.options(),
                self.host.destination]
        master = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True, preexec_fn=_die_with_parent,  # noqa: PLW1509 - one libc call, no Python
        )
        deadline = time.monotonic() + self.config.connect_timeout + 5
        while time.monotonic() < deadline:
            if master.returncode is not None:
                stderr = await master.stderr.read() if master.stderr is not None else b""
                raise ssh_error(self.host.label, stderr.decode(errors="replace"), self.config)
            if os.path.exists(self.control_path) and await self._serving():  # noqa: ASYNC240 - a local stat
                self._master = master
                self.connected_at = time.time()
                return
            await anyio.sleep(0.01)
        master.kill()
        raise BackendUnavailable(f"pod host {self.host.label}: no SSH connection within "
                                 f"{self.config.connect_timeout:g} s")

    async def _serving(self) -> bool:
        check = await anyio.run_process([self.ssh, "-S", self.control_path, "-O", "check", self.host.destination],
                                        check=False)
        return check.returncode == 0

    def drop(self) -> None:
        """Forget the master connection now (kill it): the next user reconnects. For a connection that looks
        alive but no longer carries channels (the server went away a moment ago)."""
        master, self._master = self._master, None
        self._note_disconnected()
        if master is not None and master.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                master.kill()

    async def run(self, remote_command: str, *, input: bytes | None = None, timeout: float = 120.0) -> str:  # noqa: ASYNC109
        """Run a command on the host; return its stdout. A failure raises with its stderr."""
        await self.ensure()
        with anyio.fail_after(timeout):
            result = await anyio.run_process(self.command(remote_command), input=input, check=False)
        if result.returncode == 255:  # ssh's own failure: the connection, not the command
            raise ssh_error(self.host.label, result.stderr.decode(errors="replace"), self.config)
        if result.returncode != 0:
            raise BackendUnavailable(f"pod host {self.host.label}: a command failed with exit code "
                                     f"{result.returncode}: {result.stderr.decode(errors='replace').strip()[-2000:]}")
        return result.stdout.decode()

    async def close(self) -> None:
        master, self._master = self._master, None
        self._note_disconnected()
        if master is not None and master.returncode is None:
            with contextlib.suppress(OSError):
                await anyio.run_process([self.ssh, "-S", self.control_path, "-O", "exit", self.host.destination],
                                        check=False)
            with anyio.move_on_after(2):
                await master.wait()
            if master.returncode is None:
                master.kill()
                await master.wait()

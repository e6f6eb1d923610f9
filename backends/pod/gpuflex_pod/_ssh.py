"""SSH connections to one host, shared by every command and worker (OpenSSH ``ControlMaster``).

A master connection is an ``ssh -M -N`` process this module owns; workers and commands open channels on it
(``ssh -S <socket>``), so a new worker costs a channel, not a TCP connection and a key exchange. sshd allows
``MaxSessions`` channels per connection (10 unless its config says otherwise): past that, a worker goes to a
further master of the same host. When a master dies (the network dropped, sshd went away) every channel on it
closes; the next user reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from gpuflex.errors import AuthenticationError, BackendUnavailable, ConfigError

from ._ssh_args import MARKER, SshArgs, client_platform, control_dir, remote_line, split_output
from ._ssh_errors import no_command_error, ssh_error

if TYPE_CHECKING:
    from ._config import HostSpec, PodConfig

__all__ = ["MARKER", "SshConnection", "client_platform", "control_dir", "ssh_error"]

_PR_SET_PDEATHSIG = 1
_prctl: Any
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the forked child only calls it
except (OSError, AttributeError):  # not Linux: masters run under _WATCHDOG instead
    _prctl = None

# Where there is no PR_SET_PDEATHSIG (macOS), a master runs as this script's child: when the client dies, the
# script is re-parented, notices, and ends the master, which drops the connection and with it every remote worker.
_WATCHDOG = """
import os, subprocess, sys, time
child = subprocess.Popen(sys.argv[1:])
parent = os.getppid()
while child.poll() is None:
    if os.getppid() != parent:
        child.terminate()
        break
    time.sleep(0.25)
code = child.wait()
sys.exit(code if code >= 0 else 128 - code)
"""


def _die_with_parent() -> None:
    """In the forked child (Linux): get SIGTERM when this process dies, so a killed client leaves no master
    connection (and, through it, no remote worker) behind."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@attrs.define(eq=False)
class _Master:
    path: str  # its control socket
    process: asyncio.subprocess.Process | None = None
    workers: set[str] = attrs.field(factory=set)  # ids of the workers whose sessions it carries
    lock: anyio.Lock = attrs.field(factory=anyio.Lock)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None


class SshConnection:
    """The connections to one host (one, or more past sshd's session limit) and the argv of commands."""

    def __init__(self, host: HostSpec, config: PodConfig, control_dir: str | None = None) -> None:
        self.host, self.config = host, config
        ssh = _which_ssh()
        self.ssh = ssh
        self.args = SshArgs(ssh, host, config)
        self.masters: list[_Master] = []
        self.connected_at: float | None = None  # of the first master: the host's uptime is what it bills
        self.uptime_before = 0.0  # seconds connected in earlier connections
        self.reconnects = 0
        self._resolved: dict[str, str] | None = None
        self._dropped: list[asyncio.subprocess.Process] = []  # killed masters, still to be reaped
        if control_dir is not None:
            self.set_control_dir(control_dir)

    def set_control_dir(self, path: str) -> None:
        self._control_base = os.path.join(path, f"{abs(hash(self.host.label)) % 10**8:08d}")
        self.masters = [_Master(f"{self._control_base}-0.sock")]

    @property
    def control_path(self) -> str:
        return self.masters[0].path

    @property
    def _master(self) -> asyncio.subprocess.Process | None:
        """The first master's process (the one commands use)."""
        return self.masters[0].process if self.masters else None

    @property
    def jumps(self) -> list[str]:
        return self.args.jumps

    def options(self) -> list[str]:
        return self.args.options()

    def command(self, line: str, master: int = 0) -> list[str]:
        """The argv that runs the shell line ``line`` on the host over a shared connection."""
        return [self.ssh, "-S", self.masters[master].path, "-o", "ControlMaster=no", *self.options(), "-T",
                self.host.destination, remote_line(line)]

    # -- connections ------------------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return bool(self.masters) and self.masters[0].alive

    def uptime(self) -> float:
        current = time.time() - self.connected_at if self.connected_at and self.alive else 0.0
        return self.uptime_before + current

    async def resolve(self) -> dict[str, str]:
        """What ssh makes of the destination with the user's config (``ssh -G``, no network): refuse what cannot
        work, and take over ProxyJump so the pool's options reach every hop."""
        if self._resolved is None:
            result = await anyio.run_process(self.args.resolve_argv(), check=False)
            if result.returncode != 0:
                raise ssh_error(self.host.label, result.stderr.decode(errors="replace"), self.config)
            self._resolved = self.args.take_settings(result.stdout.decode(errors="replace"))
        return self._resolved

    async def ensure(self, *, verify: bool = False) -> None:
        """Connect the first master (commands use it), or reconnect it; see :meth:`_ensure`."""
        await self._ensure(0, verify=verify)

    async def session_for(self, worker_id: str, line: str) -> list[str]:
        """The argv of a long-lived session (a worker) on a master with room for it, connecting one if needed.
        The first master keeps one channel free for commands."""
        limit = max(1, self.config.max_sessions)
        index = next((i for i, m in enumerate(self.masters) if len(m.workers) < limit - (1 if i == 0 else 0)),
                     len(self.masters))
        if index == len(self.masters):
            self.masters.append(_Master(f"{self._control_base}-{index}.sock"))
        self.masters[index].workers.add(worker_id)
        try:
            await self._ensure(index, verify=True)
        except BaseException:
            self.masters[index].workers.discard(worker_id)
            raise
        return self.command(line, index)

    def release(self, worker_id: str) -> None:
        for master in self.masters:
            master.workers.discard(worker_id)

    async def _ensure(self, index: int, *, verify: bool) -> None:
        """Connect, or reconnect with exponential backoff; raise an error that says what to fix.

        With ``verify``, a master that looks alive is asked whether it still serves (``ssh -O check``): its
        process may not have been reaped yet after the connection dropped, and a client that finds no master
        quietly opens a connection of its own instead of sharing one.

        A refused login is tried again too (a fresh cloud instance may install its keys a few seconds after sshd
        answers); an unknown or changed host key is not.
        """
        master = self.masters[index]
        async with master.lock:
            if master.alive and (not verify or await self._serving(master)):
                return
            self._drop(index)  # a dead or silent master: forget it (and count the disconnection)
            await self._reap()
            await self.resolve()
            delay = 0.25
            last_error: Exception | None = None
            attempts = self.config.reconnect_attempts
            for attempt in range(attempts):
                try:
                    await self._connect(index)
                    return
                except AuthenticationError as exc:
                    if "login refused" not in str(exc) or attempt + 1 >= attempts:
                        raise  # a host key problem: trying again changes nothing
                    last_error = exc
                except ConfigError:
                    raise
                except BackendUnavailable as exc:
                    last_error = exc
                if attempt + 1 < attempts:
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            assert last_error is not None
            raise BackendUnavailable(f"{last_error} (tried {attempts} times)")

    async def _connect(self, index: int) -> None:
        master = self.masters[index]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(master.path)  # a stale socket from a master that died
        argv = [self.ssh, "-M", "-N", "-S", master.path, "-o", "ControlPersist=no", *self.options(),
                self.host.destination]
        if _prctl is None:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _WATCHDOG, *argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, start_new_session=True)
        else:
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                start_new_session=True, preexec_fn=_die_with_parent,  # noqa: PLW1509 - one libc call, no Python
            )
        deadline = time.monotonic() + self.config.connect_timeout * (1 + len(self.jumps)) + 5
        delay = 0.01
        while time.monotonic() < deadline:
            if process.returncode is not None:
                stderr = await process.stderr.read() if process.stderr is not None else b""
                raise ssh_error(self.host.label, stderr.decode(errors="replace"), self.config, self.jumps)
            if os.path.exists(master.path) and await self._serving(master):  # noqa: ASYNC240 - a local stat
                master.process = process
                if index == 0:
                    self.connected_at = time.time()
                return
            await anyio.sleep(delay)
            delay = min(delay * 1.5, 0.2)  # a slow proxy: fewer `ssh -O check` processes
        _kill_group(process)
        raise BackendUnavailable(f"pod host {self.host.label}: no SSH connection within "
                                 f"{self.config.connect_timeout:g} s")

    async def _serving(self, master: _Master) -> bool:
        check = await anyio.run_process([self.ssh, "-S", master.path, "-O", "check", self.host.destination],
                                        check=False)
        return check.returncode == 0

    def _drop(self, index: int) -> None:
        master = self.masters[index]
        process, master.process = master.process, None
        if index == 0 and self.connected_at is not None:
            self.uptime_before += time.time() - self.connected_at
            self.connected_at = None
            self.reconnects += 1
        if process is not None:
            _kill_group(process)
            self._dropped.append(process)

    async def _reap(self) -> None:
        """Wait for killed masters to be gone, so their process handles close."""
        while self._dropped:
            process = self._dropped.pop()
            with anyio.move_on_after(5):
                await process.wait()

    def drop(self) -> None:
        """Forget every connection now (kill it): the next user reconnects. For a connection that looks alive but
        no longer carries channels (the server went away a moment ago)."""
        for index in range(len(self.masters)):
            self._drop(index)

    async def run(self, line: str, *, input: bytes | None = None, timeout: float = 120.0) -> bytes:  # noqa: ASYNC109
        """Run a shell line on the host; return what it printed on stdout. A failure raises with its stderr."""
        await self.ensure()
        with anyio.fail_after(timeout):
            result = await anyio.run_process(self.command(line), input=input, check=False)
        stderr = result.stderr.decode(errors="replace")
        out = split_output(result.stdout)
        if result.returncode == 255 and out is None:  # ssh's own failure: the connection, not the command
            raise ssh_error(self.host.label, stderr, self.config, self.jumps)
        if out is None:
            raise no_command_error(self.host.label, result.stdout, stderr)
        if result.returncode != 0:
            raise BackendUnavailable(f"pod host {self.host.label}: a command failed with exit code "
                                     f"{result.returncode}: {stderr.strip()[-2000:]}")
        return out

    async def close(self) -> None:
        await self._reap()
        for index, master in enumerate(self.masters):
            process = master.process
            self._drop_quietly(index)
            if process is None or process.returncode is not None:
                continue
            with contextlib.suppress(OSError):
                await anyio.run_process([self.ssh, "-S", master.path, "-O", "exit", self.host.destination],
                                        check=False)
            with anyio.move_on_after(2):
                await process.wait()
            if process.returncode is None:
                _kill_group(process)
                await process.wait()

    def _drop_quietly(self, index: int) -> None:
        """Forget a master without killing it (close ends it gently), counting its uptime."""
        self.masters[index].process = None
        if index == 0 and self.connected_at is not None:
            self.uptime_before += time.time() - self.connected_at
            self.connected_at = None
            self.reconnects += 1


def _which_ssh() -> str:
    import shutil

    ssh = shutil.which("ssh")
    if ssh is None:
        raise ConfigError("the pod backend needs the OpenSSH client (ssh) on this machine; install openssh-client")
    return ssh


def _kill_group(process: asyncio.subprocess.Process) -> None:
    """SIGKILL a master and, under a watchdog, its ssh (they share one process group)."""
    if process.returncode is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            process.kill()

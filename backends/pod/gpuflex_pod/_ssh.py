"""One SSH connection per host, shared by every command and worker (OpenSSH ``ControlMaster``).

The master connection is an ``ssh -M -N`` process this module owns; workers and commands open channels on it
(``ssh -S <socket>``), so a new worker costs a channel, not a TCP connection and a key exchange. When the master
dies (the network dropped, sshd went away) every channel on it closes; the next user reconnects with backoff.

Every remote command runs as ``exec sh -c '<line>'`` whatever the login shell, and its line first prints
:data:`MARKER`: what a login shell prints before it (a ``~/.bashrc`` banner) is skipped, and a host that never runs
the command (a forced tmux, a shell-only proxy) is told apart from one that failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any

import anyio

from gpuflex.errors import AuthenticationError, BackendUnavailable, ConfigError

from ._ssh_errors import no_command_error, ssh_error

if TYPE_CHECKING:
    from ._config import HostSpec, PodConfig

__all__ = ["MARKER", "SshConnection", "control_dir", "ssh_error"]

#: printed by every remote command before its output (the line prints it from octal escapes, so a shell that
#: echoes the command line does not print it early)
MARKER = b"\x1e\x1fgpuflex\x1f\x1e"
_PRINT_MARKER = r"printf '\036\037gpuflex\037\036'"
_SUN_PATH = 104 if sys.platform == "darwin" else 108  # sockaddr_un.sun_path, with its closing NUL
_PR_SET_PDEATHSIG = 1
_prctl: Any
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the forked child only calls it
except (OSError, AttributeError):  # not Linux: the master runs under _WATCHDOG instead
    _prctl = None

# Where there is no PR_SET_PDEATHSIG (macOS), the master runs as this script's child: when the client dies, the
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


def control_dir() -> str:
    """A private directory for control sockets under a short base (``/tmp/gpf-<uid>``, not ``$TMPDIR``, which is
    long on macOS): a socket path has 104 bytes there, 108 on Linux, and ssh binds ``<path>.<16 random>`` first.
    Directories of processes that are gone are swept."""
    if sys.platform == "win32":
        raise ConfigError("the pod backend does not run on Windows: its OpenSSH has no connection sharing "
                          "(ControlMaster). Run gpuflex inside WSL (Windows Subsystem for Linux) instead")
    base = f"/tmp/gpf-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        os.mkdir(base, 0o700)
    info = os.lstat(base)
    if info.st_uid != os.getuid() or info.st_mode & 0o077 or not os.path.isdir(base) or os.path.islink(base):
        base = tempfile.mkdtemp(prefix="gpf-")  # someone else's, or not private: fall back to $TMPDIR
    for entry in os.listdir(base):
        pid = entry.split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(base, entry), ignore_errors=True)
    path = tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=base)
    longest = len(os.path.join(path, "00000000.sock")) + 17
    if longest >= _SUN_PATH:
        raise ConfigError(f"control socket paths under {path} would be {longest} bytes, over the {_SUN_PATH - 1} "
                          "a Unix socket allows; set TMPDIR to a short directory")
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remote_line(line: str) -> str:
    """The command handed to the login shell: a POSIX ``sh`` that prints the marker, then runs ``line``."""
    return f"exec /bin/sh -c {shlex.quote(f'{_PRINT_MARKER}; {line}')}"


def split_output(out: bytes) -> bytes | None:
    """What a command printed after the marker; ``None`` when the marker never came (no command ran)."""
    at = out.find(MARKER)
    return None if at < 0 else out[at + len(MARKER):]


def _hop_args(hop: str) -> list[str]:
    if hop.startswith("ssh://"):
        return [hop]
    match = re.match(r"^(?:(?P<user>[^@]+)@)?(?P<host>\[[^\]]+\]|[^:]+)(?::(?P<port>\d+))?$", hop)
    if match is None:
        return [hop]
    args = ["-p", match["port"]] if match["port"] else []
    return [*args, f"{match['user']}@{match['host'].strip('[]')}" if match["user"] else match["host"].strip("[]")]


class SshConnection:
    """The shared connection to one host, and the argv of commands that use it."""

    def __init__(self, host: HostSpec, config: PodConfig, control_dir: str | None = None) -> None:
        self.host, self.config = host, config
        self.control_path = ""
        if control_dir is not None:
            self.set_control_dir(control_dir)
        self._master: asyncio.subprocess.Process | None = None
        self._lock = anyio.Lock()
        self.connected_at: float | None = None
        self.uptime_before = 0.0  # seconds connected in earlier connections
        self.reconnects = 0
        self.jumps: list[str] = []  # bastions on the way (the ssh config's ProxyJump), once resolved
        self._resolved: dict[str, str] | None = None
        ssh = shutil.which("ssh")
        if ssh is None:
            raise ConfigError("the pod backend needs the OpenSSH client (ssh) on this machine; install openssh-client")
        self.ssh = ssh

    def set_control_dir(self, path: str) -> None:
        self.control_path = os.path.join(path, f"{abs(hash(self.host.label)) % 10**8:08d}.sock")

    # -- argv --------------------------------------------------------------------------------------------------

    def _common(self) -> list[str]:
        """Options for every hop: no prompts, our timeouts, nothing forwarded (the host's root must not reach
        this machine's agent or ports), no command or tty from the ssh config."""
        config = self.config
        args = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, int(config.connect_timeout))}",
                "-o", f"ServerAliveInterval={max(1, int(config.keepalive_interval))}",
                "-o", f"ServerAliveCountMax={config.keepalive_count}", "-o", "LogLevel=ERROR",
                "-o", f"StrictHostKeyChecking={'accept-new' if config.accept_new_host_keys else 'yes'}",
                "-o", "ForwardAgent=no", "-o", "ForwardX11=no", "-o", "PermitLocalCommand=no"]
        return ["-F", config.ssh_config, *args] if config.ssh_config else args

    def options(self) -> list[str]:
        config, host = self.config, self.host
        args = [*self._common(), "-o", "ClearAllForwardings=yes", "-o", "RemoteCommand=none", "-o", "RequestTTY=no"]
        if config.known_hosts:
            args += ["-o", f"UserKnownHostsFile={config.known_hosts}"]
        identity = host.identity_file or config.identity_file
        if identity:
            args += ["-i", identity, "-o", "IdentitiesOnly=yes"]
        if self.jumps:
            args += ["-o", f"ProxyCommand={self._proxy_command(self.jumps)}"]
        if host.port:
            args += ["-p", str(host.port)]
        return args

    def _proxy_command(self, hops: list[str]) -> str:
        """ssh's own ProxyJump, but with this pool's options on each hop (ssh passes none of its ``-o``/``-i`` to
        a jump host): the pool's known_hosts besides the user's, its key besides ssh's defaults."""
        args = self._common()
        if self.config.known_hosts:
            args += ["-o", f"UserKnownHostsFile={self.config.known_hosts} ~/.ssh/known_hosts"]
        identity = self.host.identity_file or self.config.identity_file
        if identity:
            args += ["-i", identity]
        if len(hops) > 1:  # the hop before is reached through the ones before it (%-tokens escaped one level)
            args += ["-o", f"ProxyCommand={self._proxy_command(hops[:-1]).replace('%', '%%')}"]
        return shlex.join([self.ssh, *args, "-W", "[%h]:%p", *_hop_args(hops[-1])])

    def command(self, line: str) -> list[str]:
        """The argv that runs the shell line ``line`` on the host over the shared connection."""
        return [self.ssh, "-S", self.control_path, "-o", "ControlMaster=no", *self.options(), "-T",
                self.host.destination, remote_line(line)]

    # -- the master connection ------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._master is not None and self._master.returncode is None

    def uptime(self) -> float:
        current = time.time() - self.connected_at if self.connected_at and self.alive else 0.0
        return self.uptime_before + current

    async def resolve(self) -> dict[str, str]:
        """What ssh makes of the destination with the user's config (``ssh -G``, no network): refuse what cannot
        work, and take over ProxyJump so the pool's options reach every hop."""
        if self._resolved is not None:
            return self._resolved
        argv = [self.ssh, "-G", *self._common(), *(["-p", str(self.host.port)] if self.host.port else []),
                self.host.destination]
        result = await anyio.run_process(argv, check=False)
        if result.returncode != 0:
            raise ssh_error(self.host.label, result.stderr.decode(errors="replace"), self.config)
        settings: dict[str, str] = {}
        for line in result.stdout.decode(errors="replace").splitlines():
            key, _, value = line.partition(" ")
            settings.setdefault(key.lower(), value.strip())
        hostname = settings.get("hostname", "").lower()
        if hostname == "ssh.runpod.io" or hostname.endswith(".ssh.runpod.io"):
            raise ConfigError(
                f"pod host {self.host.label} goes through RunPod's basic SSH proxy (ssh.runpod.io), which only "
                "gives an interactive shell and runs no commands. Give gpuflex the pod's public IP and port "
                "instead: 'SSH over exposed TCP' in the pod's Connect menu, root@<IP>:<port> (expose TCP port 22 "
                "on the pod)")
        jump = settings.get("proxyjump", "none")
        if jump and jump.lower() != "none" and "proxycommand" not in settings:
            self.jumps = [hop.strip() for hop in jump.split(",") if hop.strip()]
        self._resolved = settings
        return settings

    async def ensure(self, *, verify: bool = False) -> None:
        """Connect, or reconnect with exponential backoff; raise an error that says what to fix.

        With ``verify``, a master that looks alive is asked whether it still serves (``ssh -O check``): its
        process may not have been reaped yet after the connection dropped, and a client that finds no master
        quietly opens a connection of its own instead of sharing one.

        A refused login is tried again too (a fresh cloud instance may install its keys a few seconds after sshd
        answers); an unknown or changed host key is not.
        """
        async with self._lock:
            if self.alive and (not verify or await self._serving()):
                return
            self.drop()  # a dead or silent master: forget it (and count the disconnection)
            await self.resolve()
            delay = 0.25
            last_error: Exception | None = None
            attempts = self.config.reconnect_attempts
            for attempt in range(attempts):
                try:
                    await self._connect()
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

    def _note_disconnected(self) -> None:
        if self.connected_at is not None:
            self.uptime_before += time.time() - self.connected_at
            self.connected_at = None
            self.reconnects += 1

    async def _connect(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.control_path)  # a stale socket from a master that died
        argv = [self.ssh, "-M", "-N", "-S", self.control_path, "-o", "ControlPersist=no", *self.options(),
                self.host.destination]
        if _prctl is None:
            master = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _WATCHDOG, *argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, start_new_session=True)
        else:
            master = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                start_new_session=True, preexec_fn=_die_with_parent,  # noqa: PLW1509 - one libc call, no Python
            )
        deadline = time.monotonic() + self.config.connect_timeout * (1 + len(self.jumps)) + 5
        delay = 0.01
        while time.monotonic() < deadline:
            if master.returncode is not None:
                stderr = await master.stderr.read() if master.stderr is not None else b""
                raise ssh_error(self.host.label, stderr.decode(errors="replace"), self.config, self.jumps)
            if os.path.exists(self.control_path) and await self._serving():  # noqa: ASYNC240 - a local stat
                self._master = master
                self.connected_at = time.time()
                return
            await anyio.sleep(delay)
            delay = min(delay * 1.5, 0.2)  # a slow proxy: fewer `ssh -O check` processes
        _kill_group(master)
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
        if master is not None:
            _kill_group(master)

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
        master, self._master = self._master, None
        self._note_disconnected()
        if master is not None and master.returncode is None:
            with contextlib.suppress(OSError):
                await anyio.run_process([self.ssh, "-S", self.control_path, "-O", "exit", self.host.destination],
                                        check=False)
            with anyio.move_on_after(2):
                await master.wait()
            if master.returncode is None:
                _kill_group(master)
                await master.wait()


def _kill_group(master: asyncio.subprocess.Process) -> None:
    """SIGKILL the master and, under a watchdog, its ssh (both lead or share one process group)."""
    if master.returncode is not None:
        return
    try:
        os.killpg(master.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            master.kill()

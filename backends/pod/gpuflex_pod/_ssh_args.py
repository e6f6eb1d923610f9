"""The ssh command lines of the pod backend: options for every hop, jump hosts, the start marker, and where control
sockets live.

Every remote command runs as ``exec /bin/sh -c '<line>'`` whatever the login shell, and its line first prints
:data:`MARKER`: what a login shell prints before it (a ``~/.bashrc`` banner) is skipped, and a host that never runs
the command (a forced tmux, a shell-only proxy) is told apart from one that failed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import sys
import tempfile
from typing import TYPE_CHECKING

from gpuflex.errors import ConfigError

if TYPE_CHECKING:
    from ._config import HostSpec, PodConfig

__all__ = ["MARKER", "SshArgs", "client_platform", "control_dir", "remote_line", "split_output"]

#: printed by every remote command before its output (the line prints it from octal escapes, so a shell that
#: echoes the command line does not print it early)
MARKER = b"\x1e\x1fgpuflex\x1f\x1e"
_PRINT_MARKER = r"printf '\036\037gpuflex\037\036'"


def remote_line(line: str) -> str:
    """The command handed to the login shell: a POSIX ``sh`` that prints the marker, then runs ``line``."""
    return f"exec /bin/sh -c {shlex.quote(f'{_PRINT_MARKER}; {line}')}"


def split_output(out: bytes) -> bytes | None:
    """What a command printed after the marker; ``None`` when the marker never came (no command ran)."""
    at = out.find(MARKER)
    return None if at < 0 else out[at + len(MARKER):]


def client_platform() -> str:
    """``sys.platform`` of this (the client's) machine."""
    return sys.platform


def control_dir() -> str:
    """A private directory for control sockets under a short base (``/tmp/gpf-<uid>``, not ``$TMPDIR``, which is
    long on macOS): a socket path has 104 bytes there, 108 on Linux, and ssh binds ``<path>.<16 random>`` first.
    Directories of processes that are gone are swept."""
    if client_platform() == "win32":
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
    sun_path = 104 if client_platform() == "darwin" else 108  # sockaddr_un.sun_path, with its closing NUL
    longest = len(os.path.join(path, "00000000-00.sock")) + 17
    if longest >= sun_path:
        raise ConfigError(f"control socket paths under {path} would be {longest} bytes, over the {sun_path - 1} "
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


def _hop_args(hop: str) -> list[str]:
    if hop.startswith("ssh://"):
        return [hop]
    match = re.match(r"^(?:(?P<user>[^@]+)@)?(?P<host>\[[^\]]+\]|[^:]+)(?::(?P<port>\d+))?$", hop)
    if match is None:
        return [hop]
    args = ["-p", match["port"]] if match["port"] else []
    return [*args, f"{match['user']}@{match['host'].strip('[]')}" if match["user"] else match["host"].strip("[]")]


class SshArgs:
    """The options every ssh the pod backend runs for one host gets."""

    def __init__(self, ssh: str, host: HostSpec, config: PodConfig) -> None:
        self.ssh, self.host, self.config = ssh, host, config
        self.jumps: list[str] = []  # bastions on the way (the ssh config's ProxyJump), once resolved

    def common(self) -> list[str]:
        """Options for every hop: no prompts, our timeouts, nothing forwarded (the host's root must not reach
        this machine's agent or ports)."""
        config = self.config
        args = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, int(config.connect_timeout))}",
                "-o", f"ServerAliveInterval={max(1, int(config.keepalive_interval))}",
                "-o", f"ServerAliveCountMax={config.keepalive_count}", "-o", "LogLevel=ERROR",
                "-o", f"StrictHostKeyChecking={'accept-new' if config.accept_new_host_keys else 'yes'}",
                "-o", "ForwardAgent=no", "-o", "ForwardX11=no", "-o", "PermitLocalCommand=no"]
        return ["-F", config.ssh_config, *args] if config.ssh_config else args

    def options(self) -> list[str]:
        """For the host itself: also no forwardings, and no command or tty from the user's ssh config (a
        ``RemoteCommand tmux`` recipe would replace gpuflex's commands)."""
        config, host = self.config, self.host
        args = [*self.common(), "-o", "ClearAllForwardings=yes", "-o", "RemoteCommand=none", "-o", "RequestTTY=no"]
        if config.known_hosts:
            args += ["-o", f"UserKnownHostsFile={config.known_hosts}"]
        identity = host.identity_file or config.identity_file
        if identity:
            args += ["-i", identity, "-o", "IdentitiesOnly=yes"]
        if self.jumps:
            args += ["-o", f"ProxyCommand={self.proxy_command(self.jumps)}"]
        if host.port:
            args += ["-p", str(host.port)]
        return args

    def proxy_command(self, hops: list[str]) -> str:
        """ssh's own ProxyJump, but with this pool's options on each hop (ssh passes none of its ``-o``/``-i`` to
        a jump host): the pool's known_hosts besides the user's, its key besides ssh's defaults."""
        args = self.common()
        if self.config.known_hosts:
            args += ["-o", f"UserKnownHostsFile={self.config.known_hosts} ~/.ssh/known_hosts"]
        identity = self.host.identity_file or self.config.identity_file
        if identity:
            args += ["-i", identity]
        if len(hops) > 1:  # the hop before is reached through the ones before it (%-tokens escaped one level)
            args += ["-o", f"ProxyCommand={self.proxy_command(hops[:-1]).replace('%', '%%')}"]
        return shlex.join([self.ssh, *args, "-W", "[%h]:%p", *_hop_args(hops[-1])])

    def resolve_argv(self) -> list[str]:
        """``ssh -G``: what ssh makes of the destination with the user's config, without connecting."""
        port = ["-p", str(self.host.port)] if self.host.port else []
        return [self.ssh, "-G", *self.common(), *port, self.host.destination]

    def take_settings(self, output: str) -> dict[str, str]:
        """Read ``ssh -G``'s answer; refuse what cannot work; take over ProxyJump (see :meth:`proxy_command`)."""
        settings: dict[str, str] = {}
        for line in output.splitlines():
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
        return settings

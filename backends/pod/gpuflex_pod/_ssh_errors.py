"""What ssh's complaints mean, as errors that say what to fix (never the raw last line alone)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from gpuflex.errors import AuthenticationError, BackendUnavailable, ConfigError

if TYPE_CHECKING:
    from ._config import PodConfig

__all__ = ["no_command_error", "ssh_error"]


def _detail(stderr: str) -> str:
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def ssh_error(host: str, stderr: str, config: PodConfig, jumps: list[str] | None = None) -> Exception:
    """Turn ssh's complaint into an error that says what to fix."""
    detail, lowered = _detail(stderr), stderr.lower()
    config_lines = [line.strip() for line in stderr.splitlines()
                    if re.search(r"line \d+:|bad configuration option|unsupported option|keyword .* extra arguments",
                                 line, re.IGNORECASE)]
    if config_lines:
        where = config.ssh_config or "~/.ssh/config"
        return ConfigError(f"pod host {host}: ssh rejects its configuration ({where}): {'; '.join(config_lines[:3])}")
    # through a jump host, the hop that failed is the one whose complaint came before the target's "connection
    # closed" (the target never got to exchange keys)
    via = ""
    if jumps and ("kex_exchange_identification" in lowered or "connection closed by unknown" in lowered
                  or "connection closed by remote host" in lowered):
        via = f"the jump host {', '.join(jumps)} (on the way to {host})"
    who = via or f"pod host {host}"
    known = config.known_hosts or "~/.ssh/known_hosts"
    if "remote host identification has changed" in lowered:
        offending = re.search(r"Offending \S+ key in (\S+):(\d+)", stderr)
        where = f" (the old key is {offending[1]} line {offending[2]})" if offending else ""
        return AuthenticationError(
            f"{who}: its host key changed since it was recorded{where}. If the machine was rebuilt (a RunPod pod "
            "makes new host keys each time its container starts), check the new fingerprint in the provider's "
            f"console or log, remove the old key with ssh-keygen -f {known} -R '[HOST]:PORT' (or -R HOST for port "
            "22) and connect again; otherwise someone may be intercepting the connection")
    if "host key verification failed" in lowered or "host key is known" in lowered:
        jump_hint = (f" A jump host's key must be in {known} or ~/.ssh/known_hosts too." if jumps else "")
        return AuthenticationError(
            f"{who}: its host key is not in {known} (ssh: {detail}). Check the host's fingerprint and add it "
            f"(ssh-keyscan -p PORT HOST >> {known}), or pass accept_new_host_keys=True to trust it on first use."
            + jump_hint)
    if "permission denied" in lowered or "too many authentication failures" in lowered:
        key = config.identity_file or "ssh's default keys"
        return AuthenticationError(
            f"{who}: login refused ({detail}). Check the user name and that the public key of {key} is in the "
            "host's ~/.ssh/authorized_keys (identity_file= picks another key)"
            + (". The jump host gets the same key and ssh's defaults (or IdentityFile from your ssh config)"
               if jumps else ""))
    if "could not resolve hostname" in lowered:
        return ConfigError(f"{who}: the host name does not resolve ({detail}); check the address or the alias in "
                           "your ssh config")
    if "too long for unix domain socket" in lowered:
        return ConfigError(f"pod host {host}: the control socket path is too long ({detail}); set TMPDIR to a "
                           "short directory")
    return BackendUnavailable(f"{who} is unreachable: {detail}. Check that it is running, that sshd listens on "
                              "that port and that a firewall lets you in")


def no_command_error(host: str, stdout: bytes, stderr: str) -> Exception:
    """The login worked but the command never ran: something else takes over every session."""
    said = (stdout.decode(errors="replace") + " " + stderr).strip()
    said = f" (it printed {said[:300]!r})" if said else ""
    return BackendUnavailable(
        f"pod host {host} accepted the login but did not run gpuflex's command{said}. Something takes over every "
        "SSH session there: on vast.ai the automatic tmux (add 'touch ~/.no_auto_tmux' to the instance's on-start "
        "script, or run it once and reconnect); a ForceCommand in sshd_config or a command= option in "
        "authorized_keys; RunPod's basic SSH proxy (ssh.runpod.io), where you need the pod's public IP and port "
        "from 'SSH over exposed TCP' instead")

"""Options of the pod backend (``gpuflex.use("pod", hosts=[...])`` or ``[tool.gpuflex.backends.pod]``)."""

from __future__ import annotations

import re
from typing import Any

import attrs

from gpuflex.errors import ConfigError

__all__ = ["HostSpec", "PodConfig", "parse_host"]

_HOST_RE = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[^\]]+\]|[^:@\s\[\]]+)(?::(?P<port>\d+))?$")


@attrs.frozen(kw_only=True)
class HostSpec:
    """One machine of the pool.

    :param destination: ``user@host`` or an alias from your ssh config.
    :param port: the SSH port (default: ssh's own, usually 22 or what the ssh config says).
    :param gpus: how many GPUs to use; ``None`` asks ``nvidia-smi`` on the host.
    :param hourly_rate: what the host costs per hour in USD; ``None`` uses a known price for its GPUs, else 0.
    :param identity_file: a private key for this host (default: the pool's ``identity_file``).
    :param python: the interpreter on this host (default: the pool's ``python``, else found or installed).
    """

    destination: str
    port: int | None = None
    gpus: int | None = None
    hourly_rate: float | None = None
    identity_file: str | None = None
    python: str | None = None

    @property
    def label(self) -> str:
        return f"{self.destination}:{self.port}" if self.port else self.destination


def parse_host(value: str | dict[str, Any] | HostSpec) -> HostSpec:
    """``"user@host[:port]"``, an ssh-config alias, or a dict of :class:`HostSpec` fields (``host=`` or
    ``destination=``)."""
    if isinstance(value, HostSpec):
        return value
    if isinstance(value, dict):
        fields = dict(value)
        text = fields.pop("host", None) or fields.pop("destination", None)
        if not isinstance(text, str):
            raise ConfigError(f"a pod host needs 'host': 'user@host[:port]', got {value!r}")
        base = parse_host(text)
        try:
            return attrs.evolve(base, **fields)
        except TypeError as exc:
            known = ", ".join(a.name for a in attrs.fields(HostSpec) if a.name != "destination")
            raise ConfigError(f"unknown option for pod host {text!r}: {exc}; known: host, {known}") from None
    if not isinstance(value, str):
        raise ConfigError(f"a pod host is 'user@host[:port]' or a dict, got {type(value).__name__}")
    match = _HOST_RE.match(value.strip())
    if match is None:
        raise ConfigError(f"cannot read pod host {value!r}: write it as user@host, user@host:port or an ssh alias")
    user, host, port = match["user"], match["host"].strip("[]"), match["port"]
    return HostSpec(destination=f"{user}@{host}" if user else host, port=int(port) if port else None)


def _hosts(value: Any) -> tuple[HostSpec, ...]:
    if isinstance(value, str | dict | HostSpec):
        value = [value]
    return tuple(parse_host(v) for v in value)


def _environment(inst: object, attr: attrs.Attribute[Any], value: dict[str, str]) -> None:
    for key, text in value.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(key)):
            raise ConfigError(f"host_env: {key!r} is not a valid environment variable name")
        if not isinstance(text, str) or "\n" in text or "\0" in text:
            raise ConfigError(f"host_env: the value of {key} must be a string without newlines")


def _positive(inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"{attr.name} must be a positive number, got {value!r}")


def _address(inst: object, attr: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9A-Za-z.:\-]+", value):
        raise ConfigError(f"deploy_bind must be an address (127.0.0.1, 0.0.0.0, ::), got {value!r}")


def _port(inst: object, attr: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536):
        raise ConfigError(f"deploy_port must be a port number (1 to 65535), got {value!r}")


@attrs.frozen(kw_only=True)
class PodConfig:
    """
    :param hosts: the machines (see :class:`HostSpec`); several form one pool.
    :param identity_file: the private key to log in with (default: ssh's own choice, e.g. ~/.ssh/id_ed25519).
    :param known_hosts: a known_hosts file to check host keys against (default: ~/.ssh/known_hosts).
    :param accept_new_host_keys: trust a host seen for the first time (``StrictHostKeyChecking=accept-new``);
        off by default, so an unknown host is an error that says how to add its key.
    :param ssh_config: an ssh config file (``ssh -F``), for aliases and jump hosts.
    :param python: the interpreter on the hosts; its major.minor must match this machine's. Unset: one of this
        machine's minor version found there (``python3.X``, ``python3``, ``python``), else installed with uv.
    :param install_python: with ``python`` unset, install the missing Python version with uv under
        ``remote_dir`` (once per host).
    :param remote_dir: where bundles, the gpuflex runtime, environments and uv's cache live on the hosts.
    :param host_env: environment variables for everything gpuflex runs on the hosts (proxies, certificate
        bundles, cache locations); per-endpoint ``env`` and ``secrets`` still travel with each worker.
    :param workers_per_host: most workers of CPU endpoints on one host (default: the CPUs it may use).
    :param connect_timeout: seconds to wait for one SSH connection.
    :param reconnect_attempts: tries (with exponential backoff) before a host counts as unreachable.
    :param keepalive_interval: seconds between keepalive probes on a quiet connection.
    :param keepalive_count: unanswered probes before the connection counts as lost (its workers too).
    :param start_timeout: seconds a worker's SSH session has to start its command.
    :param max_sessions: sessions the hosts' sshd allows on one connection (its ``MaxSessions``, 10 by default);
        more workers than that on one host get a further connection.
    :param strict_gpu: fail instead of running a GPU endpoint on CPU when no host has a GPU.
    :param reload_in_place: on a hot reload with unchanged settings, workers load the new code in their running
        process instead of being replaced.
    :param deploy_bind: the address ``gpuflex deploy``'s services listen on, on each host: loopback by default
        (reach it through an SSH forward); any other address makes the service require a bearer token, generated
        on the host at the first deploy (``<remote_dir>/services/<env>/<name>/token``, mode 0600).
    :param deploy_port: the port those services listen on (default: a free one, kept across deploys). With several
        endpoints deployed, leave it unset.
    :param deploy_timeout: seconds a deployed service has to answer ``/health`` after it starts.
    """

    hosts: tuple[HostSpec, ...] = attrs.field(default=(), converter=_hosts)
    identity_file: str | None = None
    known_hosts: str | None = None
    accept_new_host_keys: bool = False
    ssh_config: str | None = None
    python: str | None = None
    install_python: bool = True
    remote_dir: str = "~/.cache/gpuflex-pod"
    host_env: dict[str, str] = attrs.field(factory=dict, converter=dict, validator=_environment)
    workers_per_host: int | None = None
    connect_timeout: float = attrs.field(default=10.0, validator=_positive)
    reconnect_attempts: int = attrs.field(default=4, validator=_positive)
    keepalive_interval: float = attrs.field(default=5.0, validator=_positive)
    keepalive_count: int = attrs.field(default=3, validator=_positive)
    start_timeout: float = attrs.field(default=60.0, validator=_positive)
    max_sessions: int = attrs.field(default=10, validator=_positive)
    strict_gpu: bool = False
    reload_in_place: bool = True
    deploy_bind: str = attrs.field(default="127.0.0.1", validator=_address)
    deploy_port: int | None = attrs.field(default=None, validator=_port)
    deploy_timeout: float = attrs.field(default=120.0, validator=_positive)

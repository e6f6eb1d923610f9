"""What ``gpuflex deploy`` hands a backend that keeps deployments of its own (``Backend.capabilities["releases"]``):
an app's endpoints in one environment, and what comes back: a plan per endpoint (a diff), the deployed endpoints,
their versions.

Deploying is plan, then apply: :meth:`Backend.plan_release` reads what is deployed and compares it field by field
with what the app wants; :meth:`Backend.apply_release` makes only those changes (a plan with nothing to change
makes no mutating call), and records every applied deploy as a :class:`Version` (code, settings, git commit) where
the backend keeps its state, so :meth:`Backend.rollback` can restore one.
"""

from __future__ import annotations

import enum
import re
import subprocess
import time
import typing
from typing import TYPE_CHECKING, Any

import attrs

from .errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from ._models import Bundle, EndpointSpec

__all__ = ["DEFAULT_ENV", "DeployedEndpoint", "EndpointPlan", "FieldChange", "PlanAction", "Release",
           "ReleaseEndpoint", "Version", "check_env", "git_commit", "rollback_record"]

DEFAULT_ENV = "prod"
_ENV = re.compile(r"[a-z][a-z0-9]{0,15}")
_RESERVED_ENVS = ("dev", "live")  # the prefixes of development runs and of live test runs


def check_env(env: str) -> str:
    """``env`` when it is a valid environment name (``staging``, ``prod``...), else a ``ConfigError``."""
    if not _ENV.fullmatch(env):
        raise ConfigError(f"an environment name is 1 to 16 lowercase letters or digits, starting with a letter; "
                          f"got {env!r}")
    if env in _RESERVED_ENVS:
        raise ConfigError(f"the environment name {env!r} is reserved (development runs and live tests use it); "
                          "pick another, e.g. staging or prod")
    return env


def git_commit(path: Path) -> str | None:
    """The commit of the repository holding ``path`` (``+dirty`` when it has uncommitted changes), or None."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    if not head:
        return None
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


@typing.final
@attrs.frozen
class ReleaseEndpoint:
    spec: EndpointSpec
    bundle: Bundle


@typing.final
@attrs.frozen(kw_only=True)
class Release:
    """One deploy: the endpoints of ``app`` in environment ``env`` (each environment has its own endpoints)."""

    app: str
    env: str = attrs.field(default=DEFAULT_ENV, validator=lambda _i, _a, v: check_env(v))
    commit: str | None = None
    endpoints: tuple[ReleaseEndpoint, ...] = ()


class PlanAction(enum.Enum):
    CREATE = "create"
    CHANGE = "change"
    UNCHANGED = "unchanged"
    REMOVE = "remove"  # deployed by this app, no longer in it


@typing.final
@attrs.frozen(kw_only=True)
class FieldChange:
    """One field of an endpoint, deployed -> wanted (values as shown: secrets are never shown). ``drift``: the
    vendor holds a value other than the one gpuflex last sent (changed in a console, or by the vendor)."""

    field: str
    deployed: Any
    wanted: Any
    drift: bool = False


@typing.final
@attrs.frozen(kw_only=True)
class EndpointPlan:
    """What deploying would do to one endpoint. ``warm_usd_per_hour``: what its always-on workers (``min_workers``)
    cost per hour, deployed and wanted (None: no published price). ``notes``: what the plan cannot change (a value
    only the vendor sets), said plainly."""

    name: str
    backend: str
    action: PlanAction
    changes: tuple[FieldChange, ...] = ()
    notes: tuple[str, ...] = ()
    warm_usd_per_hour: tuple[float | None, float | None] = (0.0, 0.0)
    id: str | None = None

    @property
    def warm_change(self) -> float | None:
        deployed, wanted = self.warm_usd_per_hour
        return None if deployed is None or wanted is None else wanted - deployed


@typing.final
@attrs.frozen(kw_only=True)
class DeployedEndpoint:
    """An endpoint after a deploy: where a plain HTTP client calls it (``url``) and its current version.
    ``access``: where the backend serves it from several places (the pod backend: one per host), how a client
    reaches each (``url``, an SSH ``forward`` command, the ``token_file`` on the host); shown by ``deploy --json``."""

    name: str
    backend: str
    env: str
    action: PlanAction
    id: str | None = None
    url: str | None = None
    version: int | None = None
    access: tuple[Mapping[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "backend": self.backend, "env": self.env, "action": self.action.value,
                "id": self.id, "url": self.url, "version": self.version} | \
            ({"access": [dict(a) for a in self.access]} if self.access else {})


@typing.final
@attrs.frozen(kw_only=True)
class Version:
    """One applied deploy of one endpoint: its code (bundle hash), its settings and the app's git commit."""

    number: int
    bundle: str
    settings: Mapping[str, Any] = attrs.field(factory=dict)
    commit: str | None = None
    created_at: float = attrs.field(factory=time.time)
    note: str = ""
    current: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"version": self.number, "bundle": self.bundle, "commit": self.commit, "created_at": self.created_at,
                "note": self.note, "current": self.current, "settings": dict(self.settings)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, current: bool = False) -> Version:
        """A version from the record a backend keeps for it (a JSON object: ``number``, ``bundle``, ``created_at``,
        and optionally ``settings``, ``commit``, ``note``)."""
        return cls(number=record["number"], bundle=record["bundle"], settings=record.get("settings") or {},
                   commit=record.get("commit"), created_at=record["created_at"], note=record.get("note") or "",
                   current=current)


def rollback_record(records: list[dict[str, Any]], name: str, env: str,
                    number: int | None) -> tuple[int, dict[str, Any]]:
    """``gpuflex rollback NAME [VERSION]`` on a backend that keeps its versions as records (oldest first, see
    :meth:`Version.from_record`): the version restored (``number``, default: the one before the current) and the new
    record restoring it, numbered next and noted as a rollback; the caller applies it and appends it."""
    if number is None:
        if len(records) < 2:
            raise ConfigError(f"{name!r} has only one version in {env!r}: nothing to roll back to")
        number = records[-2]["number"]
    target = next((v for v in records if v["number"] == number), None)
    if target is None:
        raise ConfigError(f"{name!r} has no version {number} in {env!r}; it has "
                          f"{', '.join(str(v['number']) for v in records)}")
    return number, {**target, "number": len(records) + 1, "created_at": time.time(),
                    "note": f"rollback to version {number}"}

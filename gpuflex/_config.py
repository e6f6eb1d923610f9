"""Which backend an endpoint runs on, and with which options.

Strongest first: ``endpoint(backend=...)``, ``with gpuflex.use(name, **options)``, a plugin's
``gpuflex_select_backend``, the endpoint's entry in the project file (``[tool.gpuflex.endpoints.<name>]`` in
pyproject.toml or ``[endpoints.<name>]`` in gpuflex.toml), ``GPUFLEX_BACKEND``, the project file's ``backend``,
and finally ``local``. Options for a backend come from the project file's ``[backends.<name>]`` table, then
``gpuflex.use``'s keyword arguments.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ._plugins import get_plugin_manager
from .errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

__all__ = ["BackendChoice", "ProjectConfig", "load_project_config", "resolve_backend", "use"]

DEFAULT_BACKEND = "local"


@attrs.frozen
class BackendChoice:
    name: str
    options: Mapping[str, Any] = attrs.field(factory=dict)

    def key(self) -> tuple[str, str]:
        return (self.name, repr(sorted(self.options.items())))


@attrs.frozen
class ProjectConfig:
    path: Path | None = None
    backend: str | None = None
    endpoints: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    backends: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    settings: Mapping[str, Any] = attrs.field(factory=dict)


_current: contextvars.ContextVar[BackendChoice | None] = contextvars.ContextVar("gpuflex_use", default=None)


@contextlib.contextmanager
def use(name: str, **options: Any) -> Iterator[BackendChoice]:
    """Run every endpoint called inside the block on backend ``name`` (unless an endpoint names its own).

    ``options`` configure the backend (its ``config_cls`` fields), e.g. ``use("local", hourly_rate=2.5)``.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"gpuflex.use() needs a backend name, got {name!r}")
    choice = BackendChoice(name, dict(options))
    token = _current.set(choice)
    try:
        yield choice
    finally:
        _current.reset(token)


def current_use() -> BackendChoice | None:
    return _current.get()


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


@functools.lru_cache(maxsize=16)
def _load(start: Path) -> ProjectConfig:
    for directory in (start, *start.parents):
        toml = directory / "gpuflex.toml"
        if toml.is_file():
            return _parse(_read_toml(toml), toml)
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file():
            table = _read_toml(pyproject).get("tool", {}).get("gpuflex")
            if table is not None:
                return _parse(table, pyproject)
    return ProjectConfig()


def _parse(table: dict[str, Any], path: Path) -> ProjectConfig:
    backend = table.get("backend")
    if backend is not None and not isinstance(backend, str):
        raise ConfigError(f"{path}: 'backend' must be a string, got {backend!r}")
    for key in ("endpoints", "backends"):
        if not isinstance(table.get(key, {}), dict):
            raise ConfigError(f"{path}: '{key}' must be a table")
    settings = {k: v for k, v in table.items() if k not in ("backend", "endpoints", "backends")}
    return ProjectConfig(path, backend, table.get("endpoints", {}), table.get("backends", {}), settings)


def load_project_config(start: Path | None = None) -> ProjectConfig:
    """The project file for ``start`` (default: the directory the process started in, read once)."""
    return _load_start() if start is None else _load(start.resolve())


@functools.lru_cache(maxsize=1)
def _load_start() -> ProjectConfig:
    return _load(Path.cwd().resolve())


def reload_project_config() -> None:
    """Forget what was read from project files (after editing them in a running process)."""
    _load_start.cache_clear()
    _load.cache_clear()


def resolve_backend(endpoint_name: str, explicit: str | None, spec: Any = None) -> BackendChoice:
    """Apply the order in the module docstring."""
    project = load_project_config()
    chosen = current_use()
    if explicit is not None:
        name = explicit
        options: dict[str, Any] = dict(chosen.options) if chosen and chosen.name == explicit else {}
    elif chosen is not None:
        name, options = chosen.name, dict(chosen.options)
    else:
        hook = get_plugin_manager().hook.gpuflex_select_backend
        picked = hook(spec=spec) if spec is not None and hook.get_hookimpls() else None
        per_endpoint = project.endpoints.get(endpoint_name, {}).get("backend")
        name = picked or per_endpoint or os.environ.get("GPUFLEX_BACKEND") or project.backend or DEFAULT_BACKEND
        options = {}
    merged = {**project.backends.get(name, {}), **options}
    return BackendChoice(name, merged)

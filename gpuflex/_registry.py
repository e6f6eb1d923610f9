"""The backend registry: strict (no two backends share a name), lazy (built on first use), helpful (an unknown
name lists what is installed and what to install)."""

from __future__ import annotations

import threading
from importlib import metadata

from ._plugins import broken_plugins, call_register_backends, plugin_distributions
from .backend import Backend
from .errors import PluginError, UnknownBackendError

__all__ = ["BackendRegistry", "get_registry", "list_backends"]


class BackendRegistry:
    def __init__(self) -> None:
        self._classes: dict[str, type[Backend]] = {}
        self._aliases: dict[str, str] = {}
        self._collected = False
        self._lock = threading.Lock()

    def register(self, cls: type[Backend]) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise PluginError(f"{cls!r} is not a gpuflex.backend.Backend subclass")
        name = getattr(cls, "name", None)
        if not name or not isinstance(name, str):
            raise PluginError(f"backend class {cls.__module__}.{cls.__qualname__} has no `name`")
        for key in (name, *cls.aliases):
            owner = self._classes.get(key) or self._classes.get(self._aliases.get(key, ""))
            if owner is not None and owner is not cls:
                raise PluginError(
                    f"two backends are named {key!r}: {owner.__module__}.{owner.__qualname__} and "
                    f"{cls.__module__}.{cls.__qualname__}; uninstall one or block it with GPUFLEX_DISABLE_PLUGINS"
                )
        self._classes[name] = cls
        for alias in cls.aliases:
            self._aliases[alias] = name

    def collect(self) -> None:
        with self._lock:
            if self._collected:
                return
            for cls in call_register_backends():
                self.register(cls)
            self._collected = True

    def get(self, name: str) -> type[Backend]:
        canonical = self._aliases.get(name, name)
        if canonical in self._classes:
            return self._classes[canonical]
        self.collect()
        canonical = self._aliases.get(name, name)
        if canonical not in self._classes:
            if name in broken_plugins:
                raise PluginError(f"the plugin providing backend {name!r} failed to load: {broken_plugins[name]}")
            raise UnknownBackendError(name, list(self._classes))
        return self._classes[canonical]

    def names(self) -> list[str]:
        self.collect()
        return sorted(self._classes)

    def registered(self) -> dict[str, type[Backend]]:
        """The classes registered so far, by name, without collecting the entry points."""
        return dict(self._classes)

    def describe(self) -> list[dict[str, object]]:
        """Name, distribution version and capabilities of every installed backend (for ``gpuflex backends``)."""
        rows: list[dict[str, object]] = []
        for name in self.names():
            cls = self._classes[name]
            top = cls.__module__.split(".")[0]
            if top in plugin_distributions:
                version = plugin_distributions[top][1]
            else:
                dists = metadata.packages_distributions().get(top, [])
                version = metadata.version(dists[0]) if dists else "unknown"
            rows.append({"name": name, "aliases": list(cls.aliases), "version": version,
                         "capabilities": dict(cls.capabilities)})
        return rows


_registry: BackendRegistry | None = None
_registry_lock = threading.Lock()


def get_registry() -> BackendRegistry:
    global _registry
    with _registry_lock:
        if _registry is None:
            _registry = BackendRegistry()
        return _registry


def reset_registry() -> None:
    global _registry
    with _registry_lock:
        _registry = None


def list_backends() -> list[str]:
    """Names of the installed backends."""
    return get_registry().names()

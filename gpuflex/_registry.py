"""The backend registry: strict (no two backends share a name), lazy (built on first use), helpful (an unknown
name lists what is installed and what to install)."""

from __future__ import annotations

import threading
from importlib import metadata

from ._plugins import broken_plugins, call_register_backends, plugin_distributions
from .backend import Backend, BackendRef
from .errors import PluginError, UnknownBackendError

__all__ = ["BackendRegistry", "get_registry", "list_backends"]


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class BackendRegistry:
    """Backends by name. A plugin registers a class, or a :class:`~gpuflex.backend.BackendRef` that is imported
    the first time its backend is asked for."""

    def __init__(self) -> None:
        self._classes: dict[str, type[Backend]] = {}
        self._refs: dict[str, BackendRef] = {}
        self._aliases: dict[str, str] = {}
        self._collected = False
        self._lock = threading.RLock()

    def register(self, item: type[Backend] | BackendRef) -> None:
        with self._lock:
            if isinstance(item, BackendRef):
                name, aliases, what = item.name, item.aliases, item.target
            elif isinstance(item, type) and issubclass(item, Backend):
                found, aliases, what = getattr(item, "name", None), tuple(item.aliases), _qualname(item)
                if not found or not isinstance(found, str):
                    raise PluginError(f"backend class {what} has no `name`")
                name = found
            else:
                raise PluginError(f"{item!r} is not a gpuflex.backend.Backend subclass (nor a BackendRef)")
            for key in (name, *aliases):
                owner = self._owner(self._aliases.get(key, key))
                if owner is not None and owner != what:
                    raise PluginError(f"two backends are named {key!r}: {owner} and {what}; uninstall one or block "
                                      "it with GPUFLEX_DISABLE_PLUGINS")
            if isinstance(item, BackendRef):
                if name not in self._classes:
                    self._refs[name] = item
            else:
                self._classes[name] = item
                self._refs.pop(name, None)
            for alias in aliases:
                self._aliases[alias] = name

    def _owner(self, name: str) -> str | None:
        if name in self._classes:
            return _qualname(self._classes[name])
        return self._refs[name].target if name in self._refs else None

    def collect(self) -> None:
        with self._lock:
            if self._collected:
                return
            for item in call_register_backends():
                self.register(item)
            self._collected = True

    def _load(self, name: str) -> type[Backend]:
        """The class of a registered name, importing a :class:`BackendRef` now."""
        with self._lock:
            if name in self._classes:
                return self._classes[name]
            ref = self._refs[name]
            try:
                cls = ref.load()
            except Exception as exc:
                raise PluginError(f"the plugin providing backend {name!r} failed to load {ref.target}: "
                                  f"{type(exc).__name__}: {exc}") from exc
            self._classes[name] = cls
            del self._refs[name]
            return cls

    def get(self, name: str) -> type[Backend]:
        canonical = self._aliases.get(name, name)
        if canonical not in self._classes and canonical not in self._refs:
            self.collect()
            canonical = self._aliases.get(name, name)
        if canonical not in self._classes and canonical not in self._refs:
            if name in broken_plugins:
                raise PluginError(f"the plugin providing backend {name!r} failed to load: {broken_plugins[name]}")
            raise UnknownBackendError(name, self.names())
        return self._load(canonical)

    def names(self) -> list[str]:
        self.collect()
        return sorted({*self._classes, *self._refs})

    def registered(self) -> dict[str, type[Backend]]:
        """The backends registered so far, by name, imported (a :class:`BackendRef` is loaded here), without
        collecting the entry points."""
        with self._lock:
            return {name: self._load(name) for name in sorted({*self._classes, *self._refs})}

    def describe(self) -> list[dict[str, object]]:
        """Name, distribution version and capabilities of every installed backend (for ``gpuflex backends``)."""
        rows: list[dict[str, object]] = []
        for name in self.names():
            cls = self._load(name)
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

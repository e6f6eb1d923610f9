"""The plugin manager: built in a function, never on import."""

from __future__ import annotations

import os
import threading
import typing
import warnings
from importlib import metadata
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs
from ._collector import PLUGIN_NAME as STATS_PLUGIN
from ._collector import collector
from ._tracing import TRACING_ENV, install_tracing
from .errors import GpuflexWarning

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._models import Cost, EndpointSpec, Price
    from .backend import Backend, BackendRef

__all__ = ["build_plugin_manager", "get_plugin_manager", "hookimpl", "reset_plugin_manager"]

hookimpl = pluggy.HookimplMarker("gpuflex")

_lock = threading.Lock()
_manager: pluggy.PluginManager | None = None


#: entry-point name -> why its plugin failed to load (reported when someone asks for that backend)
broken_plugins: dict[str, str] = {}
#: top-level package of a plugin -> (distribution name, version), for ``gpuflex backends``
plugin_distributions: dict[str, tuple[str, str]] = {}


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    """Load every ``gpuflex`` entry point. One that fails to import is reported with a warning and skipped, so
    a broken third-party plugin cannot take the other backends down with it."""
    broken_plugins.clear()
    for dist in metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != "gpuflex" or pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                reason = f"{dist.metadata['name']} {dist.version}: {type(exc).__name__}: {exc}"
                broken_plugins[ep.name] = reason
                warnings.warn(f"gpuflex plugin {ep.name!r} failed to load and is skipped ({reason})",
                              GpuflexWarning, stacklevel=3)
                continue
            pm.register(plugin, name=ep.name)
            plugin_distributions[ep.module.split(".")[0]] = (dist.metadata["name"], dist.version)


def build_plugin_manager() -> pluggy.PluginManager:
    """A new plugin manager with every installed plugin loaded (``get_plugin_manager`` keeps one per process)."""
    pm = pluggy.PluginManager("gpuflex")
    pm.add_hookspecs(hookspecs)
    for name in filter(None, os.environ.get("GPUFLEX_DISABLE_PLUGINS", "").split(",")):
        pm.set_blocked(name.strip())
    _load_entry_points(pm)
    pm.register(collector(), name=STATS_PLUGIN)  # gpuflex.stats(): counts every job of the process
    if os.environ.get(TRACING_ENV, "").strip().lower() not in ("", "0", "false", "no", "off"):
        install_tracing(pm)
    pm.check_pending()
    if os.environ.get("GPUFLEX_TRACE_PLUGINS"):
        pm.trace.root.setwriter(print)
        pm.enable_tracing()
    return pm


def get_plugin_manager() -> pluggy.PluginManager:
    global _manager
    with _lock:
        if _manager is None:
            _manager = build_plugin_manager()
        return _manager


def reset_plugin_manager() -> None:
    """Forget the plugin manager (tests; after installing a plugin in a running process)."""
    global _manager
    with _lock:
        _manager = None


# Typed wrappers: the core calls hooks through these, with keyword arguments only.


def call_register_backends() -> list[type[Backend] | BackendRef]:
    found: list[type[Backend] | BackendRef] = []
    for result in get_plugin_manager().hook.gpuflex_register_backends():
        if result is None:
            continue
        found.extend(result if isinstance(result, list | tuple) else [result])
    return found


def call_endpoint_spec(spec: EndpointSpec) -> EndpointSpec:
    pm = get_plugin_manager()
    for impl in reversed(pm.hook.gpuflex_endpoint_spec.get_hookimpls()):
        replacement = impl.function(**{k: v for k, v in {"spec": spec}.items() if k in impl.argnames})
        if replacement is not None:
            spec = typing.cast("EndpointSpec", replacement)
    return spec


def call_hook(name: str, **kwargs: Any) -> Any:
    """Call a hook, skipping the call entirely when no plugin implements it (the per-job hot path)."""
    caller = getattr(get_plugin_manager().hook, name)
    if not caller.get_hookimpls():
        return None
    return caller(**kwargs)


def call_price(spec: EndpointSpec, backend: str, default: Price) -> Price:
    price: Price | None = call_hook("gpuflex_price", spec=spec, backend=backend, default=default)
    return default if price is None else price


def call_check_budget(spec: EndpointSpec, spent: Callable[[], Cost], backend: str) -> str | None:
    """``spent`` is computed only when a plugin implements the hook (it sums every endpoint's costs)."""
    caller = get_plugin_manager().hook.gpuflex_check_budget
    if not caller.get_hookimpls():
        return None
    reason: str | None = caller(spec=spec, spent=spent(), backend=backend)
    return reason

"""gpuflex's pod backend: worker processes on any machine you can SSH into, with nothing installed beforehand."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._backend import HostUsage as HostUsage
    from ._backend import PodBackend as PodBackend
    from ._config import HostSpec as HostSpec
    from ._config import PodConfig as PodConfig

__all__ = ["HostSpec", "HostUsage", "PodBackend", "PodConfig"]

# imported on first use: the plugin entry point registers the backend by name, and a process that uses another
# backend never imports this one's modules (nor what they import)
_WHERE = {"HostUsage": "._backend", "PodBackend": "._backend", "HostSpec": "._config", "PodConfig": "._config"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""gpuflex's Ray backend: each endpoint is a pool of Ray actors on a Ray cluster you already run."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._backend import ActorUsage as ActorUsage
    from ._backend import RayBackend as RayBackend
    from ._config import RayConfig as RayConfig

__all__ = ["ActorUsage", "RayBackend", "RayConfig"]

# imported on first use: the plugin entry point registers the backend by name, and a process that uses another
# backend never imports this one's modules (nor what they import)
_WHERE = {"ActorUsage": "._backend", "RayBackend": "._backend", "RayConfig": "._config"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

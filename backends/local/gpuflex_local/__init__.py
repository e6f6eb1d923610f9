"""gpuflex's local backend: worker processes on this machine, pinned to its CUDA GPUs (or on CPU)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._backend import LocalBackend as LocalBackend
    from ._config import LocalConfig as LocalConfig

__all__ = ["LocalBackend", "LocalConfig"]

# imported on first use: the plugin entry point registers the backend by name, and a process that uses another
# backend never imports this one's modules (nor what they import)
_WHERE = {"LocalBackend": "._backend", "LocalConfig": "._config"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""gpuflex's Modal backend: each endpoint becomes a Modal class on one ``modal.App``, running gpuflex's worker
runtime in the container with the same call envelope as every other backend."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._backend import ModalBackend as ModalBackend
    from ._config import ModalConfig as ModalConfig
    from ._plan import ModalPlan as ModalPlan
    from ._plan import plan_for as plan_for

__all__ = ["ModalBackend", "ModalConfig", "ModalPlan", "plan_for"]

# imported on first use: the plugin entry point registers the backend by name, and a process that uses another
# backend never imports this one's modules (nor what they import)
_WHERE = {"ModalBackend": "._backend", "ModalConfig": "._config", "ModalPlan": "._plan", "plan_for": "._plan"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

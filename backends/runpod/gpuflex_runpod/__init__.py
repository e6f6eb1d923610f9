"""gpuflex on RunPod Serverless: the ``serverless`` backend (alias ``runpod``), the worker handler that runs inside
``runpod.serverless.start``, and an offline emulator of RunPod's API (:mod:`gpuflex_runpod.emulator`)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._backend import RunPodBackend as RunPodBackend
    from ._config import RunPodConfig as RunPodConfig

__all__ = ["RunPodBackend", "RunPodConfig"]

# imported on first use: the plugin entry point registers the backend by name, and a process that uses another
# backend never imports this one's modules (nor what they import)
_WHERE = {"RunPodBackend": "._backend", "RunPodConfig": "._config"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""gpuflex on RunPod Serverless: the ``serverless`` backend (alias ``runpod``), the worker handler that runs inside
``runpod.serverless.start``, and an offline emulator of RunPod's API (:mod:`gpuflex_runpod.emulator`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpuflex.backend import lazy_exports

if TYPE_CHECKING:
    from ._backend import RunPodBackend as RunPodBackend
    from ._config import RunPodConfig as RunPodConfig

__all__ = ["RunPodBackend", "RunPodConfig"]

# imported on first use: the entry point registers the backend by name (a BackendRef), so a process that uses
# another backend never imports this one's modules, nor what they import
__getattr__ = lazy_exports(__name__, {"RunPodBackend": "._backend", "RunPodConfig": "._config"})

"""gpuflex's Ray backend: each endpoint is a pool of Ray actors on a Ray cluster you already run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpuflex.backend import lazy_exports

if TYPE_CHECKING:
    from ._backend import ActorUsage as ActorUsage
    from ._backend import RayBackend as RayBackend
    from ._config import RayConfig as RayConfig

__all__ = ["ActorUsage", "RayBackend", "RayConfig"]

# imported on first use: the entry point registers the backend by name (a BackendRef), so a process that uses
# another backend never imports this one's modules, nor what they import
__getattr__ = lazy_exports(__name__, {"ActorUsage": "._backend", "RayBackend": "._backend", "RayConfig": "._config"})

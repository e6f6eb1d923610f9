"""gpuflex's local backend: worker processes on this machine, pinned to its CUDA GPUs (or on CPU)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpuflex.backend import lazy_exports

if TYPE_CHECKING:
    from ._backend import LocalBackend as LocalBackend
    from ._config import LocalConfig as LocalConfig

__all__ = ["LocalBackend", "LocalConfig"]

# imported on first use: the entry point registers the backend by name (a BackendRef), so a process that uses
# another backend never imports this one's modules, nor what they import
__getattr__ = lazy_exports(__name__, {"LocalBackend": "._backend", "LocalConfig": "._config"})

"""gpuflex's pod backend: worker processes on any machine you can SSH into, with nothing installed beforehand."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpuflex.backend import lazy_exports

if TYPE_CHECKING:
    from ._backend import HostUsage as HostUsage
    from ._backend import PodBackend as PodBackend
    from ._config import HostSpec as HostSpec
    from ._config import PodConfig as PodConfig

__all__ = ["HostSpec", "HostUsage", "PodBackend", "PodConfig"]

# imported on first use: the entry point registers the backend by name (a BackendRef), so a process that uses
# another backend never imports this one's modules, nor what they import
__getattr__ = lazy_exports(__name__, {
    "HostUsage": "._backend", "PodBackend": "._backend",
    "HostSpec": "._config", "PodConfig": "._config",
})

"""gpuflex's pod backend: worker processes on any machine you can SSH into, with nothing installed beforehand."""

from __future__ import annotations

from ._backend import HostUsage as HostUsage
from ._backend import PodBackend as PodBackend
from ._config import HostSpec as HostSpec
from ._config import PodConfig as PodConfig

__all__ = ["HostSpec", "HostUsage", "PodBackend", "PodConfig"]

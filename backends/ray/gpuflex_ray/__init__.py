"""gpuflex's Ray backend: each endpoint is a pool of Ray actors on a Ray cluster you already run."""

from __future__ import annotations

from ._backend import ActorUsage as ActorUsage
from ._backend import RayBackend as RayBackend
from ._config import RayConfig as RayConfig

__all__ = ["ActorUsage", "RayBackend", "RayConfig"]

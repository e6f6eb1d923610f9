"""gpuflex's local backend: worker processes on this machine, pinned to its CUDA GPUs (or on CPU)."""

from __future__ import annotations

from ._backend import LocalBackend as LocalBackend
from ._config import LocalConfig as LocalConfig

__all__ = ["LocalBackend", "LocalConfig"]

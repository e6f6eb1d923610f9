"""An example gpuflex backend, ``subprocess-example``: every call runs in a fresh worker process on this machine.

It is a template for third-party backends: small on purpose, and honest about what it lacks (see
``SubprocessBackend.capabilities``).
"""

from __future__ import annotations

from ._backend import SubprocessBackend as SubprocessBackend
from ._config import SubprocessConfig as SubprocessConfig

__all__ = ["SubprocessBackend", "SubprocessConfig"]

"""gpuflex's Modal backend: each endpoint becomes a Modal class on one ``modal.App``, running gpuflex's worker
runtime in the container with the same call envelope as every other backend."""

from __future__ import annotations

from ._backend import ModalBackend as ModalBackend
from ._config import ModalConfig as ModalConfig
from ._plan import ModalPlan as ModalPlan
from ._plan import plan_for as plan_for

__all__ = ["ModalBackend", "ModalConfig", "ModalPlan", "plan_for"]

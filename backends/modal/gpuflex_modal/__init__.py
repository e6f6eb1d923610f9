"""gpuflex's Modal backend: each endpoint becomes a Modal class on one ``modal.App``, running gpuflex's worker
runtime in the container with the same call envelope as every other backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpuflex.backend import lazy_exports

if TYPE_CHECKING:
    from ._backend import ModalBackend as ModalBackend
    from ._config import ModalConfig as ModalConfig
    from ._plan import ModalPlan as ModalPlan
    from ._plan import plan_for as plan_for

__all__ = ["ModalBackend", "ModalConfig", "ModalPlan", "plan_for"]

# imported on first use: the entry point registers the backend by name (a BackendRef), so a process that uses
# another backend never imports this one's modules, nor what they import
__getattr__ = lazy_exports(__name__, {
    "ModalBackend": "._backend", "ModalConfig": "._config",
    "ModalPlan": "._plan", "plan_for": "._plan",
})

"""Entry point of the Modal backend: it registers the way any third-party plugin does, by name, so that its modules
are imported only when a process uses it."""

from __future__ import annotations

from gpuflex import hookimpl
from gpuflex.backend import BackendRef


@hookimpl
def gpuflex_register_backends() -> BackendRef:
    return BackendRef(name='modal', target='gpuflex_modal._backend:ModalBackend')

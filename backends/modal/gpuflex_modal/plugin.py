"""Entry point of the Modal backend: it registers the way any third-party plugin does."""

from __future__ import annotations

from gpuflex import hookimpl

from ._backend import ModalBackend


@hookimpl
def gpuflex_register_backends() -> type[ModalBackend]:
    return ModalBackend

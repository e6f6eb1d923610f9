"""Entry point of the pod backend: it registers the way any third-party plugin does."""

from __future__ import annotations

from gpuflex import hookimpl

from ._backend import PodBackend


@hookimpl
def gpuflex_register_backends() -> type[PodBackend]:
    return PodBackend

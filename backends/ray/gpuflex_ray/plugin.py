"""Entry point of the Ray backend: it registers the way any third-party plugin does."""

from __future__ import annotations

from gpuflex import hookimpl

from ._backend import RayBackend


@hookimpl
def gpuflex_register_backends() -> type[RayBackend]:
    return RayBackend

"""Entry point of the local backend: it registers the way any third-party plugin does."""

from __future__ import annotations

from gpuflex import hookimpl

from ._backend import LocalBackend


@hookimpl
def gpuflex_register_backends() -> type[LocalBackend]:
    return LocalBackend

"""The entry point named in pyproject.toml. It only registers the backend class: all behaviour lives on the class
(built-in backends register exactly the same way)."""

from __future__ import annotations

from gpuflex import hookimpl

from ._backend import SubprocessBackend


@hookimpl
def gpuflex_register_backends() -> type[SubprocessBackend]:
    return SubprocessBackend

"""Entry point of the RunPod serverless backend: it registers the way any third-party plugin does."""

from __future__ import annotations

from gpuflex import hookimpl

from ._backend import RunPodBackend


@hookimpl
def gpuflex_register_backends() -> type[RunPodBackend]:
    return RunPodBackend

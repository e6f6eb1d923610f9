"""Which backends this environment has, read afresh, and whether each can run a call here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpuflex import _plugins
from gpuflex.errors import AuthenticationError, BackendUnavailable, ConfigError, PluginError

from . import _endpoints as ep
from ._harness import WAIT, backend_in_use

if TYPE_CHECKING:
    from gpuflex.backend import Backend

    from ._harness import BackendFactory

__all__ = ["installed_backends", "probe_backend"]


def installed_backends() -> dict[str, type[Backend]]:
    """Every backend the ``gpuflex`` entry points register now, by name, read afresh as a new process would (a
    distribution installed after this process built its registry is included). Leaves the process's own plugin
    manager and registry as they are.

    :raises PluginError: two backends share a name, or a plugin returned something that is not a backend.
    """
    from gpuflex._registry import BackendRegistry

    manager = _plugins.build_plugin_manager()
    registry = BackendRegistry()
    for result in manager.hook.gpuflex_register_backends():
        for cls in result if isinstance(result, list | tuple) else [result]:
            if cls is not None:
                registry.register(cls)
    return dict(sorted(registry.registered().items()))


def probe_backend(make_backend: BackendFactory, timeout: float = WAIT) -> str | None:
    """Why the backend cannot run a call here, or ``None`` when it can: one call of a conformance endpoint on a
    fresh instance. Missing credentials, hosts or services (``AuthenticationError``, ``ConfigError``,
    ``BackendUnavailable``, a broken plugin) give a reason; any other failure is raised, as a bug would be."""
    try:
        with backend_in_use(make_backend):
            job = ep.echo.spawn("probe")
            try:
                job.result(timeout=timeout)
            except TimeoutError:
                job.cancel()
                return f"a call did not finish within {timeout} s"
    except (AuthenticationError, BackendUnavailable, ConfigError, PluginError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None

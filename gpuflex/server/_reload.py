"""Hot reload for ``gpuflex serve``: watch the project, re-import the app on save, rebind the routes, and hand
the new bundle to the backend.

The app is re-imported in the server process first. If that fails (a syntax error, an exception at import) the
old code keeps serving and the error is printed. Otherwise bundles are invalidated, so the next call of every
endpoint deploys the new code; endpoints already called are redeployed at once, which lets the local backend
load the new code into idle workers before the next call arrives. Calls already running finish on the old code.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from rich.console import Console
from rich.markup import escape
from watchfiles import DefaultFilter, awatch

from .._apps import LoadedApp, load_app
from .._bundle import find_project_root
from .._config import reload_project_config, resolve_backend, use
from .._ledger import gpuflex_home
from ..client._session import get_session
from ._schema import Route, routes_for

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ..client._endpoint import Endpoint
    from ._state import ServerState

__all__ = ["Reloader", "WatchFilter"]

_GPUFLEX_DIR = str(Path(__file__).resolve().parent)


class WatchFilter(DefaultFilter):
    """Python sources and the project file, outside watchfiles' default ignores (.git, __pycache__, .venv, editor
    files...) and more caches and environments. Other files (a log the server's own output is redirected to, data
    the app writes) never trigger a reload: reacting to them could loop forever."""

    suffixes = (".py", ".pyi")
    names = ("pyproject.toml", "gpuflex.toml")

    ignore_dirs = (*DefaultFilter.ignore_dirs, ".nox", ".tox", "venv", "env", ".ruff_cache", "build", "dist",
                   "site-packages")

    def __init__(self) -> None:
        super().__init__(ignore_entity_patterns=(*DefaultFilter.ignore_entity_patterns, r"\.log$", r"\.jsonl$"))
        self._home = str(gpuflex_home().resolve())

    def __call__(self, change: Any, path: str) -> bool:
        wanted = path.endswith(self.suffixes) or Path(path).name in self.names
        return wanted and not path.startswith(self._home) and super().__call__(change, path)


def _reimport(app_path: Path, changed: Sequence[Path]) -> tuple[LoadedApp, list[Route]]:
    """Forget the project modules that changed (the app imports them afresh), then import the app again."""
    changed_files = {str(p) for p in changed}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and file in changed_files and not file.startswith(_GPUFLEX_DIR) and not name.startswith("__gpuflex"):
            del sys.modules[name]
    loaded = load_app(app_path)
    return loaded, [r for ep in loaded.endpoints.values() for r in routes_for(ep)]


class Reloader:
    def __init__(self, state: ServerState, rebind: Callable[[], None], console: Console | None = None) -> None:
        self.state = state
        self.rebind = rebind
        self.console = console or Console(stderr=True, highlight=False)
        self.root = find_project_root(state.loaded.path)

    async def watch(self, stop: anyio.Event) -> None:
        self.console.print(f"[dim]watching {escape(str(self.root))} for changes[/dim]")
        # step=10: hand a save over 10 ms after the last write (watchfiles waits 50 ms by default)
        async for changes in awatch(self.root, watch_filter=WatchFilter(), stop_event=stop, step=10):
            await self.reload(sorted({Path(path) for _, path in changes}))

    def _names(self, changed: Sequence[Path]) -> str:
        def rel(p: Path) -> str:
            try:
                return p.relative_to(self.root).as_posix()
            except ValueError:
                return str(p)

        return ", ".join(rel(p) for p in changed)

    async def reload(self, changed: Sequence[Path]) -> bool:
        started = time.perf_counter()
        try:
            loaded, routes = await anyio.to_thread.run_sync(_reimport, self.state.loaded.path, changed)
        except Exception as exc:
            lines = traceback.format_exception_only(exc) if isinstance(exc, SyntaxError) else \
                traceback.format_exception(exc)
            self.console.print(f"[bold red]reload failed[/bold red] after changes to {escape(self._names(changed))}; "
                               "still serving the previous code:")
            self.console.print("".join(lines).rstrip(), markup=False)
            return False
        if not loaded.endpoints and self.state.loaded.endpoints:  # most likely a save caught half-way
            self.console.print(f"[yellow]no endpoints left[/yellow] in {escape(loaded.path.name)}; "
                               "still serving the previous code")
            return False
        if any(p.name in ("pyproject.toml", "gpuflex.toml") for p in changed):
            reload_project_config()  # per-endpoint backends and backend options may have changed
        get_session().invalidate_bundles()
        self.state.loaded, self.state.routes = loaded, routes
        self.state.reloads += 1
        self.rebind()
        await self._redeploy([ep for name, ep in loaded.endpoints.items() if name in self.state.called])
        elapsed = (time.perf_counter() - started) * 1000
        self.console.print(f"[green]reloaded[/green] in {elapsed:.0f} ms: {escape(self._names(changed))} "
                           f"({len(routes)} routes)")
        return True

    async def _redeploy(self, endpoints: list[Endpoint[Any, Any]]) -> None:
        """Deploy the new bundle of endpoints already in use now, rather than on their next call.

        This reaches into the session (``_backend_sync``, ``_bind``): the core has no public "deploy now" yet.
        Without it (or if it fails) the next call deploys, which is correct, only slower.
        """
        session = get_session()
        backend_sync = getattr(session, "_backend_sync", None)
        bind = getattr(session, "_bind", None)
        if backend_sync is None or bind is None:
            return
        for ep in endpoints:
            try:
                with use(self.state.backend) if self.state.backend else contextlib.nullcontext():
                    choice = resolve_backend(ep.name, ep.spec.backend, ep.spec)
                backend = backend_sync(choice)
                await asyncio.wrap_future(session.submit(bind(backend, choice.key(), ep)))
            except Exception as exc:
                self.console.print(f"[yellow]redeploy of {escape(ep.name)} failed[/yellow]: {escape(str(exc))}")

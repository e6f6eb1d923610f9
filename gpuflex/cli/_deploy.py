"""``gpuflex deploy`` and ``gpuflex teardown``."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from .._config import resolve_backend, use
from .._plugins import call_endpoint_spec, call_hook
from ..client._session import get_session, shutdown
from ._report import endpoint_backends, make_backend

if TYPE_CHECKING:
    from rich.console import Console

    from .._apps import LoadedApp
    from ..backend import Backend

__all__ = ["deploy_app", "teardown_backend"]

# Backends whose deployments end with the process that made them.
_PROCESS_BOUND = frozenset({"local"})  # deployments that end with the deploying process


def deploy_app(loaded: LoadedApp, backend: str | None, console: Console, *, env: str = "prod",
               as_json: bool = False) -> None:
    """Backends that keep deployments (RunPod...) get plan -> apply (:mod:`._release`); the others deploy every
    endpoint and publish. ``as_json`` prints one JSON document for both."""
    from ._release import deploy_releases, keeps_releases

    session = get_session()
    instances: list[Backend] = []
    table = Table(title="deployed")
    for column in ("endpoint", "backend", "bundle", "files", "workers now"):
        table.add_column(column)
    try:
        done, openapi = deploy_releases(loaded, backend, env, console, as_json)
        entries = [d.to_json() for d in done]

        def install(instance: Backend) -> None:
            session.install_backend(instance)
            instances.append(instance)

        pairs = [(ep, instance) for ep, instance in endpoint_backends(loaded, backend, install)
                 if not keeps_releases(instance)]
        instances[:] = [i for i in instances if not keeps_releases(i)]
        for ep, instance in pairs:
            spec = call_endpoint_spec(ep.spec)
            with console.status(f"bundling and deploying {escape(ep.name)} on {instance.name}..."):
                bundle = session.bundle_for(ep)
                session.run(instance.deploy(spec, bundle))
                call_hook("gpuflex_deployed", spec=spec, bundle=bundle, backend=instance.name)
                workers = [w for w in session.run(instance.workers()) if w.endpoint == spec.name]
            states = ", ".join(f"{w.id} ({w.state.value.lower()})" for w in workers) or "none (scale from zero)"
            table.add_row(spec.name, instance.name, bundle.hash[:12], str(len(bundle.files)), states)
            entries.append({"name": spec.name, "backend": instance.name, "env": None, "action": "deploy",
                            "id": None, "url": None, "version": None})
        if pairs and not as_json:
            console.print(table)
        for instance in instances:
            with console.status(f"publishing on {instance.name}..."):
                where = session.run(instance.publish())
            if where and not as_json:
                console.print(f"published on {instance.name}: {escape(where)}")
        if as_json:
            sys.stdout.write(json.dumps({"endpoints": entries, "openapi": openapi}, indent=2) + "\n")
        elif any(b.name in _PROCESS_BOUND for b in instances):
            console.print("[yellow]Local deployments live only while the process that made them "
                          "runs:[/yellow] they stop as `gpuflex deploy` exits. To keep endpoints up and call them, "
                          "run `gpuflex serve APP.py` (or call them from your program).")
    finally:
        shutdown()


def teardown_backend(backend: str | None, endpoints: list[str] | None, console: Console) -> None:
    from ._release import keeps_releases

    with use(backend) if backend else contextlib.nullcontext():
        choice = resolve_backend("", None)
    instance = make_backend(choice.name, dict(choice.options))
    session = get_session()
    session.install_backend(instance)
    try:
        names: list[str | None] = list(endpoints) if endpoints else [None]
        for name in names:
            with console.status(f"tearing down {escape(name or 'every endpoint')} on {instance.name}..."):
                session.run(instance.teardown(name))
        what = ", ".join(endpoints) if endpoints else "every endpoint"
        console.print(f"tore down {escape(what)} on {instance.name}.")
        if instance.name in _PROCESS_BOUND:
            console.print("[dim]The local backend keeps nothing between processes: its workers stop with the "
                          "process that started them, so there was nothing left to remove.[/dim]")
        elif keeps_releases(instance):
            console.print(f"[dim]Endpoints `gpuflex deploy` made on {instance.name} live on in their environments: "
                          "`gpuflex teardown [APP.py] --env ENV` removes them (the default environment is prod)."
                          "[/dim]")
    finally:
        shutdown()

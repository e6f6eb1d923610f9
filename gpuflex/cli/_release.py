"""``gpuflex plan`` (the diff), ``deploy``, ``versions``, ``rollback``, ``call`` and ``openapi`` for backends that
keep deployments of their own (they implement :meth:`Backend.plan_release`; see :mod:`gpuflex._release`).

A deploy is plan, then apply: the plan reads what is deployed and shows, per endpoint, what would be created,
changed (field: deployed -> wanted, drift marked), left alone, or removed (deployed by this app, gone from it),
and what the always-on workers would cost per hour; applying makes only those changes. The OpenAPI document of
the deployed app (each endpoint's JSON API, with the schemas the dev server publishes) is written next to it.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import sys
from typing import TYPE_CHECKING, Any, Literal

from pydantic import TypeAdapter
from rich.markup import escape
from rich.table import Table

from .._bundle import GENERATED_SUFFIX
from .._config import resolve_backend, use
from .._jsoncall import CallSchema, call_schemas
from .._plugins import call_endpoint_spec
from .._release import PlanAction, Release, ReleaseEndpoint, git_commit
from .._version import __version__
from ..backend import Backend
from ..client._session import get_session, shutdown
from ._report import endpoint_backends, make_backend, usd

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from rich.console import Console

    from .._apps import LoadedApp
    from .._release import DeployedEndpoint, EndpointPlan
    from ..client._endpoint import Endpoint

__all__ = ["call_deployed", "deploy_releases", "deployed_openapi", "keeps_releases", "list_versions",
           "openapi_document",
           "plan_releases", "rollback_endpoint", "teardown_env"]


def keeps_releases(backend: Backend) -> bool:
    """Whether ``backend`` keeps deployments of its own (plan / apply / versions)."""
    return type(backend).plan_release is not Backend.plan_release


_Group = tuple[Backend, Release, list["Endpoint[Any, Any]"]]


def _groups(loaded: LoadedApp, backend: str | None, env: str) -> list[_Group]:
    """The app's endpoints on backends that keep releases, one release per backend instance."""
    session = get_session()
    commit = git_commit(loaded.path.parent)
    groups: dict[int, tuple[Backend, list[ReleaseEndpoint], list[Endpoint[Any, Any]]]] = {}
    for ep, instance in endpoint_backends(loaded, backend, session.install_backend):
        if not keeps_releases(instance):
            continue
        spec = call_endpoint_spec(ep.spec)
        entry = groups.setdefault(id(instance), (instance, [], []))
        entry[1].append(ReleaseEndpoint(spec, session.bundle_for(ep)))
        entry[2].append(ep)
    return [(instance, Release(app=loaded.path.stem, env=env, commit=commit, endpoints=tuple(items)), eps)
            for instance, items, eps in groups.values()]


def _value(value: Any) -> str:
    return "(none)" if value is None else escape(value if isinstance(value, str) else json.dumps(value))


def _warm(plan: EndpointPlan) -> str:
    deployed, wanted = plan.warm_usd_per_hour
    def show(v: float | None) -> str:
        return "unknown" if v is None else usd(v)

    change = plan.warm_change
    delta = "" if change is None or change == 0 else f" ({'+' if change > 0 else '-'}{usd(abs(change))}/hour)"
    return f"{show(deployed)}/hour -> {show(wanted)}/hour{delta}"


def plan_table(plans: list[EndpointPlan], env: str) -> Table:
    table = Table(title=f"what deploying would change (environment {env})", show_lines=True)
    for column in ("endpoint", "backend", "action", "changes (deployed -> wanted)", "warm workers"):
        table.add_column(column, overflow="fold")
    for plan in plans:
        lines = [f"{escape(c.field)}: {_value(c.deployed)} -> {_value(c.wanted)}"
                 + (" [yellow](drift: changed outside gpuflex)[/yellow]" if c.drift else "")
                 for c in plan.changes if plan.action is PlanAction.CHANGE]
        if plan.action is PlanAction.CREATE:
            lines = [f"{len(plan.changes)} fields"]
        lines += [f"[dim]note: {escape(n)}[/dim]" for n in plan.notes]
        table.add_row(plan.name, plan.backend, plan.action.value, "\n".join(lines) or "-", _warm(plan))
    return table


def plan_releases(loaded: LoadedApp, backend: str | None, env: str, console: Console) -> list[EndpointPlan]:
    session = get_session()
    plans: list[EndpointPlan] = []
    for instance, release, _ in _groups(loaded, backend, env):
        plans += session.run(instance.plan_release(release))
    if plans:
        console.print(plan_table(plans, env))
    return plans


def deploy_releases(loaded: LoadedApp, backend: str | None, env: str, console: Console,
                    as_json: bool) -> tuple[list[DeployedEndpoint], str | None]:
    """Plan, apply the diff, write the OpenAPI document next to the app; return what is deployed and where the
    document is."""
    session = get_session()
    done: list[DeployedEndpoint] = []
    calls: dict[str, list[CallSchema]] = {}
    backends: dict[str, Backend] = {}
    for instance, release, eps in _groups(loaded, backend, env):
        with console.status(f"planning on {instance.name}...") if not as_json else contextlib.nullcontext():
            plans = session.run(instance.plan_release(release))
        if not as_json:
            console.print(plan_table(plans, env))
        with console.status(f"deploying on {instance.name}...") if not as_json else contextlib.nullcontext():
            applied = session.run(instance.apply_release(release, plans))
        done += applied
        for ep in eps:
            calls[ep.name] = _schemas(ep)
            backends[ep.name] = instance
    if not done:
        return done, None
    path = _write_openapi(loaded, env, done, calls, backends)
    if not as_json:
        table = Table(title=f"deployed (environment {env})")
        for column in ("endpoint", "backend", "action", "version", "id", "URL (plain HTTP, JSON)"):
            table.add_column(column, overflow="fold")
        for d in done:
            table.add_row(d.name, d.backend, d.action.value, str(d.version or "-"), d.id or "-", d.url or "-")
        console.print(table)
        console.print(f"OpenAPI document of the deployed app: {escape(str(path))}")
    return done, str(path)


def _schemas(ep: Endpoint[Any, Any]) -> list[CallSchema]:
    return call_schemas(ep.__gpuflex_raw__, name=ep.name, kind=ep.spec.kind, methods=ep.spec.methods,
                        batched=ep.spec.batched)


def _write_openapi(loaded: LoadedApp, env: str, done: list[DeployedEndpoint], calls: dict[str, list[CallSchema]],
                   backends: dict[str, Backend]) -> Path:
    document = openapi_document(loaded.path.name, env, done, calls, backends)
    path = loaded.path.with_name(f"{loaded.path.stem}.{env}.openapi{GENERATED_SUFFIX}")  # never bundled
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def openapi_document(title: str, env: str, deployed: list[DeployedEndpoint], calls: dict[str, list[CallSchema]],
                     backends: dict[str, Backend]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the deployed endpoints' JSON APIs (each path with its own server)."""
    live = [d for d in deployed if d.id and d.action is not PlanAction.REMOVE and d.name in calls]
    inputs: list[tuple[Any, Literal["validation", "serialization"], TypeAdapter[Any]]] = []
    for d in live:
        for call in calls[d.name]:
            inputs.append((("in", call.label), "validation", TypeAdapter(call.model)))
            inputs.append((("out", call.label), "serialization", TypeAdapter(call.result_type)))
    keyed, defs = TypeAdapter.json_schemas(inputs, ref_template="#/components/schemas/{model}")
    refs = {key: schema for (key, _mode), schema in keyed.items()}
    components: dict[str, Any] = dict(defs.get("$defs", {}))
    paths: dict[str, Any] = {}
    for d in live:
        described: list[Mapping[str, Any]] = []
        body = _body_schema(calls[d.name], refs, components)
        for call in calls[d.name]:
            described.append({"method": call.method, "streams": call.kind.streams, "input": body,
                              "output": refs[("out", call.label)], "summary": call.doc or ""})
        paths.update(backends[d.name].http_api(d, described))
    servers = {json.dumps(item.get("servers"), sort_keys=True) for item in paths.values()}
    document: dict[str, Any] = {"openapi": "3.1.0"}
    if len(servers) == 1 and paths:  # one backend: its API's base URL for the whole document too
        document["servers"] = next(iter(paths.values())).get("servers")
    return document | {
        "info": {"title": f"gpuflex: {title} ({env})", "version": __version__, "description": (
            "The deployed endpoints of a gpuflex app, called with plain JSON: each job's input holds the "
            "function's arguments by name (a class endpoint's names its method with \"method\"), validated "
            "against the function's type hints; binary values are {\"base64\": ..., \"media_type\": ...}.")},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }


def _body_schema(calls: list[CallSchema], refs: dict[Any, dict[str, Any]], components: dict[str, Any]) -> \
        dict[str, Any]:
    """The arguments a job's input holds: one callable's model, or for a class endpoint one variant per method,
    each naming it with ``"method"`` (optional for ``__call__``)."""
    if len(calls) == 1 and calls[0].method is None:
        return refs[("in", calls[0].label)]
    variants = []
    for call in calls:
        ref = refs[("in", call.label)]["$ref"]
        name = ref.rsplit("/", 1)[-1]
        variant = copy.deepcopy(components[name])
        variant["properties"] = {**variant.get("properties", {}),
                                 "method": {"const": call.method or "__call__"}}
        if call.method is not None:
            variant["required"] = [*variant.get("required", []), "method"]
        components[f"{name}Call"] = variant
        variants.append({"$ref": f"#/components/schemas/{name}Call"})
    return {"oneOf": variants} if len(variants) > 1 else variants[0]


def deployed_openapi(loaded: LoadedApp, backend: str | None, env: str) -> dict[str, Any]:
    """The OpenAPI document of ``loaded``'s endpoints as deployed in ``env`` (read from the backend: only
    endpoints that are deployed are in it)."""
    session = get_session()
    deployed: list[DeployedEndpoint] = []
    calls: dict[str, list[CallSchema]] = {}
    backends: dict[str, Backend] = {}
    try:
        for instance, release, eps in _groups(loaded, backend, env):
            for plan in session.run(instance.plan_release(release)):
                if plan.id and plan.action is not PlanAction.REMOVE:
                    deployed.append(_as_deployed(instance, env, plan))
            for ep in eps:
                calls[ep.name], backends[ep.name] = _schemas(ep), instance
    finally:
        shutdown()
    return openapi_document(loaded.path.name, env, deployed, calls, backends)


def _as_deployed(instance: Backend, env: str, plan: EndpointPlan) -> DeployedEndpoint:
    from .._release import DeployedEndpoint

    return DeployedEndpoint(name=plan.name, backend=instance.name, env=env, action=plan.action, id=plan.id)


# -- commands on one deployed endpoint (no app file) ---------------------------------------------------------

def _backend(backend: str | None) -> Backend:
    with use(backend) if backend else contextlib.nullcontext():
        choice = resolve_backend("", None)
    instance = make_backend(choice.name, dict(choice.options))
    if not keeps_releases(instance):
        from ..errors import ConfigError

        raise ConfigError(f"the {instance.name} backend keeps no deployments of its own (its endpoints live only "
                          "while the process that made them runs): there are no versions to list or roll back, "
                          "and nothing to call")
    get_session().install_backend(instance)
    return instance


def list_versions(name: str, backend: str | None, env: str, console: Console, as_json: bool) -> None:
    instance = _backend(backend)
    try:
        versions = get_session().run(instance.versions(env, name))
    finally:
        shutdown()
    if as_json:
        sys.stdout.write(json.dumps([v.to_json() for v in versions], indent=2) + "\n")
        return
    table = Table(title=f"versions of {name} (environment {env}, {instance.name})")
    for column in ("version", "deployed", "code", "commit", "note"):
        table.add_column(column, overflow="fold")
    for v in versions:
        when = datetime.datetime.fromtimestamp(v.created_at).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(f"{v.number}{' (current)' if v.current else ''}", when, v.bundle[:12],
                      (v.commit or "-")[:12] + ("+dirty" if v.commit and v.commit.endswith("+dirty") else ""),
                      escape(v.note) or "-")
    console.print(table)


def rollback_endpoint(name: str, version: int | None, backend: str | None, env: str, console: Console) -> None:
    instance = _backend(backend)
    try:
        with console.status(f"rolling {escape(name)} back on {instance.name}..."):
            restored = get_session().run(instance.rollback(env, name, version))
    finally:
        shutdown()
    console.print(f"{escape(name)} ({env}, {instance.name}): {escape(restored.note)}, now version {restored.number} "
                  f"(code {restored.bundle[:12]})")


def call_deployed(name: str, body: Any, backend: str | None, env: str) -> Any:
    instance = _backend(backend)
    try:
        return get_session().run(instance.call_json(env, name, body))
    finally:
        shutdown()


def teardown_env(loaded: LoadedApp | None, backend: str | None, env: str, console: Console) -> list[str]:
    """Remove every endpoint of ``loaded`` (or, without an app, of every app) in ``env``: a release with no
    endpoints, planned and applied."""
    instance = _backend(backend)
    release = Release(app=loaded.path.stem if loaded else "", env=env)
    session = get_session()
    try:
        plans = session.run(instance.plan_release(release))
        session.run(instance.apply_release(release, plans))
    finally:
        shutdown()
    removed = [p.name for p in plans if p.action is PlanAction.REMOVE]
    console.print(f"tore down {', '.join(removed) or 'nothing'} in environment {env} on {instance.name}.")
    return removed

"""``gpuflex deploy`` on pod hosts: plan, then apply only the diff; versions and rollback; calls with plain JSON.

* Each deployed endpoint is a long-lived service on every host (gpuflex's dev server on the host's local backend,
  see ``_service``), started in a session of its own: it outlives the deploying process and the SSH session.
* What is deployed is recorded on the hosts (``<remote_dir>/services/<env>/<name>/versions.json``): the app, and
  every version (code hash, settings, git commit). The plan reads it over SSH on every host and compares, field by
  field, the current version with what the app wants; a host whose service is not running, or that holds another
  version than the others, is drift, fixed by the next deploy. An unchanged endpoint gets no mutating call.
* Rollback starts a version's code and settings again, recorded as a new version.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from gpuflex.backend import DeployedEndpoint, EndpointPlan, FieldChange, PlanAction, Version, rollback_record
from gpuflex.errors import BackendUnavailable, ConfigError, JobFailed

from ._deploy_host import is_loopback, service_python, service_tree, start_service
from ._remote import runtime_tree

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from gpuflex import EndpointSpec
    from gpuflex.backend import Release, ReleaseEndpoint

    from ._backend import PodBackend
    from ._remote import RemoteHost

__all__ = ["PodReleases", "http_api"]

T = TypeVar("T")
_AT_ONCE = 3  # endpoints (and hosts per endpoint) deployed side by side: at most 9 sessions on one connection

MASK = "***"
_SCALARS = ("min_workers", "max_workers", "idle_timeout", "timeout", "retries", "concurrency", "max_batch_size",
            "batch_wait_ms")


def _settings(spec: EndpointSpec, bind: str, port: int | None) -> dict[str, Any]:
    settings: dict[str, Any] = {key: getattr(spec, key) for key in _SCALARS}
    settings.update(env=dict(spec.env), secrets=sorted(spec.secrets), dependencies=sorted(spec.dependencies),
                    gpu=str(spec.gpu) if spec.gpu is not None else None, bind=bind, port=port)
    return settings


def _fields(record: dict[str, Any]) -> dict[str, Any]:
    """A version as the fields a plan compares."""
    flat = {"code": record["bundle"][:12], "gpuflex": record.get("runtime"), "service": record.get("service"),
            "secret values": MASK if record.get("secrets_digest") else None}
    for key, value in (record.get("settings") or {}).items():
        flat[key] = value
    return flat


def _current(state: dict[str, Any] | None) -> dict[str, Any] | None:
    versions = ((state or {}).get("versions") or {}).get("versions") or []
    return versions[-1] if versions else None


class PodReleases:
    """The release side of one :class:`PodBackend`."""

    def __init__(self, backend: PodBackend) -> None:
        self.backend = backend
        self.config = backend.config
        self._planned: dict[tuple[str, str], dict[str, Any]] = {}
        self._pythons: dict[tuple[str, tuple[str, ...]], str] = {}
        self._locks: dict[str, anyio.Lock] = {}

    # -- reading the hosts ------------------------------------------------------------------------------------

    async def _hosts(self) -> list[RemoteHost]:
        if not self.backend.hosts:
            raise ConfigError("the pod backend needs at least one host: [tool.gpuflex.backends.pod] hosts = [...]")
        return await self.backend._reachable_hosts()

    async def _states(self, env: str) -> tuple[list[RemoteHost], dict[str, dict[str, Any]]]:
        """Every reachable host, and what each holds in ``env``: host label -> endpoint -> state."""
        hosts = await self._hosts()
        states: dict[str, dict[str, Any]] = {}
        for host in hosts:
            states[host.label] = (await host.call("svc-state", host.root, env))["endpoints"]
        return hosts, states

    @staticmethod
    def _reference(states: dict[str, dict[str, Any]], name: str) -> dict[str, Any] | None:
        """The most advanced record of ``name`` across the hosts (the one the others should hold)."""
        present = [s[name] for s in states.values() if s.get(name) and _current(s[name])]
        if not present:
            return None
        best: dict[str, Any] = max(present, key=lambda s: (len(s["versions"]["versions"]),
                                                            s["versions"]["versions"][-1]["created_at"]))
        return best

    # -- what a deploy would start ----------------------------------------------------------------------------

    def _secrets(self, spec: EndpointSpec) -> dict[str, str]:
        missing = [n for n in spec.secrets if n not in os.environ]
        if missing:
            raise ConfigError(f"endpoint {spec.name!r} needs the secret(s) {', '.join(missing)}, which are not set in "
                              "this environment; export them before deploying")
        return {n: os.environ[n] for n in spec.secrets}

    def _wanted(self, release: Release, item: ReleaseEndpoint) -> dict[str, Any]:
        spec = item.spec
        secrets = self._secrets(spec)
        digest = hashlib.sha256(json.dumps(secrets, sort_keys=True).encode()).hexdigest() if secrets else None
        return {
            "bundle": item.bundle.hash, "runtime": runtime_tree()[0].split("/", 1)[1],
            "service": service_tree()[0].split("/", 1)[1], "secrets_digest": digest,
            "settings": _settings(spec, self.config.deploy_bind, self.config.deploy_port),
            "app_file": spec.target.path, "module": spec.target.module, "qualname": spec.target.qualname,
            "commit": release.commit,
        }

    # -- plan -------------------------------------------------------------------------------------------------

    async def plan(self, release: Release) -> list[EndpointPlan]:
        hosts, states = await self._states(release.env)
        plans: list[EndpointPlan] = []
        names = set()
        for item in release.endpoints:
            name = item.spec.name
            names.add(name)
            reference = self._reference(states, name)
            if reference and release.app and reference["versions"].get("app") not in (None, release.app):
                raise ConfigError(f"endpoint {name!r} in environment {release.env!r} belongs to app "
                                  f"{reference['versions']['app']!r}, not {release.app!r}: rename the endpoint, or "
                                  "deploy to another --env")
            wanted = self._wanted(release, item)
            plan, restart = self._compare(name, hosts, states, reference, wanted)
            self._planned[(release.env, name)] = {"item": item, "wanted": wanted, "reference": reference,
                                                  "restart": restart, "new_version": plan.action is PlanAction.CREATE
                                                  or any(not c.field.startswith("host ") for c in plan.changes),
                                                  "hosts": hosts, "states": states}
            plans.append(plan)
        for state in states.values():
            for name, entry in sorted(state.items()):
                owner = (entry.get("versions") or {}).get("app")
                if name in names or (release.app and owner != release.app):
                    continue
                names.add(name)
                plans.append(EndpointPlan(name=name, backend=self.backend.name, action=PlanAction.REMOVE,
                                          id=self._id(name, states)))
        return plans

    def _compare(self, name: str, hosts: list[RemoteHost], states: dict[str, dict[str, Any]],
                 reference: dict[str, Any] | None, wanted: dict[str, Any]) -> tuple[EndpointPlan, list[str]]:
        common: dict[str, Any] = {"name": name, "backend": self.backend.name}
        want = _fields(wanted)
        if reference is None:
            return EndpointPlan(**common, action=PlanAction.CREATE, changes=tuple(
                FieldChange(field=f, deployed=None, wanted=v) for f, v in sorted(want.items()) if v is not None)), \
                [h.label for h in hosts]
        current = _current(reference)
        assert current is not None
        have = _fields(current)
        changes = [FieldChange(field=f, deployed=have.get(f), wanted=want.get(f))
                   for f in sorted(set(have) | set(want)) if have.get(f) != want.get(f)]
        restart: list[str] = [h.label for h in hosts] if changes else []
        for host in hosts:
            entry = states[host.label].get(name)
            mine = _current(entry)
            if entry is None or mine is None:
                changes.append(FieldChange(field=f"host {host.label}", deployed="not deployed", wanted="deployed"))
            elif (mine["number"], mine["bundle"]) != (current["number"], current["bundle"]) or \
                    entry.get("bundle") != current["bundle"]:
                changes.append(FieldChange(field=f"host {host.label}: version", drift=True,
                                           deployed=f"{mine['number']} (code {mine['bundle'][:12]})",
                                           wanted=f"{current['number']} (code {current['bundle'][:12]})"))
            elif not entry.get("running"):
                changes.append(FieldChange(field=f"host {host.label}: service", deployed="not running",
                                           wanted="running", drift=True))
            else:
                continue
            if host.label not in restart:
                restart.append(host.label)
        action = PlanAction.CHANGE if changes else PlanAction.UNCHANGED
        return EndpointPlan(**common, action=action, changes=tuple(changes), id=self._id(name, states)), restart

    @staticmethod
    def _id(name: str, states: dict[str, dict[str, Any]]) -> str | None:
        where = [f"{label}/{s[name]['port']}" for label, s in states.items() if s.get(name) and s[name].get("port")]
        return ",".join(where) or None

    # -- apply ------------------------------------------------------------------------------------------------

    async def apply(self, release: Release, plans: list[EndpointPlan]) -> list[DeployedEndpoint]:
        """Every endpoint's changes at once (each host's services start side by side)."""
        return await _gather([functools.partial(self._apply_one, release, plan) for plan in plans])

    async def _apply_one(self, release: Release, plan: EndpointPlan) -> DeployedEndpoint:
        planned = self._planned.get((release.env, plan.name))
        if plan.action is PlanAction.REMOVE:
            hosts = await self._hosts()
            await _gather([functools.partial(h.call, "svc-stop", h.root, release.env, plan.name, "1", timeout=60)
                           for h in hosts])
            return self._deployed(release.env, plan.name, plan.action, None, None)
        if planned is None:
            raise BackendUnavailable(f"no plan was made for {plan.name!r}: plan, then apply")
        reference = planned["reference"]
        if plan.action is PlanAction.UNCHANGED:
            return self._deployed(release.env, plan.name, plan.action, reference, planned["states"])
        document: dict[str, Any] = json.loads(json.dumps(reference["versions"])) if reference else \
            {"app": release.app, "endpoint": plan.name, "env": release.env, "versions": []}
        if planned["new_version"]:
            record = {**planned["wanted"], "number": len(document["versions"]) + 1, "created_at": time.time(),
                      "note": ""}
            document["versions"].append(record)
        document["app"] = release.app or document.get("app")
        states = await self._start(release.env, plan.name, document, planned["restart"], planned["item"],
                                   planned["states"])
        states = {label: states.get(label) or planned["states"].get(label) or {} for label in planned["states"]}
        return self._deployed(release.env, plan.name, plan.action, {"versions": document}, states)

    async def _start(self, env: str, name: str, document: dict[str, Any], labels: list[str],
                     item: ReleaseEndpoint | None, known: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Start the current version of ``document`` on the hosts named in ``labels`` (pushing ``item``'s code
        first; without it, the code must be on the hosts already); answer what each host runs."""
        record = document["versions"][-1]
        secrets = self._secrets(item.spec) if item is not None else self._secrets_for(record)
        hosts = [h for h in await self._hosts() if h.label in labels]
        states: dict[str, dict[str, Any]] = {}  # what each host runs now; ``known``: what each ran (its port)
        settings = record["settings"]

        async def start(host: RemoteHost) -> None:
            if item is not None:
                await self.backend.push_bundle(host, item.bundle)
            before = (known.get(host.label) or {}).get(name) or {}
            port = settings.get("port") or (before.get("port") if before.get("bind") == settings["bind"] else None)
            config = {"bundle": record["bundle"], "app_file": record.get("app_file"), "module": record["module"],
                      "qualname": record["qualname"], "settings": settings, "bind": settings["bind"],
                      "port": port, "token": not is_loopback(settings["bind"])}
            python = await self._python(host, tuple(settings.get("dependencies") or ()))
            answer = await start_service(host, env, name, config, document, secrets, python,
                                         self.config.deploy_timeout)
            states[host.label] = {name: {**answer, "versions": document, "running": True}}

        await _gather([functools.partial(start, host) for host in hosts])
        return states

    async def _python(self, host: RemoteHost, dependencies: tuple[str, ...]) -> str:
        """The service's interpreter on ``host`` (found or made once per deploy)."""
        async with self._locks.setdefault(host.label, anyio.Lock()):
            key = (host.label, dependencies)
            if key not in self._pythons:
                self._pythons[key] = await service_python(host, dependencies)
            return self._pythons[key]

    def _secrets_for(self, record: dict[str, Any]) -> dict[str, str]:
        names = (record.get("settings") or {}).get("secrets") or []
        missing = [n for n in names if n not in os.environ]
        if missing:
            raise ConfigError(f"restoring this version needs the secret(s) {', '.join(missing)}: export them and try "
                              "again")
        return {n: os.environ[n] for n in names}

    def _deployed(self, env: str, name: str, action: PlanAction, reference: dict[str, Any] | None,
                  states: dict[str, dict[str, Any]] | None) -> DeployedEndpoint:
        version = len(reference["versions"]["versions"]) if reference else None
        hosts = []
        for host in self.backend.hosts:
            entry = (states or {}).get(host.label, {}).get(name)
            if not entry or not entry.get("port"):
                continue
            bind, port = entry.get("bind") or "127.0.0.1", entry["port"]
            address = "127.0.0.1" if bind in ("0.0.0.0", "::") else bind
            forward = (f"ssh -N -L {port}:{address}:{port}{f' -p {host.spec.port}' if host.spec.port else ''} "
                       f"{host.spec.destination}")
            hosts.append({"host": host.label, "url": f"http://{address}:{port}/{name}", "bind": bind, "port": port,
                          "forward": forward if is_loopback(bind) else None,
                          "token_file": entry.get("token_file")})
        url = hosts[0]["url"] if hosts else None
        return DeployedEndpoint(name=name, backend=self.backend.name, env=env, action=action,
                                id=",".join(f"{h['host']}/{h['port']}" for h in hosts) or None, url=url,
                                version=version, access=tuple(hosts))

    # -- versions and rollback --------------------------------------------------------------------------------

    async def _recorded(self, env: str, name: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        _, states = await self._states(env)
        reference = self._reference(states, name)
        if reference is None:
            raise ConfigError(f"no deploy of {name!r} is recorded in environment {env!r} on the pod hosts")
        return states, reference

    async def versions(self, env: str, name: str) -> list[Version]:
        records = (await self._recorded(env, name))[1]["versions"]["versions"]
        return [Version.from_record(v, current=i == len(records) - 1) for i, v in enumerate(records)]

    async def rollback(self, env: str, name: str, number: int | None) -> Version:
        states, reference = await self._recorded(env, name)
        document = json.loads(json.dumps(reference["versions"]))
        records = document["versions"]
        records.append(rollback_record(records, name, env, number)[1])
        await self._start(env, name, document, [h.label for h in await self._hosts()], None, states)
        return Version.from_record(records[-1], current=True)

    # -- plain JSON calls -------------------------------------------------------------------------------------

    async def call_json(self, env: str, name: str, body: Any) -> Any:
        """Call the service on the first host that runs it, from the host itself (the token never leaves it)."""
        hosts, states = await self._states(env)
        running = [h for h in hosts if (states[h.label].get(name) or {}).get("running")]
        if not running:
            deployed = any(name in s for s in states.values())
            raise ConfigError(f"{name!r} is {'deployed but not running on any host' if deployed else 'not deployed'} "
                              f"in environment {env!r}" + (": run gpuflex deploy" if deployed else ""))
        host = running[0]
        answer = await host.call("svc-call", host.root, env, name, payload=json.dumps(body).encode(), timeout=3600)
        status, result = answer["status"], answer["body"]
        if status == 200:
            return result
        if isinstance(result, dict) and "error" in result:
            raise JobFailed(f"{result['error']}: {result.get('message')}")
        raise JobFailed(f"the call answered HTTP {status}: {result}")


async def _gather(calls: list[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run ``calls`` side by side (a few at a time: each holds SSH sessions, and sshd allows ``MaxSessions`` per
    connection); their results in order, or the first failure itself (not an exception group)."""
    results: list[Any] = [None] * len(calls)
    failures: list[BaseException] = []
    limit = anyio.CapacityLimiter(_AT_ONCE)

    async def one(index: int) -> None:
        try:
            async with limit:
                results[index] = await calls[index]()
        except Exception as exc:  # noqa: BLE001 - re-raised below
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        for index in range(len(calls)):
            tg.start_soon(one, index)
    if failures:
        raise failures[0]
    return results


def http_api(deployed: DeployedEndpoint, calls: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The path items of ``deployed`` on its hosts' services (gpuflex's dev server: ``POST /<name>`` for a
    function, ``POST /<name>/<method>`` for a class endpoint's methods; a generator's answer is the list of its
    chunks, or server-sent events with ``Accept: text/event-stream``)."""
    servers = [{"url": str(a["url"]).rsplit("/", 1)[0],
                "description": f"on pod host {a['host']}" + (f"; reach it with {a['forward']}" if a.get("forward")
                                                            else f"; bearer token in {a['token_file']} there")}
               for a in deployed.access]
    if not servers and deployed.id:  # read back by `gpuflex openapi`: "host/port" per host
        servers = [{"url": f"http://127.0.0.1:{where.rsplit('/', 1)[1]}",
                    "description": f"on pod host {where.rsplit('/', 1)[0]}, through an SSH forward of that port"}
                   for where in deployed.id.split(",")]
    error = {"description": "{\"error\": type, \"message\": ...}: 400 not JSON, 422 a field that does not fit "
                            "(named), 502 the endpoint's own code raised", "content": {"application/json": {
                                "schema": {"type": "object", "required": ["error", "message"], "properties": {
                                    "error": {"type": "string"}, "message": {"type": "string"}}}}}}
    paths: dict[str, Any] = {}
    for call in calls:
        method = call.get("method")
        path = f"/{deployed.name}" + (f"/{method}" if method and method != "__call__" else "")
        body = call["input"] if not method else {"type": "object", "description": f"the arguments of {method}"}
        output = {"type": "array", "items": call["output"]} if call.get("streams") else call["output"]
        paths[path] = {"servers": servers, "post": {
            "tags": [deployed.name], "operationId": f"call_{deployed.name}" + (f"_{method}" if method else ""),
            "summary": f"Call {deployed.name}" + (f".{method}" if method else ""),
            "description": str(call.get("summary") or ""),
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": {"200": {"description": "The result (a generator's: its chunks).",
                                  "content": {"application/json": {"schema": output}}},
                          "400": error, "401": error, "422": error, "502": error}}}
    return paths

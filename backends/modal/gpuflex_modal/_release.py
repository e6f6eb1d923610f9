"""``gpuflex deploy`` on Modal: plan, then apply only the diff; versions and rollback; calls with plain JSON.

* Each environment is a deployed Modal app of its own, ``<app_name>-<env>`` (``gpuflex-shop-staging``); each
  endpoint is one class in it, whose image holds the bundle (the code lives in the deployed app: containers need
  no client) and which is also a web endpoint (``@modal.asgi_app``, see ``_web``) taking plain JSON.
* The plan reads what Modal holds: the deployed app (``AppGetByDeploymentName``), its classes (``AppGetLayout``),
  each class's settings as Modal's client reads them (``Function.info()``: GPU, CPU, memory, timeouts,
  concurrency, web URL; ``Function.autoscaler.settings()``: min/max containers, scaledown window, with any
  ``update_autoscaler`` override), and gpuflex's record of the current version (below). A live value other than
  the one the last deploy sent is drift. Applying makes only those changes: an unchanged app gets no mutating call.
* Every deploy is a version of the app in Modal's own deployment history (``modal app history``; rollback with
  Modal's ``AppRollback``, what ``modal app rollback`` sends). Beside it, gpuflex keeps what Modal does not show:
  each version's code hash, settings sent and git commit, in a ``modal.Dict`` named ``<app>-versions``, one entry per
  Modal version (a rollback made with ``modal app rollback`` is followed to the version it restored).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import TYPE_CHECKING, Any

import attrs

import gpuflex
from gpuflex.backend import DeployedEndpoint, EndpointPlan, FieldChange, PlanAction, Version
from gpuflex.errors import AuthenticationError, BackendError, ConfigError, JobFailed

from ._app import WebSide, web_requirements
from ._plan import ModalPlan, modal_price
from ._rpc import rpc

if TYPE_CHECKING:
    from gpuflex.backend import Release, ReleaseEndpoint

    from ._backend import ModalBackend

__all__ = ["LIVE_FIELDS", "PROXY_ENV", "ModalReleases", "release_app_name"]

#: The settings read back from Modal itself; the others (code, image, env, secrets, startup_timeout, which Modal's
#: client does not read back for a function that is not a server) come from gpuflex's record of the last deploy.
LIVE_FIELDS = ("gpu", "cpu", "memory", "min_containers", "max_containers", "scaledown_window", "timeout",
               "max_inputs")
#: Where ``gpuflex call`` finds a Modal proxy-auth token (Modal-Key / Modal-Secret headers) for endpoints that
#: require one (``web_auth="proxy"``, the default).
PROXY_ENV = ("MODAL_PROXY_TOKEN_ID", "MODAL_PROXY_TOKEN_SECRET")
_PREFIX = "gpuflex_"


def _fit(name: str, suffix: str) -> str:
    """``name + suffix`` within Modal's 64 characters (a hash of the whole keeps shortened names apart)."""
    whole = name + suffix
    if len(whole) <= 64:
        return whole
    digest = hashlib.sha256(whole.encode()).hexdigest()[:8]
    return f"{name[:64 - len(suffix) - 9]}-{digest}{suffix}"


def release_app_name(base: str, env: str) -> str:
    return _fit(base, f"-{env}")


def _gpus(value: Any) -> list[str] | None:
    """A GPU request as Modal holds it: ``["H100:1"]``, a fallback list in order, or None."""
    if not value:
        return None
    items = [value] if isinstance(value, str) else list(value)
    return [item.upper() if ":" in item else f"{item.upper()}:1" for item in items]


def wanted_settings(plan: ModalPlan, bundle_hash: str, proxy_auth: bool) -> dict[str, Any]:
    """Every setting one endpoint is deployed with, as the plan compares them."""
    return {
        "code": bundle_hash, "gpu": _gpus(plan.gpu), "cpu": plan.cpu, "memory": plan.memory,
        "min_containers": plan.min_containers, "max_containers": plan.max_containers,
        "scaledown_window": plan.scaledown_window, "timeout": plan.timeout, "startup_timeout": plan.startup_timeout,
        "max_inputs": plan.max_inputs, "image.python": plan.python_version, "image.apt": list(plan.apt_packages),
        "image.pip": [*plan.pip_packages, *web_requirements()], "env": dict(plan.env),
        "secrets": list(plan.secrets), "web_auth": "proxy" if proxy_auth else "public",
        "runtime": f"gpuflex {gpuflex.__version__}",
    }


@attrs.define
class _Deployed:
    """What Modal holds for one environment: the app, its history and gpuflex's record of its current version."""

    app_id: str = ""
    version: int = 0
    history: dict[int, Any] = attrs.field(factory=dict)  # version -> AppDeploymentHistory
    functions: dict[str, str] = attrs.field(factory=dict)  # class name -> function id
    record: dict[str, Any] = attrs.field(factory=dict)


class ModalReleases:
    """The release side of one :class:`ModalBackend`."""

    def __init__(self, backend: ModalBackend) -> None:
        self.backend = backend
        self.config = backend.config
        self._urls: dict[tuple[str, str], str] = {}
        self._wanted: dict[str, tuple[ReleaseEndpoint, ModalPlan, dict[str, Any]]] = {}

    def known_url(self, env: str, name: str) -> str | None:
        """The web URL of ``name`` in ``env`` as last read (by a plan or a deploy)."""
        return self._urls.get((env, name))

    def app_name(self, env: str) -> str:
        return release_app_name(self.config.app(), env)

    def dict_name(self, env: str) -> str:
        return _fit(self.app_name(env), "-versions")

    @property
    def proxy_auth(self) -> bool:
        return self.config.web_auth == "proxy"

    # -- reading what Modal holds ------------------------------------------------------------------------------

    async def _read(self, env: str) -> _Deployed:
        from modal_proto import api_pb2

        client = await self.backend.connect()
        environment = self.backend.modal_environment or ""
        found = await rpc(client, "AppGetByDeploymentName", api_pb2.AppGetByDeploymentNameRequest(
            name=self.app_name(env), environment_name=environment))
        if not found.app_id:
            return _Deployed()
        deployed = _Deployed(app_id=found.app_id)
        history = await rpc(client, "AppDeploymentHistory", api_pb2.AppDeploymentHistoryRequest(app_id=found.app_id))
        deployed.history = {h.version: h for h in history.app_deployment_histories}
        deployed.version = history.production_app_version or max(deployed.history, default=0)
        layout = await rpc(client, "AppGetLayout", api_pb2.AppGetLayoutRequest(app_id=found.app_id))
        deployed.functions = {tag.removesuffix(".*"): fid for tag, fid in layout.app_layout.function_ids.items()
                              if tag.startswith(_PREFIX) and tag.endswith(".*")}
        deployed.record = await self._record(env, deployed, deployed.version)
        return deployed

    async def _store(self, env: str, *, create: bool = False) -> Any:
        import modal

        store = modal.Dict.from_name(self.dict_name(env), environment_name=self.backend.modal_environment,
                                     create_if_missing=create, client=await self.backend.connect())
        try:
            await store.hydrate.aio()
        except Exception as exc:
            if type(exc).__name__ == "NotFoundError":
                return None
            raise
        return store

    async def _record(self, env: str, deployed: _Deployed, version: int) -> dict[str, Any]:
        """gpuflex's record of ``version``; for a rollback made outside gpuflex, that of the version it restored."""
        store = await self._store(env)
        seen: set[int] = set()
        while store is not None and version and version not in seen:
            seen.add(version)
            text = await store.get.aio(f"v{version}")
            if isinstance(text, str):
                record: dict[str, Any] = json.loads(text)
                return record
            entry = deployed.history.get(version)
            version = entry.rollback_version if entry is not None else 0
        return {}

    async def _live(self, function_id: str) -> tuple[dict[str, Any], str | None]:
        """One class's settings as Modal holds them now, and its web URL."""
        import modal

        function = modal.Function.from_id(function_id, client=await self.backend.connect())
        info = await function.info.aio()
        scaler = await function.autoscaler.settings.aio()
        web = (info.method_details or {}).get("web")
        live = {
            "gpu": [f"{kind.upper()}:{count}" for kind, count in info.gpus] or None, "cpu": info.cpu,
            "memory": info.memory_mib, "min_containers": scaler.min_containers or 0,
            "max_containers": scaler.max_containers, "scaledown_window": scaler.scaledown_window,
            "timeout": info.timeout,
            "max_inputs": (info.concurrency_info.max_inputs if info.concurrency_info else None) or 1,
        }
        return live, web.web_url if web is not None and web.web_url else None

    # -- plan -------------------------------------------------------------------------------------------------

    async def plan(self, release: Release) -> list[EndpointPlan]:
        deployed = await self._read(release.env)
        owner = deployed.record.get("app")
        if release.app and deployed.functions and owner not in (None, release.app):
            raise ConfigError(f"the Modal app {self.app_name(release.env)!r} holds the endpoints of app {owner!r}, "
                              f"not {release.app!r}: set app_name, or deploy to another --env")
        recorded: dict[str, Any] = deployed.record.get("endpoints", {})
        plans: list[EndpointPlan] = []
        names = set()
        for item in release.endpoints:
            spec = item.spec
            names.add(spec.name)
            plan = self.backend.plan(spec)
            wanted = wanted_settings(plan, item.bundle.hash, self.proxy_auth)
            self._wanted[spec.name] = (item, plan, wanted)
            price = modal_price(spec, plan)
            per_container = price.usd_per_hour if price.billing == "per-second" else None
            warm_wanted = 0.0 if not plan.min_containers else (
                None if per_container is None else plan.min_containers * per_container)
            function_id = deployed.functions.get(plan.class_name)
            if function_id is None:
                plans.append(EndpointPlan(name=spec.name, backend=self.backend.name, action=PlanAction.CREATE,
                                          warm_usd_per_hour=(0.0, warm_wanted),
                                          changes=tuple(FieldChange(field=f, deployed=None, wanted=v)
                                                        for f, v in wanted.items())))
                continue
            live, url = await self._live(function_id)
            if url:
                self._urls[(release.env, spec.name)] = url
            sent = (recorded.get(spec.name) or {}).get("settings") or {}
            have = {**{f: sent.get(f) for f in wanted if f not in LIVE_FIELDS}, **live}
            changes = []
            for field, value in wanted.items():
                if have.get(field) == value:
                    continue
                drift = field in LIVE_FIELDS and field in sent and sent[field] != live[field]
                changes.append(FieldChange(field=field, deployed=have.get(field), wanted=value, drift=drift))
            warm_deployed = 0.0 if not live["min_containers"] else (
                None if per_container is None else live["min_containers"] * per_container)
            plans.append(EndpointPlan(
                name=spec.name, backend=self.backend.name, id=function_id,
                action=PlanAction.CHANGE if changes else PlanAction.UNCHANGED, changes=tuple(changes),
                warm_usd_per_hour=(warm_deployed, warm_wanted)))
        by_class = {entry.get("class"): name for name, entry in recorded.items()}
        for class_name, function_id in sorted(deployed.functions.items()):
            name = by_class.get(class_name, class_name)
            if name in names:
                continue
            entry = recorded.get(name) or {}
            warm = entry.get("warm_usd_per_hour", 0.0)
            plans.append(EndpointPlan(name=name, backend=self.backend.name, action=PlanAction.REMOVE, id=function_id,
                                      warm_usd_per_hour=(warm, 0.0)))
        return plans

    # -- apply ------------------------------------------------------------------------------------------------

    async def apply(self, release: Release, plans: list[EndpointPlan]) -> list[DeployedEndpoint]:
        if all(p.action is PlanAction.UNCHANGED for p in plans):  # nothing to change: no mutating call at all
            deployed = await self._read(release.env) if plans else _Deployed()
            return [self._deployed(release.env, p, p.id, deployed.version) for p in plans]
        if not release.endpoints:
            await self._remove_all(release.env)
            return [self._deployed(release.env, p, p.id, None) for p in plans]
        wanted = []
        for item in release.endpoints:
            entry = self._wanted.get(item.spec.name)
            if entry is None or entry[0] is not item:
                raise BackendError(f"no plan was made for {item.spec.name!r}: plan, then apply")
            wanted.append(entry)
        webs = {item.spec.name: WebSide(_manifest(item), self.proxy_auth) for item, _, _ in wanted}
        await self.backend.deploy_release(self.app_name(release.env), [item for item, _, _ in wanted], webs)
        deployed = await self._read(release.env)
        record = {"app": release.app, "commit": release.commit, "created_at": time.time(), "endpoints": {
            item.spec.name: {"class": plan.class_name, "bundle": item.bundle.hash, "settings": settings,
                             "warm_usd_per_hour": _warm(item, plan)}
            for item, plan, settings in wanted}}
        await self._put(release.env, deployed.version, record)
        done = []
        for p in plans:
            if p.action is PlanAction.REMOVE:
                done.append(self._deployed(release.env, p, p.id, None))
                continue
            plan = self._wanted[p.name][1]
            function_id = deployed.functions.get(plan.class_name)
            if function_id is not None:
                _, url = await self._live(function_id)
                if url:
                    self._urls[(release.env, p.name)] = url
            done.append(self._deployed(release.env, p, function_id, deployed.version))
        return done

    def _deployed(self, env: str, plan: EndpointPlan, function_id: str | None, version: int | None) -> \
            DeployedEndpoint:
        url = self._urls.get((env, plan.name)) if plan.action is not PlanAction.REMOVE else None
        return DeployedEndpoint(name=plan.name, backend=self.backend.name, env=env, action=plan.action,
                                id=function_id, url=url, version=version or None)

    async def _put(self, env: str, version: int, record: dict[str, Any]) -> None:
        store = await self._store(env, create=True)
        await store.put.aio(f"v{version}", json.dumps(record, sort_keys=True))

    async def _remove_all(self, env: str) -> None:
        """Stop the environment's app (its containers with it) and delete gpuflex's records of it."""
        import modal
        from modal_proto import api_pb2

        client = await self.backend.connect()
        deployed = await self._read(env)
        if deployed.app_id:
            await rpc(client, "AppStop", api_pb2.AppStopRequest(app_id=deployed.app_id,
                                                               source=api_pb2.APP_STOP_SOURCE_CLI))
        if await self._store(env) is not None:
            await modal.Dict.objects.delete.aio(self.dict_name(env), allow_missing=True,
                                                environment_name=self.backend.modal_environment, client=client)

    # -- versions and rollback --------------------------------------------------------------------------------

    async def versions(self, env: str, name: str) -> list[Version]:
        deployed = await self._read(env)
        out = []
        for number in sorted(deployed.history):
            entry = deployed.history[number]
            record = await self._record(env, deployed, number)
            endpoint = (record.get("endpoints") or {}).get(name)
            if endpoint is None:
                continue
            note = f"rollback to version {entry.rollback_version}" if entry.rollback_version else ""
            out.append(Version(number=number, bundle=endpoint["bundle"], settings=endpoint["settings"],
                               commit=record.get("commit"), created_at=entry.deployed_at or record.get("created_at", 0),
                               note=note, current=number == deployed.version))
        return out

    async def rollback(self, env: str, name: str, version: int | None = None) -> Version:
        from modal_proto import api_pb2

        versions = await self.versions(env, name)
        current = next((v for v in versions if v.current), None)
        if current is None:
            raise ConfigError(f"{name!r} is not deployed in environment {env!r} (of Modal app {self.app_name(env)!r})")
        if version is None:
            earlier = [v for v in versions if v.number < current.number]
            if not earlier:
                raise ConfigError(f"{name!r} has no version before {current.number} in environment {env!r}")
            target = earlier[-1]
        else:
            found = [v for v in versions if v.number == version]
            if not found:
                raise ConfigError(f"{name!r} has no version {version} in environment {env!r}; it has "
                                  f"{', '.join(str(v.number) for v in versions)}")
            target = found[0]
            if target.current:
                raise ConfigError(f"version {version} of {name!r} is the current one")
        deployed = await self._read(env)
        client = await self.backend.connect()
        await rpc(client, "AppRollback", api_pb2.AppRollbackRequest(app_id=deployed.app_id, version=target.number))
        after = await self._read(env)
        record = await self._record(env, after, target.number)
        await self._put(env, after.version, {**record, "created_at": time.time()})
        others = sorted(n for n, e in (record.get("endpoints") or {}).items()
                        if n != name and (deployed.record.get("endpoints") or {}).get(n) != e)
        note = f"rolled back to version {target.number}"
        if others:
            note += f" (Modal rolls back the whole app: {', '.join(others)} went back too)"
        return Version(number=after.version, bundle=target.bundle, settings=target.settings, commit=target.commit,
                       note=note, current=True)

    # -- plain JSON calls -------------------------------------------------------------------------------------

    async def url(self, env: str, name: str) -> str:
        deployed = await self._read(env)
        by_class = {e.get("class"): n for n, e in (deployed.record.get("endpoints") or {}).items()}
        for class_name, function_id in deployed.functions.items():
            if by_class.get(class_name) == name:
                _, url = await self._live(function_id)
                if url:
                    self._urls[(env, name)] = url
                    return url
        raise ConfigError(f"{name!r} is not deployed in environment {env!r} (of Modal app {self.app_name(env)!r})")

    async def call_json(self, env: str, name: str, body: Any) -> Any:
        import httpx

        url = await self.url(env, name)
        key, secret = (os.environ.get(n) for n in PROXY_ENV)
        headers = {"Modal-Key": key, "Modal-Secret": secret} if key and secret else {}
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=None)) as http:
            answer = await http.post(url, json=body, headers=headers)
        if answer.status_code == 401:
            raise AuthenticationError(f"{name!r} requires a Modal proxy-auth token: create one in Modal's dashboard "
                                      f"and set {PROXY_ENV[0]} and {PROXY_ENV[1]}")
        try:
            data = answer.json()
        except ValueError:
            raise JobFailed(f"{name!r} answered HTTP {answer.status_code}: {answer.text[:500]}") from None
        if answer.status_code == 200:
            return data
        if isinstance(data, dict) and "error" in data:
            raise JobFailed(f"{data['error']}: {data.get('message', '')}")
        raise JobFailed(f"{name!r} answered HTTP {answer.status_code}: {answer.text[:500]}")


def _manifest(item: ReleaseEndpoint) -> dict[str, Any]:
    spec = item.spec
    return {"name": spec.name, "kind": spec.kind.value, "batched": spec.batched, "bundle": item.bundle.hash,
            "methods": {name: kind.value for name, kind in spec.methods.items()}}


def _warm(item: ReleaseEndpoint, plan: ModalPlan) -> float | None:
    price = modal_price(item.spec, plan)
    if not plan.min_containers:
        return 0.0
    return plan.min_containers * price.usd_per_hour if price.billing == "per-second" else None

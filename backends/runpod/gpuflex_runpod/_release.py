"""``gpuflex deploy`` on RunPod: plan, then apply only the diff; versions and rollback; calls with plain JSON.

* An endpoint of environment ``env`` is ``<deploy_prefix><env>-<name>`` (``gpuflex-prod-generate``).
* Its code lives in the object store (see :mod:`._store`), named by hash: the bundle, gpuflex's runtime, and a
  release manifest (kind, methods, worker init). The template's environment names the release
  (``GPUFLEX_RELEASE``) and the store, so workers start with the code and take plain JSON jobs.
* The plan compares, field by field, the live endpoint (``myself { endpoints }``) with what would be sent, and
  with what the last deploy sent (its version record): a field RunPod holds other than what was sent is drift.
  Applying makes only those changes; an unchanged endpoint gets no mutating call (neither GraphQL nor S3).
* Every applied change is a version, kept in the store (``state/<env>/<name>.json``): the bundle, the release, the
  exact ``EndpointInput`` sent (secret values masked), the git commit. Rollback sends a version's input again
  (secrets from the live template, else this environment) and records it as a new version.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from gpuflex.backend import DeployedEndpoint, EndpointPlan, FieldChange, PlanAction, Version, rollback_record
from gpuflex.errors import BackendError, ConfigError, JobFailed
from gpuflex.worker import worker_init

from ._bootstrap import runtime_ref, runtime_requirements
from ._control import DEPLOY_HASH_ENV, PLATFORM_ENV, SECRET_ENV, VERIFIED, deploy_hash, hiding, verify
from ._pricing import serverless_price
from ._protocol import init_to_json, zip_bundle

if TYPE_CHECKING:
    from gpuflex.backend import Release, ReleaseEndpoint

    from ._backend import RunPodBackend
    from ._store import ObjectStore

__all__ = ["Releases"]

MASK = "***"
_LONG = 48  # longer values are shown by hash


@attrs.define
class _Wanted:
    item: ReleaseEndpoint
    remote_name: str
    manifest: bytes
    release: str
    extra_env: dict[str, str]
    digest: str
    data: dict[str, Any]  # the EndpointInput deploy sends
    secrets: tuple[str, ...]  # template variables whose values are secret


def _env_of(template: Any) -> dict[str, str]:
    items = template.get("env") if isinstance(template, dict) else None
    return {str(i["key"]): str(i["value"]) for i in items or () if isinstance(i, dict) and "key" in i}


def flatten(data: dict[str, Any] | None) -> dict[str, Any]:
    """An endpoint (live, or an ``EndpointInput``) as the fields a plan compares."""
    if not data:
        return {}
    flat = {key: data.get(key) for key in VERIFIED if key in data}
    template: dict[str, Any] = data["template"] if isinstance(data.get("template"), dict) else {}
    for key in ("imageName", "dockerArgs", "containerDiskInGb"):
        if key in template:
            flat[f"template.{key}"] = template[key]
    for key, value in _env_of(template).items():
        if key not in PLATFORM_ENV and key != DEPLOY_HASH_ENV:
            flat[f"env.{key}"] = value
    return flat


def _normal(field: str, value: Any) -> Any:
    if field == "gpuIds":
        return frozenset(t.strip() for t in str(value or "").split(",") if t.strip())
    if field == "instanceIds":
        return tuple(sorted(value or ()))
    if field in ("locations", "networkVolumeId"):
        return value or ""
    return value


def _show(field: str, value: Any, secrets: tuple[str, ...]) -> Any:
    if value is None:
        return None
    if field.startswith("env.") and field[4:] in secrets:
        return MASK
    text = value if isinstance(value, str) else json.dumps(value)
    if len(text) > _LONG:
        return f"sha256:{hashlib.sha256(text.encode()).hexdigest()[:12]} ({len(text)} chars)"
    return value


def _masked(data: dict[str, Any], secrets: tuple[str, ...]) -> dict[str, Any]:
    """``data`` with the values of secret template variables replaced by ``***`` (what a version records)."""
    data = copy.deepcopy(data)
    for item in (data.get("template") or {}).get("env") or []:
        if item.get("key") in secrets:
            item["value"] = MASK
    return data


class Releases:
    """The release side of one :class:`RunPodBackend`."""

    def __init__(self, backend: RunPodBackend) -> None:
        self.backend = backend
        self.config = backend.config
        self._wanted: dict[tuple[str, str], _Wanted] = {}

    def remote_name(self, env: str, name: str) -> str:
        return f"{self.config.deploy_prefix}{env}-{name}"

    @staticmethod
    def state_key(env: str, name: str) -> str:
        return f"state/{env}/{name}.json"

    # -- what a deploy would send -----------------------------------------------------------------------------

    async def wanted(self, store: ObjectStore, env: str, item: ReleaseEndpoint) -> _Wanted:
        import pydantic

        spec, bundle = item.spec, item.bundle
        runtime = runtime_ref()["hash"]
        manifest = {
            "name": spec.name, "kind": spec.kind.value, "batched": spec.batched,
            "methods": {name: kind.value for name, kind in spec.methods.items()},
            "init": init_to_json(worker_init(spec, bundle, report_started=False, bundle_root=".")),
            "bundle": bundle.hash, "runtime": runtime,
        }
        blob = json.dumps(manifest, sort_keys=True).encode()
        release = hashlib.sha256(blob).hexdigest()[:20]
        streams = spec.kind.streams or any(kind.streams for kind in spec.methods.values())
        extra = {
            **store.settings.worker_env(), "GPUFLEX_RELEASE": release, "GPUFLEX_BUNDLE": bundle.hash,
            "GPUFLEX_HANDLER": "stream" if streams else "plain",
            # JSON calls validate with pydantic, pinned to the caller's version: the same schema as here
            "GPUFLEX_REQUIREMENTS": json.dumps([*runtime_requirements(), f"pydantic=={pydantic.VERSION}"]),
        }
        name = self.remote_name(env, spec.name)
        digest = deploy_hash(spec, self.config, extra)
        with hiding(self._hidden(spec, extra)):
            data = await self.backend.control.endpoint_input(spec, name=name, digest=digest, extra_env=extra)
        wanted = _Wanted(item, name, blob, release, extra, digest, data, (*spec.secrets, *SECRET_ENV))
        self._wanted[(env, spec.name)] = wanted
        return wanted

    @staticmethod
    def _hidden(spec: Any, extra: dict[str, str]) -> list[str]:
        values = [os.environ[n] for n in spec.secrets if os.environ.get(n)]
        return values + [v for k, v in extra.items() if k in SECRET_ENV and v]

    async def _missing_code(self, store: ObjectStore, wanted: _Wanted) -> list[str]:
        keys = [f"bundles/{wanted.item.bundle.hash}.zip", f"runtime/{runtime_ref()['hash']}.zip",
                f"releases/{wanted.release}.json"]
        return [key for key in keys if not await store.exists(key)]

    # -- plan -------------------------------------------------------------------------------------------------

    async def plan(self, release: Release) -> list[EndpointPlan]:
        store = await self.backend.object_store(required=True)
        assert store is not None
        listing = {str(e.get("name")): e for e in await self.backend.control.list_endpoints()}
        plans: list[EndpointPlan] = []
        names = set()
        for item in release.endpoints:
            names.add(item.spec.name)
            wanted = await self.wanted(store, release.env, item)
            state = await store.get_json(self.state_key(release.env, item.spec.name))
            live = listing.get(wanted.remote_name)
            if state and live is not None and release.app and state.get("app") not in (None, release.app):
                raise ConfigError(f"endpoint {item.spec.name!r} in environment {release.env!r} belongs to app "
                                  f"{state['app']!r}, not {release.app!r}: rename the endpoint, or deploy to "
                                  "another --env")
            plans.append(await self._compare(store, wanted, live, state))
        for key in await store.keys(f"state/{release.env}/"):
            name = key.rsplit("/", 1)[-1].removesuffix(".json")
            if name in names:
                continue
            state = await store.get_json(key) or {}
            if release.app and state.get("app") != release.app:
                continue
            live = listing.get(self.remote_name(release.env, name))
            warm = self._warm(live, state)
            names.add(name)
            plans.append(EndpointPlan(name=name, backend=self.backend.name, action=PlanAction.REMOVE,
                                      id=live.get("id") if live else None, warm_usd_per_hour=(warm, 0.0)))
        if not release.app:  # every app's: endpoints of the environment whose record was lost go too
            prefix = self.remote_name(release.env, "")
            for remote_name, live in listing.items():
                name = remote_name.removeprefix(prefix)
                if remote_name.startswith(prefix) and name not in names:
                    plans.append(EndpointPlan(name=name, backend=self.backend.name, action=PlanAction.REMOVE,
                                              id=live.get("id"), warm_usd_per_hour=(self._warm(live, None), 0.0)))
        return plans

    def _warm(self, live: dict[str, Any] | None, state: dict[str, Any] | None) -> float | None:
        """What ``live``'s always-on workers cost per hour, at the per-worker price its last deploy recorded."""
        if live is None:
            return 0.0
        workers = int(live.get("workersMin") or 0)
        versions = (state or {}).get("versions") or []
        price = versions[-1].get("warm_worker_usd_per_hour") if versions else None
        if workers == 0:
            return 0.0
        return None if price is None else workers * float(price)

    async def _compare(self, store: ObjectStore, wanted: _Wanted, live: dict[str, Any] | None,
                       state: dict[str, Any] | None) -> EndpointPlan:
        spec = wanted.item.spec
        price = serverless_price(spec, self.config)
        per_worker = price.idle_usd_per_hour if price.billing == "per-second" else None
        warm_wanted = 0.0 if not spec.min_workers else (None if per_worker is None else spec.min_workers * per_worker)
        common: dict[str, Any] = {"name": spec.name, "backend": self.backend.name}
        if live is None:
            return EndpointPlan(**common, action=PlanAction.CREATE, warm_usd_per_hour=(0.0, warm_wanted),
                                changes=tuple(FieldChange(field=f, deployed=None, wanted=_show(f, v, wanted.secrets))
                                              for f, v in sorted(flatten(wanted.data).items())))
        versions = (state or {}).get("versions") or []
        sent = flatten(versions[-1]["input"]) if versions else None
        have, want = flatten(live), flatten(wanted.data)
        changes = []
        for field in sorted(set(have) | set(want)):
            if _normal(field, have.get(field)) == _normal(field, want.get(field)):
                continue
            if field not in want and not field.startswith("env."):
                continue  # a field gpuflex does not send (set in the console) is kept as it is
            drift = sent is not None and sent.get(field) != MASK and \
                _normal(field, have.get(field)) != _normal(field, sent.get(field))
            changes.append(FieldChange(field=field, deployed=_show(field, have.get(field), wanted.secrets),
                                       wanted=_show(field, want.get(field), wanted.secrets), drift=drift))
        missing = await self._missing_code(store, wanted)
        if missing:
            changes.append(FieldChange(field="object store", deployed=f"missing {', '.join(missing)}",
                                       wanted="uploaded"))
        notes = []
        if live.get("workersStandby") and not spec.min_workers:
            notes.append(f"RunPod holds workersStandby={live['workersStandby']} (RunPod sets it itself; gpuflex "
                         "cannot send it, and it is not known to bill)")
        action = PlanAction.CHANGE if changes else PlanAction.UNCHANGED
        return EndpointPlan(**common, action=action, changes=tuple(changes), notes=tuple(notes), id=live.get("id"),
                            warm_usd_per_hour=(self._warm(live, state), warm_wanted))

    # -- apply ------------------------------------------------------------------------------------------------

    async def apply(self, release: Release, plans: list[EndpointPlan]) -> list[DeployedEndpoint]:
        store = await self.backend.object_store(required=True)
        assert store is not None
        listing: dict[str, dict[str, Any]] | None = None
        done = []
        for plan in plans:
            if plan.action is PlanAction.UNCHANGED:
                state = await store.get_json(self.state_key(release.env, plan.name)) or {}
                done.append(self._deployed(release.env, plan, plan.id, len(state.get("versions") or []) or None))
                continue
            if listing is None:
                listing = {str(e.get("name")): e for e in await self.backend.control.list_endpoints()}
            live = listing.get(self.remote_name(release.env, plan.name))
            if plan.action is PlanAction.REMOVE:
                if live is not None:
                    await self.backend.control.delete(live)
                await store.delete(self.state_key(release.env, plan.name))
                done.append(self._deployed(release.env, plan, plan.id, None))
                continue
            wanted = self._wanted.get((release.env, plan.name))
            if wanted is None:
                raise BackendError(f"no plan was made for {plan.name!r}: plan, then apply")
            remote = await self._save(store, wanted, live, plan)
            number = await self._record(store, release, wanted, remote, note="")
            done.append(self._deployed(release.env, plan, str(remote["id"]), number))
        if any(p.action is PlanAction.REMOVE for p in plans) and not await store.keys("state/"):
            for key in await store.keys(""):  # nothing deployed anywhere any more: leave nothing behind
                await store.delete(key)
        return done

    def _deployed(self, env: str, plan: EndpointPlan, endpoint_id: str | None, version: int | None) -> \
            DeployedEndpoint:
        url = f"{self.config.jobs_url}/{endpoint_id}/runsync" if endpoint_id else None
        return DeployedEndpoint(name=plan.name, backend=self.backend.name, env=env, action=plan.action,
                                id=endpoint_id, url=url, version=version)

    async def _upload(self, store: ObjectStore, wanted: _Wanted) -> None:
        """The code first (workers fetch it when they start): runtime, bundle, manifest, each once per hash."""
        import base64

        runtime = runtime_ref()
        await store.put_once(f"runtime/{runtime['hash']}.zip", base64.b64decode(runtime["zip"]))
        key = f"bundles/{wanted.item.bundle.hash}.zip"
        if not await store.exists(key):
            await store.put(key, await anyio.to_thread.run_sync(zip_bundle, wanted.item.bundle))
        await store.put_once(f"releases/{wanted.release}.json", wanted.manifest)

    async def _save(self, store: ObjectStore, wanted: _Wanted, live: dict[str, Any] | None,
                    plan: EndpointPlan) -> dict[str, Any]:
        await self._upload(store, wanted)
        control = self.backend.control
        spec = wanted.item.spec
        with hiding(self._hidden(spec, wanted.extra_env)):
            if live is None:
                return await control.ensure(spec, name=wanted.remote_name, digest=wanted.digest, existing=None,
                                            extra_env=wanted.extra_env)
            templated = any(c.field.startswith(("env.", "template.")) for c in plan.changes)
            remote = await control.update(live, wanted.data, force_template=templated)
            verify(remote, wanted.data)
            return remote

    async def _record(self, store: ObjectStore, release: Release, wanted: _Wanted, remote: dict[str, Any], *,
                      note: str) -> int:
        key = self.state_key(release.env, wanted.item.spec.name)
        state = await store.get_json(key) or {"app": release.app, "endpoint": wanted.item.spec.name,
                                              "env": release.env, "versions": []}
        price = serverless_price(wanted.item.spec, self.config)
        number = len(state["versions"]) + 1
        masked = _masked(wanted.data, wanted.secrets)
        state["versions"].append({
            "number": number, "bundle": wanted.item.bundle.hash, "release": wanted.release,
            "input": masked, "settings": {f: _show(f, v, wanted.secrets) for f, v in flatten(masked).items()},
            "commit": release.commit, "created_at": time.time(), "note": note, "endpoint_id": remote.get("id"),
            "warm_worker_usd_per_hour": price.idle_usd_per_hour if price.billing == "per-second" else None,
        })
        state["app"] = release.app or state.get("app")
        await store.put_json(key, state)
        return number

    # -- versions and rollback --------------------------------------------------------------------------------

    async def versions(self, env: str, name: str) -> list[Version]:
        store = await self.backend.object_store(required=True)
        assert store is not None
        state = await store.get_json(self.state_key(env, name))
        if not state:
            raise ConfigError(f"no deploy of {name!r} is recorded in environment {env!r} (in the object store "
                              f"{store.settings.bucket}/{store.settings.prefix})")
        records = state["versions"]
        return [Version.from_record(v, current=i == len(records) - 1) for i, v in enumerate(records)]

    async def rollback(self, env: str, name: str, number: int | None) -> Version:
        store = await self.backend.object_store(required=True)
        assert store is not None
        key = self.state_key(env, name)
        state = await store.get_json(key)
        if not state or not state.get("versions"):
            raise ConfigError(f"no deploy of {name!r} is recorded in environment {env!r}")
        records = state["versions"]
        number, restored = rollback_record(records, name, env, number)
        live = await self.backend.control.find(self.remote_name(env, name))
        if live is None:
            raise ConfigError(f"{name!r} is not deployed in {env!r} (its RunPod endpoint is gone): deploy it again")
        for code in (f"bundles/{restored['bundle']}.zip", f"releases/{restored['release']}.json"):
            if not await store.exists(code):
                raise BackendError(f"version {number} of {name!r} cannot be restored: {code} is gone from the "
                                   "object store")
        data, hidden = self._unmask(restored["input"], live)
        with hiding(hidden):
            remote = await self.backend.control.update(live, data, force_template=True)
            verify(remote, data)
        records.append({**restored, "endpoint_id": remote.get("id")})
        await store.put_json(key, state)
        return Version.from_record(records[-1], current=True)

    @staticmethod
    def _unmask(recorded: dict[str, Any], live: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """A recorded input with its secret values back: from the live template, else this environment."""
        data = copy.deepcopy(recorded)
        live_env = _env_of(live.get("template"))
        hidden = []
        for item in (data.get("template") or {}).get("env") or []:
            if item.get("value") != MASK:
                continue
            value = live_env.get(item["key"]) or os.environ.get(item["key"])
            if not value:
                raise ConfigError(f"rolling back needs the secret {item['key']}, which neither the live endpoint "
                                  "nor this environment has; export it and try again")
            item["value"] = value
            hidden.append(value)
        return data, hidden

    # -- plain JSON calls -------------------------------------------------------------------------------------

    async def call_json(self, env: str, name: str, body: Any) -> Any:
        live = await self.backend.control.find(self.remote_name(env, name))
        if live is None:
            raise ConfigError(f"{name!r} is not deployed in environment {env!r}")
        url = f"{self.config.jobs_url}/{live['id']}"
        wait = max(1000, int((self.config.request_timeout - 5) * 1000))
        with self.backend.errors(f"call {name!r}"):
            answer = (await self.backend.api.request("POST", f"{url}/runsync?wait={wait}", content=json.dumps(
                {"input": body}).encode(), creates_job=True, pace="run")).json()
            while answer.get("status") in ("IN_QUEUE", "IN_PROGRESS"):
                await anyio.sleep(0.5)
                answer = (await self.backend.api.request("GET", f"{url}/status/{answer['id']}", pace="status")).json()
        if answer.get("status") == "COMPLETED":
            return answer.get("output")
        error = answer.get("error")
        try:
            parsed = json.loads(error) if isinstance(error, str) else error
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and "error" in parsed and "message" in parsed:
            raise JobFailed(f"{parsed['error']}: {parsed['message']}")
        raise JobFailed(f"the job ended {answer.get('status')}: {error}")

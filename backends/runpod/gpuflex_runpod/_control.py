"""The control plane: one RunPod endpoint per gpuflex endpoint, created or updated with ``saveEndpoint`` (nested
template, every scaling field gpuflex manages explicit), checked against what the mutation returns, adopted only
when its live settings are what gpuflex would send, deleted on teardown.

* Only input fields RunPod's live schema has are sent (``_schema``, introspection once per process).
* ``saveEndpoint`` replaces the whole endpoint (runpodctl: "omitting fields would reset them to server
  defaults"), so an update sends back what gpuflex does not manage (a volume or data centres set in the console).
* A create that failed ambiguously (a 5xx or a lost answer: it may have happened) is not blindly resent: the
  endpoint is looked up by name first, and created again only if it is not there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import secrets
from typing import TYPE_CHECKING, Any

from gpuflex.errors import BackendError, ConfigError

from ._bootstrap import boot_env, boot_source, image_for, python_version, runtime_ref, start_command
from ._errors import RunPodHTTPError
from ._hardware import cpu_disk_limit, gpu_ids, serverless_pools
from ._pricing import idle_timeout
from ._schema import api_schema, keep_known, selection

if TYPE_CHECKING:
    from collections.abc import Iterator

    from gpuflex import EndpointSpec

    from ._config import RunPodConfig
    from ._errors import RunPodApi
    from ._schema import ApiSchema

__all__ = ["DEPLOY_HASH_ENV", "SECRET_ENV", "ControlPlane", "differences", "endpoint_input", "execution_timeout_ms",
           "hidden_values", "hiding", "verify"]

log = logging.getLogger("gpuflex.runpod")

DEPLOY_HASH_ENV = "GPUFLEX_DEPLOY_HASH"
DEFAULT_EXECUTION_TIMEOUT_MS = 600_000  # RunPod's documented default, sent explicitly when the endpoint has none
EXECUTION_ALLOWANCE = 30.0  # seconds RunPod's backstop lies past the endpoint's own timeout
DEFAULT_DISK_GB = 20

#: what gpuflex reads of an endpoint; only the fields the live schema has are selected
ENDPOINT_FIELDS = ("id name templateId workersMin workersMax workersStandby idleTimeout scalerType scalerValue gpuIds "
                   "gpuCount instanceIds executionTimeoutMs flashBootType type locations networkVolumeId "
                   "networkVolumeIds{networkVolumeId} allowedCudaVersions minCudaVersion workersPFBTarget "
                   "modelReferences flashEnvironmentId template{id,name,imageName,dockerArgs,containerDiskInGb,"
                   "env{key,value}}")
SAVE_TEMPLATE = "mutation gpuflexSaveTemplate($input: SaveTemplateInput) { saveTemplate(input: $input) { id } }"
DELETE_ENDPOINT = "mutation gpuflexDeleteEndpoint($id: String!) { deleteEndpoint(id: $id) }"
DELETE_TEMPLATE = "mutation gpuflexDeleteTemplate($name: String) { deleteTemplate(templateName: $name) }"

#: settings gpuflex sends, checked after every save and before adopting an existing endpoint
VERIFIED = ("workersMin", "workersMax", "idleTimeout", "scalerType", "scalerValue", "gpuIds", "gpuCount",
            "instanceIds", "executionTimeoutMs", "flashBootType", "networkVolumeId", "locations")
#: endpoint settings gpuflex does not manage: sent back as they are on every update
KEPT = ("locations", "networkVolumeId", "networkVolumeIds", "allowedCudaVersions", "minCudaVersion",
        "workersPFBTarget", "modelReferences", "flashEnvironmentId")
#: template variables RunPod itself injects (runpod-flash keeps them across updates)
PLATFORM_ENV = ("PORT", "PORT_HEALTH")


def execution_timeout_ms(timeout: float | None) -> int:
    """RunPod's execution timeout for a gpuflex timeout: the caller enforces ``timeout`` itself (from when the job
    starts running, cancelling it on time); RunPod's limit is a backstop ``EXECUTION_ALLOWANCE`` later, which also
    covers a fresh worker loading the bundle inside the job, and stops the work if the caller went away."""
    if not timeout:
        return DEFAULT_EXECUTION_TIMEOUT_MS
    return math.ceil((timeout + EXECUTION_ALLOWANCE) * 1000)


def _template_env(spec: EndpointSpec, config: RunPodConfig, deploy_hash: str,
                  extra: dict[str, str] | None = None) -> list[dict[str, str]]:
    env = {**boot_env(spec, config), **(extra or {}), **spec.env}
    missing = [name for name in spec.secrets if name not in os.environ]
    if missing:
        raise ConfigError(f"endpoint {spec.name!r} needs the secret(s) {', '.join(missing)}, which are not set in "
                          "this environment; export them before deploying")
    env.update({name: os.environ[name] for name in spec.secrets})
    env["GPUFLEX_CONCURRENCY"] = str(spec.calls_per_worker)  # batched endpoints: a batch's worth of jobs at once
    env[DEPLOY_HASH_ENV] = deploy_hash
    return [{"key": key, "value": value} for key, value in sorted(env.items())]


def deploy_hash(spec: EndpointSpec, config: RunPodConfig, extra: dict[str, str] | None = None) -> str:
    """Changes when anything sent to RunPod changes (the spec's deploy settings, this backend's options, the
    ``extra`` template variables: the object store, a release)."""
    boot = hashlib.sha256(boot_source().encode()).hexdigest()
    data: list[Any] = [spec.config_hash(), image_for(spec, config), config.network_volume_id, python_version(),
            runtime_ref()["hash"], boot, config.scaler_type, config.scaler_value, config.flashboot,
            config.cpu_instance, config.container_disk_gb, config.default_idle_timeout, config.locations]
    if extra:
        data.append(sorted(extra.items()))
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


def endpoint_input(spec: EndpointSpec, config: RunPodConfig, *, name: str, digest: str, hardware: dict[str, Any],
                   disk_gb: int, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """``EndpointInput`` for ``saveEndpoint``, every scaling field explicit. ``hardware``: ``gpuIds`` and
    ``gpuCount``, or (CPU workers) only ``instanceIds``: RunPod refuses GPU fields on CPU endpoints."""
    data: dict[str, Any] = {
        "name": name,
        "type": "QB",
        "workersMin": spec.min_workers,
        "workersMax": spec.max_workers,
        "idleTimeout": idle_timeout(spec, config),
        "scalerType": config.scaler_type,
        "scalerValue": config.scaler_value,
        "executionTimeoutMs": execution_timeout_ms(spec.timeout),
        "flashBootType": "FLASHBOOT" if config.flashboot else "OFF",
        "template": {
            "name": f"{name}-{digest}",
            "imageName": image_for(spec, config),
            "containerDiskInGb": disk_gb,
            "dockerArgs": start_command(python_version()),
            "env": _template_env(spec, config, digest, extra_env),
        },
        **hardware,
    }
    if config.locations is not None:
        data["locations"] = config.locations
    if config.network_volume_id:
        data["networkVolumeId"] = config.network_volume_id
    return data


def _normal(key: str, value: Any) -> Any:
    if key == "gpuIds":  # RunPod may store the tokens in another order
        return frozenset(t.strip() for t in str(value or "").split(",") if t.strip())
    if key == "instanceIds":
        return tuple(sorted(value or ()))
    if key in ("locations", "networkVolumeId"):
        return value or ""
    return value


def _env(items: Any) -> dict[str, str]:
    return {str(i["key"]): str(i["value"]) for i in items or () if isinstance(i, dict) and "key" in i}


def _template_differences(live: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    wrong = [f"template {key}: {live.get(key)!r}, wanted {wanted[key]!r}"
             for key in ("imageName", "dockerArgs", "containerDiskInGb")
             if key in wanted and live.get(key) != wanted[key]]
    have, want = _env(live.get("env")).get(DEPLOY_HASH_ENV), _env(wanted.get("env")).get(DEPLOY_HASH_ENV)
    if have != want:
        wrong.append(f"template {DEPLOY_HASH_ENV}: {have!r}, wanted {want!r}")
    return wrong


def differences(live: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Where a live endpoint differs from the ``EndpointInput`` gpuflex would send (``"field: live, wanted"``)."""
    wrong = [f"{key}: {live.get(key)!r}, wanted {wanted[key]!r}" for key in VERIFIED
             if key in wanted and key in live and _normal(key, live[key]) != _normal(key, wanted[key])]
    if "template" in wanted:
        if isinstance(live.get("template"), dict):
            wrong += _template_differences(live["template"], wanted["template"])
        else:
            wrong.append("template: not readable")
    return wrong


def verify(saved: dict[str, Any], sent: dict[str, Any]) -> None:
    """What ``saveEndpoint`` returned (RunPod's stored endpoint) must hold every setting that was sent."""
    wrong = [f"{key}: sent {sent[key]!r}, stored {saved.get(key)!r}" for key in VERIFIED
             if key in sent and key in saved and _normal(key, saved[key]) != _normal(key, sent[key])]
    if wrong:
        raise BackendError(f"RunPod stored other settings than gpuflex sent for {sent['name']} "
                           f"({'; '.join(wrong)}); fix them in the console or redeploy")


#: template variables whose values are secret, besides the endpoint's ``secrets``
SECRET_ENV = ("GPUFLEX_STORE_SECRET_KEY",)


def hidden_values(spec: EndpointSpec, extra_env: dict[str, str] | None = None) -> list[str]:
    """The secret values an error about ``spec``'s endpoint must never show."""
    values = [os.environ[n] for n in spec.secrets if os.environ.get(n)]
    return values + [v for k, v in (extra_env or {}).items() if k in SECRET_ENV and v]


def _as_input(key: str, value: Any) -> Any:
    if key == "networkVolumeIds":  # the output type carries dataCenterId too; the input type only the id
        return [{"networkVolumeId": v["networkVolumeId"]} for v in value or () if isinstance(v, dict)]
    return value


@contextlib.contextmanager
def hiding(values: list[str]) -> Iterator[None]:
    """GraphQL errors may quote the input back (template env included): never let a secret's value through."""
    try:
        yield
    except (BackendError, RunPodHTTPError) as exc:
        def scrub(text: str) -> str:
            for value in values:
                text = text.replace(value, "***").replace(json.dumps(value)[1:-1], "***")
            return text

        if scrub(str(exc)) == str(exc):
            raise
        if isinstance(exc, RunPodHTTPError):
            exc.text = scrub(exc.text)
            exc.args = (scrub(str(exc)),)
            raise
        raise BackendError(scrub(str(exc))) from None


def _fresh(name: str) -> str:
    """A template name no earlier attempt used (RunPod refuses a second template of the same name)."""
    return f"{name}-{secrets.token_hex(2)}"


class ControlPlane:
    def __init__(self, api: RunPodApi, config: RunPodConfig) -> None:
        self.api = api
        self.config = config

    async def schema(self) -> ApiSchema:
        return await api_schema(self.api)

    async def _fields(self) -> str:
        return selection(ENDPOINT_FIELDS, (await self.schema()).endpoint)

    async def list_endpoints(self) -> list[dict[str, Any]]:
        query = f"query gpuflexEndpoints {{ myself {{ endpoints {{ {await self._fields()} }} }} }}"
        data = await self.api.graphql(query, {})
        endpoints: list[dict[str, Any]] = (data.get("myself") or {}).get("endpoints") or []
        return [e for e in endpoints if e]

    async def sweep_templates(self, prefix: str) -> None:
        """Delete the templates named with ``prefix`` that no endpoint uses (left by a delete that failed half-way,
        or by a killed run)."""
        schema = await self.schema()
        if "deleteTemplate" not in schema.mutations:
            return
        data = await self.api.graphql("query gpuflexTemplates { myself { podTemplates { id name } } }", {})
        used = {e.get("templateId") for e in await self.list_endpoints()}
        for template in (data.get("myself") or {}).get("podTemplates") or []:
            if template and str(template.get("name", "")).startswith(prefix) and template.get("id") not in used:
                try:
                    await self.api.graphql(DELETE_TEMPLATE, {"name": template["name"]}, mutation=True)
                except (BackendError, RunPodHTTPError) as exc:
                    log.info("could not delete RunPod template %s (%s)", template["name"], exc)

    async def find(self, name: str) -> dict[str, Any] | None:
        return next((e for e in await self.list_endpoints() if e.get("name") == name), None)

    async def save(self, data: dict[str, Any]) -> dict[str, Any]:
        query = (f"mutation gpuflexSaveEndpoint($input: EndpointInput!) {{ saveEndpoint(input: $input) "
                 f"{{ {await self._fields()} }} }}")
        saved: dict[str, Any] = (await self.api.graphql(query, {"input": data}, mutation=True))["saveEndpoint"]
        return saved

    async def volume_data_centre(self, volume_id: str) -> str | None:
        """The data centre of one of the account's network volumes (RunPod's S3 API has one URL per centre)."""
        data = await self.api.graphql("query gpuflexVolumes { myself { networkVolumes { id dataCenterId } } }", {})
        volumes = (data.get("myself") or {}).get("networkVolumes") or []
        return next((str(v["dataCenterId"]) for v in volumes if v and v.get("id") == volume_id), None)

    async def endpoint_input(self, spec: EndpointSpec, *, name: str, digest: str,
                             extra_env: dict[str, str] | None = None) -> dict[str, Any]:
        """What ``saveEndpoint`` gets for ``spec``, with RunPod's own GPU pools and CPU disk limits, holding only
        fields the live schema accepts."""
        schema = await self.schema()
        if spec.gpu is not None:
            pools = await serverless_pools(self.api, schema)
            hardware: dict[str, Any] = {"gpuIds": gpu_ids(spec.gpu, pools), "gpuCount": spec.gpu.count}
            disk = self.config.container_disk_gb or DEFAULT_DISK_GB
        else:
            instance = self.config.cpu_instance
            limit = await cpu_disk_limit(self.api, schema, instance)
            disk = self.config.container_disk_gb or min(DEFAULT_DISK_GB, limit)
            if disk > limit:
                raise ConfigError(f"container_disk_gb={disk} is more than a {instance} worker may have ({limit} GB); "
                                  "lower it or pick a CPU instance with more vCPUs")
            hardware = {"instanceIds": [instance]}
        data = endpoint_input(spec, self.config, name=name, digest=digest, hardware=hardware, disk_gb=disk,
                              extra_env=extra_env)
        data = keep_known(data, schema.endpoint_input, "EndpointInput")
        if "template" in data:
            data["template"] = keep_known(data["template"], schema.template_input, "EndpointTemplateInput")
        return data

    async def ensure(self, spec: EndpointSpec, *, name: str, digest: str, existing: dict[str, Any] | None,
                     extra_env: dict[str, str] | None = None) -> dict[str, Any]:
        """The RunPod endpoint for ``spec``: ``existing`` as it is when its live settings are what gpuflex would
        send, else updated in place; created when there is none."""
        with hiding(hidden_values(spec, extra_env)):
            data = await self.endpoint_input(spec, name=name, digest=digest, extra_env=extra_env)
            if existing is None:
                remote = await self.create(data)
                try:
                    verify(remote, data)
                except BackendError:
                    with contextlib.suppress(BackendError, RunPodHTTPError, OSError):
                        await self.delete(remote)  # not left behind, unknown to every later run's bookkeeping
                    raise
            else:
                wrong = differences(existing, data)
                if not wrong:
                    return existing  # adopted: a leftover of an earlier run, with its warm workers
                log.info("updating RunPod endpoint %s: %s", name, "; ".join(wrong))
                remote = await self.update(existing, data)
                verify(remote, data)
        if remote.get("workersStandby") and not spec.min_workers:
            log.info("RunPod reports workersStandby=%s on %s: RunPod sets it itself (FlashBoot); gpuflex cannot set "
                     "it, and runpod/flash#364 saw no billing for it", remote["workersStandby"], name)
        return remote

    async def create(self, data: dict[str, Any]) -> dict[str, Any]:
        import httpx

        for attempt in (1, 2):
            try:
                return await self.save({**data, "template": {**data["template"],
                                                             "name": _fresh(data["template"]["name"])}})
            except (RunPodHTTPError, httpx.TransportError) as exc:
                if (isinstance(exc, RunPodHTTPError) and exc.status < 500) or attempt == 2:
                    raise
                found = await self.find(data["name"])  # the answer was lost: did the create happen?
                if found is not None:
                    log.warning("creating RunPod endpoint %s answered %s, but it was created", data["name"], exc)
                    return found
                log.warning("creating RunPod endpoint %s failed (%s) and created nothing; trying once more",
                            data["name"], exc)
        raise AssertionError("unreachable")

    async def update(self, existing: dict[str, Any], data: dict[str, Any], *,
                     force_template: bool = False) -> dict[str, Any]:
        """Save ``data`` over ``existing`` (the template first, when it changed, or always with ``force_template``:
        a variable changed in the console), keeping what gpuflex does not manage, since ``saveEndpoint`` replaces
        the whole endpoint."""
        schema = await self.schema()
        data = dict(data)
        template = data.pop("template", None)
        for key in KEPT:
            if key not in data and existing.get(key) not in (None, "", []):
                data[key] = _as_input(key, existing[key])
        live: dict[str, Any] = existing["template"] if isinstance(existing.get("template"), dict) else {}
        template_id = existing.get("templateId") or live.get("id")
        if template is not None and (force_template or not live or _template_differences(live, template)):
            env = _env(template.get("env"))
            env.update({k: v for k, v in _env(live.get("env")).items() if k in PLATFORM_ENV and k not in env})
            fields = {**template, "env": [{"key": k, "value": v} for k, v in sorted(env.items())],
                      "name": live.get("name") or _fresh(template["name"]), "id": template_id, "volumeInGb": 0,
                      "readme": ""}
            await self.api.graphql(SAVE_TEMPLATE, {"input": keep_known(fields, schema.save_template_input,
                                                                        "SaveTemplateInput")}, mutation=True)
        data = keep_known({**data, "id": existing["id"], "templateId": template_id}, schema.endpoint_input,
                          "EndpointInput")
        return await self.save(data)

    async def delete(self, endpoint: dict[str, Any]) -> None:
        """Scale to zero first (RunPod refuses to delete an endpoint with workers), delete it, then its template
        when gpuflex made it (RunPod keeps templates; a later deploy must not meet a leftover of the same name)."""
        schema = await self.schema()
        keep = ["name", "templateId", "type", "idleTimeout", "scalerType", "scalerValue", "executionTimeoutMs",
                "flashBootType", *KEPT]
        keep += ["instanceIds"] if endpoint.get("instanceIds") else ["gpuIds", "gpuCount"]
        data = {key: _as_input(key, endpoint[key]) for key in keep if endpoint.get(key) not in (None, [])}
        template: dict[str, Any] = endpoint["template"] if isinstance(endpoint.get("template"), dict) else {}
        data.setdefault("templateId", template.get("id"))
        data = {**data, "id": endpoint["id"], "workersMin": 0, "workersMax": 0}
        await self.save(keep_known(data, schema.endpoint_input, "EndpointInput"))
        await self.api.graphql(DELETE_ENDPOINT, {"id": endpoint["id"]}, mutation=True)
        name = str(template.get("name") or "")
        if name.startswith(f"{endpoint.get('name')}-") and "deleteTemplate" in schema.mutations:
            try:
                await self.api.graphql(DELETE_TEMPLATE, {"name": name}, mutation=True)
            except (BackendError, RunPodHTTPError) as exc:  # RunPod may delete it along with the endpoint
                log.info("could not delete RunPod template %s (%s)", name, exc)

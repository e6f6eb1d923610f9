"""The control plane: one RunPod endpoint per gpuflex endpoint, created or updated with ``saveEndpoint`` (nested
template, every scaling field explicit), read back and verified, deleted on teardown."""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import TYPE_CHECKING, Any

from gpuflex.errors import BackendError, ConfigError

from ._pricing import gpu_ids

if TYPE_CHECKING:
    from gpuflex import EndpointSpec

    from ._config import RunPodConfig
    from ._errors import RunPodApi

__all__ = ["DEPLOY_HASH_ENV", "ControlPlane", "endpoint_input", "execution_timeout_ms"]

DEPLOY_HASH_ENV = "GPUFLEX_DEPLOY_HASH"
DEFAULT_EXECUTION_TIMEOUT_MS = 600_000  # RunPod's documented default, sent explicitly when the endpoint has none
EXECUTION_ALLOWANCE = 30.0  # seconds RunPod's backstop lies past the endpoint's own timeout

_FIELDS = ("id name workersMin workersMax workersStandby idleTimeout scalerType scalerValue gpuIds gpuCount "
           "instanceIds executionTimeoutMs flashBootType templateId type")
SAVE_ENDPOINT = f"mutation saveEndpoint($input: EndpointInput!) {{ saveEndpoint(input: $input) {{ {_FIELDS} }} }}"
LIST_ENDPOINTS = (f"query endpoints {{ myself {{ endpoints {{ {_FIELDS} "
                  "template { id imageName env { key value } } } } }")
SAVE_TEMPLATE = "mutation saveTemplate($input: SaveTemplateInput) { saveTemplate(input: $input) { id } }"
DELETE_ENDPOINT = "mutation deleteEndpoint($id: String!) { deleteEndpoint(id: $id) }"

#: Fields compared after a deploy: what RunPod stored must be what was sent.
VERIFIED = ("workersMin", "workersMax", "workersStandby", "idleTimeout", "scalerType", "scalerValue", "gpuIds",
            "gpuCount", "executionTimeoutMs", "flashBootType")


def execution_timeout_ms(timeout: float | None) -> int:
    """RunPod's execution timeout for a gpuflex timeout: the caller enforces ``timeout`` itself (from when the job
    starts running, cancelling it on time); RunPod's limit is a backstop ``EXECUTION_ALLOWANCE`` later, which also
    covers a fresh worker loading the bundle inside the job, and stops the work if the caller went away."""
    if not timeout:
        return DEFAULT_EXECUTION_TIMEOUT_MS
    return math.ceil((timeout + EXECUTION_ALLOWANCE) * 1000)


def _template_env(spec: EndpointSpec, deploy_hash: str) -> list[dict[str, str]]:
    env = dict(spec.env)
    missing = [name for name in spec.secrets if name not in os.environ]
    if missing:
        raise ConfigError(f"endpoint {spec.name!r} needs the secret(s) {', '.join(missing)}, which are not set in "
                          "this environment; export them before deploying")
    env.update({name: os.environ[name] for name in spec.secrets})
    env["GPUFLEX_CONCURRENCY"] = str(spec.concurrency)
    env[DEPLOY_HASH_ENV] = deploy_hash
    return [{"key": key, "value": value} for key, value in sorted(env.items())]


def deploy_hash(spec: EndpointSpec, config: RunPodConfig) -> str:
    """Changes when anything sent to RunPod changes (the spec's deploy settings or this backend's options)."""
    data = [spec.config_hash(), config.image, config.workers_standby, config.scaler_type, config.scaler_value,
            config.flashboot, config.cpu_instance, config.container_disk_gb]
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


def endpoint_input(spec: EndpointSpec, config: RunPodConfig, *, name: str, digest: str) -> dict[str, Any]:
    """``EndpointInput`` for ``saveEndpoint``, with every scaling field explicit (workersStandby included)."""
    timeout_ms = execution_timeout_ms(spec.timeout)
    data: dict[str, Any] = {
        "name": name,
        "type": "QB",
        "workersMin": spec.min_workers,
        "workersMax": spec.max_workers,
        "workersStandby": config.workers_standby,
        "idleTimeout": max(1, math.ceil(spec.idle_timeout)),
        "scalerType": config.scaler_type,
        "scalerValue": config.scaler_value,
        "executionTimeoutMs": timeout_ms,
        "flashBootType": "FLASHBOOT" if config.flashboot else "OFF",
        "template": {
            "name": f"{name}-{digest}",
            "imageName": config.image,
            "containerDiskInGb": config.container_disk_gb,
            "dockerArgs": "",
            "env": _template_env(spec, digest),
        },
    }
    if spec.gpu is not None:
        data.update(gpuIds=gpu_ids(spec.gpu), gpuCount=spec.gpu.count)
    else:
        data.update(instanceIds=[config.cpu_instance], gpuCount=0)
    return data


class ControlPlane:
    def __init__(self, api: RunPodApi, config: RunPodConfig) -> None:
        self.api = api
        self.config = config

    async def list_endpoints(self) -> list[dict[str, Any]]:
        data = await self.api.graphql(LIST_ENDPOINTS, {})
        endpoints: list[dict[str, Any]] = (data.get("myself") or {}).get("endpoints") or []
        return endpoints

    async def find(self, name: str) -> dict[str, Any] | None:
        matches = [e for e in await self.list_endpoints() if e.get("name") == name]
        return matches[0] if matches else None

    async def save(self, data: dict[str, Any]) -> dict[str, Any]:
        saved: dict[str, Any] = (await self.api.graphql(SAVE_ENDPOINT, {"input": data}))["saveEndpoint"]
        return saved

    async def update_template(self, existing: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """For an update: save the new template over the endpoint's own (``saveTemplate`` with its id; the env is
        a full replacement), and return the endpoint input naming it by ``templateId`` with the endpoint's id."""
        template = dict(data.pop("template"))
        template_id = existing["templateId"]
        await self.api.graphql(SAVE_TEMPLATE, {"input": {**template, "id": template_id, "volumeInGb": 0,
                                                         "readme": ""}})
        return {**data, "id": existing["id"], "templateId": template_id}

    async def verify(self, endpoint_id: str, sent: dict[str, Any]) -> None:
        """Read the endpoint back; every scaling field must hold what was sent."""
        stored = next((e for e in await self.list_endpoints() if e.get("id") == endpoint_id), None)
        if stored is None:
            raise BackendError(f"RunPod endpoint {endpoint_id} ({sent['name']}) is missing right after saving it")
        wrong = [f"{key}: sent {sent[key]!r}, stored {stored.get(key)!r}" for key in VERIFIED
                 if key in sent and stored.get(key) != sent[key]]
        if wrong:
            raise BackendError(f"RunPod stored other settings than gpuflex sent for {sent['name']} "
                               f"({'; '.join(wrong)}); fix them in the console or redeploy")

    async def delete(self, endpoint: dict[str, Any]) -> None:
        """Scale to zero first (RunPod refuses to delete an endpoint with workers), then delete."""
        keep = ("id", "name", "templateId", "gpuIds", "gpuCount", "instanceIds", "idleTimeout", "scalerType",
                "scalerValue", "executionTimeoutMs", "flashBootType", "type")
        data = {key: endpoint[key] for key in keep if endpoint.get(key) is not None}
        await self.save({**data, "workersMin": 0, "workersMax": 0, "workersStandby": 0})
        await self.api.graphql(DELETE_ENDPOINT, {"id": endpoint["id"]})


def stored_deploy_hash(endpoint: dict[str, Any]) -> str | None:
    env = (endpoint.get("template") or {}).get("env") or []
    return next((str(item["value"]) for item in env if item.get("key") == DEPLOY_HASH_ENV), None)

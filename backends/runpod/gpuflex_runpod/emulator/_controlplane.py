"""The emulator's control plane: templates and endpoints as RunPod's GraphQL mutations create, replace and delete
them, with the checks RunPod makes (or, where RunPod's behaviour is unpublished, the stricter reading, so that
gpuflex is tested against the harder case).

* ``saveEndpoint`` without ``id`` creates; with ``id`` it is a **full replace** (runpodctl: "saveEndpoint is a full
  replace and omitting fields would reset them to server defaults"): fields left out fall back to the schema's
  defaults or to nothing. A nested ``template`` creates a template; ``templateId`` names one; not both.
* ``gpuIds`` is a comma-separated list of pool ids and ``-<gpu type id>`` exclusions; unknown tokens are refused
  (runpodctl: "the server validates either way"). CPU endpoints (``instanceIds``) take no ``gpuIds``/``gpuCount``
  (runpod-flash leaves them out "to prevent the RunPod GraphQL API from rejecting CPU endpoints"), and their
  container disk must fit the flavour (vCPUs x 10 GB, x 15 GB for cpu5c: runpod-flash's sizing notes).
* ``deleteEndpoint`` needs the endpoint scaled to zero first ("min and max workers must both be zero", RunPod's
  GraphQL docs). Deleting an endpoint keeps its template, as a template is an object of its own.
* Template names are unique per account ("Template name must be unique", a live probe).
"""

from __future__ import annotations

import datetime
import uuid
from typing import TYPE_CHECKING, Any

from ._catalog import CPU_FLAVORS, CPU_VCPUS, GPU_TYPES, SERVERLESS_POOLS, cpu_instance, gpu_type_view
from ._state import EmulatedEndpoint

if TYPE_CHECKING:
    from ._emulator import Emulator

__all__ = ["ControlPlane"]

USER_ID = "user_emulated"
NETWORK_VOLUMES = [{"id": "emuvol0001", "name": "emulated-volume", "size": 10, "dataCenterId": "EU-RO-1"},
                   {"id": "emuvol0002", "name": "emulated-volume-2", "size": 10, "dataCenterId": "EU-RO-1"}]
_STRUCTURAL = ("gpuIds", "instanceIds", "flashBootType", "gpuCount", "allowedCudaVersions", "minCudaVersion",
               "networkVolumeId", "networkVolumeIds", "locations")


class ControlPlane:
    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.templates: dict[str, dict[str, Any]] = {}
        self.mutations: dict[str, int] = {}  # mutations run, by root field (GET /_emulator/stats)

    # -- templates ------------------------------------------------------------------------------------------------

    def _new_template(self, fields: dict[str, Any], *, serverless: bool) -> dict[str, Any]:
        name = fields.get("name")
        if any(t["name"] == name for t in self.templates.values()):
            raise ValueError("Template name must be unique")
        template = {"isServerless": serverless, "volumeInGb": 0, **fields, "id": uuid.uuid4().hex[:10]}
        self.templates[template["id"]] = template
        return template

    def save_template(self, data: dict[str, Any]) -> dict[str, Any]:
        """Create a template, or (with ``id``) replace one in place; endpoints using it roll to a new release."""
        fields = {k: v for k, v in data.items() if k != "id"}
        if not data.get("id"):
            return self._new_template(fields, serverless=bool(fields.get("isServerless")))
        template = self.templates.get(data["id"])
        if template is None:
            raise LookupError(f"template {data['id']} not found")
        if any(t["name"] == fields.get("name") and t is not template for t in self.templates.values()):
            raise ValueError("Template name must be unique")
        replaced = {"id": template["id"], "isServerless": template.get("isServerless"), **fields}
        if replaced != template:
            template.clear()
            template.update(replaced)  # in place: endpoints hold this very dict
            for endpoint in self.emu.endpoints.values():
                if endpoint.template is template:
                    endpoint.version += 1
                    endpoint.changed.notify()
        return template

    def delete_template(self, name: str | None) -> None:
        template = next((t for t in self.templates.values() if t["name"] == name), None)
        if template is None:
            raise LookupError(f"template {name!r} not found")
        users = [e.settings.get("name") for e in self.emu.endpoints.values() if e.template is template]
        if users:
            raise ValueError(f"template {name!r} is in use by endpoint(s) {', '.join(map(str, users))}")
        del self.templates[template["id"]]

    # -- endpoints ------------------------------------------------------------------------------------------------

    def save_endpoint(self, data: dict[str, Any], given: set[str]) -> EmulatedEndpoint:
        """``data`` is the coerced ``EndpointInput`` (schema defaults applied); ``given`` the fields the caller
        actually wrote."""
        if data.get("template") is not None and data.get("templateId"):
            raise ValueError("send either template or templateId, not both")
        existing = self.emu.endpoints.get(data["id"]) if data.get("id") else None
        if data.get("id") and existing is None:
            raise LookupError(f"endpoint {data['id']} not found")
        if data.get("templateId"):
            template = self.templates.get(data["templateId"])
            if template is None:
                raise LookupError(f"template {data['templateId']} not found")
        elif data.get("template") is None:
            raise ValueError("an endpoint needs a template: send template or templateId")
        else:
            template = None  # created below, once every check passed
        settings = {k: v for k, v in data.items() if k not in ("template", "templateId", "id")}
        self._check_hardware(settings, given, template or data["template"])
        if settings.get("networkVolumeId") and settings["networkVolumeId"] not in {v["id"] for v in NETWORK_VOLUMES}:
            raise LookupError(f"network volume {settings['networkVolumeId']} not found")
        if template is None:
            template = self._new_template(dict(data["template"]), serverless=True)
        if existing is None:
            endpoint = EmulatedEndpoint(id=uuid.uuid4().hex[:14], settings=settings, template=template)
            self.emu.endpoints[endpoint.id] = endpoint
        else:
            endpoint = existing
            if template is not endpoint.template or any(
                    endpoint.settings.get(k) != settings.get(k) for k in _STRUCTURAL):
                endpoint.version += 1  # a new release: workers on the old one are replaced as they go idle
            endpoint.settings = settings  # a full replace: what was left out is gone
            endpoint.template = template
        endpoint.changed.notify()
        return endpoint

    def _check_hardware(self, settings: dict[str, Any], given: set[str], template: dict[str, Any]) -> None:
        instances = settings.get("instanceIds") or []
        if instances:
            gpu_fields = sorted(k for k in ("gpuIds", "gpuCount") if k in given and settings.get(k) is not None)
            if gpu_fields:
                raise ValueError(f"a CPU endpoint (instanceIds) takes no {' or '.join(gpu_fields)}")
            limits = []
            for instance in instances:
                known = cpu_instance(str(instance))
                if known is None:
                    raise ValueError(f"unknown CPU instance {instance!r}; RunPod has {', '.join(_cpu_ids())}")
                limits.append((known[2], instance))
            limit, instance = min(limits)
            disk = int(template.get("containerDiskInGb") or 0)
            if disk > limit:
                raise ValueError(f"containerDiskInGb {disk} exceeds the {limit} GB a {instance} worker allows")
            return
        tokens = [t.strip() for t in str(settings.get("gpuIds") or "").split(",") if t.strip()]
        pools = [t for t in tokens if not t.startswith("-")]
        if not pools:
            raise ValueError("gpuIds must name at least one GPU pool (or send instanceIds for CPU workers)")
        for token in tokens:
            if token.startswith("-") and token[1:] not in GPU_TYPES:
                raise ValueError(f"gpuIds excludes an unknown GPU type {token[1:]!r}")
            if not token.startswith("-") and token not in SERVERLESS_POOLS:
                raise ValueError(f"gpuIds names an unknown pool {token!r}; pools: {', '.join(SERVERLESS_POOLS)}")
        excluded = {t[1:] for t in tokens if t.startswith("-")}
        if all(gpu in excluded for pool in pools for gpu in SERVERLESS_POOLS[pool]):
            raise ValueError(f"gpuIds {settings['gpuIds']!r} excludes every GPU of its pools")

    def update_endpoint_template(self, endpoint_id: str, template_id: str) -> EmulatedEndpoint:
        endpoint = self.emu.endpoints.get(endpoint_id)
        template = self.templates.get(template_id)
        if endpoint is None or template is None:
            raise LookupError(f"endpoint {endpoint_id} or template {template_id} not found")
        if template is not endpoint.template:
            endpoint.template = template
            endpoint.version += 1
            endpoint.changed.notify()
        return endpoint

    async def delete_endpoint(self, endpoint_id: str) -> None:
        endpoint = self.emu.endpoints.get(endpoint_id)
        if endpoint is None:
            raise LookupError(f"endpoint {endpoint_id} not found")
        if endpoint.workers_min or endpoint.workers_max:
            raise ValueError("min and max workers must both be zero before an endpoint can be deleted")
        await self.emu.delete_endpoint(endpoint_id)

    # -- what the queries return ----------------------------------------------------------------------------------

    def endpoint_view(self, endpoint: EmulatedEndpoint) -> dict[str, Any]:
        view = dict(endpoint.settings)
        volume = next((v for v in NETWORK_VOLUMES if v["id"] == view.get("networkVolumeId")), None)
        view.update(
            id=endpoint.id, templateId=endpoint.template["id"], template=endpoint.template, version=endpoint.version,
            workersStandby=endpoint.vendor.get("workersStandby", 0), userId=USER_ID, aiKey=None, networkVolume=volume,
            createdAt=datetime.datetime.fromtimestamp(endpoint.created, datetime.UTC).isoformat(),
            networkVolumeIds=[{"networkVolumeId": v["networkVolumeId"], "dataCenterId": None}
                              for v in view.get("networkVolumeIds") or []],
        )
        return view

    def myself(self) -> dict[str, Any]:
        return {
            "id": USER_ID, "pubKey": "", "email": "emulated@localhost", "clientBalance": 0.0,
            "currentSpendPerHr": 0.0, "spendLimit": 80, "serverlessDiscount": None,
            "endpoints": [self.endpoint_view(e) for e in self.emu.endpoints.values()],
            "networkVolumes": NETWORK_VOLUMES, "podTemplates": list(self.templates.values()),
        }

    @staticmethod
    def gpu_types(filters: dict[str, Any] | None) -> list[dict[str, Any]]:
        filters = filters or {}
        wanted = set(filters.get("ids") or ()) | ({filters["id"]} if filters.get("id") else set())
        views = [gpu_type_view(gpu) for gpu in GPU_TYPES if not wanted or gpu in wanted]
        for view in views:
            view["lowestPrice"] = _lowest_price(view)
        return views

    @staticmethod
    def pools() -> list[dict[str, Any]]:
        return [{"id": pool, "gpuTypeIds": list(members)} for pool, members in SERVERLESS_POOLS.items()]

    @staticmethod
    def cpu_flavors(filters: dict[str, Any] | None) -> list[dict[str, Any]]:
        wanted = (filters or {}).get("id")
        return [{"id": flavour, "groupId": flavour, "groupName": name, "displayName": name, "minVcpu": 1.0,
                 "maxVcpu": max(CPU_VCPUS), "vcpuBurstable": False, "ramMultiplier": ram, "diskLimitPerVcpu": disk}
                for flavour, (name, ram, disk) in CPU_FLAVORS.items() if not wanted or flavour == wanted]


def _lowest_price(view: dict[str, Any]) -> Any:
    def resolve(_info: Any, input: dict[str, Any] | None = None) -> dict[str, Any]:  # noqa: A002 - RunPod's name
        count = int((input or {}).get("gpuCount") or 1)
        price = view["securePrice"]
        return {"gpuName": view["displayName"], "gpuTypeId": view["id"], "minimumBidPrice": None,
                "uninterruptablePrice": None if price is None else round(price * count, 4), "minMemory": 8,
                "minVcpu": 2, "stockStatus": "High" if price is not None else None, "maxGpuCount": 8}
    return resolve


def _cpu_ids() -> list[str]:
    return [f"{f}-{v}-{int(v * ram)}" for f, (_, ram, _) in CPU_FLAVORS.items() for v in CPU_VCPUS]

"""What RunPod's GraphQL API accepts, learnt from the API itself (introspection, once per process and API URL)
instead of guessed: the backend sends only input fields the live schema has and selects only output fields it
has.

Why: the one schema RunPod publishes (runpod/pulumi-runpod ``schema.graphql``) is partial by its own account, and
fields drift (``workersStandby`` is output-only there, and a third party saw the live API reject it as input).
If introspection is refused (some GraphQL servers turn it off), the field lists of that published schema are used
instead, and the backend says so once in the log.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import attrs

from gpuflex.errors import BackendError

if TYPE_CHECKING:
    from ._errors import RunPodApi

__all__ = ["INTROSPECTION", "ApiSchema", "api_schema", "from_introspection", "keep_known", "selection"]

log = logging.getLogger("gpuflex.runpod")

INTROSPECTION = """query gpuflexSchema {
  endpointInput: __type(name: "EndpointInput") { inputFields { name } }
  templateInput: __type(name: "EndpointTemplateInput") { inputFields { name } }
  saveTemplateInput: __type(name: "SaveTemplateInput") { inputFields { name } }
  endpoint: __type(name: "Endpoint") { fields { name } }
  podTemplate: __type(name: "PodTemplate") { fields { name } }
  __schema { queryType { fields { name } } mutationType { fields { name } } }
}"""


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


@attrs.frozen
class ApiSchema:
    endpoint_input: frozenset[str]
    template_input: frozenset[str]
    save_template_input: frozenset[str]
    endpoint: frozenset[str]
    pod_template: frozenset[str]
    queries: frozenset[str]
    mutations: frozenset[str]
    introspected: bool = True


#: RunPod's published SDL (runpod/pulumi-runpod provider/pkg/runpod/schema.graphql), for when introspection is off.
PUBLISHED = ApiSchema(
    endpoint_input=_words(
        "instanceIds gpuIds id idleTimeout locations name flashEnvironmentId networkVolumeId networkVolumeIds "
        "scalerType scalerValue templateId template workersMax workersMin workersPFBTarget gpuCount env "
        "allowedCudaVersions minCudaVersion executionTimeoutMs bindEndpoint repo hubReleaseId type modelName "
        "modelReferences cloudStorageConfig flashBootType"),
    template_input=_words(
        "advancedStart containerDiskInGb containerRegistryAuthId dockerArgs env imageName name readme startJupyter "
        "startScript startSsh config ports"),
    save_template_input=_words(
        "advancedStart containerDiskInGb containerRegistryAuthId dockerArgs env id imageName isPublic isServerless "
        "name ports portsConfig readme startJupyter startScript startSsh volumeInGb volumeMountPath config category"),
    endpoint=_words(
        "id name templateId gpuIds workersMin workersMax idleTimeout locations scalerType scalerValue "
        "networkVolumeId networkVolumeIds gpuCount instanceIds workersPFBTarget allowedCudaVersions minCudaVersion "
        "executionTimeoutMs flashBootType flashEnvironmentId type modelReferences env"),
    pod_template=_words(
        "id name imageName dockerArgs env ports volumeMountPath volumeInGb containerDiskInGb containerRegistryAuthId "
        "startJupyter startSsh startScript isServerless isPublic readme advancedStart category"),
    queries=_words("gpuTypes cpuFlavors dataCenters pod myself"),
    mutations=_words("saveEndpoint deleteEndpoint saveTemplate deleteTemplate"),
    introspected=False,
)

_CACHE: dict[str, ApiSchema] = {}
_WARNED: set[str] = set()


def _names(node: Any, key: str) -> frozenset[str]:
    return frozenset(str(item["name"]) for item in ((node or {}).get(key) or []))


async def api_schema(api: RunPodApi) -> ApiSchema:
    """The live schema's field lists (cached per API URL for the life of the process)."""
    url = api.config.graphql_url
    cached = _CACHE.get(url)
    if cached is not None:
        return cached
    try:
        data = await api.graphql(INTROSPECTION, {})
    except BackendError as exc:  # refused by the server (a GraphQL error), not unreachable: use the published list
        log.warning("RunPod's API refused introspection (%s); gpuflex sends the fields of RunPod's published "
                    "schema instead", exc)
        _CACHE[url] = PUBLISHED
        return PUBLISHED
    schema = from_introspection(data)
    _CACHE[url] = schema
    return schema


def from_introspection(data: dict[str, Any]) -> ApiSchema:
    """The field lists in the answer to :data:`INTROSPECTION`."""
    roots = data.get("__schema") or {}
    return ApiSchema(
        endpoint_input=_names(data.get("endpointInput"), "inputFields"),
        template_input=_names(data.get("templateInput"), "inputFields"),
        save_template_input=_names(data.get("saveTemplateInput"), "inputFields"),
        endpoint=_names(data.get("endpoint"), "fields"),
        pod_template=_names(data.get("podTemplate"), "fields"),
        queries=_names(roots.get("queryType"), "fields"),
        mutations=_names(roots.get("mutationType"), "fields"),
    )


def keep_known(data: dict[str, Any], fields: frozenset[str], type_name: str) -> dict[str, Any]:
    """``data`` without the keys ``type_name`` does not have (each dropped key is logged once per process)."""
    for key in sorted(set(data) - fields):
        if f"{type_name}.{key}" not in _WARNED:
            _WARNED.add(f"{type_name}.{key}")
            log.warning("RunPod's schema has no %s.%s: gpuflex leaves it out", type_name, key)
    return {key: value for key, value in data.items() if key in fields}


def selection(wanted: str, fields: frozenset[str]) -> str:
    """A selection set of the ``wanted`` fields (space-separated; ``name{...}`` for an object field, no spaces
    inside) that the type has."""
    return " ".join(item.replace("{", " { ").replace("}", " } ").replace(",", " ") for item in wanted.split()
                    if item.split("{", 1)[0] in fields)

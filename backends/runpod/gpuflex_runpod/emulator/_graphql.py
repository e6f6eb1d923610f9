"""The emulator's GraphQL endpoint: graphql-core over ``schema.graphql``, so inline arguments, variables, aliases,
fragments, introspection and errors behave as GraphQL says, and an input field RunPod's schema lacks is refused.

HTTP status: a request GraphQL refuses before running it (syntax, validation, a variable of the wrong shape) gets
400 with ``{"errors": [...]}`` and no ``data``, as the GraphQL-over-HTTP spec and Apollo Server do; errors raised
while running (a missing endpoint, a refused setting) come back with 200, ``data`` (null where they hit) and
``errors`` with their ``path``. Which status RunPod uses for the first kind is not published: gpuflex reads the
errors from either.
"""

from __future__ import annotations

import functools
from importlib import resources
from inspect import isawaitable
from typing import TYPE_CHECKING, Any

from graphql import (
    FieldNode,
    GraphQLError,
    GraphQLSchema,
    ObjectValueNode,
    VariableNode,
    build_schema,
    execute,
    get_operation_ast,
    parse,
    validate,
)
from graphql.execution.values import get_variable_values

if TYPE_CHECKING:
    from ._controlplane import ControlPlane

__all__ = ["answer", "schema"]


def _given(info: Any, name: str = "input") -> set[str]:
    """The fields the caller wrote in an input-object argument (inline or through a variable), before the
    schema's defaults were filled in."""
    node = next((a for a in info.field_nodes[0].arguments or () if a.name.value == name), None)
    if node is None:
        return set()
    if isinstance(node.value, ObjectValueNode):
        return {field.name.value for field in node.value.fields}
    if isinstance(node.value, VariableNode):
        raw = info.context["variables"].get(node.value.name.value)
        return set(raw) if isinstance(raw, dict) else set()
    return set()


def _resolvers() -> dict[tuple[str, str], Any]:
    def save_endpoint(cp: ControlPlane, info: Any, input: dict[str, Any]) -> dict[str, Any]:  # noqa: A002
        return cp.endpoint_view(cp.save_endpoint(dict(input), _given(info)))

    def update_endpoint_template(cp: ControlPlane, _info: Any, input: dict[str, Any]) -> dict[str, Any]:  # noqa: A002
        return cp.endpoint_view(cp.update_endpoint_template(input["endpointId"], input["templateId"]))

    async def delete_endpoint(cp: ControlPlane, _info: Any, id: str) -> None:  # noqa: A002 - RunPod's name
        await cp.delete_endpoint(id)

    return {
        ("Query", "myself"): lambda cp, _info: cp.myself(),
        ("Query", "gpuTypes"): lambda cp, _info, input=None: cp.gpu_types(input),  # noqa: A002
        ("Query", "cpuFlavors"): lambda cp, _info, input=None: cp.cpu_flavors(input),  # noqa: A002
        ("Query", "serverlessGpuPools"): lambda cp, _info: cp.pools(),
        ("Mutation", "saveEndpoint"): save_endpoint,
        ("Mutation", "deleteEndpoint"): delete_endpoint,
        ("Mutation", "saveTemplate"): lambda cp, _info, input=None: cp.save_template(dict(input or {})),  # noqa: A002
        ("Mutation", "deleteTemplate"): lambda cp, _info, templateName=None: cp.delete_template(templateName),
        ("Mutation", "updateEndpointTemplate"): update_endpoint_template,
    }


@functools.cache
def schema() -> GraphQLSchema:
    """The schema, built once, with the root fields wired to the control plane (the root value)."""
    built = build_schema(resources.files(__package__).joinpath("schema.graphql").read_text())
    for (type_name, field), resolve in _resolvers().items():
        built.get_type(type_name).fields[field].resolve = resolve  # type: ignore[union-attr]
    return built


def _take_fault(faults: list[dict[str, Any]], fields: set[str]) -> dict[str, Any] | None:
    """An injected fault aimed at one of these root fields (``{"operation": "saveEndpoint", ...}``): ``skip``
    lets that many matching requests through first; ``after`` runs the request and then answers the fault (the
    work was done, the answer was lost, as behind a gateway timeout)."""
    for fault in faults:
        if fault.get("operation") in fields and fault["count"] > 0:
            if fault.get("skip", 0) > 0:
                fault["skip"] -= 1
                return None
            fault["count"] -= 1
            return fault
    return None


def _refused(errors: list[GraphQLError]) -> tuple[int, dict[str, Any]]:
    return 400, {"errors": [error.formatted for error in errors]}


async def answer(control: ControlPlane, body: Any) -> tuple[int, dict[str, Any]]:
    """HTTP status and JSON body for one GraphQL POST body."""
    if not isinstance(body, dict) or not isinstance(body.get("query"), str):
        return _refused([GraphQLError("the body must be a JSON object with a 'query' string")])
    variables = body.get("variables") or {}
    if not isinstance(variables, dict):
        return _refused([GraphQLError("'variables' must be a JSON object")])
    try:
        document = parse(body["query"])
    except GraphQLError as exc:
        return _refused([exc])
    errors = validate(schema(), document)
    if errors:
        return _refused(errors)
    operation = get_operation_ast(document, body.get("operationName"))
    if operation is None:
        return _refused([GraphQLError("name the operation to run (operationName)")])
    coerced = get_variable_values(schema(), operation.variable_definitions or [], variables)
    if isinstance(coerced, list):
        return _refused(coerced)
    roots = {s.name.value for s in operation.selection_set.selections if isinstance(s, FieldNode)}
    if operation.operation.value == "mutation":  # counted for tests: a deploy with nothing to change makes none
        for root in roots:
            control.mutations[root] = control.mutations.get(root, 0) + 1
    fault = _take_fault(control.emu.faults, roots)
    if fault is not None and not fault.get("after"):
        return fault["status"], {"errors": [{"message": f"injected fault {fault['status']}"}]}
    result = execute(schema(), document, root_value=control, variable_values=variables,
                     context_value={"variables": variables}, operation_name=body.get("operationName"))
    if isawaitable(result):
        result = await result
    if fault is not None:
        return fault["status"], {"errors": [{"message": f"injected fault {fault['status']} (after the work)"}]}
    return 200, dict(result.formatted)

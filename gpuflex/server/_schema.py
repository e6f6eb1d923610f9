"""JSON in and out for the dev server: the routes of an app's endpoints.

The JSON form of a call (the input model built from type hints, strict validation, results as JSON, binary values
as ``{"base64", "media_type"}``) lives in :mod:`gpuflex._jsoncall`, shared with the workers of deployed endpoints,
so the dev server and a deployed endpoint publish and enforce the same schema.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from .._jsoncall import CallSchema, NotJson, NotJsonable, call_schemas, normalize_json, to_jsonable

if TYPE_CHECKING:
    from pydantic import BaseModel

    from .._job import Job
    from .._models import EndpointKind
    from ..client._endpoint import Endpoint

__all__ = ["NotJson", "NotJsonable", "Route", "normalize_json", "routes_for", "to_jsonable"]


@attrs.frozen
class Route:
    """One callable exposed over HTTP: a function endpoint, or one method of a class endpoint."""

    endpoint: Endpoint[Any, Any]
    call: CallSchema

    @property
    def method(self) -> str | None:
        return self.call.method

    @property
    def kind(self) -> EndpointKind:
        return self.call.kind

    @property
    def path(self) -> str:
        return self.call.path

    @property
    def model(self) -> type[BaseModel]:
        return self.call.model

    @property
    def result_type(self) -> Any:
        return self.call.result_type

    @property
    def doc(self) -> str | None:
        return self.call.doc

    @property
    def label(self) -> str:
        return self.call.label

    @property
    def body_required(self) -> bool:
        return self.call.body_required

    def parse(self, raw: bytes) -> BaseModel:
        return self.call.parse(raw)

    def arguments(self, body: BaseModel | None) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return self.call.arguments(body)

    def spawn(self, body: BaseModel | None) -> Job:
        args, kwargs = self.arguments(body)
        return self.endpoint._spawn(self.method, args, kwargs, streaming=self.kind.streams)


def routes_for(ep: Endpoint[Any, Any]) -> list[Route]:
    """The routes of one endpoint: itself, or a class endpoint's ``__call__`` and public methods."""
    calls = call_schemas(ep.__gpuflex_raw__, name=ep.name, kind=ep.spec.kind, methods=ep.spec.methods,
                         batched=ep.spec.batched)
    return [Route(ep, call) for call in calls]

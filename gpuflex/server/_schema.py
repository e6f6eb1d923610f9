"""JSON in and out for the dev server: a pydantic model per callable built from its signature and type hints,
and results turned into JSON.

Validation is strict and follows JSON's types: a boolean is not a number, a number is not a string, ``[false]`` is
not ``[0.0]``, and a number must be finite. ``bytes`` travel as standard base64 strings both ways. A parameter whose
type pydantic cannot validate is accepted as any JSON value; a parameter without a hint likewise.
"""

from __future__ import annotations

import base64
import binascii
import collections.abc
import dataclasses
import enum
import inspect
import json
import math
import re
import types
import typing
from typing import TYPE_CHECKING, Annotated, Any

import attrs
import pydantic
import pydantic_core
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, WithJsonSchema

from .._models import EndpointKind

if TYPE_CHECKING:
    from .._job import Job
    from ..client._endpoint import Endpoint

__all__ = ["NotJson", "NotJsonable", "Route", "routes_for", "to_jsonable"]


def _decode_b64(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"not valid base64: {exc}") from None
    return value


BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
B64Bytes = Annotated[
    bytes, BeforeValidator(_decode_b64),
    WithJsonSchema({"type": "string", "contentEncoding": "base64", "pattern": BASE64_PATTERN}),
]


def json_type(tp: Any) -> Any:
    """``tp`` with every ``bytes`` in it replaced by :data:`B64Bytes` (``list[bytes]``, ``bytes | None``...)."""
    if tp in (bytes, bytearray):
        return B64Bytes
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is None or not args:
        return tp
    if origin is Annotated:
        return Annotated[(json_type(args[0]), *tp.__metadata__)]
    new = tuple(json_type(a) if not isinstance(a, list) else [json_type(x) for x in a] for a in args)
    if new == args:
        return tp
    try:
        if origin is typing.Union or origin is types.UnionType:
            return typing.Union[new]  # noqa: UP007 - rebuilding from a tuple of arguments
        if isinstance(tp, types.GenericAlias):
            return types.GenericAlias(origin, new)
        return tp.copy_with(new)
    except Exception:
        return tp


def _hints(fn: Any) -> dict[str, Any]:
    """``fn``'s type hints; one that does not resolve (a name imported only under ``TYPE_CHECKING``, say) is left
    out alone, rather than losing every other hint with it."""
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:
        pass
    hints = {}
    namespace = getattr(fn, "__globals__", {})
    for name, annotation in getattr(fn, "__annotations__", {}).items():
        holder = types.SimpleNamespace(__annotations__={name: annotation})
        try:
            hints[name] = typing.get_type_hints(holder, namespace, include_extras=True)[name]
        except Exception:
            continue
    return hints


def _validatable(tp: Any) -> Any:
    try:
        TypeAdapter(tp)
    except Exception:
        return Any
    return tp


_STREAM_ORIGINS = (collections.abc.Iterator, collections.abc.Iterable, collections.abc.Generator,
                   collections.abc.AsyncIterator, collections.abc.AsyncIterable, collections.abc.AsyncGenerator)


def _item_type(tp: Any) -> Any:
    """The element type of a batched function's list (``list[str]`` -> ``str``): HTTP callers send one item."""
    args = typing.get_args(tp)
    return args[0] if typing.get_origin(tp) in (list, tuple, collections.abc.Sequence) and args else Any


def _result_type(hints: dict[str, Any], streams: bool, batched: bool = False) -> Any:
    ret = hints.get("return", Any)
    if batched:
        ret = _item_type(ret)
    if streams:
        ret = typing.get_args(ret)[0] if typing.get_origin(ret) in _STREAM_ORIGINS and typing.get_args(ret) else Any
    return _validatable(json_type(ret))


@attrs.frozen
class _Param:
    field: str
    name: str
    mode: str  # "pos", "kw", or "varpos"


@attrs.frozen
class Route:
    """One callable exposed over HTTP: a function endpoint, or one method of a class endpoint."""

    endpoint: Endpoint[Any, Any]
    method: str | None
    kind: EndpointKind
    path: str
    model: type[BaseModel]
    params: tuple[_Param, ...]
    result_type: Any
    doc: str | None

    @property
    def label(self) -> str:
        return self.endpoint.name + (f".{self.method}" if self.method else "")

    @property
    def body_required(self) -> bool:
        return any(f.is_required() for f in self.model.model_fields.values())

    def parse(self, raw: bytes) -> BaseModel:
        """The call's arguments from a request body (an empty body is ``{}``), validated strictly as JSON.
        Raises :class:`NotJson` for a body that is not JSON, :class:`pydantic.ValidationError` for one that does
        not fit."""
        return self.model.model_validate_json(normalize_json(raw) if raw.strip() else b"{}")

    def arguments(self, body: BaseModel | None) -> tuple[tuple[Any, ...], dict[str, Any]]:
        body = body if body is not None else self.model()
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for p in self.params:
            value = getattr(body, p.field)
            if p.mode == "pos":
                args.append(value)
            elif p.mode == "varpos":
                args.extend(value)
            elif p.field in body.model_fields_set:  # unset: the function's own default applies
                kwargs[p.name] = value
        kwargs.update(body.model_extra or {})
        return tuple(args), kwargs

    def spawn(self, body: BaseModel | None) -> Job:
        args, kwargs = self.arguments(body)
        return self.endpoint._spawn(self.method, args, kwargs, streaming=self.kind.streams)


class NotJson(ValueError):
    """A request body that is not JSON (NaN and Infinity are not JSON either)."""


def _number(text: str) -> int | float:
    value = float(text)
    if not math.isfinite(value):
        raise NotJson(f"{text} is out of range for a number")
    return int(value) if value.is_integer() else value


def _no_constant(name: str) -> Any:
    raise NotJson(f"{name} is not JSON")


def normalize_json(raw: bytes) -> bytes:
    """``raw`` parsed and written again with JSON's one number type: a number with no fraction (``5.0``, ``1e3``)
    is an integer, as JSON Schema says, so it fits an ``int`` parameter (a ``float`` one takes integers too)."""
    try:
        value = json.loads(raw, parse_float=_number, parse_constant=_no_constant)
    except NotJson:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise NotJson(str(exc)) from None
    return json.dumps(value, separators=(",", ":")).encode()


def _camel(text: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^0-9a-zA-Z]+", text) if part)


def _build(ep: Endpoint[Any, Any], method: str | None) -> Route:
    raw = ep.__gpuflex_raw__
    fn, skip = raw, 0
    if ep.spec.kind is EndpointKind.CLASS:
        attr = method or "__call__"
        fn = getattr(raw, attr)
        skip = 0 if isinstance(inspect.getattr_static(raw, attr), staticmethod | classmethod) else 1
    kind = ep.spec.kind_of(method)
    hints = _hints(fn)
    signature = inspect.signature(fn)
    fields: dict[str, Any] = {}
    params: list[_Param] = []
    positional = any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values())
    extra: typing.Literal["allow", "forbid"] = "forbid"
    batched = ep.spec.batched
    for index, p in enumerate(list(signature.parameters.values())[skip:]):
        hint = hints.get(p.name, Any)
        tp = _validatable(json_type(_item_type(hint) if batched else hint))
        field = f"p{index}"
        if p.kind is p.VAR_KEYWORD:
            extra = "allow"
            continue
        if p.kind is p.VAR_POSITIONAL:
            fields[field] = (list[tp], Field(default_factory=list, alias=p.name))  # type: ignore[valid-type]
            params.append(_Param(field, p.name, "varpos"))
            continue
        default = ... if p.default is p.empty else p.default
        fields[field] = (tp, Field(default, alias=p.name))
        by_position = batched or p.kind is p.POSITIONAL_ONLY or (positional and p.kind is p.POSITIONAL_OR_KEYWORD)
        params.append(_Param(field, p.name, "pos" if by_position else "kw"))
    label = ep.name + (f"_{method}" if method else "")
    model = pydantic.create_model(
        f"{_camel(label)}Input", __config__=ConfigDict(extra=extra, strict=True, allow_inf_nan=False), **fields
    )
    path = f"/{ep.name}" + (f"/{method}" if method else "")
    return Route(ep, method, kind, path, model, tuple(params), _result_type(hints, kind.streams, batched),
                 inspect.getdoc(fn))


def routes_for(ep: Endpoint[Any, Any]) -> list[Route]:
    """The routes of one endpoint: itself, or a class endpoint's ``__call__`` and public methods."""
    if ep.spec.kind is not EndpointKind.CLASS:
        return [_build(ep, None)]
    return [_build(ep, None if name == "__call__" else name) for name in sorted(ep.spec.methods)
            if name != "jobs"]  # ``/<name>/jobs`` is the endpoint's job route


class NotJsonable(TypeError):
    """A result that has no JSON form."""


def to_jsonable(value: Any) -> Any:
    """Plain JSON data for ``value``: bytes as base64, models and dataclasses as objects, arrays as lists.
    Raises :class:`NotJsonable` for what JSON cannot carry, NaN and infinities included."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotJsonable(f"the endpoint returned {value!r}, which has no JSON form (JSON has no NaN or "
                              "infinity): return None, a string or a finite number instead")
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {str(to_jsonable(k)): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if isinstance(value, BaseModel):
        return to_jsonable(value.model_dump())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars, CPU tensors
        return to_jsonable(value.tolist())
    try:
        return pydantic_core.to_jsonable_python(value)
    except pydantic_core.PydanticSerializationError:
        raise NotJsonable(f"the endpoint returned a {type(value).__name__}, which has no JSON form") from None

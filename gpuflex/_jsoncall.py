"""The JSON form of a call, one for every HTTP caller: the dev server and every deployed endpoint.

A pydantic model per callable is built from its signature and type hints; a body is validated strictly, following
JSON's types: a boolean is not a number, a number is not a string, ``[false]`` is not ``[0.0]``, and a number must
be finite. A parameter whose type pydantic cannot validate is accepted as any JSON value; one without a hint
likewise. Results are turned into JSON the same way everywhere. JSON is only ever parsed: never unpickled.

**Binary values** have one JSON form, both ways: ``{"base64": "<standard base64>", "media_type": "image/png"}``.

* ``bytes`` parameters take that object or, as a shorthand, the base64 string alone; ``bytes`` results are that
  object, with the media type read from the data's first bytes (``application/octet-stream`` when unknown).
* ``numpy.ndarray`` parameters take the object with an ``.npy`` file (``application/x-npy``, read without pickle)
  or nested lists of numbers; a function declared to return an ``ndarray`` answers the ``.npy`` object (arrays
  elsewhere in a result are lists).
* ``PIL.Image.Image`` parameters take the object with any image PIL reads; images in results are PNG objects.

This module is the core's, below the client: the dev server (:mod:`gpuflex.server._schema`) and the workers of
deployed endpoints (through :func:`gpuflex.worker.json_calls`) use the same code, so they publish and enforce the
same schema.
"""

from __future__ import annotations

import base64
import binascii
import collections.abc
import dataclasses
import enum
import inspect
import io
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

from ._models import EndpointKind

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .backend import Payload

__all__ = [
    "BINARY_SCHEMA", "CallSchema", "JsonCallError", "JsonCalls", "NotJson", "NotJsonable", "binary_json",
    "call_schemas", "media_type_of", "normalize_json", "to_jsonable", "validation_errors",
]

BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
NPY = "application/x-npy"
OCTETS = "application/octet-stream"
_BASE64 = {"type": "string", "contentEncoding": "base64", "pattern": BASE64_PATTERN}
BINARY_SCHEMA: dict[str, Any] = {
    "type": "object", "title": "Binary", "required": ["base64", "media_type"], "additionalProperties": False,
    "description": "Binary data: standard base64 and its media type.",
    "properties": {"base64": _BASE64, "media_type": {"type": "string", "minLength": 1}},
}
_BINARY_IN = {**BINARY_SCHEMA, "required": ["base64"]}  # the media type is optional in what a caller sends
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
          (b"GIF89a", "image/gif"), (b"%PDF-", "application/pdf"), (b"\x93NUMPY", NPY),
          (b"PK\x03\x04", "application/zip"), (b"OggS", "audio/ogg"), (b"fLaC", "audio/flac"),
          (b"ID3", "audio/mpeg"), (b"\x1f\x8b", "application/gzip"))


def media_type_of(data: bytes | bytearray | memoryview) -> str:
    """The media type of ``data`` read from its first bytes, or ``application/octet-stream``."""
    head = bytes(data[:12])
    for magic, media_type in _MAGIC:
        if head.startswith(magic):
            return media_type
    if head[:4] == b"RIFF" and head[8:12] in (b"WEBP", b"WAVE"):
        return "image/webp" if head[8:12] == b"WEBP" else "audio/wav"
    return OCTETS


def binary_json(data: bytes | bytearray | memoryview, media_type: str | None = None) -> dict[str, str]:
    """The JSON form of binary data."""
    return {"base64": base64.b64encode(data).decode("ascii"), "media_type": media_type or media_type_of(data)}


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not valid base64: {exc}") from None


def _binary(value: Any) -> tuple[bytes, str | None] | None:
    """The bytes (and media type) of a binary value as a caller sends it, or None when it is not one."""
    if isinstance(value, str):
        return _b64(value), None
    if isinstance(value, dict) and "base64" in value:
        extra = sorted(set(value) - {"base64", "media_type"})
        if extra:
            raise ValueError(f"a binary value has only 'base64' and 'media_type', not {', '.join(extra)}")
        media_type = value.get("media_type")
        if not isinstance(value["base64"], str) or ("media_type" in value and not (isinstance(media_type, str)
                                                                                  and media_type)):
            raise ValueError("'base64' must be a string, and 'media_type' (when given) a non-empty string")
        return _b64(value["base64"]), media_type
    return None


def _decode_bytes(value: Any) -> Any:
    found = _binary(value)
    return value if found is None else found[0]


def _decode_array(value: Any) -> Any:
    import numpy as np

    found = _binary(value)
    if found is not None:
        try:
            return np.load(io.BytesIO(found[0]), allow_pickle=False)
        except ValueError as exc:
            raise ValueError(f"not an .npy array without objects: {exc}") from None
    if isinstance(value, list):
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise ValueError("an array is nested lists of numbers of one shape, or an .npy binary value")
        return array
    raise ValueError("an array is nested lists of numbers, or {\"base64\": ..., \"media_type\": \"application/x-npy\"}")


def _decode_image(value: Any) -> Any:
    from PIL import Image

    found = _binary(value)
    if found is None:
        raise ValueError("an image is {\"base64\": ..., \"media_type\": \"image/png\"} (any format PIL reads)")
    try:
        image = Image.open(io.BytesIO(found[0]))
        image.load()
    except Exception as exc:
        raise ValueError(f"not an image PIL can read: {exc}") from None
    return image


def _binary_type(decoder: Any, python: Any, inputs: dict[str, Any]) -> Any:
    return Annotated[python, BeforeValidator(decoder), WithJsonSchema(inputs, mode="validation"),
                     WithJsonSchema(BINARY_SCHEMA, mode="serialization")]


B64Bytes = _binary_type(_decode_bytes, bytes, {"anyOf": [_BASE64, _BINARY_IN]})
_ARRAY_IN = {"anyOf": [{"type": "array"}, _BINARY_IN],
             "description": "Nested lists of numbers, or an .npy file as binary data (application/x-npy)."}


def _is(tp: Any, module: str, name: str) -> bool:
    return isinstance(tp, type) and tp.__module__ == module and tp.__name__ == name


def _is_array(tp: Any) -> bool:
    return _is(tp, "numpy", "ndarray")


def json_type(tp: Any) -> Any:
    """``tp`` with every binary type in it (``bytes``, ``numpy.ndarray``, ``PIL.Image.Image``) replaced by its JSON
    form (``list[bytes]``, ``bytes | None``...)."""
    if tp in (bytes, bytearray):
        return B64Bytes
    if _is_array(tp):
        return _binary_type(_decode_array, Any, _ARRAY_IN)
    if _is(tp, "PIL.Image", "Image"):
        return _binary_type(_decode_image, Any, _BINARY_IN)
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


def _declared_result(hints: dict[str, Any], streams: bool, batched: bool) -> Any:
    ret = hints.get("return", Any)
    if batched:
        ret = _item_type(ret)
    if streams:
        ret = typing.get_args(ret)[0] if typing.get_origin(ret) in _STREAM_ORIGINS and typing.get_args(ret) else Any
    return ret


class NotJson(ValueError):
    """A request body that is not JSON (NaN and Infinity are not JSON either)."""


class NotJsonable(TypeError):
    """A result that has no JSON form."""


def _number(text: str) -> int | float:
    value = float(text)
    if not math.isfinite(value):
        raise NotJson(f"{text} is out of range for a number")
    return int(value) if value.is_integer() else value


def _no_constant(name: str) -> Any:
    raise NotJson(f"{name} is not JSON")


def normalize_json(raw: bytes | str) -> bytes:
    """``raw`` parsed and written again with JSON's one number type: a number with no fraction (``5.0``, ``1e3``)
    is an integer, as JSON Schema says, so it fits an ``int`` parameter (a ``float`` one takes integers too)."""
    try:
        value = json.loads(raw, parse_float=_number, parse_constant=_no_constant)
    except NotJson:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise NotJson(str(exc)) from None
    return json.dumps(value, separators=(",", ":")).encode()


def to_jsonable(value: Any) -> Any:
    """Plain JSON data for ``value``: binary data and images as binary objects, models and dataclasses as objects,
    arrays as lists. Raises :class:`NotJsonable` for what JSON cannot carry, NaN and infinities included."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotJsonable(f"the endpoint returned {value!r}, which has no JSON form (JSON has no NaN or "
                              "infinity): return None, a string or a finite number instead")
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return binary_json(value)
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
    if type(value).__module__.startswith("PIL.") and hasattr(value, "save"):  # a PIL image
        out = io.BytesIO()
        value.save(out, format="PNG")
        return binary_json(out.getvalue(), "image/png")
    if hasattr(value, "tolist"):  # numpy arrays and scalars, CPU tensors
        return to_jsonable(value.tolist())
    try:
        return pydantic_core.to_jsonable_python(value)
    except pydantic_core.PydanticSerializationError:
        raise NotJsonable(f"the endpoint returned a {type(value).__name__}, which has no JSON form") from None


def _npy(value: Any) -> dict[str, str]:
    import numpy as np

    out = io.BytesIO()
    try:
        np.save(out, np.asarray(value), allow_pickle=False)
    except ValueError as exc:
        raise NotJsonable(f"the endpoint returned an array of objects, which has no .npy form: {exc}") from None
    return binary_json(out.getvalue(), NPY)


def validation_errors(exc: pydantic.ValidationError, prefix: str = "") -> tuple[str, list[dict[str, Any]]]:
    """A message naming every field that does not fit (``steps: Input should be a valid integer``), and pydantic's
    errors as plain JSON."""
    errors = []
    for error in exc.errors(include_url=False):
        plain = {"type": error["type"], "loc": list(error["loc"]), "msg": error["msg"],
                 "input": _jsonable_or_str(error.get("input"))}
        if error.get("ctx"):
            plain["ctx"] = {str(k): _jsonable_or_str(v) for k, v in error["ctx"].items()}
        errors.append(plain)
    parts = [f"{prefix}{'.'.join(str(x) for x in e['loc']) or 'body'}: {e['msg']}" for e in errors]
    return "; ".join(parts), errors


def _jsonable_or_str(value: Any) -> Any:
    try:
        return to_jsonable(value)
    except Exception:
        return str(value)


@attrs.frozen
class _Param:
    field: str
    name: str
    mode: str  # "pos", "kw", or "varpos"


@attrs.frozen
class CallSchema:
    """One callable's JSON interface: a function endpoint, or one method of a class endpoint."""

    name: str  # the endpoint's
    method: str | None
    kind: EndpointKind
    model: type[BaseModel]
    params: tuple[_Param, ...]
    declared_result: Any  # the return hint (a generator's item, a batched function's item)
    doc: str | None

    @property
    def label(self) -> str:
        return self.name + (f".{self.method}" if self.method else "")

    @property
    def path(self) -> str:
        return f"/{self.name}" + (f"/{self.method}" if self.method else "")

    @property
    def result_type(self) -> Any:
        """What the result (or each chunk) looks like in JSON, for the schema."""
        return _validatable(json_type(self.declared_result))

    @property
    def body_required(self) -> bool:
        return any(f.is_required() for f in self.model.model_fields.values())

    def parse(self, raw: bytes | str) -> BaseModel:
        """The call's arguments from a JSON text (an empty one is ``{}``), validated strictly as JSON. Raises
        :class:`NotJson` for a text that is not JSON, :class:`pydantic.ValidationError` for one that does not fit."""
        return self.model.model_validate_json(normalize_json(raw) if raw.strip() else b"{}")

    def parse_object(self, data: Any) -> BaseModel:
        """``parse`` for JSON a transport already decoded (RunPod's job ``input``)."""
        try:
            text = json.dumps(data, allow_nan=True)
        except (TypeError, ValueError) as exc:
            raise NotJson(str(exc)) from None
        return self.parse(text)

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

    def to_json(self, value: Any) -> Any:
        """The result (or one chunk) as JSON; an ``ndarray`` the function declares it returns as ``.npy``."""
        if _is_array(self.declared_result) and hasattr(value, "__array__"):
            return _npy(value)
        return to_jsonable(value)


def _camel(text: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^0-9a-zA-Z]+", text) if part)


def call_schema(raw: Any, *, name: str, method: str | None, kind: EndpointKind, batched: bool = False) -> CallSchema:
    """The JSON interface of ``raw`` (the undecorated function or class) or of its method ``method``; ``kind`` is
    the callable's own kind (a method's, for a class)."""
    fn, skip = raw, 0
    if inspect.isclass(raw):
        attr = method or "__call__"
        fn = getattr(raw, attr)
        skip = 0 if isinstance(inspect.getattr_static(raw, attr), staticmethod | classmethod) else 1
    hints = _hints(fn)
    signature = inspect.signature(fn)
    fields: dict[str, Any] = {}
    params: list[_Param] = []
    positional = any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values())
    extra: typing.Literal["allow", "forbid"] = "forbid"
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
    label = name + (f"_{method}" if method else "")
    model = pydantic.create_model(
        f"{_camel(label)}Input", __config__=ConfigDict(extra=extra, strict=True, allow_inf_nan=False), **fields
    )
    return CallSchema(name, method, kind, model, tuple(params), _declared_result(hints, kind.streams, batched),
                      inspect.getdoc(fn))


def call_schemas(raw: Any, *, name: str, kind: EndpointKind, methods: Mapping[str, EndpointKind] | None = None,
                 batched: bool = False) -> list[CallSchema]:
    """Every callable of one endpoint: itself, or a class endpoint's ``__call__`` and public methods (``jobs``
    excepted: ``/<name>/jobs`` is the dev server's job route)."""
    if kind is not EndpointKind.CLASS:
        return [call_schema(raw, name=name, method=None, kind=kind, batched=batched)]
    return [call_schema(raw, name=name, method=None if method == "__call__" else method, kind=method_kind,
                        batched=batched)
            for method, method_kind in sorted((methods or {}).items()) if method != "jobs"]


class JsonCallError(Exception):
    """A JSON call that produced no result; ``body`` is its JSON error, ``{"error": <type>, "message": ...}`` (and
    ``detail``, pydantic's errors, for input that does not fit), the dev server's error shape."""

    def __init__(self, error: str, message: str, detail: list[dict[str, Any]] | None = None) -> None:
        super().__init__(f"{error}: {message}")
        self.body: dict[str, Any] = {"error": error, "message": message}
        if detail is not None:
            self.body["detail"] = detail


class JsonCalls:
    """The JSON calls of one endpoint inside a worker (a deployed endpoint's HTTP callers): which callable a body
    names, its arguments as the runtime's call payload, and the runtime's outcome as JSON. A class endpoint's body
    names its method with ``"method"`` (default ``__call__``)."""

    def __init__(self, target: Any, *, name: str, kind: EndpointKind, methods: Mapping[str, EndpointKind],
                 batched: bool) -> None:
        self.kind = kind
        self.calls = {c.method: c for c in call_schemas(target, name=name, kind=kind, methods=methods,
                                                        batched=batched)}

    def prepare(self, body: Any) -> tuple[CallSchema, Payload]:
        """The callable ``body`` names and its call payload; raises :class:`JsonCallError` (a ``ValidationError``
        naming each field) for a body that does not fit."""
        from ._envelope import encode_call

        if not isinstance(body, dict):
            raise JsonCallError("ValidationError", f"the input must be a JSON object of arguments, not "
                                                   f"{type(body).__name__}")
        method: str | None = None
        if self.kind is EndpointKind.CLASS:
            body = dict(body)
            chosen = body.pop("method", None)
            if chosen is not None and not isinstance(chosen, str):
                raise JsonCallError("ValidationError", "method: must be a string naming one of the class's methods")
            method = None if chosen in (None, "__call__") else chosen
            if method not in self.calls:
                names = sorted(m or "__call__" for m in self.calls)
                raise JsonCallError("ValidationError", f"method: {chosen or '__call__'!r} is not one of "
                                                       f"{', '.join(names)}")
        call = self.calls[method]
        try:
            args, kwargs = call.arguments(call.parse_object(body))
        except NotJson as exc:
            raise JsonCallError("MalformedJSON", str(exc)) from None
        except pydantic.ValidationError as exc:
            raise JsonCallError("ValidationError", *validation_errors(exc)) from None
        return call, encode_call(method, args, kwargs)

    @staticmethod
    def answer(call: CallSchema | None, outcome: Payload) -> Any:
        """The result (or chunk) in ``outcome`` as JSON; raises :class:`JsonCallError` for the function's exception
        (its type's name and message: the traceback stays in the worker's log) or a result JSON cannot carry."""
        from ._envelope import _loads

        value = _loads(outcome)
        if value[0] == "ok":
            try:
                return call.to_json(value[1]) if call is not None else to_jsonable(value[1])
            except NotJsonable as exc:
                raise JsonCallError("NotJsonable", str(exc)) from None
        _, _, label, message, *_ = value
        raise JsonCallError(str(label).rsplit(".", 1)[-1], str(message))

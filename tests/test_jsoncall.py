"""The JSON form of a call (gpuflex._jsoncall), shared by the dev server and deployed endpoints' workers: binary
values as {"base64", "media_type"} both ways, arrays as .npy (never unpickled), images, and the worker side's
JsonCalls (a class endpoint's method chosen by "method", errors naming the field)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator  # noqa: TC003 - the schema reads the hints at run time

import numpy as np
import pytest
from PIL import Image

from gpuflex import EndpointKind
from gpuflex._envelope import decode_call, encode_error, encode_value
from gpuflex._jsoncall import JsonCallError, JsonCalls, call_schema, media_type_of, to_jsonable

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 8


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def npy(array) -> dict[str, str]:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=array.dtype == object)
    return {"base64": b64(out.getvalue()), "media_type": "application/x-npy"}


def reverse(data: bytes) -> bytes:
    return data[::-1]


def total(values: np.ndarray) -> float:
    return float(values.sum())


def double(values: np.ndarray) -> np.ndarray:
    return values * 2


def size(image: Image.Image) -> list[int]:
    return list(image.size)


def chunks(n: int) -> Iterator[bytes]:
    yield from (bytes([i]) for i in range(n))


def call(fn, body, kind=EndpointKind.FUNCTION):
    schema = call_schema(fn, name=fn.__name__, method=None, kind=kind)
    return schema, schema.arguments(schema.parse_object(body))


@pytest.mark.parametrize(("data", "media_type"), [
    (PNG, "image/png"), (b"\xff\xd8\xff\xe0", "image/jpeg"), (b"GIF89a..", "image/gif"),
    (b"%PDF-1.7", "application/pdf"), (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
    (b"RIFF\x00\x00\x00\x00WAVEfmt ", "audio/wav"), (b"\x93NUMPY\x01\x00", "application/x-npy"),
    (b"hello", "application/octet-stream"), (b"", "application/octet-stream"),
])
def test_media_types_are_read_from_the_data(data, media_type):
    assert media_type_of(data) == media_type
    assert to_jsonable(data) == {"base64": b64(data), "media_type": media_type}


def test_bytes_are_base64_with_a_media_type_or_the_base64_alone():
    for sent in (b64(PNG), {"base64": b64(PNG)}, {"base64": b64(PNG), "media_type": "image/png"}):
        schema, (args, kwargs) = call(reverse, {"data": sent})
        assert kwargs == {"data": PNG}
    assert schema.to_json(reverse(PNG)) == {"base64": b64(PNG[::-1]), "media_type": "application/octet-stream"}
    for bad in ({"base64": "!!"}, {"base64": b64(PNG), "type": "image/png"}, {"base64": 5}, 7,
                {"base64": "", "media_type": None}, {"base64": "", "media_type": ""}):
        with pytest.raises(Exception, match="data"):
            call(reverse, {"data": bad})


def test_arrays_are_npy_files_or_nested_lists_and_never_unpickled():
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    _, (_, kwargs) = call(total, {"values": npy(values)})
    assert kwargs["values"].dtype == np.float32 and (kwargs["values"] == values).all()
    _, (_, kwargs) = call(total, {"values": [[1, 2], [3, 4]]})
    assert kwargs["values"].tolist() == [[1, 2], [3, 4]]
    with pytest.raises(Exception, match="without objects"):  # an object array needs pickle: refused
        call(total, {"values": npy(np.array([{"a": 1}], dtype=object))})
    with pytest.raises(Exception, match="numbers"):
        call(total, {"values": [["a"], ["b"]]})
    schema, _ = call(double, {"values": [1, 2]})
    answer = schema.to_json(np.array([2, 4], dtype=np.int16))  # declared ndarray: the .npy form
    assert answer["media_type"] == "application/x-npy"
    assert np.load(io.BytesIO(base64.b64decode(answer["base64"])), allow_pickle=False).tolist() == [2, 4]
    assert to_jsonable({"nested": np.array([1, 2])}) == {"nested": [1, 2]}, "elsewhere arrays are lists"


def test_images_are_binary_values_both_ways():
    image = Image.new("RGB", (3, 2), "red")
    out = io.BytesIO()
    image.save(out, format="JPEG")
    _, (_, kwargs) = call(size, {"image": {"base64": b64(out.getvalue()), "media_type": "image/jpeg"}})
    assert list(kwargs["image"].size) == [3, 2]
    answer = to_jsonable(image)
    assert answer["media_type"] == "image/png"
    assert Image.open(io.BytesIO(base64.b64decode(answer["base64"]))).size == (3, 2)
    with pytest.raises(Exception, match="image"):
        call(size, {"image": {"base64": b64(b"not an image")}})


def test_generator_chunks_of_bytes_are_binary_values():
    schema = call_schema(chunks, name="chunks", method=None, kind=EndpointKind.GENERATOR)
    assert schema.to_json(b"\x01") == {"base64": "AQ==", "media_type": "application/octet-stream"}


class Tools:
    def flip(self, data: bytes) -> bytes:
        return data[::-1]

    def add(self, a: int, b: int = 1) -> int:
        return a + b


def test_json_calls_choose_a_class_method_and_name_the_field_that_does_not_fit():
    calls = JsonCalls(Tools, name="tools", kind=EndpointKind.CLASS, batched=False,
                      methods={"flip": EndpointKind.FUNCTION, "add": EndpointKind.FUNCTION})
    schema, payload = calls.prepare({"method": "add", "a": 2})
    assert decode_call(payload) == ("add", (), {"a": 2})
    assert JsonCalls.answer(schema, encode_value(3)) == 3
    with pytest.raises(JsonCallError) as caught:
        calls.prepare({"method": "add", "a": "two"})
    assert caught.value.body["error"] == "ValidationError" and caught.value.body["message"].startswith("a: ")
    assert caught.value.body["detail"][0]["loc"] == ["a"]
    with pytest.raises(JsonCallError, match="'nope' is not one of add, flip"):
        calls.prepare({"method": "nope"})
    with pytest.raises(JsonCallError, match="JSON object"):
        calls.prepare(["a"])
    with pytest.raises(JsonCallError) as raised:
        JsonCalls.answer(schema, encode_error(KeyError("missing")))
    assert raised.value.body == {"error": "KeyError", "message": "'missing'"}
    with pytest.raises(JsonCallError) as bad:
        JsonCalls.answer(schema, encode_value(float("nan")))
    assert bad.value.body["error"] == "NotJsonable"

"""The call envelope: arguments, results and remote exceptions, with large buffers out of band."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuflex import _envelope
from gpuflex._envelope import (
    OUT_OF_BAND_MIN_BYTES,
    PYTHON_VERSION,
    decode_call,
    decode_outcome,
    encode_call,
    encode_error,
    encode_value,
    outcome_error,
)
from gpuflex._version import __version__
from gpuflex.backend import Payload
from gpuflex.errors import ConfigError, RemoteError, RemoteTraceback, SerializationError, VersionMismatch

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    | st.tuples(inner, inner),
    max_leaves=12,
)


# -- calls and outcomes ------------------------------------------------------------------------------------------


@given(st.none() | st.text(min_size=1, max_size=10), st.lists(values, max_size=3),
       st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), values, max_size=3))
def test_call_round_trip(method, args, kwargs):
    assert decode_call(encode_call(method, tuple(args), kwargs)) == (method, tuple(args), kwargs)


@given(values)
def test_value_round_trip(value):
    payload = encode_value(value)
    assert outcome_error(payload) is None
    assert decode_outcome(payload) == value


def test_payload_of_a_call_survives_to_bytes():
    big = np.arange(50_000, dtype=np.float64)
    payload = encode_call("m", (big,), {"k": b"x"})
    method, args, kwargs = decode_call(Payload.from_bytes(payload.to_bytes()))
    assert method == "m" and kwargs == {"k": b"x"}
    np.testing.assert_array_equal(args[0], big)


# -- out-of-band buffers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("nbytes", [OUT_OF_BAND_MIN_BYTES, 1 << 20])
def test_large_numpy_arrays_travel_out_of_band(nbytes):
    array = np.arange(nbytes, dtype=np.uint8)
    payload = encode_call(None, (array,), {})
    assert len(payload.buffers) == 1
    assert memoryview(payload.buffers[0]).nbytes == nbytes
    assert len(payload.data) < 1024  # the pickle stream holds only the metadata
    assert payload.nbytes == len(payload.data) + nbytes
    _, (back,), _ = decode_call(payload)
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("nbytes", [0, 1000, OUT_OF_BAND_MIN_BYTES - 1])
def test_small_numpy_arrays_stay_in_band(nbytes):
    array = np.ones(nbytes, dtype=np.uint8)
    payload = encode_call(None, (array,), {})
    assert payload.buffers == ()
    assert len(payload.data) >= nbytes
    _, (back,), _ = decode_call(payload)
    np.testing.assert_array_equal(back, array)


def test_results_use_out_of_band_buffers_too():
    array = np.random.default_rng(0).standard_normal((300, 300))
    payload = encode_value(array)
    assert len(payload.buffers) == 1
    np.testing.assert_array_equal(decode_outcome(payload), array)


def test_several_large_arrays_each_get_a_buffer():
    arrays = [np.full(OUT_OF_BAND_MIN_BYTES, i, dtype=np.uint8) for i in range(3)]
    payload = encode_call(None, tuple(arrays), {"small": np.zeros(10)})
    assert len(payload.buffers) == 3
    _, back, kwargs = decode_call(Payload.from_bytes(payload.to_bytes()))
    for original, rebuilt in zip(arrays, back, strict=True):
        np.testing.assert_array_equal(rebuilt, original)
    np.testing.assert_array_equal(kwargs["small"], np.zeros(10))


def test_small_bytearrays_stay_in_band():
    payload = encode_call(None, (bytearray(b"abc"),), {})
    assert payload.buffers == ()
    assert decode_call(payload)[1] == (bytearray(b"abc"),)


def test_large_bytearrays_stay_in_band_as_documented():
    # CPython pickles bytearray on a fast path before reducer_override runs; the module docstring says so
    blob = bytearray(range(256)) * (OUT_OF_BAND_MIN_BYTES // 256)
    payload = encode_call(None, (blob,), {})
    assert payload.buffers == ()
    _, (back,), _ = decode_call(payload)
    assert type(back) is bytearray and back == blob


def test_large_cpu_tensors_travel_out_of_band():
    torch = pytest.importorskip("torch")
    tensor = torch.arange(40_000, dtype=torch.float32).reshape(200, 200)
    payload = encode_value(tensor)
    assert len(payload.buffers) == 1
    assert memoryview(payload.buffers[0]).nbytes == 200 * 200 * 4
    assert len(payload.data) < 1024
    back = decode_outcome(payload)
    assert back.dtype == torch.float32 and back.shape == (200, 200)
    assert torch.equal(back, tensor)


def test_tensors_rebuilt_from_read_only_buffers_are_writable():
    torch = pytest.importorskip("torch")
    tensor = torch.arange(40_000, dtype=torch.float32)
    blob = encode_value(tensor).to_bytes()
    back = decode_outcome(Payload.from_bytes(blob))
    back += 1  # the caller owns its copy: this must not write into the (immutable) received bytes
    assert torch.equal(back, tensor + 1)
    # (torch warns only once per process; this check fails whether or not the warning was already spent)
    assert torch.equal(decode_outcome(Payload.from_bytes(blob)), tensor)


# -- Payload framing ------------------------------------------------------------------------------------------------


@given(st.binary(max_size=512), st.lists(st.binary(max_size=512), max_size=6))
def test_payload_bytes_round_trip(data, buffers):
    payload = Payload(data, tuple(buffers))
    blob = payload.to_bytes()
    assert len(blob) == 4 + 8 * (len(buffers) + 1) + payload.nbytes
    back = Payload.from_bytes(blob)
    assert back.data == data
    assert [bytes(b) for b in back.buffers] == buffers
    assert back.nbytes == payload.nbytes
    assert Payload.from_bytes(memoryview(blob)).data == data


@given(st.lists(st.integers(min_value=0, max_value=3 * OUT_OF_BAND_MIN_BYTES), max_size=3))
def test_payload_bytes_round_trip_of_buffer_objects(sizes):
    arrays = [np.arange(n, dtype=np.uint8) for n in sizes]
    payload = Payload(b"meta", tuple(pickle.PickleBuffer(a) for a in arrays))
    back = Payload.from_bytes(payload.to_bytes())
    assert [bytes(b) for b in back.buffers] == [a.tobytes() for a in arrays]


# -- unpicklable arguments ---------------------------------------------------------------------------------------


def test_unpicklable_positional_argument_is_named():
    with pytest.raises(SerializationError) as info:
        encode_call(None, (1, threading.Lock()), {})
    message = str(info.value)
    assert "positional argument 1" in message
    assert "lock" in message
    assert isinstance(info.value, ConfigError) and isinstance(info.value, TypeError)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_unpicklable_keyword_argument_is_named(tmp_path):
    with open(tmp_path / "f", "w") as handle, pytest.raises(SerializationError) as info:
        encode_call("method", (1, "two"), {"ok": 3, "fh": handle})
    assert "argument 'fh'" in str(info.value)
    assert "TextIOWrapper" in str(info.value)


def test_unpicklable_generator_argument():
    with pytest.raises(SerializationError, match="positional argument 0 \\(generator\\)"):
        encode_call(None, ((i for i in range(3)),), {})


def test_unpicklable_result_becomes_a_serialization_error_outcome():
    payload = encode_value(threading.Lock())
    error = outcome_error(payload)
    assert isinstance(error, SerializationError)
    assert "lock" in str(error)
    with pytest.raises(SerializationError, match="cannot be sent back"):
        decode_outcome(payload)


# -- versions -------------------------------------------------------------------------------------------------------


def test_other_gpuflex_version_is_refused_naming_both(monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(_envelope, "__version__", "0.0.1-caller")
        payload = encode_call(None, (), {})
    with pytest.raises(VersionMismatch) as info:
        decode_call(payload)
    assert info.value.what == "gpuflex"
    assert (info.value.local, info.value.remote) == ("0.0.1-caller", __version__)
    assert "0.0.1-caller" in str(info.value) and __version__ in str(info.value)


def test_other_python_version_is_refused_naming_both(monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(_envelope, "PYTHON_VERSION", "2.7")
        payload = encode_call(None, (), {})
    with pytest.raises(VersionMismatch) as info:
        decode_call(payload)
    assert info.value.what == "Python"
    assert "2.7" in str(info.value) and PYTHON_VERSION in str(info.value)


# -- exceptions -----------------------------------------------------------------------------------------------------


class CustomError(Exception):
    pass


class TwoArgError(Exception):
    """Pickles, but cannot be rebuilt: ``__init__`` needs two arguments."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


class LockedError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def _raise(exc: BaseException) -> Payload:
    def user_function_that_raises() -> None:
        raise exc

    try:
        user_function_that_raises()
    except BaseException as caught:
        return encode_error(caught)
    raise AssertionError("unreachable")


@pytest.mark.parametrize("exc", [ValueError("boom"), KeyError("k"), CustomError("mine"), TimeoutError(5, "slow")],
                         ids=repr)
def test_exceptions_come_back_as_their_own_type(exc):
    payload = _raise(exc)
    with pytest.raises(type(exc)) as info:
        decode_outcome(Payload.from_bytes(payload.to_bytes()))
    assert type(info.value) is type(exc)
    assert info.value.args == exc.args
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "user_function_that_raises" in cause.tb
    assert type(exc).__name__ in cause.tb


@pytest.mark.parametrize(
    ("exc", "type_name", "message"),
    [
        (TwoArgError("a", "b"), f"{__name__}.TwoArgError", "a/b"),
        (LockedError("held"), f"{__name__}.LockedError", "held"),
    ],
    ids=["cannot-rebuild", "cannot-pickle"],
)
def test_exceptions_that_cannot_be_rebuilt_become_remote_error(exc, type_name, message):
    payload = _raise(exc)
    error = outcome_error(payload)
    assert isinstance(error, RemoteError)
    assert error.type_name == type_name
    assert error.remote_message == message
    assert str(error) == f"{type_name}: {message}"
    assert isinstance(error.__cause__, RemoteTraceback)
    assert "user_function_that_raises" in error.__cause__.tb
    with pytest.raises(RemoteError):
        decode_outcome(payload)


def test_an_exception_whose_class_is_gone_on_the_client_becomes_remote_error():
    # pickled fine on the worker, but its module does not exist here
    err = ("err", pickle.dumps(CustomError("x")).replace(b"test_envelope", b"gone_module__"), "gone.Type", "x", "tb")
    error = outcome_error(Payload(pickle.dumps(err, protocol=5)))
    assert isinstance(error, RemoteError)
    assert error.type_name == "gone.Type"
    assert isinstance(error.__cause__, RemoteTraceback) and error.__cause__.tb == "tb"

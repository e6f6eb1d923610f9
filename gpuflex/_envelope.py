"""The call envelope: one wire format for arguments, results and remote exceptions on every backend.

Arguments and results are pickled with cloudpickle, protocol 5; buffers of 64 KiB or more travel out-of-band so a
backend can move them without copying: numpy arrays, CPU torch tensors and anything else that pickles through
``pickle.PickleBuffer``. ``bytes`` and ``bytearray`` stay in the pickle stream (CPython pickles them before any
hook can step in); wrap large ones in ``numpy.frombuffer`` to send them out-of-band. Every call carries the
caller's Python and gpuflex versions; a worker on another version refuses it with a message naming both.
"""

from __future__ import annotations

import io
import pickle
import sys
import traceback
from typing import Any

import cloudpickle

from ._version import __version__
from .backend import Payload
from .errors import RemoteError, RemoteTraceback, SerializationError, VersionMismatch

__all__ = [
    "PYTHON_VERSION",
    "decode_call",
    "decode_outcome",
    "encode_call",
    "encode_error",
    "encode_value",
    "outcome_error",
]

PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
OUT_OF_BAND_MIN_BYTES = 64 * 1024
_PROTOCOL = 5


def _dumps(obj: object) -> Payload:
    buffers: list[pickle.PickleBuffer] = []

    def keep_large(buf: pickle.PickleBuffer) -> bool:
        if buf.raw().nbytes < OUT_OF_BAND_MIN_BYTES:
            return True  # small: stays in-band
        buffers.append(buf)
        return False

    out = io.BytesIO()
    _Pickler(out, protocol=_PROTOCOL, buffer_callback=keep_large).dump(obj)
    return Payload(out.getvalue(), tuple(buffers))


def _rebuild_tensor(raw: Any, dtype: Any, shape: tuple[int, ...]) -> Any:
    import torch

    if not raw.flags.writeable:  # it came from an immutable buffer: a tensor must own writable memory
        raw = raw.copy()
    return torch.from_numpy(raw).view(dtype).reshape(shape)


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, plus CPU torch tensors as raw numpy bytes so their storage travels out-of-band (zero-copy
    through shared memory) instead of being copied into the pickle stream."""

    def reducer_override(self, obj: Any) -> Any:
        torch = sys.modules.get("torch")
        if (
            torch is not None
            and type(obj) is torch.Tensor
            and obj.device.type == "cpu"
            and not obj.requires_grad
            and obj.layout == torch.strided
            and obj.numel() * obj.element_size() >= OUT_OF_BAND_MIN_BYTES
        ):
            raw = obj.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
            return _rebuild_tensor, (raw, obj.dtype, tuple(obj.shape))
        return super().reducer_override(obj)


def _loads(payload: Payload) -> Any:
    return pickle.loads(payload.data, buffers=payload.buffers)


def _culprit(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    for index, value in enumerate(args):
        try:
            cloudpickle.dumps(value)
        except Exception:
            return f"positional argument {index} ({type(value).__name__})"
    for key, value in kwargs.items():
        try:
            cloudpickle.dumps(value)
        except Exception:
            return f"argument {key!r} ({type(value).__name__})"
    return "the arguments"


def encode_call(method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Payload:
    """Serialize one call. Raises :class:`SerializationError` naming the argument that cannot be sent."""
    try:
        return _dumps((__version__, PYTHON_VERSION, method, args, kwargs))
    except Exception as exc:
        raise SerializationError(
            f"cannot send {_culprit(args, kwargs)} to a worker: {type(exc).__name__}: {exc}. "
            "Arguments must be picklable (open files, locks, sockets and generators are not)."
        ) from None


def decode_call(payload: Payload) -> tuple[str | None, tuple[Any, ...], dict[str, Any]]:
    """Worker side: rebuild a call, refusing one from another Python or gpuflex version."""
    gpuflex_version, python_version, method, args, kwargs = _loads(payload)
    if python_version != PYTHON_VERSION:
        raise VersionMismatch("Python", python_version, PYTHON_VERSION)
    if gpuflex_version != __version__:
        raise VersionMismatch("gpuflex", gpuflex_version, __version__)
    return method, args, kwargs


def encode_value(value: object) -> Payload:
    """Serialize a result or a streamed chunk. An unpicklable result becomes an error outcome."""
    try:
        return _dumps(("ok", value))
    except Exception as exc:
        error = SerializationError(
            f"the endpoint returned a {type(value).__name__}, which cannot be sent back: {type(exc).__name__}: {exc}"
        )
        return encode_error(error)


def encode_error(exc: BaseException) -> Payload:
    """Serialize an exception raised by the user's code (or the worker), keeping its type when it pickles."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    label = f"{type(exc).__module__}.{type(exc).__qualname__}"
    pickled: bytes | None
    try:
        pickled = cloudpickle.dumps(exc.with_traceback(None), protocol=_PROTOCOL)
        pickle.loads(pickled)  # some exceptions pickle but cannot be rebuilt (required __init__ args)
    except Exception:
        pickled = None
    return Payload(pickle.dumps(("err", pickled, label, str(exc), tb), protocol=_PROTOCOL))


def outcome_error(payload: Payload) -> BaseException | None:
    """The exception an outcome carries (with the remote traceback as its cause), or None for a value."""
    outcome = _loads(payload)
    if outcome[0] == "ok":
        return None
    _, pickled, label, message, tb = outcome
    exc: BaseException
    try:
        exc = RemoteError(label, message) if pickled is None else pickle.loads(pickled)
    except Exception:
        exc = RemoteError(label, message)
    exc.__cause__ = RemoteTraceback(tb)
    return exc


def decode_outcome(payload: Payload) -> Any:
    """Client side: return the value, or raise the remote exception as its own type."""
    outcome = _loads(payload)
    if outcome[0] == "ok":
        return outcome[1]
    error = outcome_error(payload)
    assert error is not None
    raise error

"""The call envelope: one wire format for arguments, results and remote exceptions on every backend.

Arguments and results are pickled with cloudpickle, protocol 5; buffers of 64 KiB or more travel out-of-band so a
backend can move them without copying: numpy arrays, CPU torch tensors and anything else that pickles through
``pickle.PickleBuffer``. ``bytes`` and ``bytearray`` stay in the pickle stream (CPython pickles them before any
hook can step in); wrap large ones in ``numpy.frombuffer`` to send them out-of-band. Every call carries the
caller's Python and gpuflex versions; a worker on another version refuses it with a message naming both.

Remote tracebacks name the files of the user's project, not the worker's copy of the bundle: the worker records
where its bundle lies (:func:`set_bundle_root`), and the caller puts its own project root in that prefix's place.
"""

from __future__ import annotations

import io
import os
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
    "error_summary",
    "outcome_error",
    "set_bundle_root",
]

PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
OUT_OF_BAND_MIN_BYTES = 64 * 1024
_PROTOCOL = 5
_bundle_roots: tuple[str, ...] = ()  # where this worker's bundle lies (as given, and resolved)


def set_bundle_root(root: str | None) -> None:
    """Worker side: the directory the endpoint's code was loaded from. Tracebacks encoded afterwards carry it, so
    the caller can show its own project's paths instead (the runtime calls this when it loads a bundle)."""
    global _bundle_roots
    if root is None:
        _bundle_roots = ()
        return
    given = root.rstrip("/") or "/"
    resolved = os.path.realpath(given)
    _bundle_roots = tuple(dict.fromkeys(r for r in (resolved, os.path.abspath(given)) if r != "/"))


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


def dump_value(value: object, what: str = "returned") -> Payload:
    """Serialize a result or a streamed chunk; raise :class:`SerializationError` when it cannot be sent back (the
    worker then reports the call as failed, with that error)."""
    try:
        return _dumps(("ok", value))
    except Exception as exc:
        raise SerializationError(
            f"the endpoint {what} a {type(value).__name__}, which cannot be sent back: {type(exc).__name__}: {exc}"
        ) from None


def encode_value(value: object) -> Payload:
    """Serialize a result or a streamed chunk. An unpicklable result becomes an error outcome: send it with the
    status ``"error"`` (or use :func:`dump_value`, which raises)."""
    try:
        return dump_value(value)
    except SerializationError as error:
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
    notes = [str(n) for n in getattr(exc, "__notes__", None) or ()]
    extra = {"roots": _bundle_roots, "notes": notes}
    return Payload(pickle.dumps(("err", pickled, label, str(exc), tb, extra), protocol=_PROTOCOL))


def _is_error(payload: Payload) -> bool:
    """Whether an outcome carries an exception, without unpickling a value (which may be large, or need modules
    this process lacks): an error outcome is a plain pickle whose first string is ``"err"``."""
    import pickletools

    try:
        for opcode, arg, _ in pickletools.genops(payload.data):
            if isinstance(arg, str):
                return arg == "err"
            if opcode.name not in ("PROTO", "FRAME", "MARK", "EMPTY_TUPLE"):
                return False
    except Exception:
        return False
    return False


def _relocate(text: str, roots: tuple[str, ...], source_root: str | None) -> str:
    if not source_root:
        return text
    for root in roots:
        text = text.replace(root + os.sep, source_root.rstrip(os.sep) + os.sep)
    return text


def outcome_error(payload: Payload, *, source_root: str | None = None) -> BaseException | None:
    """The exception an outcome carries (with the remote traceback as its cause), or None for a value.

    :param source_root: the caller's project directory: paths into the worker's bundle are shown under it.
    """
    if not _is_error(payload):
        return None
    outcome = _loads(payload)
    _, pickled, label, message, tb = outcome[:5]
    roots: tuple[str, ...] = tuple(outcome[5].get("roots", ())) if len(outcome) > 5 else ()
    exc: BaseException
    try:
        exc = RemoteError(label, message) if pickled is None else pickle.loads(pickled)
    except Exception:
        exc = RemoteError(label, message)
    if isinstance(exc, SyntaxError) and exc.filename:
        exc.filename = _relocate(exc.filename + os.sep, roots, source_root)[:-1]
    exc.__cause__ = RemoteTraceback(_relocate(tb, roots, source_root))
    return exc


def error_summary(payload: Payload) -> str | None:
    """``"ValueError: boom"`` for an outcome carrying an exception (the first line of its message), else None."""
    if not _is_error(payload):
        return None
    try:
        outcome = _loads(payload)
    except Exception:
        return None
    label, message = outcome[2], str(outcome[3]).strip()
    notes = outcome[5].get("notes", []) if len(outcome) > 5 else []
    name = label.rsplit(".", 1)[-1]
    summary = f"{name}: {message.splitlines()[0]}" if message else name
    return f"{summary} ({notes[0]})" if notes else summary


def decode_outcome(payload: Payload, *, source_root: str | None = None) -> Any:
    """Client side: return the value, or raise the remote exception as its own type."""
    error = outcome_error(payload, source_root=source_root)
    if error is not None:
        raise error
    return _loads(payload)[1]

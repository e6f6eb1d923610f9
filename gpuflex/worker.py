"""Public pieces for backends that run gpuflex's worker runtime somewhere (a process, a pod, a container).

Two ways to run a worker:

* as a process: ``worker_command()`` (``python -m gpuflex.runtime``) with frames on its stdin/stdout, started on
  this machine with ``start_worker_process`` or anywhere else (ssh, a container); send it
  ``("init", worker_init(spec, bundle, environ=endpoint_environ(spec)))`` first. The messages are listed in
  docs/plugins/writing-a-backend.md ("Running the worker");
* in a process of the target's own (a vendor's worker loop): build a :class:`WorkerRuntime` from
  ``worker_init(...)`` and pass it a ``send`` callback; encode what goes back with ``encode_error``.

The frame codec is symmetric: ``write_frame(stream, message)``/``read_frame(stream) -> message`` (async streams),
``write_frame_sync``/``read_frame_sync`` (files), ``FrameParser`` (bytes fed in pieces), ``WireCodec`` (payloads,
shared memory).

A worker that takes plain JSON calls (a deployed endpoint's HTTP callers) uses ``JsonCalls``: the same schema, built
from the function's type hints, that the dev server publishes; imported on first use (it needs pydantic).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._envelope import PYTHON_VERSION, encode_error
from .runtime._protocol import RUNTIME_MODULE, endpoint_environ, worker_command, worker_init
from .runtime._runner import IN_WORKER_ENV, OWN_GROUP_ENV, WorkerRuntime
from .runtime._wire import FrameParser, WireCodec, read_frame, read_frame_sync, write_frame, write_frame_sync
from .workerpool._channel import WorkerChannel, start_worker_process

if TYPE_CHECKING:
    from ._jsoncall import JsonCallError, JsonCalls

__all__ = [
    "IN_WORKER_ENV",
    "OWN_GROUP_ENV",
    "PYTHON_VERSION",
    "RUNTIME_MODULE",
    "FrameParser",
    "JsonCallError",
    "JsonCalls",
    "WireCodec",
    "WorkerChannel",
    "WorkerRuntime",
    "encode_error",
    "endpoint_environ",
    "read_frame",
    "read_frame_sync",
    "start_worker_process",
    "worker_command",
    "worker_init",
    "write_frame",
    "write_frame_sync",
]


def __getattr__(name: str) -> Any:
    if name in ("JsonCalls", "JsonCallError"):  # pydantic is imported only by workers that take JSON calls
        from . import _jsoncall

        return getattr(_jsoncall, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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
"""

from __future__ import annotations

from ._envelope import PYTHON_VERSION, encode_error
from .runtime._protocol import RUNTIME_MODULE, endpoint_environ, worker_command, worker_init
from .runtime._runner import IN_WORKER_ENV, OWN_GROUP_ENV, WorkerRuntime
from .runtime._wire import FrameParser, WireCodec, read_frame, read_frame_sync, write_frame, write_frame_sync
from .workerpool._channel import WorkerChannel, start_worker_process

__all__ = [
    "IN_WORKER_ENV",
    "OWN_GROUP_ENV",
    "PYTHON_VERSION",
    "RUNTIME_MODULE",
    "FrameParser",
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

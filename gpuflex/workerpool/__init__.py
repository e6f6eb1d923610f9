"""The worker pool: backends whose workers are gpuflex worker processes started from a command.

``WorkerPoolBackend`` is the base a backend subclasses (the local and pod backends do); a subclass says where a
worker runs (``place_worker`` returns a ``Placement``) and how it starts (``worker_command``). The pool queues each
endpoint's calls, scales its ``WorkerProcess``es with the core autoscaler and routes their frames.
"""

from ._backend import WorkerPoolBackend
from ._pool import EndpointPool, Mailbox, Placement, PoolJob
from ._process import StartFailed, WorkerProcess

__all__ = ["EndpointPool", "Mailbox", "Placement", "PoolJob", "StartFailed", "WorkerPoolBackend", "WorkerProcess"]

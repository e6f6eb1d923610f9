"""The messages a worker process understands, and the command that starts one.

A worker is ``worker_command()`` with frames on its stdin/stdout (see :mod:`gpuflex.runtime._wire` for the format):
send ``("init", worker_init(spec, bundle))`` first, wait for ``("ready", info)`` (or ``("fatal", payload)``),
then ``("call", job_id, method, payload)`` per call; it answers ``("started", job_id)`` (unless told not to),
``("chunk", job_id, payload)`` per generator chunk and ``("done", job_id, status, payload)``. ``("cancel", job_id)``
stops an async call, ``("reload", worker_init(...))`` loads a new bundle in place, ``("stop",)`` ends it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import attrs

from .._envelope import PYTHON_VERSION
from .._version import __version__

if TYPE_CHECKING:
    from .._models import Bundle, EndpointSpec

__all__ = ["RUNTIME_MODULE", "worker_command", "worker_init"]

RUNTIME_MODULE = "gpuflex.runtime"  # ``python -m gpuflex.runtime`` runs a worker


def worker_command(python: str | None = None) -> list[str]:
    """The command that starts a worker (the caller's interpreter unless ``python`` names another)."""
    return [python or sys.executable, "-m", RUNTIME_MODULE]


def worker_init(spec: EndpointSpec, bundle: Bundle, *, report_started: bool = True,
                bundle_root: str | None = None, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The ``init`` (and ``reload``) message for a worker of ``spec`` running ``bundle``.

    :param report_started: send ``started`` when a call begins; a client that dispatches only to free slots
        knows that already and can spare the frame.
    :param bundle_root: where the bundle lies on the worker's machine (default: ``bundle.root``, this machine).
    :param environ: variables the worker sets before it imports the endpoint (secrets travel here, in the
        frame, rather than on a command line another user of the machine could read).
    """
    return {
        "target": attrs.asdict(spec.target),
        "bundle_root": bundle_root or str(bundle.root),
        "import_paths": [spec.target.import_path],
        "concurrency": spec.concurrency,
        "batch": {"max_size": spec.max_batch_size, "wait_ms": spec.batch_wait_ms} if spec.batched else None,
        "python": PYTHON_VERSION,
        "gpuflex": __version__,
        "report_started": report_started,
        "environ": dict(environ or {}),
    }

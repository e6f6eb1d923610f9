"""The messages a worker process understands, and the command that starts one.

A worker is ``worker_command()`` with frames on its stdin/stdout (see :mod:`gpuflex.runtime._wire` for the format):
send ``("init", worker_init(spec, bundle))`` first, wait for ``("ready", info)`` (or ``("fatal", payload)``),
then ``("call", job_id, method, payload)`` per call; it answers ``("started", job_id)`` (unless told not to),
``("chunk", job_id, payload)`` per generator chunk and ``("done", job_id, status, payload)``. ``("cancel", job_id)``
stops an async call, ``("reload", worker_init(...))`` loads a new bundle in place, ``("stop",)`` ends it.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import attrs

from .._envelope import PYTHON_VERSION
from .._version import __version__
from ..errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._models import Bundle, EndpointSpec

__all__ = ["RUNTIME_MODULE", "endpoint_environ", "worker_command", "worker_init"]

RUNTIME_MODULE = "gpuflex.runtime"  # ``python -m gpuflex.runtime`` runs a worker


def worker_command(python: str | None = None) -> list[str]:
    """The command that starts a worker (the caller's interpreter unless ``python`` names another)."""
    return [python or sys.executable, "-m", RUNTIME_MODULE]


def endpoint_environ(spec: EndpointSpec, source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables a worker of ``spec`` sets before it imports the endpoint: the endpoint's ``env``, plus each of
    its ``secrets`` copied from ``source`` (default: this process's environment). Pass the result as
    ``worker_init(..., environ=...)``: it travels in the init frame, never on a command line.

    :raises ConfigError: a secret is not set in ``source`` (the message names it, and never shows a value).
    """
    source = os.environ if source is None else source
    missing = [name for name in spec.secrets if name not in source]
    if missing:
        raise ConfigError(f"endpoint {spec.name!r} needs the secret(s) {', '.join(missing)}, which are not set in "
                          "this environment; export them before calling")
    return {**spec.env, **{name: source[name] for name in spec.secrets}}


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

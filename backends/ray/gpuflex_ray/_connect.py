"""The one connection of this process to a Ray cluster, shared by every Ray backend in it.

``import ray`` takes a second or more, so nothing imports it until a backend first deploys. A process talks to
one cluster (Ray's own rule): the first backend connects, later ones share the connection, and the last one to
close disconnects, when gpuflex made the connection (a program that called ``ray.init`` itself keeps its own).
Disconnecting ends the job, which kills every actor it created; a local cluster gpuflex started stops with it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from typing import Any

from gpuflex.errors import AuthenticationError, BackendUnavailable, ConfigError

__all__ = ["Connection", "connect", "disconnect", "ray_module"]

_lock = threading.Lock()


def ray_module() -> Any:
    """``ray``, imported on first use."""
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - gpuflex-ray depends on ray
        raise BackendUnavailable("the Ray backend needs ray: pip install gpuflex-ray (or pip install ray)") from exc
    return ray


class Connection:
    """This process's connection: the address it reached, whether gpuflex started the cluster, who uses it."""

    def __init__(self, address: str, *, owned: bool, started_here: bool, client: bool,
                 shipped: bool = False, local_dir: str | None = None) -> None:
        self.address = address
        self.local_dir = local_dir  # the temp directory of a local cluster gpuflex started
        self.keeper: _Keeper | None = None  # the thread that called ray.init (None: the program did)
        self.shipped = shipped  # the job sends this machine's gpuflex packages to its workers
        self.owned = owned  # gpuflex called ray.init (and so calls ray.shutdown)
        self.started_here = started_here  # a local cluster gpuflex started: it stops on disconnect
        self.client = client  # Ray Client (ray://): no local object store
        self.users = 0


_current: Connection | None = None


class _Keeper:
    """The thread that calls ``ray.init`` and, at the end, ``ray.shutdown``, and lives as long as the connection.

    Ray starts a local cluster's processes with Linux's parent-death signal, which follows the *thread* that forked
    them: from a passing worker thread, the cluster would be killed (and its agents orphaned) as soon as that thread
    ended. So the connection gets a thread of its own.
    """

    def __init__(self, init: Any) -> None:
        self._init = init
        self._opened = threading.Event()
        self._closing = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gpuflex-ray-connection", daemon=True)

    def _run(self) -> None:
        try:
            self._result = self._init()
        except BaseException as exc:  # noqa: BLE001 - handed to open()
            self._error = exc
        self._opened.set()
        if self._error is None:
            self._closing.wait()
            ray_module().shutdown()

    def open(self) -> Any:
        """Connect; what ``ray.init`` returned, or its exception."""
        self._thread.start()
        self._opened.wait()
        if self._error is not None:
            raise self._error
        return self._result

    def close(self) -> None:
        self._closing.set()
        self._thread.join()


class _NoSigtermNotice(logging.Filter):
    """Ray notes that it set no SIGTERM handler when ``ray.init`` runs off the main thread (gpuflex's does): the
    program's own handling of SIGTERM is what should stay, so the notice says nothing to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


_QUIET = _NoSigtermNotice()


def _describe(address: str | None) -> str:
    return f"the Ray cluster at {address}" if address else "a local Ray cluster"


def _refused_token(exc: BaseException | None) -> bool:
    """Ray reports a wrong token as a failed connection; the cause it chains says which."""
    while exc is not None:
        if "InvalidAuthToken" in str(exc) or "Unauthenticated" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def connect(address: str | None, namespace: str | None, init_options: dict[str, Any],
            py_modules: list[str]) -> Connection:
    """Connect (or join the existing connection); blocking, so call it from a thread.

    :param py_modules: package directories the job sends to every worker (Ray uploads local directories only
        for a whole job, at ``ray.init``).
    """
    global _current
    with _lock:
        ray = ray_module()
        if _current is None and ray.is_initialized():  # the program connected by itself
            context = ray.get_runtime_context()
            _current = Connection(getattr(context, "gcs_address", "") or "existing", owned=False,
                                  started_here=False, client=ray.util.client.ray.is_connected())
        if _current is not None:
            if address not in (None, "auto", _current.address) and _current.owned:
                raise ConfigError(f"this process is connected to the Ray cluster at {_current.address}; one process "
                                  f"uses one Ray cluster, so it cannot also use {address}")
            _current.users += 1
            return _current
        target = address or os.environ.get("RAY_ADDRESS") or None
        options = dict(init_options)
        options.setdefault("log_to_driver", False)  # worker output travels through gpuflex, marked per worker
        options.setdefault("logging_level", logging.WARNING)  # not Ray's "Connecting to..." lines at each start
        logging.getLogger("ray._private.worker").addFilter(_QUIET)
        local_dir = None
        if target is None:  # a local cluster for development: no dashboard, its files in a directory of its own
            options.setdefault("include_dashboard", False)
            if "_temp_dir" not in options:
                short = "/tmp" if os.path.isdir("/tmp") else None  # Ray's socket paths have a length limit
                local_dir = options["_temp_dir"] = tempfile.mkdtemp(prefix="gpuflex-ray-", dir=short)
        if namespace is not None:
            options["namespace"] = namespace
        if py_modules:
            job_env = dict(options.get("runtime_env") or {})
            job_env["py_modules"] = [*job_env.get("py_modules", []), *py_modules]
            job_env["excludes"] = [*job_env.get("excludes", []), "__pycache__"]
            options["runtime_env"] = job_env
        keeper = _Keeper(lambda: ray.init(address=target, **options))
        try:
            context = keeper.open()
        except Exception as exc:
            if local_dir:
                shutil.rmtree(local_dir, ignore_errors=True)
            if _refused_token(exc):
                raise AuthenticationError(f"{_describe(target)} refused this client's token: set RAY_AUTH_TOKEN or "
                                          "RAY_AUTH_TOKEN_PATH to the cluster's own") from None
            if isinstance(exc, ConnectionError):
                raise BackendUnavailable(
                    f"could not reach {_describe(target)}: {exc}; check the address (ray://host:10001 for Ray Client, "
                    "'auto' on a node of the cluster) and that the cluster runs") from exc
            raise BackendUnavailable(f"could not connect to {_describe(target)}: {type(exc).__name__}: {exc}") from exc
        client = target is not None and target.startswith("ray://")
        reached = target or getattr(context, "address_info", {}).get("gcs_address", "local")
        _current = Connection(str(reached), owned=True, started_here=target is None, client=client,
                              shipped=bool(py_modules), local_dir=local_dir)
        _current.keeper = keeper
        _current.users = 1
        return _current


def disconnect(connection: Connection) -> None:
    """One backend is done with the connection; the last one out disconnects (blocking: call from a thread)."""
    global _current
    with _lock:
        connection.users -= 1
        if connection.users > 0 or _current is not connection:
            return
        _current = None
        if connection.keeper is not None:
            connection.keeper.close()  # ray.shutdown(), on the thread that called ray.init
        if connection.local_dir:
            shutil.rmtree(connection.local_dir, ignore_errors=True)

"""The worker runtime: the same small program on every target.

It loads a bundle, imports the endpoint's function or class by reference (or unpickles it, for closures and
scripts run interactively), runs ``setup()`` once for classes, then serves calls: plain and async functions,
generators (each chunk sent as soon as it is produced) and async generators.

Run as ``python -m gpuflex.runtime``: frames (see ``_wire``) arrive on stdin and go out on stdout; the user's
prints go to stderr. Backends that talk to workers another way reuse :class:`WorkerRuntime` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import cloudpickle

from .._envelope import PYTHON_VERSION, decode_call, dump_value, encode_error, set_bundle_root
from .._version import __version__
from ..errors import BatchError, ConfigError, VersionMismatch
from ._batch import Batcher, BatchQueue
from ._output import OutputCapture, capture_output
from ._shm import shm_available
from ._wire import FrameParser, WireCodec, read_frame_sync, write_frame_sync

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..backend import Payload

__all__ = ["IN_WORKER_ENV", "OWN_GROUP_ENV", "WorkerRuntime", "main"]

IN_WORKER_ENV = "GPUFLEX_IN_WORKER"
OWN_GROUP_ENV = "GPUFLEX_WORKER_OWN_GROUP"  # set: lead a process group, die with the parent
SCRIPT_MODULE = "__gpuflex_main__"


def _walk(obj: Any, qualname: str) -> Any:
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def load_target(spec: dict[str, Any]) -> Any:
    """Import (or unpickle) the user's function or class, unwrapping the ``@endpoint`` decorator."""
    target = spec["target"]
    root = Path(spec["bundle_root"])
    for entry in reversed(spec.get("import_paths", ["."])):
        path = str((root / entry).resolve())
        if path not in sys.path:
            sys.path.insert(0, path)
    if target.get("pickled"):
        obj = cloudpickle.loads(target["pickled"])
    elif target.get("path"):
        module_spec = importlib.util.spec_from_file_location(SCRIPT_MODULE, root / target["path"])
        if module_spec is None or module_spec.loader is None:
            raise ConfigError(f"cannot import {target['path']} from the bundle")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[SCRIPT_MODULE] = module
        module_spec.loader.exec_module(module)
        cloudpickle.register_pickle_by_value(module)  # results of script-defined classes travel by value
        obj = _walk(module, target["qualname"])
    else:
        obj = _walk(importlib.import_module(target["module"]), target["qualname"])
    return getattr(obj, "__gpuflex_raw__", obj)


class WorkerRuntime:
    """Runs calls of one endpoint inside one worker. Transport-agnostic: ``send`` delivers outgoing messages."""

    def __init__(self, spec: dict[str, Any], send: Callable[[tuple[Any, ...]], None], *,
                 capture_output: bool = True) -> None:
        """:param capture_output: send what the user's code prints and logs as ``("output", stream, text)``
        messages (see :mod:`gpuflex.runtime._output`), from ``start()`` on."""
        self.spec = spec
        self.send = send
        self.capture_output = capture_output
        self.output: OutputCapture | None = None
        self.concurrency: int = spec.get("concurrency", 1)
        self.target: Any = None
        self.instance: Any = None
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.cancelled: set[str] = set()  # cancel requests that arrived before their call started
        # a client that dispatches only to free slots knows when a call starts; it can spare the extra frame
        self.report_started: bool = spec.get("report_started", True)
        self._callables: dict[str | None, Any] = {}
        self.batchers: dict[str | None, Batcher[Any]] = {}  # batched endpoints: one per method

    def _done(self, job_id: str, status: str, outcome: Payload | None) -> None:
        if self.output is not None:
            self.output.flush()  # a partial line printed by the call arrives before its result
        self.send(("done", job_id, status, outcome))

    def close(self) -> None:
        """Put the original stdout, stderr and logging last resort back."""
        if self.output is not None:
            self.output.restore()
            self.output = None

    def check_versions(self) -> None:
        if self.spec["python"] != PYTHON_VERSION:
            raise VersionMismatch("Python", self.spec["python"], PYTHON_VERSION)
        if self.spec["gpuflex"] != __version__:
            raise VersionMismatch("gpuflex", self.spec["gpuflex"], __version__)

    async def start(self) -> dict[str, Any]:
        """Load the target and run a class's ``setup()``; return what the worker reports as ready."""
        if self.capture_output and self.output is None:
            self.output = capture_output(self.send)
        self.check_versions()
        os.environ.update(self.spec.get("environ") or {})  # sent in the init frame: never on a command line
        set_bundle_root(self.spec["bundle_root"])  # tracebacks name the caller's files, not this copy's
        self.target = load_target(self.spec)
        if inspect.isclass(self.target):
            self.instance = self.target()
            setup = getattr(self.instance, "setup", None)
            if setup is not None:
                try:
                    result = setup()
                    if inspect.isawaitable(result):
                        await result
                except Exception as exc:
                    exc.add_note(f"raised by {self.target.__qualname__}.setup(), which runs once in each worker "
                                 "before it takes calls")
                    raise
        return {"pid": os.getpid(), "python": PYTHON_VERSION, "gpuflex": __version__, "started": time.time()}

    async def reload(self, spec: dict[str, Any]) -> None:
        """Load a new bundle in this process: forget the old bundle's modules (third-party imports such as
        torch stay loaded), import the target again and re-run ``setup()``. Answers ``ready`` or ``fatal``."""
        old_root = os.path.realpath(self.spec["bundle_root"]) + os.sep  # noqa: ASYNC240 - no I/O to speak of
        for name, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None) or ""
            if name == SCRIPT_MODULE or file.startswith(old_root):  # sys.path entries were resolved paths
                del sys.modules[name]
        sys.path[:] = [p for p in sys.path if not (p + os.sep).startswith(old_root)]
        importlib.invalidate_caches()
        self.spec, self.instance, self.target = spec, None, None
        self._callables.clear()
        self.batchers.clear()  # batches already running finish on the old code
        try:
            info = await self.start()
        except BaseException as exc:
            self.send(("fatal", encode_error(exc)))
            return
        self.send(("ready", info))

    def _resolve(self, method: str | None) -> Any:
        if method not in self._callables:
            if self.instance is not None:
                name = method or "__call__"
                if name.startswith("_") and name != "__call__":
                    raise AttributeError(f"{name!r} is private and cannot be called remotely")
                self._callables[method] = getattr(self.instance, name)
            else:
                self._callables[method] = self.target
        return self._callables[method]

    def runs_inline(self, method: str | None) -> bool:
        """A sync callable on a one-call-at-a-time worker runs on the loop itself (cancelled by a kill)."""
        if self.concurrency != 1 or self.spec.get("batch"):
            return False
        try:
            fn = self._resolve(method)
        except Exception:
            return True  # run() reports the error
        return not (inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn))

    def submit(self, job_id: str, payload: Payload) -> None:
        """Start one call as a task (async callables, or several calls at once)."""
        task = asyncio.get_running_loop().create_task(self.run(job_id, payload))
        self.tasks[job_id] = task
        task.add_done_callback(lambda _: self.tasks.pop(job_id, None))

    def _batcher(self, method: str | None) -> Batcher[Any]:
        if method not in self.batchers:
            fn, batch = self._resolve(method), self.spec["batch"]

            async def run_batch(items: list[Any]) -> Any:
                if inspect.iscoroutinefunction(fn):
                    return await fn(items)
                return await asyncio.to_thread(fn, items)

            def started(job_ids: list[Any]) -> None:
                if self.report_started:
                    for job_id in job_ids:
                        self.send(("started", job_id))

            queue: BatchQueue[Any] = BatchQueue(batch["max_size"], batch["wait_ms"] / 1000, self.concurrency)
            self.batchers[method] = Batcher(queue, run_batch, started)
        return self.batchers[method]

    async def _run_batched(self, job_id: str, method: str | None, args: tuple[Any, ...],
                           kwargs: dict[str, Any]) -> Payload:
        """One call's share of a batch: its item joins the next batch; its result comes back alone."""
        if len(args) != 1 or kwargs:
            raise BatchError(f"a batched endpoint takes exactly one item per call; this call passed {len(args)} "
                             f"positional and {len(kwargs)} keyword argument(s)")
        return dump_value(await self._batcher(method).add(args[0], key=job_id))

    def cancel(self, job_id: str) -> None:
        for batcher in self.batchers.values():
            batcher.cancel(job_id)  # still waiting for its batch: it never runs
        task = self.tasks.get(job_id)
        if task is not None:
            task.cancel()
            self.cancelled.discard(job_id)

    def _begin(self, job_id: str, *, report: bool = True) -> bool:
        """Start a call, unless it was cancelled before it started (then answer that, and return False)."""
        if job_id in self.cancelled:
            self.cancelled.discard(job_id)
            self._done(job_id, "cancelled", None)
            return False
        if report and self.report_started:
            self.send(("started", job_id))
        return True

    async def run(self, job_id: str, payload: Payload) -> None:
        batched = bool(self.spec.get("batch"))
        if not self._begin(job_id, report=not batched):  # a batched call is reported started with its batch
            return
        outcome: Payload | None
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] = {}
        try:
            method, args, kwargs = decode_call(payload)
            if batched:
                outcome, status = await self._run_batched(job_id, method, args, kwargs), "ok"
            else:
                outcome, status = await self._invoke(job_id, self._resolve(method), args, kwargs), "ok"
        except asyncio.CancelledError:
            outcome, status = None, "cancelled"
        except BaseException as exc:  # the user's exception (or an unserializable result) goes back to the caller
            outcome, status = encode_error(exc), "error"
        del payload, args, kwargs  # views of shared memory: the answer can say their segments are free
        self._done(job_id, status, outcome)

    def run_inline(self, job_id: str, payload: Payload) -> None:
        """``run`` for a sync callable, on the loop itself: no task, no thread."""
        answer = self.call_inline(job_id, payload)
        if answer is not None:
            self._done(job_id, *answer)

    def call_inline(self, job_id: str, payload: Payload) -> tuple[str, Payload] | None:
        """``run_inline`` up to its answer: returns ``(status, outcome)`` for ``answer()`` (after the caller let go
        of the payload), or None when the call was cancelled before it started (answered already)."""
        if not self._begin(job_id):
            return None
        try:
            method, args, kwargs = decode_call(payload)
            fn = self._resolve(method)
            if inspect.isgeneratorfunction(fn):
                for chunk in fn(*args, **kwargs):
                    self.send(("chunk", job_id, dump_value(chunk, "yielded")))
                return "ok", dump_value(None)
            return "ok", dump_value(fn(*args, **kwargs))
        except BaseException as exc:  # the user's exception (or an unserializable result) goes back to the caller
            return "error", encode_error(exc)

    def answer(self, job_id: str, status: str, outcome: Payload | None) -> None:
        """Send a call's ``done`` frame."""
        self._done(job_id, status, outcome)

    async def _invoke(self, job_id: str, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Payload:
        inline = self.concurrency == 1
        if inspect.isasyncgenfunction(fn):
            async for chunk in fn(*args, **kwargs):
                self.send(("chunk", job_id, dump_value(chunk, "yielded")))
            return dump_value(None)
        if inspect.isgeneratorfunction(fn):
            gen = fn(*args, **kwargs)
            done = object()
            while True:
                chunk = next(gen, done) if inline else await asyncio.to_thread(next, gen, done)
                if chunk is done:
                    return dump_value(None)
                self.send(("chunk", job_id, dump_value(chunk, "yielded")))
        if inspect.iscoroutinefunction(fn):
            return dump_value(await fn(*args, **kwargs))
        value = fn(*args, **kwargs) if inline else await asyncio.to_thread(fn, *args, **kwargs)
        if inspect.isawaitable(value):
            value = await value
        return dump_value(value)


class _StdinProtocol(asyncio.Protocol):
    """Frames from the client, parsed as they arrive on the worker's loop (no reader thread)."""

    def __init__(self, runtime: WorkerRuntime, stopped: asyncio.Event, codec: WireCodec | None = None,
                 flush: Callable[[], None] | None = None) -> None:
        self.runtime = runtime
        self.stopped = stopped
        self.codec = WireCodec() if codec is None else codec
        self.parser = FrameParser(codec=self.codec)
        self.flush = flush

    def data_received(self, data: bytes) -> None:
        self._handle(self.parser.feed(data))
        if self.flush is not None:  # the calls' arguments are gone now: tell the client which segments are free
            self.flush()

    def _handle(self, frames: list[Any]) -> None:
        """Handle the frames, taking each out of the list: once a call is answered nothing here holds its payload
        (views of shared memory the client waits to reuse)."""
        for job_id in [f[1] for f in frames if f[0] == "cancel"]:  # a cancelled call that has not started never does
            self.runtime.cancelled.add(job_id)
            self.runtime.cancel(job_id)
        for index in range(len(frames)):
            frame, frames[index] = frames[index], None
            if self.codec.on_control(frame):
                continue
            if frame[0] == "call":
                job_id, method = frame[1], frame[2]
                if self.runtime.runs_inline(method):  # one sync call at a time: no task, no thread hop
                    answer = self.runtime.call_inline(job_id, frame[3])
                    del frame
                    if answer is not None:
                        self.runtime.answer(job_id, *answer)
                else:
                    self.runtime.submit(job_id, frame[3])
            elif frame[0] == "reload":
                asyncio.get_running_loop().create_task(self.runtime.reload(frame[1]))
            elif frame[0] == "stop":
                self.stopped.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.stopped.set()  # the client went away: nobody is left to answer


def _serve_stdio(proto_in: BinaryIO, proto_out: BinaryIO) -> None:
    codec = WireCodec(use_shm=bool(os.environ.get("GPUFLEX_WORKER_SHM")) and shm_available(), release_exported=True)
    lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with lock:  # one thread at a time: the pool's segments are handed out and announced in order
            parts = codec.encode(message)  # first: a result copied out may free the argument it aliased
            if codec.use_shm:
                for control in codec.control():
                    write_frame_sync(proto_out, codec.encode(control), codec)
            write_frame_sync(proto_out, parts, codec)

    def flush() -> None:
        with lock:
            for control in codec.control():
                write_frame_sync(proto_out, codec.encode(control), codec)

    init = read_frame_sync(proto_in)
    if init is None or init[0] != "init":
        raise SystemExit("gpuflex worker: expected an init frame on stdin")
    runtime = WorkerRuntime(init[1], send)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        try:
            info = await runtime.start()
        except BaseException as exc:
            send(("fatal", encode_error(exc)))
            return
        send(("ready", info))
        stopped = asyncio.Event()
        transport, _ = await loop.connect_read_pipe(
            lambda: _StdinProtocol(runtime, stopped, codec, flush if codec.use_shm else None), proto_in)
        await stopped.wait()
        transport.close()
        for task in list(runtime.tasks.values()):
            task.cancel()
        if runtime.tasks:
            await asyncio.wait(list(runtime.tasks.values()), timeout=5)

    try:
        import uvloop
    except ImportError:
        asyncio.run(serve())
    else:
        uvloop.run(serve())


def _lead_own_process_group() -> None:
    """Lead a process group and take all of it down (the user's subprocesses too) once the parent is gone.

    Over SSH a dropped connection orphans the worker, and signals cannot be sent to it through the session (not
    for root logins), so it watches for itself; the client's explicit kill is ``kill -- -<pid>``.
    """
    with contextlib.suppress(OSError):
        os.setsid()  # fails only when it leads a session already, which is as good
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.25)
            if os.getppid() != parent:
                os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="gpuflex-parent-watch", daemon=True).start()


def main() -> None:
    if os.environ.get(OWN_GROUP_ENV):
        _lead_own_process_group()
    os.environ[IN_WORKER_ENV] = "1"
    proto_out = os.fdopen(os.dup(1), "wb")
    proto_in = os.fdopen(os.dup(0), "rb")
    os.dup2(2, 1)  # the user's prints go to stderr; stdout carries frames only
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    sys.stdout = sys.stderr
    _serve_stdio(proto_in, proto_out)


if __name__ == "__main__":
    main()

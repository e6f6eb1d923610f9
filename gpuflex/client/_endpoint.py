"""``@gpuflex.endpoint``: turn a function or class into something that runs on any backend."""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import itertools
import os
import sys
import typing
from pathlib import Path
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, overload

import cloudpickle

from .._bundle import find_project_root
from .._envelope import encode_call
from .._models import EndpointKind, EndpointSpec, FunctionRef, Resources
from ..errors import BatchError, ConfigError
from ..gpus import parse_gpu
from ..runtime._runner import IN_WORKER_ENV
from ._calls import abandon, async_stream, call_signature, first_done, owned_result, sync_stream

if typing.TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping, Sequence

    from .._job import Job
    from ..backend import Payload
    from ._session import Session
from ..progress import track

__all__ = ["Endpoint", "endpoint"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")



def _session() -> Session:
    """The process's session, imported on first call: a worker imports the endpoint's module (so this one) but
    never calls through it, and need not load the client's event loop, plugins and backends."""
    from ._session import get_session

    return get_session()

def _kind_of(obj: Any) -> EndpointKind:
    if inspect.isclass(obj):
        return EndpointKind.CLASS
    if inspect.isasyncgenfunction(obj):
        return EndpointKind.ASYNC_GENERATOR
    if inspect.isgeneratorfunction(obj):
        return EndpointKind.GENERATOR
    if inspect.iscoroutinefunction(obj):
        return EndpointKind.ASYNC_FUNCTION
    if callable(obj):
        return EndpointKind.FUNCTION
    raise ConfigError(f"@gpuflex.endpoint decorates functions and classes, not {type(obj).__name__}")


def _public_methods(cls: type) -> dict[str, EndpointKind]:
    methods = {}
    for name, member in inspect.getmembers(cls, callable):
        if name == "__call__" and "__call__" in vars(cls) or not name.startswith("_") and name != "setup":
            if not inspect.isclass(member):
                methods[name] = _kind_of(member)
    return methods


def _source_file(obj: Any) -> str | None:
    try:
        return inspect.getsourcefile(obj)
    except TypeError:
        return getattr(sys.modules.get(obj.__module__), "__file__", None)


def _function_ref(obj: Any, source_file: str | None, root: Path) -> FunctionRef:
    module, qualname = obj.__module__, obj.__qualname__
    by_value = "<locals>" in qualname or source_file is None or not Path(source_file).exists()
    if by_value:
        return FunctionRef(module=module, qualname=qualname, pickled=cloudpickle.dumps(obj))
    path = Path(source_file).resolve()  # type: ignore[arg-type]
    if module == "__main__":
        base = path.parent
    else:
        depth = module.count(".") + (2 if path.name == "__init__.py" else 1)
        base = path.parents[depth - 1]
    try:
        import_path = base.relative_to(root).as_posix() or "."
        script = path.relative_to(root).as_posix() if module == "__main__" else None
    except ValueError:  # outside the project (an installed package): import it from the environment
        if module == "__main__":
            return FunctionRef(module=module, qualname=qualname, pickled=cloudpickle.dumps(obj))
        import_path, script = ".", None
    return FunctionRef(module=module, qualname=qualname, import_path=import_path, path=script)


class _Aio:
    """``fn.aio``: async versions of the calls that would block an event loop."""

    def __init__(self, ep: Endpoint[Any, Any], method: str | None) -> None:
        self._ep, self._method = ep, method

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return await owned_result(self._ep._spawn(self._method, args, kwargs))

    def spawn(self, *args: Any, **kwargs: Any) -> Job:
        return self._ep._spawn(self._method, args, kwargs)

    async def map(self, *iterables: Iterable[Any], order: bool = True) -> AsyncIterator[Any]:
        """Like ``fn.map``; leaving the loop early (``break``, an exception, a cancelled task) cancels the calls it
        started that have not ended."""
        window = self._ep._map_window()
        pending: collections.deque[Job] = collections.deque()
        waits: set[asyncio.Future[Any]] = set()
        try:
            for args in zip(*iterables, strict=False):
                pending.append(self._ep._spawn(self._method, args, {}))
                if len(pending) >= window:
                    yield await pending[0].aresult()
                    pending.popleft()
            if order:
                while pending:
                    yield await pending[0].aresult()
                    pending.popleft()
                return
            waits = {asyncio.ensure_future(job.aresult()) for job in pending}
            for next_done in asyncio.as_completed(waits):
                yield await next_done
        finally:
            for wait in waits:
                wait.cancel()
            abandon(pending, wait=False)


def check_one_item(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """A call of a batched endpoint passes exactly one item (the worker makes the list)."""
    if len(args) != 1 or kwargs:
        raise BatchError(f"endpoint {name!r} is batched (max_batch_size): call it with exactly one item, e.g. "
                         f"{name}(item); it got {len(args)} positional and {len(kwargs)} keyword argument(s)")


def _one_item(fn: Callable[..., Any], kind: EndpointKind) -> Callable[..., Any]:
    """The user's batched function (list in, list out) called the way callers call it: one item in, one out."""
    def single(results: Any) -> Any:
        if not isinstance(results, (list, tuple)) or len(results) != 1:
            raise BatchError(f"a batched endpoint must return a list with one result per item: it got 1 item and "
                             f"returned {results!r:.80}")
        return results[0]

    if kind is EndpointKind.ASYNC_FUNCTION:
        async def call_async(item: Any) -> Any:
            return single(await fn([item]))

        return call_async
    return lambda item: single(fn([item]))


class _Callable:
    """One remotely callable thing (a function endpoint, or one method of a class endpoint)."""

    def __init__(
        self, ep: Endpoint[Any, Any], method: str | None, kind: EndpointKind, local: Callable[..., Any]
    ) -> None:
        if ep.spec.batched and kind in (EndpointKind.FUNCTION, EndpointKind.ASYNC_FUNCTION):
            local = _one_item(local, kind)  # .local(item) and nested calls pass one item, like remote callers
        self._ep, self._method, self._kind, self._local = ep, method, kind, local
        self.aio = _Aio(ep, method)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if os.environ.get(IN_WORKER_ENV):
            return self._local(*args, **kwargs)  # a nested call inside a worker runs in-process
        ep, method = self._ep, self._method
        if self._kind is EndpointKind.FUNCTION:
            job = ep._spawn(method, args, kwargs)
            try:
                return job.result()
            except BaseException:  # Ctrl-C (or any exit while waiting) stops the remote call too, not just the wait
                abandon([job], wait=True)
                raise
        if self._kind is EndpointKind.ASYNC_FUNCTION:
            return owned_result(ep._spawn(method, args, kwargs))
        if self._kind is EndpointKind.GENERATOR:
            return sync_stream(ep._spawn(method, args, kwargs, streaming=True))
        return async_stream(ep._spawn(method, args, kwargs, streaming=True))

    def local(self, *args: Any, **kwargs: Any) -> Any:
        """Run in this process, with no backend."""
        return self._local(*args, **kwargs)

    def spawn(self, *args: Any, **kwargs: Any) -> Job:
        """Start the call and return its :class:`gpuflex.Job` at once."""
        return self._ep._spawn(self._method, args, kwargs, streaming=self._kind.streams)

    def map(self, *iterables: Iterable[Any], order: bool = True) -> Iterator[Any]:
        """Call once per item (several iterables are zipped, like ``map``), with bounded concurrency.
        ``order=False`` yields results as they complete. On a terminal, a progress bar shows results received.
        Leaving early (Ctrl-C, ``break``, ``close()``, an exception, the iterator garbage-collected) cancels the calls
        it started that have not ended."""
        if self._kind.streams:
            raise ConfigError("map() is for endpoints that return a value; iterate a generator endpoint instead")
        sizes = [len(it) for it in iterables if hasattr(it, "__len__")]  # type: ignore[arg-type]
        total = min(sizes) if len(sizes) == len(iterables) and sizes else None
        return track(self._map(iterables, order), total=total, description=f"{self._ep.name}.map")

    def _map(self, iterables: tuple[Iterable[Any], ...], order: bool) -> Iterator[Any]:
        window = self._ep._map_window()
        pending: collections.deque[Job] = collections.deque()
        items = zip(*iterables, strict=False)
        exhausted = False
        try:
            while True:
                if not exhausted and len(pending) <= window // 2:  # refill in batches: one hop per batch
                    batch = [self._ep._encode(self._method, args, {})
                             for args in itertools.islice(items, window - len(pending))]
                    exhausted = not batch
                    if batch:
                        pending.extend(_session().spawn_many(self._ep, self._method, batch))
                if not pending:
                    return
                job = pending.popleft() if order else first_done(pending)
                try:
                    value = job.result()
                except BaseException:
                    pending.append(job)  # interrupted while waiting for it: cancel it with the rest
                    raise
                yield value
        finally:
            abandon(pending, wait=True)


@typing.final
class Endpoint(_Callable, Generic[P, R]):
    """What ``@gpuflex.endpoint`` returns. Call it like the original; see also ``local``, ``spawn``, ``map``
    and ``aio``. For a class, calling it gives a :class:`RemoteInstance` whose methods run remotely."""

    def __init__(self, obj: Any, options: Mapping[str, Any]) -> None:
        self.__gpuflex_raw__ = obj
        self._options = dict(options)
        kind = _kind_of(obj)
        self.source_file = _source_file(obj)
        self.project_root = find_project_root(Path(self.source_file)) if self.source_file else Path.cwd()
        methods = _public_methods(obj) if kind is EndpointKind.CLASS else {}
        if kind is EndpointKind.CLASS and not methods:
            raise ConfigError(f"class endpoint {obj.__qualname__} has no public methods or __call__ to call remotely")
        self.spec = _build_spec(obj, kind, methods, self.project_root, self.source_file, options)
        self.name = self.spec.name
        self._signatures: dict[str | None, inspect.Signature | None] = {}
        functools.update_wrapper(self, obj)
        local = obj if kind is not EndpointKind.CLASS else self._local_instance
        super().__init__(self, None, kind, local)

    def __repr__(self) -> str:
        return f"<gpuflex.Endpoint {self.name} ({self.spec.kind.value})>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.__gpuflex_raw__, self._options))

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if self.spec.kind is EndpointKind.CLASS:
            if args or kwargs:
                raise ConfigError(
                    f"class endpoint {self.name!r} is built by each worker with no arguments; "
                    "pass settings through env= or load them in setup()"
                )
            return typing.cast(R, RemoteInstance(self))
        return typing.cast(R, super().__call__(*args, **kwargs))

    def _local_instance(self) -> Any:
        instance = self.__gpuflex_raw__()
        if hasattr(instance, "setup"):
            instance.setup()
        return instance

    def _spawn(self, method: str | None, args: Sequence[Any], kwargs: Mapping[str, Any], *,
               streaming: bool = False) -> Job:
        payload = self._encode(method, args, kwargs)
        return _session().spawn(self, method, payload, streaming=streaming)

    def _encode(self, method: str | None, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Payload:
        """Check the arguments against the callable's signature (a wrong call fails here, as it would locally,
        without a round trip to a worker), then serialize them. A batched endpoint takes exactly one item (its
        function's own signature is for the list the worker makes)."""
        if self.spec.batched:
            check_one_item(self.name, args, kwargs)
            return encode_call(method, tuple(args), dict(kwargs))
        signature = self._signature(method)
        if signature is not None:
            try:
                signature.bind(*args, **kwargs)
            except TypeError as exc:
                label = self.name if method is None else f"{self.name}.{method}"
                raise TypeError(f"{label}(): {exc}") from None
        return encode_call(method, tuple(args), dict(kwargs))

    def _signature(self, method: str | None) -> inspect.Signature | None:
        if method not in self._signatures:
            self._signatures[method] = call_signature(self.__gpuflex_raw__, method, self.spec.kind)
        return self._signatures[method]

    def _map_window(self) -> int:
        return max(64, 8 * self.spec.max_workers * self.spec.calls_per_worker)


class RemoteInstance:
    """A class endpoint seen from the caller: each public method (and the instance itself, if the class defines
    ``__call__``) runs on a worker, where ``setup()`` ran once."""

    def __init__(self, ep: Endpoint[Any, Any]) -> None:
        self._ep = ep
        self._local_obj: Any = None

    def _local(self, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self._local_obj is None:
                self._local_obj = self._ep._local_instance()
            return getattr(self._local_obj, name)(*args, **kwargs)

        return call

    def __getattr__(self, name: str) -> Any:
        methods = self._ep.spec.methods
        if name in ("spawn", "map", "aio", "local") and name not in methods and "__call__" in methods:
            # instance.map(...) / instance.spawn(...) go to __call__, unless the class has a method of that name
            call = _Callable(self._ep, None, methods["__call__"], self._local("__call__"))
            return getattr(call, name)
        if name not in methods or name == "__call__":
            raise AttributeError(f"endpoint {self._ep.name!r} has no remote method {name!r}; it has {sorted(methods)}")
        return _Callable(self._ep, name, methods[name], self._local(name))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if "__call__" not in self._ep.spec.methods:
            raise TypeError(f"class endpoint {self._ep.name!r} defines no __call__")
        return _Callable(self._ep, None, self._ep.spec.methods["__call__"], self._local("__call__"))(*args, **kwargs)


def _rebuild(obj: Any, options: Mapping[str, Any]) -> Endpoint[Any, Any]:
    return Endpoint(obj, options)


def _build_spec(obj: Any, kind: EndpointKind, methods: dict[str, EndpointKind], root: Path,
                source_file: str | None, options: Mapping[str, Any]) -> EndpointSpec:
    def strings(key: str) -> tuple[str, ...]:
        value = options.get(key) or ()
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} must be a list of strings, got {value!r}")
        return tuple(value)

    return EndpointSpec(
        name=options.get("name") or obj.__name__,
        kind=kind,
        target=_function_ref(obj, source_file, root.resolve()),
        methods=methods,
        resources=Resources(gpu=parse_gpu(options.get("gpu")), cpu=options.get("cpu"),
                            memory=options.get("memory")),
        min_workers=options.get("min_workers", 0),
        max_workers=options.get("max_workers", 1),
        idle_timeout=options.get("idle_timeout", 60),
        timeout=options.get("timeout"),
        retries=options.get("retries", 0),
        concurrency=options.get("concurrency", 1),
        max_batch_size=options.get("max_batch_size"),
        batch_wait_ms=options.get("batch_wait_ms", 10.0),
        dependencies=strings("dependencies"),
        system_dependencies=strings("system_dependencies"),
        env=dict(options.get("env") or {}),
        secrets=strings("secrets"),
        backend=options.get("backend"),
    )


class _Decorator(Protocol):
    @overload
    def __call__(self, obj: type[T], /) -> Endpoint[[], T]: ...
    @overload
    def __call__(self, obj: Callable[P, R], /) -> Endpoint[P, R]: ...


class _BatchedDecorator(Protocol):
    """``@endpoint(max_batch_size=N)``: the function takes a list and returns a list; callers pass one item and
    get one result, so the endpoint's type is ``(item) -> result``."""

    @overload  # a class is callable too: its methods take the lists
    def __call__(self, obj: type[T], /) -> Endpoint[[], T]: ...  # type: ignore[overload-overlap]
    @overload
    def __call__(self, obj: Callable[[list[T]], Coroutine[Any, Any, list[R]]], /
                 ) -> Endpoint[[T], Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(self, obj: Callable[[list[T]], list[R]], /) -> Endpoint[[T], R]: ...


@overload
def endpoint(obj: type[T], /) -> Endpoint[[], T]: ...
@overload
def endpoint(obj: Callable[P, R], /) -> Endpoint[P, R]: ...
@overload
def endpoint(
    obj: None = None, /, *, name: str | None = None, gpu: Any = None, cpu: float | None = None,
    memory: int | None = None, min_workers: int = 0, max_workers: int = 1, idle_timeout: float = 60,
    timeout: float | None = None, retries: int = 0, concurrency: int = 1, max_batch_size: int,
    batch_wait_ms: float = 10.0, dependencies: Sequence[str] = (), system_dependencies: Sequence[str] = (),
    env: Mapping[str, str] | None = None, secrets: Sequence[str] = (), backend: str | None = None,
) -> _BatchedDecorator: ...
@overload
def endpoint(
    obj: None = None, /, *, name: str | None = None, gpu: Any = None, cpu: float | None = None,
    memory: int | None = None, min_workers: int = 0, max_workers: int = 1, idle_timeout: float = 60,
    timeout: float | None = None, retries: int = 0, concurrency: int = 1, max_batch_size: None = None,
    batch_wait_ms: float = 10.0, dependencies: Sequence[str] = (), system_dependencies: Sequence[str] = (),
    env: Mapping[str, str] | None = None, secrets: Sequence[str] = (), backend: str | None = None,
) -> _Decorator: ...
def endpoint(
    obj: Any = None, /, *, name: str | None = None, gpu: Any = None, cpu: float | None = None,
    memory: int | None = None, min_workers: int = 0, max_workers: int = 1, idle_timeout: float = 60,
    timeout: float | None = None, retries: int = 0, concurrency: int = 1, max_batch_size: int | None = None,
    batch_wait_ms: float = 10.0, dependencies: Sequence[str] = (), system_dependencies: Sequence[str] = (),
    env: Mapping[str, str] | None = None, secrets: Sequence[str] = (), backend: str | None = None,
) -> Any:
    """Make a function or class runnable on any backend. Use bare (``@endpoint``) or with options.

    :param name: the endpoint's name (default: the function's); unique per project.
    :param gpu: ``"H100"``, ``"A100-80GB"``, ``"L4:2"``, ``"any"``, a RunPod pool (``"ADA_24"``), a family dict
        (``{"Ada": 1}``), a list (ordered fallback) or :class:`gpuflex.GPU`. ``None``: no GPU.
    :param cpu: CPU cores per worker. :param memory: MiB per worker.
    :param min_workers: workers kept warm even when idle. :param max_workers: the most workers at once.
    :param idle_timeout: seconds an idle worker waits for work before it stops.
    :param timeout: seconds one call may run before it is stopped (``JobTimeout``).
    :param retries: extra attempts after a failure (the function raised, or its worker died).
    :param concurrency: calls one worker runs at once (threads for sync functions, tasks for async ones); with
        batching, batches one worker runs at once.
    :param max_batch_size: batch calls on the worker: the function takes a list of items and returns a list of
        results of the same length, while each caller passes one item and gets one result; calls from every
        caller are grouped into lists of up to this many (``None``: no batching).
    :param batch_wait_ms: how long a batch waits for more items after its first one arrived, at most.
    :param dependencies: pip requirements the function needs; checked (or installed) before the first call.
    :param system_dependencies: OS packages (apt) the function needs, for backends that build images.
    :param env: environment variables set on workers. :param secrets: names of environment variables copied
        from the caller's environment to workers (never logged).
    :param backend: run this endpoint on this backend whatever else is active.
    """
    options = {k: v for k, v in locals().items() if k != "obj"}

    def wrap(target: Any) -> Endpoint[Any, Any]:
        return Endpoint(target, options)

    return wrap(obj) if obj is not None else wrap

"""The fake's data plane: every container is a process of its own running Modal's container entrypoint, unmodified
(``python -m modal._container_entrypoint``), as a Modal worker runs it.

Each container gets its own gRPC server on 127.0.0.1 (its worker's address, ``MODAL_SERVER_URL``) answering the
container's RPCs: ``FunctionGetInputs`` hands it inputs as they are queued, ``FunctionPutOutputs`` and
``FunctionCallPutDataOut`` carry results and generator items back, ``ContainerHeartbeat`` delivers cancellations,
``TaskResult`` reports a start-up failure. Its file system is the function's mounts materialised under a directory
of its own (``/root/...`` becomes ``<dir>/root/...``, its working directory), and its Python is this one (which
stands in for the image's: same version, the runtime's packages installed).

What Modal's workers enforce, the fake enforces (https://modal.com/docs/guide/timeouts, /guide/retries):

* ``startup_timeout_secs`` bounds a container's start (imports, ``@modal.enter``) until it asks for its first
  input; ``timeout_secs`` bounds each input's execution, not its queueing. A call past its timeout fails with
  ``GENERIC_STATUS_TIMEOUT`` and its container is killed (a sync function cannot be interrupted otherwise).
* A container that dies while running inputs has them rescheduled on a new container; after ``crash_limit``
  attempts an input fails. A container that fails to start (an exception in ``@modal.enter``, a start-up
  timeout) is replaced; after ``startup_failure_limit`` failures in a row the function's queued inputs fail with
  the start-up error.
* ``max_containers`` bounds how many run at once, idle ones stop after ``scaledown_window`` (down to
  ``min_containers``), a cancel reaches the container through its heartbeat, and ``terminate_containers`` kills it.
* Every line a container prints goes to its app's log stream (``AppGetLogs``), marked with the task, function and
  the input it was running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from typing import TYPE_CHECKING

from _fake_container import Call, Container, ContainerServicer, Input, Pool
from _fake_logs import close_connections, tracked
from grpclib.server import Server
from modal_proto import api_pb2

if TYPE_CHECKING:
    from pathlib import Path

R = api_pb2.GenericResult
HEARTBEAT_SECONDS = "0.5"  # Modal's client heartbeats every 15 s; the fake's containers every 0.5 s (env setting)


class Workers:
    """Modal's workers for every app of the fake: scheduling, containers, limits, logs."""

    crash_limit = 2  # attempts of one input on containers that die under it
    startup_failure_limit = 2

    def __init__(self, control, root: Path) -> None:
        self.control = control  # the FakeModal servicer: functions, apps, mounts, secrets, blobs
        self.root = root
        self.calls: dict[str, Call] = {}
        self.inputs: dict[str, Input] = {}
        self.pools: dict[str, Pool] = {}
        self.containers: dict[str, Container] = {}
        self.started: list[str] = []  # task ids, in start order
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def pool(self, function_id: str) -> Pool:
        return self.pools.setdefault(function_id, Pool())

    def live(self, function_id: str) -> list[Container]:
        return [c for c in self.pool(function_id).containers if not c.stopping]

    # -- calls ---------------------------------------------------------------------------------------------------

    async def submit(self, call: Call, input_id: str, data: api_pb2.FunctionInput, invocation_type: int) -> None:
        self.calls[call.id] = call
        item = Input(input_id, call, data, invocation_type)
        self.inputs[input_id] = item
        await self._enqueue(item)

    async def _enqueue(self, item: Input) -> None:
        pool = self.pool(item.call.function_id)
        pool.queue.append(item)
        await self._scale(item.call.function_id)
        pool.wake.fire()

    async def _scale(self, function_id: str) -> None:
        """Start containers for queued inputs, up to max_containers (and at least min_containers)."""
        function = self.control.functions[function_id]
        settings = function.autoscaler_settings
        limit = settings.max_containers or 100
        pool = self.pool(function_id)
        live = self.live(function_id)
        starting = sum(1 for c in live if not c.ready)
        idle = sum(1 for c in live if c.ready and c.waiting)
        wanted = max(len(pool.queue) - starting - idle, settings.min_containers - len(live))
        for _ in range(min(wanted, limit - len(live))):
            await self.start_container(function_id)

    async def finish(self, item: Input, result: api_pb2.GenericResult, data_format: int) -> None:
        if item.done:
            return
        item.done = True
        if item.timer is not None and item.timer is not asyncio.current_task():
            item.timer.cancel()
        if item.container is not None:
            item.container.running.pop(item.id, None)
            item.container.idle_since = time.monotonic()
        with contextlib.suppress(ValueError):
            self.pool(item.call.function_id).queue.remove(item)
        item.call.result = (result, data_format)
        item.call.changed.fire()

    async def output(self, container: Container, output: api_pb2.FunctionPutOutputsItem) -> None:
        item = self.inputs.get(output.input_id)
        if item is not None and item.container is container:
            await self.finish(item, output.result, output.data_format)

    async def cancel(self, call_id: str, terminate: bool) -> None:
        terminated = R(status=R.GENERIC_STATUS_TERMINATED)
        for item in [i for i in self.inputs.values() if i.call.id == call_id and not i.done]:
            container = item.container
            if container is None:
                await self.finish(item, terminated, api_pb2.DATA_FORMAT_PICKLE)
            elif terminate:  # Modal kills the container; its other inputs are rescheduled
                await self.finish(item, terminated, api_pb2.DATA_FORMAT_PICKLE)
                await self.kill(container, expected=False)
            else:
                container.cancels.append(item.id)

    # -- what a container asks for -----------------------------------------------------------------------------

    async def next_input(self, container: Container) -> api_pb2.FunctionGetInputsItem | None:
        pool = self.pool(container.function_id)
        if not container.ready:
            container.ready = True
            pool.startup_failures = 0
        function = self.control.functions[container.function_id]
        deadline = time.monotonic() + 5.0
        while not container.stopping:
            while pool.queue:
                item = pool.queue.popleft()
                if item.done:
                    continue
                return self._assign(container, item, function)
            idle_for = time.monotonic() - container.idle_since
            window = function.autoscaler_settings.scaledown_window or 60
            if (not container.running and idle_for >= window
                    and len(self.live(container.function_id)) > function.autoscaler_settings.min_containers):
                container.stopping = True
                break
            if time.monotonic() >= deadline:
                return None
            container.waiting = True
            try:
                await pool.wake.wait(min(1.0, max(0.05, window - idle_for)))
            finally:
                container.waiting = False
        return api_pb2.FunctionGetInputsItem(kill_switch=True)

    def _assign(self, container: Container, item: Input, function: api_pb2.Function) -> api_pb2.FunctionGetInputsItem:
        item.container = container
        container.running[item.id] = item
        item.timer = asyncio.get_running_loop().create_task(self._time_out(item, function.timeout_secs or 300))
        return api_pb2.FunctionGetInputsItem(
            input_id=item.id, input=item.data, function_call_id=item.call.id, retry_count=item.retry_count,
            function_call_invocation_type=item.invocation_type)

    async def _time_out(self, item: Input, seconds: int) -> None:
        await asyncio.sleep(seconds)
        container = item.container
        await self.finish(item, R(status=R.GENERIC_STATUS_TIMEOUT,
                                  exception=f"Function call timed out after {seconds} s (timeout)"),
                          api_pb2.DATA_FORMAT_PICKLE)
        if container is not None:
            await self.kill(container, expected=False)

    # -- containers ----------------------------------------------------------------------------------------------

    async def start_container(self, function_id: str) -> Container:
        function = self.control.functions[function_id]
        app_id = self.control.function_apps[function_id]
        container = Container(self.control.new_id("ta"), function_id, app_id)
        self.containers[container.task_id] = container
        self.pool(function_id).containers.append(container)
        self.started.append(container.task_id)
        container.server = tracked(Server([ContainerServicer(self, container)]))
        await container.server.start("127.0.0.1", 0)
        port = container.server._server.sockets[0].getsockname()[1]
        home = self.root / "tasks" / container.task_id
        cwd = self.control.materialise(function, home)
        arguments = home / "container-arguments.bin"
        arguments.write_bytes(api_pb2.ContainerArguments(
            task_id=container.task_id, function_id=function_id, app_id=app_id, function_def=function,
            environment_name="main", app_layout=self.control.layout(app_id)).SerializeToString())
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "PYTHONUNBUFFERED": "1",
               "MODAL_IS_REMOTE": "1", "MODAL_SERVER_URL": f"http://127.0.0.1:{port}",
               "MODAL_TASK_ID": container.task_id, "MODAL_CONTAINER_ARGUMENTS_PATH": str(arguments),
               "MODAL_HEARTBEAT_INTERVAL": HEARTBEAT_SECONDS, **self.control.environment_of(function)}
        container.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "modal._container_entrypoint", cwd=cwd, env=env, start_new_session=True,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        self._spawn(self._pump(container, container.process.stdout, api_pb2.FILE_DESCRIPTOR_STDOUT))
        self._spawn(self._pump(container, container.process.stderr, api_pb2.FILE_DESCRIPTOR_STDERR))
        self._spawn(self._watch(container, function.startup_timeout_secs or function.timeout_secs or 300))
        return container

    async def _pump(self, container: Container, pipe, descriptor: int) -> None:
        while line := await pipe.readline():
            running = list(container.running.values())
            current = running[0] if len(running) == 1 else None
            self.control.logs(container.app_id).add(api_pb2.TaskLogsBatch(
                task_id=container.task_id, function_id=container.function_id,
                input_id=current.id if current else "",
                items=[api_pb2.TaskLogs(data=line.decode(errors="replace"), file_descriptor=descriptor,
                                        timestamp=time.time(), input_id=current.id if current else "",
                                        function_call_id=current.call.id if current else "",
                                        container_id=container.task_id)]))

    async def _watch(self, container: Container, startup_timeout: int) -> None:
        """Enforce the start-up timeout, then handle the container's exit."""
        assert container.process is not None
        try:
            await asyncio.wait_for(asyncio.shield(container.process.wait()), startup_timeout)
        except TimeoutError:
            if not container.ready:
                container.startup_error = R(
                    status=R.GENERIC_STATUS_INIT_FAILURE,
                    exception=f"the container did not start within {startup_timeout} s (startup_timeout)")
                await self.kill(container, expected=False)
            await container.process.wait()
        await self._exited(container)

    async def _exited(self, container: Container) -> None:
        code = container.process.returncode if container.process else None
        pool = self.pool(container.function_id)
        with contextlib.suppress(ValueError):
            pool.containers.remove(container)
        if container.server is not None:
            container.server.close()
            close_connections(container.server)
        if not container.ready and not container.stopping or container.startup_error is not None:
            pool.startup_failures += 1
            if pool.startup_failures >= self.startup_failure_limit:
                error = container.startup_error or R(
                    status=R.GENERIC_STATUS_FAILURE, exception=f"the container exited during start-up ({code})")
                for item in list(pool.queue):
                    await self.finish(item, error, api_pb2.DATA_FORMAT_PICKLE)
                pool.startup_failures = 0
        for item in list(container.running.values()):  # died under its inputs: reschedule them
            container.running.pop(item.id, None)
            if item.timer is not None:
                item.timer.cancel()
            item.container = None
            item.retry_count += 1
            if item.retry_count >= self.crash_limit:
                await self.finish(item, R(status=R.GENERIC_STATUS_FAILURE,
                                          exception=f"the container running this input exited ({code}) "
                                                    f"{item.retry_count} times"), api_pb2.DATA_FORMAT_PICKLE)
            else:
                await self._enqueue(item)
        if pool.queue and not self.control.stopped(container.app_id):
            await self._scale(container.function_id)

    async def kill(self, container: Container, *, expected: bool = True) -> None:
        """Kill a container's processes. ``expected``: stopped on purpose (scale-down, app stop), not a crash."""
        container.stopping = container.stopping or expected
        if container.process is not None and container.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(container.process.pid, signal.SIGKILL)

    async def stop_app(self, app_id: str) -> None:
        for pool in self.pools.values():
            for container in [c for c in pool.containers if c.app_id == app_id]:
                await self.kill(container)
            for item in [i for i in pool.queue if i.call.app_id == app_id]:
                await self.finish(item, R(status=R.GENERIC_STATUS_TERMINATED), api_pb2.DATA_FORMAT_PICKLE)

    async def close(self) -> None:
        for container in list(self.containers.values()):
            await self.kill(container)
            if container.process is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(container.process.wait(), 5)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for container in self.containers.values():  # the exit watchers close them, unless cancelled first
            if container.server is not None:
                container.server.close()
                close_connections(container.server)

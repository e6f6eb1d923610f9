"""The fake's pieces of one container's life: a call and its input, a container (its process and its worker's
gRPC server), a function's pool of them, and what that worker server answers the container (Modal's container
RPCs: hello, heartbeats carrying cancellations, inputs, outputs, generator data, start-up failures, blobs)."""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING

from _fake_logs import Signal
from google.protobuf import empty_pb2
from modal._utils.grpc_testing import patch_mock_servicer
from modal_proto import api_grpc, api_pb2

if TYPE_CHECKING:
    import asyncio

    from _fake_workers import Workers
    from grpclib.server import Server


class Call:
    """One function call: its input, its generator items (data out) and its result."""

    def __init__(self, call_id: str, function_id: str, app_id: str) -> None:
        self.id, self.function_id, self.app_id = call_id, function_id, app_id
        self.chunks: list[api_pb2.DataChunk] = []  # data out: generator items, a web function's ASGI messages
        self.data_in: list[api_pb2.DataChunk] = []  # data in: a web request's body
        self.result: tuple[api_pb2.GenericResult, int] | None = None
        self.changed = Signal()


class Input:
    def __init__(self, input_id: str, call: Call, data: api_pb2.FunctionInput, invocation_type: int) -> None:
        self.id, self.call, self.data, self.invocation_type = input_id, call, data, invocation_type
        self.retry_count = 0
        self.container: Container | None = None
        self.timer: asyncio.Task[None] | None = None
        self.done = False


class Container:
    def __init__(self, task_id: str, function_id: str, app_id: str) -> None:
        self.task_id, self.function_id, self.app_id = task_id, function_id, app_id
        self.process: asyncio.subprocess.Process | None = None
        self.server: Server | None = None
        self.born = time.monotonic()
        self.ready = False  # asked for its first input: start-up is over
        self.running: dict[str, Input] = {}
        self.cancels: list[str] = []
        self.stopping = False  # told to stop (kill switch, app stopped, killed on purpose)
        self.startup_error: api_pb2.GenericResult | None = None
        self.idle_since = time.monotonic()
        self.waiting = False


class Pool:
    """The containers and queued inputs of one function."""

    def __init__(self) -> None:
        self.queue: deque[Input] = deque()
        self.containers: list[Container] = []
        self.startup_failures = 0
        self.wake = Signal()


@patch_mock_servicer
class ContainerServicer(api_grpc.ModalClientBase):
    """What one container's worker answers."""

    def __init__(self, workers: Workers, container: Container) -> None:
        self.workers, self.container = workers, container

    async def ContainerHello(self, stream):
        await stream.recv_message()
        await stream.send_message(empty_pb2.Empty())

    async def ContainerHeartbeat(self, stream):
        await stream.recv_message()
        response = api_pb2.ContainerHeartbeatResponse()
        if self.container.cancels:
            ids, self.container.cancels = self.container.cancels, []
            response.cancel_input_event.CopyFrom(api_pb2.CancelInputEvent(input_ids=ids))
        await stream.send_message(response)

    async def FunctionGetInputs(self, stream):
        await stream.recv_message()
        item = await self.workers.next_input(self.container)
        await stream.send_message(api_pb2.FunctionGetInputsResponse(inputs=[item] if item else []))

    async def FunctionGetDynamicConcurrency(self, stream):
        request = await stream.recv_message()
        await stream.send_message(api_pb2.FunctionGetDynamicConcurrencyResponse(concurrency=request.max_concurrency))

    async def FunctionPutOutputs(self, stream):
        request = await stream.recv_message()
        for item in request.outputs:
            await self.workers.output(self.container, item)
        await stream.send_message(empty_pb2.Empty())

    async def FunctionCallPutDataOut(self, stream):
        request = await stream.recv_message()
        call = self.workers.calls[request.function_call_id]
        call.chunks.extend(request.data_chunks)
        call.changed.fire()
        await stream.send_message(empty_pb2.Empty())

    async def FunctionCallGetDataIn(self, stream):
        """A web function's request messages, held open until its call ends (as Modal's stream is)."""
        request = await stream.recv_message()
        call = self.workers.calls[request.function_call_id]
        sent = request.last_index
        deadline = time.monotonic() + 55
        while call.result is None and time.monotonic() < deadline:
            for chunk in [c for c in call.data_in if c.index > sent]:
                await stream.send_message(chunk)
                sent = chunk.index
            await call.changed.wait(1.0)

    async def TaskResult(self, stream):
        request = await stream.recv_message()
        self.container.startup_error = request.result
        await stream.send_message(empty_pb2.Empty())

    async def ContainerStop(self, stream):
        await stream.recv_message()
        self.container.stopping = True
        await stream.send_message(api_pb2.ContainerStopResponse())

    async def BlobCreate(self, stream):
        await stream.send_message(self.workers.control.blob_create(await stream.recv_message()))

    async def BlobGet(self, stream):
        await stream.send_message(self.workers.control.blob_get(await stream.recv_message()))

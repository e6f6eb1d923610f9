"""A fake of Modal's control plane on 127.0.0.1, built on the helper the ``modal`` wheel ships
(``modal._utils.grpc_testing.patch_mock_servicer``): enough RPCs for the real client's ``app.run()`` and
``app.deploy()`` to complete, each request recorded so tests can assert exactly what would be created.

Calls run too, the way a container would run them but in this process: ``FunctionMap`` takes an input, the fake
unpickles the class the client serialized, runs its ``@modal.enter`` methods once (one warm "container" per
class), calls the method the input names and keeps the result for ``FunctionGetOutputs``; a generator's items go
out through ``FunctionCallGetDataOut`` and ``FunctionCallCancel`` cancels the call. Large inputs go through a blob
store on 127.0.0.1 (HTTP PUT/GET, as Modal's S3 URLs); every RPC not written here answers UNIMPLEMENTED, as the
helper makes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import threading
import traceback

from aiohttp import web
from google.protobuf import empty_pb2
from grpclib.server import Server
from modal._partial_function import _PartialFunctionFlags
from modal._serialization import deserialize, serialize
from modal._utils.async_utils import synchronizer
from modal._utils.grpc_testing import patch_mock_servicer
from modal_proto import api_grpc, api_pb2

SUCCESS = api_pb2.GenericResult.GENERIC_STATUS_SUCCESS
MAX_INLINE_BYTES = 2 * 2**20  # Modal's limits on inputs sent inline; larger ones go to the blob store
MAX_ASYNC_INLINE_BYTES = 8 * 2**10  # for .spawn


@patch_mock_servicer
class FakeModal(api_grpc.ModalClientBase):
    def __init__(self) -> None:
        self.requests: list[tuple[str, object]] = []
        self._n = 0
        self.created: dict[str, object] = {}  # function id -> Function proto
        self.instances: dict[str, object] = {}  # function id -> the class instance, after its enter methods
        self.calls: dict[str, _Call] = {}
        self.executed = 0
        self.blobs: dict[str, bytes] = {}
        self.blob_url = ""  # set by FakeModalServer

    def _id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}-{self._n}"

    async def _recv(self, stream):
        request = await stream.recv_message()
        self.requests.append((type(request).__name__.removesuffix("Request"), request))
        return request

    def of(self, kind):
        return [request for name, request in self.requests if name == kind]

    async def AppCreate(self, stream):
        await self._recv(stream)
        await stream.send_message(api_pb2.AppCreateResponse(app_id=self._id("ap")))

    async def AppGetByDeploymentName(self, stream):
        await self._recv(stream)  # never deployed before: an empty answer
        await stream.send_message(api_pb2.AppGetByDeploymentNameResponse())

    async def AppGetOrCreate(self, stream):
        await self._recv(stream)
        await stream.send_message(api_pb2.AppGetOrCreateResponse(app_id=self._id("ap")))

    async def EnvironmentGetOrCreate(self, stream):
        await self._recv(stream)
        settings = api_pb2.EnvironmentSettings(image_builder_version="2025.06")
        await stream.send_message(api_pb2.EnvironmentGetOrCreateResponse(
            environment_id="en-1", metadata=api_pb2.EnvironmentMetadata(settings=settings)))

    async def FunctionPrecreate(self, stream):
        await self._recv(stream)
        await stream.send_message(api_pb2.FunctionPrecreateResponse(function_id=self._id("fu")))

    async def AppHeartbeat(self, stream):
        await stream.recv_message()
        await stream.send_message(empty_pb2.Empty())

    async def MountGetOrCreate(self, stream):
        await self._recv(stream)
        await stream.send_message(api_pb2.MountGetOrCreateResponse(
            mount_id=self._id("mo"), handle_metadata=api_pb2.MountHandleMetadata(content_checksum_sha256_hex="0")))

    async def MountBatchedCheckExistence(self, stream):
        await self._recv(stream)  # every file is "already stored": the mount request still lists them all
        await stream.send_message(api_pb2.MountBatchedCheckExistenceResponse(missing_sha256_hex_hashes=[]))

    def mounted_files(self):
        return sorted(f.filename for request in self.of("MountGetOrCreate") for f in request.files)

    async def MountPutFile(self, stream):
        await self._recv(stream)
        await stream.send_message(api_pb2.MountPutFileResponse(exists=True))

    async def ImageGetOrCreate(self, stream):
        await self._recv(stream)
        await stream.send_message(api_pb2.ImageGetOrCreateResponse(
            image_id=self._id("im"),
            result=api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS)))

    async def SecretGetOrCreate(self, stream):
        await self._recv(stream)
        await stream.send_message(api_pb2.SecretGetOrCreateResponse(secret_id=self._id("st")))

    async def FunctionCreate(self, stream):
        request = await self._recv(stream)
        function = _function_of(request)
        data = request.function_data if request.HasField("function_data") else api_pb2.FunctionData(
            ranked_functions=[api_pb2.FunctionData.RankedFunction(rank=0, function=function)])
        function_id = request.existing_function_id or self._id("fu")
        self.created[function_id] = function
        methods = {
            name: api_pb2.FunctionHandleMetadata(function_name=f"{function.function_name.removesuffix('.*')}.{name}",
                                                 function_type=definition.function_type, is_method=True,
                                                 use_method_name=name, max_object_size_bytes=MAX_INLINE_BYTES,
                                                           max_async_object_size_bytes=MAX_ASYNC_INLINE_BYTES)
            for name, definition in function.method_definitions.items()
        }
        await stream.send_message(api_pb2.FunctionCreateResponse(
            function_id=function_id,
            handle_metadata=api_pb2.FunctionHandleMetadata(function_name=function.function_name,
                                                           function_type=function.function_type,
                                                           method_handle_metadata=methods,
                                                           max_object_size_bytes=MAX_INLINE_BYTES,
                                                           max_async_object_size_bytes=MAX_ASYNC_INLINE_BYTES),
            function_data=data))

    # -- blobs ---------------------------------------------------------------------------------------------------

    async def BlobCreate(self, stream):
        await self._recv(stream)
        blob_id = self._id("bl")
        urls = api_pb2.UploadUrlList(items=[f"{self.blob_url}/{blob_id}"])
        await stream.send_message(api_pb2.BlobCreateResponse(blob_ids=[blob_id], upload_urls=urls))

    async def BlobGet(self, stream):
        request = await self._recv(stream)
        await stream.send_message(api_pb2.BlobGetResponse(download_url=f"{self.blob_url}/{request.blob_id}"))

    def _input_args(self, function_input):
        if function_input.args_blob_id:
            return self.blobs[function_input.args_blob_id]
        return function_input.args

    # -- calls ---------------------------------------------------------------------------------------------------

    async def FunctionMap(self, stream):
        request = await self._recv(stream)
        call = _Call(self._id("fc"))
        self.calls[call.id] = call
        item = request.pipelined_inputs[0]
        call.task = asyncio.get_running_loop().create_task(self._execute(call, request.function_id, item.input))
        await stream.send_message(api_pb2.FunctionMapResponse(
            function_call_id=call.id,
            pipelined_inputs=[api_pb2.FunctionPutInputsResponseItem(idx=0, input_id=self._id("in"),
                                                                     input_jwt="jwt")]))

    async def _instance(self, function_id):
        if function_id not in self.instances:
            cls = deserialize(self.created[function_id].class_serialized, None)
            instance = cls()
            for value in vars(cls).values():
                impl = synchronizer._translate_in(value) if type(value).__name__ == "PartialFunction" else None
                if impl is not None and impl.flags & _PartialFunctionFlags.ENTER_POST_SNAPSHOT:
                    result = impl._get_raw_f()(instance)
                    if inspect.isawaitable(result):
                        await result
            self.instances[function_id] = instance
        return self.instances[function_id]

    async def _execute(self, call, function_id, function_input):
        self.executed += 1
        try:
            instance = await self._instance(function_id)
            cls = type(instance)
            method = synchronizer._translate_in(vars(cls)[function_input.method_name])._get_raw_f()
            args, kwargs = deserialize(self._input_args(function_input), None)
            definition = self.created[function_id].method_definitions[function_input.method_name]
            if definition.function_type == api_pb2.Function.FUNCTION_TYPE_GENERATOR:
                count = 0
                async for item in method(instance, *args, **kwargs):
                    count += 1
                    call.chunks.append(api_pb2.DataChunk(data_format=api_pb2.DATA_FORMAT_PICKLE,
                                                         data=serialize(item), index=count))
                    call.wake()
                done = api_pb2.GeneratorDone(items_total=count).SerializeToString()
                call.finish(api_pb2.GenericResult(status=SUCCESS, data=done), api_pb2.DATA_FORMAT_GENERATOR_DONE)
            else:
                value = await method(instance, *args, **kwargs)
                call.finish(api_pb2.GenericResult(status=SUCCESS, data=serialize(value)), api_pb2.DATA_FORMAT_PICKLE)
        except asyncio.CancelledError:
            call.finish(api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_TERMINATED,
                                              exception="cancelled"), api_pb2.DATA_FORMAT_PICKLE)
        except Exception as exc:  # what a crashing container reports
            call.finish(api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_FAILURE,
                                              exception=repr(exc), traceback=traceback.format_exc(),
                                              data=serialize(exc)), api_pb2.DATA_FORMAT_PICKLE)

    async def FunctionGetOutputs(self, stream):
        request = await self._recv(stream)
        call = self.calls[request.function_call_id]
        if call.result is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call.done.wait(), timeout=max(0.0, request.timeout))
        if call.result is None:
            await stream.send_message(api_pb2.FunctionGetOutputsResponse(num_unfinished_inputs=1))
            return
        result, data_format = call.result
        item = api_pb2.FunctionGetOutputsItem(result=result, idx=0, data_format=data_format)
        await stream.send_message(api_pb2.FunctionGetOutputsResponse(outputs=[item], num_unfinished_inputs=0))

    async def FunctionCallGetDataOut(self, stream):
        request = await stream.recv_message()
        call = self.calls[request.function_call_id]
        sent = request.last_index
        while True:
            for chunk in call.chunks[sent:]:
                await stream.send_message(chunk)
                sent = chunk.index
            if call.result is not None and sent >= len(call.chunks):
                return
            await call.changed()

    async def FunctionCallCancel(self, stream):
        request = await self._recv(stream)
        call = self.calls.get(request.function_call_id)
        if call is not None and call.task is not None and not call.task.done():
            call.task.cancel()
        await stream.send_message(empty_pb2.Empty())

    async def ClassCreate(self, stream):
        await self._recv(stream)
        await stream.send_message(api_pb2.ClassCreateResponse(class_id=self._id("cs")))

    async def AppPublish(self, stream):
        await self._recv(stream)
        await stream.send_message(api_pb2.AppPublishResponse(url="https://modal.example/fake"))

    async def AppClientDisconnect(self, stream):
        await self._recv(stream)
        await stream.send_message(empty_pb2.Empty())

    async def AppStop(self, stream):
        await self._recv(stream)
        await stream.send_message(empty_pb2.Empty())

    def functions(self):
        """The functions the client created, by name, as the last request sent them."""
        out = {}
        for request in self.of("FunctionCreate"):
            function = _function_of(request)
            out[function.function_name] = (function, request)
        return out

    def dockerfiles(self):
        return [list(request.image.dockerfile_commands) for request in self.of("ImageGetOrCreate")]


def _function_of(request):
    """The function a FunctionCreate request defines (newer clients send it inside ``function_data``)."""
    if request.HasField("function_data"):
        return request.function_data.ranked_functions[0].function
    return request.function


class _Call:
    """One function call in the fake: its task, its generator chunks and its result."""

    def __init__(self, call_id: str) -> None:
        self.id = call_id
        self.task: asyncio.Task[None] | None = None
        self.chunks: list[object] = []
        self.result: tuple[object, int] | None = None
        self.done = asyncio.Event()
        self._changed = asyncio.Event()

    def wake(self) -> None:
        self._changed.set()

    async def changed(self) -> None:
        await self._changed.wait()
        self._changed.clear()

    def finish(self, result, data_format) -> None:
        self.result = (result, data_format)
        self.done.set()
        self.wake()


class FakeModalServer:
    """The fake on its own thread and event loop, on 127.0.0.1 and a free port."""

    def __init__(self) -> None:
        self.servicer = FakeModal()
        self.loop = asyncio.new_event_loop()
        self.port = 0
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.server = Server([self.servicer])
            self.loop.run_until_complete(self.server.start("127.0.0.1", 0))
            self.port = self.server._server.sockets[0].getsockname()[1]
            self.loop.run_until_complete(self._start_blob_store())
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="fake-modal", daemon=True)
        self.thread.start()
        started.wait(10)

    async def _start_blob_store(self) -> None:
        """Blobs over HTTP on 127.0.0.1: PUT answers the content's md5 as its ETag, as S3 does."""
        blobs = self.servicer.blobs

        async def put(request: web.Request) -> web.Response:
            data = await request.read()
            blobs[request.match_info["blob_id"]] = data
            return web.Response(headers={"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

        async def get(request: web.Request) -> web.Response:
            return web.Response(body=blobs[request.match_info["blob_id"]])

        app = web.Application(client_max_size=2**31)
        app.router.add_put("/blob/{blob_id}", put)
        app.router.add_get("/blob/{blob_id}", get)
        self.blob_runner = web.AppRunner(app)
        await self.blob_runner.setup()
        site = web.TCPSite(self.blob_runner, "127.0.0.1", 0)
        await site.start()
        port = self.blob_runner.addresses[0][1]
        self.servicer.blob_url = f"http://127.0.0.1:{port}/blob"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()
            await self.blob_runner.cleanup()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:  # calls still running in the "containers"
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

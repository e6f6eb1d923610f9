"""A fake of Modal's control plane on 127.0.0.1, built on the helper the ``modal`` wheel ships
(``modal._utils.grpc_testing.patch_mock_servicer``): enough RPCs for the real client's ``app.run()`` and
``app.deploy()`` to complete, each request recorded so tests can assert exactly what would be created.

It does not run functions: ``FunctionMap`` and the other call RPCs answer UNIMPLEMENTED, as the helper makes every
RPC not written here do.
"""

from __future__ import annotations

import asyncio
import threading

from google.protobuf import empty_pb2
from grpclib.server import Server
from modal._utils.grpc_testing import patch_mock_servicer
from modal_proto import api_grpc, api_pb2


@patch_mock_servicer
class FakeModal(api_grpc.ModalClientBase):
    def __init__(self) -> None:
        self.requests: list[tuple[str, object]] = []
        self._n = 0

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
        if request.HasField("function_data"):
            data, function = request.function_data, request.function_data.ranked_functions[0].function
        else:
            function = request.function
            data = api_pb2.FunctionData(ranked_functions=[api_pb2.FunctionData.RankedFunction(rank=0,
                                                                                              function=function)])
        await stream.send_message(api_pb2.FunctionCreateResponse(
            function_id=request.existing_function_id or self._id("fu"),
            handle_metadata=api_pb2.FunctionHandleMetadata(function_name=function.function_name),
            function_data=data))

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
            function = request.function if request.HasField("function") else \
                request.function_data.ranked_functions[0].function
            out[function.function_name] = (function, request)
        return out

    def dockerfiles(self):
        return [list(request.image.dockerfile_commands) for request in self.of("ImageGetOrCreate")]


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
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="fake-modal", daemon=True)
        self.thread.start()
        started.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

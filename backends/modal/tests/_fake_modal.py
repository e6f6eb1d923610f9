"""A fake of Modal's control plane on 127.0.0.1, built on the helper the ``modal`` wheel ships
(``modal._utils.grpc_testing.patch_mock_servicer``): the RPCs the real client sends for ``app.run()``,
``app.deploy()``, ``App.lookup().stop()``, calls and log streams, each request recorded so tests can assert exactly
what would be created. Every RPC not written here answers UNIMPLEMENTED, as the helper makes it.

It checks what Modal's servers check where the client does not (each check says how sure the evidence is):
credentials (``UNAUTHENTICATED``), GPU types and counts per type, function names, inline input sizes, timeouts.
Containers run as processes of their own (``_fake_workers``); their output, and image build logs, reach the app's
log stream. Uploaded files (mounts) and blobs are kept, so a container sees exactly what the client mounted.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

from _fake_container import Call
from _fake_deploys import DeployRPCs, function_data_of, is_mutation
from _fake_logs import LogStore, close_connections, tracked
from _fake_store import StoreRPCs, invalid, start_blob_store
from _fake_web import WebGateway
from _fake_workers import Workers
from google.protobuf import empty_pb2
from grpclib import GRPCError, Status
from grpclib.server import Server
from modal._utils.grpc_testing import patch_mock_servicer
from modal_proto import api_grpc, api_pb2

MAX_INLINE_BYTES = 2 * 2**20  # Modal's limits on inputs sent inline (the client's defaults); larger go to blobs
MAX_ASYNC_INLINE_BYTES = 8 * 2**10  # for .spawn
# Modal's GPU guide (https://modal.com/docs/guide/gpu): the types it offers and how many fit one container.
GPU_COUNTS = {"T4": 8, "L4": 8, "A10": 4, "A10G": 4, "L40S": 8, "A100": 8, "A100-40GB": 8, "A100-80GB": 8,
              "RTX-PRO-6000": 8, "H100": 8, "H100!": 8, "H200": 8, "B200": 8, "B200+": 8, "ANY": 8}
# Function names: Modal's rule for object names, applied to the class part of "Class.*" (evidence: the client's
# check_object_name; the server's own rule for function names is not published).
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@patch_mock_servicer
class FakeModal(StoreRPCs, DeployRPCs, api_grpc.ModalClientBase):
    def __init__(self, root: Path) -> None:
        StoreRPCs.__init__(self)
        DeployRPCs.__init__(self)
        self.root = root
        self.requests: list[tuple[str, object]] = []
        self._n = 0
        self.tokens: set[tuple[str, str]] | None = None  # None: any token is accepted
        self.oauth_refresh_tokens: set[str] = {"rt-test"}
        self.functions: dict[str, api_pb2.Function] = {}  # function id -> the rank-0 function
        self.function_data: dict[str, api_pb2.FunctionData] = {}
        self.function_apps: dict[str, str] = {}
        self.apps: dict[str, dict] = {}  # app id -> {"name", "state", "layout", "logs"}
        self.deployments: dict[tuple[str, str], str] = {}
        self.advertised_inline_bytes = MAX_INLINE_BYTES  # what the client is told (tests may tell it more)
        self.workers = Workers(self, root)
        self.web = WebGateway(self)

    def new_id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}-{self._n}"

    async def _recv(self, stream, name: str = ""):
        request = await stream.recv_message()
        self.requests.append((name or type(request).__name__.removesuffix("Request"), request))
        self._authenticate(stream.metadata)
        return request

    def _authenticate(self, metadata) -> None:
        token = (metadata.get("x-modal-token-id"), metadata.get("x-modal-token-secret"))
        refresh = metadata.get("x-modal-refresh-token")
        if refresh and metadata.get("x-modal-oauth-client-id"):
            if refresh in self.oauth_refresh_tokens:
                return
        elif all(token) and (self.tokens is None or token in self.tokens):
            return
        raise GRPCError(Status.UNAUTHENTICATED, "Invalid or missing credentials")

    def of(self, kind):
        return [request for name, request in self.requests if name == kind]

    def mutations(self) -> list[str]:
        """The RPCs received so far that change something (see ``_fake_deploys.MUTATING``)."""
        return [name for name, request in self.requests if is_mutation(name, request)]

    def live_apps(self) -> list[str]:
        return sorted(app["name"] for app in self.apps.values() if app["state"] != api_pb2.APP_STATE_STOPPED)

    def live_containers(self) -> list[str]:
        return sorted(c.task_id for c in self.workers.containers.values()
                      if c.process is not None and c.process.returncode is None)

    async def _reply(self, stream, message=None):
        await stream.send_message(message if message is not None else empty_pb2.Empty())

    # -- apps ----------------------------------------------------------------------------------------------------

    def _new_app(self, name: str, state: int) -> str:
        app_id = self.new_id("ap")
        self.apps[app_id] = {"name": name, "state": state, "layout": api_pb2.AppLayout(), "logs": LogStore()}
        return app_id

    def logs(self, app_id: str) -> LogStore:
        return self.apps[app_id]["logs"]

    def layout(self, app_id: str) -> api_pb2.AppLayout:
        return self.apps[app_id]["layout"]

    def stopped(self, app_id: str) -> bool:
        return self.apps[app_id]["state"] == api_pb2.APP_STATE_STOPPED

    async def ClientHello(self, stream):
        await self._recv(stream, "ClientHello")
        await self._reply(stream, api_pb2.ClientHelloResponse())

    async def AppCreate(self, stream):
        request = await self._recv(stream)
        await self._reply(stream, api_pb2.AppCreateResponse(app_id=self._new_app(request.description,
                                                                                  request.app_state)))

    async def AppGetByDeploymentName(self, stream):
        request = await self._recv(stream)
        app_id = self.deployments.get((request.environment_name or "main", request.name), "")
        lifecycle = api_pb2.AppLifecycle(app_state=api_pb2.APP_STATE_DEPLOYED, version=self.version(app_id)) \
            if app_id else None
        await self._reply(stream, api_pb2.AppGetByDeploymentNameResponse(
            app_id=app_id, environment_name=request.environment_name or "main", lifecycle=lifecycle))

    async def AppGetOrCreate(self, stream):
        request = await self._recv(stream)
        key = (request.environment_name or "main", request.app_name)
        if key not in self.deployments:
            if request.object_creation_type != api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING:
                raise GRPCError(Status.NOT_FOUND, f"App '{request.app_name}' not found")
            self.deployments[key] = self._new_app(request.app_name, api_pb2.APP_STATE_DEPLOYED)
        await self._reply(stream, api_pb2.AppGetOrCreateResponse(app_id=self.deployments[key]))

    async def AppGetLayout(self, stream):
        request = await self._recv(stream)
        await self._reply(stream, api_pb2.AppGetLayoutResponse(app_layout=self.layout(request.app_id)))

    async def AppHeartbeat(self, stream):
        await stream.recv_message()
        await self._reply(stream)

    async def AppPublish(self, stream):
        request = await self._recv(stream)
        app = self.apps[request.app_id]
        redeploy = app["state"] == api_pb2.APP_STATE_DEPLOYED and bool(app.get("history"))
        if redeploy:
            await self.replace_containers(request.app_id)
        layout = api_pb2.AppLayout(function_ids=request.function_ids, class_ids=request.class_ids)
        for function_id in request.function_ids.values():
            layout.objects.append(api_pb2.Object(object_id=function_id, function_handle_metadata=self._handle(
                self.functions[function_id])))
        app["layout"], app["state"] = layout, request.app_state
        if request.name:
            self.deployments[("main", request.name)] = request.app_id
        if request.app_state == api_pb2.APP_STATE_DEPLOYED:
            self.record_version(request.app_id, request)
        for function_id in request.function_ids.values():  # min_containers start now
            await self.workers._scale(function_id)
        await self._reply(stream, api_pb2.AppPublishResponse(url="https://modal.example/fake"))

    async def _stop(self, app_id: str) -> None:
        if app_id in self.apps and not self.stopped(app_id):
            self.apps[app_id]["state"] = api_pb2.APP_STATE_STOPPED
            await self.workers.stop_app(app_id)
            self.logs(app_id).close()
            for key in [k for k, v in self.deployments.items() if v == app_id]:
                del self.deployments[key]

    async def AppClientDisconnect(self, stream):
        request = await self._recv(stream)
        if self.apps.get(request.app_id, {}).get("state") != api_pb2.APP_STATE_DEPLOYED:
            await self._stop(request.app_id)  # an ephemeral app ends with its client
        await self._reply(stream)

    async def AppStop(self, stream):
        request = await self._recv(stream)
        await self._stop(request.app_id)
        await self._reply(stream)

    async def AppGetLogs(self, stream):
        request = await self._recv(stream)
        await self.logs(request.app_id).serve(stream, request)

    async def EnvironmentGetOrCreate(self, stream):
        await self._recv(stream)
        settings = api_pb2.EnvironmentSettings(image_builder_version="2025.06")
        await self._reply(stream, api_pb2.EnvironmentGetOrCreateResponse(
            environment_id="en-1", metadata=api_pb2.EnvironmentMetadata(settings=settings)))

    # -- functions -----------------------------------------------------------------------------------------------

    async def FunctionPrecreate(self, stream):
        await self._recv(stream)
        await self._reply(stream, api_pb2.FunctionPrecreateResponse(function_id=self.new_id("fu")))

    def _check(self, function: api_pb2.Function) -> None:
        """What Modal's server refuses that the client sends without a check."""
        name = function.function_name.removesuffix(".*")
        if not NAME.match(name):
            raise invalid(f"Invalid function name {name!r}: names may contain only ASCII letters, digits, "
                           "'_', '-' and '.', and be at most 64 characters")
        gpu = function.resources.gpu_config
        if gpu.gpu_type:
            kind = gpu.gpu_type.upper()
            if kind not in GPU_COUNTS:
                raise invalid(f"Unknown GPU type {gpu.gpu_type!r}")
            if not 1 <= gpu.count <= GPU_COUNTS[kind]:
                raise invalid(f"{gpu.gpu_type} supports at most {GPU_COUNTS[kind]} GPUs per container, "
                               f"not {gpu.count}")
        if not 1 <= function.timeout_secs <= 24 * 3600:
            raise invalid(f"timeout must be between 1 s and 24 h, not {function.timeout_secs} s")
        if function.startup_timeout_secs > 24 * 3600:
            raise invalid("startup_timeout must be at most 24 h")

    def _handle(self, function: api_pb2.Function) -> api_pb2.FunctionHandleMetadata:
        methods = {
            name: api_pb2.FunctionHandleMetadata(
                function_name=f"{function.function_name.removesuffix('.*')}.{name}",
                function_type=definition.function_type, is_method=True, use_method_name=name,
                web_url=definition.web_url,
                max_object_size_bytes=self.advertised_inline_bytes,
                max_async_object_size_bytes=MAX_ASYNC_INLINE_BYTES)
            for name, definition in function.method_definitions.items()
        }
        return api_pb2.FunctionHandleMetadata(
            function_name=function.function_name, function_type=function.function_type,
            method_handle_metadata=methods, max_object_size_bytes=self.advertised_inline_bytes,
            max_async_object_size_bytes=MAX_ASYNC_INLINE_BYTES)

    async def FunctionCreate(self, stream):
        request = await self._recv(stream)
        if request.HasField("function_data"):
            ranked = [r.function for r in request.function_data.ranked_functions]
            data = request.function_data
        else:
            ranked = [request.function]
            data = function_data_of(request.function)
        for function in ranked:
            self._check(function)
        await self._web_urls(request.app_id, ranked, data)
        function_id = request.existing_function_id or self.new_id("fu")
        self.functions[function_id] = ranked[0]
        self.function_data[function_id] = data
        self.function_apps[function_id] = request.app_id
        await self._reply(stream, api_pb2.FunctionCreateResponse(
            function_id=function_id, handle_metadata=self._handle(ranked[0]), function_data=data))

    async def _web_urls(self, app_id: str, ranked, data: api_pb2.FunctionData) -> None:
        """Give each web method its URL (stable per app name, function and method, as Modal's are)."""
        name = self.apps[app_id]["name"]
        for function in (*ranked, data):
            tag = function.function_name if function.function_name.endswith(".*") else \
                f"{function.function_name}.*"
            for method, definition in function.method_definitions.items():
                if definition.webhook_config.type != api_pb2.WEBHOOK_TYPE_UNSPECIFIED:
                    definition.web_url = await self.web.url_for(name, tag, method)

    async def ClassCreate(self, stream):
        await self._recv(stream)
        await self._reply(stream, api_pb2.ClassCreateResponse(class_id=self.new_id("cs")))

    def functions_by_name(self):
        """The functions the client created, by name, as the last request sent them."""
        out = {}
        for request in self.of("FunctionCreate"):
            function = (request.function_data.ranked_functions[0].function if request.HasField("function_data")
                        else request.function)
            out[function.function_name] = (function, request)
        return out

    # -- calls ---------------------------------------------------------------------------------------------------

    async def FunctionMap(self, stream):
        request = await self._recv(stream)
        if request.function_id not in self.functions or self.stopped(self.function_apps[request.function_id]):
            raise GRPCError(Status.NOT_FOUND, "Function not found or its app was stopped")
        inline = MAX_ASYNC_INLINE_BYTES if request.function_call_invocation_type == \
            api_pb2.FUNCTION_CALL_INVOCATION_TYPE_ASYNC else MAX_INLINE_BYTES
        call = Call(self.new_id("fc"), request.function_id, self.function_apps[request.function_id])
        items = []
        for item in request.pipelined_inputs:
            if len(item.input.args) > inline:
                raise invalid(f"input of {len(item.input.args)} bytes sent inline; the limit is {inline}")
            input_id = self.new_id("in")
            await self.workers.submit(call, input_id, item.input, request.function_call_invocation_type)
            items.append(api_pb2.FunctionPutInputsResponseItem(idx=item.idx, input_id=input_id, input_jwt="jwt"))
        await self._reply(stream, api_pb2.FunctionMapResponse(function_call_id=call.id, pipelined_inputs=items))

    async def FunctionGetOutputs(self, stream):
        request = await self._recv(stream)
        call = self.workers.calls[request.function_call_id]
        deadline = time.monotonic() + max(0.0, request.timeout)
        while call.result is None and time.monotonic() < deadline:
            await call.changed.wait(deadline - time.monotonic())
        if call.result is None:
            await self._reply(stream, api_pb2.FunctionGetOutputsResponse(num_unfinished_inputs=1))
            return
        result, data_format = call.result
        item = api_pb2.FunctionGetOutputsItem(result=result, idx=0, data_format=data_format)
        await self._reply(stream, api_pb2.FunctionGetOutputsResponse(outputs=[item], num_unfinished_inputs=0))

    async def FunctionCallGetDataOut(self, stream):
        request = await stream.recv_message()
        call = self.workers.calls[request.function_call_id]
        sent = request.last_index
        deadline = time.monotonic() + 55
        while time.monotonic() < deadline:
            for chunk in [c for c in call.chunks if c.index > sent]:
                await stream.send_message(chunk)
                sent = chunk.index
            await call.changed.wait(1.0)

    async def FunctionCallCancel(self, stream):
        request = await self._recv(stream)
        await self.workers.cancel(request.function_call_id, request.terminate_containers)
        await self._reply(stream)


class FakeModalServer:
    """The fake on its own thread and event loop, on 127.0.0.1 and a free port."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="fake-modal-"))
        self.servicer = FakeModal(self.root)
        self.loop = asyncio.new_event_loop()
        self.port = 0
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.server = tracked(Server([self.servicer]))
            self.loop.run_until_complete(self.server.start("127.0.0.1", 0))
            self.port = self.server._server.sockets[0].getsockname()[1]
            self.loop.run_until_complete(self._start_blob_store())
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="fake-modal", daemon=True)
        self.thread.start()
        started.wait(10)

    def call(self, coro, timeout: float = 30):
        """Run a coroutine on the fake's loop (to poke at its state from a test)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start_blob_store(self) -> None:
        self.servicer.blob_url, self.blob_runner = await start_blob_store(self.servicer.blobs)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        async def stop() -> None:
            await self.servicer.workers.close()
            await self.servicer.web.close()
            for store in (app["logs"] for app in self.servicer.apps.values()):
                store.close()
            self.server.close()
            await self.server.wait_closed()
            close_connections(self.server)
            await self.blob_runner.cleanup()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        shutil.rmtree(self.root, ignore_errors=True)

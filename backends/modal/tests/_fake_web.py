"""The fake's web endpoints: what Modal's HTTP proxy does for a deployed web function, on 127.0.0.1.

Each web endpoint (a function's or a class method's ``webhook_config``) gets a URL of its own, a port on
127.0.0.1 that stays its URL across redeploys, as a ``*.modal.run`` host does. A request becomes an input of the
app's current version of the function, as Modal makes it: the ASGI scope as the input's one argument
(``method_name`` the class's web method), the request body on the call's ``data_in`` stream
(``FunctionCallGetDataIn``), the app's ASGI messages back on ``data_out``, which become the HTTP response as they
arrive (streamed). The container serving it runs Modal's own container entrypoint and ASGI wrapper, unmodified.
With ``requires_proxy_auth``, a request without a known ``Modal-Key``/``Modal-Secret`` pair is refused (401)
before any input is made, as Modal's proxy does."""

from __future__ import annotations

import asyncio

from _fake_container import Call
from aiohttp import web
from modal._serialization import deserialize_data_format, serialize, serialize_data_format
from modal_proto import api_pb2

ASGI = api_pb2.DATA_FORMAT_ASGI


class WebGateway:
    def __init__(self, control) -> None:
        self.control = control
        self.sites: dict[tuple[str, str, str], tuple[web.AppRunner, str]] = {}  # (app, function, method)
        self.requests = 0

    async def url_for(self, app_name: str, function_name: str, method: str) -> str:
        key = (app_name, function_name, method)
        if key not in self.sites:
            server = web.Application(client_max_size=2**28)

            async def route(request: web.Request, key: tuple[str, str, str] = key) -> web.StreamResponse:
                return await self.handle(key, request)

            server.router.add_route("*", "/{tail:.*}", route)
            runner = web.AppRunner(server, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.sites[key] = (runner, f"http://127.0.0.1:{runner.addresses[0][1]}")
        return self.sites[key][1]

    def _current(self, key: tuple[str, str, str]) -> tuple[str, str] | None:
        """(app id, function id) of the deployed app's current version of the endpoint, or None."""
        app_name, function_name, _ = key
        app_id = self.control.deployments.get(("main", app_name))
        if app_id is None:
            return None
        function_id = self.control.layout(app_id).function_ids.get(function_name)
        return (app_id, function_id) if function_id else None

    async def handle(self, key: tuple[str, str, str], request: web.Request) -> web.StreamResponse:
        self.requests += 1
        found = self._current(key)
        if found is None:
            return web.Response(status=404, text="modal-http: app for invoked web endpoint is stopped")
        app_id, function_id = found
        method = key[2]
        config = self.control.functions[function_id].method_definitions[method].webhook_config
        if config.requires_proxy_auth:
            sent = (request.headers.get("Modal-Key", ""), request.headers.get("Modal-Secret", ""))
            if sent not in self.control.proxy_tokens:
                return web.Response(status=401, text="modal-http: missing or invalid proxy authorization")
        body = await request.read()
        scope = {"type": "http", "http_version": "1.1", "method": request.method, "scheme": "http",
                 "path": request.path, "query_string": request.query_string.encode(),
                 "headers": [(k.lower().encode(), v.encode()) for k, v in request.headers.items()],
                 "client": ("127.0.0.1", request.transport.get_extra_info("peername")[1] if request.transport else 0)}
        call = Call(self.control.new_id("fc"), function_id, app_id)
        call.data_in.append(api_pb2.DataChunk(data_format=ASGI, index=1, data=serialize_data_format(
            {"type": "http.request", "body": body, "more_body": False}, ASGI)))
        # the scope is the web function's one argument, as Modal sends it (its container answers in ASGI messages)
        await self.control.workers.submit(call, self.control.new_id("in"), api_pb2.FunctionInput(
            args=serialize(((scope,), {})), data_format=api_pb2.DATA_FORMAT_PICKLE, method_name=method),
            api_pb2.FUNCTION_CALL_INVOCATION_TYPE_SYNC)
        return await self._respond(call, request)

    async def _respond(self, call: Call, request: web.Request) -> web.StreamResponse:
        response: web.StreamResponse | None = None
        seen = 0
        while True:
            chunks = sorted((c for c in call.chunks if c.index > seen), key=lambda c: c.index)
            for chunk in chunks:
                seen = chunk.index
                if chunk.data_format != ASGI:  # a web function answers in ASGI messages only
                    return web.Response(status=500, text="modal-http: internal error: not an ASGI message")
                data = chunk.data or self.control.blobs[chunk.data_blob_id]
                message = deserialize_data_format(data, chunk.data_format, None)
                if message["type"] == "http.response.start":
                    response = web.StreamResponse(status=message["status"])
                    for name, value in message.get("headers", []):
                        if name.lower() != b"content-length":
                            response.headers.add(name.decode(), value.decode())
                    await response.prepare(request)
                elif message["type"] == "http.response.body" and response is not None:
                    await response.write(message.get("body", b""))
                    if not message.get("more_body"):
                        await response.write_eof()
                        return response
            if call.result is not None and not [c for c in call.chunks if c.index > seen]:
                if response is None:
                    result = call.result[0]
                    return web.Response(status=500, text=f"modal-http: internal error: the function call ended "
                                                         f"without a response ({result.exception or result.status})")
                await response.write_eof()
                return response
            await call.changed.wait(1.0)

    async def close(self) -> None:
        for runner, _ in self.sites.values():
            await runner.cleanup()
        self.sites.clear()
        await asyncio.sleep(0)

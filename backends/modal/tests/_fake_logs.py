"""An app's log stream in the fake (``AppGetLogs``): what its containers printed and its image builds logged, as
``TaskLogsBatch`` entries in order, each with an entry id the client passes back to resume; ``app_done`` once the
app has stopped."""

from __future__ import annotations

import asyncio
import contextlib

from modal_proto import api_pb2


class Signal:
    """Wakes every waiter on each ``fire``; no wake-up is lost between a check and the wait that follows it
    (both run on one event loop with no ``await`` between them)."""

    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | None = None

    def fire(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        self._waiter = None

    async def wait(self, seconds: float) -> None:
        """Until the next ``fire``, or ``seconds`` at most."""
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._waiter), max(0.0, seconds))


class LogStore:
    def __init__(self) -> None:
        self.batches: list[api_pb2.TaskLogsBatch] = []
        self.done = False
        self.changed = Signal()

    def add(self, batch: api_pb2.TaskLogsBatch) -> None:
        batch.entry_id = str(len(self.batches) + 1)
        self.batches.append(batch)
        self.changed.fire()

    def close(self) -> None:
        self.done = True
        self.changed.fire()

    def lines(self) -> list[str]:
        return [item.data for batch in self.batches for item in batch.items]

    async def serve(self, stream, request: api_pb2.AppGetLogsRequest) -> None:
        """Send what follows ``last_entry_id``, waiting up to ``timeout`` for more; then ``app_done`` if over."""
        sent = int(request.last_entry_id or 0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.timeout
        while True:
            for batch in self.batches[sent:]:
                if not request.function_id or batch.function_id == request.function_id:
                    await stream.send_message(batch)
                sent += 1
            if self.done:
                await stream.send_message(api_pb2.TaskLogsBatch(app_done=True))
                return
            if loop.time() >= deadline:
                return
            await self.changed.wait(deadline - loop.time())


def tracked(server):
    """``server`` (a grpclib ``Server``, not started yet), keeping its connections, so that ``close_connections``
    can close their sockets: grpclib's ``close`` leaves a connection the peer has not closed open, and its socket
    is then only found (and warned about) by the garbage collector, in whichever test runs next."""
    factory = server._protocol_factory
    server.fake_protocols = []

    def make():
        protocol = factory()
        server.fake_protocols.append(protocol)
        return protocol

    server._protocol_factory = make
    return server


def close_connections(server) -> None:
    for protocol in getattr(server, "fake_protocols", ()):
        transport = getattr(getattr(protocol, "connection", None), "_transport", None)
        if transport is not None:
            transport.close()

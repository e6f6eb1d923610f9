"""Worker output from Modal: the app's log stream (``app.logs.stream()``, Modal's public logs API, the stream
``modal app logs`` follows) forwarded line by line as it arrives.

A line a container printed (stdout, stderr; a log record, which the container marks with ``LOG_MARK``; Modal's
own messages about the container as ``log``) goes to ``events.worker_output(endpoint, container, stream, text)``,
the endpoint found from the Modal function that printed it and the worker being Modal's container (task) id.
Lines from no function (image builds) go the same way, marked with the app's name and ``image-build``, and the last
few are kept for the error message of a failed build.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["LogForwarder"]

from ._runner import LOG_MARK

_STREAMS = {"stdout": "stdout", "stderr": "stderr"}  # Modal's "system" lines become "log"


class LogForwarder:
    """Follows one app's log stream until the app is done."""

    def __init__(self, events: Any, endpoints: Callable[[], Mapping[str, str]], app: str) -> None:
        self.events = events
        self.app = app
        self.endpoints = endpoints  # Modal function id -> endpoint name, known once the app's objects exist
        self.build_tail: collections.deque[str] = collections.deque(maxlen=20)
        self.lines = 0
        self.known = False  # the mapping is complete: until then a function's lines wait (a warm container's)
        self._waiting: list[tuple[str, str, list[str]]] = []

    def mapped(self) -> None:
        """The function ids are known now: forward the lines that waited for them."""
        self.known = True
        waiting, self._waiting = self._waiting, []
        for entry in waiting:
            self.handle(*entry)

    def handle(self, message: str, source: str, context_ids: list[str]) -> None:
        function = next((i for i in context_ids if i.startswith("fu-")), "")
        worker = next((i for i in reversed(context_ids) if not i.startswith(("fu-", "fc-", "in-"))), "")
        endpoint = self.endpoints().get(function) if function else None
        if function and endpoint is None and not self.known:
            self._waiting.append((message, source, context_ids))
            return
        for text in message.splitlines():
            if not text.strip():
                continue
            self.lines += 1
            stream = _STREAMS.get(source, "log")
            if text.startswith(LOG_MARK):
                stream, text = "log", text[len(LOG_MARK):]
            if endpoint is not None:
                self.events.worker_output(endpoint, worker or "?", stream, text)
            else:
                self.build_tail.append(text)
                self.events.worker_output(self.app, "image-build", stream, text)

    async def follow(self, app: Any) -> None:
        """Forward the app's log lines until its stream ends (the app stopped)."""
        async for entry in app.logs.stream.aio():
            self.handle(entry.message, entry.source, list(entry.context_ids))

"""What the user's code prints and logs inside a worker travels to the caller as messages.

``capture_output(send)`` replaces ``sys.stdout`` and ``sys.stderr`` with streams that send each line as
``("output", stream, text)`` (stream ``"stdout"`` or ``"stderr"``), and makes logging's last-resort handler (what
handles records when the user's code configured no logging) send each record as ``("output", "log",
"LEVEL logger: message")``. Logging the user's code configured itself writes to the captured stderr, so it
arrives formatted as the user asked. Output written to the file descriptors directly (C extensions, child
processes) is not captured: it goes where the worker's stderr goes (the local backend's terminal, a pod's ssh
channel, the vendor's log).
"""

from __future__ import annotations

import io
import logging
import sys
import threading
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["OutputCapture", "capture_output"]

MAX_LINE = 16 * 1024  # characters: a longer line (a progress bar without newlines) is sent in pieces


class LineStream(io.TextIOBase):
    """A text stream that sends each completed line; ``flush`` sends what is pending (``print(..., flush=True)``
    of a partial line, a progress bar's ``\\r`` updates)."""

    def __init__(self, name: str, send: Callable[[tuple[Any, ...]], None], original: TextIO) -> None:
        self.name = name
        self._send = send
        self._original = original
        self._pending = ""
        self._lock = threading.Lock()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._original.fileno()  # C-level writers (faulthandler, subprocess) get the real descriptor

    def write(self, text: str) -> int:
        with self._lock:
            self._pending += text
            *lines, self._pending = self._pending.split("\n")
            if len(self._pending) > MAX_LINE:
                lines.append(self._pending)
                self._pending = ""
        for line in lines:
            self._emit(line)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, ""
        if pending:
            self._emit(pending)

    def _emit(self, line: str) -> None:
        try:
            self._send(("output", self.name, line.rstrip("\r")))
        except Exception:  # the transport is gone (shutting down): the line still goes somewhere
            self._original.write(line + "\n")


class _ForwardRecords(logging.Handler):
    def __init__(self, send: Callable[[tuple[Any, ...]], None]) -> None:
        super().__init__(logging.WARNING)  # what logging's own last resort shows
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"{record.levelname} {record.name}: {record.getMessage()}"
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self._send(("output", "log", text))
        except Exception:
            self.handleError(record)


class OutputCapture:
    """Installed by :func:`capture_output`; ``restore()`` puts the original streams back."""

    def __init__(self, send: Callable[[tuple[Any, ...]], None]) -> None:
        self._saved = (sys.stdout, sys.stderr, logging.lastResort)
        self.stdout = LineStream("stdout", send, sys.__stdout__ or sys.stdout)
        self.stderr = LineStream("stderr", send, sys.__stderr__ or sys.stderr)
        sys.stdout, sys.stderr = self.stdout, self.stderr
        logging.lastResort = _ForwardRecords(send)

    def flush(self) -> None:
        self.stdout.flush()
        self.stderr.flush()

    def restore(self) -> None:
        self.flush()
        sys.stdout, sys.stderr, logging.lastResort = self._saved


def capture_output(send: Callable[[tuple[Any, ...]], None]) -> OutputCapture:
    """Send what the user's code prints and logs from now on as ``("output", stream, text)`` messages."""
    return OutputCapture(send)

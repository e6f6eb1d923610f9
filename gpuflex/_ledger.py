"""The job ledger: one JSON line per finished job in ``$GPUFLEX_HOME/jobs.jsonl``, for ``gpuflex jobs`` and
``gpuflex costs`` across processes.

``gpuflex serve`` and ``gpuflex run`` register a :class:`JobLedger` on the plugin manager. Its hook only appends
a dict to a buffer; a background thread writes the buffer out at most every 0.5 s (and once more at exit), so a
call never waits on the disk.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ._plugins import get_plugin_manager, hookimpl

if TYPE_CHECKING:
    from ._job import Job
    from ._models import Bundle, EndpointSpec

__all__ = ["JobLedger", "LedgerSummary", "gpuflex_home", "install_ledger", "read_ledger", "summarize"]

FLUSH_INTERVAL = 0.5
PLUGIN_NAME = "gpuflex-ledger"


def gpuflex_home() -> Path:
    """``$GPUFLEX_HOME``, else ``$XDG_DATA_HOME/gpuflex``, else ``~/.local/share/gpuflex``."""
    home = os.environ.get("GPUFLEX_HOME")
    if home:
        return Path(home)
    data = os.environ.get("XDG_DATA_HOME")
    return (Path(data) if data else Path.home() / ".local" / "share") / "gpuflex"


def ledger_path() -> Path:
    return gpuflex_home() / "jobs.jsonl"


class JobLedger:
    """A plugin: records each finished job (see the module docstring)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or ledger_path()
        self._buffer: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # guards the buffer
        self._write_lock = threading.Lock()  # one writer at a time (the thread, or close())
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._gpus: dict[tuple[str, str], int] = {}

    @hookimpl
    def gpuflex_deployed(self, spec: EndpointSpec, bundle: Bundle, backend: str) -> None:
        self._gpus[(backend, spec.name)] = spec.gpu.count if spec.gpu else 0

    @hookimpl
    def gpuflex_job_finished(self, job: Job) -> None:
        record = {
            "id": job.id, "endpoint": job.endpoint, "backend": job.backend, "status": job.status.value,
            "submitted_at": job.submitted_at, "started_at": job.started_at, "finished_at": job.finished_at,
            "queue_time": job.queue_time, "run_time": job.run_time, "attempts": job.attempts, "worker": job.worker,
            "gpus": self._gpus.get((job.backend, job.endpoint), 0), "cost_usd": job.cost.usd,
            "billed_seconds": job.cost.billed_seconds, "billing": job.cost.rule, "reason": job.reason,
            "pid": os.getpid(),
        }
        with self._lock:
            self._buffer.append(record)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="gpuflex-ledger", daemon=True)
                self._thread.start()
        if not self._wake.is_set():
            self._wake.set()

    def _run(self) -> None:
        while not self._closed.is_set():
            self._wake.wait()
            self._wake.clear()
            self.flush()
            self._closed.wait(FLUSH_INTERVAL)

    def flush(self) -> None:
        """Write what is buffered now."""
        with self._write_lock:
            with self._lock:
                records, self._buffer = self._buffer, []
            if not records:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
            with self.path.open("a", encoding="utf-8") as file:
                file.write(text)  # one write per batch: lines from concurrent processes do not interleave

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        self.flush()


def install_ledger(path: Path | None = None) -> JobLedger:
    """Register a ledger on the plugin manager (once per process) and flush it at exit."""
    pm = get_plugin_manager()
    existing = pm.get_plugin(PLUGIN_NAME)
    if isinstance(existing, JobLedger):
        return existing
    ledger = JobLedger(path)
    pm.register(ledger, name=PLUGIN_NAME)
    atexit.register(ledger.close)
    return ledger


def read_ledger(path: Path | None = None) -> list[dict[str, Any]]:
    """Every record, oldest first; a line cut short (a process killed mid-write) is skipped."""
    path = path or ledger_path()
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "endpoint" in record:
            records.append(record)
    return records


@attrs.define
class LedgerSummary:
    endpoint: str
    backend: str
    calls: int = 0
    failed: int = 0
    gpu_seconds: float = 0.0
    billed_seconds: float = 0.0
    usd: float = 0.0


def summarize(records: list[dict[str, Any]]) -> list[LedgerSummary]:
    """Calls, GPU-seconds and dollars per (endpoint, backend)."""
    rows: dict[tuple[str, str], LedgerSummary] = {}
    for r in records:
        key = (str(r.get("endpoint")), str(r.get("backend")))
        row = rows.setdefault(key, LedgerSummary(*key))
        row.calls += 1
        row.failed += r.get("status") != "COMPLETED"
        billed = float(r.get("billed_seconds") or 0.0)
        row.billed_seconds += billed
        row.gpu_seconds += billed * int(r.get("gpus") or 0)
        row.usd += float(r.get("cost_usd") or 0.0)
    return [rows[k] for k in sorted(rows)]

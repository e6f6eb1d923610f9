"""The job ledger: every finished job in ``$GPUFLEX_HOME/jobs.db``, for ``gpuflex jobs`` and ``gpuflex costs``
across processes.

``gpuflex serve`` and ``gpuflex run`` register a :class:`JobLedger` on the plugin manager. Its hook only appends
a row to a buffer; a background thread writes the buffer out at most every 0.5 s (and once more at exit), in one
transaction, so a call never waits on the disk.

The file is SQLite (the standard library's ``sqlite3``) in WAL mode: several processes write to it at once (each
transaction waits its turn for up to 30 s) while others read. Jobs are indexed by time and by endpoint and time.
Each write also applies the retention setting (:class:`Retention`: 30 days or 100,000 jobs by default). A
``jobs.jsonl`` left by an earlier version is imported once, then renamed ``jobs.jsonl.imported``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ._config import load_project_config
from ._plugins import get_plugin_manager, hookimpl
from .errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ._config import ProjectConfig
    from ._job import Job
    from ._models import Bundle, EndpointSpec, WorkerInfo

__all__ = ["COLUMNS", "JobLedger", "Retention", "gpuflex_home", "install_ledger", "ledger_path", "read_ledger"]

FLUSH_INTERVAL = 0.5
PLUGIN_NAME = "gpuflex-ledger"
BUSY_TIMEOUT = 30.0
KEEP_DAYS = 30.0
KEEP_JOBS = 100_000
# column -> SQL type; a record is a dict with these keys
COLUMNS = {
    "id": "TEXT NOT NULL", "endpoint": "TEXT NOT NULL", "backend": "TEXT NOT NULL", "status": "TEXT NOT NULL",
    "submitted_at": "REAL", "started_at": "REAL", "finished_at": "REAL NOT NULL", "queue_time": "REAL",
    "run_time": "REAL", "attempts": "INTEGER", "worker": "TEXT", "gpus": "INTEGER", "cost_usd": "REAL",
    "billed_seconds": "REAL", "billing": "TEXT", "tail_usd": "REAL", "tail_seconds": "REAL", "reason": "TEXT",
    "pid": "INTEGER", "gpu": "TEXT",  # gpu: what the endpoint asked for ("H100", "H100:2"), for costs --compare
}
_SCHEMA = [
    f"CREATE TABLE IF NOT EXISTS jobs (seq INTEGER PRIMARY KEY, "
    f"{', '.join(f'{name} {kind}' for name, kind in COLUMNS.items())})",
    "CREATE INDEX IF NOT EXISTS jobs_by_time ON jobs (finished_at)",
    "CREATE INDEX IF NOT EXISTS jobs_by_endpoint ON jobs (endpoint, finished_at)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
]
_INSERT = f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"


def gpuflex_home() -> Path:
    """``$GPUFLEX_HOME``, else ``$XDG_DATA_HOME/gpuflex``, else ``~/.local/share/gpuflex``."""
    home = os.environ.get("GPUFLEX_HOME")
    if home:
        return Path(home)
    data = os.environ.get("XDG_DATA_HOME")
    return (Path(data) if data else Path.home() / ".local" / "share") / "gpuflex"


def ledger_path() -> Path:
    return gpuflex_home() / "jobs.db"


@attrs.frozen
class Retention:
    """How much of the ledger is kept: jobs newer than ``keep_days`` and, of those, the last ``keep_jobs``.
    Set in the project file's ``[tool.gpuflex.ledger]`` (or gpuflex.toml's ``[ledger]``); 0 turns a limit off."""

    keep_days: float = KEEP_DAYS
    keep_jobs: int = KEEP_JOBS

    @classmethod
    def from_config(cls, config: ProjectConfig) -> Retention:
        table = config.settings.get("ledger", {})
        where = f"{config.path}: [ledger]" if config.path else "[ledger]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table with keep_days and keep_jobs")
        unknown = sorted(set(table) - {"keep_days", "keep_jobs"})
        if unknown:
            raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: keep_days, keep_jobs")
        days, jobs = table.get("keep_days", KEEP_DAYS), table.get("keep_jobs", KEEP_JOBS)
        if isinstance(days, bool) or not isinstance(days, int | float) or days < 0:
            raise ConfigError(f"{where}: keep_days must be a number of days >= 0 (0: no limit), got {days!r}")
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 0:
            raise ConfigError(f"{where}: keep_jobs must be a whole number >= 0 (0: no limit), got {jobs!r}")
        return cls(keep_days=float(days), keep_jobs=jobs)


def _connect(path: Path) -> sqlite3.Connection:
    """Open (creating) the ledger; import a ``jobs.jsonl`` beside it once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    for statement in _SCHEMA:
        db.execute(statement)
    have = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
    for name in [c for c in COLUMNS if c not in have]:  # a ledger written by an earlier version
        with contextlib.suppress(sqlite3.OperationalError):  # another process added it a moment ago
            db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {COLUMNS[name]}")
    legacy = path.with_name("jobs.jsonl")
    if legacy.is_file():
        _import_jsonl(db, legacy)
    return db


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    db.execute("BEGIN IMMEDIATE")  # take the write lock now: no deadlock upgrading a read later
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _row(record: dict[str, Any]) -> tuple[Any, ...]:
    """A record's values in column order; what an old record lacks is filled in."""
    finished = record.get("finished_at") or record.get("submitted_at") or 0.0
    defaults = {"finished_at": finished, "id": "?", "endpoint": "?", "backend": "?", "status": "?"}
    return tuple(defaults.get(name) if record.get(name) is None else record[name] for name in COLUMNS)


def _import_jsonl(db: sqlite3.Connection, legacy: Path) -> None:
    rows = []
    for line in legacy.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a process killed mid-write
        if isinstance(record, dict) and "endpoint" in record:
            rows.append(_row(record))
    with _transaction(db):
        if db.execute("SELECT 1 FROM meta WHERE key = 'jsonl_imported'").fetchone() is not None:
            return  # another process did it a moment ago
        db.executemany(_INSERT, rows)
        db.execute("INSERT INTO meta VALUES ('jsonl_imported', ?)", (f"{len(rows)} jobs at {time.time()}",))
    with contextlib.suppress(OSError):
        legacy.rename(legacy.with_name("jobs.jsonl.imported"))


def _prune(db: sqlite3.Connection, retention: Retention) -> None:
    if retention.keep_days:
        db.execute("DELETE FROM jobs WHERE finished_at < ?", (time.time() - retention.keep_days * 86400,))
    if retention.keep_jobs:
        db.execute("DELETE FROM jobs WHERE seq <= (SELECT seq FROM jobs ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                   (retention.keep_jobs,))


class JobLedger:
    """A plugin: records each finished job (see the module docstring)."""

    def __init__(self, path: Path | None = None, retention: Retention | None = None) -> None:
        self.path = path or ledger_path()
        self.retention = retention or Retention()
        self._db: sqlite3.Connection | None = None
        self._buffer: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()  # guards the buffer
        self._write_lock = threading.Lock()  # one writer at a time (the thread, or close())
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._gpus: dict[tuple[str, str], int] = {}
        self._gpu_names: dict[tuple[str, str], str | None] = {}
        self._worker_gpus: dict[str, int] = {}

    @hookimpl
    def gpuflex_deployed(self, spec: EndpointSpec, bundle: Bundle, backend: str) -> None:
        self._gpus[(backend, spec.name)] = spec.gpu.count if spec.gpu else 0
        self._gpu_names[(backend, spec.name)] = str(spec.gpu) if spec.gpu else None

    @hookimpl
    def gpuflex_worker_started(self, worker: WorkerInfo, backend: str) -> None:
        self._worker_gpus[worker.id] = len(worker.gpus)  # none when the backend fell back to the CPU

    @hookimpl
    def gpuflex_job_finished(self, job: Job) -> None:
        gpus = self._worker_gpus.get(job.worker or "", self._gpus.get((job.backend, job.endpoint), 0))
        record = {
            "id": job.id, "endpoint": job.endpoint, "backend": job.backend, "status": job.status.value,
            "submitted_at": job.submitted_at, "started_at": job.started_at, "finished_at": job.finished_at,
            "queue_time": job.queue_time, "run_time": job.run_time, "attempts": job.attempts, "worker": job.worker,
            "gpus": gpus, "cost_usd": job.cost.usd, "billed_seconds": job.cost.billed_seconds,
            "billing": job.cost.rule, "tail_usd": job.tail.usd,
            "tail_seconds": job.tail.billed_seconds, "reason": job.reason, "pid": os.getpid(),
            "gpu": self._gpu_names.get((job.backend, job.endpoint)),
        }
        with self._lock:
            self._buffer.append(_row(record))
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
        """Write what is buffered now, in one transaction, and apply the retention setting."""
        with self._write_lock:
            with self._lock:
                rows, self._buffer = self._buffer, []
            if not rows:
                return
            if self._db is None:
                self._db = _connect(self.path)
            with _transaction(self._db) as db:
                db.executemany(_INSERT, rows)
                _prune(db, self.retention)

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        self.flush()
        with self._write_lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def install_ledger(path: Path | None = None) -> JobLedger:
    """Register a ledger on the plugin manager (once per process) and flush it at exit. The retention comes from
    the project file of the working directory."""
    pm = get_plugin_manager()
    existing = pm.get_plugin(PLUGIN_NAME)
    if isinstance(existing, JobLedger):
        return existing
    ledger = JobLedger(path, Retention.from_config(load_project_config()))
    pm.register(ledger, name=PLUGIN_NAME)
    atexit.register(ledger.close)
    return ledger


def read_ledger(path: Path | None = None, *, endpoint: str | None = None, limit: int | None = None
                ) -> list[dict[str, Any]]:
    """Recorded jobs, oldest first: all of them, or the last ``limit`` (of ``endpoint``)."""
    path = path or ledger_path()
    if not path.is_file() and not path.with_name("jobs.jsonl").is_file():
        return []
    db = _connect(path)
    try:
        args: list[Any] = [] if endpoint is None else [endpoint]
        where = "" if endpoint is None else "WHERE endpoint = ?"
        query = f"SELECT * FROM jobs {where} ORDER BY finished_at DESC, seq DESC"
        if limit is not None:
            query += " LIMIT ?"
            args.append(limit)
        rows = [{name: row[name] for name in COLUMNS} for row in db.execute(query, args)]
    finally:
        db.close()
    rows.reverse()
    return rows

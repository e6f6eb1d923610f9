"""The cost meter: each finished job's cost from its backend's price and billing rule, summed per endpoint with the
idle tails of per-second workers (once per burst of calls), and a summary of the job ledger for ``gpuflex costs``
(the budget guard that keeps a process within a limit is in ``_budget``)."""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, Any

import attrs

from ._models import Cost, Price

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["CostMeter", "EndpointCosts", "LedgerSummary", "job_cost", "summarize", "tail_cost"]


def _billed(price: Price, seconds: float) -> float:
    """``seconds`` rounded up to the billing increment."""
    if not price.increment:
        return seconds
    # the epsilon keeps float noise (1.1 / 0.1 = 11.000000000000002) from billing an extra increment, without ever
    # billing less than the time itself (a few nanoseconds still start an increment)
    units = math.ceil(seconds / price.increment - 1e-9)
    if units * price.increment < seconds - 1e-9:
        units += 1
    return units * price.increment


def job_cost(price: Price, *, run_seconds: float, queue_seconds: float = 0.0) -> Cost:
    """What one job's own run cost under ``price``'s billing rule.

    * ``free``: nothing; ``unknown`` (no published price): nothing counted, the rule says why.
    * ``per-second``: execution time rounded up to the billing increment (RunPod, Modal). The idle tail a worker
      bills after its last call is not part of any one job: see :func:`tail_cost`.
    * ``uptime``: the job's share of an hourly machine: its running time at the hourly rate (local, pods). Idle
      time between jobs is the machine's, reported per worker rather than per job.
    """
    if price.billing == "free" or price.usd_per_hour == 0:
        return Cost(usd=0.0, billed_seconds=run_seconds, rule=price.billing)
    if price.billing == "per-second":
        billed = _billed(price, run_seconds)
        return Cost(usd=billed * price.usd_per_second, billed_seconds=billed, rule="per-second")
    return Cost(usd=run_seconds * price.usd_per_second, billed_seconds=run_seconds, rule=price.billing)


def tail_cost(price: Price) -> Cost:
    """One idle tail: what a per-second worker bills after the last call of a burst, until its idle timeout ends
    (nothing for other rules, and for workers kept warm, whose price says ``tail_seconds=0``)."""
    if price.billing != "per-second" or not price.tail_seconds or not price.usd_per_hour:
        return Cost()
    billed = _billed(price, price.tail_seconds)
    return Cost(usd=billed * price.usd_per_second, billed_seconds=billed, rule="per-second")


def _part(tail: Cost, seconds: float) -> Cost:
    """The first ``seconds`` of an idle tail (a call that came within it cut it short)."""
    if tail.billed_seconds <= 0 or seconds >= tail.billed_seconds:
        return tail
    seconds = max(0.0, seconds)
    return Cost(usd=tail.usd * seconds / tail.billed_seconds, billed_seconds=seconds, rule=tail.rule)


@attrs.define
class EndpointCosts:
    """One endpoint's totals: its calls, and the idle tails of its per-second workers (``bursts`` of them)."""

    calls: int = 0
    gpu_seconds: float = 0.0
    cost: Cost = Cost()
    idle: Cost = Cost()
    bursts: int = 0


@attrs.define
class _LastCall:
    finished_at: float
    tail: Cost


class CostMeter:
    """Totals per endpoint for this process (``gpuflex.costs()``).

    A per-second worker bills its idle timeout after a call unless another call starts within it; the meter
    counts the tail after each worker's latest call as spent (the worst case, until a call comes) and, when a call
    does come, only the idle time before it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_endpoint: dict[str, EndpointCosts] = {}
        self._last: dict[tuple[str, str | None], _LastCall] = {}

    def record(self, endpoint: str, cost: Cost, gpus: int, *, tail: Cost | None = None, worker: str | None = None,
               started_at: float | None = None, finished_at: float | None = None) -> None:
        """Count one finished job; ``tail`` is what its worker (``worker``, when the backend names it) bills idle
        after it."""
        with self._lock:
            entry = self._by_endpoint.setdefault(endpoint, EndpointCosts())
            entry.calls += 1
            entry.gpu_seconds += cost.billed_seconds * gpus
            entry.cost = entry.cost + cost
            if tail is None or tail == Cost() or finished_at is None:
                return
            key = (endpoint, worker)
            last = self._last.get(key)
            if last is not None:  # the previous call's tail ran out, or this call cut it short
                gap = math.inf if started_at is None else started_at - last.finished_at
                idle = _part(last.tail, gap)
                entry.idle = entry.idle + idle
                entry.bursts += idle == last.tail
            self._last[key] = _LastCall(max(finished_at, last.finished_at if last else finished_at), tail)

    def _pending(self, endpoint: str) -> list[Cost]:
        return [last.tail for (name, _), last in self._last.items() if name == endpoint]

    def total(self) -> Cost:
        """Everything spent, counting the tail after each worker's latest call in full."""
        with self._lock:
            total = Cost()
            for entry in self._by_endpoint.values():
                total = total + entry.cost + entry.idle
            for last in self._last.values():
                total = total + last.tail
            return total

    def summary(self) -> dict[str, EndpointCosts]:
        with self._lock:
            summary = {}
            for name, entry in sorted(self._by_endpoint.items()):
                pending = self._pending(name)
                idle = entry.idle
                for tail in pending:
                    idle = idle + tail
                summary[name] = attrs.evolve(entry, idle=idle, bursts=entry.bursts + len(pending))
            return summary

    def reset(self) -> None:
        with self._lock:
            self._by_endpoint.clear()
            self._last.clear()


@attrs.define
class LedgerSummary:
    """``gpuflex costs``' row for one endpoint on one backend: its calls (GPU-seconds, or CPU-seconds for work that
    ran on the CPU), and the idle tails of its per-second workers, once per burst of calls."""

    endpoint: str
    backend: str
    calls: int = 0
    failed: int = 0
    gpu_seconds: float = 0.0
    cpu_seconds: float = 0.0
    billed_seconds: float = 0.0
    usd: float = 0.0
    unpriced: int = 0  # calls under billing "unknown": no published price, nothing counted
    bursts: int = 0
    idle_seconds: float = 0.0
    idle_gpu_seconds: float = 0.0
    idle_usd: float = 0.0

    @property
    def total_usd(self) -> float:
        return self.usd + self.idle_usd


def summarize(records: Iterable[dict[str, Any]]) -> list[LedgerSummary]:
    """Calls, compute seconds and dollars per (endpoint, backend) from ledger records, with one idle tail per burst
    of calls on a worker: a call that started within the previous call's tail cut it short."""
    rows: dict[tuple[str, str], LedgerSummary] = {}
    by_worker: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in records:
        key = (str(r.get("endpoint")), str(r.get("backend")))
        row = rows.setdefault(key, LedgerSummary(*key))
        row.calls += 1
        row.failed += r.get("status") != "COMPLETED"
        billed = float(r.get("billed_seconds") or 0.0)
        gpus = int(r.get("gpus") or 0)
        row.billed_seconds += billed
        if gpus:
            row.gpu_seconds += billed * gpus
        else:
            row.cpu_seconds += billed
        row.usd += float(r.get("cost_usd") or 0.0)
        row.unpriced += r.get("billing") == "unknown"
        if r.get("tail_seconds"):
            by_worker.setdefault((*key, str(r.get("worker") or "")), []).append(r)
    for (endpoint, backend, _worker), calls in by_worker.items():
        row = rows[(endpoint, backend)]
        calls.sort(key=lambda r: float(r.get("started_at") or r.get("finished_at") or 0.0))
        end = -math.inf
        for i, r in enumerate(calls):
            tail = Cost(usd=float(r.get("tail_usd") or 0.0), billed_seconds=float(r["tail_seconds"]))
            end = max(end, float(r.get("finished_at") or 0.0))
            following = calls[i + 1] if i + 1 < len(calls) else None
            start = float(following.get("started_at") or following.get("finished_at") or 0.0) if following else None
            idle = _part(tail, start - end) if start is not None else tail
            row.bursts += idle == tail
            row.idle_seconds += idle.billed_seconds
            row.idle_gpu_seconds += idle.billed_seconds * int(r.get("gpus") or 0)
            row.idle_usd += idle.usd
    return [rows[k] for k in sorted(rows)]

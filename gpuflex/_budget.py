"""The budget guard: keeps a process's spending within ``GPUFLEX_MAX_COST`` (``--max-cost``), counting the work in
flight: it refuses a job that would pass the limit, and says when running work must stop so as not to pass it."""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING

import attrs

from ._costs import CostMeter, job_cost, tail_cost

if TYPE_CHECKING:
    from ._models import Price

__all__ = ["BudgetGuard"]

_TINY_RUN = 1e-6  # seconds: a job that runs at all starts its first billing increment
_BUDGET_PRECISION = 0.001  # seconds: how finely the guard finds when running work would pass the budget


@attrs.define
class _Flight:
    """One job the guard admitted and that has not ended: what it is expected to cost, and what it costs so far."""

    endpoint: str
    price: Price
    expected: float  # USD of its own run: counted while it waits, and as long as it runs for less
    base: float = 0.0  # USD billed for its earlier attempts
    started: float | None = None  # when the running attempt started (time.time())
    worker: str | None = None  # the worker running it: its idle tail follows the job (per-second billing)
    stopped: float | None = None  # when the guard stopped it: its cost stops growing there

    def charge(self, at: float) -> float:
        if self.started is None:  # waiting: its run and the idle tail after it, as expected
            return self.base + (0.0 if self.stopped is not None else self.expected + tail_cost(self.price).usd)
        if self.stopped is not None:
            at = min(at, self.stopped)
        running = job_cost(self.price, run_seconds=max(at - self.started, _TINY_RUN)).usd
        return self.base + max(self.expected, running)


class BudgetGuard:
    """Keeps this process's spending within ``GPUFLEX_MAX_COST`` dollars (or ``limit``), counting work in flight.

    * Before a job is submitted, :meth:`admit` refuses it when what was spent, plus what the jobs in flight cost (at
      least what each is expected to), plus what this one is expected to cost would pass the limit. A job is expected
      to cost the mean of its endpoint's finished jobs, and at least the price's smallest charge (one billing
      increment), plus the idle tail its worker bills after it (per-second billing). A running job counts one idle
      tail per worker; the meter counts the tails of finished ones.
    * While jobs run, :meth:`seconds_left` says when their growing cost would reach the limit; the client stops them
      just before (:meth:`stop_all` names them), so the limit is not passed.

    Every method is called on the gpuflex loop thread; the lock guards readers on other threads (``gpuflex costs``).
    """

    def __init__(self, meter: CostMeter, limit: float | None = None) -> None:
        self.meter = meter
        raw = os.environ.get("GPUFLEX_MAX_COST")
        self.limit = limit if limit is not None else (float(raw) if raw else None)
        self._flights: dict[str, _Flight] = {}
        self._lock = threading.Lock()

    def current_limit(self) -> float | None:
        return self.limit

    def check(self) -> str | None:
        """A reason to refuse new work, or None (what was spent only; :meth:`admit` also counts work in flight)."""
        limit = self.current_limit()
        if limit is None:
            return None
        spent = self.meter.total().usd
        if spent >= limit:
            return f"budget of ${limit:.4f} reached (spent ${spent:.4f}); raise --max-cost / GPUFLEX_MAX_COST"
        return None

    def expected(self, endpoint: str, price: Price) -> float:
        """What a new job of ``endpoint`` is expected to cost: its endpoint's mean run so far, and at least the
        price's smallest charge, plus the idle tail after it (per-second billing)."""
        return self._expected_run(endpoint, price) + tail_cost(price).usd

    def _expected_run(self, endpoint: str, price: Price) -> float:
        least = job_cost(price, run_seconds=_TINY_RUN).usd
        entry = self.meter.summary().get(endpoint)
        mean = entry.cost.usd / entry.calls if entry is not None and entry.calls else 0.0
        return max(least, mean)

    def in_flight(self, at: float | None = None) -> float:
        """USD the admitted jobs that have not ended cost, counted as :class:`_Flight.charge` does."""
        at = time.time() if at is None else at
        with self._lock:
            return _charge(list(self._flights.values()), at)

    def admit(self, job_id: str, endpoint: str, price: Price, now: float | None = None) -> str | None:
        """Count a new job in flight, or return the reason to refuse it."""
        limit = self.current_limit()
        if limit is None:
            return None
        spent = self.meter.total().usd
        flying = self.in_flight(now)
        expected = self.expected(endpoint, price)
        committed = spent + flying
        if committed >= limit or committed + expected > limit + 1e-12:
            return (
                f"budget of ${limit:.4f} would be passed: spent ${spent:.4f}, ${flying:.4f} in flight, and this call "
                f"is expected to cost ${expected:.4f}; raise --max-cost / GPUFLEX_MAX_COST"
            )
        with self._lock:
            self._flights[job_id] = _Flight(endpoint, price, self._expected_run(endpoint, price))
        return None

    def started(self, job_id: str, at: float, billed_before: float = 0.0, worker: str | None = None) -> None:
        """An attempt of an admitted job started running at ``at`` (on ``worker``)."""
        with self._lock:
            flight = self._flights.get(job_id)
            if flight is not None:
                flight.started, flight.base, flight.worker = at, billed_before, worker

    def finished(self, job_id: str) -> None:
        """The job ended and its cost is in the meter."""
        with self._lock:
            self._flights.pop(job_id, None)

    def seconds_left(self, now: float | None = None) -> float | None:
        """Seconds until the running jobs' cost would reach the limit (0 when it has); None when none runs."""
        limit = self.current_limit()
        now = time.time() if now is None else now
        with self._lock:
            flights = list(self._flights.values())
        if limit is None or not any(f.started is not None and f.stopped is None for f in flights):
            return None
        spent = self.meter.total().usd

        def reached(dt: float) -> bool:
            return spent + _charge(flights, now + dt) > limit + 1e-12

        if reached(0.0):
            return 0.0
        high = _BUDGET_PRECISION
        while not reached(high):
            high *= 2
            if high > 86_400:
                return high  # a day or more away: look again later
        low = 0.0
        while high - low > _BUDGET_PRECISION:
            middle = (low + high) / 2
            if reached(middle):
                high = middle
            else:
                low = middle
        return low

    def stop_all(self, now: float | None = None) -> list[str]:
        """Mark every job in flight stopped and return their ids: the client cancels them before the budget is
        passed. They count (at what they cost until now) until they end."""
        now = time.time() if now is None else now
        with self._lock:
            ids = [job_id for job_id, flight in self._flights.items() if flight.stopped is None]
            for job_id in ids:
                self._flights[job_id].stopped = now
        return ids

    def reason_to_stop(self) -> str:
        limit = self.current_limit()
        return (f"stopped by the budget guard before the budget of ${limit or 0:.4f} was passed (spent "
                f"${self.meter.total().usd:.4f}); raise --max-cost / GPUFLEX_MAX_COST")


def _charge(flights: list[_Flight], at: float) -> float:
    """What ``flights`` cost at ``at``: each job's own charge, and one idle tail per worker running any of them (a
    job that waits has its tail in its expected cost)."""
    total = sum(flight.charge(at) for flight in flights)
    tails = {(f.endpoint, f.worker): tail_cost(f.price).usd for f in flights if f.started is not None}
    return total + sum(tails.values())

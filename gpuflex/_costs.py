"""The cost meter: each finished job's cost from its backend's price and billing rule, summed per endpoint, with a
budget guard that refuses new work once a limit is reached."""

from __future__ import annotations

import math
import os
import threading

import attrs

from ._models import Cost, Price

__all__ = ["BudgetGuard", "CostMeter", "EndpointCosts", "job_cost"]


def job_cost(price: Price, *, run_seconds: float, queue_seconds: float = 0.0) -> Cost:
    """What one job cost under ``price``'s billing rule.

    * ``free``: nothing.
    * ``per-second``: execution time plus the idle tail, rounded up to the billing increment (RunPod, Modal).
    * ``uptime``: the job's share of an hourly machine: its running time at the hourly rate (local, pods). Idle
      time between jobs is the machine's, reported per worker rather than per job.
    """
    if price.billing == "free" or price.usd_per_hour == 0:
        return Cost(usd=0.0, billed_seconds=run_seconds, rule=price.billing)
    if price.billing == "per-second":
        seconds = run_seconds + price.tail_seconds
        billed = seconds
        if price.increment:
            # the epsilon keeps float noise (1.1 / 0.1 = 11.000000000000002) from billing an extra increment,
            # without ever billing less than the time itself (a few nanoseconds still start an increment)
            units = math.ceil(seconds / price.increment - 1e-9)
            if units * price.increment < seconds - 1e-9:
                units += 1
            billed = units * price.increment
        return Cost(usd=billed * price.usd_per_second, billed_seconds=billed, rule="per-second")
    return Cost(usd=run_seconds * price.usd_per_second, billed_seconds=run_seconds, rule=price.billing)


@attrs.define
class EndpointCosts:
    calls: int = 0
    gpu_seconds: float = 0.0
    cost: Cost = Cost()


class CostMeter:
    """Totals per endpoint for this process (``gpuflex.costs()``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_endpoint: dict[str, EndpointCosts] = {}

    def record(self, endpoint: str, cost: Cost, gpus: int) -> None:
        with self._lock:
            entry = self._by_endpoint.setdefault(endpoint, EndpointCosts())
            entry.calls += 1
            entry.gpu_seconds += cost.billed_seconds * gpus
            entry.cost = entry.cost + cost

    def total(self) -> Cost:
        with self._lock:
            total = Cost()
            for entry in self._by_endpoint.values():
                total = total + entry.cost
            return total

    def summary(self) -> dict[str, EndpointCosts]:
        with self._lock:
            return {name: attrs.evolve(entry) for name, entry in sorted(self._by_endpoint.items())}

    def reset(self) -> None:
        with self._lock:
            self._by_endpoint.clear()


class BudgetGuard:
    """Refuses new jobs once this process has spent ``GPUFLEX_MAX_COST`` dollars (or ``limit``)."""

    def __init__(self, meter: CostMeter, limit: float | None = None) -> None:
        self.meter = meter
        raw = os.environ.get("GPUFLEX_MAX_COST")
        self.limit = limit if limit is not None else (float(raw) if raw else None)

    def current_limit(self) -> float | None:
        return self.limit

    def check(self) -> str | None:
        """A reason to refuse new work, or None."""
        limit = self.current_limit()
        if limit is None:
            return None
        spent = self.meter.total().usd
        if spent >= limit:
            return f"budget of ${limit:.4f} reached (spent ${spent:.4f}); raise --max-cost / GPUFLEX_MAX_COST"
        return None

"""The queue-driven scaling policy shared by the local and pod backends.

Pure: no I/O and no clock. A backend calls :func:`decide` whenever something changes (a job is queued or
finishes, a worker becomes ready or dies) and again at :func:`next_check`, then applies it. The rules:

* *alive* workers are those not STOPPING or DEAD;
* start enough workers that the jobs queued beyond free capacity get one (STARTING workers count as fully
  free), and enough to reach ``min_workers``, but never past ``max_workers`` alive;
* stop only IDLE workers with nothing running whose ``idle_timeout`` has run out, longest idle first, never
  below ``min_workers`` and never while a queued job would then need a start: no decision starts and stops.
"""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING

import attrs

from .._models import WorkerState
from ..errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._models import EndpointSpec

__all__ = ["ScaleDecision", "ScalePolicy", "WorkerView", "decide", "next_check"]

_GONE = (WorkerState.STOPPING, WorkerState.DEAD)


@typing.final
@attrs.frozen(kw_only=True)
class WorkerView:
    """What the policy needs to know about one worker."""

    id: str
    state: WorkerState
    active: int = 0
    """Jobs running on it now."""
    idle_since: float | None = None
    """When it last became idle; None while it is starting or busy."""

    @property
    def alive(self) -> bool:
        return self.state not in _GONE


@typing.final
@attrs.frozen(kw_only=True)
class ScalePolicy:
    """Scaling bounds: ``min_workers`` to ``max_workers`` workers, each running ``concurrency`` jobs."""

    min_workers: int
    max_workers: int
    concurrency: int = 1
    idle_timeout: float = 60.0

    def __attrs_post_init__(self) -> None:
        if self.min_workers < 0:
            raise ConfigError(f"min_workers must not be negative, got {self.min_workers}")
        if self.max_workers < max(1, self.min_workers):
            raise ConfigError(
                f"max_workers must be at least 1 and at least min_workers ({self.min_workers}), "
                f"got {self.max_workers}"
            )
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {self.concurrency}")
        if not self.idle_timeout >= 0:
            raise ConfigError(f"idle_timeout must be non-negative seconds, got {self.idle_timeout!r}")

    @classmethod
    def from_spec(cls, spec: EndpointSpec) -> ScalePolicy:
        return cls(
            min_workers=spec.min_workers,
            max_workers=spec.max_workers,
            concurrency=spec.calls_per_worker,  # batched endpoints: a worker takes a batch's worth per slot
            idle_timeout=spec.idle_timeout,
        )


@typing.final
@attrs.frozen(kw_only=True)
class ScaleDecision:
    """Start ``start`` new workers, or stop the workers with these ids (never both)."""

    start: int = 0
    stop: tuple[str, ...] = ()


def _expires_at(policy: ScalePolicy, worker: WorkerView) -> float | None:
    """When an idle worker's timeout runs out; None if it is not idle. One expression for both functions."""
    if worker.state is not WorkerState.IDLE or worker.active > 0 or worker.idle_since is None:
        return None
    return worker.idle_since + policy.idle_timeout


def _free(policy: ScalePolicy, worker: WorkerView) -> int:
    if worker.state is WorkerState.STARTING:
        return policy.concurrency
    return max(0, policy.concurrency - worker.active)


def decide(policy: ScalePolicy, *, queued: int, workers: Sequence[WorkerView], now: float) -> ScaleDecision:
    """How many workers to start, or which to stop, given ``queued`` waiting jobs at time ``now``."""
    alive = [w for w in workers if w.alive]
    free = sum(_free(policy, w) for w in alive)
    short = max(0, queued - free)
    wanted = max(-(-short // policy.concurrency), policy.min_workers - len(alive))
    start = max(0, min(wanted, policy.max_workers - len(alive)))
    if start or short:
        return ScaleDecision(start=start)
    expired = sorted(
        ((at, w.id) for w in alive if (at := _expires_at(policy, w)) is not None and at <= now),
        key=lambda pair: (pair[0], pair[1]),
    )
    # Each stop removes a whole worker's capacity; keep enough for the queue and for min_workers.
    spare = min(len(alive) - policy.min_workers, (free - queued) // policy.concurrency)
    return ScaleDecision(stop=tuple(wid for _, wid in expired[: max(0, spare)]))


def next_check(policy: ScalePolicy, workers: Sequence[WorkerView], now: float) -> float | None:
    """The earliest time after ``now`` at which an idle worker's timeout runs out, or None."""
    times = [at for w in workers if w.alive and (at := _expires_at(policy, w)) is not None and at > now]
    return min(times, default=None)

from __future__ import annotations

import itertools
from collections import deque

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuflex._models import WorkerState
from gpuflex.errors import ConfigError
from gpuflex.workerpool._autoscaler import ScaleDecision, ScalePolicy, WorkerView, decide, next_check

S = WorkerState


def idle(wid: str, since: float) -> WorkerView:
    return WorkerView(id=wid, state=S.IDLE, idle_since=since)


def busy(wid: str, active: int = 1) -> WorkerView:
    return WorkerView(id=wid, state=S.BUSY, active=active)


def policy(lo: int = 0, hi: int = 4, concurrency: int = 1, idle_timeout: float = 10.0) -> ScalePolicy:
    return ScalePolicy(min_workers=lo, max_workers=hi, concurrency=concurrency, idle_timeout=idle_timeout)


# --- unit tests, one rule each ---


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_workers": -1, "max_workers": 1},
        {"min_workers": 0, "max_workers": 0},
        {"min_workers": 3, "max_workers": 2},
        {"min_workers": 0, "max_workers": 1, "concurrency": 0},
        {"min_workers": 0, "max_workers": 1, "idle_timeout": -1.0},
        {"min_workers": 0, "max_workers": 1, "idle_timeout": float("nan")},
    ],
)
def test_policy_rejects_bad_bounds(kwargs):
    with pytest.raises(ConfigError):
        ScalePolicy(**kwargs)


def test_nothing_to_do():
    assert decide(policy(), queued=0, workers=[], now=0) == ScaleDecision()


def test_starts_to_reach_min_workers():
    assert decide(policy(lo=2), queued=0, workers=[], now=0) == ScaleDecision(start=2)
    assert decide(policy(lo=2), queued=0, workers=[busy("a")], now=0) == ScaleDecision(start=1)


def test_starts_for_queued_jobs_beyond_free_capacity():
    assert decide(policy(), queued=3, workers=[busy("a")], now=0).start == 3
    assert decide(policy(), queued=3, workers=[idle("a", 0)], now=0).start == 2


def test_ceil_division_by_concurrency():
    assert decide(policy(concurrency=3), queued=4, workers=[], now=0).start == 2
    assert decide(policy(concurrency=3), queued=3, workers=[], now=0).start == 1
    # a busy worker with one free slot takes one of the queued jobs
    assert decide(policy(concurrency=3), queued=4, workers=[busy("a", 2)], now=0).start == 1


def test_starting_workers_count_as_fully_free():
    starting = WorkerView(id="a", state=S.STARTING)
    assert decide(policy(concurrency=2), queued=2, workers=[starting], now=0) == ScaleDecision()
    assert decide(policy(concurrency=2), queued=3, workers=[starting], now=0).start == 1


def test_stopping_and_dead_workers_are_not_alive():
    gone = [WorkerView(id="a", state=S.STOPPING), WorkerView(id="b", state=S.DEAD)]
    assert decide(policy(lo=1, hi=1), queued=0, workers=gone, now=0).start == 1
    assert decide(policy(hi=2), queued=5, workers=gone, now=0).start == 2


def test_never_above_max_workers():
    assert decide(policy(hi=3), queued=100, workers=[busy("a")], now=0).start == 2
    assert decide(policy(hi=1), queued=100, workers=[busy("a")], now=0) == ScaleDecision()
    # already above max (the policy was lowered): start nothing, stop nothing busy
    assert decide(policy(hi=1), queued=5, workers=[busy("a"), busy("b")], now=0) == ScaleDecision()


def test_stops_expired_idle_workers_down_to_min():
    workers = [idle("a", 0), idle("b", 0), idle("c", 0)]
    assert decide(policy(lo=1), queued=0, workers=workers, now=10).stop == ("a", "b")
    assert decide(policy(lo=0), queued=0, workers=workers, now=10).stop == ("a", "b", "c")
    assert decide(policy(lo=3), queued=0, workers=workers, now=10) == ScaleDecision()


def test_does_not_stop_before_idle_timeout():
    assert decide(policy(), queued=0, workers=[idle("a", 0.5)], now=10) == ScaleDecision()
    assert decide(policy(), queued=0, workers=[idle("a", 0.5)], now=10.5).stop == ("a",)


def test_only_idle_workers_with_nothing_running_are_stopped():
    workers = [
        WorkerView(id="busy", state=S.BUSY, idle_since=0),
        WorkerView(id="running", state=S.IDLE, active=1, idle_since=0),
        WorkerView(id="unknown", state=S.IDLE, idle_since=None),
        WorkerView(id="starting", state=S.STARTING, idle_since=0),
        WorkerView(id="stopping", state=S.STOPPING, idle_since=0),
        idle("ok", 0),
    ]
    assert decide(policy(concurrency=2, hi=9), queued=0, workers=workers, now=100).stop == ("ok",)


def test_longest_idle_first_and_deterministic():
    workers = [idle("c", 5), idle("b", 1), idle("a", 5), idle("d", 3)]
    assert decide(policy(lo=2), queued=0, workers=workers, now=100).stop == ("b", "d")
    assert decide(policy(lo=1), queued=0, workers=workers[::-1], now=100).stop == ("b", "d", "a")


def test_never_starts_and_stops_together():
    # one worker expired but a queued job needs more capacity than exists: start, stop nothing
    workers = [idle("a", 0), busy("b")]
    assert decide(policy(), queued=3, workers=workers, now=100) == ScaleDecision(start=2)
    # at max: no start possible, and still no stop while jobs wait
    assert decide(policy(hi=2), queued=3, workers=workers, now=100) == ScaleDecision()


def test_keeps_capacity_for_queued_jobs():
    workers = [idle("a", 0), idle("b", 0), idle("c", 0)]
    assert decide(policy(), queued=1, workers=workers, now=100).stop == ("a", "b")
    assert decide(policy(concurrency=2), queued=3, workers=workers, now=100).stop == ("a",)


def test_next_check():
    p = policy(idle_timeout=10)
    assert next_check(p, [], now=0) is None
    assert next_check(p, [busy("a"), WorkerView(id="s", state=S.STARTING)], now=0) is None
    assert next_check(p, [idle("a", 5), idle("b", 2), busy("c")], now=3) == 12
    # expired ones are not in the future; decide() handles them now
    assert next_check(p, [idle("a", 5), idle("b", 2)], now=12) == 15
    assert next_check(p, [idle("a", 5)], now=15) is None
    assert next_check(p, [WorkerView(id="x", state=S.STOPPING, idle_since=5)], now=0) is None


def test_from_spec():
    from gpuflex._models import EndpointKind, EndpointSpec, FunctionRef

    spec = EndpointSpec(
        name="e",
        kind=EndpointKind.FUNCTION,
        target=FunctionRef(module="m", qualname="f"),
        min_workers=1,
        max_workers=3,
        concurrency=2,
        idle_timeout=5,
    )
    assert ScalePolicy.from_spec(spec) == policy(lo=1, hi=3, concurrency=2, idle_timeout=5)


# --- property tests ---

times = st.integers(0, 400).map(lambda n: n / 4)


@st.composite
def policies(draw):
    lo = draw(st.integers(0, 3))
    hi = draw(st.integers(max(1, lo), lo + 4))
    return ScalePolicy(
        min_workers=lo,
        max_workers=hi,
        concurrency=draw(st.integers(1, 3)),
        idle_timeout=draw(st.integers(0, 80).map(lambda n: n / 4)),
    )


worker_views = st.builds(
    WorkerView,
    id=st.text("abcdef", min_size=1, max_size=3),
    state=st.sampled_from(WorkerState),
    active=st.integers(0, 4),
    idle_since=st.none() | times,
)


@settings(max_examples=200, deadline=None)
@given(
    p=policies(),
    queued=st.integers(0, 20),
    workers=st.lists(worker_views, max_size=12, unique_by=lambda w: w.id),
    now=st.integers(0, 480).map(lambda n: n / 4),
)
def test_decide_invariants(p, queued, workers, now):
    d = decide(p, queued=queued, workers=workers, now=now)
    assert d == decide(p, queued=queued, workers=list(workers), now=now)  # deterministic
    alive = sum(w.state not in (S.STOPPING, S.DEAD) for w in workers)
    assert d.start >= 0
    assert alive + d.start <= max(p.max_workers, alive)
    if alive >= p.max_workers:
        assert d.start == 0
    assert alive - len(d.stop) >= min(p.min_workers, alive)
    assert not (d.start and d.stop)
    live = [w for w in workers if w.state not in (S.STOPPING, S.DEAD)]
    free = sum(p.concurrency if w.state is S.STARTING else max(0, p.concurrency - w.active) for w in live)
    needed = -(-max(0, queued - free) // p.concurrency)
    assert d.start == max(0, min(max(needed, p.min_workers - alive), p.max_workers - alive))  # no more, no less
    assert len(set(d.stop)) == len(d.stop)
    by_id = {w.id: w for w in workers}
    for wid in d.stop:
        w = by_id[wid]
        assert w.state is S.IDLE and w.active == 0 and w.idle_since is not None
        assert now >= w.idle_since + p.idle_timeout
    check = next_check(p, workers, now)
    assert check is None or check > now


@attrs.define
class _Worker:
    id: str
    state: WorkerState
    at: float  # when STARTING ends, or when STOPPING ends
    ends: list[float] = attrs.field(factory=list)  # end times of running jobs
    idle_since: float | None = None

    def view(self) -> WorkerView:
        return WorkerView(id=self.id, state=self.state, active=len(self.ends), idle_since=self.idle_since)


def simulate(p: ScalePolicy, jobs: list[tuple[float, float]], delays: list[float]) -> None:
    arrivals = deque(sorted(jobs))
    queue: deque[float] = deque()  # durations of waiting jobs
    workers: dict[str, _Worker] = {}
    ids = (f"w{n:04d}" for n in itertools.count())
    startup = itertools.cycle(delays)
    done = 0
    now = 0.0
    reached_min = False

    def alive() -> list[_Worker]:
        return [w for w in workers.values() if w.state not in (S.STOPPING, S.DEAD)]

    for _ in range(5_000):
        # 1. let time act: jobs finish, workers come up or go away, jobs arrive
        for w in list(workers.values()):
            done += sum(end <= now for end in w.ends)
            w.ends = [end for end in w.ends if end > now]
            if w.state is S.STARTING and w.at <= now or w.state is S.BUSY and not w.ends:
                w.state, w.idle_since = S.IDLE, now
            elif w.state is S.STOPPING and w.at <= now:
                del workers[w.id]
        while arrivals and arrivals[0][0] <= now:
            queue.append(arrivals.popleft()[1])
        # 2. dispatch waiting jobs to workers with a free slot
        for w in sorted(alive(), key=lambda w: w.id):
            while queue and w.state in (S.IDLE, S.BUSY) and len(w.ends) < p.concurrency:
                w.ends.append(now + queue.popleft())
                w.state, w.idle_since = S.BUSY, None
        # 3. decide and apply
        views = [w.view() for w in workers.values()]
        d = decide(p, queued=len(queue), workers=views, now=now)
        assert not (d.start and d.stop)
        before = len(alive())
        free = sum(p.concurrency for w in alive() if w.state is S.STARTING)
        if len(queue) > free and before < p.max_workers:  # no starvation
            assert d.start >= 1
        assert before + d.start <= max(p.min_workers, before + -(-max(0, len(queue) - free) // p.concurrency))
        for wid in d.stop:
            w = workers[wid]
            assert w.state is S.IDLE and not w.ends and w.idle_since is not None
            assert now >= w.idle_since + p.idle_timeout
            w.state, w.at, w.idle_since = S.STOPPING, now + next(startup), None
        for _ in range(d.start):
            wid = next(ids)
            workers[wid] = _Worker(id=wid, state=S.STARTING, at=now + next(startup))
        n = len(alive())
        assert n <= p.max_workers
        reached_min = reached_min or n >= p.min_workers
        assert reached_min  # the very first decision brings the pool up to min_workers
        assert n >= p.min_workers
        # 4. advance to the next event
        events = [end for w in workers.values() for end in w.ends]
        events += [w.at for w in workers.values() if w.state in (S.STARTING, S.STOPPING)]
        if arrivals:
            events.append(arrivals[0][0])
        check = next_check(p, [w.view() for w in workers.values()], now)
        if check is not None:
            events.append(check)
        if not events:
            break
        nxt = min(events)
        assert nxt >= now
        now = nxt
    else:
        pytest.fail("simulation did not settle")

    assert done == len(jobs) and not queue and not arrivals
    assert len(alive()) == p.min_workers
    assert all(w.state is S.IDLE for w in workers.values())


def test_simulate_smoke():
    jobs = [(0, 10), (0, 10), (1, 3), (1, 3), (2, 1)]
    simulate(policy(lo=1, hi=3, concurrency=2, idle_timeout=5), jobs, [2])


@settings(max_examples=200, deadline=None)
@given(
    p=policies(),
    jobs=st.lists(st.tuples(times, st.integers(0, 80).map(lambda n: n / 4)), max_size=30),
    delays=st.lists(st.integers(0, 20).map(lambda n: n / 4), min_size=1, max_size=5),
)
def test_simulation(p, jobs, delays):
    simulate(p, jobs, delays)

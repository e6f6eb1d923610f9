"""``gpuflex costs --compare``: the same work priced on every installed backend's price model, and the utilisation at
which a pod billed by the hour costs what serverless billed by the second does.

The work is either the jobs of the ledger, grouped by the GPU their endpoint asked for, or a plan's expected load
(calls per hour and seconds per call). Each backend prices it as its ``price()`` says (after the ``gpuflex_price``
hook), for the same GPU:

* **per-second** billing (RunPod, Modal): each job's own run rounded up to the billing increment, plus the idle
  tail a worker bills after the last call of a burst (once per burst: a call that came within the tail cut it
  short, as ``gpuflex costs`` counts it).
* **uptime** billing (pods, a local machine with an ``hourly_rate``): the hourly rate for as long as the work
  spanned (first job submitted to last job finished), as if a pod was kept up throughout; a workload busier than
  its span (jobs that overlapped) needs ``ceil(utilisation)`` pods.
* **free** and **unknown** prices are shown as such and never enter a break-even.

For a plan, the figures are per hour of the load, with the calls evenly spaced: a per-second worker then bills,
after each call, the gap to the next one up to its idle tail.

The **break-even utilisation** between a pod at ``P`` $/h and serverless at ``S`` $/h is ``P / S`` counting busy
seconds only, and lower with idle tails: at ``u`` of an hour busy with calls of ``s`` seconds, serverless bills
``3600 u / s`` calls, each rounded up to the increment and followed by ``min(gap, tail)`` seconds idle, where
``gap = s / u - s``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs

from .._config import load_project_config
from .._costs import job_cost, summarize, tail_cost
from .._models import EndpointKind, EndpointSpec, FunctionRef, Price, Resources
from .._plugins import call_price
from .._registry import get_registry
from ..gpus import parse_gpu
from ._report import make_backend, usd

if TYPE_CHECKING:
    from ..gpus import GPU

__all__ = ["BreakEven", "Comparison", "Quote", "Workload", "compare", "ledger_workloads", "plan_workloads",
           "serverless_hourly"]

HOURS_PER_MONTH = 730.0


@attrs.frozen
class Workload:
    """What is priced: ledger jobs (``records``) or a plan's load (``calls_per_hour``), on ``spec``'s GPU."""

    label: str
    spec: EndpointSpec
    endpoints: tuple[str, ...]
    records: tuple[dict[str, Any], ...] = ()
    calls_per_hour: float | None = None
    seconds_per_call: float = 1.0

    @property
    def is_plan(self) -> bool:
        return self.calls_per_hour is not None

    @property
    def ran(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("run_time") is not None]

    @property
    def busy_seconds(self) -> float:
        if self.calls_per_hour is not None:
            return self.calls_per_hour * self.seconds_per_call
        return sum(float(r["run_time"]) for r in self.ran)

    @property
    def span_seconds(self) -> float:
        """Plans: an hour. Ledger jobs: from the first submitted to the last finished."""
        if self.calls_per_hour is not None or not self.records:
            return 3600.0
        starts = [float(r.get("submitted_at") or r.get("started_at") or r["finished_at"]) for r in self.records]
        return max(1e-9, max(float(r["finished_at"]) for r in self.records) - min(starts))

    @property
    def utilisation(self) -> float:
        """Busy seconds over the span, for one worker (above 1 when jobs overlapped)."""
        return self.busy_seconds / self.span_seconds


@attrs.frozen
class Quote:
    """What the workload costs (``usd``; per hour for a plan; ``None`` when the price is unknown) on one backend."""

    backend: str
    price: Price
    usd: float | None
    how: str


@attrs.frozen
class BreakEven:
    """The utilisation at which ``pod`` costs what ``serverless`` does (``None``: serverless is cheaper even busy
    all the time)."""

    pod: str
    serverless: str
    pod_usd_per_hour: float
    serverless_usd_per_hour: float
    busy_only: float | None
    with_tails: float | None
    seconds_per_call: float


@attrs.frozen
class Comparison:
    workload: Workload
    recorded: dict[str, float | None]  # ledger: backend the jobs ran on -> what they cost there (None: unknown)
    quotes: tuple[Quote, ...]
    break_even: tuple[BreakEven, ...]


def _spec(gpu: GPU | None, base: EndpointSpec | None = None) -> EndpointSpec:
    if base is not None:
        return attrs.evolve(base, resources=attrs.evolve(base.resources, gpu=gpu))
    return EndpointSpec(name="compare", kind=EndpointKind.FUNCTION, target=FunctionRef(module="x", qualname="x"),
                        resources=Resources(gpu=gpu))


def _label(gpu: GPU | None) -> str:
    return "CPU" if gpu is None else str(gpu)


def ledger_workloads(records: list[dict[str, Any]], gpu: str | None = None) -> list[Workload]:
    """The ledger's jobs grouped by the GPU their endpoint asked for (``gpu`` prices them all on that one instead).
    Jobs recorded before gpuflex recorded the GPU name, on a GPU, are left out unless ``gpu`` is given."""
    override = parse_gpu(gpu) if gpu else None
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if override is not None:
            key = _label(override)
        elif r.get("gpu"):
            key = _label(parse_gpu(r["gpu"]))
        elif int(r.get("gpus") or 0) == 0:
            key = "CPU"
        else:
            continue  # ran on an unnamed GPU
        groups.setdefault(key, []).append(r)
    out = []
    for key, group in sorted(groups.items()):
        requested = override if override is not None else (None if key == "CPU" else parse_gpu(key))
        runs = [float(r["run_time"]) for r in group if r.get("run_time") is not None]
        out.append(Workload(key, _spec(requested), tuple(sorted({str(r["endpoint"]) for r in group})),
                            tuple(group), None, sum(runs) / len(runs) if runs else 1.0))
    return out


def plan_workloads(specs: list[EndpointSpec], gpu: str | None, calls_per_hour: float, seconds_per_call: float
                   ) -> list[Workload]:
    """An expected load on each of ``specs`` (an app's endpoints), or on ``gpu`` alone when ``specs`` is empty."""
    if not specs:
        requested = parse_gpu(gpu) if gpu else None
        return [Workload(_label(requested), _spec(requested), (), (), calls_per_hour, seconds_per_call)]
    out = []
    for spec in specs:
        requested = parse_gpu(gpu) if gpu else spec.gpu
        out.append(Workload(f"{spec.name} ({_label(requested)})", _spec(requested, spec), (spec.name,), (),
                            calls_per_hour, seconds_per_call))
    return out


def price_models(spec: EndpointSpec, pod_rate: float | None = None) -> list[tuple[str, Price]]:
    """Each installed backend's price for ``spec`` (its project-file options, then the ``gpuflex_price`` hook), and
    a pod at ``pod_rate`` $ per GPU-hour when given (for work on a GPU)."""
    project = load_project_config()
    models = []
    for name in get_registry().names():
        try:
            instance = make_backend(name, dict(project.backends.get(name, {})))
            price = call_price(spec, name, instance.price(spec))
        except Exception as exc:  # a backend that cannot price this (bad options, a missing SDK): say why
            price = Price(billing="unknown", source=f"could not price it: {type(exc).__name__}: {exc}")
        models.append((name, price))
    if pod_rate is not None and spec.gpu is not None:
        models.append((f"pod at {usd(pod_rate)}/GPU-h", Price(usd_per_hour=pod_rate * spec.gpu.count,
                                                              billing="uptime", source="--pod-rate")))
    return models


def serverless_hourly(price: Price, utilisation: float, seconds_per_call: float) -> float:
    """$ per hour of per-second billing at ``utilisation`` of one worker, with calls of ``seconds_per_call``
    evenly spaced: each billed rounded up, then idle until the next call, up to the idle tail."""
    if utilisation <= 0:
        return 0.0
    calls = 3600.0 * utilisation / seconds_per_call
    gap = max(0.0, seconds_per_call / utilisation - seconds_per_call)
    tail = tail_cost(price).billed_seconds
    idle = tail if gap >= tail else gap
    return calls * (job_cost(price, run_seconds=seconds_per_call).billed_seconds + idle) * price.usd_per_second


def _break_even(pod: tuple[str, Price], serverless: tuple[str, Price], seconds_per_call: float) -> BreakEven:
    (pod_name, pod_price), (sls_name, sls_price) = pod, serverless
    rate, target = sls_price.usd_per_hour, pod_price.usd_per_hour
    busy = target / rate if target <= rate else None
    tails: float | None = None
    if serverless_hourly(sls_price, 1.0, seconds_per_call) >= target:
        low, high = 0.0, 1.0  # the cost grows with utilisation: bisect to a millionth
        while high - low > 1e-7:
            mid = (low + high) / 2
            low, high = (mid, high) if serverless_hourly(sls_price, mid, seconds_per_call) < target else (low, mid)
        tails = high
    return BreakEven(pod_name, sls_name, target, rate, busy, tails, seconds_per_call)


def _quote(workload: Workload, name: str, price: Price) -> Quote:
    if price.billing == "unknown":
        return Quote(name, price, None, price.source or "no published price")
    if price.billing == "free" or not price.usd_per_hour:
        return Quote(name, price, 0.0, f"free: {price.source}" if price.source else "free")
    if price.billing == "per-second":
        if workload.is_plan:
            cost = serverless_hourly(price, workload.utilisation, workload.seconds_per_call)
            return Quote(name, price, cost, "per hour, calls evenly spaced, idle tails included")
        repriced = []
        for r in workload.ran:
            own, tail = job_cost(price, run_seconds=float(r["run_time"])), tail_cost(price)
            repriced.append({**r, "cost_usd": own.usd, "billed_seconds": own.billed_seconds, "billing": price.billing,
                             "tail_usd": tail.usd, "tail_seconds": tail.billed_seconds})
        rows = summarize(repriced)
        bursts = sum(row.bursts for row in rows)
        return Quote(name, price, sum(row.total_usd for row in rows),
                     f"{len(repriced)} runs rounded up + {bursts} idle tail(s)")
    pods = max(1, math.ceil(workload.utilisation - 1e-9))
    hours = workload.span_seconds / 3600
    how = "per hour, kept up" if workload.is_plan else f"up {hours:.3g} h, first job to last"
    return Quote(name, price, pods * hours * price.usd_per_hour, how + (f", {pods} pods" if pods > 1 else ""))


def _recorded(workload: Workload) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for row in summarize(workload.records):
        if row.unpriced == row.calls:  # no published price: unknown, unless another endpoint's jobs had one
            out.setdefault(row.backend, None)
        else:
            out[row.backend] = (out.get(row.backend) or 0.0) + row.total_usd
    return out


def compare(workload: Workload, pod_rate: float | None = None) -> Comparison:
    models = price_models(workload.spec, pod_rate)
    quotes = tuple(_quote(workload, name, price) for name, price in models)
    pods = [(n, p) for n, p in models if p.billing == "uptime" and p.usd_per_hour > 0]
    serverless = [(n, p) for n, p in models if p.billing == "per-second" and p.usd_per_hour > 0]
    even = tuple(_break_even(pod, sls, workload.seconds_per_call) for pod in pods for sls in serverless)
    return Comparison(workload, {} if workload.is_plan else _recorded(workload), quotes, even)

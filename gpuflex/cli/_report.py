"""What the CLI computes and shows: deploy plans with cost estimates, installed backends, the job ledger."""

from __future__ import annotations

import contextlib
import datetime
import math
import typing
from typing import TYPE_CHECKING, Any

import attrs
from rich import box
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

from .._config import resolve_backend, use
from .._costs import job_cost, summarize, tail_cost
from .._plugins import call_endpoint_spec, call_price
from .._registry import get_registry

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from .._apps import LoadedApp
    from .._models import Cost, EndpointSpec, Price
    from ..backend import Backend
    from ..client._endpoint import Endpoint

__all__ = ["PlanRow", "backends_table", "costs_json", "costs_table", "jobs_table", "plan", "plan_table", "usd"]


def usd(value: float) -> str:
    """Dollars with enough digits to be non-zero: cents from $1 up, three significant digits below
    ($0.0125, $0.004), never "$0.00" for a cost that is not nothing."""
    if value == 0:
        return "$0"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    decimals = min(10, max(2, 2 - math.floor(math.log10(abs(value)))))
    text = f"{value:.{decimals}f}".rstrip("0")
    if len(text.split(".")[1]) < 2:
        text = f"{value:.2f}"
    return f"${text}" if float(text) else ("<$0.0000000001" if value > 0 else "-<$0.0000000001")


def _seconds(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"


@attrs.frozen
class PlanRow:
    """What one endpoint would cost. ``per_call`` is one call's own run; ``tail`` what a per-second worker bills
    idle after the last call of a burst. Per 1,000 calls: ``usd_per_1000_calls`` has them arrive together (one
    burst: a tail per worker, up to ``max_workers``), ``worst_per_1000_calls`` one at a time (each pays a tail)."""

    spec: EndpointSpec
    backend: str
    price: Price
    idle_usd_per_hour: float
    per_call: Cost
    tail: Cost
    usd_per_1000_calls: float
    worst_per_1000_calls: float
    notes: tuple[str, ...]


def make_backend(name: str, options: dict[str, Any] | None = None) -> Backend:
    """An instance of the backend called ``name`` (no I/O: backends connect on deploy)."""
    cls = get_registry().get(name)
    return cls(cls.config_cls(**(options or {})))


def endpoint_backends(
    loaded: LoadedApp, backend: str | None, on_new: Callable[[Backend], object] | None = None
) -> Iterator[tuple[Endpoint[Any, Any], Backend]]:
    """Each endpoint of ``loaded`` with the backend it would run on (one instance per backend and options);
    ``on_new`` sees each instance as it is made."""
    instances: dict[tuple[str, str], Backend] = {}
    for ep in loaded.endpoints.values():
        with use(backend) if backend else contextlib.nullcontext():
            choice = resolve_backend(ep.name, ep.spec.backend, ep.spec)
        key = choice.key()
        if key not in instances:
            instances[key] = make_backend(choice.name, dict(choice.options))
            if on_new is not None:
                on_new(instances[key])
        yield ep, instances[key]


def plan(loaded: LoadedApp, backend: str | None, seconds_per_call: float) -> list[PlanRow]:
    """What deploying every endpoint of ``loaded`` would create and cost; nothing is created."""
    rows = []
    for ep, instance in endpoint_backends(loaded, backend):
        spec = call_endpoint_spec(ep.spec)
        price = call_price(spec, instance.name, instance.price(spec))
        idle_rate = price.idle_usd_per_hour if price.idle_usd_per_hour is not None else price.usd_per_hour
        per_call, tail = job_cost(price, run_seconds=seconds_per_call), tail_cost(price)
        bursts = min(spec.max_workers, 1000)
        notes = []
        caps = instance.live_capabilities()
        if spec.gpu is not None and caps.get("gpu"):
            notes.append(f"gpu: {caps['gpu']}")
        rows.append(PlanRow(spec, instance.name, price, spec.min_workers * idle_rate, per_call, tail,
                            1000 * per_call.usd + bursts * tail.usd, 1000 * (per_call.usd + tail.usd), tuple(notes)))
    return rows


def _billing(price: Price) -> str:
    if price.billing == "per-second" and price.increment:
        return f"per second ({price.increment:g} s increments)"
    return {"uptime": "by uptime", "free": "nothing"}.get(price.billing, price.billing)


def plan_table(row: PlanRow, seconds_per_call: float) -> Table:
    spec, price = row.spec, row.price
    table = Table(title=f"{spec.name} on {row.backend}", show_header=False, title_justify="left", box=box.SIMPLE)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    gpu = f"{spec.gpu} (x{spec.gpu.count} per worker)" if spec.gpu else "none (CPU only)"
    table.add_row("hardware", gpu + (f", {spec.resources.cpu} CPU" if spec.resources.cpu else "")
                  + (f", {spec.resources.memory} MiB" if spec.resources.memory else ""))
    table.add_row("workers", f"min {spec.min_workers}, max {spec.max_workers}, "
                  f"{spec.concurrency} call(s) each, idle timeout {spec.idle_timeout:g} s")
    table.add_row("dependencies", ", ".join(spec.dependencies) or "none")
    if spec.system_dependencies:
        table.add_row("system packages", ", ".join(spec.system_dependencies))
    if price.billing == "unknown":  # no published price: say so, never show it as free
        table.add_row("price", "unknown" + (f": {price.source}" if price.source else "")
                      + "; set one with the gpuflex_price hook")
        for name in ("per call", "idle cost", "per 1,000 calls"):
            table.add_row(name, "unknown")
        for note in row.notes:
            table.add_row("note", note)
        return table
    table.add_row("price", f"{usd(price.usd_per_hour)}/hour per worker, billed {price.billing}"
                  + (f" ({price.source})" if price.source else ""))
    table.add_row("per call", f"{usd(row.per_call.usd)} ({row.per_call.billed_seconds:g} s billed for "
                  f"{seconds_per_call:g} s of work, {_billing(price)})")
    if row.tail.usd:
        table.add_row("idle tail", f"{usd(row.tail.usd)} once per burst, not per call: a worker bills "
                      f"{row.tail.billed_seconds:g} s idle after its last call")
    table.add_row("idle cost", f"{usd(row.idle_usd_per_hour)}/hour ({spec.min_workers} warm worker(s))")
    if row.tail.usd:
        workers = min(spec.max_workers, 1000)
        table.add_row("per 1,000 calls", f"{usd(row.usd_per_1000_calls)} in one burst (1,000 calls + {workers} "
                      f"idle tail(s), one per worker); worst case {usd(row.worst_per_1000_calls)} if every call "
                      "comes alone")
    else:
        table.add_row("per 1,000 calls", f"{usd(row.usd_per_1000_calls)} (at {seconds_per_call:g} s per call)")
    for note in row.notes:
        table.add_row("note", note)
    return table


def backends_table() -> Table:
    table = Table(title="installed gpuflex backends")
    table.add_column("name", no_wrap=True)
    for column in ("aliases", "version", "supports", "lacks"):
        table.add_column(column)
    for info in get_registry().describe():
        name = str(info["name"])
        caps = dict(typing.cast("dict[str, str | None]", info["capabilities"]))
        with contextlib.suppress(Exception):
            caps.update(make_backend(name).live_capabilities())
        has = ", ".join(sorted(k for k, v in caps.items() if not v)) or "-"
        lacks = "\n".join(f"{k}: {v}" for k, v in sorted(caps.items()) if v) or "-"
        aliases = ", ".join(typing.cast("list[str]", info["aliases"])) or "-"
        table.add_row(name, aliases, str(info["version"]), has, lacks)
    return table


def _when(stamp: Any) -> str:
    if not stamp:
        return "-"
    when = datetime.datetime.fromtimestamp(float(stamp))
    return when.strftime("%H:%M:%S" if when.date() == datetime.date.today() else "%m-%d %H:%M")


@attrs.frozen
class _Col:
    header: str
    right: bool = False
    flex: int = 0  # a share of the width left over; 0: as wide as its widest cell
    footer: str = ""


def _fit(title: str, columns: list[_Col], rows: Sequence[tuple[list[str], str | None]], width: int) -> Table:
    """A table that fits ``width`` columns with one line per row: no borders, one space between columns; the
    flexible columns share what the others leave, their cells cut with an ellipsis."""
    def natural(i: int) -> int:
        return max([cell_len(columns[i].header), cell_len(columns[i].footer), *(cell_len(r[i]) for r, _ in rows)])

    widths = [natural(i) for i in range(len(columns))]
    flexible = [i for i, c in enumerate(columns) if c.flex]
    left = width - (len(columns) - 1) - sum(w for i, w in enumerate(widths) if i not in flexible)
    shares = sum(columns[i].flex for i in flexible)
    # the column that needs least for its share first: what it does not need goes to the others
    for i in sorted(flexible, key=lambda i: widths[i] / columns[i].flex):
        want = min(widths[i], max(4, left * columns[i].flex // shares))
        widths[i], left, shares = want, left - want, shares - columns[i].flex
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=0, show_edge=False, title_justify="left",
                  show_footer=any(c.footer for c in columns))
    for c, w in zip(columns, widths, strict=True):
        table.add_column(c.header, footer=c.footer, justify="right" if c.right else "left", no_wrap=True, width=w,
                         overflow="ellipsis")
    for cells, style in rows:
        table.add_row(*(Text(cell, overflow="ellipsis", no_wrap=True) for cell in cells), style=style)
    return table


def jobs_table(records: list[dict[str, Any]], width: int = 80) -> Table:
    """One line per job, oldest first; the reason of a failure takes what width is left (``--json`` has every
    field)."""
    columns = [_Col("id"), _Col("endpoint", flex=1), _Col("backend"), _Col("status"), _Col("finished"),
               _Col("ran s", right=True), _Col("cost", right=True), _Col("reason", flex=1)]
    rows = [([str(r.get("id")), str(r.get("endpoint")), str(r.get("backend")), str(r.get("status")),
              _when(r.get("finished_at")), _seconds(r.get("run_time")),
              "unknown" if r.get("billing") == "unknown" else usd(float(r.get("cost_usd") or 0)),
              " ".join(str(r.get("reason") or "").split())], None) for r in records]
    return _fit(f"last {len(records)} job(s)", columns, rows, width)


def _amount(value: float) -> str:
    """Seconds with enough digits to be non-zero: 0.00245, 1.5, 1,234.5."""
    if 0 < value < 0.001:
        return "<0.001"
    return f"{value:,.1f}" if value >= 10 else f"{value:.3g}"


def _compute(gpu_seconds: float, cpu_seconds: float) -> str:
    """GPU-seconds, and CPU-seconds for work that ran on the CPU (an endpoint without a GPU, or a fallback)."""
    parts = [f"{_amount(gpu_seconds)} GPU-s"] if gpu_seconds else []
    if cpu_seconds or not parts:
        parts.append(f"{_amount(cpu_seconds)} CPU-s")
    return " + ".join(parts)


def _priced(value: float, unpriced: int, calls: int) -> str:
    """Dollars, "unknown" when no call had a known price, "$x + ?" when some had none."""
    if unpriced and unpriced == calls:
        return "unknown"
    return usd(value) + (" + ?" if unpriced else "")


def costs_table(records: list[dict[str, Any]], width: int = 80) -> Table:
    """Per endpoint and backend: calls, compute (GPU-seconds, or CPU-seconds for work on the CPU), billed seconds
    and dollars, then the idle tails of per-second workers on a line of their own (once per burst)."""
    summary = summarize(records)
    columns = [_Col("endpoint", flex=1, footer="total"), _Col("backend"),
               _Col("calls", right=True, footer=str(sum(r.calls for r in summary))),
               _Col("failed", right=True, footer=str(sum(r.failed for r in summary))), _Col("compute", right=True),
               _Col("billed s", right=True),
               _Col("cost", right=True, footer=_priced(sum(r.total_usd for r in summary),
                                                       sum(r.unpriced for r in summary),
                                                       sum(r.calls for r in summary)))]
    rows: list[tuple[list[str], str | None]] = []
    for r in summary:
        rows.append(([r.endpoint, r.backend, str(r.calls), str(r.failed), _compute(r.gpu_seconds, r.cpu_seconds),
                      _amount(r.billed_seconds), _priced(r.usd, r.unpriced, r.calls)], None))
        if r.bursts or r.idle_usd:
            rows.append(([f"  idle tail x{r.bursts}", r.backend, "", "",
                          _compute(r.idle_gpu_seconds, 0.0) if r.idle_gpu_seconds else "-", _amount(r.idle_seconds),
                          usd(r.idle_usd)], "dim"))
    title = "costs per endpoint"
    if any(r.unpriced for r in summary):
        title += " (unknown, ?: no published price, not counted)"
    return _fit(title, columns, rows, width)


def costs_json(records: list[dict[str, Any]]) -> dict[str, Any]:
    rows = summarize(records)
    return {
        "endpoints": [{**attrs.asdict(r), "total_usd": r.total_usd} for r in rows],
        "total": {"calls": sum(r.calls for r in rows), "failed": sum(r.failed for r in rows),
                  "unpriced_calls": sum(r.unpriced for r in rows),
                  "usd": sum(r.total_usd for r in rows), "idle_usd": sum(r.idle_usd for r in rows)},
    }

"""What the CLI computes and shows: deploy plans with cost estimates, installed backends, the job ledger."""

from __future__ import annotations

import contextlib
import datetime
import typing
from typing import TYPE_CHECKING, Any

import attrs
from rich.table import Table

from .._config import resolve_backend, use
from .._costs import job_cost
from .._ledger import summarize
from .._plugins import call_endpoint_spec, call_price
from .._registry import get_registry

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from .._apps import LoadedApp
    from .._models import EndpointSpec, Price
    from ..backend import Backend
    from ..client._endpoint import Endpoint

__all__ = ["PlanRow", "backends_table", "costs_table", "jobs_table", "plan", "plan_table", "usd"]


def usd(value: float) -> str:
    if value == 0:
        return "$0.00"
    return f"${value:,.2f}" if value >= 0.01 else f"${value:.2g}"


def _seconds(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"


@attrs.frozen
class PlanRow:
    spec: EndpointSpec
    backend: str
    price: Price
    idle_usd_per_hour: float
    usd_per_1000_calls: float
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
        per_call = job_cost(price, run_seconds=seconds_per_call).usd
        notes = []
        caps = instance.live_capabilities()
        if spec.gpu is not None and caps.get("gpu"):
            notes.append(f"gpu: {caps['gpu']}")
        rows.append(PlanRow(spec, instance.name, price, spec.min_workers * idle_rate, 1000 * per_call, tuple(notes)))
    return rows


def plan_table(row: PlanRow, seconds_per_call: float) -> Table:
    spec, price = row.spec, row.price
    table = Table(title=f"{spec.name} on {row.backend}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    gpu = f"{spec.gpu} (x{spec.gpu.count} per worker)" if spec.gpu else "none (CPU only)"
    table.add_row("hardware", gpu + (f", {spec.resources.cpu} CPU" if spec.resources.cpu else "")
                  + (f", {spec.resources.memory} MiB" if spec.resources.memory else ""))
    table.add_row("workers", f"min {spec.min_workers}, max {spec.max_workers}, "
                  f"{spec.concurrency} call(s) each, idle timeout {spec.idle_timeout:g} s")
    table.add_row("dependencies", ", ".join(spec.dependencies) or "none")
    if spec.system_dependencies:
        table.add_row("system packages", ", ".join(spec.system_dependencies))
    table.add_row("price", f"{usd(price.usd_per_hour)}/hour per worker, billed {price.billing}"
                  + (f" ({price.source})" if price.source else ""))
    table.add_row("idle cost", f"{usd(row.idle_usd_per_hour)}/hour ({spec.min_workers} warm worker(s))")
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
    return datetime.datetime.fromtimestamp(float(stamp)).strftime("%Y-%m-%d %H:%M:%S")


def jobs_table(records: list[dict[str, Any]]) -> Table:
    table = Table(title=f"last {len(records)} job(s)")
    for column in ("id", "endpoint", "backend", "status", "finished", "queued s", "ran s", "cost", "worker",
                   "reason"):
        table.add_column(column, overflow="fold")
    for r in records:
        reason = r.get("reason") or ""
        table.add_row(str(r.get("id")), str(r.get("endpoint")), str(r.get("backend")), str(r.get("status")),
                      _when(r.get("finished_at")), _seconds(r.get("queue_time")), _seconds(r.get("run_time")),
                      usd(float(r.get("cost_usd") or 0)), str(r.get("worker") or "-"),
                      reason if len(reason) < 60 else reason[:57] + "...")
    return table


def costs_table(records: list[dict[str, Any]]) -> Table:
    table = Table(title="costs per endpoint", show_footer=True)
    rows = summarize(records)
    totals = (sum(r.calls for r in rows), sum(r.gpu_seconds for r in rows), sum(r.usd for r in rows))
    table.add_column("endpoint", footer="total")
    table.add_column("backend")
    table.add_column("calls", justify="right", footer=str(totals[0]))
    table.add_column("failed", justify="right")
    table.add_column("GPU-seconds", justify="right", footer=f"{totals[1]:.1f}")
    table.add_column("billed seconds", justify="right")
    table.add_column("cost", justify="right", footer=usd(totals[2]))
    for r in rows:
        table.add_row(r.endpoint, r.backend, str(r.calls), str(r.failed), f"{r.gpu_seconds:.1f}",
                      f"{r.billed_seconds:.1f}", usd(r.usd))
    return table

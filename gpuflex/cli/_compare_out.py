"""What ``gpuflex costs --compare`` prints (a table per workload, or JSON) and draws (``--plot FILE``: cost per hour
against utilisation per backend; matplotlib, imported only then: ``pip install 'gpuflex[plot]'``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.text import Text

from ..errors import ConfigError
from ._compare import HOURS_PER_MONTH, serverless_hourly
from ._report import _Col, _fit, usd

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import RenderableType

    from ._compare import BreakEven, Comparison, Quote

__all__ = ["PLOT_FORMATS", "compare_json", "compare_tables", "plot_comparisons"]

PLOT_FORMATS = (".png", ".svg")


def _rate(quote: Quote) -> str:
    price = quote.price
    if price.billing == "unknown":
        return "unknown"
    if price.billing == "free" or not price.usd_per_hour:
        return "free"
    return f"{usd(price.usd_per_hour)}/h"


def _billing(quote: Quote) -> str:
    price = quote.price
    if price.billing == "per-second":
        tail = f", {price.tail_seconds:g} s idle tail" if price.tail_seconds else ""
        return f"per second ({price.increment:g} s){tail}"
    return {"uptime": "by the hour", "free": "free"}.get(price.billing, price.billing)


def _seconds(value: float) -> str:
    if value >= 3600:
        return f"{value / 3600:.3g} h"
    return f"{value / 60:.3g} min" if value >= 60 else f"{value:.3g} s"


def _title(c: Comparison) -> str:
    w = c.workload
    if w.is_plan:
        return (f"{w.label}: {w.calls_per_hour:g} calls/h x {w.seconds_per_call:g} s = {w.utilisation:.1%} of one "
                "worker busy")
    names = ", ".join(w.endpoints)
    return (f"{w.label}: {len(w.records)} job(s) of {names}, {_seconds(w.busy_seconds)} busy over "
            f"{_seconds(w.span_seconds)} = {w.utilisation:.2%} of one worker")


def _break_even_line(b: BreakEven) -> str:
    head = f"break-even {b.pod} ({usd(b.pod_usd_per_hour)}/h) vs {b.serverless} ({usd(b.serverless_usd_per_hour)}/h): "
    if b.busy_only is None and b.with_tails is None:
        return head + "serverless costs less at any utilisation"
    busy = "never (serverless costs less even busy all the time)" if b.busy_only is None else f"{b.busy_only:.1%}"
    tails = "never" if b.with_tails is None else f"{b.with_tails:.1%}"
    return (head + f"pod cheaper above {busy} busy (busy seconds only), {tails} with idle tails at "
            f"{b.seconds_per_call:g} s per call")


def compare_tables(comparisons: list[Comparison], width: int = 80) -> list[RenderableType]:
    out: list[RenderableType] = []
    for c in comparisons:
        plan = c.workload.is_plan
        recorded = sum(v for v in c.recorded.values() if v is not None)
        columns = [_Col("backend"), _Col("billing", flex=1), _Col("rate", right=True),
                   _Col("per hour" if plan else "cost", right=True)]
        columns.append(_Col("per month", right=True) if plan else _Col("vs ran", right=True))
        columns.append(_Col("how", flex=1))
        rows: list[tuple[list[str], str | None]] = []
        for q in c.quotes:
            cost = "unknown" if q.usd is None else usd(q.usd)
            extra = ("unknown" if q.usd is None else usd(q.usd * HOURS_PER_MONTH)) if plan else \
                ("-" if q.usd is None or not recorded else f"x{q.usd / recorded:.3g}")
            rows.append(([q.backend, _billing(q), _rate(q), cost, extra, q.how],
                         "dim" if q.usd is None or q.price.billing == "free" else None))
        out.append(_fit(_title(c), columns, rows, width))
        lines = [f"ran on {name}: {'unknown' if v is None else usd(v)} recorded" for name, v in c.recorded.items()]
        lines += [_break_even_line(b) for b in c.break_even]
        if not c.break_even:
            lines.append("no break-even: it needs a backend billed by the hour (a pod with a known price, or "
                         "--pod-rate) and one billed by the second")
        out.append(Group(*(Text(line, style="dim" if line.startswith("ran on") else "") for line in lines),
                         Text("")))
    return out


def compare_json(comparisons: list[Comparison]) -> dict[str, Any]:
    groups = []
    for c in comparisons:
        w = c.workload
        groups.append({
            "label": w.label, "gpu": str(w.spec.gpu) if w.spec.gpu else None, "endpoints": list(w.endpoints),
            "jobs": len(w.records), "calls_per_hour": w.calls_per_hour, "seconds_per_call": w.seconds_per_call,
            "busy_seconds": w.busy_seconds, "span_seconds": w.span_seconds, "utilisation": w.utilisation,
            "recorded": dict(c.recorded),
            "backends": [{"backend": q.backend, "billing": q.price.billing, "usd_per_hour": q.price.usd_per_hour,
                          "increment": q.price.increment, "tail_seconds": q.price.tail_seconds,
                          "source": q.price.source, "usd": q.usd, "how": q.how,
                          **({"usd_per_month": None if q.usd is None else q.usd * HOURS_PER_MONTH}
                             if w.is_plan else {})} for q in c.quotes],
            "break_even": [{"pod": b.pod, "serverless": b.serverless, "pod_usd_per_hour": b.pod_usd_per_hour,
                            "serverless_usd_per_hour": b.serverless_usd_per_hour, "busy_only": b.busy_only,
                            "with_tails": b.with_tails, "seconds_per_call": b.seconds_per_call}
                           for b in c.break_even],
        })
    return {"mode": "plan" if comparisons and comparisons[0].workload.is_plan else "ledger", "groups": groups}


def plot_comparisons(comparisons: list[Comparison], path: Path) -> None:
    """Cost per hour against the utilisation of one worker, per backend with a known price, one panel per
    workload: flat for a pod, rising for serverless (solid: with idle tails; dashed: busy seconds only)."""
    if path.suffix.lower() not in PLOT_FORMATS:
        raise ConfigError(f"--plot writes PNG or SVG: name the file *.png or *.svg, not {path.name!r}")
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'gpuflex[plot]'") from None
    priced = [c for c in comparisons if any(q.price.usd_per_hour > 0 and q.price.billing in ("uptime", "per-second")
                                            for q in c.quotes)]
    if not priced:
        raise ConfigError("nothing to plot: no backend has a known hourly or per-second price for this work")
    figure = Figure(figsize=(8, 4.5 * len(priced)), layout="constrained")
    steps = [i / 400 for i in range(1, 401)]
    for panel, c in zip(figure.subplots(len(priced), 1, squeeze=False)[:, 0], priced, strict=True):
        s = c.workload.seconds_per_call
        greys = iter(["black", "dimgray", "darkgray", "silver"] * 4)
        for q in c.quotes:
            price = q.price
            if price.usd_per_hour <= 0:
                continue
            if price.billing == "uptime":
                panel.axhline(price.usd_per_hour, label=f"{q.backend} (by the hour)", color=next(greys), linewidth=2)
            elif price.billing == "per-second":
                (line,) = panel.plot(steps, [serverless_hourly(price, u, s) for u in steps],
                                     label=f"{q.backend} (per second, idle tails at {s:g} s/call)")
                panel.plot(steps, [u * price.usd_per_hour for u in steps], linestyle="--", color=line.get_color(),
                           linewidth=0.8, label=f"{q.backend}, busy seconds only")
        for b in c.break_even:
            if b.with_tails is not None:
                panel.plot([b.with_tails], [b.pod_usd_per_hour], "o", color="black")
        if 0 < c.workload.utilisation <= 1:
            panel.axvline(c.workload.utilisation, linestyle=":", color="grey", label="this work")
        panel.set(xlim=(0, 1), ylim=(0, None), xlabel="utilisation of one worker (share of the hour busy)",
                  ylabel="USD per hour", title=_title(c))
        panel.title.set_fontsize(9)
        panel.legend(fontsize=7)
        panel.grid(alpha=0.3)
    figure.savefig(path)

"""Render the JSON lines ``tests/live`` wrote (``GPUFLEX_LIVE_REPORT``) into ``docs/live/<date>.md``.

Run by ``nox -s live`` after pytest, whatever pytest's outcome, so a failed or interrupted run is reported too.
"""

from __future__ import annotations

import collections
import datetime
import json
import platform
import sys
from pathlib import Path


def render(entries: list[dict[str, object]], pytest_status: int) -> str:
    now = datetime.datetime.now(datetime.UTC)
    lines = [f"# Live run, {now:%Y-%m-%d %H:%M} UTC", "",
             f"`nox -s live` on {platform.platform()}, Python {platform.python_version()}; pytest exit status "
             f"{pytest_status}. Targets without credentials or hosts are absent.", ""]
    checks = [e for e in entries if e.get("kind") == "check"]
    timings = [e for e in entries if e.get("kind") == "timing"]
    if not entries:
        lines.append("Nothing ran: no target had credentials or hosts (see tests/live/test_live_conformance.py).")
    by_backend: dict[str, list[dict[str, object]]] = collections.defaultdict(list)
    for entry in checks:
        by_backend[str(entry["backend"])].append(entry)
    for backend, rows in sorted(by_backend.items()):
        passed = sum(1 for r in rows if r["outcome"] == "passed")
        lines += [f"## {backend}: {passed} of {len(rows)} checks passed", "", "| check | outcome | seconds |",
                  "|---|---|---|"]
        lines += [f"| {r['check']} | {str(r['outcome']).replace('|', '/')} | {r['seconds']} |" for r in rows]
        lines.append("")
    if timings:
        lines += ["## Timings and costs", "", "| backend | cold start (s) | warm call median (ms) | cost recorded |",
                  "|---|---|---|---|"]
        for t in timings:
            cost = t["recorded_cost_usd"]
            shown = "—" if cost is None else f"${float(cost):.6f}"  # type: ignore[arg-type]
            lines.append(f"| {t['backend']} | {t['cold_start_s']} | {t['warm_median_ms']} | {shown} |")
        lines += ["", "What the vendor billed is not read back yet: compare with the vendor's console for the same "
                  "minutes (RunPod's billing page, Modal's usage page)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    source, status = Path(sys.argv[1]), int(sys.argv[2])
    entries = [json.loads(line) for line in source.read_text().splitlines() if line.strip()] if source.exists() else []
    out = Path("docs/live") / f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(entries, status))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Hot reload, measured: edit an endpoint's file, then time until a call answers with the new code.

Two apps: a small one, and one whose endpoint module imports torch at the top (1.3 s to import here). The
baseline is what a restart-on-save tool does: a fresh worker process that imports everything again.
"""

from __future__ import annotations

import importlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gpuflex
from gpuflex.client._session import get_session

SMALL = '''
import gpuflex


@gpuflex.endpoint(name="reload_{kind}")
def version() -> str:
    return "{version}"
'''

TORCH = '''
import torch  # the heavy, unchanged import a reload should not pay again

import gpuflex


@gpuflex.endpoint(name="reload_{kind}")
def version() -> str:
    return "{version}" + str(int(torch.ones(1).item()))
'''


def _measure(kind: str, template: str, reps: int) -> dict[str, Any]:
    project = Path(tempfile.mkdtemp(prefix=f"gpuflex-reload-{kind}-"))
    (project / "pyproject.toml").write_text("[project]\nname = 'reload-bench'\n")
    module_name = f"reload_app_{kind}"
    source = project / f"{module_name}.py"
    suffix = "1" if template is TORCH else ""
    source.write_text(template.format(kind=kind, version="v0"))
    sys.path.insert(0, str(project))
    try:
        module = importlib.import_module(module_name)
        assert module.version() == "v0" + suffix  # worker started and warm
        reloads = []
        for i in range(1, reps + 1):
            source.write_text(template.format(kind=kind, version=f"v{i}"))
            t0 = time.perf_counter()
            get_session().invalidate_bundles()  # what the dev server's watcher does on save
            answer = module.version()
            reloads.append(time.perf_counter() - t0)
            assert answer == f"v{i}{suffix}", answer
        restarts = []
        for _ in range(max(1, reps // 3)):
            gpuflex.shutdown()  # a restart-on-save tool: a fresh worker imports everything again
            t0 = time.perf_counter()
            module.version()
            restarts.append(time.perf_counter() - t0)
        return {"reload": reloads, "restart": restarts}
    finally:
        gpuflex.shutdown()
        sys.path.remove(str(project))
        sys.modules.pop(module_name, None)


def bench_reload(reps: int) -> dict[str, Any]:
    out: dict[str, Any] = {"small": _measure("small", SMALL, reps)}
    try:
        import torch  # noqa: F401
    except ImportError:
        out["torch"] = {"skip": "torch is not installed"}
    else:
        out["torch"] = _measure("torch", TORCH, reps)
    return out


def section_reload(res: dict[str, Any]) -> str:
    title = "## 6. Hot reload: edit a file, then the first call that runs the new code\n\n"
    if "error" in res:
        return title + f"Failed: {res['error']}\n"
    lines = [
        title.rstrip("\n") + "\n",
        "Library path (what `gpuflex serve`'s watcher triggers): rebuild the bundle, redeploy, the idle worker loads "
        "the new code in its running process, the call answers. Baseline: a fresh worker (restart on save). "
        "Targets (issue #3): under 0.3 s for a small app, under 0.1 s when the endpoint imports torch.\n",
        "| app | gpuflex reload (median) | restart baseline (median) | ratio | target | result |",
        "|---|---|---|---|---|---|",
    ]
    for kind, target in (("small", 0.3), ("torch", 0.1)):
        entry = res.get(kind, {})
        if "skip" in entry:
            lines.append(f"| {kind} | {entry['skip']} | — | — | < {target} s | — |")
            continue
        reload, restart = statistics.median(entry["reload"]), statistics.median(entry["restart"])
        verdict = "PASS" if reload < target else "MISS"
        lines.append(f"| {kind} | {reload * 1000:.1f} ms | {restart * 1000:.0f} ms | {restart / reload:.0f}x faster "
                     f"| < {target * 1000:.0f} ms | {verdict} |")
    return "\n".join(lines) + "\n"

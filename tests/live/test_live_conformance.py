"""The conformance suite and first-call timings against real targets (``nox -s live``; never in CI).

Each target runs only when its credentials or hosts are given:

* ``serverless`` (RunPod): ``RUNPOD_API_KEY``;
* ``modal``: ``MODAL_TOKEN_ID`` and ``MODAL_TOKEN_SECRET``, or a profile in ``~/.modal.toml``;
* ``pod``: ``GPUFLEX_LIVE_SSH_HOSTS`` (comma-separated ``user@host[:port]``; keys from your ssh agent or config),
  and optionally ``GPUFLEX_LIVE_SSH_OPTIONS``, further pod options as JSON (``{"identity_file": ...}``).

Timings, costs and outcomes go to the JSON file named by ``GPUFLEX_LIVE_REPORT`` (``nox -s live`` renders it into
``docs/live/<date>.md``). Everything a check creates is torn down by the check itself; the session tears down the
backend's whole name prefix again at the end, also after an interrupt.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from gpuflex._registry import get_registry
from gpuflex.testing import CHECKS, CheckSkipped, backend_in_use, run_check
from gpuflex.testing import _endpoints as ep

pytestmark = pytest.mark.live


def _modal_configured() -> bool:
    """Tokens in the environment, or a profile (token or OAuth login) in Modal's config file."""
    config = Path(os.environ.get("MODAL_CONFIG_PATH") or Path.home() / ".modal.toml")
    return bool(os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET")) or config.exists()


# Live runs create under names of their own, so the final sweep never touches a user's real deployments.
TARGETS: dict[str, tuple[bool, dict[str, Any]]] = {
    "serverless": (bool(os.environ.get("RUNPOD_API_KEY")), {"name_prefix": "gpuflex-live-"}),
    "modal": (_modal_configured(), {"app_name": "gpuflex-live"}),
    "pod": (bool(os.environ.get("GPUFLEX_LIVE_SSH_HOSTS")),
            {"hosts": [h for h in os.environ.get("GPUFLEX_LIVE_SSH_HOSTS", "").split(",") if h],
             **json.loads(os.environ.get("GPUFLEX_LIVE_SSH_OPTIONS") or "{}")}),
}


def _factory(name: str) -> Any:
    available, options = TARGETS[name]
    if not available:
        pytest.skip(f"no credentials or hosts for {name} (see this module's docstring)")
    cls = get_registry().get(name)
    return lambda: cls(cls.config_cls(**options))


def _record(entry: dict[str, Any]) -> None:
    path = os.environ.get("GPUFLEX_LIVE_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_conformance_live(target: str, check: Any) -> None:
    make = _factory(target)
    started = time.monotonic()
    outcome = "passed"
    try:
        run_check(check, make)
    except CheckSkipped as exc:
        outcome = f"skipped: {exc}"
    except BaseException as exc:
        outcome = f"failed: {type(exc).__name__}: {exc}"[:300]
        raise
    finally:
        _record({"kind": "check", "backend": target, "check": check.__name__, "outcome": outcome,
                 "seconds": round(time.monotonic() - started, 2)})


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_first_call_and_warm_calls_live(target: str) -> None:
    """Cold start (the first call, deploy included), then ten warm calls, and what each backend recorded as cost."""
    make = _factory(target)
    with backend_in_use(make):
        started = time.monotonic()
        first = ep.echo.spawn("cold")
        assert first.result(timeout=900) == "cold"
        cold = time.monotonic() - started
        warm = []
        for i in range(10):
            t0 = time.monotonic()
            assert ep.echo(i) == i
            warm.append(time.monotonic() - t0)
        _record({"kind": "timing", "backend": target, "cold_start_s": round(cold, 2),
                 "warm_median_ms": round(sorted(warm)[len(warm) // 2] * 1000, 1),
                 "recorded_cost_usd": first.cost.usd if first.cost else None})

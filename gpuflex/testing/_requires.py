"""Tests that need a tool the machine may lack (an SSH server, a browser, a GPU): skip with one reason format
that the pytest plugin sums up at the end of the run, or fail where the run demands the tool.

``GPUFLEX_REQUIRE`` (comma-separated tool names, or ``all``) turns those skips into failures: CI sets it for
what it installs, so a missing tool there is an error rather than a quiet skip.
"""

from __future__ import annotations

import os

__all__ = ["REQUIRE_ENV", "require", "required"]

REQUIRE_ENV = "GPUFLEX_REQUIRE"
_REASON = "needs {tool}; enable with: {install}"


def required(tool: str) -> bool:
    """Whether this run demands ``tool`` (``GPUFLEX_REQUIRE`` names it or says ``all``)."""
    wanted = {name.strip() for name in os.environ.get(REQUIRE_ENV, "").split(",") if name.strip()}
    if os.environ.get("GPUFLEX_REQUIRE_SSHD"):  # the variable CI set before GPUFLEX_REQUIRE existed
        wanted.add("sshd")
    return tool in wanted or "all" in wanted


def require(tool: str, available: bool, *, install: str) -> None:
    """Skip the calling test when ``tool`` is not ``available`` (fail when the run demands it).

    :param install: the one command that makes the tool available, shown in the skip reason and the summary.
    """
    if available:
        return
    import pytest  # only tests call this; gpuflex.testing itself imports without pytest

    reason = _REASON.format(tool=tool, install=install)
    if required(tool):
        pytest.fail(f"{REQUIRE_ENV} demands {tool}, which is missing: {reason}", pytrace=False)
    pytest.skip(reason)

"""Progress for long work (``map``, environment builds, deploys), shown on an interactive terminal only.

Set ``GPUFLEX_PROGRESS=0`` to turn it off, ``=1`` to force it on (e.g. in a notebook).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["enabled", "status", "track"]


def enabled() -> bool:
    setting = os.environ.get("GPUFLEX_PROGRESS")
    if setting is not None:
        return setting not in ("0", "false", "no", "")
    return sys.stderr.isatty()


@contextlib.contextmanager
def status(message: str) -> Iterator[None]:
    """A spinner with ``message`` while the block runs (installs, deploys)."""
    if not enabled():
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(message):
        yield


def track(items: Iterator[Any], *, total: int | None, description: str) -> Iterator[Any]:
    """Yield ``items`` unchanged, with a progress bar of results received."""
    if not enabled():
        yield from items
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, transient=False, console=Console(stderr=True)) as progress:
            task = progress.add_task(description, total=total)
            for item in items:
                yield item
                progress.advance(task)
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()  # left early (break, Ctrl-C): the source learns it at once, not when it is collected

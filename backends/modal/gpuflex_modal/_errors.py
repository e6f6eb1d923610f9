"""Modal's client errors as gpuflex's: a call's failure as a terminal :class:`JobUpdate`, an app's as an error
that says what to do.

Which failure is which follows from whether the call had started in a container (its first item arrived):

* a Modal timeout after the start is the call's ``timeout`` (TIMED_OUT); before it, the container did not start
  within ``startup_timeout`` (FAILED, named so). Modal's servers may report a start-up timeout either way; both
  are handled.
* any other Modal failure means a container died under the call (or kept dying as it started) and Modal gave up
  rescheduling it: a lost worker (retryable, so the endpoint's ``retries`` apply). The start item may never have
  left a container killed at once, so this does not depend on it; a failure whose message speaks of the start-up
  is named as one and not retried (a retry would wait through the same start-up again).
* an exception of the user's own before the start was raised by ``setup()`` or the imports: it is re-raised on the
  caller's side as its own type, as a call's exception is.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gpuflex import JobStatus
from gpuflex.backend import JobUpdate
from gpuflex.errors import AuthenticationError, BackendUnavailable, ConfigError, GpuflexError
from gpuflex.worker import encode_error

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["failure", "modal_error"]


def _is_modal(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] in ("modal", "grpclib")


def failure(exc: Exception, started_at: float | None, *, started: bool, cancelled: bool) -> JobUpdate:
    name, now = type(exc).__name__, time.time()
    common: dict[str, Any] = {"started_at": started_at, "finished_at": now if started else None}
    if cancelled:
        return JobUpdate(status=JobStatus.CANCELLED, reason="cancelled", **common)
    if not _is_modal(exc):  # the user's setup() or imports raised (Modal rebuilt the exception)
        return JobUpdate(status=JobStatus.FAILED, reason="the endpoint failed to load in its container",
                         outcome=encode_error(exc), **common)
    if name == "FunctionTimeoutError":
        if started:
            return JobUpdate(status=JobStatus.TIMED_OUT, reason=f"Modal stopped the call at its timeout: {exc}",
                             **common)
        return JobUpdate(status=JobStatus.FAILED, reason=f"the container did not start within its startup_timeout "
                         f"(Modal: {exc}); raise startup_timeout= if setup() needs longer", **common)
    if not started and "start" in str(exc).lower():
        return JobUpdate(status=JobStatus.FAILED, reason=f"Modal could not start a container for the call: "
                         f"{name}: {exc}", **common)
    return JobUpdate(status=JobStatus.FAILED, retryable=True,
                     reason=f"the container running the call was lost (Modal: {name}: {exc})", **common)


def modal_error(exc: Exception, build_log: Iterable[str] = ()) -> Exception:
    """An error while creating or stopping the app, as a gpuflex error with what to do."""
    name = type(exc).__name__
    if isinstance(exc, GpuflexError):
        return exc
    if name == "AuthError":
        return AuthenticationError(f"Modal refused the credentials: {exc}. Run `modal token new` or check "
                                   "MODAL_TOKEN_ID / MODAL_TOKEN_SECRET")
    if name == "NotFoundError" and "Secret" in str(exc):
        return ConfigError(f"{exc}: create it with `modal secret create NAME NAME=value` (a Secret holding a key "
                           "of its own name), or use secrets_from='local'")
    if name == "InvalidError":
        return ConfigError(f"Modal refused the app: {exc}")
    if "build" in str(exc).lower():
        tail = "\n".join(build_log)
        return ConfigError(f"Modal could not build the image: {exc}" +
                           (f"\nlast lines of the build log:\n{tail}" if tail else ""))
    if name in ("ConnectionError", "GRPCError", "OSError", "ServiceError", "StreamTerminatedError"):
        return BackendUnavailable(f"cannot reach Modal: {exc}")
    return exc

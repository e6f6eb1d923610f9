"""RunPod's HTTP API with retries, and the one place its failures become gpuflex errors.

Requests answered 429 or 5xx, and requests that got no answer, are retried with exponential backoff (honouring
``Retry-After``). ``/run`` is retried only where the request cannot have created a job (429, 502/503/504, a refused
connection), so a retry never runs a call twice; a GraphQL mutation only on 429 and a refused connection, so a
retry never creates an endpoint twice. 401/403 become :class:`AuthenticationError`; the API key never
appears in a message.
"""

from __future__ import annotations

import contextlib
import os
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from gpuflex.errors import AuthenticationError, BackendError, BackendUnavailable, QuotaExceeded

if TYPE_CHECKING:
    from collections.abc import Iterator

    import httpx

    from ._config import RunPodConfig

__all__ = ["Pacer", "RunPodApi", "RunPodHTTPError", "find_api_key", "map_errors"]

_CONNECTIONS = 32
_SAFE_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_UNSENT_STATUSES = frozenset({429})  # refused before anything ran: the only answers a mutation is retried on


def _short(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else f"{text[:limit]}..."


class RunPodHTTPError(Exception):
    """An HTTP error answer from RunPod (after retries)."""

    def __init__(self, status: int, what: str, text: str) -> None:
        self.status = status
        self.text = text
        super().__init__(f"RunPod answered HTTP {status} to {what}: {text[:300]}")


def find_api_key(config: RunPodConfig) -> str:
    """The API key from the config, ``$RUNPOD_API_KEY`` or ``~/.runpod/config.toml``; a clear error without one."""
    if config.api_key:
        return config.api_key
    if os.environ.get("RUNPOD_API_KEY"):
        return os.environ["RUNPOD_API_KEY"]
    path = Path.home() / ".runpod" / "config.toml"
    with contextlib.suppress(OSError, tomllib.TOMLDecodeError):
        data = tomllib.loads(path.read_text())
        key = (data.get("default") or {}).get("api_key") or data.get("api_key")
        if isinstance(key, str) and key:
            return key
    raise AuthenticationError(
        "no RunPod API key: set RUNPOD_API_KEY, add api_key under [default] in ~/.runpod/config.toml, "
        "or pass api_key= to the serverless backend"
    )


@contextlib.contextmanager
def map_errors(what: str, secret: str | None = None) -> Iterator[None]:
    """Translate transport and HTTP failures of one operation into gpuflex errors (most specific first)."""

    import httpx  # here, not at the top: plugins load at every start-up, and httpx takes a tenth of a second

    def scrub(text: str) -> str:
        return text.replace(secret, "***") if secret else text

    try:
        yield
    except RunPodHTTPError as exc:
        if exc.status in (401, 403):
            raise AuthenticationError(
                f"RunPod rejected the API key (HTTP {exc.status}) while trying to {what}; check RUNPOD_API_KEY "
                "or ~/.runpod/config.toml"
            ) from None
        if exc.status == 429:
            raise QuotaExceeded(f"RunPod kept rate-limiting (HTTP 429) while trying to {what}; slow down or "
                                "raise the endpoint's workers") from None
        raise BackendError(scrub(f"could not {what}: {exc}")) from None
    except httpx.HTTPError as exc:
        raise BackendUnavailable(scrub(f"could not reach RunPod to {what}: {type(exc).__name__}: {exc}")) from None


class Pacer:
    """A token bucket: at most ``per_second`` request starts per second on average, in bursts of up to one
    second's worth, so many jobs in flight stay under RunPod's rate limits instead of collecting 429s."""

    def __init__(self, per_second: float) -> None:
        self.per_second = per_second
        self.tokens = per_second
        self.updated = 0.0
        self.next_free = 0.0

    async def wait(self) -> None:
        if self.per_second <= 0:
            return
        now = anyio.current_time()
        self.tokens = min(self.per_second, self.tokens + (now - self.updated) * self.per_second)
        self.updated = now
        if self.tokens >= 1 and self.next_free <= now:
            self.tokens -= 1
            if self.tokens < 1:  # the bucket is empty: the next request may start when a token has grown back
                self.next_free = now + (1 - self.tokens) / self.per_second
            return
        start = max(now, self.next_free)  # queue behind the callers already waiting, one interval apart
        self.next_free = start + 1 / self.per_second
        self.tokens = 0.0
        await anyio.sleep(start - now)


class RunPodApi:
    """One HTTP client for both RunPod APIs (GraphQL control plane, ``/v2`` job API)."""

    def __init__(self, config: RunPodConfig, api_key: str) -> None:
        import httpx

        self.config = config
        self.api_key = api_key
        # requests beyond the connection pool wait here, not in httpx's pool (whose waiting list grows costly)
        self.slots = anyio.CapacityLimiter(_CONNECTIONS)
        self.pacers = {"run": Pacer(config.run_rate), "status": Pacer(config.status_rate),
                       "cancel": Pacer(config.cancel_rate)}
        self.client = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {api_key}"},
            # waiting for a free connection is not a failure (the pacers bound the rate): no pool timeout
            timeout=httpx.Timeout(config.request_timeout, pool=None),
            limits=httpx.Limits(max_connections=_CONNECTIONS, max_keepalive_connections=_CONNECTIONS),
        )

    async def request(self, method: str, url: str, *, json: Any = None, content: bytes | None = None,
                      creates_job: bool = False, pace: str | None = None,
                      retry_statuses: frozenset[int] | None = None) -> httpx.Response:
        """Send with retries; return a 2xx/404 response, or raise :class:`RunPodHTTPError` / ``httpx.HTTPError``.
        ``pace`` names the rate limit the request counts against (``run``, ``status``, ``cancel``);
        ``retry_statuses`` overrides which answers are retried."""
        import httpx

        delay = 0.2
        attempts = max(1, self.config.http_retries)
        for attempt in range(1, attempts + 1):
            last = attempt == attempts
            if pace is not None:
                await self.pacers[pace].wait()
            try:
                async with self.slots:
                    response = await self.client.request(
                        method, url, json=json, content=content,
                        headers={"Content-Type": "application/json"} if content is not None else None,
                    )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout):  # never sent: safe to retry
                if last:
                    raise
            except httpx.TransportError:
                if last or creates_job:  # the request may have reached RunPod: never submit a job twice
                    raise
            else:
                retry_on = retry_statuses or (_SAFE_RETRY_STATUSES if creates_job else _RETRY_STATUSES)
                if response.status_code < 400 or response.status_code == 404:
                    return response
                if last or response.status_code not in retry_on:
                    raise RunPodHTTPError(response.status_code, f"{method} {httpx.URL(url).path}", response.text)
                retry_after = response.headers.get("Retry-After", "")
                if retry_after.isdigit():
                    delay = max(delay, min(float(retry_after), 30.0))
            await anyio.sleep(delay)
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    async def graphql(self, query: str, variables: dict[str, Any], *, mutation: bool = False) -> dict[str, Any]:
        """Run one GraphQL operation; GraphQL's errors (in a 200 or a 400 answer) become :class:`BackendError`.
        A mutation is retried only when RunPod cannot have run it (no connection, 429): a create that timed out
        may have happened, and the caller decides what to do (see ``ControlPlane.create``)."""
        import json as jsonlib

        try:
            response = await self.request("POST", self.config.graphql_url,
                                          json={"query": query, "variables": variables}, creates_job=mutation,
                                          retry_statuses=_UNSENT_STATUSES if mutation else None)
        except RunPodHTTPError as exc:
            if exc.status != 400:
                raise
            try:
                body = jsonlib.loads(exc.text)
            except ValueError:
                raise exc from None
        else:
            if response.status_code == 404:
                raise RunPodHTTPError(404, "the GraphQL API", response.text)
            body = response.json()
        if not isinstance(body, dict):
            raise BackendError(f"RunPod's GraphQL API answered something other than a JSON object: {str(body)[:200]}")
        if body.get("errors"):
            # GraphQL engines quote the offending input back ("Found: {...}"): keep each message short
            messages = "; ".join(_short(str(e.get("message"))) for e in body["errors"][:3] if isinstance(e, dict))
            raise BackendError(f"RunPod's API refused the request: {messages}")
        data: dict[str, Any] = body.get("data") or {}
        return data

    async def aclose(self) -> None:
        await self.client.aclose()

"""Modal RPCs that Modal's SDK offers only through its command line: ``AppDeploymentHistory`` (``modal app
history``), ``AppRollback`` (``modal app rollback``), ``AppGetByDeploymentName``, ``AppGetLayout`` and ``AppStop``
with an app id. They are sent as Modal's CLI sends them (``client._stub``), on the event loop the client's
connections live on (Modal's synchronizer's), from a worker thread."""

from __future__ import annotations

from typing import Any

import anyio

__all__ = ["rpc"]

_call: Any = None


def _blocking() -> Any:
    global _call
    if _call is None:
        from modal._utils.async_utils import synchronizer

        async def call(client: Any, name: str, request: Any) -> Any:
            return await getattr(client._stub, name)(request)

        _call = synchronizer.create_blocking(call)
    return _call


async def rpc(client: Any, name: str, request: Any) -> Any:
    """Send ``request`` to Modal's RPC ``name`` with ``client`` (a connected ``modal.Client``); its response."""
    call = _blocking()
    return await anyio.to_thread.run_sync(call, client, name, request)

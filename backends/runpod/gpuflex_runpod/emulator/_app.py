"""The emulator's HTTP surface: RunPod's ``/v2/<endpoint>`` job API, its GraphQL control plane, the
worker-facing webhooks the ``runpod`` worker loop uses, and a small ``/_emulator`` admin API for fault drills."""

from __future__ import annotations

import contextlib
import json
import re
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from ._controlplane import ControlPlane
from ._graphql import answer as graphql_answer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.types import ASGIApp, Receive, Scope, Send

    from ._emulator import Emulator
    from ._state import EmulatedEndpoint, EmulatedJob, EmulatedWorker

__all__ = ["build_app"]

RUN_LIMIT_BYTES = 10 * 1024 * 1024  # RunPod: 10 MB per /run request, 20 MB per /runsync
RUNSYNC_LIMIT_BYTES = 20 * 1024 * 1024
# What a worker may send back. RunPod: "Maximum size for a single streamed payload chunk is 1 MB"; a job's result
# (the aggregated stream included) is held to the 10 MB payload limit, and job-done answers 400 past it (the SDK
# only logs that, and the job stays IN_PROGRESS until its execution timeout).
STREAM_ITEM_LIMIT_BYTES = 1_000_000
RESULT_LIMIT_BYTES = 10_000_000
LONG_POLL_SECONDS = 5.0
STREAM_HOLD_SECONDS = 1.0
_WORKER_ROUTE = re.compile(r"/(job-take|job-take-batch|job-done|job-stream|job-stop|ping)/")
WAKE_SECONDS = 0.5  # held requests re-check whether the server is stopping this often


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _key_of(request: Request) -> str:
    header = request.headers.get("authorization", "")
    return header.removeprefix("Bearer ").strip()


def build_app(emu: Emulator) -> FastAPI:  # noqa: C901 - one closure per route keeps the routes readable
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(emu.run)
            yield
            tg.cancel_scope.cancel()

    app = FastAPI(title="gpuflex RunPod emulator", lifespan=lifespan)

    def refusal(scope: Scope) -> JSONResponse | None:
        """The API key check (client routes), then any injected fault; None lets the request through."""
        path = str(scope["path"])
        if _WORKER_ROUTE.search(path):
            return None  # worker webhooks check the worker's own key
        headers = dict(scope["headers"])
        key = headers.get(b"authorization", b"").decode("latin-1").removeprefix("Bearer ").strip()
        if key != emu.api_key:
            return _error(401, "Unauthorized: missing or invalid API key")
        if not path.startswith("/_emulator"):
            for fault in emu.faults:
                if fault["count"] > 0 and "operation" not in fault and fault["match"] in path:
                    fault["count"] -= 1
                    extra = {"Retry-After": str(fault["retry_after"])} if fault.get("retry_after") else None
                    return JSONResponse({"error": f"injected fault {fault['status']}"}, status_code=fault["status"],
                                        headers=extra)
        return None

    class Guard:
        """A plain ASGI middleware (much cheaper per request than ``@app.middleware``)."""

        def __init__(self, inner: ASGIApp) -> None:
            self.inner = inner

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                answer = refusal(scope)
                if answer is not None:
                    await answer(scope, receive, send)
                    return
            await self.inner(scope, receive, send)

    app.add_middleware(Guard)

    def endpoint_or_none(endpoint_id: str) -> EmulatedEndpoint | None:
        return emu.endpoints.get(endpoint_id)

    def job_of(endpoint_id: str, job_id: str) -> EmulatedJob | None:
        job = emu.jobs.get(job_id)
        return job if job is not None and job.endpoint_id == endpoint_id else None

    # -- the job API ---------------------------------------------------------------------------------------------

    async def accept(endpoint_id: str, request: Request, limit: int, sync: bool) -> EmulatedJob | JSONResponse:
        endpoint = endpoint_or_none(endpoint_id)
        if endpoint is None:
            return _error(404, f"endpoint {endpoint_id} not found")
        raw = await request.body()
        if len(raw) > limit:
            return _error(413, f"request body of {len(raw)} bytes exceeds the {limit // (1024 * 1024)}MB limit")
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "the body is not valid JSON")
        if not isinstance(body, dict) or not body.get("input"):
            return _error(400, "the request needs a non-empty 'input'")
        return emu.submit(endpoint, body, sync=sync)

    @app.post("/v2/{endpoint_id}/run")
    async def run(endpoint_id: str, request: Request) -> Response:
        job = await accept(endpoint_id, request, RUN_LIMIT_BYTES, sync=False)
        if isinstance(job, JSONResponse):
            return job
        return JSONResponse({"id": job.id, "status": job.status})

    @app.post("/v2/{endpoint_id}/runsync")
    async def runsync(endpoint_id: str, request: Request, wait: int = 90_000) -> Response:
        job = await accept(endpoint_id, request, RUNSYNC_LIMIT_BYTES, sync=True)
        if isinstance(job, JSONResponse):
            return job
        with anyio.move_on_after(max(1.0, min(wait, 300_000) / 1000)):
            while not emu.is_terminal(job) and not emu.closing:
                await job.changed.wait(WAKE_SECONDS)
        return JSONResponse(job.view())

    @app.get("/v2/{endpoint_id}/status/{job_id}")
    async def status(endpoint_id: str, job_id: str) -> Response:
        job = job_of(endpoint_id, job_id)
        return JSONResponse(job.view()) if job else _error(404, f"job {job_id} not found")

    @app.get("/v2/{endpoint_id}/stream/{job_id}")
    async def stream(endpoint_id: str, job_id: str) -> Response:
        job = job_of(endpoint_id, job_id)
        if job is None:
            return _error(404, f"job {job_id} not found")
        # answers at once when there is something new; otherwise holds the request briefly (fewer empty polls)
        with anyio.move_on_after(STREAM_HOLD_SECONDS):
            while job.stream_read >= len(job.stream) and not emu.is_terminal(job) and not emu.closing:
                await job.changed.wait(WAKE_SECONDS)
        fresh = job.stream[job.stream_read:]
        job.stream_read += len(fresh)
        return JSONResponse({"status": job.status, "stream": [{"output": item} for item in fresh]})

    @app.post("/v2/{endpoint_id}/cancel/{job_id}")
    async def cancel(endpoint_id: str, job_id: str) -> Response:
        job = job_of(endpoint_id, job_id)
        if job is None:
            return _error(404, f"job {job_id} not found")
        if not emu.is_terminal(job):
            emu.stop_job(job, "CANCELLED", "cancelled")
        return JSONResponse({"id": job.id, "status": job.status})

    @app.post("/v2/{endpoint_id}/retry/{job_id}")
    async def retry(endpoint_id: str, job_id: str) -> Response:
        job, endpoint = job_of(endpoint_id, job_id), endpoint_or_none(endpoint_id)
        if job is None or endpoint is None:
            return _error(404, f"job {job_id} not found")
        if job.status not in ("FAILED", "TIMED_OUT"):
            return _error(400, f"only FAILED or TIMED_OUT jobs can be retried; this one is {job.status}")
        job.status, job.output, job.error, job.started, job.finished, job.worker_id = (
            "IN_QUEUE", None, None, None, None, None)
        job.stream.clear()
        job.stream_read = 0
        endpoint.queue.append(job.id)
        endpoint.retried += 1
        endpoint.changed.notify()
        return JSONResponse({"id": job.id, "status": job.status})

    @app.get("/v2/{endpoint_id}/health")
    async def health(endpoint_id: str) -> Response:
        endpoint = endpoint_or_none(endpoint_id)
        return JSONResponse(emu.health(endpoint)) if endpoint else _error(404, f"endpoint {endpoint_id} not found")

    @app.post("/v2/{endpoint_id}/purge-queue")
    async def purge_queue(endpoint_id: str) -> Response:
        endpoint = endpoint_or_none(endpoint_id)
        if endpoint is None:
            return _error(404, f"endpoint {endpoint_id} not found")
        removed = 0
        for job_id in list(endpoint.queue):
            job = emu.jobs.get(job_id)
            if job is not None and job.status == "IN_QUEUE":
                job.finish("CANCELLED")
                removed += 1
        endpoint.queue.clear()
        return JSONResponse({"removed": removed, "status": "completed"})

    # -- GraphQL: the control plane (``_graphql``, ``_controlplane``) -------------------------------------------

    control = ControlPlane(emu)

    @app.post("/graphql")
    async def graphql(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        status, data = await graphql_answer(control, body)
        return JSONResponse(data, status_code=status)

    # -- worker webhooks (what runpod.serverless's loop calls) ---------------------------------------------------

    def worker_of(endpoint_id: str, worker_id: str, request: Request) -> EmulatedWorker | None:
        endpoint = endpoint_or_none(endpoint_id)
        worker = endpoint.workers.get(worker_id) if endpoint else None
        if endpoint is None or worker is None or _key_of(request) != worker.key:
            return None
        if worker.state != "ready":
            worker.state, endpoint.crashes = "ready", 0
        return worker

    async def take(endpoint_id: str, worker_id: str, request: Request, count: int) -> list[dict[str, Any]] | None:
        worker = worker_of(endpoint_id, worker_id, request)
        endpoint = endpoint_or_none(endpoint_id)
        if worker is None or endpoint is None:
            return None
        if request.query_params.get("job_in_progress") == "0":
            worker.kill_at = None  # it let go of any stopped job
        with anyio.move_on_after(LONG_POLL_SECONDS):
            while not worker.stopping and not emu.closing:
                jobs = emu.take_jobs(endpoint, worker, count)
                if jobs:
                    return [{"id": job.id, "input": job.input} for job in jobs]
                await endpoint.changed.wait(WAKE_SECONDS)
        return None

    @app.get("/v2/{endpoint_id}/job-take/{worker_id}")
    async def job_take(endpoint_id: str, worker_id: str, request: Request) -> Response:
        jobs = await take(endpoint_id, worker_id, request, 1)
        return JSONResponse(jobs[0]) if jobs else Response(status_code=204)

    @app.get("/v2/{endpoint_id}/job-take-batch/{worker_id}")
    async def job_take_batch(endpoint_id: str, worker_id: str, request: Request, batch_size: int = 1) -> Response:
        jobs = await take(endpoint_id, worker_id, request, max(1, batch_size))
        return JSONResponse(jobs) if jobs else Response(status_code=204)

    async def result_body(request: Request, limit: int) -> dict[str, Any] | JSONResponse:
        raw = await request.body()
        if len(raw) > limit:
            return _error(400, f"Bad Request: the body of {len(raw)} bytes is over the {limit:,}-byte limit")
        data = json.loads(raw)  # JSON, although the SDK labels it form-encoded
        return data if isinstance(data, dict) else {"output": data}

    @app.post("/v2/{endpoint_id}/job-done/{worker_id}/{job_id}")
    async def job_done(endpoint_id: str, worker_id: str, job_id: str, request: Request) -> Response:
        worker, job = worker_of(endpoint_id, worker_id, request), emu.jobs.get(job_id)
        if worker is None or job is None:
            return _error(404, "unknown worker or job")
        body = await result_body(request, RESULT_LIMIT_BYTES)
        if isinstance(body, JSONResponse):
            return body
        emu.job_done(worker, job, body)
        return JSONResponse({})

    @app.post("/v2/{endpoint_id}/job-stream/{worker_id}/{job_id}")
    async def job_stream(endpoint_id: str, worker_id: str, job_id: str, request: Request) -> Response:
        worker, job = worker_of(endpoint_id, worker_id, request), emu.jobs.get(job_id)
        if worker is None or job is None:
            return _error(404, "unknown worker or job")
        body = await result_body(request, STREAM_ITEM_LIMIT_BYTES)
        if isinstance(body, JSONResponse):
            return body
        if job.status == "IN_PROGRESS" and job.worker_id == worker.id and "output" in body:
            job.stream.append(body["output"])
            job.changed.notify()
        return JSONResponse({})

    @app.get("/v2/{endpoint_id}/job-stop/{worker_id}")
    async def job_stop(endpoint_id: str, worker_id: str, request: Request) -> Response:
        worker = worker_of(endpoint_id, worker_id, request)
        if worker is None:
            return Response(status_code=204)
        with anyio.move_on_after(LONG_POLL_SECONDS):
            while not worker.to_stop and not worker.stopping and not emu.closing:
                await worker.stop_signal.wait(WAKE_SECONDS)
        stop, worker.to_stop = worker.to_stop, []
        return JSONResponse({"jobsToStop": stop}) if stop else Response(status_code=204)

    @app.get("/v2/{endpoint_id}/ping/{worker_id}")
    async def ping(endpoint_id: str, worker_id: str, request: Request) -> Response:
        return JSONResponse({}) if worker_of(endpoint_id, worker_id, request) else _error(404, "unknown worker")

    # -- admin: fault drills and introspection (not part of RunPod's API) ----------------------------------------

    @app.post("/_emulator/faults")
    async def add_fault(request: Request) -> Response:
        body = await request.json()
        fault = {"status": int(body["status"]), "count": int(body.get("count", 1)),
                 "match": str(body.get("match", "/")), "retry_after": body.get("retry_after")}
        if body.get("operation"):  # a GraphQL root field: see _graphql._take_fault
            fault.update(operation=str(body["operation"]), skip=int(body.get("skip", 0)),
                         after=bool(body.get("after")))
        emu.faults.append(fault)
        return JSONResponse({"faults": emu.faults})

    @app.delete("/_emulator/faults")
    async def clear_faults() -> Response:
        emu.faults.clear()
        return JSONResponse({"faults": emu.faults})

    @app.get("/_emulator/faults")
    async def list_faults() -> Response:
        return JSONResponse({"faults": emu.faults})

    @app.get("/_emulator/stats")
    async def stats() -> Response:
        """Mutations the control plane ran, by root field (a deploy with nothing to change must make none)."""
        return JSONResponse({"mutations": control.mutations, "total_mutations": sum(control.mutations.values())})

    @app.post("/_emulator/endpoints/{endpoint_id}/vendor")
    async def vendor_values(endpoint_id: str, request: Request) -> Response:
        """Set what RunPod itself sets on an endpoint (``{"workersStandby": 1}``): drift no client sent."""
        endpoint = endpoint_or_none(endpoint_id)
        if endpoint is None:
            return _error(404, f"endpoint {endpoint_id} not found")
        endpoint.vendor.update(await request.json())
        return JSONResponse(endpoint.vendor)

    @app.get("/_emulator/workers")
    async def workers() -> Response:
        listing = [{"id": w.id, "endpoint": e.id, "name": e.settings.get("name"), "pid": emu.worker_pids.get(w.id),
                    "state": w.state, "jobs": sorted(w.jobs)} for e in emu.endpoints.values()
                   for w in e.workers.values()]
        return JSONResponse({"workers": listing})

    return app

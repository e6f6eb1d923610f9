"""The ``gpuflex`` command: serve, run, plan, deploy, teardown, versions, rollback, call, openapi, backends, jobs,
costs.

Heavy imports (FastAPI, uvicorn, the app itself) happen inside the commands that need them, so ``gpuflex
--help`` and ``gpuflex backends`` start fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import sqlite3
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import attrs
import typer
from rich.console import Console
from rich.markup import escape

from .._version import __version__
from ..errors import GpuflexError

if TYPE_CHECKING:
    from .._apps import LoadedApp
    from .._ledger import JobLedger

__all__ = ["app", "main"]

app = typer.Typer(
    name="gpuflex", help="Run decorated Python functions on any GPU target, with a hot-reloading dev server.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

AppFile = Annotated[Path, typer.Argument(help="The Python file that defines the endpoints.", exists=True,
                                         dir_okay=False, resolve_path=True)]
BackendOpt = Annotated[str | None, typer.Option("--backend", "-b", help="Backend to run endpoints on "
                                                "(default: config file, GPUFLEX_BACKEND, then local).")]
MaxCostOpt = Annotated[float | None, typer.Option("--max-cost", min=0, help="Refuse new jobs once this process "
                                                  "has spent this many USD.")]
EnvOpt = Annotated[str, typer.Option("--env", "-e", help="The environment: each has its own deployed endpoints "
                                     "(staging, prod...).")]


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/bold red] {escape(message)}")
    raise typer.Exit(code)


def _check_backend(name: str | None) -> None:
    if name is None:
        return
    from .._registry import get_registry

    try:
        get_registry().get(name)
    except GpuflexError as exc:
        _fail(str(exc), 2)


def _use(backend: str | None) -> contextlib.AbstractContextManager[Any]:
    """``gpuflex.use(backend)`` for this thread, and GPUFLEX_BACKEND for threads the app starts."""
    if backend is None:
        return contextlib.nullcontext()
    from .._config import use

    os.environ["GPUFLEX_BACKEND"] = backend
    return use(backend)


def _load(path: Path) -> LoadedApp:
    from .._apps import load_app

    try:
        return load_app(path)
    except GpuflexError as exc:
        _fail(str(exc))
    except Exception:
        err.print(f"[bold red]error:[/bold red] importing {escape(str(path))} failed:")
        err.print(traceback.format_exc().rstrip(), markup=False)
        raise typer.Exit(1) from None


def _install_ledger() -> JobLedger:
    from .._ledger import install_ledger

    try:
        return install_ledger()
    except GpuflexError as exc:
        _fail(str(exc), 2)


def _budget(max_cost: float | None) -> None:
    if max_cost is not None:
        from ..client._session import get_session

        get_session().budget.limit = max_cost


@app.callback(invoke_without_command=True)
def _root(version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False) -> None:
    if version:
        out.print(f"gpuflex {__version__}")
        raise typer.Exit()


@app.command()
def serve(
    app_file: AppFile,
    backend: BackendOpt = None,
    host: Annotated[str, typer.Option(help="Interface to bind; anything but loopback needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    no_reload: Annotated[bool, typer.Option("--no-reload", help="Do not watch the project for changes.")] = False,
    token: Annotated[str | None, typer.Option(envvar="GPUFLEX_TOKEN", help="Require 'Authorization: Bearer "
                                              "TOKEN' on every route but /health.")] = None,
    max_cost: MaxCostOpt = None,
) -> None:
    """Serve every endpoint in APP_FILE over HTTP/JSON, reloading the code on save."""
    from ..server._app import check_bind

    try:
        check_bind(host, token)
    except GpuflexError as exc:
        _fail(str(exc), 2)
    _check_backend(backend)
    _install_ledger()
    _budget(max_cost)
    if backend:
        os.environ["GPUFLEX_BACKEND"] = backend
    import uvicorn

    from ..server._app import create_app

    try:
        asgi = create_app(app_file, token=token, backend=backend, reload=not no_reload, console=err)
    except GpuflexError as exc:
        _fail(str(exc))
    except Exception:
        err.print(f"[bold red]error:[/bold red] importing {escape(str(app_file))} failed:")
        err.print(traceback.format_exc().rstrip(), markup=False)
        raise typer.Exit(1) from None
    state = asgi.state.gpuflex
    from .._config import resolve_backend

    where = backend or f"{resolve_backend('', None).name} (default)"
    err.print(f"[bold]gpuflex[/bold] serving {escape(app_file.name)} on backend {where}:")
    for route in state.routes:
        err.print(f"  POST {route.path}  [dim]({route.kind.value}; jobs: POST {route.path}/jobs)[/dim]")
    err.print(f"  docs: http://{host}:{port}/docs" + ("" if no_reload else "  [dim](hot reload on)[/dim]"))
    from ..client._session import shutdown

    server = uvicorn.Server(uvicorn.Config(asgi, host=host, port=port, log_level="info", lifespan="on",
                                           timeout_graceful_shutdown=5))
    exit_server = server.handle_exit

    def handle_exit(sig: int, frame: Any) -> None:  # Ctrl-C: open dashboards must not hold the server up
        state.close_streams()
        exit_server(sig, frame)

    server.handle_exit = handle_exit  # type: ignore[method-assign]
    try:
        server.run()
    finally:
        shutdown()


@app.command(context_settings={"allow_extra_args": False})
def run(
    app_file: AppFile,
    args: Annotated[list[str] | None, typer.Argument(help="Arguments for the script (after --).")] = None,
    backend: BackendOpt = None,
    max_cost: MaxCostOpt = None,
) -> None:
    """Run APP_FILE as a script (its __main__ block runs) with its endpoints on the chosen backend.

    Example: gpuflex run pipeline.py --backend local -- --prompt "cats"
    """
    _check_backend(backend)
    from ..client._session import shutdown

    ledger = _install_ledger()
    _budget(max_cost)
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [str(app_file), *(args or [])]
    sys.path.insert(0, str(app_file.parent))
    code: int | str | None = 0
    try:
        with _use(backend):
            runpy.run_path(str(app_file), run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    except GpuflexError as exc:
        err.print(f"[bold red]error:[/bold red] {type(exc).__name__}: {escape(str(exc))}")
        code = 1
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename in (__file__, "<frozen runpy>"):
            tb = tb.tb_next  # show the script's frames, as `python script.py` would
        err.print("".join(traceback.format_exception(type(exc), exc, tb)).rstrip(), markup=False)
        code = 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        shutdown()
        ledger.flush()
    if isinstance(code, str):
        err.print(code, markup=False)
        code = 1
    raise typer.Exit(code or 0)


@app.command()
def backends() -> None:
    """List installed backends: versions, and capabilities (with the reason for any that is missing)."""
    from ._report import backends_table

    out.print(backends_table())


@app.command()
def plan(
    app_file: AppFile,
    backend: BackendOpt = None,
    seconds_per_call: Annotated[float, typer.Option("--seconds-per-call", "-s", min=0,
                                                    help="Assumed run time of one call, for the estimate.")] = 1.0,
    env: EnvOpt = "prod",
) -> None:
    """Show what deploying APP_FILE would create and cost, and (on backends that keep deployments) what it would
    change, per endpoint and field, against what is deployed; nothing is created or changed."""
    _check_backend(backend)
    from .._release import check_env
    from ._report import plan as make_plan
    from ._report import plan_table

    try:
        env = check_env(env)
    except GpuflexError as exc:
        _fail(str(exc), 2)
    loaded = _load(app_file)
    if not loaded.endpoints:
        _fail(f"no gpuflex endpoints in {app_file}")
    try:
        rows = make_plan(loaded, backend, seconds_per_call)
    except GpuflexError as exc:
        _fail(str(exc))
    for row in rows:
        out.print(plan_table(row, seconds_per_call))
    out.print(f"[dim]Estimates use each backend's price and billing rule at {seconds_per_call:g} s per call; idle "
              f"cost counts only min_workers.[/dim]")
    from ..client._session import shutdown
    from ._release import plan_releases

    try:
        plan_releases(loaded, backend, env, out)
    except GpuflexError as exc:
        err.print(f"[yellow]cannot compare with what is deployed:[/yellow] {escape(str(exc))}")
    finally:
        shutdown()
    out.print("[dim]Nothing was created or changed.[/dim]")


@app.command()
def deploy(
    app_file: AppFile,
    backend: BackendOpt = None,
    env: EnvOpt = "prod",
    as_json: Annotated[bool, typer.Option("--json", help="Print each endpoint's name, backend, id and URL as "
                                          "JSON.")] = False,
) -> None:
    """Deploy APP_FILE: show the plan (what changes, per endpoint), apply only that, record a version; write the
    OpenAPI document of the deployed JSON API next to APP_FILE."""
    _check_backend(backend)
    from .._release import check_env
    from ._deploy import deploy_app

    loaded = _load(app_file)
    if not loaded.endpoints:
        _fail(f"no gpuflex endpoints in {app_file}")
    try:
        deploy_app(loaded, backend, err if as_json else out, env=check_env(env), as_json=as_json)
    except GpuflexError as exc:
        _fail(str(exc))


@app.command()
def teardown(
    app_file: Annotated[Path | None, typer.Argument(help="Only this app's endpoints (default: all).",
                                                    exists=True, dir_okay=False, resolve_path=True)] = None,
    backend: BackendOpt = None,
    env: Annotated[str | None, typer.Option("--env", "-e", help="Remove the endpoints `gpuflex deploy --env ENV` "
                                            "made (this app's, or every app's without APP_FILE).")] = None,
) -> None:
    """Remove what `gpuflex deploy` created on a backend (with --env), or a development run's leftovers."""
    _check_backend(backend)
    loaded = _load(app_file) if app_file else None
    try:
        if env is not None:
            from .._release import check_env
            from ._release import teardown_env

            teardown_env(loaded, backend, check_env(env), out)
            return
        from ._deploy import teardown_backend

        teardown_backend(backend, list(loaded.endpoints) if loaded else None, out)
    except GpuflexError as exc:
        _fail(str(exc))


@app.command()
def versions(
    name: Annotated[str, typer.Argument(help="The endpoint's name.")],
    backend: BackendOpt = None,
    env: EnvOpt = "prod",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (settings included).")] = False,
) -> None:
    """Every deploy of endpoint NAME: its code (bundle hash), git commit and settings, the current one marked."""
    _check_backend(backend)
    from .._release import check_env
    from ._release import list_versions

    try:
        list_versions(name, backend, check_env(env), out, as_json)
    except GpuflexError as exc:
        _fail(str(exc))


@app.command()
def rollback(
    name: Annotated[str, typer.Argument(help="The endpoint's name.")],
    version: Annotated[int | None, typer.Argument(help="The version to restore (default: the one before the "
                                                  "current).")] = None,
    backend: BackendOpt = None,
    env: EnvOpt = "prod",
) -> None:
    """Deploy an earlier version of endpoint NAME again, code and settings, recorded as a new version."""
    _check_backend(backend)
    from .._release import check_env
    from ._release import rollback_endpoint

    try:
        rollback_endpoint(name, version, backend, check_env(env), out)
    except GpuflexError as exc:
        _fail(str(exc))


@app.command()
def call(
    name: Annotated[str, typer.Argument(help="The deployed endpoint's name.")],
    body: Annotated[str, typer.Option("--json", help="The arguments as a JSON object ('-' reads stdin); a class "
                                      "endpoint's names its method with \"method\".")] = "{}",
    backend: BackendOpt = None,
    env: EnvOpt = "prod",
) -> None:
    """Call a deployed endpoint with JSON, as any HTTP client would; print its JSON result."""
    _check_backend(backend)
    from .._release import check_env
    from ._release import call_deployed

    try:
        arguments = json.loads(sys.stdin.read() if body == "-" else body)
    except ValueError as exc:
        _fail(f"--json is not JSON: {exc}", 2)
    try:
        result = call_deployed(name, arguments, backend, check_env(env))
    except GpuflexError as exc:
        _fail(str(exc))
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


@app.command()
def openapi(
    app_file: AppFile,
    backend: BackendOpt = None,
    env: EnvOpt = "prod",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write it here (default: print it).")] = None,
) -> None:
    """The OpenAPI document of APP_FILE's deployed endpoints: the JSON API a plain HTTP client calls."""
    _check_backend(backend)
    from .._release import check_env
    from ._release import deployed_openapi

    loaded = _load(app_file)
    try:
        document = deployed_openapi(loaded, backend, check_env(env))
    except GpuflexError as exc:
        _fail(str(exc))
    text = json.dumps(document, indent=2) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        err.print(f"wrote {escape(str(output))}")


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _ledger_records(**query: Any) -> list[dict[str, Any]]:
    from .._ledger import read_ledger

    try:
        return read_ledger(**query)
    except sqlite3.Error as exc:
        from .._ledger import ledger_path

        _fail(f"cannot read the job ledger {ledger_path()}: {exc}")


def _nothing_yet() -> None:
    from .._ledger import ledger_path

    out.print(f"No jobs recorded yet in {escape(str(ledger_path()))}; jobs run through `gpuflex serve` or "
              "`gpuflex run` are recorded there.")


@app.command()
def jobs(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many recent jobs to show.")] = 20,
    endpoint: Annotated[str | None, typer.Option(help="Only this endpoint's jobs.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Recent jobs recorded by `gpuflex serve` and `gpuflex run` (in $GPUFLEX_HOME/jobs.db)."""
    from ._report import jobs_table

    records = _ledger_records(endpoint=endpoint, limit=limit)
    if as_json:
        sys.stdout.write(json.dumps(records, indent=2) + "\n")
    elif not records:
        _nothing_yet()
    else:
        out.print(jobs_table(records, out.width))


CompareOpt = Annotated[bool, typer.Option(
    "--compare", help="Re-price the ledger's jobs (or, with --calls-per-hour, an expected load) on every installed "
    "backend's price model for the same GPU, with the break-even utilisation of a pod against serverless.")]
GpuOpt = Annotated[str | None, typer.Option("--gpu", help="--compare: price on this GPU (H100, A100-80GB:2...) "
                                            "instead of the one each endpoint asked for.")]
CallsOpt = Annotated[float | None, typer.Option("--calls-per-hour", min=0, help="--compare: price this expected "
                                                "load instead of the ledger (evenly spaced calls).")]
SecondsOpt = Annotated[float | None, typer.Option("--seconds-per-call", "-s", min=0.001, help="--compare: seconds "
                                                  "per call (default: 1 for a load, the jobs' mean for the ledger).")]
CompareAppOpt = Annotated[Path | None, typer.Option("--app", exists=True, dir_okay=False, resolve_path=True,
                                                    help="--compare with --calls-per-hour: price the load on each "
                                                    "endpoint of this app, with its settings.")]
PodRateOpt = Annotated[float | None, typer.Option("--pod-rate", min=0, help="--compare: also price a pod at this "
                                                  "many USD per GPU-hour, billed by the hour.")]
PlotOpt = Annotated[Path | None, typer.Option("--plot", dir_okay=False, help="--compare: draw cost per hour "
                                              "against utilisation per backend to this file (.png or .svg; needs "
                                              "matplotlib: pip install 'gpuflex[plot]').")]


@app.command()
def costs(as_json: JsonOpt = False, compare: CompareOpt = False, gpu: GpuOpt = None, calls_per_hour: CallsOpt = None,
          seconds_per_call: SecondsOpt = None, app_file: CompareAppOpt = None, pod_rate: PodRateOpt = None,
          plot: PlotOpt = None) -> None:
    """Calls, compute seconds and dollars per endpoint for every job in the ledger, with the idle tails of
    per-second workers (once per burst of calls); --compare prices the same work on every installed backend."""
    given = {"--gpu": gpu, "--calls-per-hour": calls_per_hour, "--seconds-per-call": seconds_per_call,
             "--app": app_file, "--pod-rate": pod_rate, "--plot": plot}
    if not compare and any(v is not None for v in given.values()):
        _fail(f"{', '.join(k for k, v in given.items() if v is not None)} go(es) with --compare", 2)
    if compare:
        _compare(as_json, gpu, calls_per_hour, seconds_per_call, app_file, pod_rate, plot)
        return
    from ._report import costs_json, costs_table

    records = _ledger_records()
    if as_json:
        sys.stdout.write(json.dumps(costs_json(records), indent=2) + "\n")
    elif not records:
        _nothing_yet()
    else:
        out.print(costs_table(records, out.width))


def _compare(as_json: bool, gpu: str | None, calls_per_hour: float | None, seconds_per_call: float | None,
             app_file: Path | None, pod_rate: float | None, plot: Path | None) -> None:
    from ._compare import compare, ledger_workloads, plan_workloads
    from ._compare_out import compare_json, compare_tables, plot_comparisons

    if app_file is not None and calls_per_hour is None:
        _fail("--app prices an expected load: give --calls-per-hour (and --seconds-per-call) with it", 2)
    try:
        if calls_per_hour is not None:
            specs = [ep.spec for ep in _load(app_file).endpoints.values()] if app_file else []
            workloads = plan_workloads(specs, gpu, calls_per_hour, seconds_per_call or 1.0)
        else:
            records = _ledger_records()
            if not records:
                _nothing_yet()
                return
            workloads = ledger_workloads(records, gpu)
            if not workloads:
                _fail("the ledger's jobs ran on GPUs recorded without a name (before gpuflex recorded it): "
                      "say which with --gpu", 2)
            if seconds_per_call is not None:
                workloads = [attrs.evolve(w, seconds_per_call=seconds_per_call) for w in workloads]
        comparisons = [compare(w, pod_rate) for w in workloads]
        if plot is not None:
            plot_comparisons(comparisons, plot)
    except GpuflexError as exc:
        _fail(str(exc), 2)
    if as_json:
        sys.stdout.write(json.dumps(compare_json(comparisons), indent=2) + "\n")
    else:
        for renderable in compare_tables(comparisons, out.width):
            out.print(renderable)
        if plot is not None:
            out.print(f"[dim]plot written to {escape(str(plot))}[/dim]")


def main() -> None:
    app()


if __name__ == "__main__":
    main()

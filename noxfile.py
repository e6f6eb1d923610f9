"""Every install and check step of the project. `pip install nox uv` then `nox -s <session>`.

torch is installed with pip at a pinned version (a CPU build that lies on this project's machines); uv would
resolve a multi-GB CUDA build from PyPI instead, so it never resolves torch here.
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "uv|venv"
nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
TORCH = "torch==2.13.0"
MODAL = "modal==1.6.4"  # the Modal backend's offline tests speak this client version's protocol
RAY = "ray[client]==2.60.0"  # the Ray backend's tests start a real two-node cluster of this version
RAY_SERVE = "ray[serve]==2.60.0"  # the batching benchmark's baseline: Ray Serve's @serve.batch, same Ray version
RAY_NODE_DEPS = ["virtualenv"]  # what a Ray node needs to build pip environments (ray[default] has it)
TEST_DEPS = [
    "pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "numpy>=1.26", "mypy>=1.10", "ruff>=0.6", "mkdocs>=1.6",
    "import-linter>=2.1", "schemathesis>=4.0", "pytest-xdist>=3.5",
    "opentelemetry-sdk>=1.20", "matplotlib>=3.8",
]
BACKENDS = ["backends/local", "backends/pod", "backends/modal", "backends/runpod", "backends/ray"]
# RunPod's worker loop for the emulator's workers, installed without boto3 (imported only by its S3 upload helper):
# boto3 pins python-dateutil<3, which brings six back, and the local backend's isolation test needs six absent.
RUNPOD = "runpod==1.12.0"
RUNPOD_DEPS = [
    "aiohttp[speedups]>=3.14.3", "aiohttp-retry>=2.9.1", "backoff>=2.2.1", "click>=8.4.2", "colorama>=0.4.6,<0.4.7",
    "cryptography>=50.0.0", "fastapi[all]>=0.141.1", "paramiko>=5.0.0", "prettytable>=3.18.0", "psutil>=7.2.2",
    "py-cpuinfo>=9.0.0", "inquirerpy==0.3.4", "requests>=2.34.2", "tomli>=2.4.1", "tomlkit>=0.15.1",
    "tqdm-loggable>=0.4.1", "urllib3>=2.7.0", "watchdog>=6.0.0",
]


def _install(session: nox.Session, *extra: str, torch: bool = False, backends: list[str] = BACKENDS) -> None:
    session.install("-e", ".", *[arg for path in backends for arg in ("-e", path)], *extra)
    if torch:
        session.run("python", "-m", "ensurepip", "--upgrade", silent=True)
        session.run("python", "-m", "pip", "install", "--quiet", TORCH)


@nox.session(python=PYTHON, venv_params=["--seed"])
def tests(session: nox.Session) -> None:
    """Lint, type-check and run the whole test suite (the README's test command; CI runs it)."""
    _install(session, *TEST_DEPS, "uv", "-e", "examples/backend-template", "diffusers", "transformers", "pillow",
             MODAL, RAY, *RAY_NODE_DEPS, *RUNPOD_DEPS, torch=True)
    session.install("--no-deps", RUNPOD)
    session.run("ruff", "check", ".")
    session.run("lint-imports")  # the layering contracts in pyproject.toml
    session.run("mypy", "--strict", "gpuflex", "backends/local/gpuflex_local", "backends/pod/gpuflex_pod",
                "backends/modal/gpuflex_modal", "backends/runpod/gpuflex_runpod", "backends/ray/gpuflex_ray",
                "examples/backend-template/gpuflex_subprocess_example",
                "tests/typing")  # what a type checker sees of gpuflex's public API
    # test files run in parallel (one file per worker process: files share fixtures such as a session's sshd)
    session.run("pytest", "-n", "auto", "--dist", "loadfile", *session.posargs)


@nox.session(python=PYTHON, venv_params=["--seed"])
def demo(session: nox.Session) -> None:
    """Run the quick-start demo on the local backend."""
    _install(session, "numpy>=1.26", torch=True, backends=["backends/local"])
    session.run("python", "examples/quickstart.py")


@nox.session(python=PYTHON, venv_params=["--seed"])
def benchmarks(session: nox.Session) -> None:
    """Measure gpuflex against ProcessPoolExecutor, Ray and Ray Serve; write docs/benchmarks.md."""
    _install(session, "numpy>=1.26", "uv", RAY, RAY_SERVE, MODAL, *RUNPOD_DEPS, torch=True)  # uv: moto (section 12)
    session.install("--no-deps", RUNPOD)
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session(python=PYTHON, venv_params=["--seed"])
def live(session: nox.Session) -> None:
    """Opt-in, never in CI: the conformance suite, first-call timings and each backend's live checks against a real
    RunPod account (RUNPOD_API_KEY), Modal workspace (MODAL_TOKEN_ID/SECRET or ~/.modal.toml) and SSH hosts
    (GPUFLEX_LIVE_SSH_HOSTS), each only when given; writes docs/live/<date>.md."""
    _install(session, *TEST_DEPS, MODAL, *RUNPOD_DEPS)
    session.install("--no-deps", RUNPOD)
    report = session.create_tmp() + "/live.jsonl"
    status = 0
    try:
        session.run("pytest", "--run-live", "-m", "live", "-p", "no:randomly", "tests/live", "backends",
                    *session.posargs, env={"GPUFLEX_LIVE_REPORT": report})
    except nox.command.CommandFailed:
        status = 1
    finally:  # an interrupted or failed run is reported too; each check tears down what it created
        session.run("python", "benchmarks/live_report.py", report, str(status))
    if status:
        session.error("some live checks failed: see docs/live/")

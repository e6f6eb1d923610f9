"""The pod backend against a real sshd on 127.0.0.1, next to what raw SSH and rsync do over the same server.

1. Warm call overhead of a no-op endpoint vs a raw round trip (one line echoed by ``cat``) through one persistent
   SSH channel on the same connection: the floor any SSH transport pays.
2. Bundle push: the first push of a 200-file project, then an incremental push after one file changed, vs
   ``rsync -a`` over the same sshd (when rsync is installed).
3. Hot reload through the pod backend: save a file, time until a call answers with the new code (target < 1 s).
"""

from __future__ import annotations

import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _endpoints as ep

import gpuflex
from gpuflex._bundle import build_bundle
from gpuflex.client._session import get_session

APP = '''
import gpuflex


@gpuflex.endpoint(name="pod_reload_bench")
def version() -> str:
    return "{version}"
'''


def _project(root: Path, files: int = 200, size: int = 16 * 1024) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'pod-bench'\n")
    for i in range(files):
        package = root / f"pkg{i % 10}"
        package.mkdir(exist_ok=True)
        (package / f"mod{i}.py").write_text(f"# module {i}\n" + ("x = 1\n" * (size // 6)))
    return root


def _echo_rtt(server: Any, n: int) -> list[float]:
    """A line through a remote ``cat`` on one persistent channel: write, then read it back."""
    argv = ["ssh", "-i", server.identity_file, "-o", f"UserKnownHostsFile={server.known_hosts}", "-o",
            "BatchMode=yes", "-p", str(server.port), "-T", f"{server.user}@127.0.0.1", "cat"]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    assert proc.stdin is not None and proc.stdout is not None
    samples = []
    try:
        for i in range(n + 20):
            t0 = time.perf_counter()
            proc.stdin.write(b"ping\n")
            line = proc.stdout.readline()
            if i >= 20:
                samples.append(time.perf_counter() - t0)
            assert line == b"ping\n", line
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
    return samples


def _rsync(server: Any, source: Path, dest: str) -> float | None:
    if subprocess.run(["which", "rsync"], capture_output=True).returncode != 0:
        return None
    ssh = (f"ssh -i {server.identity_file} -o UserKnownHostsFile={server.known_hosts} -o BatchMode=yes "
           f"-p {server.port}")
    t0 = time.perf_counter()
    subprocess.run(["rsync", "-a", "-e", ssh, f"{source}/", f"{server.user}@127.0.0.1:{dest}/"], check=True)
    return time.perf_counter() - t0


def bench_pod(cfg: dict[str, Any]) -> dict[str, Any]:
    try:
        from gpuflex_pod.sshd import LoopbackSshd, SshdUnavailable
    except ImportError:
        return {"skip": "gpuflex-pod is not installed"}
    try:
        server = LoopbackSshd().start()
    except SshdUnavailable as exc:
        return {"skip": str(exc)}
    work = Path(tempfile.mkdtemp(prefix="gpuflex-pod-bench-"))
    out: dict[str, Any] = {}
    try:
        options = server.pod_options(python=sys.executable, remote_dir=str(work / "remote"))
        n = cfg["roundtrip_n"] // 2
        with gpuflex.use("pod", **options):
            for _ in range(cfg["warmup"]):
                ep.noop_ep()
            samples = []
            for _ in range(n):
                t0 = time.perf_counter()
                ep.noop_ep()
                samples.append(time.perf_counter() - t0)
            out["call"] = samples
        gpuflex.shutdown()
        out["echo"] = _echo_rtt(server, n)
        out["push"] = _bench_push(server, options, work)
        out["reload"] = _bench_reload(options, work, cfg["reload_reps"])
    finally:
        gpuflex.shutdown()
        server.cleanup()
    return out


def _bench_push(server: Any, options: dict[str, Any], work: Path) -> dict[str, Any]:
    from gpuflex_pod import PodBackend, PodConfig
    from gpuflex_pod._remote import TreeFile

    project = _project(work / "project")
    backend = PodBackend(PodConfig(**options))
    session = get_session()
    session.install_backend(backend)  # its loop and task group; nothing is deployed
    host = backend.hosts[0]

    def push(tag: str) -> Any:
        bundle = build_bundle(project, cache_dir=work / "cache")
        files = tuple(TreeFile(f.path, f.sha256, bundle.root / f.path) for f in bundle.files)
        return session.run(host.push(f"bundles/{tag}-{bundle.hash}", files)), bundle

    session.run(host.probe())
    first, bundle = push("first")
    (project / "pkg3" / "mod3.py").write_text("# changed\nx = 2\n")
    second, _ = push("second")
    result: dict[str, Any] = {"files": len(bundle.files), "bytes": bundle.size, "first": first.seconds,
                              "first_sent": first.sent_files, "incremental": second.seconds,
                              "incremental_sent": second.sent_files}
    gpuflex.shutdown()
    (project / "pkg3" / "mod3.py").write_text("# module 3\n")
    result["rsync_first"] = _rsync(server, project, str(work / "rsync"))
    (project / "pkg3" / "mod3.py").write_text("# changed again\nx = 3\n")
    result["rsync_incremental"] = _rsync(server, project, str(work / "rsync"))
    return result


def _bench_reload(options: dict[str, Any], work: Path, reps: int) -> list[float]:
    project = work / "reload_app"
    project.mkdir()
    (project / "pyproject.toml").write_text("[project]\nname = 'pod-reload-bench'\n")
    source = project / "pod_reload_app.py"
    source.write_text(APP.format(version="v0"))
    sys.path.insert(0, str(project))
    samples = []
    try:
        with gpuflex.use("pod", **options):
            module = importlib.import_module("pod_reload_app")
            assert module.version() == "v0"
            for i in range(1, reps + 1):
                source.write_text(APP.format(version=f"v{i}"))
                t0 = time.perf_counter()
                get_session().invalidate_bundles()  # what `gpuflex serve`'s watcher does on save
                answer = module.version()
                samples.append(time.perf_counter() - t0)
                assert answer == f"v{i}", answer
    finally:
        gpuflex.shutdown()
        sys.path.remove(str(project))
        sys.modules.pop("pod_reload_app", None)
    return samples


def section_pod(res: dict[str, Any]) -> str:
    title = "## 8. Pod backend over a real sshd on 127.0.0.1\n\n"
    if "error" in res:
        return title + f"Failed: {res['error']}\n"
    if "skip" in res:
        return title + f"Not measured: {res['skip']}.\n"
    call, echo = statistics.median(res["call"]) * 1e6, statistics.median(res["echo"]) * 1e6
    push, reload = res["push"], statistics.median(res["reload"])

    def secs(value: float | None) -> str:
        return "rsync not installed" if value is None else f"{value * 1000:.0f} ms"

    lines = [
        title.rstrip("\n") + "\n",
        "One OpenSSH server started by the benchmark (throwaway keys), the pod backend's workers on it. "
        f"Medians of {len(res['call'])} calls.\n",
        "| what | gpuflex pod | raw SSH baseline | ratio |",
        "|---|---|---|---|",
        f"| warm no-op call vs one line echoed through a persistent channel (`cat`) | {call:.0f} µs | {echo:.0f} µs "
        f"| {call / echo:.1f}x |",
        f"| first push of a {push['files']}-file project ({push['bytes'] / 2**20:.1f} MiB; {push['first_sent']} "
        f"files sent) vs `rsync -a` | {push['first'] * 1000:.0f} ms | {secs(push['rsync_first'])} | "
        + (f"{push['first'] / push['rsync_first']:.2f}x |" if push["rsync_first"] else "— |"),
        f"| incremental push, one file changed ({push['incremental_sent']} sent) vs `rsync -a` | "
        f"{push['incremental'] * 1000:.0f} ms | {secs(push['rsync_incremental'])} | "
        + (f"{push['incremental'] / push['rsync_incremental']:.2f}x |" if push["rsync_incremental"] else "— |"),
        "",
        f"Hot reload through the pod backend (save, rebuild the bundle, push the changed file, the worker loads "
        f"the new code in place, the call answers): median {reload * 1000:.0f} ms over {len(res['reload'])} "
        f"edits; target under 1 s (issue #4): {'PASS' if reload < 1.0 else 'MISS'}.\n",
    ]
    return "\n".join(lines)


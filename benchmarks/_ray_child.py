"""Run one Ray benchmark script in a child process (its own network namespace when the host allows it), and clean
up what Ray leaves behind: the child's temp dir, and any ``~/.ray`` (its auth token) or ``/tmp/ray`` it created.
Shared by run.py's Ray baselines and the Ray Serve rows of _batch_bench.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def netns_prefix() -> list[str]:
    """``unshare`` into a fresh network namespace (loopback only) when this host allows it."""
    if not shutil.which("unshare") or not shutil.which("ip"):
        return []
    probe = subprocess.run(["unshare", "-rn", "sh", "-c", "ip link set lo up"], capture_output=True)
    return ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"] if probe.returncode == 0 else []


def run_ray_child(script: Path, settings: dict[str, Any], timeout: float, *, what: str, cwd: Path,
                  env: dict[str, str] | None = None, temp_prefix: str = "gfray-") -> dict[str, Any]:
    """``python script '<settings as JSON, with temp_dir>'``; its ``RESULT {...}`` line, with ``netns`` added."""
    home_ray = Path.home() / ".ray"
    token = home_ray / "auth_token"
    default_tmp = Path(tempfile.gettempdir()) / "ray"
    had_home, had_token, had_default_tmp = home_ray.exists(), token.exists(), default_tmp.exists()
    temp_dir = tempfile.mkdtemp(prefix=temp_prefix)
    full_env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1", **(env or {}))
    command = [*netns_prefix(), sys.executable, str(script), json.dumps(dict(settings, temp_dir=temp_dir))]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
                            cwd=str(cwd), start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        raise RuntimeError(f"the {what} child ran past {timeout:.0f} s and was killed") from None
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
        if not had_token and token.exists():
            token.unlink()
        if not had_home and home_ray.exists():
            shutil.rmtree(home_ray, ignore_errors=True)
        if not had_default_tmp and default_tmp.exists():
            shutil.rmtree(default_tmp, ignore_errors=True)
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT "):])
            result["netns"] = command[0] == "unshare"
            return result
    raise RuntimeError(f"the {what} child failed (exit {proc.returncode}): {stderr.strip()[-1200:]}")

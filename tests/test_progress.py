"""Progress bars for long work: on for a terminal (or GPUFLEX_PROGRESS=1), off otherwise."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(tmp_path, progress: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "mapper.py"
    script.write_text(textwrap.dedent("""
        import gpuflex

        @gpuflex.endpoint(max_workers=2)
        def square(x: int) -> int:
            return x * x

        if __name__ == "__main__":
            print(sum(square.map(range(50))))
            gpuflex.shutdown()
    """))
    env = {"GPUFLEX_PROGRESS": progress, "PATH": "/usr/bin:/bin", "COLUMNS": "100"}
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120,
                          cwd=tmp_path)


def test_map_shows_a_progress_bar_when_asked(tmp_path):
    done = _run(tmp_path, "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(sum(x * x for x in range(50))), "the bar must not touch stdout"
    assert "square.map" in done.stderr and "50/50" in done.stderr


def test_no_progress_bar_off_a_terminal(tmp_path):
    done = _run(tmp_path, "0")
    assert done.returncode == 0, done.stderr
    assert "square.map" not in done.stderr

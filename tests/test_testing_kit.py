"""The test kit's public helpers: run_check outside pytest, installed_backends, probe_backend, and the symmetric
frame codec backend authors use."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import gpuflex
from gpuflex._plugins import get_plugin_manager
from gpuflex.backend import Payload
from gpuflex.testing import installed_backends, probe_backend
from gpuflex.worker import WireCodec, read_frame_sync, write_frame_sync


def test_run_check_raises_check_skipped_in_a_plain_script():
    script = textwrap.dedent("""
        import pytest  # installed, but not running this script
        from gpuflex.testing import CheckSkipped, run_check

        def needs_a_gpu(make_backend):
            raise CheckSkipped("lacks gpu: no CUDA device here")

        try:
            run_check(needs_a_gpu, object)
        except CheckSkipped as exc:
            print("CheckSkipped:", exc)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "CheckSkipped: lacks gpu: no CUDA device here"


def test_installed_backends_reads_the_entry_points_afresh():
    manager = get_plugin_manager()
    found = installed_backends()
    assert {"local", "subprocess-example"} <= set(found)
    assert found["local"].name == "local"
    assert list(found) == sorted(found) == gpuflex.list_backends()
    assert get_plugin_manager() is manager, "the process's own plugin manager is left alone"


def test_probe_backend_says_why_a_backend_cannot_run_here():
    found = installed_backends()
    assert probe_backend(found["local"]) is None
    if "pod" in found:  # no hosts configured: a ConfigError, as a reason rather than an error
        reason = probe_backend(found["pod"])
        assert reason is not None and reason.startswith("ConfigError:") and "host" in reason


def test_frames_are_written_and_read_as_messages():
    codec = WireCodec()
    out = io.BytesIO()
    message = ("done", "job-1", "ok", Payload(b"data", (b"x" * 70_000,)))
    write_frame_sync(out, message)  # the message itself, as read_frame_sync returns it
    write_frame_sync(out, ("stop",), codec)
    write_frame_sync(out, codec.encode(("cancel", "job-2")))  # parts made ahead still work
    out.seek(0)
    first = read_frame_sync(out)
    assert first is not None and first[:3] == ("done", "job-1", "ok")
    assert first[3].data == b"data" and bytes(first[3].buffers[0]) == b"x" * 70_000
    assert read_frame_sync(out) == ("stop",)
    assert read_frame_sync(out) == ("cancel", "job-2")
    assert read_frame_sync(out) is None

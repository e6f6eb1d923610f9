"""The seed's image pipeline (examples/image_pipeline) runs end to end on the local backend, with the tiny
random-weight model, and the page it writes renders in a headless browser."""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpuflex.testing import require

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "examples" / "image_pipeline" / "pipeline.py"
PROMPT = "cats over London"
# tiny model: 64x64 images; compose() scales panels up to 256 px: reference 256 + cross-fade strip 64 + image 256
FINAL_SIZE = (576, 256)
NEEDS = ("torch", "diffusers", "transformers", "PIL")
MISSING = [name for name in NEEDS if importlib.util.find_spec(name) is None]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING), reason=f"the image pipeline needs {', '.join(MISSING)} "
                       "(pip install torch==2.13.0 diffusers transformers accelerate pillow)"),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Run the pipeline once, as its README says, into a temporary folder; return (out_dir, summary)."""
    tmp = tmp_path_factory.mktemp("image_pipeline")
    out = tmp / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUFLEX_", "HF_"))}
    env.update(GPUFLEX_BACKEND="local", GPUFLEX_TINY_MODELS="1", HF_HUB_OFFLINE="1",
               GPUFLEX_CACHE_DIR=str(tmp / "cache"), HF_HOME=str(tmp / "hf"))
    env.pop("PYTHONWARNINGS", None)
    try:
        done = subprocess.run([sys.executable, str(PIPELINE), PROMPT, "--out", str(out)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=100)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"pipeline.py did not finish in {exc.timeout} s; output so far:\n{exc.stdout}\n{exc.stderr}")
    report = f"exit code {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode == 0, report
    assert "Traceback" not in done.stderr, report
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return out, summary, report


def test_pipeline_writes_three_final_images(run):
    from PIL import Image

    out, summary, report = run
    assert summary["index"] == str(out / "index.html"), report
    assert len(summary["expanded"]) == 3 and all(PROMPT in text for text in summary["expanded"]), report
    assert len(set(summary["expanded"])) == 3, report
    assert summary["model"].startswith("tiny-random-sd"), report
    assert set(summary["timings"]) == {"expand_prompt", "generate", "compose", "total"}, report
    pixels = []
    for i in (1, 2, 3):
        path = out / f"final-{i}.png"
        assert path.is_file(), report
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.size == FINAL_SIZE
            image.load()
            pixels.append(image.convert("RGB").tobytes())
    assert len(set(pixels)) == 3, "the three prompts (and seeds) gave identical images"


def _browser() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def test_page_renders_in_headless_chromium(run, tmp_path):
    browser = _browser()
    if browser is None:
        require("chromium", False, install="apt-get install -y chromium")
    out, summary, _ = run
    index = out / "index.html"
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
               index.as_uri()]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"chromium did not finish in {exc.timeout} s; stderr:\n{exc.stderr}")
    dom = done.stdout
    assert done.returncode == 0, f"chromium exit code {done.returncode}\nstderr:\n{done.stderr}"
    match = re.search(r'<pre id="report">(.*?)</pre>', dom, re.S)
    assert match, f"no report element in the DOM:\n{dom[:3000]}"
    assert match.group(1) != "pending", "the page's load handler never ran"
    images = json.loads(html.unescape(match.group(1)))["images"]
    assert [image["src"] for image in images] == ["final-1.png", "final-2.png", "final-3.png"], images
    for image in images:
        assert image["complete"] and image["naturalWidth"] > 0, f"{image['src']} did not render: {image}"
        assert (image["naturalWidth"], image["naturalHeight"]) == FINAL_SIZE, image
    assert f'<span id="prompt">{PROMPT}</span>' in dom
    for text in summary["expanded"]:
        assert html.escape(text) in dom

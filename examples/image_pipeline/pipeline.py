"""The seed's image pipeline: prompt expansion -> text-to-image on a GPU -> composition with a reference photo.

    python examples/image_pipeline/pipeline.py "cats over London" --out /tmp/cats     # local backend
    GPUFLEX_BACKEND=<name> python examples/image_pipeline/pipeline.py "cats over London" --out /tmp/cats
    python examples/image_pipeline/pipeline.py "cats over London" --backend <name> --out /tmp/cats

Three endpoints, each called like ordinary Python, and the same file on every backend:

1. ``expand_prompt`` (CPU): one short prompt -> three richer prompts (style, lighting and lens templates; set
   ``GPUFLEX_PROMPT_MODEL`` to a causal language model id or folder to have an LLM write them instead).
2. ``ImageGenerator`` (GPU, any Ada card): a diffusers text-to-image pipeline loaded once per worker in ``setup()``.
   On a CUDA host it is ``stabilityai/sdxl-turbo`` (or ``GPUFLEX_IMAGE_MODEL``, e.g. ``Lykon/dreamshaper-xl-1-0``).
   On a CPU, offline without the model in the Hugging Face cache, or with ``GPUFLEX_TINY_MODELS=1``, it is a tiny
   random-weight Stable Diffusion pipeline built from configs (64x64 noise, no download): the CI path.
3. ``compose`` (CPU): each generated image beside a reference photo, joined by a cross-faded strip.

``main()`` writes ``index.html`` (prompt, expanded prompts, final images as PNG files beside it) into ``--out``.
Needs ``pip install torch diffusers transformers accelerate pillow``.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import gpuflex

DEFAULT_MODEL = "stabilityai/sdxl-turbo"
TINY_MODEL = "tiny-random-sd (random weights: noise by design)"
# per model: denoising steps, guidance scale, image side (None: the model's own), scheduler swap
MODEL_SETTINGS: dict[str, dict[str, object]] = {
    "stabilityai/sdxl-turbo": {"steps": 1, "guidance": 0.0, "side": 512},
    "Lykon/dreamshaper-xl-1-0": {"steps": 25, "guidance": 6.0, "side": 1024, "scheduler": "DPMSolverMultistep"},
}
GENERIC_SETTINGS: dict[str, object] = {"steps": 30, "guidance": 7.0, "side": None}
TINY_SETTINGS: dict[str, object] = {"steps": 4, "guidance": 7.5, "side": None}

# Settings read in the workers. The local backend's workers inherit this environment anyway; remote backends get
# these through env= (taken from the caller's environment when it imports this module).
_FORWARDED = ("GPUFLEX_IMAGE_MODEL", "GPUFLEX_TINY_MODELS", "GPUFLEX_PROMPT_MODEL")


def _forward(*names: str) -> dict[str, str]:
    return {name: os.environ[name] for name in names if name in os.environ}


def _note(message: str) -> None:
    print(f"[image_pipeline] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# 1. prompt expansion
# ---------------------------------------------------------------------------------------------------------------

TEMPLATES = (
    "{p}, golden hour photograph, warm low sunlight, 35mm lens, shallow depth of field, highly detailed",
    "{p}, watercolour illustration, soft overcast light, muted palette, textured paper, wide 24mm view",
    "{p}, cinematic still, dramatic rim lighting, volumetric fog, anamorphic 85mm lens, film grain",
)
_llm_cache: dict[str, object] = {}


def _clean(prompt: str) -> str:
    text = re.sub(r"\s+", " ", prompt).strip().strip(".,;: ")
    if not text:
        raise ValueError("expand_prompt needs a non-empty prompt")
    return text


def _llm_expansions(base: str, model_id: str) -> list[str]:
    """Three prompts written by a causal LM (best effort: lines it does not deliver come from the templates)."""
    import torch
    from transformers import pipeline

    generator = _llm_cache.get(model_id)
    if generator is None:
        device = 0 if torch.cuda.is_available() else -1
        generator = _llm_cache[model_id] = pipeline("text-generation", model=model_id, device=device)
    request = (f"Rewrite the image prompt '{base}' as three different detailed prompts for a text-to-image model, "
               "one per line, each naming a style, the lighting and a camera lens.\n1.")
    out = generator(request, max_new_tokens=160, do_sample=False, return_full_text=False)
    lines = [re.sub(r"^\s*\d+[.)]\s*", "", line).strip() for line in ("1." + out[0]["generated_text"]).splitlines()]
    usable = [line for line in lines if len(base) < len(line) <= 400 and line.isprintable() and "\ufffd" not in line]
    return usable[:3]


@gpuflex.endpoint(gpu="any" if os.environ.get("GPUFLEX_PROMPT_MODEL") else None, env=_forward(*_FORWARDED))
def expand_prompt(prompt: str) -> list[str]:
    """Turn a short prompt into three richer ones: templates by default, an LLM if ``GPUFLEX_PROMPT_MODEL`` is set."""
    base = _clean(prompt)
    expansions = [template.format(p=base) for template in TEMPLATES]
    model_id = os.environ.get("GPUFLEX_PROMPT_MODEL")
    if model_id:
        written = _llm_expansions(base, model_id)
        expansions[: len(written)] = written
    return expansions


# ---------------------------------------------------------------------------------------------------------------
# 2. image generation
# ---------------------------------------------------------------------------------------------------------------


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


@gpuflex.endpoint(gpu={"Ada": 1}, max_workers=1, idle_timeout=120, env=_forward(*_FORWARDED))
class ImageGenerator:
    """A diffusers text-to-image pipeline, loaded once per worker; calls return PNG bytes."""

    def setup(self) -> None:
        started = time.perf_counter()
        import torch

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        tiny = os.environ.get("GPUFLEX_TINY_MODELS", "1" if self.device == "cpu" else "0") == "1"
        self.model_id = TINY_MODEL
        if not tiny:
            self.model_id = os.environ.get("GPUFLEX_IMAGE_MODEL") or DEFAULT_MODEL
            try:
                self.pipe = self._load(self.model_id)
            except OSError as exc:  # offline and not in the cache: say so, and fall back to the tiny pipeline
                if not _offline():
                    raise
                _note(f"{self.model_id} is not in the Hugging Face cache and HF_HUB_OFFLINE is set ({exc}); "
                      "using the tiny random-weight pipeline")
                tiny, self.model_id = True, TINY_MODEL
        if tiny:
            import tiny_sd

            self.pipe = tiny_sd.build_pipeline().to(self.device)
        self.settings = (TINY_SETTINGS if tiny else MODEL_SETTINGS.get(self.model_id, GENERIC_SETTINGS))
        _note(f"ImageGenerator ready in {time.perf_counter() - started:.2f} s: {self.model_id} on {self.device}")

    def _load(self, model_id: str) -> Any:
        import torch
        from diffusers import AutoPipelineForText2Image

        dtype = torch.float16 if self.device == "cuda" else torch.float32
        options: dict[str, object] = {"torch_dtype": dtype, "local_files_only": _offline()}
        try:
            pipe = AutoPipelineForText2Image.from_pretrained(model_id, variant="fp16", **options)
        except (OSError, ValueError):  # the repository has no fp16 variant files: take its default weights
            pipe = AutoPipelineForText2Image.from_pretrained(model_id, **options)
        scheduler = MODEL_SETTINGS.get(model_id, {}).get("scheduler")
        if scheduler:
            import diffusers

            pipe.scheduler = getattr(diffusers, f"{scheduler}Scheduler").from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(self.device)

    def __call__(self, prompt: str, seed: int = 0) -> bytes:
        """Generate one image for ``prompt`` (the same seed gives the same image) and return it as PNG bytes."""
        import torch
        from imaging import to_png

        side = self.settings["side"]
        generator = torch.Generator(self.device).manual_seed(seed)
        with torch.inference_mode():
            image = self.pipe(
                prompt, num_inference_steps=self.settings["steps"], guidance_scale=self.settings["guidance"],
                height=side, width=side, generator=generator,
            ).images[0]
        return to_png(image)

    generate = __call__  # a named method too, so callers can write generator.generate.map(prompts, seeds)

    def info(self) -> dict[str, str]:
        """Which model this worker loaded, and on what device."""
        return {"model": self.model_id, "device": self.device}


# ---------------------------------------------------------------------------------------------------------------
# 3. composition
# ---------------------------------------------------------------------------------------------------------------


@gpuflex.endpoint
def compose(generated: list[bytes], reference: bytes) -> list[bytes]:
    """Each generated image beside the reference photo, joined by a cross-faded strip (PNG bytes in and out)."""
    from imaging import compose_pair

    return [compose_pair(image, reference) for image in generated]


# ---------------------------------------------------------------------------------------------------------------
# orchestration and the page
# ---------------------------------------------------------------------------------------------------------------

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>gpuflex image pipeline: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; background: #f6f6f4; color: #222; }}
figure {{ margin: 0 0 2rem; }}
figure img {{ max-width: 100%; border: 1px solid #ccc; }}
figcaption {{ font-size: 0.9rem; color: #555; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 0.2rem 0.8rem; text-align: left; }}
</style>
</head>
<body>
<h1>Prompt: <span id="prompt">{prompt}</span></h1>
<h2>Expanded prompts</h2>
<ol id="expanded">
{expanded}
</ol>
<h2>Final images</h2>
{figures}
<h2>Run</h2>
<table id="timings">
{timings}
</table>
<p>Model: <code>{model}</code></p>
<pre id="report">pending</pre>
<script>
// Written on load: the size each image rendered at, for a headless browser (or a person) to check.
window.addEventListener("load", () => {{
  const images = Array.from(document.querySelectorAll("figure img"));
  for (const img of images) img.dataset.naturalWidth = String(img.naturalWidth);
  document.getElementById("report").textContent = JSON.stringify({{
    images: images.map(img => ({{src: img.getAttribute("src"), complete: img.complete,
                                naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight}})),
  }});
}});
</script>
</body>
</html>
"""


def write_page(out_dir: Path, prompt: str, expanded: list[str], finals: list[bytes], timings: dict[str, float],
               model: str) -> Path:
    """Write the final PNGs and ``index.html`` (which links them) into ``out_dir``; return the page's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = []
    for i, (text, png) in enumerate(zip(expanded, finals, strict=True), start=1):
        name = f"final-{i}.png"
        (out_dir / name).write_bytes(png)
        figures.append(f'<figure><img src="{name}" alt="final image {i}">'
                       f"<figcaption>{i}. {html.escape(text)}</figcaption></figure>")
    page = _PAGE.format(
        title=html.escape(prompt), prompt=html.escape(prompt),
        expanded="\n".join(f"<li>{html.escape(text)}</li>" for text in expanded),
        figures="\n".join(figures),
        timings="\n".join(f"<tr><th>{html.escape(stage)}</th><td>{seconds:.2f} s</td></tr>"
                          for stage, seconds in timings.items()),
        model=html.escape(model),
    )
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def main(prompt: str, out_dir: str | Path, reference: bytes | None = None, seed: int = 0) -> Path:
    """Run the pipeline on the active backend and write ``out_dir/index.html``; return its path."""
    from imaging import reference_photo

    out = Path(out_dir)
    timings: dict[str, float] = {}
    started = stage = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal stage
        now = time.perf_counter()
        timings[name] = now - stage
        stage = now
        _note(f"{name}: {timings[name]:.2f} s")

    expanded = expand_prompt(prompt)
    lap("expand_prompt")
    generator = ImageGenerator()
    generated = list(generator.generate.map(expanded, range(seed, seed + len(expanded))))
    lap("generate")
    finals = compose(generated, reference if reference is not None else reference_photo())
    lap("compose")
    worker = generator.info()
    model = f"{worker['model']} on {worker['device']}"
    timings["total"] = time.perf_counter() - started
    index = write_page(out, prompt, expanded, finals, timings, model)
    _note(f"total: {timings['total']:.2f} s")
    print(json.dumps({"index": str(index), "images": [f"final-{i}.png" for i in range(1, len(finals) + 1)],
                      "expanded": expanded, "model": model, "timings": {k: round(v, 3) for k, v in timings.items()}}))
    return index


def _cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompt", help='a short prompt, e.g. "cats over London"')
    parser.add_argument("--out", default="image_pipeline_out", help="folder for index.html and the images")
    parser.add_argument("--reference", type=Path, help="a reference photo (default: one drawn by code)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first image (the others count up)")
    parser.add_argument("--backend", help="a gpuflex backend (default: GPUFLEX_BACKEND, gpuflex config, or local)")
    args = parser.parse_args(argv)
    reference = args.reference.read_bytes() if args.reference else None
    try:
        if args.backend:
            with gpuflex.use(args.backend):
                main(args.prompt, args.out, reference, args.seed)
        else:
            main(args.prompt, args.out, reference, args.seed)
    finally:
        gpuflex.shutdown()


if __name__ == "__main__":
    _cli()

"""Pillow helpers for the image pipeline: a reference photo drawn by code, and the side-by-side composition."""

from __future__ import annotations

import io
import math
import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

MIN_SIDE = 256  # final panels are at least this tall, so a 64x64 test image is still visible on the page


def to_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def open_png(data: bytes) -> Image.Image:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")


def reference_photo(size: int = 256, seed: int = 7) -> bytes:
    """A landscape 'photo' (sky, sun, hills, water) drawn with Pillow: deterministic, no file to ship."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = random.Random(seed)
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    horizon = int(size * 0.62)
    for y in range(horizon):  # dusk sky: deep blue at the top to warm orange at the horizon
        t = y / horizon
        draw.line([(0, y), (size, y)], fill=(int(40 + 200 * t), int(60 + 110 * t), int(140 - 60 * t)))
    sun = (int(size * 0.68), int(horizon - size * 0.08), int(size * 0.09))
    draw.ellipse([sun[0] - sun[2], sun[1] - sun[2], sun[0] + sun[2], sun[1] + sun[2]], fill=(255, 226, 150))
    for layer, colour in enumerate([(70, 90, 110), (45, 70, 75), (25, 45, 45)]):  # three ridges, far to near
        base = horizon - int(size * (0.10 - 0.04 * layer))
        phase, freq = rng.uniform(0, math.tau), rng.uniform(2.0, 4.0)
        ridge = [(x, base - int(size * 0.05 * (1 + math.sin(phase + freq * x / size * math.tau))))
                 for x in range(0, size + 1, 4)]
        draw.polygon([(0, size), *ridge, (size, size)], fill=colour)
    for y in range(horizon + int(size * 0.08), size):  # water with the sky's colours, darker, and ripples
        t = (y - horizon) / (size - horizon)
        draw.line([(0, y), (size, y)], fill=(int(30 + 60 * (1 - t)), int(50 + 50 * (1 - t)), int(80 + 40 * (1 - t))))
    for _ in range(size // 3):
        x, y = rng.randrange(size), rng.randrange(horizon + int(size * 0.1), size)
        draw.line([(x, y), (x + rng.randrange(4, 14), y)], fill=(255, 210, 150) if abs(x - sun[0]) < size // 10
                  else (120, 140, 160))
    return to_png(image.filter(ImageFilter.GaussianBlur(radius=size / 400)))


def _square(image: Image.Image, side: int) -> Image.Image:
    from PIL import Image, ImageOps

    resample = Image.Resampling.NEAREST if image.width * 2 <= side else Image.Resampling.LANCZOS
    return ImageOps.fit(image, (side, side), method=resample)


def final_size(generated_side: int) -> tuple[int, int]:
    """(width, height) of a composed image for a generated image ``generated_side`` pixels square."""
    side = max(MIN_SIDE, generated_side)
    return 2 * side + side // 4, side


def compose_pair(generated: bytes, reference: bytes) -> bytes:
    """Reference photo on the left, generated image on the right, joined by a strip that cross-fades from the
    reference's right edge into the generated image's left edge. Small (test) images are scaled up, pixelated."""
    from PIL import Image

    gen = open_png(generated)
    side = max(MIN_SIDE, gen.width, gen.height)
    left, right = _square(open_png(reference), side), _square(gen, side)
    strip = side // 4
    mask = Image.linear_gradient("L").rotate(-90).resize((strip, side))  # 255 at the left edge, 0 at the right
    blend = Image.composite(left.crop((side - strip, 0, side, side)), right.crop((0, 0, strip, side)), mask)
    canvas = Image.new("RGB", (2 * side + strip, side))
    canvas.paste(left, (0, 0))
    canvas.paste(blend, (side, 0))
    canvas.paste(right, (side + strip, 0))
    return to_png(canvas)

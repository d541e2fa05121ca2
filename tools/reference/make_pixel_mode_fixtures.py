#!/usr/bin/env python3
"""Golden fixtures for the pixel-mode conversions of model/src/resample.rs::load_rgb
(tests: model/tests/resample.rs, `pixel_modes_convert_like_pillow`).

Writes model/tests/fixtures/pixel_modes/: small images in the modes whose conversion to RGB
image-rs does differently from Pillow, written by Pillow, and expected.json holding
Image.open(f).convert("RGB") of each, row-major [[r, g, b], ...], with Pillow's version.

  grey16_trns.png : 16-bit grey with a tRNS colour (Pillow: mode I;16, values clipped to 255;
                    image-rs expands it to 16-bit grey + alpha)
  cmyk.tif        : CMYK TIFF (Pillow's cmyk2rgb rounds; image-rs truncates)
  cmyk.jpg        : CMYK JPEG (Adobe, inverted), quality 100

Needs only Pillow and numpy (pinned in requirements.txt):
    /work/venv/bin/python tools/reference/make_pixel_mode_fixtures.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

OUT = Path(__file__).resolve().parents[2] / "model" / "tests" / "fixtures" / "pixel_modes"


def cmyk_values() -> list[tuple[int, int, int, int]]:
    rng = np.random.default_rng(29)
    fixed = [(100, 0, 0, 50), (0, 0, 0, 0), (255, 128, 7, 200), (255, 255, 255, 255), (1, 2, 3, 4)]
    rand = [tuple(int(v) for v in rng.integers(0, 256, 4)) for _ in range(59)]
    return fixed + rand  # 64 pixels: 8 x 8


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    grey = np.array([[0, 1, 200, 255, 256, 4000, 40000, 65535]], dtype=np.uint16)
    Image.fromarray(grey).save(OUT / "grey16_trns.png", transparency=4000)
    c = Image.new("CMYK", (8, 8))
    c.putdata(cmyk_values())
    c.save(OUT / "cmyk.tif")
    c.save(OUT / "cmyk.jpg", quality=100)
    expected = {"pillow": PIL.__version__, "images": {}}
    for f in ["grey16_trns.png", "cmyk.tif", "cmyk.jpg"]:
        im = Image.open(OUT / f)
        rgb = np.asarray(im.convert("RGB"))
        expected["images"][f] = {"mode": im.mode, "size": [im.width, im.height], "rgb": rgb.reshape(-1, 3).tolist()}
    (OUT / "expected.json").write_text(json.dumps(expected) + "\n")


if __name__ == "__main__":
    main()

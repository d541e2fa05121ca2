#!/usr/bin/env python3
"""Golden fixtures for model/src/resample.rs (tests: model/tests/resample.rs).

Writes model/tests/fixtures/resample/:

  photos  : small PNG crops of public-domain / CC0 photographs shipped inside scikit-image
            (one RGB, one grey "L", one RGBA, one palette "P") plus a JPEG of one of them.
  ref_<photo>_<filter>_<S>.png
          : Image.open(p).convert("RGB").resize((S, S), Image.BILINEAR | Image.BICUBIC),
            i.e. the exact 8-bit output of Pillow's resampler. Stored as PNG (lossless; grey
            "L" when the three channels are identical) because f32 tensors of 448x448 images
            would not fit the fixture size budget.
  photos.safetensors
          : clip_lut [3, 256] f32 - transformers rescale(1/255) + normalize(CLIP mean/std) of
            every 8-bit level (normalisation is element-wise, so the expected tensor of any
            reference image is clip_lut[c][ref]; this script asserts that for every case);
            norm_<photo>_<S> [3, S, S] f32 - the full normalized tensor for the smallest size.
  grids.safetensors
          : seeded random position grids g<in>c<ch>_in [in, in, ch] and their resized versions
            g<in>c<ch>_to<out>_<mode> [out, out, ch] from torch.nn.functional.interpolate
            (align_corners=False, antialias False/True), computed in float32.
  noise_40x40.png, ref_noise_<filter>_<w>x<h>.png
          : seeded noise resized to sizes on both sides of the pass-order rule of Pillow 13.
  manifest.json : versions of the libraries, sizes, source photos and their sha256.

Deterministic: fixed seeds, fixed crops, Pillow's deterministic encoders. Re-run with
    /work/venv/bin/python tools/reference/make_resample_fixtures.py
(needs the pinned stack in tools/reference/requirements.txt).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import PIL
import skimage
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from safetensors.numpy import save_file
from transformers.image_transforms import normalize, rescale
from transformers.image_utils import ChannelDimension

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "model" / "tests" / "fixtures" / "resample"
SKIMAGE_DATA = Path(skimage.__file__).parent / "data"

# OpenAI CLIP constants as in CLIPImageProcessor's preprocessor_config.json.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
RESCALE = 0.00392156862745098  # rescale_factor in CLIP's preprocessor_config.json (== 1/255)

SIZES = [97, 224, 336]  # below / between-or-below / above every input (336 = CLIP-L/14-336)
EXTRA_SIZES = {"camera_grey": [448]}  # grey PNGs are small: one larger upsample
BICUBIC_SIZES = [97, 260]  # Image.BICUBIC (astronaut only): a downsample; 260 = wider, shorter: vertical pass first
GRID_CASES = [  # (grid_in, channels, grid_out)
    (5, 3, 8),
    (24, 2, 73),  # the released model: 336 px / 14 = 24 -> 1022 px / 14 = 73
    (9, 2, 4),
    (7, 3, 5),
    (16, 2, 37),
]
FULL_TENSORS = {"astronaut_rgb"}  # also stored as a full f32 [3, 97, 97] tensor
MODES = {  # Interp name in resample.rs -> (torch mode, antialias)
    "bilinear": ("bilinear", False),
    "bilinear-aa": ("bilinear", True),
    "bicubic": ("bicubic", False),
    "bicubic-aa": ("bicubic", True),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_png(img: Image.Image, path: Path) -> None:
    # No timestamps / text chunks: the PNG bytes depend only on the pixels.
    img.save(path, format="PNG", optimize=True)


def make_photos() -> dict[str, dict]:
    """Crops of scikit-image sample photos; the licence of each is in its skimage.data docstring."""
    photos: dict[str, dict] = {}

    # 1. astronaut.png (NASA, public domain): portrait crop, RGB.
    src = SKIMAGE_DATA / "astronaut.png"
    im = Image.open(src).convert("RGB").crop((120, 0, 420, 352)).resize((241, 283), Image.LANCZOS)
    p = OUT / "astronaut_rgb.png"
    save_png(im, p)
    photos["astronaut_rgb"] = {"file": p.name, "source": "skimage/data/astronaut.png", "mode": im.mode}

    # 2. camera.png (Lav Varshney, CC0): grey-scale "L", landscape.
    src = SKIMAGE_DATA / "camera.png"
    im = Image.open(src).convert("L").crop((0, 48, 512, 464)).resize((320, 260), Image.LANCZOS)
    p = OUT / "camera_grey.png"
    save_png(im, p)
    photos["camera_grey"] = {"file": p.name, "source": "skimage/data/camera.png", "mode": im.mode}

    # 3. chelsea.png (Stefan van der Walt, CC0): RGBA with a synthetic alpha ramp that reaches 0
    #    while RGB stays non-zero, so dropping alpha (PIL convert("RGB")) differs from compositing.
    src = SKIMAGE_DATA / "chelsea.png"
    rgb = Image.open(src).convert("RGB").crop((40, 0, 440, 300)).resize((301, 226), Image.LANCZOS)
    h, w = rgb.height, rgb.width
    yy, xx = np.mgrid[0:h, 0:w]
    alpha = np.clip(255 - 255 * np.hypot(xx - w / 2, yy - h / 2) / (0.45 * w), 0, 255).astype(np.uint8)
    im = rgb.copy()
    im.putalpha(Image.fromarray(alpha, "L"))
    p = OUT / "chelsea_rgba.png"
    save_png(im, p)
    photos["chelsea_rgba"] = {"file": p.name, "source": "skimage/data/chelsea.png", "mode": im.mode}

    # 4. coffee.png (Rachel Michetti, CC0): palette "P" (256-colour median cut), odd size.
    src = SKIMAGE_DATA / "coffee.png"
    rgb = Image.open(src).convert("RGB").crop((60, 10, 560, 344)).resize((256, 171), Image.LANCZOS)
    im = rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    p = OUT / "coffee_palette.png"
    save_png(im, p)
    photos["coffee_palette"] = {"file": p.name, "source": "skimage/data/coffee.png", "mode": im.mode}

    # 5. The same coffee crop (full colour) as a baseline 4:2:0 JPEG from Pillow's libjpeg.
    p = OUT / "coffee.jpg"
    rgb.save(p, format="JPEG", quality=90, subsampling=2, optimize=False, progressive=False)
    photos["coffee_jpeg"] = {"file": p.name, "source": "skimage/data/coffee.png", "mode": "JPEG"}

    for v in photos.values():
        v["sha256_source"] = sha256(SKIMAGE_DATA / Path(v["source"]).name)
        v["bytes"] = (OUT / v["file"]).stat().st_size
    return photos


def hf_normalize(rgb: np.ndarray) -> np.ndarray:
    """transformers' CLIPImageProcessor rescale + normalize on an HxWx3 uint8 array -> 3xHxW f32."""
    x = rescale(rgb, RESCALE, input_data_format=ChannelDimension.LAST)  # float64 * scale -> float32
    assert x.dtype == np.float32
    x = normalize(x, CLIP_MEAN, CLIP_STD, input_data_format=ChannelDimension.LAST)
    assert x.dtype == np.float32
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def clip_lut() -> np.ndarray:
    levels = np.arange(256, dtype=np.uint8).reshape(1, 256, 1).repeat(3, axis=2)
    return hf_normalize(levels)[:, 0, :]  # [3, 256]


def make_photo_refs(photos: dict[str, dict], tensors: dict[str, np.ndarray]) -> list[dict]:
    lut = clip_lut()
    tensors["clip_lut"] = lut
    cases = []
    for name, info in photos.items():
        path = OUT / info["file"]
        filters = [("bilinear", Image.BILINEAR, SIZES + EXTRA_SIZES.get(name, []))]
        if name == "astronaut_rgb":
            filters.append(("bicubic", Image.BICUBIC, BICUBIC_SIZES))
        if name == "coffee_jpeg":
            filters = [("bilinear", Image.BILINEAR, [224])]
            # Pillow's decode of the JPEG, to separate decoder differences from resampling.
            dec = Image.open(path).convert("RGB")
            save_png(dec, OUT / "ref_coffee_jpeg_decoded.png")
        for fname, flt, sizes in filters:
            for s in sizes:
                ref = Image.open(path).convert("RGB").resize((s, s), flt)
                arr = np.asarray(ref)
                out = OUT / f"ref_{name}_{fname}_{s}.png"
                if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all():
                    save_png(Image.fromarray(arr[..., 0], "L"), out)
                else:
                    save_png(ref, out)
                norm = hf_normalize(arr)
                # The LUT reproduces transformers' element-wise normalisation exactly.
                via_lut = np.stack([lut[c][arr[..., c]] for c in range(3)])
                assert np.array_equal(norm.view(np.uint32), via_lut.view(np.uint32)), (name, s)
                if fname == "bilinear" and s == min(sizes) and name in FULL_TENSORS:
                    tensors[f"norm_{name}_{s}"] = norm
                cases.append({"photo": name, "filter": fname, "size": s, "ref": out.name})
    return cases


# Pillow 13 picks the order of its two passes (vertical first when the height shrinks and
# 2*out_w + in_h > 2*in_w + out_h, as far as measured); these sizes from a 40x40 noise image sit
# on both sides of that boundary, including an exact tie.
PASS_ORDER_SIZES = [(30, 21), (31, 21), (30, 20), (45, 39), (60, 30), (21, 50), (12, 30)]


def make_pass_order_refs() -> list[dict]:
    rng = np.random.default_rng(1234)
    noise = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), "RGB")
    save_png(noise, OUT / "noise_40x40.png")
    cases = []
    for fname, flt in [("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC)]:
        for w, h in PASS_ORDER_SIZES:
            out = OUT / f"ref_noise_{fname}_{w}x{h}.png"
            save_png(Image.open(OUT / "noise_40x40.png").convert("RGB").resize((w, h), flt), out)
            cases.append({"filter": fname, "width": w, "height": h, "ref": out.name})
    return cases


def make_grids() -> tuple[dict[str, np.ndarray], list[dict]]:
    torch.manual_seed(20240611)
    tensors: dict[str, np.ndarray] = {}
    cases = []
    for gi, ch, go in GRID_CASES:
        grid = torch.randn(gi, gi, ch, dtype=torch.float32)
        key = f"g{gi}c{ch}"
        tensors[f"{key}_in"] = grid.numpy().copy()
        # Same layout dance as HF CLIP interpolate_pos_encoding: (1, g, g, C) -> NCHW.
        x = grid.reshape(1, gi, gi, ch).permute(0, 3, 1, 2)
        for name, (mode, aa) in MODES.items():
            y = F.interpolate(x, size=(go, go), mode=mode, align_corners=False, antialias=aa)
            out = y.permute(0, 2, 3, 1).reshape(go, go, ch).contiguous()
            assert out.dtype == torch.float32
            tensors[f"{key}_to{go}_{name}"] = out.numpy().copy()
            cases.append({"in": gi, "channels": ch, "out": go, "mode": name})
    return tensors, cases


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*"):
        if old.suffix in {".png", ".jpg", ".safetensors", ".json"}:
            old.unlink()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    photos = make_photos()
    photo_tensors: dict[str, np.ndarray] = {}
    photo_cases = make_photo_refs(photos, photo_tensors)
    save_file(photo_tensors, str(OUT / "photos.safetensors"))

    pass_order_cases = make_pass_order_refs()
    grid_tensors, grid_cases = make_grids()
    save_file(grid_tensors, str(OUT / "grids.safetensors"))

    manifest = {
        "generator": "tools/reference/make_resample_fixtures.py",
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "pillow": PIL.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
            "scikit-image": skimage.__version__,
        },
        "clip_mean": CLIP_MEAN,
        "clip_std": CLIP_STD,
        "rescale_factor": RESCALE,
        "photos": photos,
        "photo_cases": photo_cases,
        "pass_order_cases": pass_order_cases,
        "grid_cases": grid_cases,
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    for p in OUT.iterdir():
        p.chmod(0o644)  # safetensors writes 0600
    total = sum(p.stat().st_size for p in OUT.iterdir() if p.is_file())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total / 1024:.0f} KiB, to {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

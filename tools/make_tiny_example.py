#!/usr/bin/env python3
"""Writes examples/tiny/: a 12-image toy dataset of coloured shapes in every released Griffon
training format (DET, VG, REG, VISJ as DET-layout jsonl, LAZY captions) plus task lists and the
three stage configs used by the README's three-stage run. Deterministic (seed 0). Needs pillow."""
import json
import os
import random

from PIL import Image, ImageDraw

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "examples", "tiny")
SHAPES = [("red square", (220, 40, 40)), ("blue circle", (40, 60, 220)), ("green triangle", (40, 180, 60))]


def main():
    rng = random.Random(0)
    os.makedirs(os.path.join(OUT, "images"), exist_ok=True)
    det, vg, reg, captions = [], [], [], []
    for i in range(12):
        w, h = 96, 80
        img = Image.new("RGB", (w, h), (rng.randint(150, 230),) * 3)
        d = ImageDraw.Draw(img)
        objects = {}
        for _ in range(rng.randint(1, 4)):
            name, colour = rng.choice(SHAPES)
            s = rng.randint(12, 30)
            x, y = rng.randint(0, w - s), rng.randint(0, h - s)
            box = [x, y, x + s, y + s]
            if name == "red square":
                d.rectangle([x, y, x + s - 1, y + s - 1], fill=colour)
            elif name == "blue circle":
                d.ellipse([x, y, x + s - 1, y + s - 1], fill=colour)
            else:
                d.polygon([(x, y + s - 1), (x + s - 1, y + s - 1), (x + s // 2, y)], fill=colour)
            objects.setdefault(name, []).append(box)
        fname = f"{i:02d}.png"
        img.save(os.path.join(OUT, "images", fname))
        rec = {"image_path": fname, "height": h, "width": w, "dataset_name": "tiny",
               "objects": [{"category_name": n, "bboxes": b} for n, b in sorted(objects.items())]}
        det.append(rec)
        name = sorted(objects)[0]
        box = objects[name][0]
        vg.append({"image_path": fname, "height": h, "width": w, "expression": f"the {name}", "bboxes": [box]})
        reg.append({"image_path": fname, "height": h, "width": w, "expression": f"a {name}", "bboxes": [box]})
        counts = ", ".join(f"{len(b)} {n}{'s' if len(b) > 1 else ''}" for n, b in sorted(objects.items()))
        captions.append({"image": fname, "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image briefly."},
            {"from": "gpt", "value": f"A grey picture with {counts}."}]})

    def jsonl(name, rows):
        with open(os.path.join(OUT, name), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    jsonl("det.jsonl", det)
    jsonl("vg.jsonl", vg)
    jsonl("reg.jsonl", reg)
    jsonl("visj.jsonl", det)
    with open(os.path.join(OUT, "captions.json"), "w") as f:
        json.dump(captions, f, indent=1)
    tasks = {
        "tasks_stage1.txt": ["LAZY & captions.json & images"],
        "tasks_stage2.txt": ["DET & det.jsonl & images", "VG & vg.jsonl & images", "REG & reg.jsonl & images",
                             "VISJ & visj.jsonl & images"],
        "tasks_stage3.txt": ["DET & det.jsonl & images", "VG & vg.jsonl & images", "REG & reg.jsonl & images",
                             "VISJ & visj.jsonl & images", "LAZY & captions.json & images"],
    }
    for name, lines in tasks.items():
        with open(os.path.join(OUT, name), "w") as f:
            f.write("\n".join(lines) + "\n")
    init = "../../model/tests/fixtures/parity/gemma2_region/ckpt"
    stages = [
        (1, init, "1e-3", "tasks_stage1.txt", ""),
        (2, "../../runs/tiny/stage1", "2e-4", "tasks_stage2.txt", ""),
        (3, "../../runs/tiny/stage2", "2e-4", "tasks_stage3.txt", "vision_lr = 2e-5\n"),
    ]
    for stage, src, lr, tasks_file, extra in stages:
        with open(os.path.join(OUT, f"stage{stage}.toml"), "w") as f:
            f.write(f"# Stage {stage} of the tiny three-stage run (README). Paths are relative to this file.\n"
                    f"[model]\ninit = \"{src}\"\n\n[data]\ntasks = \"{tasks_file}\"\nmax_len = 1024\nmax_categories = 3\n\n"
                    f"[train]\nstage = {stage}\nlr = {lr}\n{extra}epochs = 2\ngrad_accum = 4\nwarmup_ratio = 0.03\n"
                    f"seed = 0\nout = \"../../runs/tiny/stage{stage}\"\nsave_every = 0\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""REG diagnostics for `griffon eval synth` output (docs/SYNTH.md): the share of region descriptions
that name the region's true shape and true colour (words of train/src/synth.rs SHAPES / COLOURS,
read from the first reference), and how many distinct answers the model gave. CIDEr-D rewards the
templated n-grams ("a large ... circle") too; these two shares say whether the words that depend
on the image are right.
Usage: tools/synth/reg_words.py EVAL_OUT"""
import json, sys, glob, collections
import os

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eval_records import merged  # noqa: E402

SHAPES = {"circle", "square", "triangle", "diamond", "ring", "cross"}
COLOURS = {"red", "green", "blue", "yellow", "purple", "orange", "white", "black"}
paths = sorted(glob.glob(f"{sys.argv[1]}/reg/predictions.shard-*.jsonl"))
if not paths:
    sys.exit(f"no REG predictions under {sys.argv[1]}/reg/")
n = shape = colour = 0
answers = collections.Counter()
for _, _, r in merged(paths):
    ref = r["truth"]["refs"][0].split()
    words = set((r["answer"] or "").split())
    true_shape = [w for w in ref if w in SHAPES]
    true_colour = [w for w in ref if w in COLOURS]
    if len(true_shape) != 1 or len(true_colour) != 1:
        sys.exit(f"{r['id']}: reference {ref} does not name exactly one shape and one colour")
    n += 1
    shape += true_shape[0] in words
    colour += true_colour[0] in words
    answers[r["answer"]] += 1
print(f"{n} regions: true shape named {shape / n:.3f}, true colour named {colour / n:.3f}, {len(answers)} distinct answers")

#!/usr/bin/env python3
"""REC diagnostics for `griffon eval synth` output (docs/SYNTH.md): mean distance in pixels from
predicted box centres to the target's, against always answering the image centre. A model that
reads the image beats the centre baseline; an image-blind one does not.
Usage: tools/synth/rec_centres.py EVAL_OUT (of `eval synth` or `eval refcoco`) [IMAGE_SIZE=224]"""
import json, sys, glob, math
import os

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eval_records import merged  # noqa: E402

out = sys.argv[1]
size = float(sys.argv[2]) if len(sys.argv) > 2 else 224.0
pred, base, n, hits = 0.0, 0.0, 0, 0
# `griffon eval synth` writes REC under rec/; `griffon eval refcoco` into the folder itself
paths = sorted(glob.glob(f"{out}/rec/predictions.shard-*.jsonl")) or sorted(glob.glob(f"{out}/predictions.shard-*.jsonl"))
if not paths:
    sys.exit(f"no REC predictions under {out} (rec/predictions.shard-*.jsonl or predictions.shard-*.jsonl)")
for _, _, r in merged(paths):
    g = r["truth"]["gt_box"]
    gc = ((g[0] + g[2]) / 2, (g[1] + g[3]) / 2)
    base += math.dist(gc, (size / 2, size / 2))
    n += 1
    if r["detections"]:
        b = r["detections"][0]["box"]
        pred += math.dist(gc, ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2))
        hits += 1
    else:
        pred += math.dist(gc, (size / 2, size / 2))
print(json.dumps({"expressions": n, "answered_with_box": hits,
                  "mean_centre_error_px": round(pred / max(n, 1), 1),
                  "image_centre_baseline_px": round(base / max(n, 1), 1)}))

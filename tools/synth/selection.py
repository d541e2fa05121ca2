#!/usr/bin/env python3
"""Does a model pick the objects it is asked for? Diagnostics for `griffon eval synth` runs on the
synthetic benchmark: exemplar counting of every class (count_any/: the exemplar's class) and REC
(rec/: the referred object). Each predicted box (REC: the first, as Acc@0.5 scores it) is assigned
to the scene object it overlaps most (IoU >= 0.5) and called `own` (an asked-for object), `other`
(an object that was not asked for) or `none` (no object). Reported separately for questions whose
scene holds no other object (nothing to confuse) and those whose scene does (the question must be
read): a model that ignores the exemplar or the expression puts as many boxes on other objects as
on its own in the second group.

    tools/synth/selection.py SPLIT_DIR EVAL_OUT     # e.g. data/synth224/test runs/eval224/model

SPLIT_DIR is the split folder `griffon synth` wrote (its visj.jsonl lists every object); EVAL_OUT
the `--out` of `griffon eval synth` (or of `griffon eval count` / `eval refcoco`: the predictions
in the folder itself). Run it on complete runs (with --limit some questions are missing).
Records are merged as `griffon eval merge` does (`eval_records.py`: a rerun replaces a failed
or cut record; a torn last line is dropped)."""
import collections
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eval_records import merged  # noqa: E402


def iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def scene_boxes(split):
    """Image file name -> every object box of the scene, from the split's visj.jsonl (and that
    file's path, for messages)."""
    scene = collections.defaultdict(list)
    visj = os.path.join(split, "visj.jsonl")
    if not os.path.isfile(visj):
        sys.exit(f"{visj}: absent (SPLIT_DIR must be a split folder written by griffon synth)")
    for line in open(visj):
        r = json.loads(line)
        for o in r["objects"]:
            scene[r["image_path"]] += [tuple(b) for b in o["bboxes"]]
    return scene, visj


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    split, out = sys.argv[1], sys.argv[2]
    scene, visj = scene_boxes(split)
    runs = {}
    for task in ("count_any", "rec"):
        paths = sorted(glob.glob(f"{out}/{task}/predictions.shard-*.jsonl"))
        if paths:
            runs[task] = paths
    if not runs:
        paths = sorted(glob.glob(f"{out}/predictions.shard-*.jsonl"))
        if not paths:
            sys.exit(f"no predictions under {out} (count_any/, rec/ or the folder itself)")
        runs["run"] = paths
    result = {}
    for task, paths in runs.items():
        groups = {"alone": collections.Counter(), "with_others": collections.Counter()}
        for path, k, r in merged(paths):
            t = r.get("truth", {})
            if t.get("kind") == "count" and "boxes" in t:
                own, dets = {tuple(b) for b in t["boxes"]}, r["detections"]
            elif t.get("kind") == "rec":
                own, dets = {tuple(t["gt_box"])}, r["detections"][:1]
            else:
                sys.exit(f"{path}:{k}: neither a counting record with true boxes nor a REC record")
            objects = scene.get(os.path.basename(r["image"]))
            if not objects:
                sys.exit(f"{path}:{k}: image {r['image']} is not in {visj}")
            g = groups["alone" if all(o in own for o in objects) else "with_others"]
            g["questions"] += 1
            g["predicted"] += len(dets)
            for d in dets:
                best = max(objects, key=lambda o: iou(d["box"], o))
                g["none" if iou(d["box"], best) < 0.5 else "own" if best in own else "other"] += 1
        result[task] = {
            name: {"questions": g["questions"], "predicted_boxes": g["predicted"],
                   "on_own": round(g["own"] / max(g["predicted"], 1), 3),
                   "on_other": round(g["other"] / max(g["predicted"], 1), 3),
                   "on_nothing": round(g["none"] / max(g["predicted"], 1), 3)}
            for name, g in groups.items()}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

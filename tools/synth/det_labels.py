#!/usr/bin/env python3
"""Does a model name the object it boxes? For a `griffon eval synth` detection run: of the
predicted boxes that hit a true object (IoU >= 0.5 with the one they overlap most), how many
carry that object's category (docs/SYNTH.md, session 15: place -> name, the inverse of what
one_class.py measures), against labelling every box with its scene's most frequent category
(ties: the smallest id), which needs no look at the box.

    tools/synth/det_labels.py INSTANCES EVAL_OUT    # e.g. data/synth224/test/instances.json runs/eval224/select224

INSTANCES is the split's COCO instances.json; EVAL_OUT the `--out` of `griffon eval synth` (its
detection/coco_results.json). Prints one JSON object."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from size_recall import iou as iou_xywh  # noqa: E402


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    instances, out = sys.argv[1:]
    results = os.path.join(out, "detection", "coco_results.json")
    if not os.path.isfile(results):
        sys.exit(f"{results}: absent (EVAL_OUT must be the --out of griffon eval synth with detection)")
    try:
        truth = {}
        for a in json.load(open(instances))["annotations"]:
            truth.setdefault(a["image_id"], []).append((a["category_id"], a["bbox"]))
        dets = json.load(open(results))
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"cannot read {instances} (COCO instances) or {results}: {e}")
    hits = right = majority = 0
    for d in dets:
        objs = truth.get(d["image_id"], [])
        if not objs:
            continue
        best = max(objs, key=lambda o: iou_xywh(o[1], d["bbox"]))
        if iou_xywh(best[1], d["bbox"]) >= 0.5:
            hits += 1
            right += best[0] == d["category_id"]
            cats = [c for c, _ in objs]
            majority += best[0] == max(sorted(set(cats)), key=cats.count)
    print(json.dumps({"eval": out, "boxes": len(dets), "hits": hits, "label_right": right,
                      "label_right_share": round(right / max(hits, 1), 3),
                      "label_right_share_if_scene_majority": round(majority / max(hits, 1), 3)}))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Detection recall by object size for `griffon eval synth --out DIR` output (docs/SYNTH.md): for
each COCO size class of the ground truth (area < 32^2, < 96^2, larger; pycocotools puts an area
of exactly 32^2 or 96^2 in both neighbouring classes, this script in the larger one), the
share of true objects that some predicted box of the same category overlaps with IoU >= 0.5, and
the share any predicted box (any category) overlaps with IoU >= 0.3 (found roughly where it is).
A finer signal than AP while a model is weak: AP is 0 until boxes are good enough to rank, these
count every hit. Predicted boxes per image and their median side are printed too.

Usage: tools/synth/size_recall.py INSTANCES_JSON EVAL_DIR [EVAL_DIR ...]
  (INSTANCES_JSON: the test split's detection annotations, e.g. data/synth-x2/test/instances.json;
   each EVAL_DIR holds detection/coco_results.json)
Prints one JSON line per EVAL_DIR."""
import json
import os
import statistics
import sys

CLASSES = [("small", 0, 32**2), ("medium", 32**2, 96**2), ("large", 96**2, float("inf"))]


def iou(a, b):
    """IoU of two [x, y, w, h] boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"{path}: {e}")


def load_instances(path):
    gt = load(path)
    if not isinstance(gt, dict) or "annotations" not in gt or "images" not in gt:
        sys.exit(f"{path}: not COCO instances (no images / annotations)")
    return gt


def size_recall(gt, out, gt_name="the instances"):
    """The recall row of one evaluation folder against COCO instances `gt` (a dict)."""
    images = {im["id"] for im in gt["images"]}
    path = os.path.join(out, "detection", "coco_results.json")
    dets = load(path)
    if not isinstance(dets, list):
        sys.exit(f"{path}: expected a list of COCO results")
    by_image = {}
    for d in dets:
        if d.get("image_id") not in images:
            sys.exit(f"{path}: result for image {d.get('image_id')!r}, not in {gt_name}")
        by_image.setdefault(d["image_id"], []).append(d)
    row = {"eval": out}
    for name, lo, hi in CLASSES:
        objs = [a for a in gt["annotations"] if lo <= a["area"] < hi]
        same = sum(
            any(d["category_id"] == a["category_id"] and iou(d["bbox"], a["bbox"]) >= 0.5
                for d in by_image.get(a["image_id"], []))
            for a in objs
        )
        loose = sum(any(iou(d["bbox"], a["bbox"]) >= 0.3 for d in by_image.get(a["image_id"], [])) for a in objs)
        row[name] = {"objects": len(objs), "recall@0.5": round(same / max(len(objs), 1), 3),
                     "found@0.3": round(loose / max(len(objs), 1), 3)}
    sides = [(d["bbox"][2] * d["bbox"][3]) ** 0.5 for d in dets]
    row["boxes_per_image"] = round(len(dets) / max(len(images), 1), 2)
    row["median_box_side_px"] = round(statistics.median(sides), 1) if sides else None
    return row


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    gt = load_instances(sys.argv[1])
    for out in sys.argv[2:]:
        print(json.dumps(size_recall(gt, out, sys.argv[1])))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Golden COCO bbox-mAP vectors for griffon-eval (pycocotools semantics).

Writes small synthetic ground-truth / detection pairs under eval/tests/fixtures/coco/<case>/
(gt.json, dt.json) and eval/tests/fixtures/coco/expected.json holding, per case, the 12
`COCOeval.stats` that pycocotools (version pinned in tools/reference/requirements.txt) computes
with iouType='bbox' and default Params. Values are written with Python's repr (round-trip exact).

Cases:
  edge    hand-built: crowd regions (multiple detections absorbed by one crowd, a detection that
          overlaps both a regular GT and a crowd), GT/detections exactly on the area-range
          boundaries 32^2 and 96^2, a GT whose `area` field differs from its box area, IoU
          exactly at every threshold 0.50..0.95, score ties inside an image and across images,
          duplicate detections, a category with GT but no detections, a category listed in
          `categories` without GT but with detections, detections whose category is not listed
          at all (ignored by pycocotools), images with no GT (false positives only), an image
          with neither, more than 100 detections in one image (maxDets truncation with ties at
          the cut), a zero-width detection, and a non-crowd GT carrying a stray `ignore: 1` field
          (pycocotools overrides `ignore` with `iscrowd`).
  random  seeded random scene: 40 images, 6 categories (one without GT), ~10% crowd GT, GT
          `area` smaller than the box (as segment areas are), jittered true positives,
          duplicates, background false positives, scores rounded to 2 decimals (many ties).
  no_gt   GT file with images and categories but no annotations: every stat is -1.
  foreign every detection has a category that is not in the GT's `categories` (pycocotools
          evaluates none of them: AP/AR 0 where GT exists).

Besides the stats, expected.json records the text `COCOeval.summarize()` prints.

Subsets (`subsets` in expected.json): a case scored on some of its images only
(`cocoEval.params.imgIds = ids`, what an evaluation of part of a data set must do: a run with
`--limit`, or before its shards are all done); the detections file is the whole case's.
  random_part  the random case's images 1..15 (image 9 has no GT) and 20, 27, 36 (36 has no GT)

Run from the repo root:  /work/venv/bin/python tools/reference/make_coco_vectors.py
"""
import contextlib
import io
import json
import os
import random

from importlib.metadata import version

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "eval", "tests", "fixtures", "coco")


def gt_ann(anns, image_id, category_id, bbox, area=None, iscrowd=0, **extra):
    a = {
        "id": len(anns) + 1,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": bbox,
        "area": bbox[2] * bbox[3] if area is None else area,
        "iscrowd": iscrowd,
    }
    a.update(extra)
    anns.append(a)


def det(dets, image_id, category_id, bbox, score):
    dets.append({"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score})


def images(n, w=640, h=480):
    return [{"id": i, "width": w, "height": h, "file_name": "%06d.jpg" % i} for i in range(1, n + 1)]


def categories(ids):
    return [{"id": c, "name": "cat%d" % c, "supercategory": "thing"} for c in ids]


def case_edge():
    anns, dets = [], []
    # image 1: one regular GT and one crowd region (cat 1).
    gt_ann(anns, 1, 1, [10, 10, 50, 50])
    gt_ann(anns, 1, 1, [100, 100, 200, 150], iscrowd=1)
    det(dets, 1, 1, [10, 10, 50, 50], 0.9)          # true positive
    det(dets, 1, 1, [10, 10, 50, 50], 0.9)          # exact duplicate, same score
    det(dets, 1, 1, [120, 120, 30, 30], 0.8)        # inside the crowd: ignored
    det(dets, 1, 1, [150, 150, 40, 40], 0.8)        # inside the crowd: ignored (crowd matches many)
    det(dets, 1, 1, [12, 12, 48, 48], 0.7)          # near-duplicate of the TP
    det(dets, 1, 1, [300, 10, 30, 30], 0.95)        # background FP
    det(dets, 1, 5, [10, 10, 50, 50], 0.99)         # category 5 is not in `categories`: ignored
    # a detection overlapping a regular GT (IoU 0.6) and a crowd (IoU 1): the regular GT wins
    gt_ann(anns, 1, 2, [400, 300, 100, 100])
    gt_ann(anns, 1, 2, [380, 250, 200, 200], iscrowd=1)
    det(dets, 1, 2, [400, 300, 100, 60], 0.6)
    det(dets, 1, 2, [390, 260, 50, 50], 0.6)
    # image 2: area-range boundaries
    gt_ann(anns, 2, 1, [0, 0, 32, 32])               # area 1024 = 32^2: small and medium
    gt_ann(anns, 2, 2, [50, 50, 96, 96])             # area 9216 = 96^2: medium and large
    gt_ann(anns, 2, 1, [200, 200, 40, 40], area=1024.0)  # area field 1024, box area 1600
    gt_ann(anns, 2, 2, [300, 0, 31, 33], area=1023.0)
    det(dets, 2, 1, [0, 0, 32, 32], 0.5)
    det(dets, 2, 2, [50, 50, 96, 96], 0.5)
    det(dets, 2, 1, [200, 200, 40, 40], 0.5)
    det(dets, 2, 2, [300, 0, 31, 33], 0.4)
    det(dets, 2, 2, [500, 300, 96, 96], 0.45)        # FP with area exactly 96^2
    det(dets, 2, 1, [500, 10, 32, 32], 0.45)         # FP with area exactly 32^2
    det(dets, 2, 1, [600, 10, 0, 20], 0.3)           # zero-width box
    # image 3: no GT, only false positives (cat 1 and 2)
    det(dets, 3, 1, [5, 5, 20, 20], 0.85)
    det(dets, 3, 2, [5, 5, 200, 200], 0.5)
    # image 4: IoU exactly 0.50, 0.55, ..., 0.95 against 10x10 GT boxes (cat 2)
    for j in range(10):
        x = 10 + 40 * j
        gt_ann(anns, 4, 2, [x, 10, 10, 10])
        det(dets, 4, 2, [x, 10, 10, 5 + 0.5 * j], 0.2 + 0.05 * j)
    # images 5, 6: score ties across images (cat 1)
    gt_ann(anns, 5, 1, [10, 10, 100, 100])
    gt_ann(anns, 5, 1, [200, 10, 100, 100])
    det(dets, 5, 1, [300, 300, 50, 50], 0.5)         # FP first in file order
    det(dets, 5, 1, [10, 10, 100, 100], 0.5)
    gt_ann(anns, 6, 1, [10, 10, 100, 100])
    det(dets, 6, 1, [10, 10, 100, 100], 0.5)
    det(dets, 6, 1, [400, 10, 60, 60], 0.5)
    det(dets, 6, 1, [200, 200, 100, 100], 0.5)
    # image 7: 110 detections for cat 2; the only true positive ranks past 100 on a score tie
    gt_ann(anns, 7, 2, [20, 20, 80, 80])
    gt_ann(anns, 7, 2, [300, 200, 150, 150])
    det(dets, 7, 2, [300, 200, 150, 150], 0.99)
    for j in range(108):
        det(dets, 7, 2, [(j * 5) % 600, 400 + (j % 7), 4, 4], 0.1 if j >= 90 else 0.5 - 0.001 * j)
    det(dets, 7, 2, [20, 20, 80, 80], 0.1)           # tied with the tail, past the 100 cut
    # image 8: category 3 has GT only here and no detections anywhere; plus a lone large cat 1 GT
    gt_ann(anns, 8, 3, [10, 10, 300, 300])
    gt_ann(anns, 8, 1, [100, 100, 200, 200])
    # stray `ignore` on a non-crowd GT: pycocotools sets ignore = iscrowd, so this GT counts
    gt_ann(anns, 8, 2, [400, 300, 40, 40], ignore=1)
    det(dets, 8, 2, [400, 300, 40, 40], 0.7)
    # category 4 is listed but has no GT: its detections are evaluated and every slot is -1
    det(dets, 8, 4, [10, 10, 300, 300], 0.9)
    det(dets, 3, 4, [10, 10, 30, 30], 0.2)
    # image 9: neither GT nor detections
    gt = {"images": images(9), "annotations": anns, "categories": categories([1, 2, 3, 4])}
    return gt, dets


def case_random():
    rng = random.Random(20240314)
    n_img = 40
    cats = [1, 2, 3, 5, 7, 11]  # 11 has no GT
    anns, dets = [], []

    def rbox(wmax=400, hmax=300):
        w = round(rng.uniform(2, wmax), 2)
        h = round(rng.uniform(2, hmax), 2)
        x = round(rng.uniform(0, 640 - w), 2)
        y = round(rng.uniform(0, 480 - h), 2)
        return [x, y, w, h]

    for img in range(1, n_img + 1):
        if img % 9 == 0:
            n_gt = 0
        else:
            n_gt = rng.randint(1, 12)
        for _ in range(n_gt):
            c = rng.choice(cats[:-1])
            scale = rng.choice([40, 120, 400])
            b = rbox(scale, scale * 0.75)
            crowd = 1 if rng.random() < 0.1 else 0
            area = round(b[2] * b[3] * rng.uniform(0.5, 1.0), 3)
            gt_ann(anns, img, c, b, area=area, iscrowd=crowd)
            # detections near this GT
            for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
                jit = [round(v + rng.gauss(0, 0.08) * max(b[2], b[3]), 2) for v in b]
                jit[2] = max(jit[2], 0.5)
                jit[3] = max(jit[3], 0.5)
                cc = c if rng.random() < 0.9 else rng.choice(cats)
                det(dets, img, cc, jit, round(rng.random(), 2))
        for _ in range(rng.randint(0, 6)):
            det(dets, img, rng.choice(cats), rbox(), round(rng.random() * 0.6, 2))
    # one crowded image: 120 detections, scores with ties
    for j in range(120):
        det(dets, 1, cats[j % 3], rbox(80, 60), round(rng.random(), 1))
    # exact duplicates of random earlier detections
    for j in rng.sample(range(len(dets)), 15):
        dets.append(dict(dets[j]))
    gt = {"images": images(n_img), "annotations": anns, "categories": categories(cats)}
    return gt, dets


def case_foreign():
    anns, dets = [], []
    gt_ann(anns, 1, 1, [10, 10, 50, 50])
    gt_ann(anns, 2, 2, [100, 100, 20, 20])
    det(dets, 1, 3, [10, 10, 50, 50], 0.9)
    det(dets, 2, 4, [100, 100, 20, 20], 0.8)
    gt = {"images": images(2), "annotations": anns, "categories": categories([1, 2])}
    return gt, dets


def case_no_gt():
    dets = []
    det(dets, 1, 1, [10, 10, 20, 20], 0.9)
    det(dets, 2, 2, [30, 10, 20, 50], 0.4)
    gt = {"images": images(3), "annotations": [], "categories": categories([1, 2])}
    return gt, dets


def stats_for(gt_path, dt_path, img_ids=None):
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt_path)
        coco_dt = coco_gt.loadRes(dt_path)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if img_ids is not None:
            ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ev.summarize()
    return [float(s) for s in ev.stats], out.getvalue()


def main():
    os.makedirs(OUT, exist_ok=True)
    expected = {
        "generator": "tools/reference/make_coco_vectors.py",
        "pycocotools": version("pycocotools"),
        "iou_type": "bbox",
        "cases": {},
    }
    for name, fn in [("edge", case_edge), ("random", case_random), ("no_gt", case_no_gt), ("foreign", case_foreign)]:
        gt, dets = fn()
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        gt_path = os.path.join(d, "gt.json")
        dt_path = os.path.join(d, "dt.json")
        with open(gt_path, "w") as f:
            json.dump(gt, f)
        with open(dt_path, "w") as f:
            json.dump(dets, f)
        stats, summary = stats_for(gt_path, dt_path)
        expected["cases"][name] = {"gt": name + "/gt.json", "dt": name + "/dt.json", "stats": stats, "summary": summary}
        print(name, len(gt["annotations"]), "gt,", len(dets), "dt:", stats)
    expected["subsets"] = {}
    for name, case, ids in [("random_part", "random", list(range(1, 16)) + [20, 27, 36])]:
        gt_path = os.path.join(OUT, case, "gt.json")
        dt_path = os.path.join(OUT, case, "dt.json")
        stats, summary = stats_for(gt_path, dt_path, ids)
        expected["subsets"][name] = {"gt": case + "/gt.json", "dt": case + "/dt.json", "img_ids": ids, "stats": stats}
        print(name, "on", len(ids), "images:", stats)
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Golden vectors for griffon-eval's grounding and counting metrics.

Writes eval/tests/fixtures/grounding/vectors.json with hits / scores computed the way the
reference evaluation scripts compute them:

  rec       Griffon `griffon/eval/eval_rec.py` (jefferyZhan/Griffon): torch float32 boxes,
            torchvision-style `box_iou` (area = (x2-x1)*(y2-y1), no +1), only the FIRST
            predicted box, hit when `iou > 0.5`; a sample whose answer cannot be parsed is a
            miss but counts in the total.
  flickr    MDETR `datasets/flickr_eval.py` (ashkamath/mdetr): numpy float64 `box_iou`,
            top-1 recall `ious[:1].max() >= 0.5` against the phrase's boxes (ANY-BOX) or
            against `_merge_boxes` of them (MERGED-BOX).
  counting  FSC-147 `test.py` (MAE = SAE/cnt, RMSE = (SSE/cnt)**0.5 with running sums) and
            Counting-DETR `evaluate_val_and_test.py` (NAE = sum(|gt-pred|/gt)/n).

The box sets mix random boxes with hand-made ones whose IoU is exactly 0.5 (the threshold is
strict for REC and inclusive for Flickr30K). Run from the repo root:
  /work/venv/bin/python tools/reference/make_grounding_vectors.py
"""
import json
import os
import random

import numpy as np
import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "eval", "tests", "fixtures", "grounding")


def torch_box_iou(b1, b2):
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    lt = torch.max(b1[:, None, :2], b2[:, :2])
    rb = torch.min(b1[:, None, 2:], b2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    return inter / (area1[:, None] + area2 - inter)


def numpy_box_iou(b1, b2):
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    lt = np.maximum(b1[:, None, :2], b2[:, :2])
    rb = np.minimum(b1[:, None, 2:], b2[:, 2:])
    wh = (rb - lt).clip(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (area1[:, None] + area2 - inter)


def merge(boxes):
    if len(boxes) == 1:
        return boxes
    a = np.asarray(boxes)
    return [[a[:, 0].min(), a[:, 1].min(), a[:, 2].max(), a[:, 3].max()]]


def rand_box(r, w=640, h=480, integer=False):
    x1, x2 = sorted([r.uniform(0, w), r.uniform(0, w)])
    y1, y2 = sorted([r.uniform(0, h), r.uniform(0, h)])
    b = [x1, y1, x2, y2]
    return [float(round(v)) for v in b] if integer else [round(v, 2) for v in b]


def jitter(r, b, s):
    return [round(v + r.gauss(0, s), 2) for v in b]


def rec_samples(r):
    samples = []
    gt = [10.0, 10.0, 110.0, 60.0]
    # IoU exactly 0.5 (a miss: strict), just above, first box only, missing answers.
    samples.append({"pred": [[10.0, 10.0, 110.0, 35.0]], "gt": gt})
    samples.append({"pred": [[10.0, 10.0, 110.0, 36.0]], "gt": gt})
    samples.append({"pred": [[300.0, 300.0, 310.0, 310.0], gt], "gt": gt})
    samples.append({"pred": [gt, [300.0, 300.0, 310.0, 310.0]], "gt": gt})
    samples.append({"pred": None, "gt": gt})
    samples.append({"pred": [], "gt": gt})
    samples.append({"pred": [[5.0, 5.0, 5.0, 5.0]], "gt": [5.0, 5.0, 5.0, 5.0]})  # 0/0: NaN, a miss
    for _ in range(300):
        g = rand_box(r, integer=r.random() < 0.3)
        p = jitter(r, g, r.choice([2, 10, 30])) if r.random() < 0.8 else rand_box(r)
        samples.append({"pred": [p] + ([rand_box(r)] if r.random() < 0.2 else []), "gt": g})
    correct = 0
    for s in samples:
        hit = False
        if s["pred"]:
            iou = torch_box_iou(torch.tensor(s["pred"][0], dtype=torch.float32).view(-1, 4),
                                torch.tensor(s["gt"], dtype=torch.float32).view(-1, 4))
            hit = bool(iou > 0.5)
        s["hit"] = hit
        correct += hit
    return samples, correct / len(samples)


def flickr_phrases(r):
    phrases = []
    gts = [[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0]]
    phrases.append({"pred": [0.0, 0.0, 10.0, 10.0], "gts": gts})
    phrases.append({"pred": [0.0, 0.0, 30.0, 10.0], "gts": gts})
    phrases.append({"pred": [0.0, 0.0, 10.0, 5.0], "gts": gts[:1]})  # IoU exactly 0.5: a hit
    phrases.append({"pred": None, "gts": gts})
    for _ in range(300):
        k = r.choice([1, 1, 1, 2, 3])
        base = rand_box(r, integer=True)
        g = [base] + [jitter(r, base, 40) for _ in range(k - 1)]
        g = [[min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])] for b in g]
        p = jitter(r, merge(g)[0] if r.random() < 0.3 else g[0], r.choice([3, 15, 40]))
        phrases.append({"pred": p, "gts": g})
    any_hits = merged_hits = 0
    for ph in phrases:
        if ph["pred"] is None:
            ph["any"] = ph["merged"] = False
            continue
        cur = np.asarray([ph["pred"]], dtype=np.float64)
        ph["any"] = bool(numpy_box_iou(cur, np.asarray(ph["gts"], dtype=np.float64))[:1].max() >= 0.5)
        ph["merged"] = bool(numpy_box_iou(cur, np.asarray(merge(ph["gts"]), dtype=np.float64))[:1].max() >= 0.5)
        any_hits += ph["any"]
        merged_hits += ph["merged"]
    return phrases, any_hits / len(phrases), merged_hits / len(phrases)


def counting(r):
    samples = []
    for _ in range(200):
        gt = r.randint(1, 500)
        pred = max(0.0, gt + r.gauss(0, gt * 0.3)) if r.random() < 0.7 else float(r.randint(0, 600))
        samples.append([pred, gt])
    sae = sse = 0
    rel = []
    for pred, gt in samples:
        err = abs(gt - pred)
        sae += err
        sse += err ** 2
        rel.append(abs(gt - pred) / gt)
    n = len(samples)
    return samples, {"mae": sae / n, "rmse": (sse / n) ** 0.5, "nae": sum(rel) / len(rel)}


def main():
    r = random.Random(20240314)
    rec, acc = rec_samples(r)
    phrases, any_r, merged_r = flickr_phrases(r)
    count_samples, count_expected = counting(r)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "vectors.json"), "w") as f:
        json.dump({
            "generator": "tools/reference/make_grounding_vectors.py",
            "torch": torch.__version__, "numpy": np.__version__,
            "rec": {"samples": rec, "accuracy": acc},
            "flickr": {"phrases": phrases, "any_box": any_r, "merged_box": merged_r},
            "counting": {"samples": count_samples, **count_expected},
        }, f, indent=0)
    print("rec", acc, "flickr", any_r, merged_r, "counting", count_expected)


if __name__ == "__main__":
    main()

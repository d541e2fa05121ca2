#!/usr/bin/env python3
"""Does a model answer a referring expression with the scene's largest object? For the REC
questions of a `griffon eval synth` run whose scene holds two or more objects: how many first
boxes hit an object (IoU >= 0.5 with it), how many of those hit the largest object (by box area),
the referred one, the leftmost (smallest x1) and the topmost, and the same for the scenes whose
largest object is not the leftmost (detection answers list boxes left to right, so the first box
of an answer is the leftmost: which bias is it?); and how often the referred object
is itself the largest, over the hits and over all such questions (the share a model that boxes
the largest object whatever it is asked gets right). Equal areas: the first in visj.jsonl's order
(the stream's `rec_not_largest` takes the first in the scene's order). docs/SYNTH.md, session 14.

    tools/synth/largest.py SPLIT_DIR EVAL_OUT [EVAL_OUT ...]   # e.g. data/synth224/test runs/eval224/select224

Records are merged as `griffon eval merge` does (`eval_records.py`). One JSON line per EVAL_OUT."""
import collections
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eval_records import rec_records  # noqa: E402
from selection import iou, scene_boxes  # noqa: E402


def area(b):
    return (b[2] - b[0]) * (b[3] - b[1])


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    scene, visj = scene_boxes(sys.argv[1])
    for out in sys.argv[2:]:
        c = collections.Counter()
        for path, k, r in rec_records(out):
            t = r.get("truth", {})
            if t.get("kind") != "rec":
                sys.exit(f"{path}:{k}: not a REC record")
            objects = scene.get(os.path.basename(r["image"]))
            if not objects:
                sys.exit(f"{path}:{k}: image {r['image']} is not in {visj}")
            if len(objects) < 2:
                continue
            own = tuple(t["gt_box"])
            largest = max(objects, key=area)
            c["questions"] += 1
            c["referred_is_largest"] += own == largest
            if not r["detections"]:
                continue
            box = r["detections"][0]["box"]
            best = max(objects, key=lambda o: iou(box, o))
            if iou(box, best) < 0.5:
                continue
            c["hits"] += 1
            c["hit_largest"] += best == largest
            c["hit_referred"] += best == own
            c["hit_leftmost"] += best == min(objects, key=lambda o: o[0])
            c["hit_topmost"] += best == min(objects, key=lambda o: o[1])
            c["hits_whose_referred_is_largest"] += own == largest
            # the two orders apart: is it size, or the detection answers' left-to-right order?
            leftmost = min(objects, key=lambda o: o[0])
            if largest != leftmost:
                c["hits_largest_not_leftmost"] += 1
                c["of_those_on_largest"] += best == largest
                c["of_those_on_leftmost"] += best == leftmost
        print(json.dumps({"eval": out, **c}))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Does a model answer every referring expression of a scene with the same box? Counts, over the
scenes of a `griffon eval synth` REC run with two or more expressions, those whose first boxes
are all identical (docs/SYNTH.md, sessions 12-13: a model that ignores the expression answers
with one box whatever it is asked).

    tools/synth/same_box.py EVAL_OUT [EVAL_OUT ...]     # e.g. runs/eval224/model"""
import collections
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eval_records import rec_records  # noqa: E402


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for out in sys.argv[1:]:
        boxes = collections.defaultdict(list)
        for _, _, r in rec_records(out):
            boxes[r["image"]].append(r["detections"][0]["box"] if r["detections"] else None)
        multi = [b for b in boxes.values() if len(b) >= 2]
        same = sum(all(x == b[0] for x in b) for b in multi)
        print(json.dumps({"eval": out, "scenes_with_several_expressions": len(multi), "same_box_for_all": same}))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Does detection find the class it is asked for? For every test scene holding objects of two or
more shape classes, asks `griffon detect` for each class of the scene alone (`--categories NAME`)
and assigns each returned box to the scene object it overlaps most (IoU >= 0.5): `own` (an object
of the asked class), `other` (an object of another class) or `none` (no object). A model that
looks the name up puts its boxes on `own`; one that lists the scene's objects whatever the prompt
names puts them on `other` about as often as the scene's share of other classes: `own_of_hits`
(the asked class's share of the boxes that hit an object) is then `own_of_hits_if_blind` (the
asked class's share of the scene's objects, over the questions) (docs/SYNTH.md, session 15).

    tools/synth/one_class.py MODEL SPLIT_DIR IMAGES_DIR [MAX_QUESTIONS]
    # e.g. models/default data/synth224/test data/synth224/images/test 400

SPLIT_DIR is a split folder `griffon synth` wrote (its det.jsonl), IMAGES_DIR the folder of its
images. GRIFFON_BIN (default target/release/griffon) is the binary run; one process per question
(greedy, the model's own image size). Prints one JSON object."""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from selection import iou  # noqa: E402


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    model, split, images = sys.argv[1:4]
    try:
        limit = int(sys.argv[4]) if len(sys.argv) == 5 else 10**9
    except ValueError:
        sys.exit(f"MAX_QUESTIONS must be an integer, got {sys.argv[4]!r}")
    binary = os.environ.get("GRIFFON_BIN", "target/release/griffon")
    if not os.path.isfile(binary):
        sys.exit(f"{binary}: no griffon binary (build it, or set GRIFFON_BIN)")
    det = os.path.join(split, "det.jsonl")
    if not os.path.isfile(det):
        sys.exit(f"{det}: absent (SPLIT_DIR must be a split folder written by griffon synth)")
    counts = {"questions": 0, "empty_answers": 0, "own": 0, "other": 0, "none": 0}
    objects_asked = objects_seen = 0
    for n, line in enumerate(open(det), 1):
        if counts["questions"] >= limit:
            break
        try:
            r = json.loads(line)
            objs = [(o["category_name"], b) for o in r["objects"] for b in o["bboxes"]]
        except (ValueError, KeyError, TypeError) as e:
            sys.exit(f"{det}:{n}: not a DET record ({e})")
        classes = sorted({c for c, _ in objs})
        if len(classes) < 2:
            continue
        image = os.path.join(images, r["image_path"])
        for cat in classes:
            objects_asked += sum(c == cat for c, _ in objs)
            objects_seen += len(objs)
            cmd = [binary, "detect", "--model", model, "--image", image, "--categories", cat, "--json"]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}")
            try:
                dets = json.loads(out.stdout)["detections"]
            except (ValueError, KeyError, TypeError) as e:
                sys.exit(f"{' '.join(cmd)}: output is not detect's JSON ({e}): {out.stdout[:200]!r}")
            counts["questions"] += 1
            counts["empty_answers"] += not dets
            for d in dets:
                best = max(objs, key=lambda o: iou(o[1], d["box"]))
                counts["none" if iou(best[1], d["box"]) < 0.5 else "own" if best[0] == cat else "other"] += 1
    boxes = counts["own"] + counts["other"] + counts["none"]
    shares = {f"on_{k}": round(counts[k] / max(boxes, 1), 3) for k in ("own", "other", "none")}
    # what boxing every object of the scene, whatever is asked, would put on the asked class
    # (of the boxes that hit an object)
    blind = round(objects_asked / max(objects_seen, 1), 3)
    hits = counts["own"] + counts["other"]
    print(json.dumps({"model": model, **counts, "boxes": boxes, **shares,
                      "own_of_hits": round(counts["own"] / max(hits, 1), 3), "own_of_hits_if_blind": blind}))


if __name__ == "__main__":
    main()

"""The exemplars of a synthetic test split, shared by name_exemplars.py and region_features.py:
the first N lines of SPLIT_DIR/count_any.jsonl (written by `griffon synth`), each with its image
path and the exemplar's `colour shape` name from SPLIT_DIR/visj.jsonl."""
import json
import os
import sys


def exemplars(split, n):
    """[(image path, exemplar box, "colour shape")] for the first n exemplars; exits naming a
    missing file or an exemplar that visj.jsonl does not list."""
    for f in ("visj.jsonl", "count_any.jsonl"):
        if not os.path.isfile(os.path.join(split, f)):
            sys.exit(f"{os.path.join(split, f)}: absent (SPLIT_DIR must be a split folder written by griffon synth)")
    names = {}
    for line in open(os.path.join(split, "visj.jsonl")):
        r = json.loads(line)
        for o in r["objects"]:
            for b in o["bboxes"]:
                names[(r["image_path"], tuple(b))] = o["category_name"]
    root = os.path.normpath(split)
    images = os.path.join(os.path.dirname(root), "images", os.path.basename(root))
    out = []
    for line in list(open(os.path.join(split, "count_any.jsonl")))[:n]:
        r = json.loads(line)
        key = (r["image"], tuple(r["exemplar"]))
        if key not in names:
            sys.exit(f"{split}: exemplar {r['exemplar']} of {r['image']} is not in visj.jsonl")
        out.append((os.path.join(images, r["image"]), r["exemplar"], names[key]))
    return out

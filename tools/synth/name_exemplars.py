#!/usr/bin/env python3
"""Does the region path carry an exemplar's identity? Asks a model to describe exemplar crops
given as visual prompts (the REG prompt with <region>: `griffon chat --region CROP`, what
`data.synth.region_naming` trains) and counts the answers naming the exemplar's colour, shape and
both (docs/SYNTH.md, session 12). Needs pillow (/work/venv) for the crops.

    name_exemplars.py GRIFFON_BIN MODEL SPLIT_DIR N    # e.g. target/release/griffon models/default data/synth224/test 60

The exemplars are the first N lines of SPLIT_DIR/count_any.jsonl, their names from visj.jsonl."""
import json
import os
import subprocess
import sys
import tempfile

from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from split_exemplars import exemplars  # noqa: E402

# core::request::reg_region_prompt() (REG_PROMPT with <region> for the box): keep them equal
PROMPT = "Please generate a distinguishing description for the region <region> in the image."


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    binary, model, split, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    hits = {"colour": 0, "shape": 0, "both": 0}
    answers = []
    lines = exemplars(split, n)
    with tempfile.TemporaryDirectory() as tmp:
        for i, (image, box, name) in enumerate(lines):
            crop = os.path.join(tmp, f"{i}.png")
            Image.open(image).convert("RGB").crop(tuple(int(v) for v in box)).save(crop)
            out = subprocess.run([binary, "chat", "--model", model, "--image", image, "--prompt", PROMPT,
                                  "--region", crop, "--max-new-tokens", "12", "--json"], capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"griffon chat on {image}: {out.stderr.strip()}")
            text = json.loads(out.stdout)["text"]
            colour, shape = name.split(" ")
            words = text.replace("-", " ").split()
            c, s = colour in words, shape in words
            hits["colour"] += c
            hits["shape"] += s
            hits["both"] += c and s
            answers.append({"image": os.path.basename(image), "exemplar": box, "true": name, "answer": text})
    print(json.dumps({"model": model, "exemplars": len(lines),
                      **{f"names_{k}": round(v / max(len(lines), 1), 3) for k, v in hits.items()},
                      "first_answers": answers[:5]}, indent=1))


if __name__ == "__main__":
    main()

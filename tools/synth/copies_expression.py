#!/usr/bin/env python3
"""Does a model's REC answer name the object it was asked for? Counts, over a `griffon eval synth`
REC run, the answers whose text before the box (`the red cross-[...]`) is the expression of the
question (`Can you point out the red cross in the image ...`). A model that wrote another
object's name would look that name up, whatever its attention can do (docs/SYNTH.md, session 16).

    tools/synth/copies_expression.py EVAL_OUT [EVAL_OUT ...]     # e.g. runs/eval224/model"""
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eval_records import rec_records  # noqa: E402

QUESTION = re.compile(r"point out (.*) in the image")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for out in sys.argv[1:]:
        questions = matched = same = 0
        for _, _, r in rec_records(out):
            questions += 1
            m = QUESTION.search(r["prompts"][0])
            if not m:
                continue
            matched += 1
            same += r["answer"].split("-[")[0].strip() == m.group(1).strip()
        print(json.dumps({"eval": out, "questions": questions, "matched_prompt": matched, "answer_names_the_expression": same}))


if __name__ == "__main__":
    main()

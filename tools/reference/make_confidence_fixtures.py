#!/usr/bin/env python3
"""Golden vectors for the reference confidence algorithm (jefferyZhan/Griffon
`griffon/coor_utils.py` `accum_probs`, used by `eval/eval_detection.py` with the softmaxed scores
of every generated step). The function below reproduces the reference's logic statement for
statement (Python slicing semantics included) on torch float32 tensors.

Inputs are recorded decodes: the greedy decodes stored in the parity fixtures (ids + per-step
probabilities) and detection answers tokenized with the fixture tokenizers with seeded random
probabilities. Writes core/tests/fixtures/confidence.json.
"""
import json
import os

import torch
from transformers import AutoTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
PARITY = os.path.join(ROOT, "model", "tests", "fixtures", "parity")
OUT = os.path.join(ROOT, "core", "tests", "fixtures", "confidence.json")


def accum_probs(output_ids, output_scores, start_token, end_token):
    # output_scores: [steps] probability of each generated token (the max of the softmax row for
    # a greedy decode), float32.
    probs = []
    start_idx = 0
    end_idx = 0
    loc_start_idx = 0
    loc_end_idx = 0
    loc_probs = []
    for idx, token in enumerate(output_ids):
        if token == start_token:
            start_idx = idx + 1
            loc_end_idx = idx - 1
            loc_probs.append(torch.prod(output_scores[loc_start_idx:loc_end_idx]).item())
        elif token == end_token:
            end_idx = idx
            loc_start_idx = idx + 1
            probs.append(torch.prod(output_scores[start_idx:end_idx]).item())
        elif idx == len(output_ids) - 1:
            loc_end_idx = idx
            loc_probs.append(torch.prod(output_scores[loc_start_idx:loc_end_idx]).item())
    if len(loc_probs) == len(probs):
        out = torch.tensor(loc_probs) ** 0.5 * torch.tensor(probs) ** 0.5
    else:
        m = min(len(loc_probs), len(probs))
        out = torch.tensor(loc_probs[:m]) ** 0.5 * torch.tensor(probs[:m]) ** 0.5
    return out.numpy().tolist()


def main():
    cases = []
    g = torch.Generator().manual_seed(7)
    for case in sorted(os.listdir(PARITY)):
        meta = json.load(open(os.path.join(PARITY, case, "golden.json")))
        ids, p = meta["greedy_ids"], meta["greedy_probs"]
        uniq = sorted(set(ids))
        for s, e in [(uniq[0], uniq[-1]), (ids[0], ids[len(ids) // 2]), (ids[-1], ids[0])]:
            cases.append({"source": f"recorded decode {case}", "ids": ids, "probs": p, "start": s, "end": e,
                          "expected": accum_probs(ids, torch.tensor(p, dtype=torch.float32), s, e)})
    tok = AutoTokenizer.from_pretrained(os.path.join(PARITY, "llama2_bf16", "ckpt"))
    answers = ["person-[0.100,0.200,0.300,0.400]&car-[0.500,0.500,0.900,0.950]",
               "[0.012,0.345,0.678,0.901]&[0.100,0.200,0.300,0.400]",
               "red circle-[0.010,0.020,0.030,0.040]"]
    for a in answers:
        ids = tok(a, add_special_tokens=False).input_ids + [tok.eos_token_id]
        p = (0.5 + 0.5 * torch.rand(len(ids), generator=g)).tolist()
        pieces = tok.convert_ids_to_tokens(ids)
        start = next(i for i, t in zip(ids, pieces) if "[" in t)
        end = next((i for i, t in zip(ids, pieces) if "]" in t), ids[-1])
        cases.append({"source": f"tokenized answer {a!r}", "ids": ids, "probs": p, "start": start, "end": end,
                      "expected": accum_probs(ids, torch.tensor(p, dtype=torch.float32), start, end)})
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    json.dump({"generator": "tools/reference/make_confidence_fixtures.py", "cases": cases}, open(OUT, "w"), indent=1)
    print(f"{len(cases)} cases -> {OUT}")


if __name__ == "__main__":
    main()

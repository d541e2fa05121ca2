#!/usr/bin/env python3
"""Replaces a Griffon-Gemma-2 checkpoint's LLM with a freshly initialised one and keeps the rest
(vision tower, image projector, region encoder and its projector): a trained tower under an LLM
that has formed no way of answering yet. Used by docs/SYNTH.md (session 17) to ask whether a
fresh LLM learns to select objects by the question where the trained ones do not (their boxes
land on the scene's largest object whatever is asked).

The new weights are drawn as transformers' Gemma-2 initialiser draws them (`_init_weights`):
every linear and the (tied) embedding normal with std = initializer_range, the padding token's
embedding row 0, every RMSNorm weight 0 (scale 1 + weight = 1). Needs numpy (/work/venv).

    reinit_llm.py CHECKPOINT OUT [SEED]     # e.g. models/default runs/synth/fresh-llm 0

OUT gets a copy of CHECKPOINT's files with the LLM's tensors (`model.embed_tokens`,
`model.layers.*`, `model.norm`) replaced; F32 checkpoints only. Optimizer and trainer state are
not copied (a fresh start)."""
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from grow_llm import gemma2_source, read  # noqa: E402
from keep_wip import write_safetensors  # noqa: E402

LLM = ("model.embed_tokens.", "model.layers.", "model.norm.")


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    try:
        seed = int(sys.argv[3]) if len(sys.argv) == 4 else 0
    except ValueError:
        sys.exit(f"SEED must be an integer, got {sys.argv[3]!r}")
    cfg = gemma2_source(src, out, "replaced")
    tensors, meta = read(os.path.join(src, "model.safetensors"))
    if "lm_head.weight" in tensors:
        sys.exit(f"{src}: an untied lm_head; only tied embeddings are handled")
    rng = np.random.default_rng(seed)
    std = cfg.get("initializer_range", 0.02)
    pad = cfg.get("pad_token_id")
    replaced = 0
    for k in sorted(tensors):
        if not k.startswith(LLM):
            continue
        shape = tensors[k].shape
        if k.endswith("norm.weight"):
            w = np.zeros(shape, dtype=np.float32)
        else:
            w = rng.normal(0.0, std, size=shape).astype(np.float32)
            if k == "model.embed_tokens.weight" and pad is not None:
                w[pad] = 0.0
        tensors[k] = w
        replaced += w.size
    if replaced == 0:
        sys.exit(f"{src}: no LLM tensors ({', '.join(LLM)}) found")
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("model.safetensors", "optimizer.safetensors",
                                                            "trainer_state.json", "README.md"))
    entries = [(k, "F32", tensors[k].shape, np.ascontiguousarray(tensors[k], dtype="<f4").tobytes()) for k in sorted(tensors)]
    write_safetensors(os.path.join(out, "model.safetensors"), entries, meta)
    print(f"{out}: LLM re-initialised ({replaced} parameters, seed {seed}); the rest copied from {src}")


if __name__ == "__main__":
    main()

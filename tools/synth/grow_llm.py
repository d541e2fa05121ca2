#!/usr/bin/env python3
"""Appends fresh decoder layers to a Griffon-Gemma-2 checkpoint's LLM without changing what it
computes: each new layer's attention and MLP outputs go through Gemma-2's post-norms, whose
scale is (1 + weight); those weights start at -1, so the new layers add exactly zero to the
residual stream until training moves them (a zero-initialised output projection would not do:
the post-norm rescales any non-zero output to full size after the first step). The other new
weights are drawn as the checkpoint's initializer would (normal, std = initializer_range), the
pre-norm weights 0 (scale 1). Used by docs/SYNTH.md (session 15) to ask whether the 4-layer LLM's
heads limit selection by the question. Needs numpy (/work/venv).

    grow_llm.py CHECKPOINT OUT N_NEW [SEED]     # e.g. runs/synth/region224/checkpoint-4254 runs/synth/grow6 2

OUT gets a copy of CHECKPOINT's files (config.json with num_hidden_layers and layer_types
extended, alternating sliding / full as the existing list does; model.safetensors with the new
layers; F32 checkpoints only). Optimizer and trainer state are not copied (a fresh start)."""
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from keep_wip import read_safetensors, write_safetensors  # noqa: E402


def read(path):
    meta, entries = read_safetensors(path)
    tensors = {}
    for k, dtype, shape, raw in entries:
        if dtype != "F32":
            sys.exit(f"{path}: {k} is {dtype}; only F32 checkpoints are grown")
        tensors[k] = np.frombuffer(raw, dtype="<f4").reshape(shape)
    return tensors, meta


def gemma2_source(src, out, verb):
    """The config of checkpoint folder SRC, which must hold a Gemma-2 LLM, when OUT is free."""
    if os.path.exists(out):
        sys.exit(f"{out} exists; choose a new folder")
    for f in ("config.json", "model.safetensors"):
        if not os.path.isfile(os.path.join(src, f)):
            sys.exit(f"{src}: no {f} (CHECKPOINT must be a checkpoint folder)")
    cfg = json.load(open(os.path.join(src, "config.json")))
    if "gemma2" not in cfg.get("model_type", ""):
        sys.exit(f"{src}: model_type {cfg.get('model_type')!r}: only Gemma-2 LLMs are {verb}")
    return cfg


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    try:
        n_new = int(sys.argv[3])
        seed = int(sys.argv[4]) if len(sys.argv) == 5 else 0
    except ValueError:
        sys.exit(f"N_NEW and SEED must be integers, got {sys.argv[3:]}")
    if n_new < 1:
        sys.exit("N_NEW must be at least 1")
    cfg = gemma2_source(src, out, "grown")
    tensors, meta = read(os.path.join(src, "model.safetensors"))
    n = cfg["num_hidden_layers"]
    last = f"model.layers.{n - 1}."
    template = {k[len(last):]: v for k, v in tensors.items() if k.startswith(last)}
    if not template or f"model.layers.{n}.input_layernorm.weight" in tensors:
        sys.exit(f"{src}: layers do not match num_hidden_layers = {n}")
    rng = np.random.default_rng(seed)
    std = cfg.get("initializer_range", 0.02)
    for i in range(n, n + n_new):
        for name, t in template.items():
            if name.endswith(("post_attention_layernorm.weight", "post_feedforward_layernorm.weight")):
                w = np.full(t.shape, -1.0, dtype=np.float32)
            elif name.endswith("layernorm.weight"):
                w = np.zeros(t.shape, dtype=np.float32)
            else:
                w = rng.normal(0.0, std, size=t.shape).astype(np.float32)
            tensors[f"model.layers.{i}.{name}"] = w
    types = cfg.get("layer_types")
    if types is not None:
        if len(types) != n:
            sys.exit(f"{src}: layer_types has {len(types)} entries for {n} layers")
        for i in range(n, n + n_new):
            types.append(types[i % 2] if n >= 2 else types[0])
    cfg["num_hidden_layers"] = n + n_new
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("model.safetensors", "optimizer.safetensors",
                                                            "trainer_state.json", "dense_head.safetensors",
                                                            "README.md"))
    entries = [(k, "F32", tensors[k].shape, np.ascontiguousarray(tensors[k], dtype="<f4").tobytes()) for k in sorted(tensors)]
    write_safetensors(os.path.join(out, "model.safetensors"), entries, meta)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    print(f"{out}: {n} -> {n + n_new} layers ({sum(t.size for t in template.values()) * n_new} new parameters)")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""What the region path's token carries (docs/SYNTH.md, session 12): runs a checkpoint's region
encoder (CLIP ViT, last-layer CLS without post_layernorm -> Linear-ReLU-Linear, as
model/src/region.rs) in numpy on exemplar crops of a synthetic test split, and reports how much the
token varies between crops, its norm, and how well the CLS and the token tell the exemplar's
colour and shape apart (leave-one-out nearest class mean on standardised features; chance = the
most frequent class's share). Needs numpy and pillow (/work/venv).

    region_features.py SPLIT_DIR N CHECKPOINT...   # e.g. data/synth224/test 150 models/default

Crops are resized with PIL's bilinear filter, as the engine's `preprocess` does for region crops
(model/src/resample.rs, which matches PIL); the first N lines
of SPLIT_DIR/count_any.jsonl give the exemplars, SPLIT_DIR/visj.jsonl their names."""
import json
import os
import struct
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from split_exemplars import exemplars  # noqa: E402

MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])
P = "model.prompt_visual_encoder.vision_model."


def read_safetensors(path, keep):
    """The F32 or BF16 tensors of a safetensors file whose names satisfy `keep`, as float64
    arrays (BF16 widened exactly)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        h = json.loads(f.read(n))
        h.pop("__metadata__", None)
        data = f.read()
    out = {}
    for k, v in h.items():
        if keep(k):
            a, b = v["data_offsets"]
            if v["dtype"] == "F32":
                x = np.frombuffer(data[a:b], dtype="<f4")
            elif v["dtype"] == "BF16":
                x = (np.frombuffer(data[a:b], dtype="<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                sys.exit(f"{path}: {k} is {v['dtype']}; only F32 / BF16 checkpoints are read")
            out[k] = x.reshape(v["shape"]).astype(np.float64)
    return out


def load(ckpt):
    out = read_safetensors(os.path.join(ckpt, "model.safetensors"), lambda k: "prompt" in k)
    cfg = json.load(open(os.path.join(ckpt, "clip-vit-large-patch14", "config.json")))
    return out, cfg


def ln(x, w, b, eps):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * w + b


def clip_forward(W, prefix, cfg, x, layers):
    """A CLIP vision tower (HF layout under `prefix`) on normalised pixels x [3, S, S] at its own
    size: embeddings, pre_layrnorm and the first `layers` encoder layers (= `hidden_states[layers]`,
    CLS row first), as model/src/clip.rs."""
    p, d, heads = cfg["patch_size"], cfg["hidden_size"], cfg["num_attention_heads"]
    eps, hd = cfg["layer_norm_eps"], d // heads
    g = x.shape[1] // p
    patches = x.reshape(3, g, p, g, p).transpose(1, 3, 0, 2, 4).reshape(g * g, -1)
    t = patches @ W[prefix + "embeddings.patch_embedding.weight"].reshape(d, -1).T
    t = np.concatenate([W[prefix + "embeddings.class_embedding"][None], t], 0)
    t = t + W[prefix + "embeddings.position_embedding.weight"]
    t = ln(t, W[prefix + "pre_layrnorm.weight"], W[prefix + "pre_layrnorm.bias"], eps)
    for layer in range(layers):
        w = lambda n: W[f"{prefix}encoder.layers.{layer}.{n}"]
        h = ln(t, w("layer_norm1.weight"), w("layer_norm1.bias"), eps)
        q, k, v = (h @ w(f"self_attn.{n}_proj.weight").T + w(f"self_attn.{n}_proj.bias") for n in "qkv")
        o = np.zeros_like(q)
        for i in range(heads):
            c = slice(i * hd, (i + 1) * hd)
            a = q[:, c] @ k[:, c].T / np.sqrt(hd)
            a = np.exp(a - a.max(-1, keepdims=True))
            o[:, c] = (a / a.sum(-1, keepdims=True)) @ v[:, c]
        t = t + o @ w("self_attn.out_proj.weight").T + w("self_attn.out_proj.bias")
        h = ln(t, w("layer_norm2.weight"), w("layer_norm2.bias"), eps)
        h = h @ w("mlp.fc1.weight").T + w("mlp.fc1.bias")
        h = h / (1 + np.exp(-1.702 * h))  # quick_gelu
        t = t + h @ w("mlp.fc2.weight").T + w("mlp.fc2.bias")
    return t


def encode(W, cfg, img):
    s = cfg["image_size"]
    x = ((np.asarray(img.resize((s, s), Image.BILINEAR), dtype=np.float64) / 255.0 - MEAN) / STD).transpose(2, 0, 1)
    t = clip_forward(W, P, cfg, x, cfg["num_hidden_layers"])
    cls = t[0]
    y = np.maximum(cls @ W["model.prompt_projector.0.weight"].T + W["model.prompt_projector.0.bias"], 0)
    return cls, y @ W["model.prompt_projector.2.weight"].T + W["model.prompt_projector.2.bias"]


def ncm_accuracy(X, labels):
    X = (X - X.mean(0)) / (X.std(0) + 1e-9)
    ok = 0
    for i, li in enumerate(labels):
        best = None
        for c in set(labels):
            members = [j for j, lj in enumerate(labels) if lj == c and j != i]
            if members:
                dist = np.linalg.norm(X[i] - X[members].mean(0))
                best = min(best, (dist, c)) if best else (dist, c)
        ok += best[1] == li
    return ok / len(labels)


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    split, n, ckpts = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    lines = exemplars(split, n)
    crops = [Image.open(image).convert("RGB").crop(tuple(int(v) for v in box)) for image, box, _ in lines]
    labels = [name.split(" ") for _, _, name in lines]
    result = {}
    for ckpt in ckpts:
        W, cfg = load(ckpt)
        C, Y = map(np.array, zip(*(encode(W, cfg, c) for c in crops)))
        spread = lambda X: float(np.linalg.norm(X - X.mean(0), axis=1).mean() / np.linalg.norm(X.mean(0)))
        row = {"token_spread": round(spread(Y), 3), "token_norm": round(float(np.linalg.norm(Y, axis=1).mean()), 2)}
        for part, i in (("colour", 0), ("shape", 1)):
            lab = [l[i] for l in labels]
            row[f"{part}_chance"] = round(max(lab.count(c) for c in set(lab)) / len(lab), 3)
            row[f"{part}_from_cls"] = round(ncm_accuracy(C, lab), 3)
            row[f"{part}_from_token"] = round(ncm_accuracy(Y, lab), 3)
        result[ckpt] = row
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

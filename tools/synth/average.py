"""Averages the weights of checkpoints of one lineage (same tensors, names and shapes) into a new
checkpoint folder: a cheap stand-in for an exponential moving average of the weights, to see
whether points along one training path combine what each learnt better (docs/SYNTH.md
"Session 22").

    python tools/synth/average.py OUT CKPT[:WEIGHT] CKPT[:WEIGHT] ...

Weights default to 1 and are normalised to sum 1. The sum is taken in float64 and stored in the
first checkpoint's dtype per tensor (bf16 rounded to nearest even, as torch's
`.to(torch.bfloat16)`; the others may hold F32 or BF16); config, tokenizer, tower config folders
and the dense head (if any) are copied from the first checkpoint. Tensors that differ in name or
shape are refused.
Needs numpy.
"""
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from keep_wip import copy_model_files, read_safetensors, write_safetensors  # noqa: E402


def read(path):
    """(metadata, {name: (dtype, shape, raw)}) with the names in file order."""
    meta, entries = read_safetensors(path)
    return meta, {name: (dtype, shape, raw) for name, dtype, shape, raw in entries}


def to_f64(dtype, raw, src, name):
    if dtype == "F32":
        return np.frombuffer(raw, dtype="<f4").astype(np.float64)
    if dtype == "BF16":
        words = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return words.view(np.float32).astype(np.float64)
    raise SystemExit(f"{src}: tensor {name} is {dtype}; only F32 / BF16 are averaged")


def from_f64(dtype, values):
    if dtype not in ("F32", "BF16"):
        raise SystemExit(f"cannot store a {dtype} tensor: only F32 / BF16")
    f32 = values.astype(np.float32)
    if dtype == "F32":
        return f32.astype("<f4").tobytes()
    w = f32.view(np.uint32)
    nan = np.isnan(f32)
    rounded = ((w + np.uint32(0x7FFF) + ((w >> 16) & 1)) >> 16).astype(np.uint16)
    rounded[nan] = ((w[nan] >> 16) | 0x0040).astype(np.uint16)
    return rounded.astype("<u2").tobytes()


def main():
    if len(sys.argv) < 4:
        raise SystemExit("usage: average.py OUT CKPT[:WEIGHT] CKPT[:WEIGHT] ...")
    out, specs = sys.argv[1], sys.argv[2:]
    ckpts, weights = [], []
    for s in specs:
        path, _, w = s.partition(":")
        try:
            weights.append(float(w) if w else 1.0)
        except ValueError:
            raise SystemExit(f"{s}: the weight after ':' is not a number")
        if not os.path.isfile(os.path.join(path, "model.safetensors")):
            raise SystemExit(f"{path}/model.safetensors is missing")
        ckpts.append(path)
    total = sum(weights)
    if not all(math.isfinite(w) and w >= 0 for w in weights) or total <= 0:
        raise SystemExit(f"weights {weights}: must be finite, non-negative, with a positive sum")
    weights = [w / total for w in weights]
    meta, first = read(os.path.join(ckpts[0], "model.safetensors"))
    sums = {name: weights[0] * to_f64(d, raw, ckpts[0], name)
            for name, (d, _, raw) in first.items()}
    for path, w in zip(ckpts[1:], weights[1:]):
        _, other = read(os.path.join(path, "model.safetensors"))
        if set(other) != set(first):
            diff = sorted(set(other) ^ set(first))[:5]
            raise SystemExit(f"{path}: tensor names differ from {ckpts[0]} (e.g. {diff})")
        for name, (d, shape, raw) in other.items():
            if shape != first[name][1]:
                raise SystemExit(f"{path}: tensor {name} has shape {shape}, {ckpts[0]} has {first[name][1]}")
            sums[name] += w * to_f64(d, raw, path, name)
    entries = [(name, d, shape, from_f64(d, sums[name])) for name, (d, shape, _) in first.items()]
    copy_model_files(ckpts[0], out, extra=("dense_head.safetensors",), inputs=ckpts)
    write_safetensors(os.path.join(out, "model.safetensors"), entries, meta)
    print(f"{out}: {len(entries)} tensors, weights "
          + ", ".join(f"{p} {w:.3f}" for p, w in zip(ckpts, weights)))


if __name__ == "__main__":
    main()

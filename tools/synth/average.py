"""Averages the weights of checkpoints of one lineage (same tensors, names and shapes) into a new
checkpoint folder: a cheap stand-in for an exponential moving average of the weights, to see
whether points along one training path combine what each learnt better (docs/SYNTH.md
"Session 22").

    python tools/synth/average.py [--part PREFIX=W1,W2,...]... OUT CKPT[:WEIGHT] CKPT[:WEIGHT] ...

Weights default to 1 and are normalised to sum 1. `--part PREFIX=W1,W2,...` gives the tensors whose
name starts with PREFIX their own weights (one per checkpoint, in order; normalised the same way),
e.g. `--part model.prompt_=1,0` keeps the first checkpoint's region path; the longest matching
prefix wins. A checkpoint path may itself hold ':' (the weight is split off at the last one). The sum is taken in float64 and stored in the
first checkpoint's dtype per tensor (bf16 rounded to nearest even, as torch's
`.to(torch.bfloat16)`; the others may hold F32 or BF16); config, tokenizer, tower config folders
and the dense head (if any) are copied from the first checkpoint. Tensors that differ in name or
shape are refused.
Needs numpy.
"""
import argparse
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


def normalised(weights, what):
    total = sum(weights)
    if not all(math.isfinite(w) and w >= 0 for w in weights) or total <= 0:
        raise SystemExit(f"{what}: weights {weights} must be finite, non-negative, with a positive sum")
    return [w / total for w in weights]


def parse_args(argv):
    """(out, checkpoints, weights, {prefix: weights})."""
    ap = argparse.ArgumentParser(description="Averages the weights of checkpoints of one lineage.")
    ap.add_argument("--part", action="append", default=[], metavar="PREFIX=W1,W2,...",
                    help="weights of the tensors whose name starts with PREFIX, one per checkpoint")
    ap.add_argument("out")
    ap.add_argument("specs", nargs="+", metavar="CKPT[:WEIGHT]")
    a = ap.parse_args(argv)
    if len(a.specs) < 2:
        ap.error("give two checkpoints or more")
    parts = {}
    for spec in a.part:
        prefix, eq, ws = spec.partition("=")
        if not eq or not prefix:
            raise SystemExit(f"--part {spec}: expected PREFIX=W1,W2,...")
        try:
            parts[prefix] = [float(w) for w in ws.split(",")]
        except ValueError:
            raise SystemExit(f"--part {spec}: the weights are not numbers")
    out, specs = a.out, a.specs
    ckpts, weights = [], []
    for s in specs:
        path, w = s, ""
        if ":" in s and not os.path.isdir(s):
            path, _, w = s.rpartition(":")
        try:
            weights.append(float(w) if w else 1.0)
        except ValueError:
            raise SystemExit(f"{s}: the weight after ':' is not a number")
        if not os.path.isfile(os.path.join(path, "model.safetensors")):
            raise SystemExit(f"{path}/model.safetensors is missing")
        ckpts.append(path)
    for prefix, ws in parts.items():
        if len(ws) != len(ckpts):
            raise SystemExit(f"--part {prefix}: {len(ws)} weights for {len(ckpts)} checkpoints")
        parts[prefix] = normalised(ws, f"--part {prefix}")
    return out, ckpts, normalised(weights, "checkpoints"), parts


def weights_for(name, weights, parts):
    prefixes = [p for p in parts if name.startswith(p)]
    return parts[max(prefixes, key=len)] if prefixes else weights


def main():
    out, ckpts, weights, parts = parse_args(sys.argv[1:])
    meta, first = read(os.path.join(ckpts[0], "model.safetensors"))
    for prefix in parts:
        if not any(name.startswith(prefix) for name in first):
            raise SystemExit(f"--part {prefix}: no tensor of {ckpts[0]} starts with it")
    per_name = {name: weights_for(name, weights, parts) for name in first}
    sums = {name: per_name[name][0] * to_f64(d, raw, ckpts[0], name) for name, (d, _, raw) in first.items()}
    for k, path in enumerate(ckpts[1:], start=1):
        _, other = read(os.path.join(path, "model.safetensors"))
        if set(other) != set(first):
            diff = sorted(set(other) ^ set(first))[:5]
            raise SystemExit(f"{path}: tensor names differ from {ckpts[0]} (e.g. {diff})")
        for name, (d, shape, raw) in other.items():
            if shape != first[name][1]:
                raise SystemExit(f"{path}: tensor {name} has shape {shape}, {ckpts[0]} has {first[name][1]}")
            sums[name] += per_name[name][k] * to_f64(d, raw, path, name)
    entries = [(name, d, shape, from_f64(d, sums[name])) for name, (d, shape, _) in first.items()]
    copy_model_files(ckpts[0], out, extra=("dense_head.safetensors",), inputs=ckpts)
    write_safetensors(os.path.join(out, "model.safetensors"), entries, meta)
    print(f"{out}: {len(entries)} tensors, weights "
          + ", ".join(f"{p} {w:.3f}" for p, w in zip(ckpts, weights))
          + "".join(f"; {prefix}* " + ", ".join(f"{w:.3f}" for w in ws) for prefix, ws in parts.items()))


if __name__ == "__main__":
    main()

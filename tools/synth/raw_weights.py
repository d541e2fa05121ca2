"""The raw (not averaged) weights of a checkpoint trained with `train.ema_decay` > 0, as a model
folder: its `model.safetensors` holds the moving average, the optimizer state
(`optimizer.safetensors`, tensors `NAME::master` in f32) the weights the optimizer moves. This
copies the checkpoint's model files with every trained tensor replaced by its master, stored in
the checkpoint's dtype (bf16 rounded to nearest even), so the two can be evaluated side by side
(docs/SYNTH.md "Session 22").

    python tools/synth/raw_weights.py CHECKPOINT OUT

A dense head (`dense_head.safetensors`) is not copied: evaluation does not read it, and training
on from OUT with the dense loss starts a fresh one. Needs numpy.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from average import from_f64, read  # noqa: E402
from keep_wip import copy_model_files, write_safetensors  # noqa: E402


def main():
    if len(sys.argv) != 3:
        raise SystemExit("usage: raw_weights.py CHECKPOINT OUT")
    src, out = sys.argv[1], sys.argv[2]
    for f in ("model.safetensors", "optimizer.safetensors", "config.json"):
        if not os.path.isfile(os.path.join(src, f)):
            raise SystemExit(f"{src}/{f} is missing")
    meta, model = read(os.path.join(src, "model.safetensors"))
    _, opt = read(os.path.join(src, "optimizer.safetensors"))
    masters = {k[: -len("::master")]: v for k, v in opt.items() if k.endswith("::master")}
    if not any(k.endswith("::ema") for k in opt):
        raise SystemExit(f"{src}: the optimizer state holds no moving average: model.safetensors "
                         "already holds the raw weights")
    entries, replaced = [], 0
    for name, (dtype, shape, raw) in model.items():
        if name in masters:
            mdt, mshape, mraw = masters[name]
            if mdt != "F32" or mshape != shape:
                raise SystemExit(f"{src}: master of {name} is {mdt} {mshape}, the model has {dtype} {shape}")
            raw = from_f64(dtype, np.frombuffer(mraw, dtype="<f4").astype(np.float64))
            replaced += 1
        entries.append((name, dtype, shape, raw))
    missing = sorted(set(masters) - set(model))
    if set(missing) - {"dense_head.weight", "dense_head.bias"}:
        raise SystemExit(f"{src}: masters without a model tensor: {missing[:5]}")
    copy_model_files(src, out)
    write_safetensors(os.path.join(out, "model.safetensors"), entries, meta)
    print(f"{out}: {replaced} trained tensors from the optimizer's masters, {len(entries) - replaced} as stored")


if __name__ == "__main__":
    main()

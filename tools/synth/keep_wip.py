"""Keeps a work-in-progress checkpoint in the repo so that training can continue in a later
session (each session starts from a fresh clone: `runs/` does not survive, and the device machine
is bare). What the trainer reads to continue is copied (config, tokenizer, the towers' config
folders, the dense head); the weights are stored in bf16 (half the bytes in git; the trainer
makes its f32 master weights from them, which only rounds each weight to 8 bits of mantissa once).
The optimizer state is not kept (it never comes back from the device: twice the weights).

    python3 tools/synth/keep_wip.py CHECKPOINT DEST     # e.g. models/wip/synth1022

Standard library only (no numpy / torch on the machines that run it). Round to nearest even, as
torch's `.to(torch.bfloat16)`; NaN stays NaN.
"""
import array
import json
import os
import shutil
import struct
import sys


def f32_to_bf16(raw: bytes) -> bytes:
    words = array.array("I")
    words.frombytes(raw)
    if sys.byteorder != "little":
        words.byteswap()
    out = array.array("H", bytes(2 * len(words)))
    for i, w in enumerate(words):
        if (w & 0x7F800000) == 0x7F800000 and (w & 0x007FFFFF):
            out[i] = (w >> 16) | 0x0040  # quiet NaN
        else:
            out[i] = ((w + 0x7FFF + ((w >> 16) & 1)) >> 16) & 0xFFFF
    if sys.byteorder != "little":
        out.byteswap()
    return out.tobytes()


def read_safetensors(path: str):
    """A safetensors file as (its __metadata__ or None, [(name, dtype, shape, raw little-endian
    bytes)] in file order); shared by the tools that rewrite checkpoints (average.py,
    raw_weights.py, grow_llm.py)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", None)
    entries = []
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        a, b = info["data_offsets"]
        entries.append((name, info["dtype"], info["shape"], data[a:b]))
    return meta, entries


def copy_model_files(src: str, dst: str, extra=(), inputs=()) -> None:
    """Makes DST afresh with what the engine reads besides the weights: config, tokenizer, the
    towers' config folders, and the files named in `extra` when SRC has them. Refuses a DST that
    is, holds or lies inside SRC or one of `inputs` (it is deleted first), or that holds a
    README.md (a model card, as models/default's)."""
    d = os.path.realpath(dst)
    for i in (src, *inputs):
        r = os.path.realpath(i)
        if d == r or r.startswith(d + os.sep) or d.startswith(r + os.sep):
            raise SystemExit(f"{dst}: the output folder overlaps the input {i}; choose another")
    if os.path.isfile(os.path.join(dst, "README.md")):
        raise SystemExit(f"{dst} holds a README.md (a model card?); choose another output folder")
    if os.path.isdir(dst):
        shutil.rmtree(dst)
    os.makedirs(dst)
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", *extra):
        if os.path.isfile(os.path.join(src, f)):
            shutil.copy(os.path.join(src, f), dst)
    for d in sorted(os.listdir(src)):
        cfg = os.path.join(src, d, "config.json")
        if os.path.isfile(cfg):
            os.makedirs(os.path.join(dst, d))
            shutil.copy(cfg, os.path.join(dst, d))


def convert(src: str, dst: str) -> None:
    meta, entries = read_safetensors(src)
    out = []
    for name, dtype, shape, raw in entries:
        if dtype == "F32":
            raw, dtype = f32_to_bf16(raw), "BF16"
        elif dtype != "BF16":
            raise SystemExit(f"{src}: tensor {name} is {dtype}; only F32 / BF16 are expected")
        out.append((name, dtype, shape, raw))
    write_safetensors(dst, out, meta)


def write_safetensors(dst: str, entries, meta=None) -> None:
    """Writes (name, dtype, shape, raw little-endian bytes) tensors, in the given order, as a
    safetensors file (header padded to 8 bytes; `meta` as its __metadata__)."""
    header, offset = {}, 0
    for name, dtype, shape, raw in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    if meta is not None:
        header["__metadata__"] = meta
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, _, _, raw in entries:
            f.write(raw)


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit("usage: keep_wip.py CHECKPOINT DEST")
    src, dst = sys.argv[1], sys.argv[2]
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        if not os.path.isfile(os.path.join(src, f)):
            raise SystemExit(f"{src}/{f} is missing")
    copy_model_files(src, dst, extra=("dense_head.safetensors",))
    convert(os.path.join(src, "model.safetensors"), os.path.join(dst, "model.safetensors"))
    print(f"{dst}: {os.path.getsize(os.path.join(dst, 'model.safetensors'))} bytes of bf16 weights")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Can the image tokens the LLM reads be searched by an object's name? Runs a checkpoint's main
vision tower (CLIP ViT, `hidden_states[select_layer]` without CLS, as model/src/clip.rs), its
`conv_reduce` projector (conv 3x3 stride 2 pad 1, exact GELU, linear: model/src/projector.rs)
and the first LLM layer's input norm (Gemma-2: x * sqrt(hidden) then RMSNorm with scale 1 + w)
in numpy on the images of a synthetic test split, labels each image token with the object
holding its centre (the smallest; else background; a token's centre is that of its receptive
field, tower patch (2r, 2c)) and reports:

- `linear_probe`: colour and shape of object tokens told by a least-squares linear classifier
  (trained on the first half of the scenes, scored on the second half);
- `lookup`: for each name (colour + shape) of a scene of several objects in the second half,
  the scene's tokens are scored by that colour's and that shape's scores of two such probes
  fitted on every token (background a class of its own), summed: one linear query per name
  against the token itself; counted right when the best token belongs to an object of that
  name. Names whose objects hold no token centre (too small) are counted apart. This is what one attention head with a name-dependent query and a linear key would
  find without any training of the LLM: if it is high, the tokens support name-to-place lookup
  and what is missing is in the LLM (docs/SYNTH.md, session 15);
- `variance_explained_by_name` / `_by_position`: the share of the object tokens' variance
  explained by their object's name and by their grid position (group means; not corrected for
  the number of groups, so the position share, with more groups, is inflated by noise).

    token_lookup.py CHECKPOINT SPLIT_DIR IMAGES_DIR     # e.g. models/default data/synth224/test data/synth224/images/test
    token_lookup.py --check model/tests/fixtures/parity/gemma2_region   # this file's tower and projector
                                                                        # against the reference's output

F32 or BF16 checkpoints with a CLIP main tower and a conv_reduce projector; images must already be at the
tower's size (the synthetic splits are). Needs numpy and pillow (/work/venv). Prints one JSON
object."""
import json
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from region_features import MEAN, STD, clip_forward, read_safetensors  # noqa: E402

V = "model.vision_tower.vision_tower.vision_model."


def load(ckpt):
    if not os.path.isfile(os.path.join(ckpt, "config.json")):
        sys.exit(f"{ckpt}: no config.json (CHECKPOINT must be a checkpoint folder)")
    keep = lambda k: k.startswith((V, "model.mm_projector.", "model.layers.0.input_layernorm"))
    files = sorted(f for f in os.listdir(ckpt) if f.startswith("model") and f.endswith(".safetensors"))
    if not files:
        sys.exit(f"{ckpt}: no model*.safetensors")
    out = {}
    for f in files:
        out.update(read_safetensors(os.path.join(ckpt, f), keep))
    cfg = json.load(open(os.path.join(ckpt, "config.json")))
    if cfg.get("mm_projector_type") != "conv_reduce":
        sys.exit(f"{ckpt}: projector {cfg.get('mm_projector_type')!r}; only conv_reduce is read")
    tower = os.path.join(ckpt, os.path.basename(cfg.get("mm_vision_tower", "")), "config.json")
    if not os.path.isfile(tower):
        sys.exit(f"{tower}: absent (the checkpoint's main tower config)")
    return out, cfg, json.load(open(tower))


def erf(x):
    # Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7), enough for a diagnostic
    s = np.sign(x)
    x = np.abs(x)
    t = 1 / (1 + 0.3275911 * x)
    y = 1 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * np.exp(-x * x)
    return s * y


def tokens(W, cfg, tc, img):
    """LLM layer 0's normed input for the image tokens of `img` (PIL, at the tower's size)."""
    s = tc["image_size"]
    if img.size != (s, s):
        sys.exit(f"image is {img.size}, the tower runs at {s} px")
    y, go = project(W, cfg, tc, ((np.asarray(img, dtype=np.float64) / 255.0 - MEAN) / STD).transpose(2, 0, 1))
    x = y * np.sqrt(y.shape[1])
    x = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + cfg.get("rms_norm_eps", 1e-6))
    return x * (1 + W["model.layers.0.input_layernorm.weight"]), go, s


def project(W, cfg, tc, x):
    """Projector output [tokens, hidden] for normalised pixels x [3, S, S], and its grid side."""
    g, d = tc["image_size"] // tc["patch_size"], tc["hidden_size"]
    sel = cfg.get("mm_vision_select_layer", -2)
    t = clip_forward(W, V, tc, x, sel if sel >= 0 else tc["num_hidden_layers"] + 1 + sel)
    f = t[1:].reshape(g, g, d)
    cw, cb = W["model.mm_projector.conv.weight"], W["model.mm_projector.conv.bias"]
    go = (g + 1) // 2
    fp = np.pad(f, ((1, 1), (1, 1), (0, 0)))
    y = np.zeros((go, go, cw.shape[0]))
    for i in range(go):
        for j in range(go):
            win = fp[2 * i:2 * i + 3, 2 * j:2 * j + 3, :]  # [3, 3, C]
            y[i, j] = np.einsum("abc,ocab->o", win, cw) + cb
    y = 0.5 * y * (1 + erf(y / np.sqrt(2)))
    return y.reshape(go * go, -1) @ W["model.mm_projector.linear.weight"].T + W["model.mm_projector.linear.bias"], go


def labels(objs, go, patch):
    """Per token (row-major): index of the smallest object holding its centre, or -1. Token (r, c)
    of the stride-2 3x3 conv is centred on tower patch (2r, 2c): pixel ((2c + 0.5) patch,
    (2r + 0.5) patch)."""
    out = []
    for r in range(go):
        for c in range(go):
            cx, cy = (2 * c + 0.5) * patch, (2 * r + 0.5) * patch
            best = None
            for k, (_, b) in enumerate(objs):
                if b[0] <= cx < b[2] and b[1] <= cy < b[3]:
                    area = (b[2] - b[0]) * (b[3] - b[1])
                    if best is None or area < best[0]:
                        best = (area, k)
            out.append(-1 if best is None else best[1])
    return out


def lstsq_fit(X, y):
    """Least-squares one-vs-rest linear classifier (ridge 1e-3): (classes, weights [D + 1, C])."""
    classes = sorted(set(y))
    Y = np.array([[c == v for c in classes] for v in y], dtype=np.float64)
    A = np.hstack([X, np.ones((len(X), 1))])
    return classes, np.linalg.solve(A.T @ A + 1e-3 * np.eye(A.shape[1]), A.T @ Y)


def scores(fit, X):
    return np.hstack([X, np.ones((len(X), 1))]) @ fit[1]


def check(fixture):
    """This file's tower and projector against a parity fixture of the reference (transformers +
    torch: tools/reference/make_parity_fixtures.py): its golden pixels in, its projector output."""
    ckpt = os.path.join(fixture, "ckpt")
    W, cfg, tc = load(ckpt)
    g = read_safetensors(os.path.join(fixture, "golden.safetensors"), lambda k: k in ("pixels", "projector_out"))
    y, _ = project(W, cfg, tc, g["pixels"])
    ref = g["projector_out"][0]
    err = float(np.abs(y - ref).max() / np.abs(ref).max())
    print(json.dumps({"fixture": fixture, "projector_out_max_rel_error": err}))
    if err > 1e-5:
        sys.exit(f"numpy tower/projector differ from the reference by {err:.2e}")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        return check(sys.argv[2])
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    ckpt, split, images = sys.argv[1:4]
    W, cfg, tc = load(ckpt)
    scenes = []
    visj = os.path.join(split, "visj.jsonl")
    if not os.path.isfile(visj):
        sys.exit(f"{visj}: absent (SPLIT_DIR must be a split folder written by griffon synth)")
    for line in open(visj):
        r = json.loads(line)
        objs = [(o["category_name"], b) for o in r["objects"] for b in o["bboxes"]]
        X, go, s = tokens(W, cfg, tc, Image.open(os.path.join(images, r["image_path"])).convert("RGB"))
        scenes.append((objs, X, labels(objs, go, tc["patch_size"]), go))
    half = len(scenes) // 2
    train, test = scenes[:half], scenes[half:]

    def object_tokens(part, background=False):
        X, names, pos = [], [], []
        for objs, T, lab, go in part:
            for i, k in enumerate(lab):
                if k >= 0 or background:
                    X.append(T[i])
                    names.append(objs[k][0] if k >= 0 else "background background")
                    pos.append(i)
        return np.array(X), names, pos

    Xtr, ntr, ptr = object_tokens(train)
    Xte, nte, _ = object_tokens(test)
    Xall, nall, _ = object_tokens(train, background=True)
    result = {"checkpoint": ckpt, "scenes": len(scenes), "object_tokens": len(Xtr) + len(Xte)}
    fits = {}
    for part, i in (("colour", 0), ("shape", 1)):
        ytr, yte = [n.split(" ")[i] for n in ntr], [n.split(" ")[i] for n in nte]
        fits[part] = lstsq_fit(Xtr, ytr)
        classes = fits[part][0]
        pred = [classes[j] for j in scores(fits[part], Xte).argmax(1)]
        result[f"linear_probe_{part}"] = round(float(np.mean([a == b for a, b in zip(pred, yte)])), 3)
        result[f"linear_probe_{part}_chance"] = round(max(yte.count(c) for c in set(yte)) / len(yte), 3)
    # variance explained by the object's name and by the token's grid position (object tokens, train half)
    total = ((Xtr - Xtr.mean(0)) ** 2).sum()

    def explained(groups):
        _, idx = np.unique(np.array(groups), return_inverse=True)
        means = np.zeros((idx.max() + 1, Xtr.shape[1]))
        np.add.at(means, idx, Xtr)
        means /= np.bincount(idx)[:, None]
        return round(float(1 - ((Xtr - means[idx]) ** 2).sum() / total), 3)

    result["variance_explained_by_name"] = explained(ntr)
    result["variance_explained_by_position"] = explained(ptr)
    # lookup with fixed linear queries: a token's score for a name is the probes' colour score
    # plus shape score (one bilinear form: query from the name, key = the token), the probes
    # fitted on every token of the first half (background a class of its own)
    fits = {part: lstsq_fit(Xall, [n.split(" ")[i] for n in nall]) for part, i in (("colour", 0), ("shape", 1))}
    right = asked = tokenless = 0
    for objs, T, lab, go in test:
        if len(objs) < 2:
            continue
        sc = {part: scores(fits[part], T) for part in fits}
        # one question per name of the scene; right when the best token belongs to an object of
        # that name (look-alikes share a name, so any of them answers it)
        for name in sorted({n for n, _ in objs}):
            colour, shape = name.split(" ")
            owners = {k for k, (n, _) in enumerate(objs) if n == name}
            if not owners & set(lab):
                tokenless += 1  # too small to hold a token centre
                continue
            if colour not in fits["colour"][0] or shape not in fits["shape"][0]:
                continue
            total_score = sc["colour"][:, fits["colour"][0].index(colour)] + sc["shape"][:, fits["shape"][0].index(shape)]
            asked += 1
            right += lab[int(np.argmax(total_score))] in owners
    result["lookup_questions"] = asked
    result["lookup_right"] = round(right / max(asked, 1), 3)
    result["lookup_names_without_tokens"] = tokenless
    print(json.dumps(result))


if __name__ == "__main__":
    main()

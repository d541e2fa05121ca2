#!/usr/bin/env python3
"""Can one attention head find the referred object by name from a model's own residual stream?
(docs/SYNTH.md, session 19.) Reads what `choice_probe` wrote (run with IMAGE_SAMPLES = N, so
every sample has its image tokens) and fits, outside the model, a single Gemma-2 attention head
(query and key projections of rank 64, the model's RoPE at the samples' real positions, scale
1/sqrt(64), softmax over the 64 image tokens) to put its attention at the choosing position (the
token predicting x1's first decimal) on the referred object's image tokens: the grounding loss of
`train.ground_positions = "choice"`, with nothing else to learn. The residuals are the model's
after decoder layer `l` (the input of layer `l`'s attention), RMS-normalised as that layer's
input norm does (its weight is absorbed in the projections).

    tools/synth/name_lookup.py OUT [--layers 1,2] [--steps 3000] [--seed 0]   # prints JSON

Variants: "real" (query from the choosing position's residual, keys from the image tokens'),
"no rope" (the same without the rotation: is position in the way?), "oracle query" (the query
from a one-hot of the referred object's shape and colour: do the keys hold the name?), "oracle
keys" (each image token's key from the one-hots of the objects covering it: does the query hold
it?), "decoded query" (the query from a ridge probe's shape and colour scores read from the
query residual, standardised, fitted on the training samples, the penalty chosen on a quarter of them: the name the residual holds, made
as loud as the oracle's). Trained on the first 80% of the samples (Adam, batches of 256), reported on the rest, by
expression kind, for scenes with other objects: the mean attention on the referred object's tokens
and on the others' (the grounding rule's tokens, choice_probe's `own_tokens` / `other_tokens`),
and "picks", the share of scenes where the referred object's tokens hold more attention than any
other object's; for unique names also after 50, 200 and 1000 steps (50 steps of 256 are about
the 12 k samples a 1500-step CPU run of 8 sees).

numpy only."""
import argparse
import json
import os

import numpy as np

from choice_probe import kind

THETA = 10000.0


def rot(x, pos, head_dim, sign=1.0):
    """Gemma's rotate-half RoPE of the last axis of `x` at positions `pos` (broadcast over x's
    leading axes); sign -1 applies the inverse rotation (the transpose)."""
    half = head_dim // 2
    freq = THETA ** (-np.arange(half) * 2.0 / head_dim)
    ang = pos[..., None] * freq * sign
    c, s = np.cos(ang), np.sin(ang)
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * c - b * s, b * c + a * s], -1)


def targets(box, grid, patches):
    """The grounding rule's tokens of a box (train/src/ground.rs GroundSpec::targets): the image
    tokens whose centre lies inside, else the nearest one. A token's centre is that of the patch
    the conv_reduce projector (stride 2, padding 1) centres it on (ground.rs token_centres); the
    caller checks the rule against choice_probe's own_tokens."""
    c = (2 * np.arange(grid) + 0.5) / patches
    inside = [r * grid + q for r in range(grid) for q in range(grid)
              if box[0] <= c[q] < box[2] and box[1] <= c[r] < box[3]]
    if inside:
        return inside
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return [int(np.argmin([(c[i % grid] - cx) ** 2 + (c[i // grid] - cy) ** 2 for i in range(grid * grid)]))]


def rms(x):
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6)


def fit(xq, xk, pq, pk, own, train, rope, steps, seed, rank=64, lr=3e-3, batch=256, at=()):
    """Adam on -log(attention on the referred tokens); returns the attention of every sample
    after `steps` steps, the training losses, and the attention after each step count in `at`."""
    rng = np.random.default_rng(seed)
    dq, dk = xq.shape[-1], xk.shape[-1]
    wq = rng.normal(0, 1 / np.sqrt(dq), (rank, dq))
    wk = rng.normal(0, 1 / np.sqrt(dk), (rank, dk))
    scale = 1 / np.sqrt(rank)
    m = [np.zeros_like(wq), np.zeros_like(wk)]
    v = [np.zeros_like(wq), np.zeros_like(wk)]

    def forward(idx):
        q = xq[idx] @ wq.T
        k = xk[idx] @ wk.T
        if rope:
            q, k = rot(q, pq[idx], rank), rot(k, pk[idx], rank)
        s = np.einsum("nr,ntr->nt", q, k) * scale
        s -= s.max(1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(1, keepdims=True)
        return q, k, p

    def attention():
        return np.concatenate([forward(np.arange(i, min(i + 256, len(xq))))[2] for i in range(0, len(xq), 256)])

    losses, snaps = [], {}
    for step in range(1, steps + 1):
        idx = rng.choice(train, batch, replace=False)
        q, k, p = forward(idx)
        mask = own[idx]
        pr = (p * mask).sum(1, keepdims=True) + 1e-12
        losses.append(float(-np.log(pr).mean()))
        g = (p - p * mask / pr) / batch * scale
        gq = np.einsum("nt,ntr->nr", g, k)
        gk = g[..., None] * q[:, None, :]
        if rope:
            gq, gk = rot(gq, pq[idx], rank, -1.0), rot(gk, pk[idx], rank, -1.0)
        grads = [gq.T @ xq[idx], np.einsum("ntr,ntd->rd", gk, xk[idx])]
        for i, (w, gr) in enumerate(zip((wq, wk), grads)):
            m[i] = 0.9 * m[i] + 0.1 * gr
            v[i] = 0.999 * v[i] + 0.001 * gr ** 2
            w -= lr * (m[i] / (1 - 0.9 ** step)) / (np.sqrt(v[i] / (1 - 0.999 ** step)) + 1e-8)
        if step in at:
            snaps[step] = attention()
    return attention(), losses, snaps


def report(att, samples, test, grid, patches):
    res = {}
    kinds = np.array([kind(s["expression"]) for s in samples])
    for k in ("unique name", "size", "spatial"):
        idx = [i for i in test if kinds[i] == k and len(samples[i]["objects"]) >= 2]
        if not idx:
            continue
        own_m, oth_m, pick = [], [], []
        for i in idx:
            s = samples[i]
            a = att[i]
            ref = a[s["own_tokens"]].sum()
            own_m.append(ref)
            oth_m.append(a[s["other_tokens"]].sum() if s["other_tokens"] else 0.0)
            rest = [a[[t for t in targets(o["box"], grid, patches) if t not in s["own_tokens"]]].sum()
                    for j, o in enumerate(s["objects"]) if j != s["referred"]]
            pick.append(all(ref > r for r in rest))
        res[k] = {"n": len(idx), "referred": round(float(np.mean(own_m)), 3),
                  "others": round(float(np.mean(oth_m)), 3), "picks": round(float(np.mean(pick)), 3),
                  "chance": round(float(np.mean([1 / len(samples[i]["objects"]) for i in idx])), 3)}
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", default="1,2")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default="real,no rope,oracle query,oracle keys")
    a = ap.parse_args()
    meta = json.load(open(os.path.join(a.out, "meta.json")))
    samples, L, H, T = meta["samples"], meta["layers"] + 1, meta["hidden"], meta["image_tokens"]
    n = meta["image_samples"]
    if n < len(samples):
        raise SystemExit(f"{a.out}: image tokens for {n} of {len(samples)} samples; run choice_probe with IMAGE_SAMPLES = N")
    for s in samples:
        if "at" not in s:
            raise SystemExit(f"{a.out}: meta.json has no positions (choice_probe before session 19)")
    grid = meta["image_grid"]
    patches = 2 * grid  # the tower's patch grid under conv_reduce (16 at 224 px, patch 14)
    choice = np.fromfile(os.path.join(a.out, "choice.f32"), dtype="<f4").reshape(n, L, H)
    image = np.memmap(os.path.join(a.out, "image.f32"), dtype="<f4", mode="r", shape=(n, L, T, H))
    pq = np.array([s["at"] for s in samples], dtype=np.float64)
    pk = np.array([[s["image_start"] + t for t in range(T)] for s in samples], dtype=np.float64)
    own = np.zeros((n, T))
    for i, s in enumerate(samples):
        own[i, s["own_tokens"]] = 1.0
        if sorted(targets(s["objects"][s["referred"]]["box"], grid, patches)) != sorted(s["own_tokens"]):
            raise SystemExit(f"sample {i}: the token rule here differs from ground.rs")
    # one-hots of names: the referred object's (oracle query), each token's covering objects' (oracle keys)
    name = lambda o: np.concatenate([np.eye(6)[o["shape"]], np.eye(8)[o["colour"]], [1.0]])  # noqa: E731
    oq = np.stack([name(s["objects"][s["referred"]]) for s in samples])
    ok = np.zeros((n, T, 15))
    for i, s in enumerate(samples):
        ok[i, :, 14] = 1.0
        for o in s["objects"]:
            for t in targets(o["box"], grid, patches):
                ok[i, t, :14] += name(o)[:14]
    perm = np.random.default_rng(a.seed).permutation(n)
    train, test = np.sort(perm[: int(0.8 * n)]), np.sort(perm[int(0.8 * n):])
    res = {"folder": a.out, "checkpoint": meta["checkpoint"], "samples": n, "steps": a.steps, "layers": {}}
    for l in [int(x) for x in a.layers.split(",")]:
        xq = rms(choice[:, l].astype(np.float64))
        xk = rms(np.asarray(image[:, l], dtype=np.float64))
        # the name as a ridge probe reads it from the query residual (standardised, fitted on the
        # training samples alone): held-out one-hot scores of shape and colour
        mu, sd = xq[train].mean(0), xq[train].std(0) + 1e-6
        z = (xq - mu) / sd
        y = oq[:, :14] - oq[train, :14].mean(0)
        fit_tr, val = train[: int(0.75 * len(train))], train[int(0.75 * len(train)):]

        def ridge(rows, alpha):
            return np.linalg.solve(z[rows].T @ z[rows] + alpha * np.eye(H), z[rows].T @ y[rows])

        def val_acc(alpha):
            p = z[val] @ ridge(fit_tr, alpha)
            return (p[:, :6].argmax(1) == y[val, :6].argmax(1)).mean() + (p[:, 6:].argmax(1) == y[val, 6:].argmax(1)).mean()

        alpha = max([0.1, 1.0, 10.0, 100.0, 1000.0], key=val_acc)
        dq = np.concatenate([z @ ridge(train, alpha) + oq[train, :14].mean(0), np.ones((n, 1))], 1)
        acc = [float((dq[test, :6].argmax(1) == oq[test, :6].argmax(1)).mean()),
               float((dq[test, 6:14].argmax(1) == oq[test, 6:14].argmax(1)).mean())]
        res["layers"][l] = {"name read from the query (held out shape / colour)": [round(x, 3) for x in acc],
                            "its ridge penalty": alpha}
        print(json.dumps({"layer": l, "decoded shape / colour": acc, "alpha": alpha}), flush=True)
        runs = {"real": (xq, xk, True), "no rope": (xq, xk, False), "decoded query": (dq, xk, True),
                "oracle query": (oq, xk, True), "oracle keys": (xq, ok, True)}
        for name_ in a.variants.split(","):
            q, k, rope = runs[name_]
            at = [c for c in (50, 200, 1000) if c < a.steps]
            att, losses, snaps = fit(q, k, pq, pk, own, train, rope, a.steps, a.seed, at=at)
            res["layers"][l][name_] = {
                "train loss first / last 100": [round(float(np.mean(losses[:100])), 3),
                                                round(float(np.mean(losses[-100:])), 3)],
                "held out": report(att, samples, test, grid, patches),
                "held out, unique names, after steps": {c: report(snaps[c], samples, test, grid, patches).get("unique name")
                                                        for c in at},
            }
            print(json.dumps({"layer": l, "variant": name_, **res["layers"][l][name_]}), flush=True)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

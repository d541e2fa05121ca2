#!/usr/bin/env python3
"""Linear probes on `choice_probe`'s residual streams (train/examples/choice_probe.rs; docs/SYNTH.md,
session 18). Does the residual stream at the token that chooses a REC answer's object (the one
predicting x1's first decimal) hold the referred object's x1, after which layer, and does the
model's own answer use it?

    tools/synth/choice_probe.py OUT [OUT ...]      # folders choice_probe wrote; prints JSON

For each folder and each layer (0 = the input embeddings): ridge regression (features
standardised on the training folds, the penalty chosen by an inner 4-fold split of each training
fold; 5 outer folds) from the residual to the x1 of the referred object, of the scene's largest
object and of one other object drawn at random (seed 0); R^2 on the held-out folds; and the
referred object's shape and colour (one-vs-rest ridge, held-out accuracy: is the name the
expression gave at that position, for a query to use?). "probe picks
referred": in scenes of two or more objects, the share where the referred probe's held-out
prediction lies nearer the referred object's x1 than any other object's (ties, objects with the
same x1 as the referred one, count for the referred); beside it the same rule for the model's own
expected x1 (its probabilities of the ten first-decimal digits, digit d at (d + 0.5) / 10), for
always answering the largest object, and chance (the mean of 1 / objects). Broken down by the
expression's kind: a unique name (`the purple cross`), a size word (`the small ...`) or a spatial
extreme (`the leftmost ...`). Attention: each head's (0-based decoder layer) mean attention at
that position on the referred object's image tokens and on the other objects' (the grounding
loss's token rule), and the share of samples with more on the referred. Image tokens: ridge from each image token's residual to its grid
column and row (R^2, 5 folds over samples).

numpy only."""
import json
import os
import sys

import numpy as np

ALPHAS = [0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0]


def folds(n, k, seed):
    idx = np.random.default_rng(seed).permutation(n)
    return [idx[i::k] for i in range(k)]


def ridge_fit(x, y, alpha):
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    ym = y.mean()
    w = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (y - ym))
    return lambda q: ((q - mu) / sd) @ w + ym


def held_out(x, y, groups=None, seed=0):
    """Held-out predictions of y from x: 5 outer folds (over `groups` when given: every row of a
    group in the same fold), the penalty chosen per fold by an inner 4-fold split."""
    n = len(y)
    keys = np.arange(n) if groups is None else groups
    uniq = np.unique(keys)
    pred = np.zeros(n)
    for test_keys in folds(len(uniq), 5, seed):
        test = np.isin(keys, uniq[test_keys])
        tr = np.where(~test)[0]
        best, best_err = ALPHAS[0], np.inf
        tr_keys = np.unique(keys[tr])
        for a in ALPHAS:
            err = 0.0
            for inner in folds(len(tr_keys), 4, seed + 1):
                v = np.isin(keys[tr], tr_keys[inner])
                f = ridge_fit(x[tr[~v]], y[tr[~v]], a)
                err += ((f(x[tr[v]]) - y[tr[v]]) ** 2).sum()
            if err < best_err:
                best, best_err = a, err
        pred[test] = ridge_fit(x[tr], y[tr], best)(x[test])
    return pred


def classify(x, labels):
    """Held-out accuracy of a one-vs-rest ridge classifier (argmax of the class scores)."""
    classes = np.unique(labels)
    scores = np.stack([held_out(x, (labels == c).astype(float)) for c in classes], 1)
    return float((classes[scores.argmax(1)] == labels).mean())


def r2(y, p):
    return float(1 - ((y - p) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def kind(expr):
    w = expr.split()
    if len(w) > 1 and w[1].endswith("most"):
        return "spatial"
    if len(w) > 1 and w[1] in ("small", "large", "big", "tiny", "medium", "smaller", "larger"):
        return "size"
    return "unique name"


def picks(xhat, s):
    """Does x-hat lie nearer the referred object's x1 than any other object's?"""
    xs = [o["box"][0] for o in s["objects"]]
    r = xs[s["referred"]]
    d = abs(xhat - r)
    return all(abs(xhat - x) >= d for x in xs)


def analyse(out):
    meta = json.load(open(os.path.join(out, "meta.json")))
    samples, L, H = meta["samples"], meta["layers"] + 1, meta["hidden"]
    n = len(samples)
    choice = np.fromfile(os.path.join(out, "choice.f32"), dtype="<f4").reshape(n, L, H).astype(np.float64)
    rng = np.random.default_rng(0)
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
    x_ref = np.array([s["objects"][s["referred"]]["box"][0] for s in samples])
    largest = [max(range(len(s["objects"])), key=lambda i: area(s["objects"][i]["box"])) for s in samples]
    x_large = np.array([s["objects"][i]["box"][0] for s, i in zip(samples, largest)])
    other = []
    for s in samples:
        cand = [i for i in range(len(s["objects"])) if i != s["referred"]] or [s["referred"]]
        other.append(s["objects"][cand[rng.integers(len(cand))]]["box"][0])
    x_other = np.array(other)
    multi = np.array([len(s["objects"]) >= 2 for s in samples])
    shape = np.array([s["objects"][s["referred"]]["shape"] for s in samples])
    colour = np.array([s["objects"][s["referred"]]["colour"] for s in samples])
    kinds = np.array([kind(s["expression"]) for s in samples])
    not_largest = np.array([s["referred"] != i for s, i in zip(samples, largest)])
    own = np.array([sum((d + 0.5) / 10 * p for d, p in enumerate(s["digit_probs"])) / max(sum(s["digit_probs"]), 1e-9) for s in samples])

    def share(mask, xhat):
        idx = np.where(mask)[0]
        return {"share": float(np.mean([picks(xhat[i], samples[i]) for i in idx])) if len(idx) else None, "n": int(len(idx))}

    groups = {"all with others": multi, "referred not largest": multi & not_largest}
    for k in ("unique name", "size", "spatial"):
        groups[f"kind: {k}"] = multi & (kinds == k)
    res = {"folder": out, "checkpoint": meta["checkpoint"], "samples": n, "layers": []}
    res["baselines"] = {
        g: {
            "model's own expected x1": share(m, own),
            "largest object": share(m, x_large),
            "chance": float(np.mean([1 / len(samples[i]["objects"]) for i in np.where(m)[0]])) if m.any() else None,
        }
        for g, m in groups.items()
    }
    for layer in range(L):
        x = choice[:, layer, :]
        p_ref = held_out(x, x_ref)
        row = {
            "layer": layer,
            "r2 referred x1": r2(x_ref, p_ref),
            "r2 largest x1": r2(x_large, held_out(x, x_large)),
            "r2 random other x1": r2(x_other, held_out(x, x_other)),
            "probe picks referred": {g: share(m, p_ref) for g, m in groups.items()},
            "referred shape decoded": classify(x, shape),
            "referred colour decoded": classify(x, colour),
        }
        res["layers"].append(row)
    # each head's attention at the choosing position: on the referred object's image tokens, on
    # the other objects' (0-based decoder layer, head)
    if "attention" in samples[0]:
        att = np.array([s["attention"] for s in samples])  # [n, layers, heads, 2]
        res["attention"] = {
            g: [
                [
                    {
                        "referred": float(att[m, layer, h, 0].mean()),
                        "others": float(att[m, layer, h, 1].mean()),
                        "more on referred": float((att[m, layer, h, 0] > att[m, layer, h, 1]).mean()),
                    }
                    for h in range(att.shape[2])
                ]
                for layer in range(att.shape[1])
            ]
            for g, m in groups.items()
            if m.any()
        }
    # image tokens: does each token's residual hold its column / row?
    m_img = meta["image_samples"]
    t, g = meta["image_tokens"], meta["image_grid"]
    if m_img:
        img = np.fromfile(os.path.join(out, "image.f32"), dtype="<f4").reshape(m_img, L, t, H).astype(np.float64)
        col = np.tile(np.arange(t) % g, m_img).astype(float)
        rowi = np.tile(np.arange(t) // g, m_img).astype(float)
        grp = np.repeat(np.arange(m_img), t)
        res["image_tokens"] = [
            {
                "layer": layer,
                "r2 column": r2(col, held_out(img[:, layer].reshape(-1, H), col, grp)),
                "r2 row": r2(rowi, held_out(img[:, layer].reshape(-1, H), rowi, grp)),
            }
            for layer in range(L)
        ]
    return res


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(json.dumps([analyse(o) for o in sys.argv[1:]], indent=1))


if __name__ == "__main__":
    main()

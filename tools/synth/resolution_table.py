"""The resolution study's table and plot (docs/SYNTH.md, issue #7 point 4) from the summaries that
`griffon eval synth --out DIR` writes (DIR/synth_metrics.json), one run per argument:

    python tools/synth/resolution_table.py --plot docs/resolution_study.png \
        "252 px direct:252:81:runs/synth/r252-eval" "504 px direct:504:324:runs/synth/r504-eval" \
        "1022 px direct:1022:1369:runs/synth/r1022-eval" "2x2 tiles of 504:1008:1296:runs/synth/t504-eval:tiles"

Each argument is LABEL:INPUT_PX:IMAGE_TOKENS:EVAL_DIR[:tiles]. Prints a markdown table (detection
mAP / AP50 / APsmall / APmedium / APlarge, REC Acc@0.5, counting MAE, REG CIDEr-D) and, with
--plot, draws AP by object size against the input resolution: direct runs as lines, tiled runs
as separate markers. A missing or malformed summary is an error naming the file.

With --instances INSTANCES_JSON (the test split's COCO instances) the table also gives the recall
by object size of tools/synth/size_recall.py (true objects hit by a same-category box with IoU >=
0.5), and the plot gets a second panel with it: AP stays 0 until boxes are good enough to rank,
recall counts every hit, so it shows a weak model's trend by size.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from size_recall import CLASSES, load_instances, size_recall  # noqa: E402

KEYS = [
    ("detection_mAP", "mAP"),
    ("detection_AP50", "AP50"),
    ("detection_APsmall", "APsmall"),
    ("detection_APmedium", "APmedium"),
    ("detection_APlarge", "APlarge"),
    ("rec_acc@0.5", "REC Acc@0.5"),
    ("count_mae", "count MAE"),
    ("reg_cider", "REG CIDEr-D"),
]


def parse_run(arg):
    parts = arg.split(":")
    if len(parts) not in (4, 5) or (len(parts) == 5 and parts[4] != "tiles"):
        raise SystemExit(f"{arg!r}: expected LABEL:INPUT_PX:IMAGE_TOKENS:EVAL_DIR[:tiles]")
    label, px, tokens, path = parts[:4]
    try:
        px, tokens = int(px), int(tokens)
    except ValueError:
        raise SystemExit(f"{arg!r}: INPUT_PX and IMAGE_TOKENS must be integers")
    summary = os.path.join(path, "synth_metrics.json")
    try:
        with open(summary) as f:
            metrics = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"{summary}: {e}")
    missing = [k for k, _ in KEYS if not isinstance(metrics.get(k), (int, float))]
    if missing:
        raise SystemExit(f"{summary}: missing {', '.join(missing)}")
    return {"label": label, "px": px, "tokens": tokens, "tiles": len(parts) == 5, "m": metrics, "path": path}


def table(runs):
    recall = all("recall" in r for r in runs)
    names = [name for _, name in KEYS] + ([f"recall {c} @0.5" for c, _, _ in CLASSES] if recall else [])
    head = "| run | input px | image tokens | " + " | ".join(names) + " |"
    rule = "|---" * (3 + len(names)) + "|"
    rows = [head, rule]
    for r in runs:
        vals = [f"{r['m'][k]:.3f}" for k, _ in KEYS]
        if recall:
            vals += [f"{r['recall'][c]['recall@0.5']:.3f}" for c, _, _ in CLASSES]
        rows.append(f"| {r['label']} | {r['px']} | {r['tokens']} | {' | '.join(vals)} |")
    return "\n".join(rows)


def plot(runs, path, title="Synthetic benchmark"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("detection AP (IoU 0.5:0.95)", lambda r, c: r["m"][f"detection_AP{c}"])]
    if all("recall" in r for r in runs):
        panels.append(("recall, same category, IoU >= 0.5", lambda r, c: r["recall"][c]["recall@0.5"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    direct = sorted((r for r in runs if not r["tiles"]), key=lambda r: r["px"])
    tiled = [r for r in runs if r["tiles"]]
    for ax, (ylabel, value) in zip(axes[0], panels):
        for size, colour in [("small", "tab:red"), ("medium", "tab:orange"), ("large", "tab:blue")]:
            if direct:
                ax.plot([r["px"] for r in direct], [value(r, size) for r in direct], "o-", color=colour,
                        label=f"{size}, direct")
            if tiled:
                ax.plot([r["px"] for r in tiled], [value(r, size) for r in tiled], "s", mfc="none", color=colour,
                        label=f"{size}, tiles")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["px"] for r in runs}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("input resolution (px; tiles: the tiled image's side)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}: by object size")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--plot", help="write the plot here (PNG)")
    ap.add_argument("--instances", help="the test split's COCO instances: adds recall by object size")
    ap.add_argument("--title", default="Synthetic benchmark", help="the plot's title")
    a = ap.parse_args()
    runs = [parse_run(r) for r in a.runs]
    if a.instances:
        gt = load_instances(a.instances)
        for r in runs:
            r["recall"] = size_recall(gt, r["path"], a.instances)
    print(table(runs))
    if a.plot:
        plot(runs, a.plot, a.title)
        print(f"wrote {a.plot}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""The records of `griffon eval` shard files as `griffon eval merge` sees them (eval/src/runners.rs
`merge`): one per id, a later record (a rerun, appended) replacing a failed or cut one unless it
failed itself; a torn last line (a kill mid-write) is dropped. Shared by the tools/synth
diagnostics so they count what the metrics count."""
import glob
import json
import sys


def merged(paths):
    """[(path, line number, record)] in first-seen id order."""
    order, best = [], {}
    for path in paths:
        lines = open(path).read().split("\n")
        for k, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                if k == len(lines):
                    continue
                sys.exit(f"{path}:{k}: not JSON")
            old = best.get(r["id"])
            if old is None:
                order.append(r["id"])
                best[r["id"]] = (path, k, r)
            elif (old[2].get("error") or old[2].get("truncated")) and not r.get("error"):
                best[r["id"]] = (path, k, r)
    return [best[i] for i in order]


def rec_records(out):
    """`merged` over the REC shards of a `griffon eval synth` --out folder (its rec/ folder), or
    exit naming the folder when it holds none."""
    paths = sorted(glob.glob(f"{out}/rec/predictions.shard-*.jsonl"))
    if not paths:
        sys.exit(f"no REC predictions under {out}/rec/")
    return merged(paths)

"""Totals per kernel name from `ncu --csv --metrics gpu__time_duration.sum ...` (one row per launch:
"Kernel Name", "Metric Name", "Metric Unit", "Metric Value"), the costliest first.
    python3 tools/cuda/ncu_top.py ncu.csv [N=15]
Exits 1 when the file holds no such rows (the caller then shows the raw output)."""
import csv
import sys
from collections import defaultdict

UNIT_MS = {"ns": 1e-6, "nsecond": 1e-6, "us": 1e-3, "usecond": 1e-3, "ms": 1.0, "msecond": 1.0, "s": 1e3, "second": 1e3}


def main(path, top):
    # ncu prints its own "==PROF==" lines among the CSV; the CSV rows are the quoted ones
    lines = [l for l in open(path, errors="replace") if l.startswith('"')]
    total, calls = defaultdict(float), defaultdict(int)
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        scale = UNIT_MS.get(row.get("Metric Unit", ""))
        value = (row.get("Metric Value") or "").replace(",", "")
        if scale is None or not value:
            continue
        name = row.get("Kernel Name", "?")
        total[name] += float(value) * scale
        calls[name] += 1
    if not total:
        print(f"{path}: no gpu__time_duration.sum rows")
        return 1
    print(f"{sum(total.values()):10.2f} ms in {sum(calls.values())} launches; costliest kernels:")
    for name, t in sorted(total.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{t:10.2f} ms {calls[name]:6d} x  {name[:100]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 15))

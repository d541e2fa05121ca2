#!/usr/bin/env bash
# Training speed of two griffon binaries on the same machine in the same run: each trains STEPS
# optimizer steps of the bundled model's recipe (configs/synth/select224.toml with the settings
# of the constant-rate runs, docs/SYNTH.md "Session 25") from models/default into a scratch
# folder, in alternation A B A B ... (ROUNDS rounds), and the median wall time per step and
# per-step phases of the steps after the first WARM are printed per binary (from each run's
# metrics.jsonl).
#
#   bash tools/synth/train_speed.sh OLD_BIN NEW_BIN [STEPS=40] [ROUNDS=2] [WARM=5]
#
# The same seeds everywhere, so both binaries train on the same scenes. Stop other work first
# (on this 2-core machine a background run halves every figure).
set -euo pipefail
A=$1 B=$2 STEPS=${3:-40} ROUNDS=${4:-2} WARM=${5:-5}
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
run() { # bin out
  "$1" train --config configs/synth/select224.toml --set model.init=models/default \
    --set train.lr=1e-4 --set train.region_lr=1.7e-4 --set data.synth.seed=42 --set "train.max_steps=$STEPS" \
    --set train.save_every=100000 --set 'data.synth.mix={det=0.25,vg=0.35,reg=0.2,visj=0.2}' \
    --set train.keep_checkpoints=1 --set train.ground_weight=1.0 --set train.ground_box_weight=1.0 \
    --set train.ground_name_weight=1.0 --set train.ground_positions='"choice"' --set train.schedule='"constant"' \
    --set train.ema_decay=0.998 --set "train.out=$2" >"$2.log" 2>&1
}
for r in $(seq 1 "$ROUNDS"); do
  for which in A B; do
    bin=$A; [ $which = B ] && bin=$B
    run "$bin" "$SCRATCH/$which$r"
  done
done
python3 - "$SCRATCH" "$ROUNDS" "$WARM" "$A" "$B" <<'EOF'
import json, statistics, sys
scratch, rounds, warm, a, b = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
keys = ["forward_s", "vision_s", "language_s", "backward_s", "optim_s", "data_wait_s"]
med = {}
for which, name in (("A", a), ("B", b)):
    rows, step = [], []
    for r in range(1, rounds + 1):
        with open(f"{scratch}/{which}{r}/metrics.jsonl") as f:
            run = [json.loads(l) for l in f if l.strip()]
        rows += run[warm:]
        # wall time per step: the elapsed clock between consecutive logged steps
        step += [run[i]["elapsed_s"] - run[i - 1]["elapsed_s"] for i in range(max(warm, 1), len(run))]
    med[which] = {k: statistics.median(x[k] for x in rows) for k in keys}
    med[which]["step_s"] = statistics.median(step)
    print(f"{which} {name}: {len(rows)} steps; median " + ", ".join(f"{k} {v:.3f}" for k, v in med[which].items()))
print(f"step time B / A = {med['B']['step_s'] / med['A']['step_s']:.3f}; "
      f"backward B / A = {med['B']['backward_s'] / med['A']['backward_s']:.3f}; "
      f"forward B / A = {med['B']['forward_s'] / med['A']['forward_s']:.3f}")
EOF

#!/usr/bin/env bash
# One device call for the 1022 px model (docs/SYNTH.md "Session 9"), in three parts:
#   1. the kernels and training's attention op checked on the card (griffon selfcheck, bf16);
#   2. a throughput probe: PROBE_STEPS optimizer steps of the training config under each setting
#      of SETTINGS (f32 with TF32 or bf16, micro-batch x accumulation, GRIFFON_ATTN_GRAD), the
#      samples per second of each from its metrics (first steps dropped), into $OUT/probe.tsv;
#      (SYNC_PROBE=1: the winner once more synchronised; PROFILE_TRAIN=1: one step of it under ncu)
#   3. training with the fastest setting for what is left of BUDGET seconds (a wall-clock cosine
#      schedule), then the weights and metrics packed into $OUT (tools/synth/pack.sh).
# Prepared here:
#   tools/cuda/build.sh && xz -T2 -6 -kfc target/cuda/release/griffon > target/cuda/griffon.xz
# Device call: RESIZE_FROM=models/default bash tools/synth/session1022.sh; carry
# ["target/cuda/griffon.xz"] (the bundled model resized on the machine), or INIT= a folder brought
# back by an earlier session (unpacked with tools/synth/unpack.sh, carried); timeout_s = BUDGET + 40. Back here: tools/synth/unpack.sh
# <files_at> runs/synth/NAME, then `griffon eval synth` on the CPU.
# Dry run on the CPU: DEVICE=cpu GRIFFON_BIN=target/release/griffon BUDGET=150 PROBE_STEPS=2 \
#   SETTINGS="f32:1x1:1 f32:2x1:1" SELFCHECK=0 MIN_TRAIN=10 OUT=/tmp/dry bash tools/synth/session1022.sh
set -uo pipefail
START=$(date +%s)
BUDGET=${BUDGET:-540}
OUT=${OUT:-/tmp/griffon-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/session_log.txt") 2>&1
DEVICE=${DEVICE:-cuda}
source tools/cuda/device_env.sh
date -u
INIT=${INIT:-runs/synth/default224-to1022}
CONFIG=${CONFIG:-configs/synth/from224.toml}
NAME=${NAME:-from224}
elapsed() { echo $(($(date +%s) - START)); }
if [ ! -f "$INIT/config.json" ] && [ -n "${RESIZE_FROM:-}" ]; then
  # RESIZE_FROM: a 224 px checkpoint in the repo (models/default) resized here instead of carried
  "$G" resize-tower --model "$RESIZE_FROM" --image-size 1022 --out "$INIT" > /dev/null || { echo "resize failed"; exit 1; }
  echo "$INIT: $RESIZE_FROM resized to 1022 px at $(elapsed) s"
fi
[ -f "$INIT/config.json" ] || { echo "missing $INIT (carry it, or set RESIZE_FROM)"; exit 1; }

# 1. checks (kernels, training attention, then the fixtures in bf16); SELFCHECK_FROM: the output
# of one that already ran in this call (tools/cuda/speed_probe.sh's)
if [ -n "${SELFCHECK_FROM:-}" ] && [ -f "$SELFCHECK_FROM" ]; then
  cp "$SELFCHECK_FROM" "$OUT/selfcheck_bf16.txt"
  grep -E "attention grad|FAIL|failed" "$OUT/selfcheck_bf16.txt" | head -n 12
elif [ "${SELFCHECK:-1}" = 1 ]; then
  timeout 120 "$G" selfcheck --device "$DEVICE" --dtype bf16 > "$OUT/selfcheck_bf16.txt" 2>&1
  echo "selfcheck bf16: rc $? at $(elapsed) s"
  grep -E "attention grad|FAIL|failed" "$OUT/selfcheck_bf16.txt" | head -n 12
fi

# 2. throughput probe. A setting is DTYPE:MICROxACCUM:ATTN (the same samples per step for a fair
# comparison); ATTN 0: the composed graph, 1: the attention op, 2: the op with the backward kernels
# (GRIFFON_ATTN_BWD=flash; bf16 / f16 only).
SETTINGS=${SETTINGS:-"f32:4x4:0 f32:4x4:1 f32:16x1:1 bf16:16x1:1"}
# a dtype whose attention-op checks did not all pass on the card (or did not run) trains only on
# the composed path
for dt in F32 BF16; do
  [ "${SELFCHECK:-1}" = 1 ] || break
  f=$OUT/selfcheck_bf16.txt
  low=$(echo "$dt" | tr 'A-Z' 'a-z')
  op=$(grep "attention grad: training $dt:" "$f")
  if ! echo "$op" | grep -q PASS || echo "$op" | grep -q FAIL; then
    echo "the attention op did not pass its $dt checks: dropping its $low:*:1 and $low:*:2 settings"
    SETTINGS=$(for x in $SETTINGS; do case $x in "$low":*:1 | "$low":*:2) ;; *) echo "$x" ;; esac; done | xargs)
  fi
  kern=$(grep "attention grad: training $dt backward kernel:" "$f")
  if ! echo "$kern" | grep -q PASS || echo "$kern" | grep -q FAIL; then
    echo "the backward kernels did not pass their $dt checks (or have none): dropping the $low:*:2 settings"
    SETTINGS=$(for x in $SETTINGS; do case $x in "$low":*:2) ;; *) echo "$x" ;; esac; done | xargs)
  fi
done
[ -n "$SETTINGS" ] || SETTINGS="f32:4x4:0"
PROBE_STEPS=${PROBE_STEPS:-10}
common=(--device "$DEVICE" --quiet --set "model.init=$INIT" --set train.save_every=0)
# SETS: more config overrides for every run of this call, KEY=VALUE words (e.g.
# SETS="data.synth.seed=15 train.warmup_ratio=0.01": a continued run on fresh scenes)
read -ra sets <<< "${SETS:-}"
for kv in "${sets[@]}"; do common+=(--set "$kv"); done
# cmd=(the training command of SETTING $1 writing to $2); callers add the schedule
train_cmd() {
  local dtype mb ag
  IFS=: read -r dtype mb ag <<< "$1"
  local bwd=composed
  [ "$ag" = 2 ] && bwd=flash
  cmd=(env "GRIFFON_ATTN_GRAD=$((ag > 0 ? 1 : 0))" "GRIFFON_ATTN_BWD=$bwd" "$G" train --config "$CONFIG" "${common[@]}" --set "train.dtype=$dtype"
    --set "train.batch_size=${mb%x*}" --set "train.grad_accum=${mb#*x}" --set "train.out=$2")
}
echo -e "setting\tsamples_per_s\tforward_s\tbackward_s\toptim_s\tdata_wait_s\tupload_s\tvision_s\tlanguage_s\tfinal_loss" > "$OUT/probe.tsv"
for s in $SETTINGS; do
  out=/tmp/probe-${s//:/-}
  rm -rf "$out"
  t0=$(date +%s)
  train_cmd "$s" "$out"
  timeout 150 "${cmd[@]}" --set train.schedule=steps --set "train.max_steps=$PROBE_STEPS" > "$out.log" 2>&1
  rc=$?
  echo "$s: process $(($(date +%s) - t0)) s (start-up + $PROBE_STEPS steps)"
  python3 - "$s" "$out/metrics.jsonl" "$rc" >> "$OUT/probe.tsv" <<'PY'
import json, sys
setting, path, rc = sys.argv[1], sys.argv[2], sys.argv[3]
micro, accum = setting.split(":")[1].split("x")
try:
    rows = [json.loads(l) for l in open(path)]
except OSError:
    rows = []
# drop the first steps (CUDA start, allocator warm-up): time from the end of step k to the last
k = 2 if len(rows) > 3 else 1
if rc != "0" or len(rows) <= k:
    print(f"{setting}\tfailed(rc {rc})" + "\t" * 8)
    sys.exit()
use = rows[k:]
span = use[-1]["elapsed_s"] - rows[k - 1]["elapsed_s"]
rate = len(use) * int(micro) * int(accum) / span
# (upload_s / vision_s / language_s: the forward pass's parts, logged since session 14)
mean = lambda key: sum(r.get(key, float("nan")) for r in use) / len(use)
cols = [f"{rate:.2f}"] + [f"{mean(c):.3f}" for c in ("forward_s", "backward_s", "optim_s", "data_wait_s", "upload_s", "vision_s", "language_s")]
print("\t".join([setting] + cols + [f"{rows[-1]['loss']:.4f}"]))
PY
  tail -n 1 "$OUT/probe.tsv"
  [ "$rc" = 0 ] || tail -n 5 "$out.log"
done
echo "probe done at $(elapsed) s"
cat "$OUT/probe.tsv"
best=$(python3 - "$OUT/probe.tsv" <<'PY'
import sys
best, rate = "", 0.0
for line in open(sys.argv[1]).read().splitlines()[1:]:
    f = line.split("\t")
    try:
        r = float(f[1])
    except ValueError:
        continue
    if r > rate:
        best, rate = f[0], r
print(best)
PY
)
[ -n "$best" ] || { echo "no setting trained: nothing to pack"; exit 1; }
BEST=${FORCE_SETTING:-$best}
if [ "${SYNC_PROBE:-1}" = 1 ]; then
  # the winner once more with the device synchronised after each forward pass: the true split
  # of its step between forward and backward (the unsynchronised rows time the host's enqueueing)
  rm -rf /tmp/probe-sync
  train_cmd "$BEST" /tmp/probe-sync
  GRIFFON_TRAIN_SYNC=1 timeout 150 "${cmd[@]}" --set train.schedule=steps --set "train.max_steps=$PROBE_STEPS" \
    > /tmp/probe-sync.log 2>&1 && cp /tmp/probe-sync/metrics.jsonl "$OUT/probe_sync_metrics.jsonl"
  echo "synchronised probe of $BEST: rc $? at $(elapsed) s"; tail -n 2 /tmp/probe-sync/metrics.jsonl
fi
if [ "${PROFILE_TRAIN:-0}" = 1 ] && command -v ncu > /dev/null; then
  # the kernels of one optimizer step of the winner (the third: two warm-up steps), per kernel
  # name (tools/cuda/ncu_top.py): where the training step's device time goes
  rm -rf /tmp/probe-ncu
  train_cmd "$BEST" /tmp/probe-ncu
  GRIFFON_PROFILE_STEP=3 timeout "${PROFILE_TIMEOUT:-150}" ncu --clock-control none --profile-from-start off --csv \
    --metrics gpu__time_duration.sum "${cmd[@]}" --set train.schedule=steps --set train.max_steps=3 \
    > "$OUT/ncu_train_step.csv" 2> /tmp/probe-ncu.err
  echo "ncu of one training step: rc $? at $(elapsed) s"
  python3 tools/cuda/ncu_top.py "$OUT/ncu_train_step.csv" 30 || tail -n 5 /tmp/probe-ncu.err
  gzip -f "$OUT/ncu_train_step.csv"
fi
echo "== training with $BEST"

# 3. training for the rest of the budget (20 s kept for packing)
left=$((BUDGET - $(elapsed) - 20))
[ "$left" -ge "${MIN_TRAIN:-60}" ] || { echo "only $left s left: no training"; exit 0; }
RUN=runs/synth/$NAME
train_cmd "$BEST" "$RUN"
"${cmd[@]}" --set train.schedule=time --set "train.max_time_s=$left" --set train.save_every=100
echo "training rc $? at $(elapsed) s"
tail -n 2 "$RUN/metrics.jsonl"
last=$RUN/$(cat "$RUN/latest" 2>/dev/null)
[ -d "$last" ] || { echo "no checkpoint written"; exit 1; }
OUT=$OUT bash tools/synth/pack.sh "$last" stage2="$RUN/metrics.jsonl"
date -u

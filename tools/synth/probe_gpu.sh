#!/usr/bin/env bash
# The 224 px probe on the lent GPU machine, the recipe that made the CPU model read the image
# (docs/SYNTH.md, "Stage 0"): stage 0 (configs/synth/dense224.toml: the vision tower alone on the
# dense perception loss) for T0 seconds, then stage 2 (configs/synth/probe224-dense.toml: all but
# the region encoder, dense loss kept beside the answer loss, half of the detection prompts without
# the format suffix) for T2 seconds; its weights (with the dense head) packed into $OUT
# (tools/synth/pack.sh).
#   carry ["target/cuda/griffon.xz", "runs/synth/init-224"]   (make_init.py --image-size 224)
#   bash tools/synth/probe_gpu.sh [T0=90] [T2=150] [BATCH=32]   (stage 0 runs at 2 x BATCH scenes)
#   here: tools/synth/unpack.sh <files_at> runs/synth/probe224-gpu
# INIT=runs/synth/probe224-gpu (weights brought back by an earlier session, carried) continues
# stage 2 from them with a fresh optimizer; T0 is then ignored. CONFIG2 (default
# configs/synth/probe224-dense.toml), SEED2 and LR2 choose stage 2's config, scene seed and rate;
# SETS2="key=value key=value" adds settings to stage 2 (one --set each; values without spaces),
# e.g. the grounding loss and name lens of docs/SYNTH.md sessions 16-20. Stage 2's schedule is
# always the wall clock's (a config with a step schedule, select224.toml, would otherwise be cut
# off part-way through its cosine at T2, or capped by its max_steps).
# GRIFFON_BIN=target/release/griffon DEVICE=cpu: a dry run on the CPU.
set -uo pipefail
T0=${1:-90} T2=${2:-150} BATCH=${3:-32}
OUT=${OUT:-/tmp/griffon-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/train_log.txt") 2>&1
DEVICE=${DEVICE:-cuda}
source tools/cuda/device_env.sh
S0=runs/synth/dense224-gpu-run S2=runs/synth/probe224-gpu-run
common=(--device "$DEVICE" --quiet --set train.tf32=true)
date -u
if [ -n "${INIT:-}" ]; then
  [ -f "$INIT/config.json" ] || { echo "missing $INIT (carry it)"; exit 1; }
  FROM=$INIT
else
  [ -f runs/synth/init-224/config.json ] || { echo "missing runs/synth/init-224 (carry it)"; exit 1; }
  echo "== stage 0: ${T0}s"
  $G train --config configs/synth/dense224.toml "${common[@]}" --set model.init=runs/synth/init-224 \
    --set "train.out=$S0" --set "train.max_time_s=$T0" --set "train.batch_size=$((2 * BATCH))" \
    || { echo "stage 0 failed"; exit 1; }
  tail -n 1 "$S0/metrics.jsonl"
  FROM=$S0
fi
extra2=()
for kv in ${SETS2:-}; do extra2+=(--set "$kv"); done
echo "== stage 2 from $FROM: ${T2}s ${SETS2:-}"
$G train --config "${CONFIG2:-configs/synth/probe224-dense.toml}" "${common[@]}" --set "model.init=$FROM" \
  --set "train.out=$S2" --set "train.max_time_s=$T2" --set 'train.schedule="time"' --set train.max_steps=0 --set "train.batch_size=$BATCH" \
  --set data.det_format_prob=0.5 \
  ${SEED2:+--set "data.synth.seed=$SEED2"} ${LR2:+--set "train.lr=$LR2"} "${extra2[@]}" \
  || { echo "stage 2 failed"; exit 1; }
tail -n 2 "$S2/metrics.jsonl"
bash tools/synth/pack.sh "$S2/$(cat "$S2/latest")" stage0=$S0/metrics.jsonl stage2=$S2/metrics.jsonl
date -u

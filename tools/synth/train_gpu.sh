#!/usr/bin/env bash
# One fixed-budget training run of the small synthetic-benchmark Griffon on the lent GPU machine
# (device tool), stages I -> II -> III with wall-clock cosine schedules, then the trained
# weights packed into $OUT (split into 15 MiB parts: the device returns at most 8 files of
# 16 MiB). Runs from the repo root there. Prepared here (docs/SYNTH.md):
#
#   tools/cuda/build.sh && xz -T2 -6 -kc target/cuda/release/griffon > target/cuda/griffon.xz  (device_env.sh)
#   /work/venv/bin/python tools/synth/make_init.py --out runs/synth/init-1022 --image-size 1022
#   device run, carry ["target/cuda/griffon.xz", "runs/synth/init-1022"]:
#     tools/synth/train_gpu.sh default 1022 1 4 4 40 330 60
#   here: tools/synth/unpack.sh <files_at> runs/synth/default
#
# Arguments: NAME SIZE TILES BATCH ACCUM T1 T2 T3 (seconds per stage; with SCHEDULE=steps,
# optimizer steps per stage: the resolution study gives every input size the same samples).
set -uo pipefail
NAME=${1:-default} SIZE=${2:-1022} TILES=${3:-1} BATCH=${4:-4} ACCUM=${5:-4}
T1=${6:-40} T2=${7:-330} T3=${8:-60}
OUT=${OUT:-/tmp/griffon-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/train_log.txt") 2>&1
# GRIFFON_BIN=target/release/griffon DEVICE=cpu: a dry run of this script on the CPU
DEVICE=${DEVICE:-cuda}
source tools/cuda/device_env.sh
BIN=$G
date -u
RUN=runs/synth/$NAME
# INIT=runs/synth/default (a checkpoint brought back by an earlier session, unpacked and carried)
# continues training from its weights with fresh optimizer state; a stage budget of 0 skips it.
INIT=${INIT:-runs/synth/init-$SIZE}
[ -f "$INIT/config.json" ] || { echo "missing $INIT (carry it)"; exit 1; }
SCHEDULE=${SCHEDULE:-time}
common=(--device "$DEVICE" --quiet --set "train.schedule=$SCHEDULE" --set "train.batch_size=$BATCH" --set "train.grad_accum=$ACCUM")
[ "$TILES" -gt 1 ] && common+=(--set "model.tiles=$TILES")
prev=$INIT
# T0 (env, default 0): seconds (or steps) of stage 0, the dense perception pre-training of the
# tower (configs/synth/stage0.toml), before stage I
T0=${T0:-0}
for s in 0 1 2 3; do
  t=$(eval echo \$T$s)
  [ "$t" = 0 ] && { echo "== stage $s skipped"; continue; }
  echo "== stage $s: $t ($SCHEDULE) from $prev"
  if [ "$SCHEDULE" = steps ]; then budget=(--set "train.max_steps=$t"); else budget=(--set "train.max_time_s=$t"); fi
  $BIN train --config configs/synth/stage$s.toml "${common[@]}" "${budget[@]}" --set "model.init=$prev" \
    --set "train.out=$RUN/stage$s" || { echo "stage $s failed"; break; }
  tail -n 2 "$RUN/stage$s/metrics.jsonl"
  prev=$RUN/stage$s
done
[ "$prev" = "$INIT" ] && { echo "nothing trained"; exit 1; }
last=$prev/$(cat "$prev/latest" 2>/dev/null)
bash tools/synth/pack.sh "$last" stage0=$RUN/stage0/metrics.jsonl stage1=$RUN/stage1/metrics.jsonl stage2=$RUN/stage2/metrics.jsonl stage3=$RUN/stage3/metrics.jsonl
date -u

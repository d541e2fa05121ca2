#!/usr/bin/env bash
# The learnability probe (configs/synth/probe224.toml: 224 px, objects 4x the benchmark's size, at
# most 3 per scene) on the lent GPU machine for T seconds of wall clock, then its weights packed
# into $OUT (tools/synth/pack.sh). On the CPU the probe stayed image-blind for its whole budget
# (docs/SYNTH.md); the GPU's throughput decides whether more samples make it look.
#   carry ["target/cuda/griffon.xz", "runs/synth/init-224"]   (make_init.py --image-size 224)
#   bash tools/synth/probe_gpu.sh [T=240] [BATCH=32]
#   here: tools/synth/unpack.sh <files_at> runs/synth/probe224-gpu
# INIT=runs/synth/probe224-gpu continues from weights brought back by an earlier session (fresh
# optimizer state). GRIFFON_BIN=target/release/griffon DEVICE=cpu: a dry run on the CPU.
set -uo pipefail
T=${1:-240} BATCH=${2:-32}
OUT=${OUT:-/tmp/griffon-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/train_log.txt") 2>&1
DEVICE=${DEVICE:-cuda}
source tools/cuda/device_env.sh
INIT=${INIT:-runs/synth/init-224}
[ -f "$INIT/config.json" ] || { echo "missing $INIT (carry it)"; exit 1; }
RUN=runs/synth/probe224-gpu-run
date -u
$G train --config configs/synth/probe224.toml --device "$DEVICE" --quiet --set "model.init=$INIT" \
  --set "train.out=$RUN" --set "train.max_time_s=$T" --set "train.batch_size=$BATCH" --set train.tf32=true \
  || { echo "probe training failed"; exit 1; }
tail -n 2 "$RUN/metrics.jsonl"
bash tools/synth/pack.sh "$RUN/$(cat "$RUN/latest")" probe=$RUN/metrics.jsonl
date -u

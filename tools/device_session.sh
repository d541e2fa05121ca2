#!/usr/bin/env bash
# One device call that serves both GPU issues within a 15-minute session, ordered by what the
# issues need first: the speed / parity check (tools/cuda/gpu_session.sh: selfcheck on CUDA in f32
# and bf16, our bench of gemma2-9b and llama2-13b, the PyTorch reference on the same card; BENCH=0
# skips it), then, with what is left of BUDGET seconds, training on the GPU: by default stage 2 at
# 224 px (tools/synth/probe_gpu.sh) continuing the checkpoint carried in .device/init224 (session 7:
# the bundled model's CPU parent) on fresh scenes; TRAIN=1022 runs the 1022 px stages
# (tools/synth/train_gpu.sh) from runs/synth/init-1022 (or INIT=) instead. The weights come back
# packed in $OUT (tools/synth/unpack.sh).
# Prepare here:
#   tools/cuda/build.sh && xz -T1 -6 -kc target/cuda/release/griffon > target/cuda/griffon.xz
#   cp ../shared/bench/torch_reference_bench.py .device/
#   mkdir -p .device/init224 && cp -r CHECKPOINT/. .device/init224/ && rm -f .device/init224/optimizer.safetensors
# Device call: bash tools/device_session.sh; carry ["target/cuda/griffon.xz", ".device"] (and
# "runs/synth/init-1022" with TRAIN=1022); timeout_s about BUDGET + 30.
# Session 7 (2026-11-27) ran BUDGET=540: the check took 127 s, training failed at step 1 (fixed);
# a second call trained for 515 s (docs/SYNTH.md).
set -uo pipefail
START=$(date +%s)
BUDGET=${BUDGET:-540}
[ "${BENCH:-1}" = 1 ] && CONFIGS=${CONFIGS:-gemma2-9b llama2-13b} bash tools/cuda/gpu_session.sh
left=$((BUDGET - ($(date +%s) - START) - 45))
echo "== $left s left for training"
[ "$left" -ge 60 ] || exit 0
if [ "${TRAIN:-224}" = 1022 ]; then
  # stage 0 (dense perception of the tower) first, a third of the time unless T0 says otherwise
  t0=${T0:-$((left / 3))}
  T0=$t0 bash tools/synth/train_gpu.sh default 1022 1 4 4 20 $((left - t0 - 60)) 30
else
  INIT=${INIT:-.device/init224} CONFIG2=configs/synth/probe224-dense3.toml SEED2=${SEED2:-12} \
    bash tools/synth/probe_gpu.sh 0 "$left" "${BATCH:-64}"
fi

#!/usr/bin/env bash
# One device call that serves both GPU issues within a 15-minute session, ordered by what the
# issues need first: the speed / parity check (tools/cuda/gpu_session.sh: selfcheck on CUDA in f32
# and bf16, our bench of gemma2-9b and llama2-13b, the PyTorch reference on the same card), then,
# with what is left of BUDGET seconds, stage 2 training on the GPU (tools/synth/probe_gpu.sh)
# continuing the bundled CPU-trained 224 px model (docs/SYNTH.md) on fresh scenes; its weights
# come back packed in $OUT.
# Prepare here:
#   tools/cuda/build.sh && xz -T1 -6 -kc target/cuda/release/griffon > target/cuda/griffon.xz
#   cp ../shared/bench/torch_reference_bench.py .device/
#   mkdir -p .device/init224 && cp -r runs/synth/probe224-dense3/checkpoint-2847/. .device/init224/ \
#     && rm .device/init224/optimizer.safetensors
# Device call: bash tools/device_session.sh; carry ["target/cuda/griffon.xz", ".device"];
# timeout_s about BUDGET + 30.
set -uo pipefail
START=$(date +%s)
BUDGET=${BUDGET:-540}
CONFIGS=${CONFIGS:-gemma2-9b llama2-13b} bash tools/cuda/gpu_session.sh
left=$((BUDGET - ($(date +%s) - START) - 45))
echo "== $left s left for training"
if [ "$left" -ge 60 ]; then
  INIT=${INIT:-.device/init224} CONFIG2=configs/synth/probe224-dense3.toml SEED2=12 \
    bash tools/synth/probe_gpu.sh 0 "$left" "${BATCH:-64}"
fi

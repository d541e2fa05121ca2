#!/usr/bin/env bash
# One device call that serves both GPU issues within a 15-minute session: the quick speed /
# parity check (tools/cuda/gpu_session.sh, gemma2-9b only, about 4 minutes) and then, with what is
# left, the learnability probe of the small synthetic model at 224 px (tools/synth/probe_gpu.sh):
# on the CPU it stayed image-blind for its whole budget (docs/SYNTH.md), so a few minutes at
# 1022 px would only train the answer format; the probe measures the GPU's training throughput
# and whether more samples make the model look. TRAIN=1022 runs the 1022 px stages instead.
# Carry: ["target/cuda/griffon.xz", ".device", "runs/synth/init-224"] (init-1022 with TRAIN=1022);
# timeout_s 590.
#   bash tools/device_session.sh            # T (seconds of training) defaults to 240: about 560 s in all
set -uo pipefail
QUICK=1 bash tools/cuda/gpu_session.sh
if [ "${TRAIN:-probe}" = 1022 ]; then
  bash tools/synth/train_gpu.sh default 1022 1 4 4 20 "${T:-240}" 30
else
  bash tools/synth/probe_gpu.sh "${T:-240}" 32
fi

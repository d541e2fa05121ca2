#!/usr/bin/env bash
# One device call that serves both GPU issues within a 15-minute session: the quick speed /
# parity check (tools/cuda/gpu_session.sh, gemma2-9b only, about 4 minutes) and then, with what is
# left, the 224 px probe of the small synthetic model (tools/synth/probe_gpu.sh: stage 0, the
# dense perception pre-training of the tower, then stage 2), the recipe that made the CPU model
# read the image (docs/SYNTH.md); it measures the GPU's training throughput and how far more
# samples take the model. TRAIN=1022 runs the 1022 px stages instead.
# Carry: ["target/cuda/griffon.xz", ".device", "runs/synth/init-224"] (init-1022 with TRAIN=1022);
# timeout_s 590.
#   bash tools/device_session.sh            # T0 + T2 (seconds of training) default to 90 + 150: about 560 s in all
set -uo pipefail
QUICK=1 bash tools/cuda/gpu_session.sh
if [ "${TRAIN:-probe}" = 1022 ]; then
  bash tools/synth/train_gpu.sh default 1022 1 4 4 20 "${T:-240}" 30
else
  bash tools/synth/probe_gpu.sh "${T0:-90}" "${T2:-150}" 32
fi

#!/usr/bin/env bash
# One device call that serves both GPU issues within a 15-minute session: the quick speed /
# parity check (tools/cuda/gpu_session.sh, gemma2-9b only, about 4 minutes) and then a training
# run of the small synthetic model (tools/synth/train_gpu.sh) with what is left.
# Carry: ["target/cuda/griffon.xz", ".device", "runs/synth/init-1022"]; timeout_s 590.
#   bash tools/device_session.sh            # T2 (seconds of stage II) defaults to 240: about 560 s in all
set -uo pipefail
QUICK=1 bash tools/cuda/gpu_session.sh
bash tools/synth/train_gpu.sh default 1022 1 4 4 20 "${T2:-240}" 30

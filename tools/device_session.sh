#!/usr/bin/env bash
# One device call that serves both GPU issues within a 15-minute session: the quick speed /
# parity check (tools/cuda/gpu_session.sh, gemma2-9b only, about 4 minutes) and then a training
# run of the small synthetic model (tools/synth/train_gpu.sh) with what is left.
# Carry: ["target/cuda/griffon.xz", ".device", "runs/synth/init-1022"]; timeout_s 590.
#   bash tools/device_session.sh            # T2 defaults to 200 s of stage II
set -uo pipefail
QUICK=1 bash tools/cuda/gpu_session.sh
bash tools/synth/train_gpu.sh default 1022 1 4 4 20 "${T2:-200}" 30

#!/usr/bin/env bash
# Session 32 (started at its end, for session 33 to resume): an eleventh segment (swaS) from the
# bundled model (swaR10 mean) at half the rate (detection no longer rose at 1e-4), seed 50.
set -euo pipefail
cd /work/main
G=/tmp/griffon-train-bin
$G train --config configs/synth/select224.toml --set model.init=models/default \
  --set train.lr=5e-5 --set train.region_lr=8.5e-5 --set data.synth.seed=50 --set data.synth.det_subsets=0.4 --set train.max_steps=9000 \
  --set train.save_every=300 --set 'data.synth.mix={det=0.25,vg=0.35,reg=0.2,visj=0.2}' \
  --set train.keep_checkpoints=0 --set train.ground_weight=1.0 --set train.ground_box_weight=1.0 \
  --set train.ground_name_weight=1.0 --set train.ground_positions='"choice"' --set train.schedule='"constant"' \
  --set train.ema_decay=0.998 --set train.out=runs/synth/s33-swaS

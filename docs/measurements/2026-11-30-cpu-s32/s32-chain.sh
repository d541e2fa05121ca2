#!/usr/bin/env bash
# Session 31 (started at its end, for session 32 to resume): a tenth segment (swaR) from the bundled model (swaQ10 mean), as swaQ.
set -euo pipefail
cd /work/main
G=/tmp/griffon-train-bin
$G train --config configs/synth/select224.toml --set model.init=models/default \
  --set train.lr=1e-4 --set train.region_lr=1.7e-4 --set data.synth.seed=49 --set data.synth.det_subsets=0.4 --set train.max_steps=9000 \
  --set train.save_every=300 --set 'data.synth.mix={det=0.25,vg=0.35,reg=0.2,visj=0.2}' \
  --set train.keep_checkpoints=0 --set train.ground_weight=1.0 --set train.ground_box_weight=1.0 \
  --set train.ground_name_weight=1.0 --set train.ground_positions='"choice"' --set train.schedule='"constant"' \
  --set train.ema_decay=0.998 --set train.out=runs/synth/s32-swaR

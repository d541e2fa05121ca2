#!/usr/bin/env bash
# After stopping swaR: raw weights of its last ten checkpoints, the means of the last six and ten,
# both evaluated on the 800 test scenes (in parallel), then two / one categories per call for swaR10.
# The bundled model (swaQ10) results are runs/synth/t800*-s31-swaQ10 (same scoring).
set -euo pipefail
cd /work/main
P=/work/venv/bin/python
B=${B:-/tmp/griffon-eval-bin10}
L=$(cat runs/synth/s32-swaR/latest); N=${L#checkpoint-}
for s in $(seq $((N-2700)) 300 $N); do
  [ -d runs/synth/s32-swaR-raw$s ] || $P tools/synth/raw_weights.py runs/synth/s32-swaR/checkpoint-$s runs/synth/s32-swaR-raw$s
done
six=$(for s in $(seq $((N-1500)) 300 $N); do echo runs/synth/s32-swaR-raw$s; done)
ten=$(for s in $(seq $((N-2700)) 300 $N); do echo runs/synth/s32-swaR-raw$s; done)
$P tools/synth/average.py runs/synth/s32-swaR6 $six
$P tools/synth/average.py runs/synth/s32-swaR10 $ten
echo "N=$N"
ev() { # model out [args...]
  local m=$1 o=$2; shift 2
  $B eval synth --model $m --data data/synth224-800 --images data/synth224-800 --out runs/synth/$o \
    --max-new-tokens 256 --quiet "$@" > runs/synth/$o.log 2>&1
}
show() { echo "$1"; python3 -c "import json;m=json.load(open('runs/synth/$1/synth_metrics.json'));print({k:round(v,4) for k,v in m.items() if isinstance(v,float)})"; }
ev runs/synth/s32-swaR6 t800-s32-swaR6 & ev runs/synth/s32-swaR10 t800-s32-swaR10 & wait
show t800-s32-swaR6; show t800-s32-swaR10
ev runs/synth/s32-swaR10 t800c2-s32-swaR10 --tasks detection --chunk 2 & ev runs/synth/s32-swaR10 t800c1-s32-swaR10 --tasks detection --chunk 1 & wait
for o in t800c2-s32-swaR10 t800c1-s32-swaR10 t800-s31-swaQ10 t800c2-s31-swaQ10 t800c1-s31-swaQ10; do show $o; done

#!/usr/bin/env bash
# After stopping swaQ: raw weights of its last ten checkpoints, the means of the last six and ten,
# both evaluated on the 800 test scenes (in parallel) with session 31's scoring (COCO takes back
# repeated boxes), and the bundled model (swaP10) re-scored with it for the comparison.
set -euo pipefail
cd /work/main
P=/work/venv/bin/python
B=/tmp/griffon-eval-bin8
L=$(cat runs/synth/s31-swaQ/latest); N=${L#checkpoint-}
for s in $(seq $((N-2700)) 300 $N); do
  [ -d runs/synth/s31-swaQ-raw$s ] || $P tools/synth/raw_weights.py runs/synth/s31-swaQ/checkpoint-$s runs/synth/s31-swaQ-raw$s
done
six=$(for s in $(seq $((N-1500)) 300 $N); do echo runs/synth/s31-swaQ-raw$s; done)
ten=$(for s in $(seq $((N-2700)) 300 $N); do echo runs/synth/s31-swaQ-raw$s; done)
$P tools/synth/average.py runs/synth/s31-swaQ6 $six
$P tools/synth/average.py runs/synth/s31-swaQ10 $ten
echo "N=$N"
ev() { # model out [args...]
  local m=$1 o=$2; shift 2
  $B eval synth --model $m --data data/synth224-800 --images data/synth224-800 --out runs/synth/$o \
    --max-new-tokens 256 --quiet "$@" > runs/synth/$o.log 2>&1
}
show() { echo "$1"; python3 -c "import json;m=json.load(open('runs/synth/$1/synth_metrics.json'));print({k:round(v,4) for k,v in m.items() if isinstance(v,float)})"; }
ev runs/synth/s31-swaQ6 t800-s31-swaQ6 & ev runs/synth/s31-swaQ10 t800-s31-swaQ10 & wait
show t800-s31-swaQ6; show t800-s31-swaQ10
# the bundled model under the new scoring (detection and exemplar box matching change; REC,
# counting and REG do not), and two / one categories per call
ev models/default t800-s31-swaP10 --tasks detection,count_any & ev runs/synth/s31-swaQ10 t800c2-s31-swaQ10 --tasks detection --chunk 2 & wait
ev models/default t800c2-s31-swaP10 --tasks detection --chunk 2 & ev runs/synth/s31-swaQ10 t800c1-s31-swaQ10 --tasks detection --chunk 1 & wait
ev models/default t800c1-s31-swaP10 --tasks detection --chunk 1
for o in t800-s31-swaP10 t800c2-s31-swaQ10 t800c2-s31-swaP10 t800c1-s31-swaQ10 t800c1-s31-swaP10; do show $o; done

#!/usr/bin/env bash
# After stopping swaP: raw weights of its last ten checkpoints, the means of the last six and ten,
# and both evaluated on the 800 test scenes (in parallel).
set -euo pipefail
cd /work/main
P=/work/venv/bin/python
L=$(cat runs/synth/s30-swaP/latest); N=${L#checkpoint-}
for s in $(seq $((N-2700)) 300 $N); do
  [ -d runs/synth/s30-swaP-raw$s ] || $P tools/synth/raw_weights.py runs/synth/s30-swaP/checkpoint-$s runs/synth/s30-swaP-raw$s
done
six=$(for s in $(seq $((N-1500)) 300 $N); do echo runs/synth/s30-swaP-raw$s; done)
ten=$(for s in $(seq $((N-2700)) 300 $N); do echo runs/synth/s30-swaP-raw$s; done)
$P tools/synth/average.py runs/synth/s30-swaP6 $six
$P tools/synth/average.py runs/synth/s30-swaP10 $ten
echo "N=$N"
for m in swaP6 swaP10; do
  /tmp/griffon-eval-bin6 eval synth --model runs/synth/s30-$m --data data/synth224-800 --images data/synth224-800 \
    --out runs/synth/t800-s30-$m --max-new-tokens 256 --quiet > runs/synth/t800-s30-$m.log 2>&1 &
done
wait
for m in swaP6 swaP10; do echo $m; python3 -c "import json;m=json.load(open('runs/synth/t800-s30-$m/synth_metrics.json'));print({k:round(v,4) for k,v in m.items() if isinstance(v,float)})"; done
# detection asked two and one category per call (the subsets this segment trains)
for c in 2 1; do
  for m in swaP6 swaP10; do
    /tmp/griffon-eval-bin6 eval synth --model runs/synth/s30-$m --data data/synth224-800 --images data/synth224-800 \
      --out runs/synth/t800c$c-s30-$m --max-new-tokens 256 --quiet --tasks detection --chunk $c > runs/synth/t800c$c-s30-$m.log 2>&1 &
  done
  wait
done
for c in 2 1; do for m in swaP6 swaP10; do echo "chunk $c $m"; python3 -c "import json;m=json.load(open('runs/synth/t800c$c-s30-$m/synth_metrics.json'));print({k:round(v,4) for k,v in m.items() if isinstance(v,float)})"; done; done

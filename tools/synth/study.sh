#!/usr/bin/env bash
# The resolution study's training runs (docs/SYNTH.md "The resolution study") in one device call:
# for each run NAME:PX:TILES of RUNS, the bundled 224 px model (SRC, default models/default: in the
# repo, nothing to carry; its dense head starts fresh, the same for every run) with its main tower
# resized to PX on the machine (griffon resize-tower), then STEPS optimizer steps of
# configs/synth/from224.toml on the same scene stream (16 samples per step: SETTING's micro-batch
# x accumulation), the input at PX (TILES x TILES tiles of PX when TILES > 1: the patch-partition
# baseline; the dense loss then takes each tile's own targets), then its weights packed as
# $OUT/NAME.tar.part-NN. Three runs fit one call's return (8 files, 64 MiB: about 19 MB each).
# Same samples for every run, so a run at a lower resolution takes less device time.
# Prepared here: tools/cuda/build.sh && xz -T2 -6 -kfc target/cuda/release/griffon > target/cuda/griffon.xz
# Device call: RUNS="r252:252:1 r1022:1022:1 t504:504:2" STEPS=N bash tools/synth/study.sh;
#   carry ["target/cuda/griffon.xz"]; timeout_s: the runs' time + 60.
# Back here, per run: PACK=NAME tools/synth/unpack.sh <files_at> runs/synth/study-NAME, then
#   griffon eval synth --model runs/synth/study-NAME --data data/synth --images data/synth \
#     --out runs/synth/study-NAME-eval --max-new-tokens 1024
#   and tools/synth/resolution_table.py over the eval folders.
# CONFIG (default configs/synth/from224.toml) picks the scene distribution and optimizer settings;
# the CPU pilot of session 11 (docs/SYNTH.md) ran
#   DEVICE=cpu GRIFFON_BIN=target/release/griffon CONFIG=configs/synth/study-pilot.toml \
#   RUNS="r224:224:1 r448:448:1 t224:224:2 r336:336:1" STEPS=560 SETTING=f32:8x1:1 OUT=/tmp/pilot-out
# Dry run on the CPU: DEVICE=cpu GRIFFON_BIN=target/release/griffon RUNS="r112:112:1 t56:56:2" STEPS=2 \
#   SETTING=f32:1x1:1 OUT=/tmp/dry-study bash tools/synth/study.sh
set -uo pipefail
START=$(date +%s)
OUT=${OUT:-/tmp/griffon-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/study_log.txt") 2>&1
DEVICE=${DEVICE:-cuda}
source tools/cuda/device_env.sh
date -u
SRC=${SRC:-models/default}
RUNS=${RUNS:-"r252:252:1 r1022:1022:1 t504:504:2"}
STEPS=${STEPS:-150}
SETTING=${SETTING:-f32:16x1:1}
CONFIG=${CONFIG:-configs/synth/from224.toml}
[ -f "$SRC/config.json" ] || { echo "missing $SRC (carry it)"; exit 1; }
IFS=: read -r dtype mb ag <<< "$SETTING"
for r in $RUNS; do
  IFS=: read -r name px tiles <<< "$r"
  init=/tmp/study-init-$name
  rm -rf "$init"
  "$G" resize-tower --model "$SRC" --image-size "$px" --out "$init" || { echo "$name: resize failed"; continue; }
  run=runs/synth/study-$name
  rm -rf "$run"
  echo "== $name: $px px, $tiles x $tiles tiles, $STEPS steps ($SETTING) at $(($(date +%s) - START)) s"
  GRIFFON_ATTN_GRAD=$ag "$G" train --config "$CONFIG" --device "$DEVICE" --quiet \
    --set "model.init=$init" --set "model.tiles=$tiles" \
    --set train.schedule=steps --set "train.max_steps=$STEPS" --set "train.dtype=$dtype" \
    --set "train.batch_size=${mb%x*}" --set "train.grad_accum=${mb#*x}" --set "train.out=$run" \
    --set train.save_every=0 || { echo "$name: training failed"; continue; }
  tail -n 1 "$run/metrics.jsonl"
  PACK=$name OUT=$OUT bash tools/synth/pack.sh "$run/$(cat "$run/latest")" stage2="$run/metrics.jsonl"
done
echo "done at $(($(date +%s) - START)) s"
date -u

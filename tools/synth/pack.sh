#!/usr/bin/env bash
# Packs a trained checkpoint (without its optimizer state) and the metrics of its run(s) into
# $OUT/$PACK.tar.part-NN (PACK=pack unless set: several runs can share one $OUT), 15 MiB each
# (the device tool returns at most 8 files of 16 MiB, 64 MiB in all).
# Used by train_gpu.sh and probe_gpu.sh on the GPU machine; tools/synth/unpack.sh reverses it.
#   pack.sh CHECKPOINT_DIR METRICS_NAME=FILE...   e.g. pack.sh runs/x/stage3/checkpoint-9 stage3=runs/x/stage3/metrics.jsonl
set -uo pipefail
ckpt=$1; shift
OUT=${OUT:-/tmp/griffon-out}
echo "== packing $ckpt"
rm -rf /tmp/pack /tmp/pack.tar; mkdir -p /tmp/pack/metrics
for m in "$@"; do
  [ -f "${m#*=}" ] && cp "${m#*=}" "/tmp/pack/metrics/${m%%=*}.jsonl"
done
tar -C /tmp/pack -cf /tmp/pack.tar metrics
tar -C "$ckpt" -rf /tmp/pack.tar --exclude='optimizer.safetensors' .
split -b 15M -d /tmp/pack.tar "$OUT/${PACK:-pack}.tar.part-"
ls -la "$OUT"

#!/usr/bin/env bash
# Copies what the engine reads from a trained checkpoint (config, weights, tokenizer, the towers'
# config folders; not the optimizer state nor the dense head) into models/default, the model
# `griffon` uses when neither --model nor $GRIFFON_MODEL is given, and the bundled sample scene
# into examples/synth/. Provenance and scores go in models/default/README.md (docs/SYNTH.md).
#   tools/synth/bundle_default.sh CHECKPOINT [SCENE.png]
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 CHECKPOINT [SCENE.png]" >&2; exit 2; }
CKPT=$1 DEST=models/default
for f in config.json model.safetensors tokenizer.json tokenizer_config.json; do
  [ -f "$CKPT/$f" ] || { echo "$CKPT/$f is missing" >&2; exit 1; }
done
size=$(stat -c %s "$CKPT/model.safetensors")
[ "$size" -le $((50 * 1024 * 1024)) ] || { echo "$CKPT/model.safetensors is $size bytes, over the 50 MB the repo allows" >&2; exit 1; }
# replace everything but the hand-written README.md
mkdir -p $DEST && find $DEST -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
cp "$CKPT"/{config.json,model.safetensors,tokenizer.json,tokenizer_config.json} $DEST/
for d in "$CKPT"/*/; do
  [ -f "$d/config.json" ] && mkdir -p "$DEST/$(basename "$d")" && cp "$d/config.json" "$DEST/$(basename "$d")/"
done
if [ $# -ge 2 ]; then
  mkdir -p examples/synth && cp "$2" examples/synth/
fi
ls -la $DEST

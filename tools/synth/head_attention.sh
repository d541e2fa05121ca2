#!/usr/bin/env bash
# Where one LLM attention head looks while a model writes REC boxes (docs/SYNTH.md, session 16).
# Runs the trainer on fresh 224 px REC scenes (configs/synth/region224.toml's domain, scene seed
# 99, REC only, batch 8) at a learning rate of 1e-12 (the weights do not move: a measurement, not
# training) with the grounding loss on for head HEAD of layer LAYER, and prints the means of the
# metrics it logs: `ground` (-log of the head's attention on the referred object's tokens),
# `own` / `other` (its attention on the referred object's tokens / on the other objects' tokens,
# at the answer positions of scenes holding other objects) and the answer
# loss beside it. KEYS=all (default: the head's whole causal row, what it really reads) or
# KEYS=image (its attention renormalised over the image tokens, as the first probes were trained).
#   tools/synth/head_attention.sh MODEL OUT_DIR [LAYER=1] [HEAD=0] [STEPS=80]
#   e.g. tools/synth/head_attention.sh runs/synth/region224/checkpoint-4254 /tmp/ha 1 0
# GRIFFON_BIN (default target/release/griffon).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 MODEL OUT_DIR [LAYER=1] [HEAD=0] [STEPS=80]" >&2
  exit 2
fi
MODEL=$1 OUT=$2 LAYER=${3:-1} HEAD=${4:-0} STEPS=${5:-80}
BIN=${GRIFFON_BIN:-target/release/griffon}
KEYS=${KEYS:-all}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
[ -x "$BIN" ] || { echo "$0: no griffon binary at $BIN (cargo build --release, or set GRIFFON_BIN)" >&2; exit 2; }
[ -f "$MODEL/config.json" ] || { echo "$0: $MODEL holds no config.json" >&2; exit 2; }
# OUT is replaced only when this tool wrote it (its marker file), never another folder: a
# training run's output looks the same (metrics.jsonl, checkpoint-N)
if [ -e "$OUT" ] && [ ! -e "$OUT/.head_attention" ]; then
  echo "$0: $OUT exists and was not written by this tool; give a new folder" >&2
  exit 2
fi
rm -rf "$OUT"
mkdir -p "$OUT"
touch "$OUT/.head_attention"
# model.init and train.out resolve against the config's folder unless absolute
abs() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
if ! "$BIN" train --config "$ROOT/configs/synth/region224.toml" --set "model.init=\"$(abs "$MODEL")\"" \
  --set 'data.synth.mix={vg=1.0}' --set data.synth.region_naming=0.0 \
  --set 'train.trainable=["llm","region_projector"]' --set data.synth.seed=99 \
  --set train.schedule=steps --set "train.max_steps=$STEPS" --set train.max_time_s=0 \
  --set train.save_every=0 --set train.lr=1e-12 --set train.warmup_ratio=0 \
  --set train.ground_weight=1.0 --set "train.ground_layer=$LAYER" --set "train.ground_head=$HEAD" \
  --set "train.ground_keys=\"$KEYS\"" --set "train.out=\"$(abs "$OUT")\"" > "$OUT.log" 2>&1; then
  echo "$0: griffon train failed, see $OUT.log:" >&2
  tail -3 "$OUT.log" >&2
  exit 1
fi
python3 - "$OUT/metrics.jsonl" "$MODEL" "$LAYER" "$HEAD" "$KEYS" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def mean(k):
    v = [r[k] for r in rows if k in r]
    return round(sum(v) / len(v), 4) if v else None
if mean("ground") is None:
    sys.exit(f"{sys.argv[1]}: no step logged a grounding loss (no REC answers with boxes?)")
print(json.dumps({"model": sys.argv[2], "layer": int(sys.argv[3]), "head": int(sys.argv[4]), "keys": sys.argv[5], "steps": len(rows),
                  "ground": mean("ground"), "own": mean("ground_own"), "other": mean("ground_other"),
                  "answer_loss": round(mean("loss") - mean("ground"), 4)}))
EOF

#!/usr/bin/env bash
# Reassembles what tools/synth/train_gpu.sh packed: unpack.sh FILES_AT DEST
# -> DEST/ (a checkpoint the engine loads) and DEST/metrics/stage{1,2,3}.jsonl. PACK=NAME picks
# the run NAME of a folder holding several (tools/synth/study.sh).
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 FILES_AT DEST" >&2; exit 2; }
mkdir -p "$2"
cat "$1"/"${PACK:-pack}".tar.part-* | tar -C "$2" -xf -
[ -f "$1/train_log.txt" ] && cp "$1/train_log.txt" "$2/train_log.txt"
ls -la "$2"

#!/usr/bin/env bash
# The prepared device check for a lent GPU machine (no cargo there). Build here first:
#   tools/cuda/build.sh
# then run through the device tool, carrying target/cuda/release/griffon, e.g.
#   command: bash tools/cuda/gpu_session.sh   carry: ["target/cuda/release/griffon"]   timeout_s: ~420
# It writes everything under $OUT: the fixture check on CUDA (f32 and bf16), our benchmark of the
# released shapes, and the PyTorch reference benchmark on the same card in the same call.
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
OUT=${OUT:-out}
mkdir -p "$OUT"
G=target/cuda/release/griffon
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1
for d in f32 bf16; do
  timeout 120 $G selfcheck --device cuda --dtype $d --json > "$OUT/selfcheck_cuda_$d.json" 2> "$OUT/selfcheck_cuda_$d.err"
done
for c in gemma2-9b llama2-13b eva02-llama2-13b; do
  timeout 150 $G bench --config $c --random-weights --device cuda --dtype bf16 --json > "$OUT/bench_$c.json" 2> "$OUT/bench_$c.err"
done
REF=$(ls shared/bench/torch_reference_bench.py ../shared/bench/torch_reference_bench.py 2>/dev/null | head -n 1)
if [ -n "$REF" ] && python3 -c "import torch, transformers" 2>/dev/null; then
  timeout 240 python3 "$REF" --llm gemma2-9b --attn sdpa --out "$OUT" > "$OUT/torch.log" 2>&1
else
  echo "no torch/transformers on this machine: reference numbers from ../shared/bench/README.md" > "$OUT/torch.log"
fi
ls -la "$OUT"

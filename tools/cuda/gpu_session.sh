#!/usr/bin/env bash
# The prepared speed / parity check for a lent GPU machine (no cargo there). Build here first:
#   tools/cuda/build.sh && xz -T2 -6 -kc target/cuda/release/griffon > target/cuda/griffon.xz
#   mkdir -p .device && cp ../shared/bench/torch_reference_bench.py .device/   (../shared does not travel)
# then through the device tool:
#   command: bash tools/cuda/gpu_session.sh   carry: ["target/cuda/griffon.xz", ".device"]   timeout_s: ~420
# Knobs: SELFCHECK_DTYPES="" skips the fixture check, REF_BENCH=0 the PyTorch reference, PROFILE=0
# the ncu profile of the vision encoder. QUICK=1 benchmarks gemma2-9b alone (to leave time for tools/synth/train_gpu.sh in the same
# session: tools/device_session.sh runs both).
# $OUT gets two files (the device returns at most 8): bench_log.txt and results.tar with the fixture check
# on CUDA (f32 and bf16), our benchmark of the released shapes, and the PyTorch reference
# benchmark on the same card in the same call.
set -uo pipefail
OUT=${OUT:-/tmp/griffon-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/bench_log.txt") 2>&1
source tools/cuda/device_env.sh
R=/tmp/results
rm -rf $R && mkdir -p $R
date -u
for d in ${SELFCHECK_DTYPES-f32 bf16}; do
  timeout 60 "$G" selfcheck --device cuda --dtype $d --json > "$R/selfcheck_cuda_$d.json" 2> "$R/selfcheck_cuda_$d.err"
  echo "selfcheck $d: rc $?"; tail -c 600 "$R/selfcheck_cuda_$d.err"; head -c 1500 "$R/selfcheck_cuda_$d.json"; echo
done
configs=${CONFIGS:-gemma2-9b llama2-13b eva02-llama2-13b}
[ "${QUICK:-0}" = 1 ] && configs=gemma2-9b
for c in $configs; do
  # peak GPU memory (the bench reports resident memory only on the CPU) and GPU utilisation:
  # sample nvidia-smi every 100 ms (a decode that leaves the GPU idle is bound by the host)
  nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader,nounits -lms 100 > "$R/mem_$c.csv" 2>/dev/null &
  sampler=$!
  timeout 150 "$G" bench --config $c --random-weights --device cuda --dtype bf16 --json > "$R/bench_$c.json" 2> "$R/bench_$c.err"
  rc=$?
  kill $sampler 2>/dev/null
  echo "bench $c: rc $rc, peak GPU memory $(awk -F', ' '$1>m{m=$1} END{print m}' "$R/mem_$c.csv") MiB"
  cat "$R/bench_$c.json"; tail -c 1200 "$R/bench_$c.err"
done
if [ "${PROFILE:-1}" = 1 ] && command -v ncu >/dev/null; then
  # where the vision encoder's time goes, per kernel (bench --only vision --quick: the weights'
  # random init, then three encoder forwards; one metric keeps the profiler's replays short;
  # --csv gives one row per launch)
  timeout 150 ncu --csv --metrics gpu__time_duration.sum \
    "$G" bench --config gemma2-9b --random-weights --device cuda --dtype bf16 --only vision --quick \
    > "$R/ncu_vision.csv" 2> "$R/ncu_vision.err"
  echo "ncu vision: rc $?"
  python3 tools/cuda/ncu_top.py "$R/ncu_vision.csv" || { tail -n 5 "$R/ncu_vision.csv"; tail -n 20 "$R/ncu_vision.err"; }
fi
REF=$(ls .device/torch_reference_bench.py shared/bench/torch_reference_bench.py 2>/dev/null | head -n 1)
if [ "${REF_BENCH:-1}" = 0 ]; then
  echo "torch reference skipped (REF_BENCH=0)"
elif [ -n "$REF" ]; then
  timeout 200 python3 "$REF" --llm gemma2-9b --attn sdpa --out "$R" > "$R/torch.log" 2>&1
  echo "torch reference: rc $?"; tail -n 20 "$R/torch.log"
else
  echo "torch_reference_bench.py was not carried (.device/)"
fi
tar -C /tmp -cf "$OUT/results.tar" results
date -u

#!/usr/bin/env bash
# A short device call for the speed issue (session 8): checks the fused attention kernel
# (model/kernels/flash_attn.cu) against the composed attention and the parity fixtures on CUDA,
# benchmarks Gemma-2-9B shapes with the kernel and without it (GRIFFON_FLASH=0) in the same call,
# decode with the kernel (GRIFFON_FLASH_DECODE=1), Llama-2-13B's prefill, and profiles one
# prefill and one vision forward per kernel with ncu (GRIFFON_PROFILE_PART: only that run is
# inside the profiler's capture range). Build here first:
#   tools/cuda/build.sh && xz -T2 -6 -kc target/cuda/release/griffon > target/cuda/griffon.xz
# Device call: bash tools/cuda/speed_probe.sh; carry ["target/cuda/griffon.xz"]; timeout ~300.
# Knobs: NCU=0 skips the profiles.
set -uo pipefail
OUT=${OUT:-/tmp/griffon-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/probe_log.txt") 2>&1
source tools/cuda/device_env.sh
R=/tmp/probe
rm -rf $R && mkdir -p $R
date -u
timeout 90 "$G" selfcheck --device cuda --dtype bf16 > "$R/selfcheck_bf16.txt" 2>&1
echo "selfcheck bf16: rc $?"; cat "$R/selfcheck_bf16.txt" | tail -n 20
bench() {  # name, env..., -- args
  local name=$1; shift
  env "$@" timeout 120 "$G" bench --random-weights --device cuda --dtype bf16 --json ${ARGS} > "$R/bench_$name.json" 2> "$R/bench_$name.err"
  echo "bench $name: rc $?"; grep "^bench" "$R/bench_$name.err"; tail -n 3 "$R/bench_$name.err" | grep -v "^bench"
}
ARGS="--config gemma2-9b --only vision" bench vision_composed GRIFFON_FLASH=0
ARGS="--config gemma2-9b" bench gemma2-9b GRIFFON_FLASH=1
ARGS="--config gemma2-9b --only prefill" bench prefill_composed GRIFFON_FLASH=0
ARGS="--config gemma2-9b --only decode" bench decode_flash GRIFFON_FLASH_DECODE=1
ARGS="--config llama2-13b --only prefill" bench llama_prefill GRIFFON_FLASH=1
if [ "${NCU:-1}" = 1 ] && command -v ncu >/dev/null; then
  for part in prefill vision; do
    GRIFFON_PROFILE_PART=$part timeout 150 ncu --clock-control none --profile-from-start off --csv \
      --metrics gpu__time_duration.sum "$G" bench --config gemma2-9b --random-weights --device cuda --dtype bf16 \
      --only $part --quick > "$R/ncu_$part.csv" 2> "$R/ncu_$part.err"
    echo "ncu $part: rc $?"
    python3 tools/cuda/ncu_top.py "$R/ncu_$part.csv" 25 || { tail -n 5 "$R/ncu_$part.csv"; tail -n 20 "$R/ncu_$part.err"; }
    gzip -f "$R/ncu_$part.csv"
  done
fi
date -u
tar -C /tmp -czf "$OUT/probe.tgz" probe

#!/usr/bin/env bash
# A short device call for the speed issue (session 8): checks the fused attention kernel
# (model/kernels/flash_attn.cu) against the composed attention and the parity fixtures on CUDA,
# benchmarks Gemma-2-9B shapes with the kernel and without it (GRIFFON_FLASH=0) in the same call,
# decode with the kernel (GRIFFON_FLASH_DECODE=1), Llama-2-13B's prefill, and profiles one
# prefill and one vision forward per kernel with ncu (GRIFFON_PROFILE_PART: only that run is
# inside the profiler's capture range). Build here first:
#   tools/cuda/build.sh && xz -T2 -6 -kc target/cuda/release/griffon > target/cuda/griffon.xz
# Device call: bash tools/cuda/speed_probe.sh; carry ["target/cuda/griffon.xz"]; timeout ~300.
# Knobs: NCU=0 skips the profiles, NCU_PARTS picks them (prefill vision decode), NCU_DETAIL=0 the
# detailed profile of one attention launch; CALL=1 / 2 / 3 the benches of session 8's calls, CALL=4
# the kernel variants prepared for session 10 (GRIFFON_FLASH_KERNEL, GRIFFON_DECODE_CHUNK,
# GRIFFON_NORM, GRIFFON_FUSED_VEC: docs/PERFORMANCE.md; their winners are the defaults since), CALL=5
# the defaults against session 8's kernels and the decode step's norms folded into its matmuls;
# REF_BENCH=1 runs the PyTorch reference (carry .device/torch_reference_bench.py); TRAIN_UNTIL=T
# trains at 1022 px until T (carry runs/synth/init-1022).
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
# SPEED_UNTIL (seconds since the epoch): checks and benches that would start later are skipped
# (a call that shares its device time with training)
late() { [ -n "${SPEED_UNTIL:-}" ] && [ "$(date +%s)" -ge "$SPEED_UNTIL" ] && echo "$1: skipped (SPEED_UNTIL)"; }
bench() {  # name, env..., -- args
  local name=$1; shift
  late "bench $name" && return
  env "$@" timeout 120 "$G" bench --random-weights --device cuda --dtype bf16 --json ${ARGS} > "$R/bench_$name.json" 2> "$R/bench_$name.err"
  echo "bench $name: rc $?"; grep "^bench" "$R/bench_$name.err"; tail -n 3 "$R/bench_$name.err" | grep -v "^bench"
}
# session 8, call 1: the attention kernel against the composed path; call 2: the fused
# norm / activation / bias kernels (GRIFFON_FUSED=0 turns them off) on top of it
if [ "${CALL:-2}" = 1 ]; then
  ARGS="--config gemma2-9b --only vision" bench vision_composed GRIFFON_FLASH=0
  ARGS="--config gemma2-9b" bench gemma2-9b GRIFFON_FLASH=1
  ARGS="--config gemma2-9b --only prefill" bench prefill_composed GRIFFON_FLASH=0
  ARGS="--config gemma2-9b --only decode" bench decode_flash GRIFFON_FLASH_DECODE=1
  ARGS="--config llama2-13b --only prefill" bench llama_prefill GRIFFON_FLASH=1
elif [ "${CALL:-2}" = 2 ]; then
  ARGS="--config gemma2-9b" bench gemma2-9b GRIFFON_FUSED=1
  ARGS="--config gemma2-9b --only vision" bench vision_unfused GRIFFON_FUSED=0
  ARGS="--config gemma2-9b --only prefill" bench prefill_unfused GRIFFON_FUSED=0
  ARGS="--config llama2-13b" bench llama2-13b GRIFFON_FUSED=1
elif [ "${CALL:-2}" = 4 ]; then
  # prepared in session 8 for the next session: the kernel variants (each checked first), after
  # the default kernels' figures (decode with the greedy-pick fix)
  ARGS="--config gemma2-9b" bench gemma2-9b GRIFFON_FUSED=1
  for env in "GRIFFON_FLASH_KERNEL=o4 GRIFFON_DECODE_CHUNK=32 GRIFFON_NORM=regs GRIFFON_FUSED_VEC=1" "GRIFFON_FLASH_KERNEL=n16 GRIFFON_DECODE_CHUNK=64" "GRIFFON_FLASH_KERNEL=v2"; do
    late "selfcheck with $env" && continue
    env $env timeout 90 "$G" selfcheck --device cuda --dtype bf16 > "$R/selfcheck_variants.txt" 2>&1
    echo "selfcheck with $env: rc $?"; grep -E "FAIL|fixture cases failed|checks failed" "$R/selfcheck_variants.txt" | head -n 5
  done
  ARGS="--config gemma2-9b --only vision" bench vision_o4 GRIFFON_FLASH_KERNEL=o4
  ARGS="--config gemma2-9b --only vision" bench vision_v2 GRIFFON_FLASH_KERNEL=v2
  ARGS="--config gemma2-9b --only prefill" bench prefill_v2 GRIFFON_FLASH_KERNEL=v2
  ARGS="--config gemma2-9b --only prefill" bench prefill_n16 GRIFFON_FLASH_KERNEL=n16
  ARGS="--config gemma2-9b --only prefill" bench prefill_normregs GRIFFON_NORM=regs
  ARGS="--config gemma2-9b --only prefill" bench prefill_vec GRIFFON_FUSED_VEC=1
  ARGS="--config gemma2-9b --only vision" bench vision_vec GRIFFON_FUSED_VEC=1
  ARGS="--config gemma2-9b --only decode" bench decode_c32 GRIFFON_DECODE_CHUNK=32
  ARGS="--config gemma2-9b --only decode" bench decode_c64 GRIFFON_DECODE_CHUNK=64
  ARGS="--config gemma2-9b --only decode" bench decode_normregs GRIFFON_NORM=regs
elif [ "${CALL:-2}" = 5 ]; then
  # session 10's defaults (o4 / n16 attention, two-wide bias and gated kernels, norm rows in
  # registers, 64-key decode chunks) against session 8's kernels in the same call
  # and the decode step with its RMSNorms folded into the matmuls (GRIFFON_NORM_GEMV=1: the
  # fixtures' greedy answers take that path in their decode steps)
  ARGS="--config gemma2-9b" bench gemma2-9b GRIFFON_FUSED=1
  if ! late "selfcheck with GRIFFON_NORM_GEMV=1"; then
    GRIFFON_NORM_GEMV=1 timeout 90 "$G" selfcheck --device cuda --dtype bf16 > "$R/selfcheck_normgemv.txt" 2>&1
    echo "selfcheck with GRIFFON_NORM_GEMV=1: rc $?"; grep -E "folded|FAIL|failed|greedy" "$R/selfcheck_normgemv.txt" | head -n 12
  fi
  ARGS="--config gemma2-9b --only decode" bench decode_normgemv GRIFFON_NORM_GEMV=1
  ARGS="--config gemma2-9b --only decode" bench decode_gemvall GRIFFON_NORM_GEMV=all
  ARGS="--config gemma2-9b" bench gemma2-9b_s8kernels GRIFFON_FLASH_KERNEL=base GRIFFON_FUSED_VEC=0 GRIFFON_NORM=loop GRIFFON_DECODE_CHUNK=128
  ARGS="--config llama2-13b" bench llama2-13b GRIFFON_FUSED=1
  ARGS="--config llama2-13b --only decode" bench llama_decode_normgemv GRIFFON_NORM_GEMV=1
else
  # call 3: the final figures (pipelined attention kernel, decode kernel, fused residuals) and
  # the single-stage attention kernel for comparison
  ARGS="--config gemma2-9b" bench gemma2-9b GRIFFON_FUSED=1
  ARGS="--config llama2-13b" bench llama2-13b GRIFFON_FUSED=1
  ARGS="--config gemma2-9b --only vision" bench vision_s1 GRIFFON_FLASH_STAGES=1
  ARGS="--config gemma2-9b --only prefill" bench prefill_s1 GRIFFON_FLASH_STAGES=1
fi
REF=$(ls .device/torch_reference_bench.py 2>/dev/null | head -n 1)
if [ "${REF_BENCH:-0}" = 1 ] && [ -n "$REF" ]; then
  # the PyTorch reference on the same card in the same call (../shared/bench, carried in .device)
  timeout 200 python3 "$REF" --llm gemma2-9b --attn sdpa --out "$R" > "$R/torch.log" 2>&1
  echo "torch reference: rc $?"; tail -n 3 "$R/torch.log"
fi
if [ "${NCU:-1}" = 1 ] && command -v ncu >/dev/null; then
  for part in ${NCU_PARTS:-prefill vision decode}; do
    GRIFFON_PROFILE_PART=$part timeout 150 ncu --clock-control none --profile-from-start off --csv \
      --metrics gpu__time_duration.sum "$G" bench --config gemma2-9b --random-weights --device cuda --dtype bf16 \
      --only $part --quick > "$R/ncu_$part.csv" 2> "$R/ncu_$part.err"
    echo "ncu $part: rc $?"
    python3 tools/cuda/ncu_top.py "$R/ncu_$part.csv" 25 || { tail -n 5 "$R/ncu_$part.csv"; tail -n 20 "$R/ncu_$part.err"; }
    gzip -f "$R/ncu_$part.csv"
  done
  if [ "${NCU_DETAIL:-1}" = 1 ]; then
    # one launch of the vision attention kernel in detail: throughput, occupancy, stall reasons
    GRIFFON_PROFILE_PART=vision timeout 120 ncu --clock-control none --profile-from-start off \
      --kernel-name regex:flash_fwd --launch-count 1 --section SpeedOfLight --section Occupancy \
      --section LaunchStats --section WarpStateStats --section ComputeWorkloadAnalysis \
      "$G" bench --config gemma2-9b --random-weights --device cuda --dtype bf16 --only vision --quick \
      > "$R/ncu_flash_detail.txt" 2>&1
    echo "ncu flash detail: rc $?"
    grep -E "Duration|Throughput|Registers|Achieved Occupancy|Theoretical Occupancy|Stall|Warp Cycles|Issue Slots|Executed Ipc|Block Limit" "$R/ncu_flash_detail.txt" | head -n 40
  fi
fi
date -u
tar -C /tmp -czf "$OUT/probe.tgz" probe
# TRAIN_UNTIL (seconds since the epoch): train at 1022 px until then (stage 0 for a third, then
# stage II), carrying runs/synth/init-1022 (tools/synth/train_gpu.sh; weights packed into $OUT)
if [ -n "${TRAIN_UNTIL:-}" ]; then
  left=$((TRAIN_UNTIL - $(date +%s) - 30))
  echo "== $left s left for training at 1022 px"
  if [ "$left" -ge 90 ]; then
    t0=$((left / 3))
    GRIFFON_BIN=$G T0=$t0 bash tools/synth/train_gpu.sh default 1022 1 4 4 0 $((left - t0 - 25)) 0
  fi
fi

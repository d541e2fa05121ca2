#!/usr/bin/env bash
# Builds target/release/griffon with the `cuda` feature on a machine WITHOUT a GPU or network
# access beyond PyPI, for the lent H100/H200 (sm_90). Facts from ../shared/CUDA_BUILD.md
# (verified 2026-11-26 with candle 0.11.1): CUDA 13.0 toolkit pieces from PyPI wheels, a
# CUDA_HOME assembled from them, and a stub libcuda.so.1 to link against (the real one comes
# from the driver at run time).
#
#   tools/cuda/build.sh            # -> target/cuda/release/griffon (stripped)
#
# It builds in its own target folder (target/cuda) so the CPU binary is not replaced: a cuda
# binary needs the driver's libcuda.so.1 to start.
#
# On the GPU machine: export LD_LIBRARY_PATH=/usr/local/cuda/lib64; ./griffon bench --device cuda ...
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
VENV=${CUDA_VENV:-$ROOT/target/cuda-venv}
if [ ! -x "$VENV/bin/pip" ]; then python3 -m venv "$VENV"; fi
"$VENV/bin/pip" install -q nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.0.2.14 \
  nvidia-curand
NV=$("$VENV/bin/python" - <<'PY'
import os, nvidia
for p in nvidia.__path__:
    if os.path.isdir(os.path.join(p, "cu13")):
        print(os.path.join(p, "cu13")); break
PY
)
[ -d "$NV/bin" ] || { echo "CUDA wheels not found under $NV" >&2; exit 1; }
CUDA_HOME=$ROOT/target/cuda-home
mkdir -p "$CUDA_HOME/lib64" "$ROOT/target/cuda-stub"
ln -sfn "$NV/bin" "$CUDA_HOME/bin"
ln -sfn "$NV/include" "$CUDA_HOME/include"
ln -sfn "$NV/nvvm" "$CUDA_HOME/nvvm"
for f in "$NV"/lib/*.so*; do ln -sf "$f" "$CUDA_HOME/lib64/"; done
for l in cudart cublas cublasLt curand nvrtc; do
  so=$(ls "$CUDA_HOME/lib64/lib$l.so."* 2>/dev/null | head -n 1 || true)
  [ -n "$so" ] && ln -sf "$so" "$CUDA_HOME/lib64/lib$l.so"
done
export CUDA_HOME CUDA_PATH=$CUDA_HOME PATH=$CUDA_HOME/bin:$PATH CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000
export LIBRARY_PATH=$CUDA_HOME/lib64:$ROOT/target/cuda-stub

stub() {
  # every undefined cu* driver symbol of the built cudarc / candle rlibs -> empty functions
  local syms
  syms=$(for r in target/cuda/release/deps/libcudarc-*.rlib target/cuda/release/deps/libcandle_core-*.rlib; do
           [ -f "$r" ] && nm -u "$r" 2>/dev/null; done | awk '{print $NF}' | grep -E '^cu[A-Z]' | sort -u)
  { for s in $syms; do echo "void $s(void) {}"; done; } > target/cuda-stub/stub.c
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o target/cuda-stub/libcuda.so target/cuda-stub/stub.c
  ln -sf libcuda.so target/cuda-stub/libcuda.so.1
}

# First pass builds the rlibs (the final link may fail for lack of libcuda); then the stub.
cargo build --release -p griffon --features cuda --target-dir target/cuda || true
stub
cargo build --release -p griffon --features cuda --target-dir target/cuda
strip target/cuda/release/griffon
ls -la target/cuda/release/griffon

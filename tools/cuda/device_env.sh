# Sourced by the device scripts (tools/cuda/gpu_session.sh, tools/synth/train_gpu.sh) on the lent
# GPU machine: unpacks the carried CUDA binary (target/cuda/griffon.xz: the 62 MB binary does not
# fit the 64 MiB carry limit beside the repo, its xz does at ~8.5 MB) to $G and points the
# loader at CUDA's libraries (/usr/local/cuda, else the pip wheels of the machine's PyTorch).
#   here:  tools/cuda/build.sh && xz -T2 -6 -kc target/cuda/release/griffon > target/cuda/griffon.xz
G=${GRIFFON_BIN:-/tmp/griffon}
if [ -z "${GRIFFON_BIN:-}" ]; then
  if ! xz -dc target/cuda/griffon.xz > "$G" 2>/dev/null; then
    python3 -c "import lzma, sys; sys.stdout.buffer.write(lzma.open('target/cuda/griffon.xz').read())" > "$G" \
      || { echo "cannot unpack target/cuda/griffon.xz (was it carried?)"; exit 1; }
  fi
  chmod +x "$G"
  libs=/usr/local/cuda/lib64
  extra=$(python3 - <<'PY' 2>/dev/null
import glob, os
try:
    import nvidia
    dirs = set()
    for p in nvidia.__path__:
        for so in glob.glob(os.path.join(p, "**", "lib*.so*"), recursive=True):
            dirs.add(os.path.dirname(so))
    print(":".join(sorted(dirs)))
except Exception:
    pass
PY
)
  export LD_LIBRARY_PATH=$libs${extra:+:$extra}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  if ldd "$G" | grep -q "not found"; then echo "missing libraries:"; ldd "$G" | grep "not found"; fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
fi

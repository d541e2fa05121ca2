//! In the `cuda` build, compiles `kernels/flash_attn.cu` and `kernels/fused.cu` to PTX (loaded by
//! `src/flash.rs` and `src/fused.rs` at run time, JIT-compiled by the driver) with the toolkit's nvcc, for the compute capability in
//! `CUDA_COMPUTE_CAP` (as candle-kernels reads it; tools/cuda/build.sh sets 90). The kernel uses
//! `mma.sync` m16n8k16 and `ldmatrix`: compute capability 8.0 or newer. Without the feature
//! nothing runs here.
use std::path::PathBuf;
use std::process::Command;

const KERNELS: [&str; 2] = ["flash_attn", "fused"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for k in KERNELS {
        println!("cargo:rerun-if-changed=kernels/{k}.cu");
    }
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let cap: u32 = match std::env::var("CUDA_COMPUTE_CAP") {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("CUDA_COMPUTE_CAP={v:?} is not a number such as 90")),
        Err(_) => 90,
    };
    if cap < 80 {
        panic!("CUDA_COMPUTE_CAP={cap}: the attention kernel needs compute capability 8.0 or newer");
    }
    let nvcc = std::env::var("CUDA_HOME").map(|h| format!("{h}/bin/nvcc")).unwrap_or_else(|_| "nvcc".into());
    for k in KERNELS {
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join(format!("{k}.ptx"));
        let src = format!("kernels/{k}.cu");
        let status = Command::new(&nvcc)
            .args(["-ptx", "-O3", "-std=c++17", &format!("-arch=sm_{cap}"), "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| {
                panic!("running {nvcc}: {e} (set CUDA_HOME or put nvcc on PATH; see tools/cuda/build.sh)")
            });
        if !status.success() {
            panic!("{nvcc} failed on {src} ({status})");
        }
    }
}

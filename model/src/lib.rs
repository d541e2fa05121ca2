//! Candle implementation of Griffon v2 / Griffon-G.
//!
//! One file per architecture piece: [`clip`] (high-resolution CLIP tower and the region
//! encoder's tower), [`eva02`] (Griffon-G's EVA02 tower), [`vision`] (what the towers share),
//! [`projector`], [`region`], [`gemma2`], [`llama`]; plus the checkpoint
//! [`loader`], [`config`] resolution, image [`resample`]/preprocessing, [`tokenize`]
//! (prompt assembly) and [`generate`] (KV cache, samplers, stop rules). [`griffon`] ties them.

/// `impl CustomOp3` for an op that runs on CUDA only (the GPU kernels of [`flash`] and
/// [`fused`]): `name`, a CPU forward that refuses with an error naming the op, and the CUDA
/// forward `$body` over `($a, $al), ($b, $bl), ($c, $cl)` (the three inputs and their layouts).
macro_rules! cuda_only_op3 {
    ($ty:ty, $name:literal, |$this:ident, $a:ident, $al:ident, $b:ident, $bl:ident, $c:ident, $cl:ident| $body:expr) => {
        impl candle_core::CustomOp3 for $ty {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(
                &self,
                _: &candle_core::CpuStorage,
                _: &candle_core::Layout,
                _: &candle_core::CpuStorage,
                _: &candle_core::Layout,
                _: &candle_core::CpuStorage,
                _: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
                candle_core::bail!("{} runs on CUDA only (the CPU has its own path)", $name)
            }
            #[cfg(feature = "cuda")]
            fn cuda_fwd(
                &self,
                $a: &candle_core::CudaStorage,
                $al: &candle_core::Layout,
                $b: &candle_core::CudaStorage,
                $bl: &candle_core::Layout,
                $c: &candle_core::CudaStorage,
                $cl: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
                let $this = self;
                $body
            }
        }
    };
}

pub mod assemble;
pub mod attn_grad;
pub mod bench;
pub mod clip;
pub mod config;
pub mod cpu_kernels;
pub mod draw;
pub mod error;
pub mod eva02;
pub mod flash;
pub mod fused;
pub mod gemma2;
pub mod generate;
pub mod griffon;
pub mod layout;
pub mod llama;
pub mod llm;
pub mod loader;
pub mod nn;
pub mod projector;
pub mod region;
pub mod resample;
pub mod selfcheck;
pub mod tasks;
pub mod tokenize;
pub mod vision;

pub use error::{Error, Result};

/// Fixes candle's CPU thread count for the process. candle 0.11 asks for its thread count on
/// every CPU matmul and, unless `RAYON_NUM_THREADS` is set, recounts the physical cores by
/// parsing /proc/cpuinfo each time: measured at about a third of the tiny benchmark's time.
/// Call once at the start of `main`, before any other thread exists (it sets the variable to
/// the count candle would have found when it is unset).
pub fn pin_cpu_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

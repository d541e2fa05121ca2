//! Shared by the golden-fixture tests (parity.rs, eva02.rs).

use candle_core::{DType, Tensor};

/// Stated tolerance of the f32 golden comparisons: max |ours - reference| <= REL_TOL x max |reference|.
pub const REL_TOL: f32 = 1e-4;

/// Returns the relative error (max abs error / scale) and asserts the bound.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let got = got.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let want = want.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let err: f32 = (&got - &want).unwrap().abs().unwrap().max(0).unwrap().to_scalar().unwrap();
    let scale: f32 = want.abs().unwrap().max(0).unwrap().to_scalar().unwrap();
    let rel = err / scale.max(1e-12);
    eprintln!("{what}: max abs err {err:.3e}, scale {scale:.3e}, relative {rel:.3e}");
    assert!(rel <= REL_TOL, "{what}: max abs error {err:e} exceeds {REL_TOL:e} x scale {scale:e}");
    rel
}

//! Shared by the model tests (parity.rs, eva02.rs, bad_input.rs).

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

/// Copies a folder recursively (a fixture checkpoint into a temp dir the test may edit).
#[allow(dead_code)] // (not every test crate that includes this module copies folders)
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dst = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dst);
        } else {
            std::fs::copy(&p, &dst).unwrap();
        }
    }
}

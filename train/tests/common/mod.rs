//! Shared by the trainer tests (trainer.rs, dense.rs, ground.rs); each uses a part.
#![allow(dead_code)]

use candle_core::Tensor;
use griffon_model::loader::Checkpoint;

/// Largest |a - b| over all elements.
pub fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (|| -> candle_core::Result<f32> { (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar() })().unwrap()
}

/// Largest |a - b| of one tensor in two checkpoints.
pub fn max_abs_diff(a: &Checkpoint, b: &Checkpoint, name: &str) -> f32 {
    max_abs(&a.get_unchecked(name).unwrap(), &b.get_unchecked(name).unwrap())
}

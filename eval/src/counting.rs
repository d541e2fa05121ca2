//! Counting errors: MAE, RMSE and NAE over per-image (predicted, ground-truth) counts.
//!
//! Definitions and summation order follow the FSC-147 evaluation script
//! (`test.py` of cvlab-stonybrook/LearningToCountEverything: `err = abs(gt_cnt - pred_cnt)`,
//! `SAE += err`, `SSE += err**2`, `MAE = SAE/cnt`, `RMSE = (SSE/cnt)**0.5`) and, for NAE, the
//! FSCD-LVIS / FSCD-147 evaluation of Counting-DETR
//! (`src/CountDETR_lvis_2nd_stage/evaluate_val_and_test.py` of VinAIResearch/Counting-DETR:
//! `rel_err = abs(gt - pred) / gt`, `NAE = sum(rel_err) / len(rel_err)`).
//!
//! Ground-truth count 0: the NAE reference divides by the ground-truth count with Python
//! integers and so raises `ZeroDivisionError` (FSC-147 and FSCD-LVIS have at least one object
//! in every image, so the case never arises there). We follow it and return an error naming the
//! sample rather than skipping the image or producing `inf`.

use crate::numeric::py_pow;
use crate::EvalError;

/// Counting errors over a set of images.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CountingErrors {
    /// Mean absolute error.
    pub mae: f64,
    /// Root mean squared error.
    pub rmse: f64,
    /// Normalised absolute error: mean of `|pred - gt| / gt`.
    pub nae: f64,
    /// Number of images.
    pub n: usize,
}

/// MAE, RMSE and NAE of `(predicted, ground_truth)` counts.
///
/// Errors: an empty list, a non-finite predicted count, a negative or non-finite ground-truth
/// count, or a ground-truth count of 0 (see the module docs); the message names the sample.
pub fn counting_errors(samples: &[(f64, f64)]) -> Result<CountingErrors, EvalError> {
    if samples.is_empty() {
        return Err(EvalError::Invalid("counting errors of an empty sample list are undefined".into()));
    }
    let (mut sae, mut sse, mut sre) = (0.0, 0.0, 0.0);
    for (i, &(pred, gt)) in samples.iter().enumerate() {
        if !pred.is_finite() {
            return Err(EvalError::Invalid(format!("counting sample {i}: predicted count {pred} is not finite")));
        }
        if !gt.is_finite() || gt < 0.0 {
            return Err(EvalError::Invalid(format!(
                "counting sample {i}: ground-truth count {gt} is not a finite non-negative number"
            )));
        }
        if gt == 0.0 {
            return Err(EvalError::Invalid(format!(
                "counting sample {i}: ground-truth count is 0, NAE (|pred - gt| / gt) is undefined"
            )));
        }
        let err = (gt - pred).abs();
        sae += err;
        sse += py_pow(err, 2.0);
        sre += err / gt;
    }
    let n = samples.len() as f64;
    Ok(CountingErrors { mae: sae / n, rmse: py_pow(sse / n, 0.5), nae: sre / n, n: samples.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_example() {
        let e = counting_errors(&[(3.0, 4.0), (10.0, 8.0)]).unwrap();
        assert_eq!(e.mae, 1.5);
        assert_eq!(e.rmse, (5.0f64 / 2.0).sqrt());
        assert_eq!(e.nae, (0.25 + 0.25) / 2.0);
    }

    #[test]
    fn bad_inputs_name_the_sample() {
        assert!(counting_errors(&[]).is_err());
        let e = counting_errors(&[(1.0, 2.0), (1.0, 0.0)]).unwrap_err().to_string();
        assert!(e.contains("sample 1") && e.contains("is 0"), "{e}");
        let e = counting_errors(&[(f64::NAN, 2.0)]).unwrap_err().to_string();
        assert!(e.contains("sample 0"), "{e}");
    }
}

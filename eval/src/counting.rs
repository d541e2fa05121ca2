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
//! in every image, so the case never arises there). MAE and RMSE are defined there (FSC-147's
//! script takes such an image), so they are still given and NAE is left undefined (`None`,
//! `null` in the metrics) rather than skipping the image or producing `inf`.

use crate::grounding::{check_box, iou_xyxy, BoxXyxy};
use crate::numeric::py_pow;
use crate::EvalError;

/// Counting errors over a set of images.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CountingErrors {
    /// Mean absolute error.
    pub mae: f64,
    /// Root mean squared error.
    pub rmse: f64,
    /// Normalised absolute error: mean of `|pred - gt| / gt`; `None` when an image has no
    /// object (a ground-truth count of 0), where it is undefined.
    pub nae: Option<f64>,
    /// Number of images.
    pub n: usize,
}

/// MAE, RMSE and NAE of `(predicted, ground_truth)` counts.
///
/// Errors: an empty list, a non-finite predicted count, or a negative or non-finite ground-truth
/// count; the message names the sample. A ground-truth count of 0 leaves NAE undefined (see the
/// module docs).
pub fn counting_errors(samples: &[(f64, f64)]) -> Result<CountingErrors, EvalError> {
    if samples.is_empty() {
        return Err(EvalError::Invalid("counting errors of an empty sample list are undefined".into()));
    }
    let (mut sae, mut sse, mut sre) = (0.0, 0.0, Some(0.0));
    for (i, &(pred, gt)) in samples.iter().enumerate() {
        if !pred.is_finite() {
            return Err(EvalError::Invalid(format!("counting sample {i}: predicted count {pred} is not finite")));
        }
        if !gt.is_finite() || gt < 0.0 {
            return Err(EvalError::Invalid(format!(
                "counting sample {i}: ground-truth count {gt} is not a finite non-negative number"
            )));
        }
        let err = (gt - pred).abs();
        sae += err;
        sse += py_pow(err, 2.0);
        sre = sre.filter(|_| gt != 0.0).map(|s| s + err / gt);
    }
    let n = samples.len() as f64;
    Ok(CountingErrors { mae: sae / n, rmse: py_pow(sse / n, 0.5), nae: sre.map(|s| s / n), n: samples.len() })
}

/// How well the boxes a counting answer gives match the boxes of the exemplar's class: each
/// predicted box is matched to at most one true box and the other way round, greedily by
/// descending IoU (ties: earlier prediction, then earlier true box), a pair counting when its IoU
/// is at least `thresh` (COCO's `>=`). Totals are summed over samples (micro averages), so a
/// sample with many objects weighs more. Our own metric (no reference implementation): it tells
/// a model that counts the exemplar's objects from one that counts any objects, which the
/// count alone cannot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BoxMatch {
    pub matched: usize,
    pub predicted: usize,
    pub truth: usize,
    /// `matched / predicted` (0 when nothing was predicted).
    pub precision: f64,
    /// `matched / truth`.
    pub recall: f64,
    /// Harmonic mean of precision and recall (0 when both are 0).
    pub f1: f64,
}

/// [`BoxMatch`] over `(predicted boxes, true boxes)` per sample. Errors: an empty list, a sample
/// without true boxes, a non-finite true coordinate (naming the sample). A degenerate or
/// non-finite predicted box has a NaN or 0 IoU and matches nothing.
pub fn box_match(samples: &[(Vec<BoxXyxy>, Vec<BoxXyxy>)], thresh: f64) -> Result<BoxMatch, EvalError> {
    if samples.is_empty() {
        return Err(EvalError::Invalid("box matching of an empty sample list is undefined".into()));
    }
    let (mut matched, mut predicted, mut truth) = (0, 0, 0);
    for (i, (pred, gt)) in samples.iter().enumerate() {
        if gt.is_empty() {
            return Err(EvalError::Invalid(format!("counting sample {i}: no true boxes to match")));
        }
        for b in gt {
            check_box(b, || format!("counting sample {i}"))?;
        }
        let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
        for (p, pb) in pred.iter().enumerate() {
            for (g, gb) in gt.iter().enumerate() {
                let iou = iou_xyxy(pb, gb);
                if iou >= thresh {
                    pairs.push((iou, p, g));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let (mut used_p, mut used_g) = (vec![false; pred.len()], vec![false; gt.len()]);
        for (_, p, g) in pairs {
            if !used_p[p] && !used_g[g] {
                used_p[p] = true;
                used_g[g] = true;
                matched += 1;
            }
        }
        predicted += pred.len();
        truth += gt.len();
    }
    let precision = if predicted == 0 { 0.0 } else { matched as f64 / predicted as f64 };
    let recall = matched as f64 / truth as f64;
    let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
    Ok(BoxMatch { matched, predicted, truth, precision, recall, f1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_example() {
        let e = counting_errors(&[(3.0, 4.0), (10.0, 8.0)]).unwrap();
        assert_eq!(e.mae, 1.5);
        assert_eq!(e.rmse, (5.0f64 / 2.0).sqrt());
        assert_eq!(e.nae, Some((0.25 + 0.25) / 2.0));
    }

    #[test]
    fn bad_inputs_name_the_sample() {
        assert!(counting_errors(&[]).is_err());
        // an image without objects: MAE and RMSE as FSC-147's script gives them, NAE undefined
        let e = counting_errors(&[(1.0, 2.0), (1.0, 0.0)]).unwrap();
        assert_eq!((e.mae, e.nae), (1.0, None));
        let e = counting_errors(&[(1.0, -2.0)]).unwrap_err().to_string();
        assert!(e.contains("sample 0") && e.contains("non-negative"), "{e}");
        let e = counting_errors(&[(f64::NAN, 2.0)]).unwrap_err().to_string();
        assert!(e.contains("sample 0"), "{e}");
    }

    #[test]
    fn box_match_is_one_to_one_and_greedy_by_iou() {
        let t = [0.0, 0.0, 10.0, 10.0];
        let u = [20.0, 0.0, 30.0, 10.0];
        // two predictions on the same true box: one matches; a third far away matches nothing
        let s = vec![(vec![t, [0.0, 0.0, 10.0, 9.0], [50.0, 50.0, 60.0, 60.0]], vec![t, u])];
        let m = box_match(&s, 0.5).unwrap();
        assert_eq!((m.matched, m.predicted, m.truth), (1, 3, 2));
        assert_eq!(m.precision, 1.0 / 3.0);
        assert_eq!(m.recall, 0.5);
        assert_eq!(m.f1, 2.0 * (1.0 / 3.0) * 0.5 / (1.0 / 3.0 + 0.5));
        // greedy by IoU: p0 takes g1 (IoU 9/11) before p1 can (8/12), and p0 -> g0 (7/13) is
        // never used; matching in list order (p0 -> g0, p1 -> g1) would give 2
        let row = |a: f64, b: f64| [a, 0.0, b, 10.0];
        let s = vec![(vec![row(3.0, 13.0), row(6.0, 16.0)], vec![row(0.0, 10.0), row(4.0, 14.0)])];
        let m = box_match(&s, 0.5).unwrap();
        assert_eq!((m.matched, m.predicted, m.truth), (1, 2, 2));
        // a non-finite or inverted prediction matches nothing
        let m = box_match(&[(vec![[0.0, f64::NAN, 10.0, 10.0], [10.0, 10.0, 0.0, 0.0]], vec![t])], 0.5).unwrap();
        assert_eq!(m.matched, 0);
        // IoU exactly at the threshold counts (COCO's >=); nothing predicted is precision 0
        let s = vec![(vec![[0.0, 0.0, 10.0, 5.0]], vec![t]), (vec![], vec![u])];
        let m = box_match(&s, 0.5).unwrap();
        assert_eq!((m.matched, m.predicted, m.truth), (1, 1, 2));
        let m = box_match(&[(vec![], vec![t])], 0.5).unwrap();
        assert_eq!((m.precision, m.recall, m.f1), (0.0, 0.0, 0.0));
    }

    #[test]
    fn box_match_bad_inputs_name_the_sample() {
        assert!(box_match(&[], 0.5).is_err());
        let t = [0.0, 0.0, 10.0, 10.0];
        let e = box_match(&[(vec![t], vec![t]), (vec![t], vec![])], 0.5).unwrap_err().to_string();
        assert!(e.contains("sample 1") && e.contains("no true boxes"), "{e}");
        let e = box_match(&[(vec![t], vec![[0.0, f64::NAN, 1.0, 1.0]])], 0.5).unwrap_err().to_string();
        assert!(e.contains("sample 0") && e.contains("non-finite"), "{e}");
    }
}

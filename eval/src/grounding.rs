//! Grounding metrics: REC accuracy (Acc@0.5) and Flickr30K Entities recall@1.
//!
//! Boxes are `[x1, y1, x2, y2]` in pixels, treated as continuous coordinates: area is
//! `(x2 - x1) * (y2 - y1)` with no `+ 1` (both references use torchvision's `box_area` /
//! `box_iou` formulas).

use crate::EvalError;

/// A box `[x1, y1, x2, y2]` in pixels.
pub type BoxXyxy = [f64; 4];

/// Intersection over union of two `[x1, y1, x2, y2]` boxes, as torchvision's `box_iou`
/// computes it: `inter / (area_a + area_b - inter)` with the intersection's width and height
/// clamped at 0. A zero union (two degenerate boxes) gives `NaN`, which counts as a miss in
/// every metric here, as a `NaN > 0.5` / `NaN >= 0.5` comparison does in the references.
pub fn iou_xyxy(a: &BoxXyxy, b: &BoxXyxy) -> f64 {
    let area_a = (a[2] - a[0]) * (a[3] - a[1]);
    let area_b = (b[2] - b[0]) * (b[3] - b[1]);
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    inter / (area_a + area_b - inter)
}

/// [`iou_xyxy`] in float32, as Griffon's eval_rec.py computes it (torch float32 tensors, the
/// same operations in the same order): the coordinates are rounded to f32 first.
pub fn iou_xyxy_f32(a: &BoxXyxy, b: &BoxXyxy) -> f32 {
    let (a, b) = (a.map(|v| v as f32), b.map(|v| v as f32));
    let area_a = (a[2] - a[0]) * (a[3] - a[1]);
    let area_b = (b[2] - b[0]) * (b[3] - b[1]);
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    inter / (area_a + area_b - inter)
}

/// A normalized box in pixels as eval_rec.py scales it: `torch.tensor(box, dtype=float32)`
/// times the width / height, in float32 (the result is exact in f64).
pub fn rec_pixels_f32(norm: [f64; 4], width: u32, height: u32) -> BoxXyxy {
    let (w, h) = (width as f32, height as f32);
    let [x1, y1, x2, y2] = norm.map(|v| v as f32);
    [x1 * w, y1 * h, x2 * w, y2 * h].map(f64::from)
}

/// Hit count, sample count and their ratio.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Accuracy {
    pub hits: usize,
    pub total: usize,
    /// `hits / total`.
    pub value: f64,
}

pub(crate) fn check_box(b: &BoxXyxy, what: impl Fn() -> String) -> Result<(), EvalError> {
    if b.iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(EvalError::Invalid(format!("{}: ground-truth box {b:?} has a non-finite coordinate", what())))
    }
}

/// REC accuracy at IoU 0.5 (Acc@0.5), with the semantics of Griffon's
/// `griffon/eval/eval_rec.py` (jefferyZhan/Griffon): for each sample only the FIRST predicted
/// box is compared with the ground-truth box, and the sample is a hit when their IoU is
/// strictly greater than 0.5 (`if iou > 0.5`). A missing or unparseable answer (`None`, or an
/// empty box list) is a miss but still counts in the total (eval_rec.py increments `total`
/// before parsing and skips on exceptions). A degenerate ground-truth box gives IoU 0 or NaN and
/// is therefore a miss, as eval_rec.py's explicit skip of such boxes (after counting them) makes
/// it.
///
/// `samples` pairs each sample's predicted boxes (already converted to pixels, by
/// [`rec_pixels_f32`] for the reference's rounding) with its ground-truth box. The IoU is
/// computed in float32 as eval_rec.py computes it ([`iou_xyxy_f32`]): in f64 an IoU within
/// float32 rounding of 0.5 can fall on the other side (e.g. 0.50000002 in f64 is 0.5 in f32,
/// a miss there).
///
/// Errors: no samples (the reference divides by zero), or a non-finite ground-truth coordinate.
pub fn rec_accuracy(samples: &[(Option<&[BoxXyxy]>, BoxXyxy)]) -> Result<Accuracy, EvalError> {
    if samples.is_empty() {
        return Err(EvalError::Invalid("REC accuracy of an empty sample list is undefined".into()));
    }
    let mut hits = 0;
    for (i, (pred, gt)) in samples.iter().enumerate() {
        check_box(gt, || format!("REC sample {i}"))?;
        if let Some(first) = pred.and_then(|p| p.first()) {
            if iou_xyxy_f32(first, gt) > 0.5 {
                hits += 1;
            }
        }
    }
    Ok(Accuracy { hits, total: samples.len(), value: hits as f64 / samples.len() as f64 })
}

/// The smallest box enclosing all `boxes` (MDETR's `_merge_boxes`); `None` for no boxes.
pub fn merge_boxes(boxes: &[BoxXyxy]) -> Option<BoxXyxy> {
    let (first, rest) = boxes.split_first()?;
    Some(rest.iter().fold(*first, |m, b| [m[0].min(b[0]), m[1].min(b[1]), m[2].max(b[2]), m[3].max(b[3])]))
}

/// One phrase of a Flickr30K Entities sentence: the model's top-1 box for it (`None` when the
/// answer was missing or unparseable) and the phrase's ground-truth boxes.
#[derive(Clone, Debug)]
pub struct PhraseSample<'a> {
    pub top1: Option<BoxXyxy>,
    pub gt_boxes: &'a [BoxXyxy],
}

/// Flickr30K Entities recall@1 under the two protocols of MDETR's evaluator
/// (`datasets/flickr_eval.py`, ashkamath/mdetr, `Flickr30kEntitiesRecallEvaluator` with
/// `iou_thresh=0.5`, `topk=1`):
///
/// * ANY-BOX (`merge_boxes=False`): a hit when the top-1 box has IoU >= 0.5 with ANY of the
///   phrase's ground-truth boxes (`ious[:1].max() >= iou_thresh`);
/// * MERGED-BOX (`merge_boxes=True`): the phrase's boxes are first replaced by the single box
///   enclosing them all, and a hit needs IoU >= 0.5 with it.
///
/// Every phrase counts in the total; a phrase without a predicted box is a miss (MDETR requires
/// a prediction for every phrase). Errors: no phrases, a phrase without ground-truth boxes
/// (MDETR drops those phrases from the evaluation set before scoring), or a non-finite
/// ground-truth coordinate.
pub fn flickr30k_recall_at_1(phrases: &[PhraseSample<'_>]) -> Result<FlickrRecall, EvalError> {
    if phrases.is_empty() {
        return Err(EvalError::Invalid("Flickr30K recall of an empty phrase list is undefined".into()));
    }
    let (mut any, mut merged) = (0, 0);
    for (i, p) in phrases.iter().enumerate() {
        let Some(union) = merge_boxes(p.gt_boxes) else {
            return Err(EvalError::Invalid(format!(
                "Flickr30K phrase {i} has no ground-truth boxes (such phrases are not evaluated; drop them)"
            )));
        };
        for b in p.gt_boxes {
            check_box(b, || format!("Flickr30K phrase {i}"))?;
        }
        let Some(pred) = p.top1 else { continue };
        // `ious[:1].max() >= 0.5`: numpy's max propagates NaN, which then compares false.
        let ious: Vec<f64> = p.gt_boxes.iter().map(|g| iou_xyxy(&pred, g)).collect();
        if !ious.iter().any(|v| v.is_nan()) && ious.iter().any(|&v| v >= 0.5) {
            any += 1;
        }
        if iou_xyxy(&pred, &union) >= 0.5 {
            merged += 1;
        }
    }
    let n = phrases.len();
    Ok(FlickrRecall {
        any_box: Accuracy { hits: any, total: n, value: any as f64 / n as f64 },
        merged_box: Accuracy { hits: merged, total: n, value: merged as f64 / n as f64 },
    })
}

/// Flickr30K Entities recall@1 under both protocols.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlickrRecall {
    pub any_box: Accuracy,
    pub merged_box: Accuracy,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_is_continuous_without_plus_one() {
        // 10x10 boxes overlapping in a 5x10 strip: 50 / (100 + 100 - 50).
        assert_eq!(iou_xyxy(&[0.0, 0.0, 10.0, 10.0], &[5.0, 0.0, 15.0, 10.0]), 50.0 / 150.0);
        assert_eq!(iou_xyxy(&[0.0, 0.0, 10.0, 10.0], &[20.0, 0.0, 30.0, 10.0]), 0.0);
        assert!(iou_xyxy(&[1.0, 1.0, 1.0, 1.0], &[1.0, 1.0, 1.0, 1.0]).is_nan());
    }

    #[test]
    fn rec_threshold_is_strict_and_first_box_only() {
        let gt = [0.0, 0.0, 10.0, 10.0];
        let half = [0.0, 0.0, 10.0, 5.0]; // IoU exactly 0.5: a miss
        let better = [0.0, 0.0, 10.0, 6.0]; // IoU 0.6: a hit
        let p1 = [better];
        let p2 = [half, better];
        let samples: Vec<(Option<&[BoxXyxy]>, BoxXyxy)> =
            vec![(Some(&p1[..]), gt), (Some(&p2[..]), gt), (None, gt), (Some(&[][..]), gt)];
        let acc = rec_accuracy(&samples).unwrap();
        assert_eq!((acc.hits, acc.total), (1, 4));
        assert_eq!(acc.value, 0.25);
        assert!(rec_accuracy(&[]).is_err());
        let nan_gt: Vec<(Option<&[BoxXyxy]>, BoxXyxy)> = vec![(None, [0.0, f64::NAN, 1.0, 1.0])];
        assert!(rec_accuracy(&nan_gt).unwrap_err().to_string().contains("REC sample 0"));
    }

    /// Cases where f64 and float32 fall on either side of 0.5 (found by a search with numpy
    /// float32 scalars, IEEE arithmetic as torch's CPU float32 ops): the reference's side wins.
    #[test]
    fn rec_iou_is_float32_as_the_reference() {
        // f64 IoU 0.5000000175 (a hit), float32 exactly 0.5: a miss in eval_rec.py
        let p = rec_pixels_f32([0.0, 0.0, 0.258, 0.621], 500, 375);
        let gt = [0.0, 0.0, 207.73, 289.23];
        assert!(iou_xyxy(&[0.0, 0.0, 0.258 * 500.0, 0.621 * 375.0], &gt) > 0.5);
        assert_eq!(iou_xyxy_f32(&p, &gt), 0.5);
        // f64 0.4999999972 (a miss), float32 0.50000006: a hit there
        let q = rec_pixels_f32([0.0, 0.0, 0.133, 0.665], 640, 480);
        let gt2 = [0.0, 0.0, 163.79, 331.77];
        assert!(iou_xyxy(&[0.0, 0.0, 0.133 * 640.0, 0.665 * 480.0], &gt2) < 0.5);
        assert!(iou_xyxy_f32(&q, &gt2) > 0.5);
        let (p, q) = ([p], [q]);
        let acc = rec_accuracy(&[(Some(&p[..]), gt), (Some(&q[..]), gt2)]).unwrap();
        assert_eq!(acc.hits, 1);
    }

    #[test]
    fn flickr_any_and_merged() {
        let gts = [[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0]];
        // Top-1 equals the first GT box: ANY-BOX hit; against the merged box [0,0,30,10]
        // IoU = 100 / 300: MERGED-BOX miss.
        let a = PhraseSample { top1: Some([0.0, 0.0, 10.0, 10.0]), gt_boxes: &gts };
        // Top-1 covers both: IoU with each GT is 100/300 (miss), with the merge 1 (hit).
        let b = PhraseSample { top1: Some([0.0, 0.0, 30.0, 10.0]), gt_boxes: &gts };
        // IoU exactly 0.5 with the first GT: a hit (>=).
        let c = PhraseSample { top1: Some([0.0, 0.0, 10.0, 5.0]), gt_boxes: &gts[..1] };
        let d = PhraseSample { top1: None, gt_boxes: &gts };
        let r = flickr30k_recall_at_1(&[a, b, c, d]).unwrap();
        assert_eq!((r.any_box.hits, r.merged_box.hits, r.any_box.total), (2, 2, 4));
        let empty = PhraseSample { top1: None, gt_boxes: &[] };
        assert!(flickr30k_recall_at_1(&[empty]).is_err());
    }
}

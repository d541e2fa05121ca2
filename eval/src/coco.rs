//! COCO bounding-box mAP with pycocotools' semantics (the 12 `COCOeval.stats`).
//!
//! The evaluation itself is done by the `hotcoco` crate (1.3.1), which ports pycocotools'
//! `COCOeval` (`evaluate` / `accumulate` / `summarize`: IoU thresholds 0.50:0.05:0.95, 101-point
//! interpolated precision, area ranges all / small [0, 32²] / medium [32², 96²] /
//! large [96², 1e10] inclusive at both ends, `iscrowd` regions as ignore regions, maxDets
//! 1 / 10 / 100, and numpy's pairwise summation in the final means). It reproduces pycocotools
//! 2.0.11 bit for bit on every vector we have (see the crate docs and `tests/coco.rs`).
//!
//! This module adds what a command-line tool needs around it: reading the two JSON files with
//! errors that name the file and the offending entry, the checks pycocotools does by assertion
//! (result image ids must be images of the ground truth), and the checks it does not do at all
//! (non-finite scores or boxes).

use std::collections::HashSet;
use std::path::Path;

use hotcoco::params::IouType;
use hotcoco::{Annotation, COCOeval, COCO};
use serde_json::Value;

use crate::EvalError;

/// Short names of the 12 stats, in `COCOeval.stats` order.
pub const COCO_STAT_NAMES: [&str; 12] =
    ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"];

/// One detection, as in a COCO results file (`bbox` is `[x, y, width, height]` in pixels).
#[derive(Clone, Debug, PartialEq)]
pub struct CocoDetection {
    pub image_id: u64,
    pub category_id: u64,
    pub bbox: [f64; 4],
    pub score: f64,
}

/// The 12 COCO bbox stats (`COCOeval(gt, dt, 'bbox')` then `evaluate()`, `accumulate()`,
/// `summarize()`; `stats` in pycocotools' order, see [`COCO_STAT_NAMES`]) for a ground-truth
/// annotation file and a results file.
///
/// `annotations` is a COCO instances file (`images`, `annotations` with `bbox`, `area`,
/// `iscrowd`, `categories`). An annotation without `area` gets its box area (pycocotools
/// would raise `KeyError`).
///
/// `results` is a JSON array of detections,
/// `[{"image_id": 42, "category_id": 18, "bbox": [x, y, w, h], "score": 0.93}, ...]`
/// (extra keys are ignored). Differences from pycocotools' `loadRes`, all of them errors where
/// pycocotools crashes or silently produces a meaningless number:
///
/// * malformed JSON, or an entry without one of the four keys: [`EvalError::Json`] /
///   [`EvalError::Format`] naming the entry;
/// * a detection whose `image_id` is not an image of the ground truth: pycocotools asserts
///   "Results do not correspond to current coco set"; we return
///   [`EvalError::UnknownImageIds`] with the first such entry and the number of such entries;
/// * an empty array: pycocotools' `loadRes` fails with `IndexError` on `anns[0]`; we return
///   [`EvalError::EmptyResults`] (a run that detected nothing should be reported as such, not
///   scored);
/// * a `NaN` / `Infinity` score or box coordinate (Python's `json.dump` writes them as the
///   non-standard tokens `NaN`, `Infinity`): [`EvalError::NonFinite`] naming the entry.
///
/// Detections whose `category_id` is not a category of the ground truth are dropped, which is
/// what pycocotools does (it only evaluates `cocoGt.getCatIds()`).
pub fn coco_results_stats(annotations: &Path, results: &Path) -> Result<[f64; 12], EvalError> {
    Ok(coco_results_report(annotations, results)?.stats)
}

/// [`coco_results_stats`] with what was not scored.
#[derive(Debug, Clone, PartialEq)]
pub struct CocoReport {
    pub stats: [f64; 12],
    /// Detections in the file.
    pub detections: usize,
    /// Detections whose `category_id` is not a category of the ground truth (not scored, as in
    /// pycocotools; all of them: every stat is 0 or -1, usually a wrong id mapping), and the
    /// first such id.
    pub unknown_categories: usize,
    pub first_unknown_category: Option<u64>,
}

/// [`coco_results_stats`], also counting the detections whose category the ground truth does not
/// have, so a caller can say so (pycocotools drops them without a word).
pub fn coco_results_report(annotations: &Path, results: &Path) -> Result<CocoReport, EvalError> {
    let gt = load_gt(annotations)?;
    let text = read_text(results)?;
    let detections = parse_results(&text, results)?;
    let (stats, unknown) = stats_for(gt, &detections, results, None)?;
    Ok(CocoReport {
        stats,
        detections: detections.len(),
        unknown_categories: unknown.len(),
        first_unknown_category: unknown.first().copied(),
    })
}

/// [`coco_results_stats`] for detections already in memory (same checks; errors name the index
/// in `detections`).
pub fn coco_detections_stats(annotations: &Path, detections: &[CocoDetection]) -> Result<[f64; 12], EvalError> {
    let gt = load_gt_checked(annotations, detections)?;
    Ok(stats_for(gt, detections, Path::new("<detections>"), None)?.0)
}

/// The ground truth, once every detection's score and box are found finite.
fn load_gt_checked(annotations: &Path, detections: &[CocoDetection]) -> Result<COCO, EvalError> {
    let gt = load_gt(annotations)?;
    for (index, d) in detections.iter().enumerate() {
        let bad = if !d.score.is_finite() {
            Some("score")
        } else if d.bbox.iter().any(|v| !v.is_finite()) {
            Some("bbox")
        } else {
            None
        };
        if let Some(field) = bad {
            return Err(EvalError::NonFinite { path: "<detections>".into(), index, field, image_id: Some(d.image_id) });
        }
    }
    Ok(gt)
}

/// [`coco_detections_stats`] over some of the ground truth's images only, as pycocotools with
/// `cocoEval.params.imgIds = image_ids`: what scoring part of a data set needs (a run with
/// `--limit`, shards not all done), where the images that did not run must not count as images
/// on which nothing was found. Detections on other images are ignored; an id that is not an
/// image of the ground truth is an error.
pub fn coco_detections_stats_on(
    annotations: &Path,
    detections: &[CocoDetection],
    image_ids: &[u64],
) -> Result<[f64; 12], EvalError> {
    if image_ids.is_empty() {
        return Err(EvalError::Invalid("COCO scoring on no images: nothing ran".into()));
    }
    let all = load_gt_checked(annotations, detections)?;
    Ok(stats_for(all, detections, Path::new("<detections>"), Some(image_ids))?.0)
}

/// Format the 12 stats the way pycocotools' `COCOeval.summarize()` prints them.
pub fn format_coco_stats(stats: &[f64; 12]) -> String {
    // (ap, iou, area, max_dets) per stat, from `_summarizeDets` in pycocotools' cocoeval.py.
    const ROWS: [(bool, Option<f64>, &str, u32); 12] = [
        (true, None, "all", 100),
        (true, Some(0.5), "all", 100),
        (true, Some(0.75), "all", 100),
        (true, None, "small", 100),
        (true, None, "medium", 100),
        (true, None, "large", 100),
        (false, None, "all", 1),
        (false, None, "all", 10),
        (false, None, "all", 100),
        (false, None, "small", 100),
        (false, None, "medium", 100),
        (false, None, "large", 100),
    ];
    let mut out = String::new();
    for ((ap, iou, area, max_dets), value) in ROWS.iter().zip(stats) {
        let title = if *ap { "Average Precision" } else { "Average Recall" };
        let kind = if *ap { "(AP)" } else { "(AR)" };
        let iou = iou.map_or_else(|| "0.50:0.95".to_string(), |t| format!("{t:.2}"));
        // ' {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = {:0.3f}'
        out.push_str(&format!(
            " {title:<18} {kind} @[ IoU={iou:<9} | area={area:>6} | maxDets={max_dets:>3} ] = {value:.3}\n"
        ));
    }
    out
}

fn read_text(path: &Path) -> Result<String, EvalError> {
    std::fs::read_to_string(path).map_err(|source| EvalError::Io { path: path.into(), source })
}

fn load_gt(path: &Path) -> Result<COCO, EvalError> {
    // Read first so a missing file is an I/O error naming the path.
    std::fs::metadata(path).map_err(|source| EvalError::Io { path: path.into(), source })?;
    let gt = COCO::new(path).map_err(|e| match e {
        hotcoco::Error::Json(source) => EvalError::Json { path: path.into(), source },
        hotcoco::Error::Io(source) => EvalError::Io { path: path.into(), source },
        other => EvalError::Coco(other),
    })?;
    check_gt(&gt.dataset, path)?;
    Ok(gt)
}

/// The ground-truth checks of the scorer ([`check_gt`]) on an annotation file, for a dataset
/// reader to run before a model does.
pub(crate) fn check_annotations(path: &Path) -> Result<(), EvalError> {
    load_gt(path).map(|_| ())
}

/// What pycocotools accepts silently but cannot be meant: no categories (every stat is -1), an
/// annotation of an image or category the file does not list (left out of the evaluation), a
/// negative area (its size range is wrong).
fn check_gt(d: &hotcoco::types::Dataset, path: &Path) -> Result<(), EvalError> {
    let format = |message: String| EvalError::Format { path: path.into(), message };
    if d.categories.is_empty() {
        return Err(format("no `categories`: there is nothing to evaluate (every stat would be -1)".into()));
    }
    let images: HashSet<u64> = d.images.iter().map(|i| i.id).collect();
    let cats: HashSet<u64> = d.categories.iter().map(|c| c.id).collect();
    for (i, a) in d.annotations.iter().enumerate() {
        let problem = if !images.contains(&a.image_id) {
            format!("image_id {} is not one of `images`", a.image_id)
        } else if !cats.contains(&a.category_id) {
            format!("category_id {} is not one of `categories`", a.category_id)
        } else if a.area.is_some_and(|v| !(v >= 0.0)) {
            format!("area {} is negative or not a number", a.area.unwrap_or_default())
        } else {
            continue;
        };
        return Err(format(format!("annotations[{i}] (id {}): {problem}", a.id)));
    }
    Ok(())
}

/// Replace the non-standard JSON tokens `NaN`, `Infinity` and `-Infinity` (outside strings) by
/// `null`, so that a results file written by Python's `json.dump` parses and the entry can be
/// reported by index instead of as a syntax error.
pub(crate) fn nulls_for_non_finite(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut last = 0;
    let mut in_string = false;
    while i < b.len() {
        let c = b[i];
        if in_string {
            if c == b'\\' {
                i += 2;
                continue;
            }
            if c == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        let token = ["-Infinity", "Infinity", "NaN"].into_iter().find(|t| b[i..].starts_with(t.as_bytes()));
        if let Some(t) = token {
            out.push_str(&text[last..i]);
            out.push_str("null");
            i += t.len();
            last = i;
            continue;
        }
        i += 1;
    }
    out.push_str(&text[last..]);
    out
}

fn id_of(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0 && f.fract() == 0.0 && *f < 2f64.powi(53))
                .map(|f| f as u64)
        }),
        _ => None,
    }
}

fn parse_results(text: &str, path: &Path) -> Result<Vec<CocoDetection>, EvalError> {
    let value: Value = serde_json::from_str(&nulls_for_non_finite(text))
        .map_err(|source| EvalError::Json { path: path.into(), source })?;
    let Value::Array(entries) = value else {
        return Err(EvalError::Format {
            path: path.into(),
            message: "results must be a JSON array of detections \
                      ({\"image_id\", \"category_id\", \"bbox\", \"score\"})"
                .into(),
        });
    };
    let format = |index: usize, what: &str| EvalError::Format {
        path: path.into(),
        message: format!("results[{index}]: {what}"),
    };
    let mut out = Vec::with_capacity(entries.len());
    for (index, e) in entries.iter().enumerate() {
        let Value::Object(obj) = e else {
            return Err(format(index, "not a JSON object"));
        };
        let image_id = id_of(obj.get("image_id"))
            .ok_or_else(|| format(index, "missing or invalid \"image_id\" (a non-negative integer)"))?;
        let category_id = id_of(obj.get("category_id"))
            .ok_or_else(|| format(index, "missing or invalid \"category_id\" (a non-negative integer)"))?;
        let non_finite = |field| EvalError::NonFinite { path: path.into(), index, field, image_id: Some(image_id) };
        let bbox = match obj.get("bbox") {
            Some(Value::Array(a)) if a.len() == 4 => {
                let mut bb = [0.0; 4];
                for (k, v) in a.iter().enumerate() {
                    bb[k] = match v {
                        Value::Number(n) => n.as_f64().ok_or_else(|| non_finite("bbox"))?,
                        Value::Null => return Err(non_finite("bbox")),
                        _ => return Err(format(index, "\"bbox\" must hold 4 numbers [x, y, w, h]")),
                    };
                }
                bb
            }
            _ => return Err(format(index, "missing or invalid \"bbox\" (4 numbers [x, y, w, h])")),
        };
        let score = match obj.get("score") {
            Some(Value::Number(n)) => n.as_f64().filter(|s| s.is_finite()).ok_or_else(|| non_finite("score"))?,
            Some(Value::Null) => return Err(non_finite("score")),
            _ => return Err(format(index, "missing or invalid \"score\" (a number)")),
        };
        out.push(CocoDetection { image_id, category_id, bbox, score });
    }
    Ok(out)
}

/// `only`: evaluate these images (pycocotools' `params.imgIds`); all of the ground truth's when
/// None. Also returns the category ids of the detections not scored (not the ground truth's), in
/// file order.
fn stats_for(
    gt: COCO,
    detections: &[CocoDetection],
    path: &Path,
    only: Option<&[u64]>,
) -> Result<([f64; 12], Vec<u64>), EvalError> {
    if detections.is_empty() {
        return Err(EvalError::EmptyResults { path: path.into() });
    }
    let images: HashSet<u64> = gt.dataset.images.iter().map(|i| i.id).collect();
    if let Some(&missing) = only.unwrap_or(&[]).iter().find(|id| !images.contains(id)) {
        return Err(EvalError::Invalid(format!("image id {missing} to score is not an image of the ground truth")));
    }
    let unknown: Vec<usize> =
        detections.iter().enumerate().filter(|(_, d)| !images.contains(&d.image_id)).map(|(i, _)| i).collect();
    if let Some(&first) = unknown.first() {
        return Err(EvalError::UnknownImageIds {
            path: path.into(),
            index: first,
            image_id: detections[first].image_id,
            count: unknown.len(),
        });
    }
    let categories: HashSet<u64> = gt.dataset.categories.iter().map(|c| c.id).collect();
    // pycocotools evaluates only the ground truth's categories; dropping the others keeps the
    // file order (which breaks score ties) of the rest, so the result is unchanged.
    let (known, unknown): (Vec<&CocoDetection>, Vec<&CocoDetection>) =
        detections.iter().partition(|d| categories.contains(&d.category_id));
    let anns: Vec<Annotation> = known
        .into_iter()
        .map(|d| Annotation {
            image_id: d.image_id,
            category_id: d.category_id,
            bbox: Some(d.bbox),
            score: Some(d.score),
            ..Default::default()
        })
        .collect();
    let unknown: Vec<u64> = unknown.into_iter().map(|d| d.category_id).collect();
    let dt = gt.load_res_anns(anns)?;
    let mut ev = COCOeval::new(gt, dt, IouType::Bbox);
    if let Some(ids) = only {
        // as pycocotools' evaluate(): np.unique(imgIds)
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        ev.params.img_ids = ids;
    }
    ev.evaluate()?;
    ev.accumulate();
    // `summarize_lines` computes the stats without printing.
    ev.summarize_lines();
    let stats = ev.stats().ok_or_else(|| EvalError::Invalid("COCO evaluation produced no stats".into()))?;
    let stats = <[f64; 12]>::try_from(stats)
        .map_err(|_| EvalError::Invalid(format!("COCO evaluation produced {} stats, expected 12", stats.len())))?;
    Ok((stats, unknown))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_tokens_become_null_outside_strings() {
        let t = r#"[{"score": NaN, "bbox": [1, -Infinity, Infinity, 2], "note": "NaN \"Infinity\""}]"#;
        assert_eq!(
            nulls_for_non_finite(t),
            r#"[{"score": null, "bbox": [1, null, null, 2], "note": "NaN \"Infinity\""}]"#
        );
    }

    #[test]
    fn summary_layout() {
        let s = format_coco_stats(&[0.5045806987249628; 12]);
        let first = s.lines().next().unwrap_or_default();
        assert_eq!(first, " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.505");
        assert_eq!(s.lines().count(), 12);
    }
}

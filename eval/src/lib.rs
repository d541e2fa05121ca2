//! Evaluation metrics for Griffon (arXiv 2403.09333): COCO detection mAP, referring-expression
//! and phrase-grounding accuracy, counting errors and CIDEr-D captioning scores, each matching
//! the reference implementation the published numbers come from.
//!
//! # What is computed, and against what it is checked
//!
//! | metric | module | reference | agreement measured |
//! |---|---|---|---|
//! | COCO bbox AP/AR (the 12 `COCOeval.stats`) | [`coco`] | pycocotools 2.0.11 `COCOeval(..., 'bbox')` | bit-identical (difference 0.0) on all vectors; tests require 1e-12 |
//! | REC Acc@0.5 | [`grounding`] | Griffon `griffon/eval/eval_rec.py` | exact rule (first box, IoU > 0.5) |
//! | Flickr30K Entities R@1, ANY-BOX and MERGED-BOX | [`grounding`] | MDETR `datasets/flickr_eval.py` | exact rule (IoU >= 0.5) |
//! | counting MAE / RMSE / NAE | [`counting`] | FSC-147 `test.py`; Counting-DETR `evaluate_val_and_test.py` | exact formulas and summation order |
//! | PTB tokenization | [`ptb`] | pycocoevalcap 1.2 `PTBTokenizer` (Stanford CoreNLP 3.4.1, Java) | token-for-token on every fixture line |
//! | CIDEr-D | [`cider`] | pycocoevalcap 1.2 `Cider` (n=4, sigma=6) | bit-identical on all vectors; tests require 1e-9 |
//!
//! ## COCO mAP
//!
//! The COCO evaluation is delegated to the `hotcoco` crate (1.3.1), a Rust port of
//! pycocotools' `COCOeval`. Before adopting it we ran it on the shared parity vectors
//! (`../shared/data/coco-fake100`: the cocoapi `fakebbox100` results on a 100-image val2014
//! subset, and a 3-image pair) and on our own pycocotools-generated vectors
//! (`tools/reference/make_coco_vectors.py`: crowd regions, objects exactly on the 32² / 96²
//! area boundaries, IoU exactly at every threshold, score ties within and across images,
//! categories with ground truth but no detections and the reverse, duplicate detections,
//! images without ground truth, more than 100 detections per image, a ground truth file
//! without annotations). All 12 stats were identical to pycocotools' to the last bit,
//! including the last-digit effects of numpy's pairwise summation in `np.mean`. The input
//! checks (unknown image ids, empty results, NaN scores) are ours; see
//! [`coco::coco_results_stats`].
//!
//! ## Grounding
//!
//! IoU of `[x1, y1, x2, y2]` pixel boxes as continuous coordinates (no `+ 1`).
//! [`grounding::rec_accuracy`]: the first predicted box only, hit when IoU > 0.5 (strict), a
//! missing answer is a miss. [`grounding::flickr30k_recall_at_1`]: ANY-BOX (IoU >= 0.5 with any
//! of the phrase's boxes) and MERGED-BOX (IoU >= 0.5 with the box enclosing them all).
//!
//! ## Counting
//!
//! [`counting::counting_errors`]: MAE, RMSE, NAE = mean(|pred - gt| / gt). A ground-truth count
//! of 0 leaves NAE undefined (`None`; the NAE reference raises Python's `ZeroDivisionError`)
//! while MAE and RMSE count it. The dataset readers refuse a count of 0 (a sample's exemplar is
//! one of its objects).
//!
//! ## CIDEr-D and the PTB tokenizer
//!
//! pycocoevalcap tokenizes every caption with Stanford's Java PTBTokenizer before scoring.
//! [`ptb`] is a Rust re-implementation of that tokenizer (the JFlex lexer of CoreNLP 3.4.1
//! with pycocoevalcap's options, plus Java's locale-independent lower-casing and
//! pycocoevalcap's punctuation filter). Beyond the ~970 committed fixture lines it was checked
//! against the Java tokenizer on 437,270 more (`tools/reference/make_cider_vectors.py
//! --check-rust`): every Basic Multilingual Plane code point in five contexts, and randomly
//! assembled captions full of contractions, abbreviations, quotes, brackets, numbers, URLs,
//! entities, emoji and Greek sigma, with no differing line. The one known divergence (line
//! breaks other than `'\n'` inside a caption) is described in [`ptb`]. [`cider`] follows `cider_scorer.py` operation by
//! operation, so scores agree bit for bit (numpy's SIMD `log` can differ from libm's by one
//! ulp for integers of 9170 and above, i.e. only for sets of at least 9170 images).
//!
//! ## Command-line entry points
//!
//! [`coco_results_stats`] + [`format_coco_stats`], and [`cider_from_files`] (input formats in
//! their docs).

pub mod cider;
pub mod coco;
pub mod counting;
pub mod datasets;
pub mod grounding;
pub mod numeric;
pub mod ptb;
pub mod runners;

use std::path::PathBuf;

pub use cider::{cider_d, cider_from_files, cider_raw, CiderReport};
pub use coco::{
    coco_detections_stats, coco_detections_stats_on, coco_results_report, coco_results_stats, format_coco_stats,
    CocoDetection, CocoReport, COCO_STAT_NAMES,
};
pub use counting::{counting_errors, CountingErrors};
pub use grounding::{flickr30k_recall_at_1, iou_xyxy, rec_accuracy, Accuracy, BoxXyxy, FlickrRecall, PhraseSample};
pub use ptb::{ptb_tokenize, ptb_tokenize_raw};

/// Everything that can go wrong while evaluating; every message names the file and, where
/// there is one, the entry at fault.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid JSON.
    #[error("malformed JSON in {}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// Valid JSON of the wrong shape.
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    /// A COCO results file with no detections.
    #[error(
        "{}: the results list is empty (pycocotools cannot load an empty results list; \
         there is nothing to score)",
        path.display()
    )]
    EmptyResults { path: PathBuf },
    /// Detections on images that the ground truth does not have.
    #[error(
        "{}: results[{index}] has image_id {image_id}, which is not an image of the ground truth \
         ({count} detection(s) in all have unknown image ids)",
        path.display()
    )]
    UnknownImageIds { path: PathBuf, index: usize, image_id: u64, count: usize },
    /// A NaN or infinite score or box coordinate.
    #[error(
        "{}: results[{index}]{} has a non-finite {field} (NaN or Infinity)",
        path.display(),
        image_id.map(|i| format!(" (image_id {i})")).unwrap_or_default()
    )]
    NonFinite { path: PathBuf, index: usize, field: &'static str, image_id: Option<u64> },
    /// Invalid arguments to a metric.
    #[error("{0}")]
    Invalid(String),
    /// An error reported by the COCO evaluation engine.
    #[error("COCO evaluation failed: {0}")]
    Coco(#[from] hotcoco::Error),
}

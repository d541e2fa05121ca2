//! Training-free confidence per box from the probabilities seen while decoding
//! (shared/GRIFFON_FORMAT.md, "Confidence"; source: jefferyZhan/Griffon `coor_utils.accum_probs`,
//! used by `eval/eval_detection.py` for COCO mAP): class probability = product of the name-token
//! probabilities, box probability = product of the coordinate-token probabilities (not the
//! bracket tokens: the reference's markers),
//! score = sqrt(class * box).
//!
//! [`reference_accum_probs`] is a faithful port of the reference function, which finds names and
//! boxes by two marker token ids (Gemma: 200348 / 50648; Llama-2: 29987 / 29899), including its
//! quirks (the token before the start marker is left out of the name product; Python's negative
//! slice when the answer starts with the marker; truncation to the shorter list).
//! [`instance_scores`] applies the same geometric mean to the name and box spans the answer parser
//! found, which works for any tokenizer and keeps every box aligned with its own score.

use crate::answer::Instance;

/// One generated token: its byte span in the decoded answer text and its probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenSpan {
    pub start: usize,
    pub end: usize,
    pub prob: f64,
}

fn product_over(tokens: &[TokenSpan], span: &std::ops::Range<usize>) -> f64 {
    tokens.iter().filter(|t| t.end > span.start && t.start < span.end).map(|t| t.prob).product()
}

/// sqrt(P(name tokens) * P(coordinate tokens)) per instance; a name-less (counting) box uses
/// P(name) = 1. Tokens are matched to the spans by byte overlap. The coordinate tokens are those
/// overlapping the text between the brackets: a token that holds only a bracket and the joining
/// characters (`[`, `-[`, `]`, `]&`) is not one, as the reference's box product runs strictly
/// between its start and end marker tokens (until session 28 those tokens were multiplied in).
pub fn instance_scores(instances: &[Instance], tokens: &[TokenSpan]) -> Vec<f64> {
    instances
        .iter()
        .map(|inst| {
            let class = inst.name_span.as_ref().map(|s| product_over(tokens, s)).unwrap_or(1.0);
            let b = &inst.box_span;
            // box_span holds the brackets: at least two bytes
            let inner = b.start + 1..b.end.saturating_sub(1).max(b.start + 1);
            let boxp = product_over(tokens, &inner);
            (class * boxp).sqrt()
        })
        .collect()
}

/// Python slice bounds `[a:b]` for a list of length `n`.
fn py_range(a: i64, b: i64, n: usize) -> std::ops::Range<usize> {
    let n = n as i64;
    let fix = |i: i64| if i < 0 { (i + n).max(0) } else { i.min(n) };
    let (a, b) = (fix(a), fix(b));
    if b <= a {
        0..0
    } else {
        a as usize..b as usize
    }
}

/// Port of the reference `accum_probs(output_ids, softmax(scores), start_token, end_token)`:
/// `probs[i]` is the probability of generated token i (the greedy max of its step). Products are
/// taken in f32 as torch does on a float32 tensor.
pub fn reference_accum_probs(ids: &[u32], probs: &[f32], start_token: u32, end_token: u32) -> Vec<f32> {
    let n = ids.len().min(probs.len());
    let prod = |r: std::ops::Range<usize>| -> f32 { probs[r].iter().product() };
    let (mut start_idx, mut end_idx, mut loc_start, mut loc_end): (i64, i64, i64, i64);
    start_idx = 0;
    loc_start = 0;
    let mut box_probs = Vec::new();
    let mut name_probs = Vec::new();
    for (idx, &tok) in ids.iter().take(n).enumerate() {
        let idx = idx as i64;
        if tok == start_token {
            start_idx = idx + 1;
            loc_end = idx - 1;
            name_probs.push(prod(py_range(loc_start, loc_end, n)));
        } else if tok == end_token {
            end_idx = idx;
            loc_start = idx + 1;
            box_probs.push(prod(py_range(start_idx, end_idx, n)));
        } else if idx == n as i64 - 1 {
            loc_end = idx;
            name_probs.push(prod(py_range(loc_start, loc_end, n)));
        }
    }
    let m = name_probs.len().min(box_probs.len());
    (0..m).map(|i| name_probs[i].powf(0.5) * box_probs[i].powf(0.5)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::parse_answer;

    #[test]
    fn span_scores() {
        let text = "cat-[0.1,0.2,0.3,0.4]&[0.5,0.5,0.6,0.6]";
        let p = parse_answer(text);
        // tokens: "cat" "-[" "0.1,0.2," "0.3,0.4]" "&[" "0.5,0.5,0.6,0.6]"
        let cuts = [0, 3, 5, 13, 21, 23, text.len()];
        let probs = [0.9, 0.8, 0.5, 0.4, 0.7, 0.6];
        let toks: Vec<TokenSpan> =
            (0..6).map(|i| TokenSpan { start: cuts[i], end: cuts[i + 1], prob: probs[i] }).collect();
        let s = instance_scores(&p.instances, &toks);
        // "-[" and "&[" hold no coordinate: left out, as the reference's markers
        assert!((s[0] - (0.9f64 * (0.5 * 0.4)).sqrt()).abs() < 1e-12);
        assert!((s[1] - 0.6f64.sqrt()).abs() < 1e-12);
        // a bracket alone, a "]&" token and a token holding a bracket and a coordinate
        let text = "a-[0.1,0.2,0.3,0.4]&b-[0.5,0.5,0.6,0.6]";
        let p = parse_answer(text);
        // tokens: "a" "-" "[" "0.1,0.2,0.3,0.4" "]&" "b" "-[0.5" ",0.5,0.6,0.6]"
        let cuts = [0, 1, 2, 3, 18, 20, 21, 26, text.len()];
        let probs = [0.9, 0.8, 0.7, 0.5, 0.3, 0.6, 0.4, 0.2];
        let toks: Vec<TokenSpan> =
            (0..8).map(|i| TokenSpan { start: cuts[i], end: cuts[i + 1], prob: probs[i] }).collect();
        let s = instance_scores(&p.instances, &toks);
        assert!((s[0] - (0.9f64 * 0.5).sqrt()).abs() < 1e-12, "{s:?}");
        assert!((s[1] - (0.6f64 * (0.4 * 0.2)).sqrt()).abs() < 1e-12, "{s:?}");
    }

    #[test]
    fn python_slices() {
        assert_eq!(py_range(0, -1, 5), 0..4);
        assert_eq!(py_range(3, 1, 5), 0..0);
        assert_eq!(py_range(2, 9, 5), 2..5);
    }

    #[test]
    fn accum_probs_hand_checked() {
        // name "a"(0.5) start(0.9) c1(0.8) c2(0.5) end(0.9) name "b"(0.4) start(1) c(0.25) eos(1)
        let ids = [10, 1, 20, 21, 2, 11, 1, 22, 99];
        let probs = [0.5, 0.9, 0.8, 0.5, 0.9, 0.4, 1.0, 0.25, 1.0];
        let out = reference_accum_probs(&ids, &probs, 1, 2);
        // name products skip the token before the start marker: first [0:0] = 1, second [5:5] = 1
        // boxes: [2:4] = 0.4; the second box never sees an end marker -> truncated to one score
        assert_eq!(out.len(), 1);
        assert!((out[0] - 0.4f32.sqrt()).abs() < 1e-6);
    }
}

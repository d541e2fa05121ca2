//! CIDEr-D as pycocoevalcap computes it (`pycocoevalcap/cider/cider.py` and `cider_scorer.py`,
//! release 1.2, Vedantam et al. 2015 with the "D" modifications).
//!
//! For tokenized captions (see [`crate::ptb`]):
//!
//! * n-grams of length 1..=4 (`n = 4`) are counted per caption (`precook`);
//! * document frequency `df(g)` = number of images whose *references* contain `g`, over the
//!   evaluated set (`compute_doc_freq`); `ref_len = ln(number of images)`;
//! * a caption becomes, per n, the vector `tf(g) * (ref_len - ln(max(1, df(g))))` with its L2
//!   norm; its "length" is its number of **bigrams** (`counts2vec` adds `term_freq` when the
//!   n-gram index is 1, i.e. for 2-grams — the reference's quirk, kept);
//! * per reference and n: `sum_g min(v_hyp(g), v_ref(g)) * v_ref(g)` (clipping), divided by
//!   `|v_hyp| * |v_ref|` when both are non-zero, times the length penalty
//!   `exp(-(len_hyp - len_ref)^2 / (2 * sigma^2))` with `sigma = 6` (computed as
//!   `e ** x` with libm `pow`, like Python);
//! * per image: the 4 per-n scores summed over references, averaged over n (`np.mean`), divided
//!   by the number of references, times 10;
//! * corpus score: `np.mean` of the per-image scores.
//!
//! Every sum runs in the reference's order (n-grams in first-occurrence order, as Python dicts
//! iterate; numpy's pairwise order for the means), and `ln` / `pow` are the platform libm's, as
//! in CPython. numpy's own SIMD `log`, which the reference uses for `ref_len` and the document
//! frequencies, differs from libm's by one ulp for a few integers (the first is 9170, measured
//! with numpy 2.4.6 on an AVX-512 CPU); with fewer than 9170 images and document frequencies
//! below that, scores are bit-identical.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use crate::numeric::{numpy_mean, py_pow};
use crate::ptb::{is_py_space, ptb_tokenize};
use crate::EvalError;

const N: usize = 4;
const SIGMA: f64 = 6.0;

/// Result of [`cider_from_files`].
#[derive(Clone, Debug, PartialEq)]
pub struct CiderReport {
    /// Corpus CIDEr-D (mean of the per-image scores).
    pub score: f64,
    /// Per-image scores, in the order the image ids first appear in the references file.
    pub per_image: Vec<(String, f64)>,
}

/// n-gram counts of one caption in first-occurrence order (Python dict order), split by n.
struct Cooked {
    grams: [Vec<(Vec<String>, f64)>; N],
}

fn precook(caption: &str) -> Cooked {
    // `s.split()`: split on runs of Python whitespace.
    let words: Vec<&str> = caption.split(is_py_space).filter(|w| !w.is_empty()).collect();
    let mut grams: [Vec<(Vec<String>, f64)>; N] = Default::default();
    let mut index: [HashMap<Vec<String>, usize>; N] = Default::default();
    for k in 1..=N {
        for i in 0..(words.len() + 1).saturating_sub(k) {
            let g: Vec<String> = words[i..i + k].iter().map(|w| w.to_string()).collect();
            match index[k - 1].get(&g) {
                Some(&j) => grams[k - 1][j].1 += 1.0,
                None => {
                    index[k - 1].insert(g.clone(), grams[k - 1].len());
                    grams[k - 1].push((g, 1.0));
                }
            }
        }
    }
    Cooked { grams }
}

struct Vector {
    vec: [Vec<(Vec<String>, f64)>; N],
    lookup: [HashMap<Vec<String>, f64>; N],
    norm: [f64; N],
    length: f64,
}

fn counts2vec(c: &Cooked, df: &HashMap<Vec<String>, f64>, ref_len: f64) -> Vector {
    let mut vec: [Vec<(Vec<String>, f64)>; N] = Default::default();
    let mut lookup: [HashMap<Vec<String>, f64>; N] = Default::default();
    let mut norm = [0.0; N];
    let mut length = 0.0;
    for n in 0..N {
        for (g, tf) in &c.grams[n] {
            let d = df.get(g).copied().unwrap_or(0.0).max(1.0).ln();
            let v = tf * (ref_len - d);
            norm[n] += py_pow(v, 2.0);
            if n == 1 {
                length += tf;
            }
            vec[n].push((g.clone(), v));
            lookup[n].insert(g.clone(), v);
        }
    }
    for x in &mut norm {
        *x = x.sqrt();
    }
    Vector { vec, lookup, norm, length }
}

/// `sim` of `cider_scorer.py`: per-n clipped cosine similarity times the length penalty.
#[allow(clippy::needless_range_loop)] // mirrors the reference loop over n
fn sim(h: &Vector, r: &Vector) -> [f64; N] {
    let delta = h.length - r.length;
    let mut val = [0.0; N];
    for n in 0..N {
        for (g, vh) in &h.vec[n] {
            let vr = r.lookup[n].get(g).copied().unwrap_or(0.0);
            // Python's min(a, b) returns a unless b < a.
            let m = if vr < *vh { vr } else { *vh };
            val[n] += m * vr;
        }
        if h.norm[n] != 0.0 && r.norm[n] != 0.0 {
            val[n] /= h.norm[n] * r.norm[n];
        }
        val[n] *= py_pow(std::f64::consts::E, -py_pow(delta, 2.0) / (2.0 * py_pow(SIGMA, 2.0)));
    }
    val
}

/// CIDEr-D of already tokenized captions: `refs[i]` are the reference captions of image `i`,
/// `hyps[i]` its candidate. Returns the corpus score and the per-image scores
/// (`Cider().compute_score(gts, res)`).
///
/// Errors: different lengths, an image without references, or references without a single
/// word (the reference fails on `max()` of an empty sequence).
pub fn cider_d(refs: &[Vec<String>], hyps: &[String]) -> Result<(f64, Vec<f64>), EvalError> {
    if refs.len() != hyps.len() {
        return Err(EvalError::Invalid(format!(
            "CIDEr: {} images with references but {} candidates",
            refs.len(),
            hyps.len()
        )));
    }
    if refs.is_empty() {
        return Err(EvalError::Invalid("CIDEr of an empty set is undefined".into()));
    }
    if let Some(i) = refs.iter().position(|r| r.is_empty()) {
        return Err(EvalError::Invalid(format!("CIDEr: image {i} has no reference captions")));
    }
    let crefs: Vec<Vec<Cooked>> = refs.iter().map(|rs| rs.iter().map(|r| precook(r)).collect()).collect();
    let ctest: Vec<Cooked> = hyps.iter().map(|h| precook(h)).collect();
    let mut df: HashMap<Vec<String>, f64> = HashMap::new();
    for rs in &crefs {
        let mut seen: std::collections::HashSet<&Vec<String>> = std::collections::HashSet::new();
        for c in rs {
            for n in 0..N {
                for (g, _) in &c.grams[n] {
                    seen.insert(g);
                }
            }
        }
        for g in seen {
            *df.entry(g.clone()).or_insert(0.0) += 1.0;
        }
    }
    if df.is_empty() {
        return Err(EvalError::Invalid("CIDEr: the reference captions contain no words".into()));
    }
    let ref_len = (crefs.len() as f64).ln();
    let mut scores = Vec::with_capacity(crefs.len());
    for (test, rs) in ctest.iter().zip(&crefs) {
        let h = counts2vec(test, &df, ref_len);
        let mut score = [0.0; N];
        for r in rs {
            let rv = counts2vec(r, &df, ref_len);
            let s = sim(&h, &rv);
            for n in 0..N {
                score[n] += s[n];
            }
        }
        let mut avg = numpy_mean(&score).unwrap_or(0.0);
        avg /= rs.len() as f64;
        avg *= 10.0;
        scores.push(avg);
    }
    let mean = numpy_mean(&scores).unwrap_or(0.0);
    Ok((mean, scores))
}

/// pycocoevalcap's full pipeline for one candidate caption per image: PTB-tokenize the
/// references (one stream, in image order) and the candidates (one stream, same order), then
/// [`cider_d`]. `refs[i]` and `hyps[i]` belong to the same image.
pub fn cider_raw<S: AsRef<str>>(refs: &[Vec<S>], hyps: &[S]) -> Result<(f64, Vec<f64>), EvalError> {
    let flat: Vec<&str> = refs.iter().flat_map(|r| r.iter().map(|s| s.as_ref())).collect();
    let mut tok = ptb_tokenize(&flat).into_iter();
    let refs_tok: Vec<Vec<String>> = refs.iter().map(|r| tok.by_ref().take(r.len()).collect()).collect();
    let hyps_tok = ptb_tokenize(hyps);
    cider_d(&refs_tok, &hyps_tok)
}

/// A JSON document whose top-level object keeps its key order (serde_json's `Map` sorts keys
/// unless its `preserve_order` feature is on, which would change it for the whole workspace).
enum TopLevel {
    Object(Vec<(String, Value)>),
    Array(Vec<Value>),
    Other,
}

impl<'de> serde::Deserialize<'de> for TopLevel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TopLevel;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object or array")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<TopLevel, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(TopLevel::Object(out))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> Result<TopLevel, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = s.next_element::<Value>()? {
                    out.push(v);
                }
                Ok(TopLevel::Array(out))
            }
            fn visit_bool<E>(self, _: bool) -> Result<TopLevel, E> {
                Ok(TopLevel::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<TopLevel, E> {
                Ok(TopLevel::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<TopLevel, E> {
                Ok(TopLevel::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<TopLevel, E> {
                Ok(TopLevel::Other)
            }
            fn visit_str<E>(self, _: &str) -> Result<TopLevel, E> {
                Ok(TopLevel::Other)
            }
            fn visit_unit<E>(self) -> Result<TopLevel, E> {
                Ok(TopLevel::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// An image id as a string: JSON strings as they are, numbers in their JSON spelling.
fn id_key(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Read `{"id": [captions]}` / `{"id": "caption"}` / `[{"image_id", "caption"}, ...]` into
/// (id, captions) in file order.
fn read_captions(path: &Path) -> Result<Vec<(String, Vec<String>)>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io { path: path.into(), source })?;
    let top: TopLevel = serde_json::from_str(&text).map_err(|source| EvalError::Json { path: path.into(), source })?;
    let fmt = |message: String| EvalError::Format { path: path.into(), message };
    let mut order: Vec<(String, Vec<String>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    match top {
        TopLevel::Object(entries) => {
            for (id, v) in entries {
                if index.contains_key(&id) {
                    return Err(fmt(format!("image id {id:?} appears twice")));
                }
                let caps = match v {
                    Value::String(s) => vec![s],
                    Value::Array(a) if !a.is_empty() => a
                        .into_iter()
                        .map(|c| match c {
                            Value::String(s) => Ok(s),
                            _ => Err(fmt(format!("image {id:?}: captions must be strings"))),
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                    Value::Array(_) => return Err(fmt(format!("image {id:?} has an empty caption list"))),
                    _ => return Err(fmt(format!("image {id:?}: expected a caption string or a list of them"))),
                };
                index.insert(id.clone(), order.len());
                order.push((id, caps));
            }
        }
        TopLevel::Array(entries) => {
            for (i, e) in entries.iter().enumerate() {
                let id = e.get("image_id").and_then(id_key);
                let cap = e.get("caption").and_then(Value::as_str);
                let (Some(id), Some(cap)) = (id, cap) else {
                    return Err(fmt(format!(
                        "entry {i}: expected {{\"image_id\": <number or string>, \"caption\": <string>}}"
                    )));
                };
                match index.get(&id) {
                    Some(&j) => order[j].1.push(cap.to_string()),
                    None => {
                        index.insert(id.clone(), order.len());
                        order.push((id, vec![cap.to_string()]));
                    }
                }
            }
        }
        TopLevel::Other => {
            return Err(fmt(
                "expected an object {\"image_id\": [captions]} or a list of {\"image_id\", \"caption\"}".into()
            ))
        }
    }
    Ok(order)
}

/// CIDEr-D of a candidate file against a reference file, through the full pycocoevalcap
/// pipeline (PTB tokenization, then `Cider(n=4, sigma=6)`).
///
/// Both files are JSON, in either of two shapes:
///
/// * an object keyed by image id: `{"391895": ["A man riding a bike.", "..."], ...}` for
///   references, `{"391895": "a man on a bike"}` (or a one-element list) for candidates;
/// * a list of entries, as in COCO caption files and results:
///   `[{"image_id": 391895, "caption": "A man riding a bike."}, ...]`, several entries per id for
///   references, exactly one per id for candidates.
///
/// Ids are compared as strings (a number is spelled as in the JSON, so `391895` and
/// `"391895"` are the same image). The two files must cover the same set of images (the
/// reference asserts `gts.keys() == res.keys()`); every image needs at least one reference and
/// exactly one candidate. Images are evaluated in the order they first appear in `refs`; that
/// order is also the order captions are fed to the tokenizer (as one stream for the references
/// and one for the candidates, as pycocoevalcap's `COCOEvalCap` does).
pub fn cider_from_files(refs: &Path, hyps: &Path) -> Result<CiderReport, EvalError> {
    let refs_v = read_captions(refs)?;
    let hyps_v = read_captions(hyps)?;
    let mut hyp_of: HashMap<&str, &Vec<String>> = HashMap::new();
    for (id, caps) in &hyps_v {
        if caps.len() != 1 {
            return Err(EvalError::Format {
                path: hyps.into(),
                message: format!("image {id:?} has {} candidate captions, expected exactly 1", caps.len()),
            });
        }
        hyp_of.insert(id.as_str(), caps);
    }
    let mut hyp_list = Vec::with_capacity(refs_v.len());
    for (id, _) in &refs_v {
        match hyp_of.get(id.as_str()) {
            Some(c) => hyp_list.push(c[0].as_str()),
            None => {
                return Err(EvalError::Format {
                    path: hyps.into(),
                    message: format!("no candidate caption for image {id:?} of {}", refs.display()),
                })
            }
        }
    }
    if hyps_v.len() != refs_v.len() {
        let known: std::collections::HashSet<&str> = refs_v.iter().map(|(id, _)| id.as_str()).collect();
        let extra = hyps_v.iter().find(|(id, _)| !known.contains(id.as_str())).map(|(id, _)| id.clone());
        return Err(EvalError::Format {
            path: hyps.into(),
            message: format!(
                "candidate for image {:?}, which has no references in {}",
                extra.unwrap_or_default(),
                refs.display()
            ),
        });
    }
    let ref_caps: Vec<Vec<&str>> = refs_v.iter().map(|(_, c)| c.iter().map(String::as_str).collect()).collect();
    let (score, per) = cider_raw(&ref_caps, &hyp_list)?;
    Ok(CiderReport { score, per_image: refs_v.into_iter().map(|(id, _)| id).zip(per).collect() })
}

//! Running co-referring requests ([`griffon_core::Request`]) end to end: exemplar crops, one or
//! more model turns, answer parsing, confidence per box, mapping to pixels.

use crate::error::{Error, Result};
use crate::generate::{generate_with, Generation, SamplingOptions, StopReason};
use crate::griffon::Griffon;
use crate::resample::{load_rgb, preprocess};
use candle_core::Tensor;
use griffon_core::answer::{parse_answer, Dropped};
use griffon_core::confidence::{instance_scores, TokenSpan};
use griffon_core::grammar::{AnswerGrammar, PrefixState};
use griffon_core::request::REGION_SLOP_PX;
use griffon_core::{Exemplar, NormBox, PixelBox, Request, Task, Template};
use image::RgbImage;
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub sampling: SamplingOptions,
    pub template: Option<Template>,
    /// Categories per detection turn.
    pub chunk: usize,
    /// Constrain detection-style answers to the grammar.
    pub constrained: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self { sampling: SamplingOptions::default(), template: None, chunk: 80, constrained: false }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    pub width: u32,
    pub height: u32,
}

/// A box the answer wrote again, exactly or nearly (`griffon_core::ParsedAnswer::repeats`).
#[derive(Debug, Clone, Serialize)]
pub struct Repeat {
    #[serde(flatten)]
    pub detection: Detection,
    /// How many of the output's `detections` come before it in the answer (the place the
    /// reference's list of boxes holds it, which decides ties in score when COCO matches boxes).
    pub after: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Detection {
    /// Object name (the phrase / expression for grounding; null for the counting form).
    pub label: Option<String>,
    /// Pixel xyxy on the main image.
    #[serde(rename = "box")]
    pub box_px: [f64; 4],
    /// Normalized xyxy as the model wrote it (clamped to [0, 1]).
    pub box_norm: [f64; 4],
    pub score: f64,
    /// For `phrases`: which phrase this box answers (0-based, among the request's non-blank
    /// phrases, in order: the turn); a phrase written twice is two turns, told apart by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phrase: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskOutput {
    pub image: ImageInfo,
    pub detections: Vec<Detection>,
    /// The model's text (turns joined by newlines); for `describe`, the description.
    pub text: String,
    /// Pieces of the answer the parser could not use, with the reason.
    pub dropped: Vec<Dropped>,
    /// The boxes the answer repeated (also in `dropped`), with their scores: the reference's
    /// evaluation keeps them, so a COCO score or a count of the answer's boxes takes them back.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repeats: Vec<Repeat>,
    /// For `count`: the number of boxes found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    /// For `describe`: geometric mean of the generated tokens' probabilities.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_score: Option<f64>,
    /// The user texts sent to the model, one per turn.
    pub prompts: Vec<String>,
    /// A turn's answer ended without its end token (`max_new_tokens` or the model's positions
    /// reached, or the constrained grammar allowed nothing more): objects after the cut are missing. Each such turn also has a
    /// `dropped` entry saying why.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// A turn was cut by `max_new_tokens` (not by the model's positions or the grammar): a run
    /// with a higher limit may answer it in full.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub token_limited: bool,
}

/// Each of a turn's repeats' [`Repeat::after`]: the output's detections before the turn
/// (`before`) and the turn's kept boxes written before it, at most the `kept` the turn keeps
/// (grounding keeps the first box).
pub fn repeat_places(parsed: &griffon_core::ParsedAnswer, before: usize, kept: usize) -> Vec<usize> {
    parsed
        .repeats
        .iter()
        .map(|r| {
            let earlier = parsed.instances.iter().filter(|k| k.box_span.start < r.box_span.start).count();
            before + earlier.min(kept)
        })
        .collect()
}

/// Whether a constrained decode may take a token: `before` is the answer's text so far, `after`
/// the text with the token (both without leading white space), `is_stop` whether the token ends
/// the answer. A stop token may only end a complete answer; another token must change the text
/// (one that adds nothing could repeat forever) and leave a valid prefix. A token ending inside
/// a multi-byte character (byte fallback, byte-level BPE) decodes to U+FFFD until the
/// character's last byte: it is taken where the grammar allows a character outside ASCII (in a
/// name). Before, such tokens were refused, so a name with é could not be written. A byte-level
/// decoder writes one U+FFFD for a whole unfinished character, so the middle bytes of a 3- or
/// 4-byte one leave the text as it was: `unchanged` counts the tokens just taken that did, at
/// most 2 in a row. More than 3 pending U+FFFD cannot be one character (a wrong byte): refused,
/// so a decode that went astray inside a character ends instead of running to its limit.
pub fn grammar_allows(g: &AnswerGrammar, before: &str, after: &str, is_stop: bool, unchanged: usize) -> bool {
    if is_stop {
        return g.check_prefix(after) == PrefixState::Complete;
    }
    let whole = after.trim_end_matches('\u{FFFD}');
    let pending = after[whole.len()..].chars().count();
    if after == before && (pending == 0 || unchanged >= 2) {
        return false;
    }
    if pending > 0 {
        return pending <= 3 && g.allows_non_ascii_after(whole);
    }
    g.check_prefix(after) != PrefixState::Invalid
}

/// Why an answer ended without its end token, or None when it ended normally.
pub fn cut_reason(stop: StopReason, max_new_tokens: usize) -> Option<String> {
    match stop {
        StopReason::StopToken => None,
        StopReason::MaxTokens => Some(format!(
            "the answer reached max_new_tokens ({max_new_tokens}) before its end: anything after this is missing"
        )),
        StopReason::NoAllowedToken => {
            Some("the answer grammar allowed no further token: anything after this is missing".into())
        }
        StopReason::MaxPositions(max) => Some(format!(
            "the answer filled the model's max_position_embeddings ({max} positions, prompt included) before its \
             end: anything after this is missing"
        )),
    }
}

/// The last `n` characters of `s` (where a cut answer ended).
fn tail_chars(s: &str, n: usize) -> String {
    let k = s.chars().count().saturating_sub(n);
    s.chars().skip(k).collect()
}

/// Crops a pixel box (xyxy, floats rounded outward to whole pixels) out of an image. The box
/// may reach [`REGION_SLOP_PX`] past the edges (a dataset's float box); the crop is clamped to
/// the image and is at least one pixel.
pub fn crop(img: &RgbImage, b: PixelBox, what: &str) -> Result<RgbImage> {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return Err(Error::Request(format!("{what}: the image is empty ({w}x{h})")));
    }
    b.validate_within(w, h, REGION_SLOP_PX).map_err(|m| Error::Request(format!("{what}: {m}")))?;
    // (validated: finite, so the casts saturate at 0 rather than wrap)
    let x1 = (b.x1.floor().max(0.0) as u32).min(w - 1);
    let y1 = (b.y1.floor().max(0.0) as u32).min(h - 1);
    let x2 = (b.x2.ceil() as u32).clamp(x1 + 1, w);
    let y2 = (b.y2.ceil() as u32).clamp(y1 + 1, h);
    Ok(image::imageops::crop_imm(img, x1, y1, x2 - x1, y2 - y1).to_image())
}

/// Each generated token's byte span in the decoded (special tokens skipped) text.
pub fn token_spans(m: &Griffon, gen: &Generation) -> Result<(String, Vec<TokenSpan>)> {
    let (prev, byte_spans) = m.tokenizer.decode_spans(&gen.tokens)?;
    let mut spans: Vec<TokenSpan> =
        byte_spans.iter().zip(&gen.probs).map(|(&(start, end), &p)| TokenSpan { start, end, prob: p as f64 }).collect();
    // the answer is trimmed: shift spans by the leading whitespace
    let lead = prev.len() - prev.trim_start().len();
    let text = prev.trim().to_string();
    for s in &mut spans {
        s.start = s.start.saturating_sub(lead).min(text.len());
        s.end = s.end.saturating_sub(lead).min(text.len());
    }
    Ok((text, spans))
}

/// The image an exemplar refers to: a file used whole, or a crop of the main or another image.
pub fn exemplar_image(e: &Exemplar, main: &RgbImage) -> Result<RgbImage> {
    match e {
        Exemplar::Image(p) => Ok(load_rgb(p)?),
        Exemplar::BoxOnImage(b) => crop(main, *b, "exemplar box on the main image"),
        Exemplar::BoxOnOther { image, region } => {
            let other = load_rgb(image)?;
            crop(&other, *region, &format!("exemplar box on {}", image.display()))
        }
    }
}

impl Griffon {
    /// Runs one rendered user text with region images; returns the generation and its text.
    fn run_turn(
        &self,
        image_tokens: &Tensor,
        user_text: &str,
        regions: &[RgbImage],
        opts: &RunOptions,
        grammar: Option<&AnswerGrammar>,
    ) -> Result<(String, Generation, Vec<TokenSpan>)> {
        let template = opts.template.unwrap_or(self.template);
        let prompt = self.render_prompt(user_text, Some(template));
        let region_px = regions
            .iter()
            .map(|r| preprocess(r, self.region_size(), &self.device).map_err(Error::from))
            .collect::<Result<Vec<_>>>()?;
        let prepared = self.prepare_with_image_tokens(&prompt, image_tokens, &region_px)?;
        let stop = self.stop_ids(template);
        let gen = match grammar {
            None => generate_with(&self.llm, &prepared.embeds, &stop, &opts.sampling, |_, _| true)?,
            Some(g) => {
                let tok = &self.tokenizer;
                // the answer so far: ids decoded, their text, how many of the last ids left the
                // text unchanged; and the text with the token last allowed, which is the one
                // taken (greedy and sampling both take the first candidate allowed), so the next
                // step need not decode it again
                struct SoFar {
                    ids: usize,
                    text: String,
                    unchanged: usize,
                }
                let mut so_far = SoFar { ids: usize::MAX, text: String::new(), unchanged: 0 };
                let mut allowed: Option<String> = None;
                generate_with(&self.llm, &prepared.embeds, &stop, &opts.sampling, |ids, cand| {
                    if so_far.ids != ids.len() {
                        let text = allowed.take().unwrap_or_else(|| {
                            tok.decode(ids, true).map(|t| t.trim_start().to_string()).unwrap_or_default()
                        });
                        let unchanged = if !ids.is_empty() && text == so_far.text { so_far.unchanged + 1 } else { 0 };
                        so_far = SoFar { ids: ids.len(), text, unchanged };
                    }
                    if stop.contains(&cand) {
                        return grammar_allows(g, &so_far.text, &so_far.text, true, so_far.unchanged);
                    }
                    let mut all = ids.to_vec();
                    all.push(cand);
                    let Ok(text) = tok.decode(&all, true) else { return false };
                    let ok = grammar_allows(g, &so_far.text, text.trim_start(), false, so_far.unchanged);
                    if ok {
                        allowed = Some(text.trim_start().to_string());
                    }
                    ok
                })?
            }
        };
        let (text, spans) = token_spans(self, &gen)?;
        Ok((text, gen, spans))
    }

    /// Runs a request end to end.
    pub fn run(&self, req: &Request, opts: &RunOptions) -> Result<TaskOutput> {
        let main = load_rgb(&req.image)?;
        let (w, h) = (main.width(), main.height());
        let turns = req.turns(w, h, opts.chunk).map_err(Error::Request)?;
        // the exemplars are read and checked before the main image is encoded (a bad one is
        // refused without that cost)
        let regions = turns
            .iter()
            .map(|t| t.regions.iter().map(|e| exemplar_image(e, &main)).collect::<Result<Vec<_>>>())
            .collect::<Result<Vec<_>>>()?;
        let key = if self.image_cache.enabled() { ImageKey::of(&req.image) } else { None };
        let image_tokens = match key.as_ref().and_then(|k| self.image_cache.get(k)) {
            Some(t) => t,
            None => {
                let pixels = preprocess(&main, self.image_size(), &self.device)?;
                let t = self.encode_image(&pixels.unsqueeze(0)?)?.squeeze(0)?;
                if let Some(k) = key {
                    self.image_cache.put(k, &t);
                }
                t
            }
        };
        let mut out = TaskOutput {
            image: ImageInfo { width: w, height: h },
            detections: vec![],
            text: String::new(),
            dropped: vec![],
            repeats: vec![],
            count: None,
            text_score: None,
            prompts: turns.iter().map(|t| t.user_text.clone()).collect(),
            truncated: false,
            token_limited: false,
        };
        let mut texts = Vec::new();
        for (turn_index, (turn, regions)) in turns.iter().zip(regions).enumerate() {
            let grammar = if opts.constrained {
                match &req.task {
                    // the names this turn asked about (its chunk), not the whole list
                    Task::Detect { .. } => {
                        Some(AnswerGrammar { names: Some(turn.categories.clone()), nameless: false })
                    }
                    Task::Count { .. } => Some(AnswerGrammar { names: None, nameless: true }),
                    Task::Ground { .. } | Task::Phrases { .. } => Some(AnswerGrammar { names: None, nameless: false }),
                    Task::Describe { .. } | Task::Chat { .. } => None,
                }
            } else {
                None
            };
            let (text, gen, spans) = self.run_turn(&image_tokens, &turn.user_text, &regions, opts, grammar.as_ref())?;
            if let Some(reason) = cut_reason(gen.stop, opts.sampling.max_new_tokens) {
                out.truncated = true;
                out.token_limited |= gen.stop == StopReason::MaxTokens;
                out.dropped.push(Dropped { text: tail_chars(&text, 40), reason });
            }
            if let Task::Describe { region } = &req.task {
                let n = gen.probs.len().max(1) as f64;
                let score = (gen.probs.iter().map(|p| (*p as f64).max(1e-30).ln()).sum::<f64>() / n).exp();
                out.text_score = Some(score);
                out.detections.push(Detection {
                    label: Some(text.clone()),
                    box_px: region.as_array(),
                    box_norm: region.to_norm(w, h).clamped().as_array(),
                    score,
                    phrase: None,
                });
                texts.push(text);
                continue;
            }
            let parsed = parse_answer(&text);
            let detections = |instances: &[griffon_core::Instance]| -> Vec<Detection> {
                instances
                    .iter()
                    .zip(instance_scores(instances, &spans))
                    .map(|(inst, score)| Detection {
                        label: turn.label.clone().or_else(|| inst.label.clone()),
                        box_px: inst.norm.to_pixels(w, h).as_array(),
                        box_norm: inst.norm.as_array(),
                        score,
                        phrase: matches!(req.task, Task::Phrases { .. }).then_some(turn_index),
                    })
                    .collect()
            };
            let mut dets = detections(&parsed.instances);
            if matches!(req.task, Task::Ground { .. } | Task::Phrases { .. }) {
                // REC keeps the first box (the reference's Acc@0.5 protocol); the rest is reported.
                for extra in dets.iter().skip(1) {
                    out.dropped.push(Dropped {
                        text: NormBox::new(extra.box_norm[0], extra.box_norm[1], extra.box_norm[2], extra.box_norm[3])
                            .format(),
                        reason: "grounding keeps the first box".into(),
                    });
                }
                dets.truncate(1);
            }
            let after = repeat_places(&parsed, out.detections.len(), dets.len());
            let repeats = detections(&parsed.repeats).into_iter().zip(after);
            out.repeats.extend(repeats.map(|(detection, after)| Repeat { detection, after }));
            out.detections.extend(dets);
            out.dropped.extend(parsed.dropped);
            texts.push(text);
        }
        if matches!(req.task, Task::Count { .. }) {
            out.count = Some(out.detections.len());
        }
        out.text = texts.join("\n");
        Ok(out)
    }
}

/// What identifies an image file's content for [`ImageTokenCache`]: its canonical path, size and
/// modification time (a rewritten file is a new key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageKey {
    path: std::path::PathBuf,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl ImageKey {
    /// None when the file cannot be inspected (then it is not cached; loading reports the error).
    pub fn of(path: &std::path::Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Self { path: std::fs::canonicalize(path).ok()?, len: meta.len(), modified: meta.modified().ok() })
    }
}

/// The image tokens (projector output) of the most recently used image files of one model, up
/// to a byte budget (least recently used first out): an evaluation asks several questions about
/// each image (the 1022 px synthetic test split: 1548 prompts on 200 images), and encoding the
/// image is most of a prompt's cost. The tokens are exactly those an uncached call computes.
/// `GRIFFON_IMAGE_CACHE_MB` sets the budget (default 256; 0 turns it off).
pub struct ImageTokenCache {
    budget: usize,
    entries: std::sync::Mutex<Vec<(ImageKey, Tensor)>>,
    hits: std::sync::atomic::AtomicUsize,
}

impl ImageTokenCache {
    pub fn new(budget_bytes: usize) -> Self {
        Self { budget: budget_bytes, entries: std::sync::Mutex::new(Vec::new()), hits: Default::default() }
    }

    /// The budget from `GRIFFON_IMAGE_CACHE_MB`; a value that is not a number of megabytes is an
    /// error naming it (not a silent default).
    pub fn from_env() -> Result<Self> {
        let bytes =
            match std::env::var("GRIFFON_IMAGE_CACHE_MB") {
                Err(_) => 256 << 20,
                Ok(v) => v.trim().parse::<usize>().ok().and_then(|mb| mb.checked_mul(1 << 20)).ok_or_else(|| {
                    Error::Invalid(format!("GRIFFON_IMAGE_CACHE_MB={v:?} is not a number of megabytes"))
                })?,
            };
        Ok(Self::new(bytes))
    }

    /// Whether it keeps anything (a budget above zero).
    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    /// How many lookups found their tokens.
    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn get(&self, key: &ImageKey) -> Option<Tensor> {
        let mut e = self.entries.lock().ok()?;
        let i = e.iter().position(|(k, _)| k == key)?;
        let entry = e.remove(i);
        let t = entry.1.clone();
        e.push(entry); // most recent last
        self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(t)
    }

    pub fn put(&self, key: ImageKey, tokens: &Tensor) {
        let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        if bytes(tokens) > self.budget {
            return;
        }
        let Ok(mut e) = self.entries.lock() else { return };
        e.retain(|(k, _)| k != &key);
        e.push((key, tokens.clone()));
        while e.iter().map(|(_, t)| bytes(t)).sum::<usize>() > self.budget {
            e.remove(0);
        }
    }
}

#[cfg(test)]
mod repeat_tests {
    use super::*;

    /// A repeat's place counts the boxes kept before it in the answer, after the detections of
    /// earlier turns, and never more than the turn keeps (grounding keeps one).
    #[test]
    fn repeats_are_placed_among_the_kept_boxes() {
        let p = griffon_core::parse_answer(
            "a-[0.1,0.1,0.2,0.2]&a-[0.1,0.1,0.2,0.2]&b-[0.5,0.5,0.6,0.6]&b-[0.5,0.5,0.6,0.6]",
        );
        assert_eq!((p.instances.len(), p.repeats.len()), (2, 2));
        assert_eq!(repeat_places(&p, 0, 2), [1, 2]);
        assert_eq!(repeat_places(&p, 3, 2), [4, 5]);
        assert_eq!(repeat_places(&p, 3, 1), [4, 4]);
    }
}

#[cfg(test)]
mod grammar_tests {
    use super::*;

    /// A name with a character outside ASCII, written in byte tokens: the first byte decodes to
    /// U+FFFD, the second completes the character (the text gets shorter in bytes).
    #[test]
    fn a_character_split_across_tokens_is_written_in_a_name() {
        let g = AnswerGrammar { names: Some(vec!["café".into(), "cat".into()]), nameless: false };
        assert!(grammar_allows(&g, "caf", "caf\u{FFFD}", false, 0));
        assert!(grammar_allows(&g, "caf\u{FFFD}", "café", false, 0));
        assert!(grammar_allows(&g, "café", "café-[", false, 0));
        // not where no name goes on with such a character, nor inside a box
        assert!(!grammar_allows(&g, "ca", "ca\u{FFFD}", false, 0));
        assert!(!grammar_allows(&g, "cat-[0.1", "cat-[0.1\u{FFFD}", false, 0));
        // a token that adds nothing, or a stop before the answer is complete
        assert!(!grammar_allows(&g, "caf", "caf", false, 0));
        assert!(!grammar_allows(&g, "café-[0.1", "café-[0.1", true, 0));
        let done = "café-[0.100,0.200,0.300,0.400]";
        assert!(grammar_allows(&g, done, done, true, 0));
        assert!(!grammar_allows(&g, "cat", "cats", false, 0));
        // a 3-byte character from a byte-level decoder: one U+FFFD for its first two bytes
        let g = AnswerGrammar { names: Some(vec!["n€".into()]), nameless: false };
        assert!(grammar_allows(&g, "n", "n\u{FFFD}", false, 0));
        assert!(grammar_allows(&g, "n\u{FFFD}", "n\u{FFFD}", false, 0));
        assert!(grammar_allows(&g, "n\u{FFFD}", "n€", false, 1));
        // but not a third unchanged byte, nor more pending bytes than a character holds
        assert!(!grammar_allows(&g, "n\u{FFFD}", "n\u{FFFD}", false, 2));
        assert!(!grammar_allows(&g, "n\u{FFFD}\u{FFFD}\u{FFFD}", "n\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}", false, 0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_clamps_a_box_up_to_a_pixel_past_the_edges() {
        let img = RgbImage::from_fn(10, 8, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let c = crop(&img, PixelBox::new(2.2, 1.0, 5.1, 4.0), "t").unwrap();
        assert_eq!(c.dimensions(), (4, 3)); // x 2..6, y 1..4: rounded outward
        assert_eq!(c.get_pixel(0, 0).0, [2, 1, 0]);
        // a float box a fraction past every edge is the whole image
        let c = crop(&img, PixelBox::new(-0.4, -0.9, 10.6, 8.3), "t").unwrap();
        assert_eq!(c.dimensions(), (10, 8));
        // one reaching just past the right edge from the last column is that column
        let c = crop(&img, PixelBox::new(9.2, 0.0, 10.9, 8.0), "t").unwrap();
        assert_eq!(c.dimensions(), (1, 8));
        assert_eq!(c.get_pixel(0, 0).0, [9, 0, 0]);
        // one wholly in the margin is refused, not an edge column
        for b in [PixelBox::new(10.2, 0.0, 10.9, 8.0), PixelBox::new(-0.9, -0.9, -0.1, -0.1)] {
            assert!(crop(&img, b, "t").unwrap_err().to_string().contains("outside"), "{b:?}");
        }
        let e = crop(&img, PixelBox::new(0.0, 0.0, 11.5, 8.0), "exemplar box").unwrap_err().to_string();
        assert!(e.contains("exemplar box") && e.contains("outside"), "{e}");
    }
}

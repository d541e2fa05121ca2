//! Tokenizer loading and prompt tokenization exactly as the reference's `tokenizer_image_token`
//! (see `griffon_core::prompt`): each text chunk is encoded on its own with special tokens and one
//! BOS is kept.

use crate::config::read_json;
use crate::error::{invalid, Error, Result};
use griffon_core::{assemble_ids, check_marker_order, split_placeholders, Piece, Placeholder};
use std::path::Path;
use tokenizers::Tokenizer;

#[derive(Clone)]
pub struct PromptTokenizer {
    tok: Tokenizer,
    pub bos: Option<u32>,
    /// HF `clean_up_tokenization_spaces` from tokenizer_config.json.
    cleanup_spaces: bool,
}

/// Reads a special-token entry of tokenizer_config.json (a string or `{"content": ...}`).
fn special_token(cfg: &serde_json::Value, key: &str) -> Option<String> {
    match cfg.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
        _ => None,
    }
}

impl PromptTokenizer {
    /// Loads `tokenizer.json` from the checkpoint folder. `fallback_bos` (config.json's
    /// bos_token_id) is used when tokenizer_config.json names no BOS.
    pub fn load(dir: &Path, fallback_bos: Option<u32>) -> Result<Self> {
        let file = dir.join("tokenizer.json");
        if !file.is_file() {
            if dir.join("tokenizer.model").is_file() {
                return invalid(format!(
                    "{}: only a SentencePiece tokenizer.model is present; griffon needs tokenizer.json. Create it once with \
                     transformers: python -c \"from transformers import AutoTokenizer; \
                     AutoTokenizer.from_pretrained('{d}').save_pretrained('{d}')\" (needs `pip install transformers sentencepiece protobuf`)",
                    dir.display(),
                    d = dir.display()
                ));
            }
            return invalid(format!("{}: tokenizer.json is missing", dir.display()));
        }
        let mut tok = Tokenizer::from_file(&file)
            .map_err(|e| Error::Invalid(format!("{}: cannot load tokenizer: {e}", file.display())))?;
        // a tokenizer.json saved after a call with truncation or padding keeps them, and the
        // tokenizers crate applies them to every encode; the reference's `tokenizer(chunk)`
        // neither truncates nor pads (transformers sets no_truncation / no_padding by default)
        tok.with_padding(None);
        tok.with_truncation(None)
            .map_err(|e| Error::Invalid(format!("{}: cannot turn truncation off: {e}", file.display())))?;
        let tcfg_path = dir.join("tokenizer_config.json");
        let tcfg = if tcfg_path.is_file() { Some(read_json(&tcfg_path)?) } else { None };
        let mut bos = fallback_bos;
        let mut cleanup_spaces = false;
        if let Some(c) = &tcfg {
            if let Some(name) = special_token(c, "bos_token") {
                bos = Some(tok.token_to_id(&name).ok_or_else(|| {
                    Error::Invalid(format!("{}: bos_token `{name}` is not in the vocabulary", tcfg_path.display()))
                })?);
            }
            cleanup_spaces = c.get("clean_up_tokenization_spaces").and_then(|v| v.as_bool()).unwrap_or(false);
            // The reference's (slow) Llama / Gemma tokenizer adds BOS / EOS by these flags, where
            // we take tokenizer.json's post-processor: two files that disagree are refused
            // rather than run without a BOS (or with an EOS after every chunk) one way or the other.
            // (only these tokenizer classes act on the flags; transformers ignores them elsewhere)
            let class = c.get("tokenizer_class").and_then(|v| v.as_str()).unwrap_or("").to_ascii_lowercase();
            let flags_apply = class.contains("llama") || class.contains("gemma");
            let probe = tok
                .encode("a", true)
                .map_err(|e| Error::Invalid(format!("{}: tokenizer failed on \"a\": {e}", file.display())))?;
            let ids = probe.get_ids();
            let eos = special_token(c, "eos_token").and_then(|n| tok.token_to_id(&n));
            for (key, id, adds) in [
                ("add_bos_token", bos, ids.first().is_some_and(|f| Some(*f) == bos)),
                ("add_eos_token", eos, ids.len() > 1 && ids.last().is_some_and(|l| Some(*l) == eos)),
            ] {
                if let (Some(flag), Some(_), true) = (c.get(key).and_then(|v| v.as_bool()), id, flags_apply) {
                    if flag != adds {
                        return invalid(format!(
                            "{}: {key} is {flag}, but {}'s post-processor {} it: save the tokenizer again with \
                             transformers (AutoTokenizer.from_pretrained(dir).save_pretrained(dir)) so that both agree",
                            tcfg_path.display(),
                            file.display(),
                            if adds { "adds" } else { "does not add" }
                        ));
                    }
                }
            }
        }
        Ok(Self { tok, bos, cleanup_spaces })
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tok.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.tok.get_vocab_size(true)
    }

    /// Encodes one text chunk with the tokenizer's special tokens (BOS for Gemma / Llama).
    pub fn encode_chunk(&self, text: &str) -> Result<Vec<u32>> {
        let enc =
            self.tok.encode(text, true).map_err(|e| Error::Invalid(format!("tokenizer failed on {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes text without special tokens.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc =
            self.tok.encode(text, false).map_err(|e| Error::Invalid(format!("tokenizer failed on {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// A rendered prompt -> token ids and visual placeholders.
    pub fn assemble(&self, prompt: &str) -> Result<(Vec<Piece>, Vec<Placeholder>)> {
        check_marker_order(prompt).map_err(|e| Error::Request(e.0))?;
        let (chunks, placeholders) = split_placeholders(prompt);
        let ids = chunks.iter().map(|c| self.encode_chunk(c)).collect::<Result<Vec<_>>>()?;
        Ok((assemble_ids(&ids, &placeholders, self.bos), placeholders))
    }

    /// Decodes ids; `skip_special` drops special tokens (as `skip_special_tokens=True`).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let s = self
            .tok
            .decode(ids, skip_special)
            .map_err(|e| Error::Invalid(format!("tokenizer cannot decode {ids:?}: {e}")))?;
        Ok(if self.cleanup_spaces { clean_up_tokenization(&s) } else { s })
    }
}

/// Tokens of context [`PromptTokenizer::decode_spans`] decodes before each token: enough for a
/// character split over byte-fallback tokens (at most 4) and the space clean-up's context.
const SPAN_WINDOW: usize = 8;

impl PromptTokenizer {
    /// Decodes ids (special tokens skipped) with each token's byte span `[start, end)` in the
    /// text: what comparing `decode(ids[..i])` with `decode(ids[..=i])` gives (the common prefix,
    /// moved back to a character boundary, to the end), but from windows of [`SPAN_WINDOW`]
    /// tokens, so linear in the length instead of quadratic (a 560-token answer of the small
    /// model: 21.6 ms -> 1.4 ms on this CPU, where decoding it takes about 60 ms). Each window must extend the text built so far
    /// and the result must equal the whole decode; otherwise (a decoder with longer context) the
    /// whole-prefix decodes run instead.
    pub fn decode_spans(&self, ids: &[u32]) -> Result<(String, Vec<(usize, usize)>)> {
        let full = self.decode(ids, true)?;
        let spans = match self.windowed_spans(ids, &full)? {
            Some(spans) => spans,
            None => self.prefix_spans(ids)?,
        };
        Ok((full, spans))
    }

    /// The spans by definition: every prefix decoded (quadratic in the length).
    fn prefix_spans(&self, ids: &[u32]) -> Result<Vec<(usize, usize)>> {
        let mut spans = Vec::with_capacity(ids.len());
        let mut prev = String::new();
        for i in 0..ids.len() {
            let cur = self.decode(&ids[..=i], true)?;
            spans.push((common_prefix_on_boundary(&prev, &cur), cur.len()));
            prev = cur;
        }
        Ok(spans)
    }

    fn windowed_spans(&self, ids: &[u32], full: &str) -> Result<Option<Vec<(usize, usize)>>> {
        let mut spans = Vec::with_capacity(ids.len());
        let mut acc = String::new();
        for i in 0..ids.len() {
            // the text so far must end with the window's text before token i (a window that
            // starts mid-answer may lose the leading space of its first token: still a suffix);
            // a window that starts inside a character split over byte tokens decodes its first
            // bytes as U+FFFD and is not: start it up to 4 tokens earlier
            let mut window = None;
            for back in 0..=4 {
                let j = i.saturating_sub(SPAN_WINDOW + back);
                let before = if j < i { self.decode(&ids[j..i], true)? } else { String::new() };
                if acc.ends_with(&before) {
                    window = Some((j, before));
                    break;
                }
                if j == 0 {
                    break;
                }
            }
            let Some((j, before)) = window else { return Ok(None) };
            let after = self.decode(&ids[j..=i], true)?;
            // acc = X + before becomes X + after, the prefix decode to i; their common prefix
            // is X (which ends on a character boundary) + the common prefix of before and after
            acc.truncate(acc.len() - before.len());
            let start = acc.len() + common_prefix_on_boundary(&before, &after);
            acc.push_str(&after);
            spans.push((start, acc.len()));
        }
        Ok((acc == full).then_some(spans))
    }
}

/// The common prefix of `prev` and `cur` in bytes, moved back to a character boundary of `cur`.
fn common_prefix_on_boundary(prev: &str, cur: &str) -> usize {
    let mut start = prev.bytes().zip(cur.bytes()).take_while(|(x, y)| x == y).count();
    while !cur.is_char_boundary(start) {
        start -= 1;
    }
    start
}

/// Turns generated ids into text as they arrive: each push returns the new text since the last
/// one. It decodes the whole answer so far (exactly what the final decode gives), holds back a
/// trailing incomplete character (U+FFFD from a partial byte sequence) and trailing whitespace,
/// and trims leading whitespace, as the final answer is trimmed. Should the decoder ever rewrite text already shown
/// (space clean-up), it waits until the text extends what was shown again.
pub struct TextStream<'a> {
    tok: &'a PromptTokenizer,
    ids: Vec<u32>,
    shown: String,
}

impl<'a> TextStream<'a> {
    pub fn new(tok: &'a PromptTokenizer) -> Self {
        Self { tok, ids: Vec::new(), shown: String::new() }
    }

    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = self.tok.decode(&self.ids, true)?;
        // trailing whitespace waits for what follows it (the final answer is trimmed)
        let stable = text.trim_start().trim_end_matches('\u{FFFD}').trim_end();
        Ok(self.extend(stable))
    }

    /// What is left to show of the final text (trailing whitespace trimmed as in the answer).
    pub fn finish(&mut self) -> Result<String> {
        let text = self.tok.decode(&self.ids, true)?;
        Ok(self.extend(text.trim()))
    }

    fn extend(&mut self, stable: &str) -> String {
        match stable.strip_prefix(self.shown.as_str()) {
            Some(new) if !new.is_empty() => {
                let new = new.to_string();
                self.shown.push_str(&new);
                new
            }
            _ => String::new(),
        }
    }
}

/// transformers' `clean_up_tokenization` (applied when `clean_up_tokenization_spaces` is true).
pub fn clean_up_tokenization(s: &str) -> String {
    s.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

#[cfg(test)]
mod span_tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::path::PathBuf;

    /// On every tokenizer the tests carry (SentencePiece-style Gemma / Llama with byte fallback
    /// and space clean-up settings, byte-level BPE Qwen2, the synthetic model's BPE), the windowed
    /// spans equal the whole-prefix ones, for answers, multi-byte text and random ids, and the
    /// fast path is the one taken for ordinary answers.
    #[test]
    fn windowed_spans_equal_whole_prefix_spans() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut dirs: Vec<PathBuf> = ["gemma2_interp72", "llama2_bf16", "qwen2"]
            .iter()
            .map(|c| root.join("tests/fixtures/parity").join(c).join("ckpt"))
            .collect();
        dirs.push(root.join("../models/default"));
        let texts = [
            "circle-[0.049,0.674,0.259,0.879]&triangle-[0.219,0.299,0.871,0.960]",
            "  The red cross, left of a green circle. Isn't it?  ",
            "café naïve 日本語 🙂 [0.5,0.25,0.75,1.0]",
            // U+FF71 and U+FF01 share their first byte with U+FFFD, which a partial character decodes to
            "ｱｲ！ x",
            "a\n\nb ,c . d 's e n't",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for dir in dirs {
            let tok = PromptTokenizer::load(&dir, None).unwrap();
            let vocab = tok.tok.get_vocab_size(true) as u32;
            let mut cases: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode_chunk(t).unwrap()).collect();
            // a long answer (longer than the window many times over)
            cases.push(cases[0].iter().cycle().take(cases[0].len() * 12).copied().collect());
            for _ in 0..20 {
                let n = rng.random_range(0..40);
                cases.push((0..n).map(|_| rng.random_range(0..vocab)).collect());
            }
            for (k, ids) in cases.iter().enumerate() {
                let (text, spans) = tok.decode_spans(ids).unwrap();
                assert_eq!(text, tok.decode(ids, true).unwrap(), "{}: case {k}", dir.display());
                assert_eq!(spans, tok.prefix_spans(ids).unwrap(), "{}: case {k} {ids:?}", dir.display());
                if k < texts.len() + 1 {
                    assert!(tok.windowed_spans(ids, &text).unwrap().is_some(), "{}: case {k} fell back", dir.display());
                }
            }
        }
    }
}

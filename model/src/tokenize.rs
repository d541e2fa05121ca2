//! Tokenizer loading and prompt tokenization exactly as the reference's `tokenizer_image_token`
//! (see `griffon_core::prompt`): each text chunk is encoded on its own with special tokens and one
//! BOS is kept.

use crate::config::read_json;
use crate::error::{invalid, Error, Result};
use griffon_core::{assemble_ids, split_placeholders, Piece, Placeholder};
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
        let tok = Tokenizer::from_file(&file)
            .map_err(|e| Error::Invalid(format!("{}: cannot load tokenizer: {e}", file.display())))?;
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

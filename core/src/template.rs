//! Conversation templates (source: jefferyZhan/Griffon `griffon/conversation.py`,
//! `conv_gemma_instruct` and `conv_llava_llama_2`; texts recorded in shared/GRIFFON_FORMAT.md).

use std::fmt;
use std::str::FromStr;

/// Marker for the main image in a user text.
pub const IMAGE_TOKEN: &str = "<image>";
/// Marker for a visual prompt (exemplar / region) in a user text.
pub const REGION_TOKEN: &str = "<region>";

/// The system text of `llava_llama_2`.
pub const LLAMA2_SYSTEM: &str = "You are a helpful language and vision assistant. You are able to understand the visual content that the user provides, and assist the user with a variety of tasks using natural language.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// `<start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n` (Griffon-G, Gemma-2).
    GemmaInstruct,
    /// `[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{text} [/INST]` (Griffon v1/v2, Llama-2).
    LlavaLlama2,
    /// ChatML `conv_qwen` ("qwen2"): `<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n`
    /// `<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n` (Qwen2-based checkpoints).
    Qwen2,
}

impl Template {
    pub const NAMES: [&'static str; 3] = ["gemma_instruct", "llava_llama_2", "qwen2"];

    pub fn name(self) -> &'static str {
        match self {
            Template::GemmaInstruct => "gemma_instruct",
            Template::LlavaLlama2 => "llava_llama_2",
            Template::Qwen2 => "qwen2",
        }
    }

    /// The whole prompt for one user turn, ready for generation (the assistant turn is open).
    /// `user_text` is used as given; see [`with_image_marker`] for the `<image>\n` rule.
    pub fn render(self, user_text: &str) -> String {
        match self {
            Template::GemmaInstruct => {
                format!("<start_of_turn>user\n{user_text}<end_of_turn>\n<start_of_turn>model\n")
            }
            Template::LlavaLlama2 => {
                format!("[INST] <<SYS>>\n{LLAMA2_SYSTEM}\n<</SYS>>\n\n{user_text} [/INST]")
            }
            Template::Qwen2 => format!(
                "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{user_text}<|im_end|>\n<|im_start|>assistant\n"
            ),
        }
    }

    /// Text that ends the assistant's turn. Generation stops when the decoded tail contains it
    /// (besides the tokenizer's eos ids).
    pub fn stop_string(self) -> &'static str {
        match self {
            Template::GemmaInstruct => "<end_of_turn>",
            Template::LlavaLlama2 => "</s>",
            Template::Qwen2 => "<|im_end|>",
        }
    }

    /// A later user turn in a multi-turn conversation (no system text; BOS comes from the
    /// tokenizer's special-token handling of the separator).
    pub fn render_followup(self, user_text: &str) -> String {
        match self {
            Template::GemmaInstruct => self.render(user_text),
            Template::LlavaLlama2 => format!("<s>[INST] {user_text} [/INST]"),
            Template::Qwen2 => format!("<|im_start|>user\n{user_text}<|im_end|>\n<|im_start|>assistant\n"),
        }
    }

    /// What follows an assistant answer in training targets (`conv.sep` / `sep2` in the
    /// reference): the answer and this suffix are the supervised tokens.
    pub fn answer_suffix(self) -> &'static str {
        match self {
            Template::GemmaInstruct => "<end_of_turn>\n",
            Template::LlavaLlama2 => " </s>",
            Template::Qwen2 => "<|im_end|>\n",
        }
    }

    /// The template a checkpoint of this `model_type` was trained with.
    pub fn for_model_type(model_type: &str) -> Option<Template> {
        let t = model_type.to_ascii_lowercase();
        if t.contains("gemma") {
            Some(Template::GemmaInstruct)
        } else if t.contains("qwen") {
            Some(Template::Qwen2)
        } else if t.contains("llama") || t.contains("llava") {
            Some(Template::LlavaLlama2)
        } else {
            None
        }
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Template {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gemma_instruct" => Ok(Template::GemmaInstruct),
            "llava_llama_2" => Ok(Template::LlavaLlama2),
            "qwen2" => Ok(Template::Qwen2),
            other => Err(format!("unknown template `{other}` (known: {})", Template::NAMES.join(", "))),
        }
    }
}

/// The reference prepends `<image>\n` to the user text unless the text already places the image.
pub fn with_image_marker(user_text: &str) -> String {
    if user_text.contains(IMAGE_TOKEN) {
        user_text.to_string()
    } else {
        format!("{IMAGE_TOKEN}\n{user_text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemma_prompt_text() {
        let p = Template::GemmaInstruct.render(&with_image_marker("find the cat"));
        assert_eq!(p, "<start_of_turn>user\n<image>\nfind the cat<end_of_turn>\n<start_of_turn>model\n");
    }

    #[test]
    fn llama_prompt_text() {
        let p = Template::LlavaLlama2.render(&with_image_marker("hi"));
        assert!(p.starts_with("[INST] <<SYS>>\nYou are a helpful language and vision assistant."));
        assert!(p.ends_with("<</SYS>>\n\n<image>\nhi [/INST]"));
    }

    #[test]
    fn marker_not_duplicated() {
        assert_eq!(with_image_marker("a <image> b"), "a <image> b");
    }

    #[test]
    fn parse_names() {
        for n in Template::NAMES {
            assert_eq!(n.parse::<Template>().unwrap().name(), n);
        }
        assert!("vicuna".parse::<Template>().unwrap_err().contains("gemma_instruct"));
        assert_eq!(Template::for_model_type("gemma2_Griffon"), Some(Template::GemmaInstruct));
        assert_eq!(Template::for_model_type("llama"), Some(Template::LlavaLlama2));
        assert_eq!(Template::for_model_type("qwen2"), Some(Template::Qwen2));
        assert_eq!(Template::for_model_type("mistral"), None);
    }
}

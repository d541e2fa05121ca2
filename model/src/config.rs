//! `config.json` of a Griffon checkpoint: the LLM's HF config plus the `mm_*` keys, and the
//! resolution of the vision towers' own configs (see shared/GRIFFON_FORMAT.md, "Checkpoint layout").

use crate::clip::{infer_clip_config, parse_clip_config, ClipVisionConfig};
use crate::error::{invalid, io_err, Error, Result};
use crate::loader::Checkpoint;
use crate::nn::Act;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Typed access to a JSON object with errors that name the file and the key.
pub struct Json<'a> {
    v: &'a Value,
    file: &'a Path,
}

impl<'a> Json<'a> {
    pub fn new(v: &'a Value, file: &'a Path) -> Self {
        Self { v, file }
    }
    fn field(&self, key: &str) -> Option<&'a Value> {
        self.v.get(key).filter(|x| !x.is_null())
    }
    fn bad(&self, key: &str, want: &str, got: &Value) -> Error {
        Error::Invalid(format!("{}: key `{key}` must be {want}, got {got}", self.file.display()))
    }
    pub fn req<T>(&self, key: &str, f: impl FnOnce(&str) -> Result<Option<T>>) -> Result<T> {
        f(key)?.ok_or_else(|| Error::Invalid(format!("{}: missing key `{key}`", self.file.display())))
    }
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.field(key) {
            None => Ok(None),
            Some(x) => x.as_u64().map(|n| Some(n as usize)).ok_or_else(|| self.bad(key, "a non-negative integer", x)),
        }
    }
    pub fn req_usize(&self, key: &str) -> Result<usize> {
        self.req(key, |k| self.opt_usize(k))
    }
    pub fn opt_i64(&self, key: &str) -> Result<Option<i64>> {
        match self.field(key) {
            None => Ok(None),
            Some(x) => x.as_i64().map(Some).ok_or_else(|| self.bad(key, "an integer", x)),
        }
    }
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.field(key) {
            None => Ok(None),
            Some(x) => x.as_f64().map(Some).ok_or_else(|| self.bad(key, "a number", x)),
        }
    }
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.field(key) {
            None => Ok(None),
            Some(x) => x.as_bool().map(Some).ok_or_else(|| self.bad(key, "true or false", x)),
        }
    }
    pub fn opt_str(&self, key: &str) -> Result<Option<String>> {
        match self.field(key) {
            None => Ok(None),
            Some(x) => x.as_str().map(|s| Some(s.to_string())).ok_or_else(|| self.bad(key, "a string", x)),
        }
    }
    /// An integer or a list of integers (HF `eos_token_id`).
    pub fn opt_ids(&self, key: &str) -> Result<Option<Vec<u32>>> {
        match self.field(key) {
            None => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| self.bad(key, "a list of token ids", x))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(x) => x
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(|n| Some(vec![n]))
                .ok_or_else(|| self.bad(key, "a token id", x)),
        }
    }
    /// True when the key is absent or null.
    pub fn is_null(&self, key: &str) -> bool {
        self.field(key).is_none()
    }
    pub fn raw(&self, key: &str) -> Option<&'a Value> {
        self.field(key)
    }
}

pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("{}: malformed JSON: {e}", path.display())))
}

#[derive(Debug, Clone, PartialEq)]
pub struct Gemma2Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub query_pre_attn_scalar: f64,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
    pub sliding_window: Option<usize>,
    /// true where the layer uses sliding-window attention.
    pub sliding_layers: Vec<bool>,
    pub hidden_act: Act,
    pub tie_word_embeddings: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub hidden_act: Act,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v only (Qwen2); `attention_bias` puts them on all four projections.
    pub qkv_bias: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LlmConfig {
    Gemma2(Gemma2Config),
    Llama(LlamaConfig),
}

impl LlmConfig {
    pub fn hidden_size(&self) -> usize {
        match self {
            LlmConfig::Gemma2(c) => c.hidden_size,
            LlmConfig::Llama(c) => c.hidden_size,
        }
    }
    pub fn vocab_size(&self) -> usize {
        match self {
            LlmConfig::Gemma2(c) => c.vocab_size,
            LlmConfig::Llama(c) => c.vocab_size,
        }
    }
    pub fn num_hidden_layers(&self) -> usize {
        match self {
            LlmConfig::Gemma2(c) => c.num_hidden_layers,
            LlmConfig::Llama(c) => c.num_hidden_layers,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProjectorType {
    ConvReduce {
        pad: usize,
    },
    Linear,
    /// `mlpNx_gelu`: Linear, then (GELU, Linear) x (N - 1).
    Mlp(usize),
    Identity,
}

impl ProjectorType {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "conv_reduce" => Some(Self::ConvReduce { pad: 1 }),
            "conv_reduce_wo_pad" => Some(Self::ConvReduce { pad: 0 }),
            "linear" => Some(Self::Linear),
            "identity" => Some(Self::Identity),
            _ => {
                let n = s.strip_prefix("mlp")?.strip_suffix("x_gelu")?.parse::<usize>().ok()?;
                (n >= 1).then_some(Self::Mlp(n))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MmConfig {
    pub vision_tower: Option<String>,
    pub projector: ProjectorType,
    pub select_layer: i64,
    /// `cls_patch` keeps the CLS row; `patch` (default) drops it.
    pub keep_cls: bool,
    pub mm_hidden_size: Option<usize>,
    pub unshared_visual_encoder: bool,
    /// griffon-rs extension `mm_tiles` (default 1): the image is cut into tiles x tiles squares,
    /// each encoded at the tower's size, their tokens concatenated row-major — the "patch
    /// partition" baseline of the paper's resolution study, against direct high-resolution input.
    pub tiles: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GriffonConfig {
    pub model_type: String,
    pub llm: LlmConfig,
    pub mm: MmConfig,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The positions the LLM was built for (`max_position_embeddings`); a longer prompt is
    /// refused and generation stops at the last one (transformers warns and runs on, past what
    /// the model was trained on).
    pub max_position_embeddings: Option<usize>,
}

/// Reads `rope_theta` at the top level or in transformers 5's `rope_parameters`, and rejects
/// rope scaling we do not implement.
fn rope_theta(j: &Json, file: &Path) -> Result<f64> {
    if let Some(rs) = j.raw("rope_scaling") {
        let kind = rs.get("rope_type").or_else(|| rs.get("type")).and_then(|t| t.as_str()).unwrap_or("?");
        if kind != "default" {
            return invalid(format!("{}: rope_scaling of type `{kind}` is not supported", file.display()));
        }
    }
    if let Some(t) = j.opt_f64("rope_theta")? {
        return Ok(t);
    }
    if let Some(rp) = j.raw("rope_parameters") {
        let kind = rp.get("rope_type").and_then(|t| t.as_str()).unwrap_or("default");
        if kind != "default" {
            return invalid(format!("{}: rope_parameters.rope_type `{kind}` is not supported", file.display()));
        }
        if let Some(t) = rp.get("rope_theta").and_then(|t| t.as_f64()) {
            return Ok(t);
        }
    }
    Ok(10000.0)
}

fn act(j: &Json, key: &str, default: &str, file: &Path) -> Result<Act> {
    let name = j.opt_str(key)?.unwrap_or_else(|| default.to_string());
    Act::from_hf(&name).ok_or_else(|| Error::Invalid(format!("{}: unsupported {key} `{name}`", file.display())))
}

/// `value` of `key` when it is a positive finite number (an epsilon, scale, cap or base of 0 or
/// below makes the model's logits NaN or meaningless without any error).
fn positive(file: &Path, key: &str, value: f64) -> Result<f64> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        invalid(format!("{}: {key} must be a positive number, got {value}", file.display()))
    }
}

/// Attention heads a decoder can run: at least one, grouped evenly over the key/value heads,
/// with an even head size (RoPE rotates pairs); named by their config keys.
fn check_heads(file: &Path, heads: usize, kv_heads: usize, head_dim: usize) -> Result<()> {
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return invalid(format!(
            "{}: num_attention_heads {heads} must be a positive multiple of num_key_value_heads {kv_heads} \
             (for Gemma-2, 4 when absent, as HF's)",
            file.display()
        ));
    }
    if head_dim == 0 || head_dim % 2 != 0 {
        return invalid(format!("{}: the head size (head_dim) {head_dim} must be even and positive", file.display()));
    }
    Ok(())
}

fn parse_gemma2(j: &Json, file: &Path) -> Result<Gemma2Config> {
    let heads = j.req_usize("num_attention_heads")?;
    // HF Gemma2Config's default when absent (Gemma-2-2B's 4), not the query heads
    let kv_heads = j.opt_usize("num_key_value_heads")?.unwrap_or(4);
    let head_dim = j.req_usize("head_dim")?;
    check_heads(file, heads, kv_heads, head_dim)?;
    let layers = j.req_usize("num_hidden_layers")?;
    let sliding_layers = match j.raw("layer_types") {
        None => (0..layers).map(|i| (i + 1) % 2 == 1).collect(),
        Some(Value::Array(a)) => {
            if a.len() != layers {
                return invalid(format!(
                    "{}: layer_types has {} entries but num_hidden_layers is {layers}",
                    file.display(),
                    a.len()
                ));
            }
            a.iter()
                .map(|t| match t.as_str() {
                    Some("sliding_attention") => Ok(true),
                    Some("full_attention") => Ok(false),
                    _ => invalid(format!("{}: unknown entry {t} in layer_types", file.display())),
                })
                .collect::<Result<Vec<bool>>>()?
        }
        Some(other) => return invalid(format!("{}: key `layer_types` must be a list, got {other}", file.display())),
    };
    // HF Gemma2Config defaults: softcaps 50 / 30 when absent; null disables (sliding_window below too).
    let softcap = |key: &str, default: f64| -> Result<Option<f64>> {
        if j.v.get(key).is_some() {
            j.opt_f64(key)
        } else {
            Ok(Some(default))
        }
    };
    Ok(Gemma2Config {
        vocab_size: j.req_usize("vocab_size")?,
        hidden_size: j.req_usize("hidden_size")?,
        intermediate_size: j.req_usize("intermediate_size")?,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        rms_norm_eps: positive(file, "rms_norm_eps", j.opt_f64("rms_norm_eps")?.unwrap_or(1e-6))?,
        rope_theta: positive(file, "rope_theta", rope_theta(j, file)?)?,
        query_pre_attn_scalar: positive(
            file,
            "query_pre_attn_scalar",
            j.req("query_pre_attn_scalar", |k| j.opt_f64(k))?,
        )?,
        attn_logit_softcapping: softcap("attn_logit_softcapping", 50.0)?
            .map(|v| positive(file, "attn_logit_softcapping", v))
            .transpose()?,
        final_logit_softcapping: softcap("final_logit_softcapping", 30.0)?
            .map(|v| positive(file, "final_logit_softcapping", v))
            .transpose()?,
        // HF Gemma2Config's default 4096 when absent; null turns the window off
        sliding_window: match j.v.get("sliding_window").map(|_| j.opt_usize("sliding_window")).transpose()? {
            None => Some(4096),
            Some(Some(0)) => {
                return invalid(format!("{}: sliding_window must be at least 1 (or null)", file.display()))
            }
            Some(w) => w,
        },
        sliding_layers,
        hidden_act: act(j, "hidden_activation", "gelu_pytorch_tanh", file)?,
        tie_word_embeddings: j.opt_bool("tie_word_embeddings")?.unwrap_or(true),
    })
}

fn parse_llama(j: &Json, file: &Path) -> Result<LlamaConfig> {
    let heads = j.req_usize("num_attention_heads")?;
    let hidden = j.req_usize("hidden_size")?;
    let kv_heads = j.opt_usize("num_key_value_heads")?.unwrap_or(heads);
    let head_dim = match j.opt_usize("head_dim")? {
        Some(d) => d,
        None if heads > 0 && hidden % heads == 0 => hidden / heads,
        None => {
            return invalid(format!(
                "{}: hidden_size {hidden} is not a multiple of num_attention_heads {heads} (and no head_dim is given)",
                file.display()
            ))
        }
    };
    check_heads(file, heads, kv_heads, head_dim)?;
    Ok(LlamaConfig {
        vocab_size: j.req_usize("vocab_size")?,
        hidden_size: hidden,
        intermediate_size: j.req_usize("intermediate_size")?,
        num_hidden_layers: j.req_usize("num_hidden_layers")?,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        rms_norm_eps: positive(file, "rms_norm_eps", j.opt_f64("rms_norm_eps")?.unwrap_or(1e-6))?,
        rope_theta: positive(file, "rope_theta", rope_theta(j, file)?)?,
        hidden_act: act(j, "hidden_act", "silu", file)?,
        attention_bias: j.opt_bool("attention_bias")?.unwrap_or(false),
        mlp_bias: j.opt_bool("mlp_bias")?.unwrap_or(false),
        tie_word_embeddings: j.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        qkv_bias: false,
    })
}

/// Qwen2 / Qwen2.5 (transformers `Qwen2ForCausalLM`): the Llama block with biases on q, k and v.
fn parse_qwen2(j: &Json, file: &Path) -> Result<LlamaConfig> {
    if j.opt_bool("use_sliding_window")?.unwrap_or(false) {
        return invalid(format!("{}: use_sliding_window = true is not supported for Qwen2", file.display()));
    }
    let mut c = parse_llama(j, file)?;
    c.qkv_bias = true;
    Ok(c)
}

impl GriffonConfig {
    /// The conversation template the model is used with when none is given: its model_type's,
    /// else its LLM family's.
    pub fn default_template(&self) -> griffon_core::template::Template {
        use griffon_core::template::Template;
        Template::for_model_type(&self.model_type).unwrap_or(match self.llm {
            LlmConfig::Gemma2(_) => Template::GemmaInstruct,
            LlmConfig::Llama(_) => Template::LlavaLlama2,
        })
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_value(&read_json(path)?, path)
    }

    pub fn from_value(v: &Value, file: &Path) -> Result<Self> {
        let j = Json::new(v, file);
        let model_type = j.req("model_type", |k| j.opt_str(k))?;
        let lower = model_type.to_ascii_lowercase();
        // the same words as the template's choice (Template::for_model_type), so that a
        // "llava_qwen" checkpoint is not read as a Llama without its q/k/v biases under the
        // Qwen2 template
        let llm = if lower.contains("gemma2") {
            LlmConfig::Gemma2(parse_gemma2(&j, file)?)
        } else if lower.contains("gemma") {
            return invalid(format!(
                "{}: model_type `{model_type}`: of the Gemma family only Gemma-2 is supported",
                file.display()
            ));
        } else if lower.contains("mistral") || lower.contains("mixtral") {
            // (a llava_mistral would read as a Llama, under Llama-2's template and without the
            // sliding window some versions have)
            return invalid(format!(
                "{}: model_type `{model_type}`: Mistral / Mixtral models are not supported (their templates and \
                 sliding window are not implemented)",
                file.display()
            ));
        } else if lower.contains("qwen") {
            LlmConfig::Llama(parse_qwen2(&j, file)?)
        } else if lower.contains("llama") || lower.contains("llava") {
            LlmConfig::Llama(parse_llama(&j, file)?)
        } else {
            return invalid(format!(
                "{}: model_type `{model_type}` is not supported (supported: gemma2_Griffon / gemma2, llama / griffon_llama, qwen2)",
                file.display()
            ));
        };
        let ptype = j.opt_str("mm_projector_type")?.unwrap_or_else(|| "linear".to_string());
        let projector = ProjectorType::parse(&ptype).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: mm_projector_type `{ptype}` is not supported (conv_reduce, conv_reduce_wo_pad, linear, mlpNx_gelu, identity)",
                file.display()
            ))
        })?;
        let feature = j.opt_str("mm_vision_select_feature")?.unwrap_or_else(|| "patch".to_string());
        let keep_cls = match feature.as_str() {
            "patch" => false,
            "cls_patch" => true,
            other => {
                return invalid(format!("{}: mm_vision_select_feature `{other}` is not supported", file.display()))
            }
        };
        if j.opt_bool("mm_use_im_start_end")?.unwrap_or(false) {
            return invalid(format!("{}: mm_use_im_start_end = true is not supported", file.display()));
        }
        let mm = MmConfig {
            vision_tower: j.opt_str("mm_vision_tower")?,
            projector,
            select_layer: j.req("mm_vision_select_layer", |k| j.opt_i64(k))?,
            keep_cls,
            mm_hidden_size: j.opt_usize("mm_hidden_size")?,
            unshared_visual_encoder: j.opt_bool("unshared_visual_encoder")?.unwrap_or(false),
            tiles: match j.opt_usize("mm_tiles")?.unwrap_or(1) {
                0 => return invalid(format!("{}: mm_tiles must be at least 1", file.display())),
                t => t,
            },
        };
        let (bos_default, eos_default) = match llm {
            LlmConfig::Gemma2(_) => (2, 1),
            LlmConfig::Llama(_) => (1, 2),
        };
        // the engine resizes to a square without padding, as Griffon does (shared/GRIFFON_FORMAT.md,
        // "Architecture" 1; the released configs say `square`): another value would be ignored
        match j.opt_str("image_aspect_ratio")?.as_deref() {
            None | Some("square") => {}
            Some(other) => {
                return invalid(format!(
                    "{}: image_aspect_ratio `{other}` is not supported (Griffon squashes the image to a \
                     square: `square`)",
                    file.display()
                ))
            }
        }
        let bos_token_id = match j.opt_usize("bos_token_id")? {
            None => bos_default,
            Some(x) => u32::try_from(x)
                .map_err(|_| Error::Invalid(format!("{}: bos_token_id {x} is not a token id", file.display())))?,
        };
        let eos_token_ids = j.opt_ids("eos_token_id")?.unwrap_or(vec![eos_default]);
        let vocab = llm.vocab_size();
        for (key, id) in
            std::iter::once(("bos_token_id", bos_token_id)).chain(eos_token_ids.iter().map(|&e| ("eos_token_id", e)))
        {
            if id as usize >= vocab {
                return invalid(format!(
                    "{}: {key} {id} is outside the vocabulary (vocab_size {vocab})",
                    file.display()
                ));
            }
        }
        let max_position_embeddings = j.opt_usize("max_position_embeddings")?;
        if max_position_embeddings == Some(0) {
            return invalid(format!("{}: max_position_embeddings must be at least 1", file.display()));
        }
        Ok(Self { model_type, llm, mm, bos_token_id: Some(bos_token_id), eos_token_ids, max_position_embeddings })
    }
}

/// Where a tower's config came from.
#[derive(Debug, Clone, PartialEq)]
pub enum TowerSource {
    Override(PathBuf),
    Folder(PathBuf),
    Inferred,
}

/// Finds a tower's own config file: an explicit override (a file, or a folder holding
/// `config.json`), else `config.json` in the folder named in the checkpoint config (as written,
/// relative to the checkpoint folder, or its last path component inside the checkpoint folder).
pub fn find_tower_config(
    ck: &Checkpoint,
    written: Option<&str>,
    override_file: Option<&Path>,
) -> Option<(PathBuf, TowerSource)> {
    if let Some(f) = override_file {
        let f = if f.is_dir() { f.join("config.json") } else { f.to_path_buf() };
        return Some((f.clone(), TowerSource::Override(f)));
    }
    if let Some(w) = written {
        let wp = Path::new(w);
        let mut candidates = vec![wp.to_path_buf(), ck.dir().join(wp)];
        if let Some(last) = wp.file_name() {
            candidates.push(ck.dir().join(last));
        }
        for c in candidates {
            let f = c.join("config.json");
            if f.is_file() {
                return Some((f, TowerSource::Folder(c)));
            }
        }
    }
    None
}

/// Resolves a CLIP tower config: an explicit override file, else the folder named in the config
/// (as written, relative to the checkpoint folder, or its last path component inside the
/// checkpoint folder), else inferred from the tensors under `prefix`.
pub fn resolve_tower(
    ck: &Checkpoint,
    written: Option<&str>,
    prefix: &str,
    override_file: Option<&Path>,
    override_flag: &str,
) -> Result<(ClipVisionConfig, TowerSource)> {
    if let Some((f, source)) = find_tower_config(ck, written, override_file) {
        let cfg = parse_clip_config(&read_json(&f)?, &f)?;
        return Ok((cfg, source));
    }
    let cfg = infer_clip_config(&ck.scope(prefix)).map_err(|e| {
        Error::Invalid(format!(
            "{e}; no tower config found{} (give one with {override_flag})",
            written.map(|w| format!(" for `{w}`")).unwrap_or_default()
        ))
    })?;
    Ok((cfg, TowerSource::Inferred))
}

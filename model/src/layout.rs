//! Tensor names and shapes of a Griffon checkpoint for given configs (shared/GRIFFON_FORMAT.md,
//! "Checkpoint layout"): used to build random-weight models for benchmarks and fresh models.

use crate::clip::ClipVisionConfig;
use crate::config::{LlmConfig, ProjectorType};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;

pub type Layout = Vec<(String, Vec<usize>)>;

/// A CLIP vision tower under `prefix` (e.g. `model.vision_tower.vision_tower.vision_model`).
pub fn clip_layout(prefix: &str, c: &ClipVisionConfig) -> Layout {
    let (h, i, p, g) = (c.hidden_size, c.intermediate_size, c.patch_size, c.grid());
    let mut v = vec![
        (format!("{prefix}.embeddings.class_embedding"), vec![h]),
        (format!("{prefix}.embeddings.patch_embedding.weight"), vec![h, 3, p, p]),
        (format!("{prefix}.embeddings.position_embedding.weight"), vec![g * g + 1, h]),
    ];
    for n in ["pre_layrnorm", "post_layernorm"] {
        v.push((format!("{prefix}.{n}.weight"), vec![h]));
        v.push((format!("{prefix}.{n}.bias"), vec![h]));
    }
    for l in 0..c.num_hidden_layers {
        let b = format!("{prefix}.encoder.layers.{l}");
        for q in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            v.push((format!("{b}.self_attn.{q}.weight"), vec![h, h]));
            v.push((format!("{b}.self_attn.{q}.bias"), vec![h]));
        }
        for n in ["layer_norm1", "layer_norm2"] {
            v.push((format!("{b}.{n}.weight"), vec![h]));
            v.push((format!("{b}.{n}.bias"), vec![h]));
        }
        v.push((format!("{b}.mlp.fc1.weight"), vec![i, h]));
        v.push((format!("{b}.mlp.fc1.bias"), vec![i]));
        v.push((format!("{b}.mlp.fc2.weight"), vec![h, i]));
        v.push((format!("{b}.mlp.fc2.bias"), vec![h]));
    }
    v
}

/// The projector under `model.mm_projector`.
pub fn projector_layout(kind: &ProjectorType, cin: usize, h: usize) -> Layout {
    let p = "model.mm_projector";
    match kind {
        ProjectorType::ConvReduce { .. } => vec![
            (format!("{p}.conv.weight"), vec![h, cin, 3, 3]),
            (format!("{p}.conv.bias"), vec![h]),
            (format!("{p}.linear.weight"), vec![h, h]),
            (format!("{p}.linear.bias"), vec![h]),
        ],
        ProjectorType::Linear => vec![(format!("{p}.weight"), vec![h, cin]), (format!("{p}.bias"), vec![h])],
        ProjectorType::Mlp(n) => {
            let mut v = vec![(format!("{p}.0.weight"), vec![h, cin]), (format!("{p}.0.bias"), vec![h])];
            for k in 1..*n {
                v.push((format!("{p}.{}.weight", 2 * k), vec![h, h]));
                v.push((format!("{p}.{}.bias", 2 * k), vec![h]));
            }
            v
        }
        ProjectorType::Identity => vec![],
    }
}

/// The LLM (embeddings, layers, final norm, lm_head when not tied).
pub fn llm_layout(c: &LlmConfig) -> Layout {
    let mut v = Vec::new();
    // Llama's biases as llama.rs loads them: q/k/v with qkv_bias (Qwen2) or attention_bias,
    // o_proj with attention_bias, gate/up/down with mlp_bias
    let qkv_bias = matches!(c, LlmConfig::Llama(l) if l.qkv_bias || l.attention_bias);
    let o_bias = matches!(c, LlmConfig::Llama(l) if l.attention_bias);
    let mlp_bias = matches!(c, LlmConfig::Llama(l) if l.mlp_bias);
    let (vocab, h, i, layers, nh, nkv, hd, tied, gemma) = match c {
        LlmConfig::Gemma2(g) => (
            g.vocab_size,
            g.hidden_size,
            g.intermediate_size,
            g.num_hidden_layers,
            g.num_attention_heads,
            g.num_key_value_heads,
            g.head_dim,
            g.tie_word_embeddings,
            true,
        ),
        LlmConfig::Llama(l) => (
            l.vocab_size,
            l.hidden_size,
            l.intermediate_size,
            l.num_hidden_layers,
            l.num_attention_heads,
            l.num_key_value_heads,
            l.head_dim,
            l.tie_word_embeddings,
            false,
        ),
    };
    v.push(("model.embed_tokens.weight".to_string(), vec![vocab, h]));
    for l in 0..layers {
        let b = format!("model.layers.{l}");
        v.push((format!("{b}.self_attn.q_proj.weight"), vec![nh * hd, h]));
        v.push((format!("{b}.self_attn.k_proj.weight"), vec![nkv * hd, h]));
        v.push((format!("{b}.self_attn.v_proj.weight"), vec![nkv * hd, h]));
        v.push((format!("{b}.self_attn.o_proj.weight"), vec![h, nh * hd]));
        if qkv_bias {
            v.push((format!("{b}.self_attn.q_proj.bias"), vec![nh * hd]));
            v.push((format!("{b}.self_attn.k_proj.bias"), vec![nkv * hd]));
            v.push((format!("{b}.self_attn.v_proj.bias"), vec![nkv * hd]));
        }
        if o_bias {
            v.push((format!("{b}.self_attn.o_proj.bias"), vec![h]));
        }
        v.push((format!("{b}.mlp.gate_proj.weight"), vec![i, h]));
        v.push((format!("{b}.mlp.up_proj.weight"), vec![i, h]));
        v.push((format!("{b}.mlp.down_proj.weight"), vec![h, i]));
        if mlp_bias {
            v.push((format!("{b}.mlp.gate_proj.bias"), vec![i]));
            v.push((format!("{b}.mlp.up_proj.bias"), vec![i]));
            v.push((format!("{b}.mlp.down_proj.bias"), vec![h]));
        }
        v.push((format!("{b}.input_layernorm.weight"), vec![h]));
        v.push((format!("{b}.post_attention_layernorm.weight"), vec![h]));
        if gemma {
            v.push((format!("{b}.pre_feedforward_layernorm.weight"), vec![h]));
            v.push((format!("{b}.post_feedforward_layernorm.weight"), vec![h]));
        }
    }
    v.push(("model.norm.weight".to_string(), vec![h]));
    if !tied {
        v.push(("lm_head.weight".to_string(), vec![vocab, h]));
    }
    v
}

/// Random tensors for a layout: N(0, 0.02) weights, zero biases and Gemma norm offsets, unit
/// LayerNorm / Llama norm scales. Deterministic for a seed.
pub fn random_tensors(
    layout: &Layout,
    gemma_norms: bool,
    dtype: DType,
    device: &Device,
    seed: u64,
) -> candle_core::Result<HashMap<String, Tensor>> {
    // the CPU device cannot be seeded: draw on the host there (Box-Muller on a seeded StdRng)
    let mut host = if device.is_cpu() {
        Some(<rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed))
    } else {
        device.set_seed(seed)?;
        None
    };
    let mut randn = |shape: &[usize]| -> candle_core::Result<Tensor> {
        match host.as_mut() {
            None => Tensor::randn(0f32, 0.02, shape, device),
            Some(rng) => {
                use rand::Rng;
                let n: usize = shape.iter().product();
                let mut v = Vec::with_capacity(n);
                while v.len() < n {
                    let (u1, u2): (f32, f32) = (rng.random::<f32>().max(1e-12), rng.random());
                    let r = (-2.0 * u1.ln()).sqrt() * 0.02;
                    let t = 2.0 * std::f32::consts::PI * u2;
                    v.push(r * t.cos());
                    v.push(r * t.sin());
                }
                v.truncate(n);
                Tensor::from_vec(v, shape, device)
            }
        }
    };
    let mut out = HashMap::new();
    for (name, shape) in layout {
        let is_norm = name.contains("norm") || name.contains("layrnorm");
        let t = if name.ends_with(".bias") {
            Tensor::zeros(shape.as_slice(), dtype, device)?
        } else if is_norm && name.ends_with(".weight") {
            let llm_norm = name.starts_with("model.layers.") || name == "model.norm.weight";
            if llm_norm && gemma_norms {
                Tensor::zeros(shape.as_slice(), dtype, device)?
            } else {
                Tensor::ones(shape.as_slice(), dtype, device)?
            }
        } else {
            randn(shape)?.to_dtype(dtype)?
        };
        out.insert(name.clone(), t);
    }
    Ok(out)
}

/// An EVA02 tower under `prefix` in timm names (`...vision_tower.vision_tower` for Griffon v2),
/// like `eva02_large_patch14_clip_336`: separate q/k/v (no k bias), inner attention and MLP
/// LayerNorms, SwiGLU, final `norm` (unused by the hidden states).
pub fn eva02_layout(prefix: &str, c: &crate::eva02::Eva02Config) -> Layout {
    let (h, i, p, g) = (c.hidden_size, c.intermediate_size, c.patch_size, c.grid());
    let mut v = vec![
        (format!("{prefix}.cls_token"), vec![1, 1, h]),
        (format!("{prefix}.pos_embed"), vec![1, g * g + 1, h]),
        (format!("{prefix}.patch_embed.proj.weight"), vec![h, 3, p, p]),
        (format!("{prefix}.patch_embed.proj.bias"), vec![h]),
        (format!("{prefix}.norm.weight"), vec![h]),
        (format!("{prefix}.norm.bias"), vec![h]),
    ];
    for l in 0..c.num_hidden_layers {
        let b = format!("{prefix}.blocks.{l}");
        for n in ["norm1", "norm2", "attn.norm"] {
            v.push((format!("{b}.{n}.weight"), vec![h]));
            v.push((format!("{b}.{n}.bias"), vec![h]));
        }
        v.push((format!("{b}.attn.q_proj.weight"), vec![h, h]));
        v.push((format!("{b}.attn.q_proj.bias"), vec![h]));
        v.push((format!("{b}.attn.k_proj.weight"), vec![h, h]));
        v.push((format!("{b}.attn.v_proj.weight"), vec![h, h]));
        v.push((format!("{b}.attn.v_proj.bias"), vec![h]));
        v.push((format!("{b}.attn.proj.weight"), vec![h, h]));
        v.push((format!("{b}.attn.proj.bias"), vec![h]));
        for f in ["fc1_g", "fc1_x"] {
            v.push((format!("{b}.mlp.{f}.weight"), vec![i, h]));
            v.push((format!("{b}.mlp.{f}.bias"), vec![i]));
        }
        v.push((format!("{b}.mlp.norm.weight"), vec![i]));
        v.push((format!("{b}.mlp.norm.bias"), vec![i]));
        v.push((format!("{b}.mlp.fc2.weight"), vec![h, i]));
        v.push((format!("{b}.mlp.fc2.bias"), vec![h]));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LlamaConfig;
    use crate::loader::Checkpoint;
    use crate::nn::Act;

    /// A random Llama with every bias llama.rs can load: the layout lists each one, so it loads.
    #[test]
    fn llama_layout_has_every_bias_the_loader_reads() {
        for (attention_bias, mlp_bias, qkv_bias) in [(true, true, false), (false, true, true), (false, false, false)] {
            let cfg = LlmConfig::Llama(LlamaConfig {
                vocab_size: 32,
                hidden_size: 16,
                intermediate_size: 24,
                num_hidden_layers: 2,
                num_attention_heads: 2,
                num_key_value_heads: 1,
                head_dim: 8,
                rms_norm_eps: 1e-5,
                rope_theta: 10000.0,
                hidden_act: Act::Silu,
                attention_bias,
                mlp_bias,
                tie_word_embeddings: false,
                qkv_bias,
            });
            let layout = llm_layout(&cfg);
            let t = random_tensors(&layout, false, DType::F32, &Device::Cpu, 1).unwrap();
            let ck = Checkpoint::from_tensors(t, &Device::Cpu, DType::F32).unwrap();
            crate::llm::Llm::load(&ck, &cfg).unwrap();
            let n = layout.iter().filter(|(name, _)| name.ends_with(".bias")).count();
            let per_layer =
                3 * usize::from(attention_bias || qkv_bias) + usize::from(attention_bias) + 3 * usize::from(mlp_bias);
            assert_eq!(n, 2 * per_layer, "{attention_bias} {mlp_bias} {qkv_bias}");
        }
    }
}

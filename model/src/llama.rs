//! Llama-2 decoder with an inputs-embeds path (source: transformers
//! `models/llama/modeling_llama.py`; Qwen2 is the same block with q/k/v biases,
//! `models/qwen2/modeling_qwen2.py`): RMSNorm (`w`), RoPE, grouped-query attention scaled by
//! head_dim^-0.5, SiLU-gated MLP, final norm, stored (or tied) lm_head. No embedding scaling.

use crate::config::LlamaConfig;
use crate::error::Result;
use crate::llm::{AttnSpec, DecoderLayer, DecoderSpec, Llm, Projections};
use crate::loader::Checkpoint;
use crate::nn::{Linear, RmsNorm};

/// Loads a Llama-2 / Qwen2 checkpoint (`model.*`, `lm_head.*`) as a decoder.
pub fn load(ck: &Checkpoint, cfg: &LlamaConfig) -> Result<Llm> {
    let h = cfg.hidden_size;
    let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    let eps = cfg.rms_norm_eps;
    let m = ck.scope("model");
    let embed_w = m.get("embed_tokens.weight", &[cfg.vocab_size, h])?;
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for i in 0..cfg.num_hidden_layers {
        let l = m.pp(format!("layers.{i}"));
        let a = l.pp("self_attn");
        let f = l.pp("mlp");
        let ab = cfg.attention_bias;
        let qkvb = ab || cfg.qkv_bias;
        let mb = cfg.mlp_bias;
        layers.push(DecoderLayer {
            input_ln: RmsNorm::load(&l.pp("input_layernorm"), h, eps, false)?,
            qkv: Projections::new(vec![
                Linear::load(&a.pp("q_proj"), h, nh * hd, qkvb)?,
                Linear::load(&a.pp("k_proj"), h, nkv * hd, qkvb)?,
                Linear::load(&a.pp("v_proj"), h, nkv * hd, qkvb)?,
            ])?,
            o: Linear::load(&a.pp("o_proj"), nh * hd, h, ab)?,
            post_attn_ln: None,
            pre_ff_ln: RmsNorm::load(&l.pp("post_attention_layernorm"), h, eps, false)?,
            gate_up: Projections::new(vec![
                Linear::load(&f.pp("gate_proj"), h, cfg.intermediate_size, mb)?,
                Linear::load(&f.pp("up_proj"), h, cfg.intermediate_size, mb)?,
            ])?,
            down: Linear::load(&f.pp("down_proj"), cfg.intermediate_size, h, mb)?,
            post_ff_ln: None,
            sliding: false,
        });
    }
    let spec = DecoderSpec {
        heads: nh,
        kv_heads: nkv,
        head_dim: hd,
        attn: AttnSpec { scale: (hd as f64).powf(-0.5), softcap: None },
        act: cfg.hidden_act,
        embed_scale: None,
        sliding_window: None,
        final_softcap: None,
        vocab_size: cfg.vocab_size,
    };
    let norm = RmsNorm::load(&m.pp("norm"), h, eps, false)?;
    Llm::new(ck, spec, embed_w, layers, norm, cfg.tie_word_embeddings, cfg.rope_theta)
}

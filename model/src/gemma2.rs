//! Gemma-2 decoder with an inputs-embeds path (source: transformers
//! `models/gemma2/modeling_gemma2.py`):
//! * every input embedding (image and region tokens included) is multiplied by sqrt(hidden_size);
//! * attention scale `query_pre_attn_scalar^-0.5`, attention-logit soft-capping, sliding-window
//!   attention on the layers `layer_types` marks, grouped-query attention;
//! * RMSNorm with `(1 + w)`, pre/post attention and pre/post feed-forward norms;
//! * GELU(tanh)-gated MLP; final norm, tied (or stored) lm_head, final-logit soft-capping.

use crate::config::Gemma2Config;
use crate::error::Result;
use crate::llm::{AttnSpec, DecoderLayer, DecoderSpec, Llm, Projections};
use crate::loader::{Checkpoint, Scope};
use crate::nn::{Linear, RmsNorm};

/// Loads a Gemma-2 checkpoint (`model.*`, optional `lm_head.*`) as a decoder.
pub fn load(ck: &Checkpoint, cfg: &Gemma2Config) -> Result<Llm> {
    let h = cfg.hidden_size;
    let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    let eps = cfg.rms_norm_eps;
    let m = ck.scope("model");
    let embed_w = m.get("embed_tokens.weight", &[cfg.vocab_size, h])?;
    let norm = |s: &Scope| RmsNorm::load(s, h, eps, true);
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for i in 0..cfg.num_hidden_layers {
        let l = m.pp(format!("layers.{i}"));
        let a = l.pp("self_attn");
        let f = l.pp("mlp");
        layers.push(DecoderLayer {
            input_ln: norm(&l.pp("input_layernorm"))?,
            qkv: Projections::new(vec![
                Linear::load_opt_bias(&a.pp("q_proj"), h, nh * hd)?,
                Linear::load_opt_bias(&a.pp("k_proj"), h, nkv * hd)?,
                Linear::load_opt_bias(&a.pp("v_proj"), h, nkv * hd)?,
            ])?,
            o: Linear::load_opt_bias(&a.pp("o_proj"), nh * hd, h)?,
            post_attn_ln: Some(norm(&l.pp("post_attention_layernorm"))?),
            pre_ff_ln: norm(&l.pp("pre_feedforward_layernorm"))?,
            gate_up: Projections::new(vec![
                Linear::load(&f.pp("gate_proj"), h, cfg.intermediate_size, false)?,
                Linear::load(&f.pp("up_proj"), h, cfg.intermediate_size, false)?,
            ])?,
            down: Linear::load(&f.pp("down_proj"), cfg.intermediate_size, h, false)?,
            post_ff_ln: Some(norm(&l.pp("post_feedforward_layernorm"))?),
            sliding: cfg.sliding_layers[i],
        });
    }
    let spec = DecoderSpec {
        heads: nh,
        kv_heads: nkv,
        head_dim: hd,
        attn: AttnSpec { scale: cfg.query_pre_attn_scalar.powf(-0.5), softcap: cfg.attn_logit_softcapping },
        act: cfg.hidden_act,
        embed_scale: Some((h as f64).sqrt()),
        sliding_window: cfg.sliding_window,
        final_softcap: cfg.final_logit_softcapping,
        vocab_size: cfg.vocab_size,
    };
    let final_norm = norm(&m.pp("norm"))?;
    Llm::new(ck, spec, embed_w, layers, final_norm, cfg.tie_word_embeddings, cfg.rope_theta)
}

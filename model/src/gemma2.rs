//! Gemma-2 decoder with an inputs-embeds path (source: transformers
//! `models/gemma2/modeling_gemma2.py`):
//! * every input embedding (image and region tokens included) is multiplied by sqrt(hidden_size);
//! * attention scale `query_pre_attn_scalar^-0.5`, attention-logit soft-capping, sliding-window
//!   attention on the layers `layer_types` marks, grouped-query attention;
//! * RMSNorm with `(1 + w)`, pre/post attention and pre/post feed-forward norms;
//! * GELU(tanh)-gated MLP; final norm, tied (or stored) lm_head, final-logit soft-capping.

use crate::config::Gemma2Config;
use crate::error::Result;
use crate::llm::{attention, causal_mask, AttnSpec, KvCache, Projections, Rope};
use crate::loader::{Checkpoint, Scope};
use crate::nn::{Embedding, Linear, RmsNorm};
use candle_core::Tensor;

struct Layer {
    input_ln: RmsNorm,
    /// q, k, v
    qkv: Projections,
    o: Linear,
    post_attn_ln: RmsNorm,
    pre_ff_ln: RmsNorm,
    /// gate, up
    gate_up: Projections,
    down: Linear,
    post_ff_ln: RmsNorm,
    sliding: bool,
}

pub struct Gemma2 {
    cfg: Gemma2Config,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
}

impl Gemma2 {
    pub fn load(ck: &Checkpoint, cfg: &Gemma2Config) -> Result<Self> {
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
            layers.push(Layer {
                input_ln: norm(&l.pp("input_layernorm"))?,
                qkv: Projections::new(vec![
                    Linear::load_opt_bias(&a.pp("q_proj"), h, nh * hd)?,
                    Linear::load_opt_bias(&a.pp("k_proj"), h, nkv * hd)?,
                    Linear::load_opt_bias(&a.pp("v_proj"), h, nkv * hd)?,
                ])?,
                o: Linear::load_opt_bias(&a.pp("o_proj"), nh * hd, h)?,
                post_attn_ln: norm(&l.pp("post_attention_layernorm"))?,
                pre_ff_ln: norm(&l.pp("pre_feedforward_layernorm"))?,
                gate_up: Projections::new(vec![
                    Linear::load(&f.pp("gate_proj"), h, cfg.intermediate_size, false)?,
                    Linear::load(&f.pp("up_proj"), h, cfg.intermediate_size, false)?,
                ])?,
                down: Linear::load(&f.pp("down_proj"), cfg.intermediate_size, h, false)?,
                post_ff_ln: norm(&l.pp("post_feedforward_layernorm"))?,
                sliding: cfg.sliding_layers[i],
            });
        }
        let lm_head = if ck.has("lm_head.weight") {
            Linear::load(&ck.scope("lm_head"), h, cfg.vocab_size, false)?
        } else if cfg.tie_word_embeddings {
            Linear { weight: embed_w.clone(), bias: None }
        } else {
            return crate::error::invalid(format!(
                "tensor lm_head.weight is missing from the checkpoint in {} and tie_word_embeddings is false",
                ck.dir().display()
            ));
        };
        Ok(Self {
            cfg: cfg.clone(),
            embed: Embedding { weight: embed_w },
            layers,
            norm: norm(&m.pp("norm"))?,
            lm_head,
            rope: Rope::new(hd, cfg.rope_theta),
        })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    pub fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed.forward(ids)
    }

    pub fn hidden(&self, x: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let offset = cache.len();
        let rope = self.rope.tables(offset, t, x.device(), x.dtype())?;
        let full_mask = causal_mask(t, offset, None, x)?;
        let window_mask = match self.cfg.sliding_window {
            Some(w) if self.layers.iter().any(|l| l.sliding) => Some(causal_mask(t, offset, Some(w), x)?),
            _ => None,
        };
        let (nh, nkv, hd) = (self.cfg.num_attention_heads, self.cfg.num_key_value_heads, self.cfg.head_dim);
        // HF multiplies by a normalizer tensor of the hidden dtype.
        let normalizer = (self.cfg.hidden_size as f64).sqrt();
        let mut x = (x * normalizer)?;
        for (i, l) in self.layers.iter().enumerate() {
            let hn = l.input_ln.forward(&x)?;
            let qkv = l.qkv.forward(&hn)?;
            let q = qkv[0].reshape((b, t, nh, hd))?.transpose(1, 2)?;
            let k = qkv[1].reshape((b, t, nkv, hd))?.transpose(1, 2)?;
            let v = qkv[2].reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
            let q = self.rope.apply_tables(&q, &rope)?;
            let k = self.rope.apply_tables(&k, &rope)?;
            let (k, v) = cache.append(i, k, v)?;
            let spec = AttnSpec { scale: self.cfg.query_pre_attn_scalar.powf(-0.5), softcap: self.cfg.attn_logit_softcapping };
            let mask = match (&window_mask, l.sliding) {
                (Some(m), true) => m,
                _ => &full_mask,
            };
            let a = attention(&q, &k, &v, mask, &spec)?;
            let a = l.post_attn_ln.forward(&l.o.forward(&a)?)?;
            x = (x + a)?;
            let hn = l.pre_ff_ln.forward(&x)?;
            let gu = l.gate_up.forward(&hn)?;
            let g = self.cfg.hidden_act.apply(&gu[0])?;
            let f = l.down.forward(&(g * &gu[1])?)?;
            x = (x + l.post_ff_ln.forward(&f)?)?;
        }
        Ok(x)
    }

    pub fn head(&self, x: &Tensor) -> Result<Tensor> {
        let logits = self.lm_head.forward(&self.norm.forward(x)?)?;
        Ok(match self.cfg.final_logit_softcapping {
            Some(cap) => ((logits / cap)?.tanh()? * cap)?,
            None => logits,
        })
    }
}

//! Llama-2 decoder with an inputs-embeds path (source: transformers
//! `models/llama/modeling_llama.py`; Qwen2 is the same block with q/k/v biases,
//! `models/qwen2/modeling_qwen2.py`): RMSNorm (`w`), RoPE, grouped-query attention scaled by
//! head_dim^-0.5, SiLU-gated MLP, final norm, stored (or tied) lm_head. No embedding scaling.

use crate::config::LlamaConfig;
use crate::error::Result;
use crate::llm::{attention, causal_mask, AttnSpec, KvCache, Projections, Rope};
use crate::loader::Checkpoint;
use crate::nn::{Embedding, Linear, RmsNorm};
use candle_core::Tensor;

struct Layer {
    input_ln: RmsNorm,
    /// q, k, v
    qkv: Projections,
    o: Linear,
    post_ln: RmsNorm,
    /// gate, up
    gate_up: Projections,
    down: Linear,
}

pub struct Llama {
    cfg: LlamaConfig,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
}

impl Llama {
    pub fn load(ck: &Checkpoint, cfg: &LlamaConfig) -> Result<Self> {
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
            layers.push(Layer {
                input_ln: RmsNorm::load(&l.pp("input_layernorm"), h, eps, false)?,
                qkv: Projections::new(vec![
                    Linear::load(&a.pp("q_proj"), h, nh * hd, qkvb)?,
                    Linear::load(&a.pp("k_proj"), h, nkv * hd, qkvb)?,
                    Linear::load(&a.pp("v_proj"), h, nkv * hd, qkvb)?,
                ])?,
                o: Linear::load(&a.pp("o_proj"), nh * hd, h, ab)?,
                post_ln: RmsNorm::load(&l.pp("post_attention_layernorm"), h, eps, false)?,
                gate_up: Projections::new(vec![
                    Linear::load(&f.pp("gate_proj"), h, cfg.intermediate_size, mb)?,
                    Linear::load(&f.pp("up_proj"), h, cfg.intermediate_size, mb)?,
                ])?,
                down: Linear::load(&f.pp("down_proj"), cfg.intermediate_size, h, mb)?,
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
            norm: RmsNorm::load(&m.pp("norm"), h, eps, false)?,
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
        let mask = causal_mask(t, offset, None, x)?;
        let (nh, nkv, hd) = (self.cfg.num_attention_heads, self.cfg.num_key_value_heads, self.cfg.head_dim);
        let spec = AttnSpec { scale: (hd as f64).powf(-0.5), softcap: None };
        let mut x = x.clone();
        for (i, l) in self.layers.iter().enumerate() {
            let hn = l.input_ln.forward(&x)?;
            let qkv = l.qkv.forward(&hn)?;
            let q = qkv[0].reshape((b, t, nh, hd))?.transpose(1, 2)?;
            let k = qkv[1].reshape((b, t, nkv, hd))?.transpose(1, 2)?;
            let v = qkv[2].reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
            let q = self.rope.apply_tables(&q, &rope)?;
            let k = self.rope.apply_tables(&k, &rope)?;
            let (k, v) = cache.append(i, k, v)?;
            let a = attention(&q, &k, &v, &mask, &spec)?;
            x = (x + l.o.forward(&a)?)?;
            let hn = l.post_ln.forward(&x)?;
            let gu = l.gate_up.forward(&hn)?;
            let g = self.cfg.hidden_act.apply(&gu[0])?;
            x = (x + l.down.forward(&(g * &gu[1])?)?)?;
        }
        Ok(x)
    }

    pub fn head(&self, x: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(&self.norm.forward(x)?)
    }
}

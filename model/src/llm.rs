//! Pieces shared by the decoder LLMs: rotary embeddings (HF `rotate_half` layout), the KV cache,
//! grouped-query attention with optional logit soft-capping and sliding windows, and [`Llm`]:
//! the one decoder forward pass (Gemma-2 and Llama-2 differ only in settings and extra norms) the
//! Griffon model drives through its inputs-embeds path.

use crate::config::LlmConfig;
use crate::cpu_kernels::{Attention, Causal};
use crate::error::{invalid, Result};
use crate::loader::Checkpoint;
use crate::nn::{
    attention_probs, cpu_kernels_apply, differentiable, low_precision_attention, Act, Embedding, Linear, RmsNorm,
};
use candle_core::{DType, Device, Tensor, D};

/// cos / sin tables for HF-style RoPE: `inv_freq[i] = theta^(-2i/d)`, angle = pos * inv_freq.
pub struct Rope {
    head_dim: usize,
    inv_freq: Vec<f32>,
}

impl Rope {
    pub fn new(head_dim: usize, theta: f64) -> Self {
        let inv_freq = (0..head_dim / 2).map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32)).collect();
        Self { head_dim, inv_freq }
    }

    /// cos and sin [T, head_dim / 2] for positions offset..offset+T; made once per forward and shared by
    /// the layers (see [`Rope::apply_tables`]).
    pub fn tables(&self, offset: usize, t: usize, dev: &Device, dt: DType) -> Result<(Tensor, Tensor)> {
        let half = self.head_dim / 2;
        let mut ang = Vec::with_capacity(t * half);
        for p in offset..offset + t {
            for f in &self.inv_freq {
                ang.push(p as f32 * f);
            }
        }
        let ang = Tensor::from_vec(ang, (t, half), dev)?;
        Ok((ang.cos()?.to_dtype(dt)?, ang.sin()?.to_dtype(dt)?))
    }

    /// x: [B, heads, T, head_dim] -> rotated, with the tables from [`Rope::tables`] for x's
    /// positions.
    pub fn apply_tables(&self, x: &Tensor, (cos, sin): &(Tensor, Tensor)) -> Result<Tensor> {
        if differentiable() {
            crate::nn::rope_with_grad(x, cos, sin)
        } else {
            Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin)?)
        }
    }
}

/// Per-layer key / value cache, [B, kv_heads, S, head_dim] each.
///
/// The prefill's keys and values are kept as computed (no copy; the training graph runs through
/// them). Later appends (decoding) write into a buffer with room to spare, grown in steps of
/// [`KV_GROWTH`] positions, instead of concatenating the whole cache again for every token.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
}

struct LayerKv {
    k: Tensor,
    v: Tensor,
    /// Valid positions (the buffers may hold more).
    len: usize,
    /// The buffers were allocated here and nothing else writes them: appends may fill them.
    owned: bool,
}

/// Positions a decoding buffer grows by.
pub const KV_GROWTH: usize = 512;

impl Clone for KvCache {
    /// A clone shares the filled positions; its own next append copies into a new buffer, so
    /// neither cache writes where the other reads.
    fn clone(&self) -> Self {
        let layers = self
            .layers
            .iter()
            .map(|l| l.as_ref().map(|l| LayerKv { k: l.k.clone(), v: l.v.clone(), len: l.len, owned: false }))
            .collect();
        Self { layers }
    }
}

impl KvCache {
    pub fn new(n_layers: usize) -> Self {
        Self { layers: (0..n_layers).map(|_| None).collect() }
    }

    /// Tokens already cached.
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map(|l| l.len).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends and returns the full keys / values of layer `i` (views of the first `len` positions).
    pub fn append(&mut self, i: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        let l = match self.layers[i].take() {
            None => LayerKv { k, v, len: t, owned: false },
            Some(l) if differentiable() => {
                // training: keep the graph (concatenation is differentiable, slice writes are not)
                let pk = l.k.narrow(2, 0, l.len)?;
                let pv = l.v.narrow(2, 0, l.len)?;
                LayerKv { k: Tensor::cat(&[&pk, &k], 2)?, v: Tensor::cat(&[&pv, &v], 2)?, len: l.len + t, owned: false }
            }
            Some(mut l) => {
                let need = l.len + t;
                if !l.owned || l.k.dim(2)? < need {
                    let cap = (need + KV_GROWTH).next_multiple_of(KV_GROWTH);
                    let grow = |old: &Tensor| -> Result<Tensor> {
                        let (b, h, _, d) = old.dims4()?;
                        let buf = Tensor::zeros((b, h, cap, d), old.dtype(), old.device())?;
                        buf.slice_set(&old.narrow(2, 0, l.len)?.contiguous()?, 2, 0)?;
                        Ok(buf)
                    };
                    l.k = grow(&l.k)?;
                    l.v = grow(&l.v)?;
                    l.owned = true;
                }
                l.k.slice_set(&k.contiguous()?, 2, l.len)?;
                l.v.slice_set(&v.contiguous()?, 2, l.len)?;
                l.len = need;
                l
            }
        };
        let out = (l.k.narrow(2, 0, l.len)?, l.v.narrow(2, 0, l.len)?);
        self.layers[i] = Some(l);
        Ok(out)
    }
}

/// Projections of the same input (q / k / v, gate / up): separate while training (each weight its
/// own variable), one matmul over the concatenated weights at inference (fewer kernel launches per
/// decoded token: 2 instead of 5 per layer).
pub enum Projections {
    Separate(Vec<Linear>),
    Fused { linear: Linear, sizes: Vec<usize> },
}

impl Projections {
    pub fn new(parts: Vec<Linear>) -> Result<Self> {
        let biases = parts.iter().filter(|p| p.bias.is_some()).count();
        if differentiable() || parts.len() < 2 || (biases != 0 && biases != parts.len()) {
            return Ok(Projections::Separate(parts));
        }
        let sizes = parts.iter().map(|p| p.weight.dim(0)).collect::<candle_core::Result<Vec<_>>>()?;
        let ws: Vec<&Tensor> = parts.iter().map(|p| &p.weight).collect();
        let weight = Tensor::cat(&ws, 0)?;
        let bias = if biases == 0 {
            None
        } else {
            let bs: Vec<&Tensor> = parts.iter().filter_map(|p| p.bias.as_ref()).collect();
            Some(Tensor::cat(&bs, 0)?)
        };
        Ok(Projections::Fused { linear: Linear { weight, bias }, sizes })
    }

    /// `act(gate(x)) * up(x)` of a gate / up pair: on a GPU in bf16 / f16 inference one kernel
    /// over the fused projection's output ([`crate::fused::gated_act`]), else the composed ops.
    pub fn gated(&self, x: &Tensor, act: Act) -> Result<Tensor> {
        if let Projections::Fused { linear, sizes } = self {
            if sizes.len() == 2 && sizes[0] == sizes[1] && linear.bias.is_none() && crate::fused::applies(x) {
                return crate::fused::gated_act(&linear.forward(x)?, act);
            }
        }
        let gu = self.forward(x)?;
        if gu.len() != 2 {
            return invalid(format!("a gated MLP needs 2 projections (gate, up), got {}", gu.len()));
        }
        Ok((act.apply(&gu[0])? * &gu[1])?)
    }

    /// The fused projection's weight [sum of outputs, in] when it has no bias (what
    /// [`crate::fused::norm_matmul`] multiplies by), else None.
    pub fn fused_weight(&self) -> Option<&Tensor> {
        match self {
            Projections::Fused { linear, .. } if linear.bias.is_none() => Some(&linear.weight),
            _ => None,
        }
    }

    /// The fused projection's whole output (the projections side by side on the last
    /// dimension), `None` when the projections are separate.
    pub fn joined(&self, x: &Tensor) -> Result<Option<Tensor>> {
        match self {
            Projections::Fused { linear, .. } => Ok(Some(linear.forward(x)?)),
            Projections::Separate(_) => Ok(None),
        }
    }

    /// Each projection of x, in order.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        match self {
            Projections::Separate(ps) => ps.iter().map(|p| p.forward(x)).collect(),
            Projections::Fused { linear, sizes } => {
                let y = linear.forward(x)?;
                let mut at = 0;
                sizes
                    .iter()
                    .map(|n| {
                        let t = y.narrow(D::Minus1, at, *n)?;
                        at += n;
                        Ok(t)
                    })
                    .collect()
            }
        }
    }
}

pub struct AttnSpec {
    pub scale: f64,
    pub softcap: Option<f64>,
}

/// The causal mask of one forward pass: queries at positions offset..offset+T over keys
/// 0..offset+T, optionally limited to a sliding window (keys with `pos - key_pos >= window` are
/// masked). The CPU attention kernel applies it from `causal` without a tensor; the other path
/// adds `dense`, the additive [T, S] mask (0 or -inf), `None` when nothing is masked (one query
/// with every key in its window). Built once per forward and shared by every layer of the same
/// kind, in the dtype the scores of inputs like `like` are computed in (see
/// [`crate::nn::low_precision_attention`]).
pub struct CausalMask {
    pub causal: Causal,
    /// Whether [`attention`] runs the CPU kernel (decided here, once, with the dense mask).
    cpu_kernel: bool,
    dense: Option<Tensor>,
}

pub fn causal_mask(t: usize, offset: usize, window: Option<usize>, like: &Tensor) -> Result<CausalMask> {
    let causal = Causal { offset, window };
    let s = offset + t;
    let cpu_kernel = cpu_kernels_apply(like);
    // training's attention op masks by key ranges itself ([`attention`] takes it first)
    let op = crate::nn::differentiable() && crate::attn_grad::enabled();
    if cpu_kernel || op || (t == 1 && window.is_none_or(|w| s <= w)) {
        return Ok(CausalMask { causal, cpu_kernel, dense: None });
    }
    let m = causal.additive_mask(0..t, s);
    let dtype = if low_precision_attention(like) { like.dtype() } else { DType::F32 };
    Ok(CausalMask { causal, cpu_kernel, dense: Some(Tensor::from_vec(m, (t, s), like.device())?.to_dtype(dtype)?) })
}

/// Grouped-query attention of q [B, H, T, d] over k, v [B, KV, S, d] -> [B, T, H * d] (heads
/// merged, as the output projection reads them). When `mask` was made for f32 CPU inputs, the
/// fused kernel of [`crate::cpu_kernels`] runs (it refuses other tensors with an error); bf16 /
/// f16 inference on a GPU runs the kernels of [`crate::flash`] (the tiled one for prefill, the
/// split-KV one for one-token decode steps); elsewhere the scores are formed per kv group (the reference's
/// `repeat_kv` without the copies), soft-capped, masked and normalised by [`attention_probs`].
/// q holds positions offset..offset+T, k and v positions 0..S (S = offset + T). Rows of a
/// right-padded batch never see the padding after them, so one causal mask serves a padded batch.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &CausalMask, spec: &AttnSpec) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let kvh = k.dim(1)?;
    let s = k.dim(2)?;
    if h % kvh != 0 {
        return invalid(format!("{h} attention heads are not a multiple of {kvh} key/value heads"));
    }
    if crate::nn::differentiable() && crate::attn_grad::enabled() {
        // training: one node with its own backward pass, no score tensors kept for it
        let spec = crate::attn_grad::GradSpec {
            scale: spec.scale as f32,
            softcap: spec.softcap.map(|c| c as f32),
            causal: Some(mask.causal),
        };
        return crate::attn_grad::attention(q, k, v, &spec);
    }
    if mask.cpu_kernel {
        // the mask has no dense form here: a q of another kind is an error, never an unmasked pass
        let a =
            Attention { scale: spec.scale as f32, softcap: spec.softcap.map(|c| c as f32), causal: Some(mask.causal) };
        return Ok(q.apply_op3_no_bwd(k, v, &a)?);
    }
    if crate::flash::applies(q) {
        let spec = crate::flash::FlashSpec {
            scale: spec.scale as f32,
            softcap: spec.softcap.map(|c| c as f32),
            causal: Some(mask.causal),
        };
        let out = if t == 1 && h / kvh <= crate::flash::DECODE_MAX_REP {
            crate::flash::decode(q, k, v, &spec)?
        } else {
            crate::flash::attention(q, k, v, &spec)?
        };
        return Ok(out.reshape((b, t, h * d))?);
    }
    let rep = h / kvh;
    // Group query heads by their kv head: [B, KV, rep*T, d] so one matmul serves a group.
    let qg = q.contiguous()?.reshape((b, kvh, rep * t, d))?;
    // (the scale as torch applies it: 1/12, Gemma-2-27B's, or Llama's 128^-0.5 are not bf16 values)
    let mut scores = crate::nn::scale_exact(&qg.matmul(&k.t()?)?, spec.scale)?;
    if !low_precision_attention(&scores) {
        scores = scores.to_dtype(DType::F32)?;
    }
    if let Some(cap) = spec.softcap {
        scores = crate::nn::softcap(&scores, cap)?;
    }
    if let Some(mask) = &mask.dense {
        // [B, KV, rep, T, S] + [T, S]: the same mask for every head of the group
        let mask = mask.to_dtype(scores.dtype())?; // a no-op: causal_mask builds it in this dtype
        scores = scores.reshape((b, kvh, rep, t, s))?.broadcast_add(&mask)?.reshape((b, kvh, rep * t, s))?;
    }
    let probs = attention_probs(&scores, v.dtype())?;
    Ok(probs.matmul(v)?.reshape((b, h, t, d))?.transpose(1, 2)?.reshape((b, t, h * d))?)
}

/// What distinguishes the decoders [`Llm`] runs (set by [`crate::llama::load`] and
/// [`crate::gemma2::load`]).
pub struct DecoderSpec {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Score scale and logit soft-capping.
    pub attn: AttnSpec,
    /// The gate's activation of the gated MLP.
    pub act: Act,
    /// Gemma-2 multiplies every input embedding by sqrt(hidden_size).
    pub embed_scale: Option<f64>,
    /// The window of the layers marked `sliding`.
    pub sliding_window: Option<usize>,
    /// Gemma-2's final-logit soft-capping.
    pub final_softcap: Option<f64>,
    pub vocab_size: usize,
}

/// `norm(stream) W^T` through [`crate::fused::norm_matmul`]: the stream is x, or (a `pending`
/// sublayer output f) x + post(f); returns the product and the new stream (None when it is x).
fn fold_norm(
    x: &Tensor,
    pending: Option<(Tensor, Option<&RmsNorm>)>,
    norm: &RmsNorm,
    w: &Tensor,
) -> Result<(Tensor, Option<Tensor>)> {
    let no_scale = || invalid("a folded RMSNorm needs its fused f32 scale (inference only)");
    let Some(scale) = norm.fused_scale() else { return no_scale() };
    match pending {
        None => crate::fused::norm_matmul(x, crate::fused::NormInput::Stream, Some(scale), w),
        Some((f, post)) => {
            let post = match post {
                Some(n) => match n.fused_scale() {
                    Some(p) => Some(p),
                    None => return no_scale(),
                },
                None => None,
            };
            crate::fused::norm_matmul(&f, crate::fused::NormInput::Add { residual: x, post }, Some(scale), w)
        }
    }
}

/// `x W^T (+ b)` of a decode step: with `GRIFFON_NORM_GEMV=all` (and `fold`, the step's norms
/// folded) [`crate::fused::norm_matmul`]'s kernel without a norm where x fits it, else the Linear
/// (cuBLAS).
fn decode_linear(fold: bool, l: &Linear, x: &Tensor) -> Result<Tensor> {
    if fold && crate::fused::gemv_everywhere() && l.bias.is_none() && crate::fused::norm_matmul_applies(x) {
        return Ok(crate::fused::norm_matmul(x, crate::fused::NormInput::Stream, None, &l.weight)?.0);
    }
    l.forward(x)
}

/// One pre-norm decoder layer: `x + [post_attn_ln](o(attention(input_ln(x))))`, then
/// `x + [post_ff_ln](down(act(gate(h)) * up(h)))` with `h = pre_ff_ln(x)`. The bracketed norms are
/// Gemma-2's; Llama's `post_attention_layernorm` is the `pre_ff_ln` here.
pub struct DecoderLayer {
    pub input_ln: RmsNorm,
    /// q, k, v
    pub qkv: Projections,
    pub o: Linear,
    pub post_attn_ln: Option<RmsNorm>,
    pub pre_ff_ln: RmsNorm,
    /// gate, up
    pub gate_up: Projections,
    pub down: Linear,
    pub post_ff_ln: Option<RmsNorm>,
    pub sliding: bool,
}

/// One decoder layer's tensors from [`Llm::hidden_tapped`], this pass's positions only.
pub struct Tapped {
    /// Queries after the rotary embedding [B, heads, T, d].
    pub q: Tensor,
    /// Keys after the rotary embedding and values [B, kv heads, T, d].
    pub k: Tensor,
    pub v: Tensor,
    /// The residual stream the layer reads (before its input norm) [B, T, H]: the previous
    /// layer's output, or the scaled embeddings for layer 0.
    pub input: Tensor,
}

/// The decoder LLMs Griffon drives through inputs_embeds: Gemma-2, Llama-2 (and Qwen2), one
/// forward pass for both, their differences in [`DecoderSpec`] and [`DecoderLayer`].
pub struct Llm {
    spec: DecoderSpec,
    embed: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    /// The positions the model was built for (`max_position_embeddings`), when known: generation
    /// stops there ([`crate::generate::StopReason::MaxPositions`]).
    max_positions: Option<usize>,
}

impl Llm {
    pub fn load(ck: &Checkpoint, cfg: &LlmConfig) -> Result<Self> {
        ck.check_no_layer_beyond("model.layers.", cfg.num_hidden_layers(), "the LLM")?;
        match cfg {
            LlmConfig::Gemma2(c) => crate::gemma2::load(ck, c),
            LlmConfig::Llama(c) => crate::llama::load(ck, c),
        }
    }

    /// Assembles a decoder; the lm_head is `lm_head.weight` when the checkpoint has it, else the
    /// embedding table when `tie_word_embeddings`.
    pub fn new(
        ck: &Checkpoint,
        spec: DecoderSpec,
        embed_weight: Tensor,
        layers: Vec<DecoderLayer>,
        norm: RmsNorm,
        tie_word_embeddings: bool,
        rope_theta: f64,
    ) -> Result<Self> {
        let h = embed_weight.dim(1)?;
        // tied: the embedding table, also when the checkpoint stores an lm_head.weight beside it
        // (HF ties the two after loading, vLLM skips the stored one; some exports carry a stale copy)
        let lm_head = if tie_word_embeddings {
            Linear { weight: embed_weight.clone(), bias: None }
        } else if ck.has("lm_head.weight") {
            Linear::load(&ck.scope("lm_head"), h, spec.vocab_size, false)?
        } else {
            return invalid(format!(
                "tensor lm_head.weight is missing from the checkpoint in {} and tie_word_embeddings is false",
                ck.dir().display()
            ));
        };
        let rope = Rope::new(spec.head_dim, rope_theta);
        Ok(Self { spec, embed: Embedding { weight: embed_weight }, layers, norm, lm_head, rope, max_positions: None })
    }

    /// Sets the positions the model was built for (`max_position_embeddings`; None: unknown).
    pub fn with_max_positions(mut self, max: Option<usize>) -> Self {
        self.max_positions = max;
        self
    }

    /// The positions the model was built for, when known.
    pub fn max_positions(&self) -> Option<usize> {
        self.max_positions
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn vocab_size(&self) -> usize {
        self.spec.vocab_size
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.num_layers())
    }

    /// Raw token embeddings (before any model-specific scaling), [T] -> [T, H].
    pub fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed.forward(ids)
    }

    /// Runs embeddings [B, T, H] after the cached positions. Returns logits [B, T, V] for every
    /// position when `all_logits`, else [B, 1, V] for the last.
    pub fn forward_embeds(&self, x: &Tensor, cache: &mut KvCache, all_logits: bool) -> Result<Tensor> {
        if x.dim(1)? == 0 {
            return invalid("forward_embeds: no positions to run (an empty input)");
        }
        let h = self.hidden(x, cache)?;
        let t = h.dim(1)?;
        let h = if all_logits { h } else { h.narrow(1, t - 1, 1)? };
        self.head(&h)
    }

    /// The last decoder layer's output [B, T, H] (before the final norm).
    pub fn hidden(&self, x: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        Ok(self.hidden_tapped(x, cache, None)?.0)
    }

    /// [`Self::hidden`], also returning layer `tap`'s queries, keys, values and input residual
    /// ([`Tapped`]): what the trainer's grounding loss (train crate, `ground.rs`) scores a
    /// head's attention from. `None` runs [`Self::hidden`]'s pass alone.
    pub fn hidden_tapped(
        &self,
        x: &Tensor,
        cache: &mut KvCache,
        tap: Option<usize>,
    ) -> Result<(Tensor, Option<Tapped>)> {
        if let Some(t) = tap {
            if t >= self.layers.len() {
                return invalid(format!("layer {t} tapped, the decoder has {} layers", self.layers.len()));
            }
        }
        let mut tapped = None;
        let s = &self.spec;
        let (b, t, _) = x.dims3()?;
        let offset = cache.len();
        let rope = self.rope.tables(offset, t, x.device(), x.dtype())?;
        let full_mask = causal_mask(t, offset, None, x)?;
        let window_mask = match s.sliding_window {
            Some(w) if self.layers.iter().any(|l| l.sliding) => Some(causal_mask(t, offset, Some(w), x)?),
            _ => None,
        };
        let (nh, nkv, hd) = (s.heads, s.kv_heads, s.head_dim);
        // HF Gemma-2 multiplies by a normalizer tensor of the hidden dtype (candle's affine casts
        // the factor to the tensor's dtype too).
        let mut x = match s.embed_scale {
            Some(k) => (x * k)?,
            None => x.clone(),
        };
        // a decode step on a GPU may fold each RMSNorm into the matmul that reads it
        // (`GRIFFON_NORM_GEMV=1`, [`Self::norms_fold`]): a sublayer's output not yet added to the
        // stream waits in `pending` for the next pre-norm's kernel
        let fold = self.norms_fold(&x);
        let mut pending: Option<(Tensor, Option<&RmsNorm>)> = None;
        for (i, l) in self.layers.iter().enumerate() {
            let folded = match (fold, l.qkv.fused_weight()) {
                (true, Some(w)) => {
                    let (y, h) = fold_norm(&x, pending.take(), &l.input_ln, w)?;
                    if let Some(h) = h {
                        x = h;
                    }
                    Some(y)
                }
                _ => None,
            };
            let hn = if folded.is_some() { None } else { Some(l.input_ln.forward(&x)?) };
            let joined = match (folded, &hn) {
                (Some(y), _) => Some(y),
                (None, Some(hn)) if crate::fused::applies(hn) => l.qkv.joined(hn)?,
                _ => None,
            };
            let (q, k, v) = match joined {
                // one kernel splits the heads and applies the rotary embedding (GPU, bf16 / f16)
                Some(y) => crate::fused::qkv_rope(&y, &rope.0, &rope.1, nh, nkv)?,
                None => {
                    let Some(hn) = &hn else {
                        return invalid("decoder layer: no normalized input for the q/k/v projections");
                    };
                    let qkv = l.qkv.forward(hn)?;
                    let q = qkv[0].reshape((b, t, nh, hd))?.transpose(1, 2)?;
                    let k = qkv[1].reshape((b, t, nkv, hd))?.transpose(1, 2)?;
                    let v = qkv[2].reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
                    (self.rope.apply_tables(&q, &rope)?, self.rope.apply_tables(&k, &rope)?, v)
                }
            };
            if tap == Some(i) {
                tapped = Some(Tapped { q: q.clone(), k: k.clone(), v: v.clone(), input: x.clone() });
            }
            let (k, v) = cache.append(i, k, v)?;
            let mask = match (&window_mask, l.sliding) {
                (Some(m), true) => m,
                _ => &full_mask,
            };
            let a = decode_linear(fold, &l.o, &attention(&q, &k, &v, mask, &s.attn)?)?;
            if let (true, Some(w)) = (fold, l.gate_up.fused_weight()) {
                let (gu, h) = fold_norm(&x, Some((a, l.post_attn_ln.as_ref())), &l.pre_ff_ln, w)?;
                let Some(h) = h else {
                    return invalid("decoder layer: the folded norm returned no residual stream");
                };
                x = h;
                let f = decode_linear(fold, &l.down, &crate::fused::gated_act(&gu, s.act)?)?;
                pending = Some((f, l.post_ff_ln.as_ref()));
                continue;
            }
            x = match &l.post_attn_ln {
                Some(n) => n.forward_add(&a, &x)?,
                None => (x + a)?,
            };
            let f = l.down.forward(&l.gate_up.gated(&l.pre_ff_ln.forward(&x)?, s.act)?)?;
            x = match &l.post_ff_ln {
                Some(n) => n.forward_add(&f, &x)?,
                None => (x + f)?,
            };
        }
        if let Some((f, post)) = pending {
            x = match post {
                Some(n) => n.forward_add(&f, &x)?,
                None => (x + f)?,
            };
        }
        Ok((x, tapped))
    }

    /// Attention heads, key/value heads and head size.
    pub fn heads(&self) -> (usize, usize, usize) {
        (self.spec.heads, self.spec.kv_heads, self.spec.head_dim)
    }

    /// The sliding window of layer `i` (keys at `pos - key_pos >= window` masked), `None` for a
    /// full-attention layer or one past the end.
    pub fn layer_window(&self, i: usize) -> Option<usize> {
        self.layers.get(i).filter(|l| l.sliding).and(self.spec.sliding_window)
    }

    /// The attention scores' scale and soft-capping.
    pub fn attn_spec(&self) -> &AttnSpec {
        &self.spec.attn
    }

    /// Whether [`Self::hidden`] folds every RMSNorm into the matmul after it
    /// ([`crate::fused::norm_matmul`]): where [`crate::fused::norm_matmul_applies`] to the
    /// embeddings (a decode step of at most 4 rows on a GPU, `GRIFFON_NORM_GEMV=1`) and every
    /// layer has bias-free fused q/k/v and gate/up projections (an equal pair) and fused norms.
    fn norms_fold(&self, x: &Tensor) -> bool {
        let fused = |n: &RmsNorm| n.fused_scale().is_some();
        crate::fused::norm_matmul_applies(x)
            && self.layers.iter().all(|l| {
                l.qkv.fused_weight().is_some()
                    && matches!(&l.gate_up, Projections::Fused { linear, sizes }
                        if linear.bias.is_none() && sizes.len() == 2 && sizes[0] == sizes[1])
                    && fused(&l.input_ln)
                    && fused(&l.pre_ff_ln)
                    && l.post_attn_ln.as_ref().is_none_or(fused)
                    && l.post_ff_ln.as_ref().is_none_or(fused)
            })
    }

    /// Final norm, lm_head (and soft-capping) of hidden states [.., H] -> logits [.., V]; the
    /// trainer applies it to the supervised rows only (a 256k vocabulary over every position of
    /// a 1429-token sequence would be 1.4 GB of logits).
    pub fn head(&self, h: &Tensor) -> Result<Tensor> {
        let logits = match self.norm.fused_scale() {
            // a decode step on a GPU: the final norm folded into the lm_head's matmul
            Some(scale) if self.lm_head.bias.is_none() && crate::fused::norm_matmul_applies(h) => {
                crate::fused::norm_matmul(h, crate::fused::NormInput::Stream, Some(scale), &self.lm_head.weight)?.0
            }
            _ => self.lm_head.forward(&self.norm.forward(h)?)?,
        };
        Ok(match self.spec.final_softcap {
            Some(cap) => crate::nn::softcap(&logits, cap)?,
            None => logits,
        })
    }
}

#[cfg(test)]
mod kv_tests {
    use super::*;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// Appends past the growth step equal one concatenation; a clone keeps its contents while
    /// the original goes on, and appends to the clone do not reach the original.
    #[test]
    fn buffered_appends_equal_concatenation() {
        let dev = Device::Cpu;
        let rnd = |t: usize| Tensor::randn(0f32, 1.0, (1, 2, t, 4), &dev).unwrap();
        let mut c = KvCache::new(1);
        let mut all_k = vec![rnd(7)];
        let mut all_v = vec![rnd(7)];
        c.append(0, all_k[0].clone(), all_v[0].clone()).unwrap();
        let mut snapshot = None;
        for step in 0..KV_GROWTH + 20 {
            let (k, v) = (rnd(1), rnd(1));
            all_k.push(k.clone());
            all_v.push(v.clone());
            let (ck, cv) = c.append(0, k, v).unwrap();
            if step == 3 {
                snapshot = Some((c.clone(), ck.clone()));
            }
            assert_eq!(ck.dim(2).unwrap(), 8 + step);
            if step % 97 == 0 || step == KV_GROWTH + 19 {
                assert_eq!(max_diff(&ck, &Tensor::cat(&all_k, 2).unwrap()), 0.0, "step {step}");
                assert_eq!(max_diff(&cv, &Tensor::cat(&all_v, 2).unwrap()), 0.0, "step {step}");
            }
        }
        assert_eq!(c.len(), 7 + KV_GROWTH + 20);
        let (mut copy, seen) = snapshot.unwrap();
        assert_eq!(copy.len(), 11);
        let (k, _) = copy.append(0, rnd(1), rnd(1)).unwrap();
        assert_eq!(max_diff(&k.narrow(2, 0, 11).unwrap(), &seen), 0.0, "the clone kept its positions");
        let (ck, _) = c.append(0, rnd(1), rnd(1)).unwrap();
        assert_eq!(
            max_diff(&ck.narrow(2, 0, 12).unwrap(), &Tensor::cat(&all_k[..6], 2).unwrap()),
            0.0,
            "the original is untouched by the clone"
        );
    }
}

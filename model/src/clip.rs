//! CLIP ViT vision tower with Hugging Face `CLIPVisionModel` semantics
//! (source: transformers `models/clip/modeling_clip.py`):
//! patch conv (no bias) + class embedding + position embedding -> pre_layrnorm -> encoder layers
//! (LN, attention, residual, LN, MLP, residual). `hidden_states[0]` is the pre_layrnorm output
//! and `hidden_states[i]` the output of layer i, so select_layer -2 is the penultimate layer.
//! post_layernorm is never used by Griffon.
//!
//! The tower runs at any square size that is a multiple of the patch size: when the size differs
//! from the stored position grid, the patch rows of the table are resized with the chosen
//! [`Interp`] (CLS row kept).

use crate::error::{invalid, Result};
use crate::loader::Scope;
use crate::nn::{Act, LayerNorm, Linear};
use crate::resample::Interp;
use crate::vision::{
    check_loaded, embed_patches, full_attention, resize_position_table, resolve_select_layer, select_feature,
};
use candle_core::Tensor;

#[derive(Debug, Clone, PartialEq)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: Act,
}

impl ClipVisionConfig {
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// The q / k / v projections: separate (training: each weight is its own variable) or fused into
/// one [3C, C] projection with the query scale folded in (inference: one matmul and one layout
/// copy instead of three of each).
enum Qkv {
    Separate { q: Linear, k: Linear, v: Linear },
    Fused(Linear),
}

struct Attention {
    qkv: Qkv,
    out: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(q: Linear, k: Linear, v: Linear, out: Linear, heads: usize, head_dim: usize) -> Result<Self> {
        let qkv = if crate::nn::differentiable() {
            Qkv::Separate { q, k, v }
        } else {
            let scale = (head_dim as f64).powf(-0.5);
            let weight = Tensor::cat(&[&(&q.weight * scale)?, &k.weight, &v.weight], 0)?;
            let bias = match (&q.bias, &k.bias, &v.bias) {
                (Some(qb), Some(kb), Some(vb)) => Some(Tensor::cat(&[&(qb * scale)?, kb, vb], 0)?),
                _ => return invalid("CLIP attention projections must all have biases"),
            };
            Qkv::Fused(Linear { weight, bias })
        };
        Ok(Self { qkv, out, heads, head_dim })
    }

    /// `residual + attention(x)`: the output projection's bias and the residual add in one
    /// step ([`Linear::forward_residual`]).
    fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let (h, d) = (self.heads, self.head_dim);
        let (q, k, v) = match &self.qkv {
            Qkv::Separate { q, k, v } => {
                let split =
                    |t: Tensor| -> Result<Tensor> { Ok(t.reshape((b, n, h, d))?.transpose(1, 2)?.contiguous()?) };
                let scale = (d as f64).powf(-0.5);
                (split((q.forward(x)? * scale)?)?, split(k.forward(x)?)?, split(v.forward(x)?)?)
            }
            Qkv::Fused(l) => {
                // [B, N, 3C] -> [3, B, H, N, d] in one copy (the CPU kernel reads the views)
                let t = l.forward(x)?.reshape((b, n, 3, h, d))?.permute((2, 0, 3, 1, 4))?;
                // the CPU kernel and the GPU's fused one read the strided views directly
                // (`Tensor::get` would copy each: it reshapes the narrowed view)
                let part = |t: &Tensor, i: usize| -> Result<Tensor> { Ok(t.narrow(0, i, 1)?.squeeze(0)?) };
                let views = crate::nn::cpu_kernels_apply(&t) || crate::flash::applies(&part(&t, 0)?);
                let t = if views { t } else { t.contiguous()? };
                (part(&t, 0)?, part(&t, 1)?, part(&t, 2)?)
            }
        };
        let y = full_attention(&q, &k, &v)?;
        debug_assert_eq!(y.dims(), &[b, n, c]);
        self.out.forward_residual(&y, residual)
    }
}

struct Layer {
    ln1: LayerNorm,
    attn: Attention,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Act,
}

impl Layer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.attn.forward_residual(&self.ln1.forward(x)?, x)?;
        self.fc2.forward_residual(&self.fc1.forward_act(&self.ln2.forward(&h)?, Some(self.act))?, &h)
    }
}

pub struct ClipVision {
    pub cfg: ClipVisionConfig,
    /// Patch conv weight flattened to [hidden, 3 * p * p].
    patch_w: Tensor,
    class_emb: Tensor,
    /// Position table for the run size, [1 + g*g, hidden].
    pos: Tensor,
    pre_ln: LayerNorm,
    layers: Vec<Layer>,
    /// Square input size this tower was built for.
    pub run_size: usize,
}

impl ClipVision {
    /// `s` points at `...vision_model`. `run_size` is the square input size; the position table
    /// is resized with `interp` when it differs from the stored grid.
    pub fn load(s: &Scope, cfg: &ClipVisionConfig, run_size: usize, interp: Interp) -> Result<Self> {
        Self::load_upto(s, cfg, run_size, interp, cfg.num_hidden_layers)
    }

    /// As [`ClipVision::load`] with only the first `n_layers` encoder layers (the layers after the
    /// selected hidden state are never run, so they are not loaded and cannot become trainable).
    pub fn load_upto(
        s: &Scope,
        cfg: &ClipVisionConfig,
        run_size: usize,
        interp: Interp,
        n_layers: usize,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let p = cfg.patch_size;
        if cfg.num_attention_heads == 0 || h % cfg.num_attention_heads != 0 {
            return invalid(format!(
                "vision tower {}: hidden_size {h} is not divisible by num_attention_heads {}",
                s.prefix, cfg.num_attention_heads
            ));
        }
        if p == 0 {
            return invalid(format!("vision tower {}: patch_size is 0", s.prefix));
        }
        if run_size == 0 || run_size % p != 0 {
            return invalid(format!("image size {run_size} is not a positive multiple of the patch size {p}"));
        }
        // the config must describe every stored layer, also those after the selected one
        let layers = format!("{}.", s.pp("encoder.layers").prefix);
        s.ck.check_no_layer_beyond(&layers, cfg.num_hidden_layers, "the CLIP tower")?;
        let e = s.pp("embeddings");
        let patch_w = e.get("patch_embedding.weight", &[h, 3, p, p])?.reshape((h, 3 * p * p))?;
        let class_emb = e.get("class_embedding", &[h])?;
        let stored_rows =
            e.shape("position_embedding.weight").map(|s| s.first().copied().unwrap_or(0)).ok_or_else(|| {
                crate::Error::Invalid(format!("tensor {} is missing", e.name("position_embedding.weight")))
            })?;
        let g_stored = cfg.grid();
        if stored_rows != g_stored * g_stored + 1 {
            return invalid(format!(
                "tensor {} has {stored_rows} rows but the config's image_size {} / patch_size {p} implies {}",
                e.name("position_embedding.weight"),
                cfg.image_size,
                g_stored * g_stored + 1
            ));
        }
        let table = e.get("position_embedding.weight", &[stored_rows, h])?;
        let g_run = run_size / p;
        let pos = if g_run == g_stored {
            table
        } else {
            // computed in f32, stored back in the weights' dtype
            resize_position_table(&table, g_run, interp)?.to_dtype(table.dtype())?
        };
        let pre_ln = LayerNorm::load(&s.pp("pre_layrnorm"), h, cfg.layer_norm_eps)?;
        if n_layers > cfg.num_hidden_layers {
            return invalid(format!(
                "vision tower {} has {} layers, {n_layers} requested",
                s.prefix, cfg.num_hidden_layers
            ));
        }
        let mut layers = Vec::with_capacity(n_layers);
        for i in 0..n_layers {
            let l = s.pp(format!("encoder.layers.{i}"));
            let a = l.pp("self_attn");
            layers.push(Layer {
                ln1: LayerNorm::load(&l.pp("layer_norm1"), h, cfg.layer_norm_eps)?,
                attn: Attention::new(
                    Linear::load(&a.pp("q_proj"), h, h, true)?,
                    Linear::load(&a.pp("k_proj"), h, h, true)?,
                    Linear::load(&a.pp("v_proj"), h, h, true)?,
                    Linear::load(&a.pp("out_proj"), h, h, true)?,
                    cfg.num_attention_heads,
                    cfg.head_dim(),
                )?,
                ln2: LayerNorm::load(&l.pp("layer_norm2"), h, cfg.layer_norm_eps)?,
                fc1: Linear::load(&l.pp("mlp.fc1"), h, cfg.intermediate_size, true)?,
                fc2: Linear::load(&l.pp("mlp.fc2"), cfg.intermediate_size, h, true)?,
                act: cfg.hidden_act,
            });
        }
        Ok(Self { cfg: cfg.clone(), patch_w, class_emb, pos, pre_ln, layers, run_size })
    }

    /// Number of patch tokens at the run size.
    pub fn num_patches(&self) -> usize {
        let g = self.run_size / self.cfg.patch_size;
        g * g
    }

    /// Embeddings + pre_layrnorm (= `hidden_states[0]`) for pixels [B, 3, S, S].
    fn embed(&self, pixels: &Tensor) -> Result<Tensor> {
        let x =
            embed_patches(pixels, self.run_size, self.cfg.patch_size, &self.patch_w, None, &self.class_emb, &self.pos)?;
        self.pre_ln.forward(&x)
    }

    /// Resolves an HF `hidden_states` index (negative counts from the end; there are L+1 states)
    /// against the config's layer count, and checks the layer was loaded.
    pub fn resolve_layer(&self, select_layer: i64) -> Result<usize> {
        let idx = resolve_select_layer(select_layer, self.cfg.num_hidden_layers)?;
        check_loaded(idx, self.layers.len(), "layers")
    }

    /// `hidden_states[0..=upto]` (only the layers needed are run).
    pub fn hidden_states(&self, pixels: &Tensor, upto: usize) -> Result<Vec<Tensor>> {
        check_loaded(upto, self.layers.len(), "layers")?;
        let mut states = vec![self.embed(pixels)?];
        for layer in self.layers.iter().take(upto) {
            let next = layer.forward(states.last().expect("non-empty"))?;
            states.push(next);
        }
        Ok(states)
    }

    /// `hidden_states[select_layer]`, computing no layer beyond it.
    pub fn hidden_state(&self, pixels: &Tensor, select_layer: i64) -> Result<Tensor> {
        let idx = self.resolve_layer(select_layer)?;
        let mut x = self.embed(pixels)?;
        for layer in self.layers.iter().take(idx) {
            x = layer.forward(&x)?;
        }
        Ok(x)
    }

    /// Griffon's main-image features: `hidden_states[select_layer]` without the CLS row
    /// (`select_feature = patch`) or with it (`cls_patch`).
    pub fn patch_features(&self, pixels: &Tensor, select_layer: i64, keep_cls: bool) -> Result<Tensor> {
        select_feature(self.hidden_state(pixels, select_layer)?, keep_cls)
    }

    /// The CLS row of `hidden_states[select_layer]` (the region encoder uses the last layer).
    pub fn cls_feature(&self, pixels: &Tensor, select_layer: i64) -> Result<Tensor> {
        Ok(self.hidden_state(pixels, select_layer)?.narrow(1, 0, 1)?.squeeze(1)?)
    }
}

/// Reads an HF CLIP config (a `CLIPVisionConfig`, or a `CLIPConfig` with `vision_config`).
pub fn parse_clip_config(v: &serde_json::Value, file: &std::path::Path) -> Result<ClipVisionConfig> {
    let v = v.get("vision_config").unwrap_or(v);
    let j = crate::config::Json::new(v, file);
    let act_name = j.opt_str("hidden_act")?.unwrap_or_else(|| "quick_gelu".to_string());
    let hidden_act = Act::from_hf(&act_name)
        .ok_or_else(|| crate::Error::Invalid(format!("{}: unsupported hidden_act `{act_name}`", file.display())))?;
    let cfg = ClipVisionConfig {
        hidden_size: j.req_usize("hidden_size")?,
        intermediate_size: j.req_usize("intermediate_size")?,
        num_hidden_layers: j.req_usize("num_hidden_layers")?,
        num_attention_heads: j.req_usize("num_attention_heads")?,
        image_size: j.req_usize("image_size")?,
        patch_size: j.req_usize("patch_size")?,
        layer_norm_eps: j.opt_f64("layer_norm_eps")?.unwrap_or(1e-5),
        hidden_act,
    };
    if cfg.patch_size == 0 || cfg.image_size % cfg.patch_size != 0 {
        return invalid(format!(
            "{}: image_size {} is not a multiple of patch_size {}",
            file.display(),
            cfg.image_size,
            cfg.patch_size
        ));
    }
    if let Some(n) = j.opt_usize("num_channels")? {
        if n != 3 {
            return invalid(format!("{}: num_channels {n} is not supported (RGB only)", file.display()));
        }
    }
    Ok(cfg)
}

/// Infers a CLIP tower config from the tensors under `s` (`...vision_model`), assuming CLIP's
/// head_dim of 64, LayerNorm eps 1e-5 and quick_gelu.
pub fn infer_clip_config(s: &Scope) -> Result<ClipVisionConfig> {
    let e = s.pp("embeddings");
    let pw = e.shape("patch_embedding.weight").ok_or_else(|| {
        crate::Error::Invalid(format!(
            "cannot infer the vision tower: tensor {} is missing",
            e.name("patch_embedding.weight")
        ))
    })?;
    let pos = e.shape("position_embedding.weight").ok_or_else(|| {
        crate::Error::Invalid(format!(
            "cannot infer the vision tower: tensor {} is missing",
            e.name("position_embedding.weight")
        ))
    })?;
    let fc1 = s.pp("encoder.layers.0.mlp.fc1").shape("weight").ok_or_else(|| {
        crate::Error::Invalid(format!(
            "cannot infer the vision tower: tensor {}.encoder.layers.0.mlp.fc1.weight is missing",
            s.prefix
        ))
    })?;
    if pw.len() != 4 || pos.len() != 2 || fc1.len() != 2 {
        return invalid(format!("cannot infer the vision tower under {}: unexpected tensor ranks", s.prefix));
    }
    let hidden = pw[0];
    let patch = pw[2];
    if patch == 0 || pw[3] != patch {
        return invalid(format!("cannot infer the vision tower under {}: patch kernel of shape {pw:?}", s.prefix));
    }
    let g = ((pos[0].saturating_sub(1)) as f64).sqrt().round() as usize;
    if g * g + 1 != pos[0] {
        return invalid(format!(
            "cannot infer the vision tower: {} has {} rows, not 1 + a square",
            e.name("position_embedding.weight"),
            pos[0]
        ));
    }
    if hidden % 64 != 0 {
        return invalid(format!(
            "cannot infer the vision tower: hidden size {hidden} is not a multiple of CLIP's head_dim 64; give a config"
        ));
    }
    let layers = s.ck.count_indexed(&format!("{}.encoder.layers.", s.prefix));
    Ok(ClipVisionConfig {
        hidden_size: hidden,
        intermediate_size: fc1[0],
        num_hidden_layers: layers,
        num_attention_heads: hidden / 64,
        image_size: g * patch,
        patch_size: patch,
        layer_norm_eps: 1e-5,
        hidden_act: Act::QuickGelu,
    })
}

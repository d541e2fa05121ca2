//! EVA02-CLIP vision tower (the Griffon v2 paper's encoder, EVA02-CLIP-L/14), matching timm's
//! `Eva` as configured by `eva02_large_patch14_clip_336` (source: timm 1.0.31
//! `timm/models/eva.py` and `timm/layers/pos_embed_sincos.py`; golden fixtures from
//! `tools/reference/make_eva02_fixtures.py`):
//!
//! * patch conv (with bias) -> `[cls_token, patches] + pos_embed` (the table has a CLS row) ->
//!   `norm_pre` (Identity for EVA02-CLIP; loaded when the checkpoint has one) = `hidden_states[0]`.
//! * blocks (pre-norm): `x + attn(norm1(x))`, `x + mlp(norm2(x))` (optional layer-scale
//!   `gamma_1`/`gamma_2`).
//!   - attention: q/k/v projections, either separate (`q_proj` with bias, `k_proj` without,
//!     `v_proj` with bias) or fused `qkv.weight` + `q_bias` + `v_bias` (k bias fixed at zero);
//!     2-D rotary embedding on the patch tokens only (CLS untouched), softmax(q k^T / sqrt(d)) v,
//!     optional inner LayerNorm on the attention output (`scale_attn_inner`), then `proj`.
//!   - MLP: SwiGLU `fc2(norm(silu(fc1_g x) * fc1_x x))`, the `norm` being the `scale_mlp`
//!     inner LayerNorm (optional).
//! * `hidden_states[i]` is the output of block i (the final `norm` is never applied), as the CLIP
//!   tower; select_layer counts the same way.
//!
//! Rotary embedding (timm `RotaryEmbeddingCat` with `in_pixels=False`, `rope_type='cat'`,
//! `rotate_half=False`, grid_indexing 'ij', grid_offset 0, temperature 10000):
//! * bands: `1 / T^(k / (d/4))`, k = 0..d/4 (`freq_bands(d/4, step=1)`), d = head_dim.
//! * grid: for a g_h x g_w patch grid, row coordinate `i / g_h * ref_h`, column `j / g_w * ref_w`
//!   (`_build_grid`, 'index' grid rescaled to `ref_feat_shape`; without a reference grid the raw
//!   index). Token n = i * g_w + j (row-major).
//! * angles per token: `[y * bands, x * bands]` (d/2 values), each repeated twice in place
//!   (interleaved layout `[a0, a0, a1, a1, ...]`, `_rope_layout(rotate_half=False)`);
//!   `out = x * cos + rot(x) * sin` with `rot([x0, x1, x2, x3, ..]) = [-x1, x0, -x3, x2, ..]`
//!   (`apply_rot_embed(half=False)`).
//! * at another input size timm rebuilds the rope for the new grid with the same
//!   `ref_feat_shape` (`set_input_size` -> `update_feat_shape`, and the same in the
//!   `dynamic_img_size` path via `get_embed(shape)`), so coordinates always span [0, ref); the
//!   position table's patch rows are resized with the chosen [`Interp`] (timm's
//!   `resample_abs_pos_embed` default is bicubic with antialias = [`Interp::BicubicAa`]), CLS
//!   row kept. This is the same grid rule as EVA-CLIP's `VisionRotaryEmbeddingFast`
//!   (`t = arange(ft_seq_len) / ft_seq_len * pt_seq_len`).
//!
//! Checkpoint layouts ([`Eva02Layout`]): timm state-dict names (also open_clip's
//! `visual.trunk.` prefix), and the original EVA-CLIP names under `visual.` (`q_bias`/`v_bias`,
//! `attn.inner_attn_ln`, `mlp.w1/w2/ffn_ln/w3`; the renames are those of timm's
//! `checkpoint_filter_fn` in eva.py). The rope buffers EVA-CLIP stores (`rope.freqs_cos`, ...)
//! are recomputed, as timm does. Any tensor under the tower that maps to nothing is an error
//! naming it.

use crate::error::{invalid, Result};
use crate::loader::Scope;
use crate::nn::{LayerNorm, Linear};
use crate::resample::Interp;
use crate::vision::{
    check_loaded, embed_patches, full_attention, resize_position_table, resolve_select_layer, select_feature,
};
use candle_core::{DType, Device, Tensor, D};

#[derive(Debug, Clone, PartialEq)]
pub struct Eva02Config {
    pub hidden_size: usize,
    /// SwiGLU hidden width (`int(embed_dim * mlp_ratio)`, 2730 for L/14).
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Size of the stored position table's grid times the patch size.
    pub image_size: usize,
    pub patch_size: usize,
    pub layer_norm_eps: f64,
    /// timm `ref_feat_shape` / EVA-CLIP `pt_hw_seq_len` (16 for the EVA02-CLIP models); `None`
    /// uses raw grid indices.
    pub rope_ref_grid: Option<usize>,
    pub rope_temperature: f64,
}

impl Eva02Config {
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
    /// `eva02_large_patch14_clip_336`.
    pub fn large_patch14_336() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 2730,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            image_size: 336,
            patch_size: 14,
            layer_norm_eps: 1e-6,
            rope_ref_grid: Some(16),
            rope_temperature: 10000.0,
        }
    }
}

/// Tensor naming of an EVA02 checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eva02Layout {
    /// timm state dict (`blocks.{i}.mlp.fc1_g`, `attn.norm`, `q_proj.bias`, ...).
    Timm,
    /// EVA-CLIP (`blocks.{i}.mlp.w1`, `mlp.ffn_ln`, `attn.inner_attn_ln`, `attn.q_bias`, ...).
    EvaClip,
}

impl Eva02Layout {
    /// Stored leaf name of a timm-named block leaf.
    fn block_leaf(self, timm: &str) -> String {
        match self {
            Eva02Layout::Timm => timm.to_string(),
            Eva02Layout::EvaClip => {
                // Inverse of the renames in timm's checkpoint_filter_fn (eva.py).
                let pairs = [
                    ("attn.q_proj.bias", "attn.q_bias"),
                    ("attn.v_proj.bias", "attn.v_bias"),
                    ("attn.norm.", "attn.inner_attn_ln."),
                    ("mlp.fc1_g.", "mlp.w1."),
                    ("mlp.fc1_x.", "mlp.w2."),
                    ("mlp.norm.", "mlp.ffn_ln."),
                    ("mlp.fc2.", "mlp.w3."),
                ];
                for (t, e) in pairs {
                    if let Some(rest) = timm.strip_prefix(t) {
                        return format!("{e}{rest}");
                    }
                }
                timm.to_string()
            }
        }
    }

    /// Every block leaf this layout may store.
    fn known_block_leaves(self) -> Vec<String> {
        let mut v = Vec::new();
        for wb in ["weight", "bias"] {
            for m in ["norm1", "norm2", "attn.proj", "attn.norm", "mlp.fc1_g", "mlp.fc1_x", "mlp.norm", "mlp.fc2"] {
                v.push(self.block_leaf(&format!("{m}.{wb}")));
            }
        }
        for t in [
            "attn.q_proj.weight",
            "attn.q_proj.bias",
            "attn.k_proj.weight",
            "attn.v_proj.weight",
            "attn.v_proj.bias",
            "gamma_1",
            "gamma_2",
        ] {
            v.push(self.block_leaf(t));
        }
        // Fused qkv, same names in both layouts (EVA-CLIP without subln).
        v.extend(["attn.qkv.weight", "attn.q_bias", "attn.v_bias"].map(String::from));
        // EVA-CLIP's rope module is shared by every block's attention and its buffers are
        // persistent, so its checkpoints repeat them per block: recomputed, as the root's are.
        v.extend(["attn.rope.freqs_cos", "attn.rope.freqs_sin"].map(String::from));
        // The timm separate layout may also carry q_bias/v_bias names after a partial rename.
        v.sort();
        v.dedup();
        v
    }
}

/// Finds the tower root under `s` and its layout: `visual.trunk.` (open_clip, timm names),
/// `visual.` (EVA-CLIP) or `s` itself (timm names, or EVA-CLIP names without the prefix).
pub fn resolve_eva02_scope<'a>(s: &Scope<'a>) -> Result<(Scope<'a>, Eva02Layout)> {
    let root = if s.has("visual.trunk.pos_embed") {
        s.pp("visual.trunk")
    } else if s.has("visual.pos_embed") {
        s.pp("visual")
    } else {
        s.clone()
    };
    let layout = if root.has("blocks.0.mlp.fc1_g.weight") {
        Eva02Layout::Timm
    } else if root.has("blocks.0.mlp.w1.weight") {
        Eva02Layout::EvaClip
    } else {
        return invalid(format!(
            "no EVA02 tower under `{}`: expected tensor {} (timm layout) or {} (EVA-CLIP layout)",
            s.prefix,
            root.name("blocks.0.mlp.fc1_g.weight"),
            root.name("blocks.0.mlp.w1.weight")
        ));
    };
    Ok((root, layout))
}

/// Checks that every tensor under the tower root maps to a known EVA02 tensor.
fn check_names(root: &Scope, layout: Eva02Layout, depth: usize) -> Result<()> {
    let prefix = if root.prefix.is_empty() { String::new() } else { format!("{}.", root.prefix) };
    let leaves = layout.known_block_leaves();
    for name in root.ck.names_with_prefix(&prefix) {
        let rest = &name[prefix.len()..];
        let ok = match rest {
            "cls_token" | "pos_embed" | "patch_embed.proj.weight" | "patch_embed.proj.bias" => true,
            // EVA-CLIP's rope buffers: recomputed (timm's checkpoint_filter_fn drops them too).
            "rope.freqs_cos" | "rope.freqs_sin" => true,
            _ => {
                if let Some(b) = rest.strip_prefix("blocks.") {
                    match b.split_once('.') {
                        Some((i, leaf)) => {
                            i.parse::<usize>().is_ok_and(|i| i < depth) && leaves.iter().any(|l| l == leaf)
                        }
                        None => false,
                    }
                } else if let Some((m, leaf)) = rest.split_once('.') {
                    // Unused heads and norms after the blocks; `norm_pre` is loaded.
                    matches!(m, "norm" | "fc_norm" | "norm_pre" | "head") && matches!(leaf, "weight" | "bias")
                } else {
                    false
                }
            }
        };
        if !ok {
            return invalid(format!(
                "tensor {name} does not map to any EVA02 tower tensor ({layout:?} layout, {depth} blocks); \
                 unsupported variant or foreign tensor under `{}`",
                root.prefix
            ));
        }
    }
    Ok(())
}

enum Qkv {
    Separate {
        q: Linear,
        k: Linear,
        v: Linear,
    },
    /// `qkv.weight` [3h, h] with the bias `[q_bias, 0, v_bias]`.
    Fused {
        w: Linear,
    },
}

struct Block {
    norm1: LayerNorm,
    qkv: Qkv,
    attn_norm: Option<LayerNorm>,
    proj: Linear,
    gamma1: Option<Tensor>,
    norm2: LayerNorm,
    fc1_g: Linear,
    fc1_x: Linear,
    mlp_norm: Option<LayerNorm>,
    fc2: Linear,
    gamma2: Option<Tensor>,
    heads: usize,
    head_dim: usize,
}

/// Interleaved-pair rotation `[-x1, x0, -x3, x2, ...]` over the last dim (timm `rot`).
fn rot(x: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let d = *dims.last().expect("rank >= 1");
    let mut pairs = dims.clone();
    pairs.pop();
    pairs.push(d / 2);
    pairs.push(2);
    let p = x.reshape(pairs)?;
    let x0 = p.narrow(D::Minus1, 0, 1)?;
    let x1 = p.narrow(D::Minus1, 1, 1)?;
    Ok(Tensor::cat(&[&x1.neg()?, &x0], D::Minus1)?.reshape(dims)?)
}

/// Applies the rotary embedding to the patch tokens (all but the first) of [B, H, N, d]. The
/// rotation runs in f32 (the tables are f32) and is cast back once, as timm's
/// `apply_rot_embed` does with its f32 sin/cos.
fn apply_rope(x: &Tensor, sin: &Tensor, cos: &Tensor) -> Result<Tensor> {
    let n = x.dim(2)?;
    let dt = x.dtype();
    let cls = x.narrow(2, 0, 1)?;
    let p = x.narrow(2, 1, n - 1)?.to_dtype(DType::F32)?;
    let r = (p.broadcast_mul(cos)? + rot(&p)?.broadcast_mul(sin)?)?.to_dtype(dt)?;
    Ok(Tensor::cat(&[&cls, &r], 2)?)
}

impl Block {
    fn forward(&self, x: &Tensor, sin: &Tensor, cos: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let h = self.norm1.forward(x)?;
        let (q, k, v) = match &self.qkv {
            Qkv::Separate { q, k, v } => (q.forward(&h)?, k.forward(&h)?, v.forward(&h)?),
            Qkv::Fused { w } => {
                let y = w.forward(&h)?;
                (y.narrow(2, 0, c)?, y.narrow(2, c, c)?, y.narrow(2, 2 * c, c)?)
            }
        };
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, n, self.heads, self.head_dim))?.transpose(1, 2)?.contiguous()?)
        };
        let q = apply_rope(&split(q)?, sin, cos)?;
        let k = apply_rope(&split(k)?, sin, cos)?;
        let v = split(v)?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let mut y = full_attention(&(q * scale)?, &k, &v)?;
        if let Some(nm) = &self.attn_norm {
            y = nm.forward(&y)?;
        }
        let mut y = self.proj.forward(&y)?;
        if let Some(g) = &self.gamma1 {
            y = y.broadcast_mul(g)?;
        }
        let x = (x + y)?;
        let h = self.norm2.forward(&x)?;
        let mut m = (crate::nn::Act::Silu.apply(&self.fc1_g.forward(&h)?)? * self.fc1_x.forward(&h)?)?;
        if let Some(nm) = &self.mlp_norm {
            m = nm.forward(&m)?;
        }
        let mut m = self.fc2.forward(&m)?;
        if let Some(g) = &self.gamma2 {
            m = m.broadcast_mul(g)?;
        }
        Ok((x + m)?)
    }
}

/// timm `RotaryEmbeddingCat` sin / cos tables for a g x g grid, each [g*g, head_dim], f32
/// arithmetic in the order timm uses (see the module docs).
pub fn rope_tables(head_dim: usize, grid: usize, ref_grid: Option<usize>, temperature: f64) -> (Vec<f32>, Vec<f32>) {
    let nb = head_dim / 4;
    let bands: Vec<f32> = (0..nb)
        .map(|k| {
            let e = k as f32 / nb as f32;
            1.0f32 / (temperature as f32).powf(e)
        })
        .collect();
    let coord = |i: usize| -> f32 {
        match ref_grid {
            Some(r) => i as f32 / grid as f32 * r as f32,
            None => i as f32,
        }
    };
    let n = grid * grid;
    let mut sin = vec![0f32; n * head_dim];
    let mut cos = vec![0f32; n * head_dim];
    for i in 0..grid {
        for j in 0..grid {
            let t = i * grid + j;
            let (y, x) = (coord(i), coord(j));
            for (a, pos) in [y, x].into_iter().enumerate() {
                for (k, b) in bands.iter().enumerate() {
                    let ang = pos * b;
                    let m = a * nb + k; // index in the d/2 angle vector
                    for r in 0..2 {
                        sin[t * head_dim + 2 * m + r] = ang.sin();
                        cos[t * head_dim + 2 * m + r] = ang.cos();
                    }
                }
            }
        }
    }
    (sin, cos)
}

pub struct Eva02Vision {
    pub cfg: Eva02Config,
    pub layout: Eva02Layout,
    /// Patch conv weight flattened to [hidden, 3 * p * p].
    patch_w: Tensor,
    patch_b: Option<Tensor>,
    cls: Tensor,
    /// Position table for the run size, [1 + g*g, hidden].
    pos: Tensor,
    norm_pre: Option<LayerNorm>,
    blocks: Vec<Block>,
    /// Rotary tables for the run grid, [g*g, head_dim], always f32.
    rope_sin: Tensor,
    rope_cos: Tensor,
    /// Square input size this tower was built for.
    pub run_size: usize,
}

impl Eva02Vision {
    /// `s` points at the tower (timm names), or at a model holding `visual.` (EVA-CLIP) or
    /// `visual.trunk.` (open_clip).
    pub fn load(s: &Scope, cfg: &Eva02Config, run_size: usize, interp: Interp) -> Result<Self> {
        Self::load_upto(s, cfg, run_size, interp, cfg.num_hidden_layers)
    }

    /// As [`Eva02Vision::load`] with only the first `n_layers` blocks.
    pub fn load_upto(s: &Scope, cfg: &Eva02Config, run_size: usize, interp: Interp, n_layers: usize) -> Result<Self> {
        let (root, layout) = resolve_eva02_scope(s)?;
        let h = cfg.hidden_size;
        let p = cfg.patch_size;
        if cfg.num_attention_heads == 0
            || !h.is_multiple_of(cfg.num_attention_heads)
            || !cfg.head_dim().is_multiple_of(4)
        {
            return invalid(format!(
                "EVA02 tower {}: hidden_size {h} / num_attention_heads {} must give a head_dim divisible by 4",
                root.prefix, cfg.num_attention_heads
            ));
        }
        if p == 0 || run_size == 0 || !run_size.is_multiple_of(p) {
            return invalid(format!("image size {run_size} is not a positive multiple of the patch size {p}"));
        }
        if n_layers > cfg.num_hidden_layers {
            return invalid(format!(
                "EVA02 tower {} has {} blocks, {n_layers} requested",
                root.prefix, cfg.num_hidden_layers
            ));
        }
        let stored_depth = root.ck.count_indexed(&format!(
            "{}blocks.",
            if root.prefix.is_empty() { String::new() } else { format!("{}.", root.prefix) }
        ));
        if stored_depth != cfg.num_hidden_layers {
            return invalid(format!(
                "EVA02 tower {}: the checkpoint has {stored_depth} blocks, the config says {}",
                root.prefix, cfg.num_hidden_layers
            ));
        }
        check_names(&root, layout, cfg.num_hidden_layers)?;

        let patch_w = root.get("patch_embed.proj.weight", &[h, 3, p, p])?.reshape((h, 3 * p * p))?;
        let patch_b =
            if root.has("patch_embed.proj.bias") { Some(root.get("patch_embed.proj.bias", &[h])?) } else { None };
        let cls = root.get("cls_token", &[1, 1, h])?.reshape((1, h))?;
        let g_stored = cfg.grid();
        let rows = g_stored * g_stored + 1;
        let table = match root.shape("pos_embed") {
            Some([1, r, _]) if *r == rows => root.get("pos_embed", &[1, rows, h])?.reshape((rows, h))?,
            Some([r, _]) if *r == rows => root.get("pos_embed", &[rows, h])?,
            Some(other) => {
                return invalid(format!(
                    "tensor {} has shape {other:?} but the config's image_size {} / patch_size {p} implies [1, {rows}, {h}]",
                    root.name("pos_embed"),
                    cfg.image_size
                ))
            }
            None => return invalid(format!("tensor {} is missing", root.name("pos_embed"))),
        };
        let g_run = run_size / p;
        let pos = if g_run == g_stored {
            table
        } else {
            resize_position_table(&table, g_run, interp)?.to_dtype(table.dtype())?
        };
        let eps = cfg.layer_norm_eps;
        let norm_pre =
            if root.has("norm_pre.weight") { Some(LayerNorm::load(&root.pp("norm_pre"), h, eps)?) } else { None };

        let inter = cfg.intermediate_size;
        let mut blocks = Vec::with_capacity(n_layers);
        for i in 0..n_layers {
            let bs = root.pp(format!("blocks.{i}"));
            let leaf = |t: &str| layout.block_leaf(t);
            let sub = |t: &str| bs.pp(leaf(&format!("{t}.")).trim_end_matches('.'));
            let opt_ln = |t: &str| -> Result<Option<LayerNorm>> {
                let sc = sub(t);
                if sc.has("weight") {
                    Ok(Some(LayerNorm::load(&sc, h, eps)?))
                } else {
                    Ok(None)
                }
            };
            let qkv = if bs.has("attn.qkv.weight") {
                let w = bs.get("attn.qkv.weight", &[3 * h, h])?;
                let qb = bs.get("attn.q_bias", &[h])?;
                let vb = bs.get("attn.v_bias", &[h])?;
                let kb = qb.zeros_like()?;
                Qkv::Fused { w: Linear { weight: w, bias: Some(Tensor::cat(&[&qb, &kb, &vb], 0)?) } }
            } else {
                let lin = |name: &str, bias_leaf: Option<&str>| -> Result<Linear> {
                    let weight = bs.get(&format!("attn.{name}.weight"), &[h, h])?;
                    let bias = match bias_leaf {
                        Some(bl) => Some(bs.get(&leaf(bl), &[h])?),
                        None => None,
                    };
                    Ok(Linear { weight, bias })
                };
                Qkv::Separate {
                    q: lin("q_proj", Some("attn.q_proj.bias"))?,
                    k: lin("k_proj", None)?,
                    v: lin("v_proj", Some("attn.v_proj.bias"))?,
                }
            };
            let gamma = |t: &str| -> Result<Option<Tensor>> {
                if bs.has(t) {
                    Ok(Some(bs.get(t, &[h])?))
                } else {
                    Ok(None)
                }
            };
            blocks.push(Block {
                norm1: LayerNorm::load(&bs.pp("norm1"), h, eps)?,
                qkv,
                attn_norm: opt_ln("attn.norm")?,
                proj: Linear::load(&bs.pp("attn.proj"), h, h, true)?,
                gamma1: gamma("gamma_1")?,
                norm2: LayerNorm::load(&bs.pp("norm2"), h, eps)?,
                fc1_g: Linear::load(&sub("mlp.fc1_g"), h, inter, true)?,
                fc1_x: Linear::load(&sub("mlp.fc1_x"), h, inter, true)?,
                mlp_norm: if sub("mlp.norm").has("weight") {
                    Some(LayerNorm::load(&sub("mlp.norm"), inter, eps)?)
                } else {
                    None
                },
                fc2: Linear::load(&sub("mlp.fc2"), inter, h, true)?,
                gamma2: gamma("gamma_2")?,
                heads: cfg.num_attention_heads,
                head_dim: cfg.head_dim(),
            });
        }
        let dev: Device = patch_w.device().clone();
        let hd = cfg.head_dim();
        let (sin, cos) = rope_tables(hd, g_run, cfg.rope_ref_grid, cfg.rope_temperature);
        let rope_sin = Tensor::from_vec(sin, (g_run * g_run, hd), &dev)?;
        let rope_cos = Tensor::from_vec(cos, (g_run * g_run, hd), &dev)?;
        Ok(Self {
            cfg: cfg.clone(),
            layout,
            patch_w,
            patch_b,
            cls,
            pos,
            norm_pre,
            blocks,
            rope_sin,
            rope_cos,
            run_size,
        })
    }

    /// Number of patch tokens at the run size.
    pub fn num_patches(&self) -> usize {
        let g = self.run_size / self.cfg.patch_size;
        g * g
    }

    pub fn run_size(&self) -> usize {
        self.run_size
    }

    pub fn cfg(&self) -> &Eva02Config {
        &self.cfg
    }

    /// `hidden_states[0]`: patch embedding, CLS, position table, `norm_pre` when present.
    fn embed(&self, pixels: &Tensor) -> Result<Tensor> {
        let x = embed_patches(
            pixels,
            self.run_size,
            self.cfg.patch_size,
            &self.patch_w,
            self.patch_b.as_ref(),
            &self.cls,
            &self.pos,
        )?;
        match &self.norm_pre {
            Some(n) => n.forward(&x),
            None => Ok(x),
        }
    }

    /// Resolves an HF-style `hidden_states` index (negative from the end; L+1 states).
    pub fn resolve_layer(&self, select_layer: i64) -> Result<usize> {
        let idx = resolve_select_layer(select_layer, self.cfg.num_hidden_layers)?;
        check_loaded(idx, self.blocks.len(), "blocks")
    }

    /// `hidden_states[0..=upto]`.
    pub fn hidden_states(&self, pixels: &Tensor, upto: usize) -> Result<Vec<Tensor>> {
        check_loaded(upto, self.blocks.len(), "blocks")?;
        let mut states = vec![self.embed(pixels)?];
        for blk in self.blocks.iter().take(upto) {
            let next = blk.forward(states.last().expect("non-empty"), &self.rope_sin, &self.rope_cos)?;
            states.push(next);
        }
        Ok(states)
    }

    /// `hidden_states[select_layer]`, computing no block beyond it.
    pub fn hidden_state(&self, pixels: &Tensor, select_layer: i64) -> Result<Tensor> {
        let idx = self.resolve_layer(select_layer)?;
        let mut x = self.embed(pixels)?;
        for blk in self.blocks.iter().take(idx) {
            x = blk.forward(&x, &self.rope_sin, &self.rope_cos)?;
        }
        Ok(x)
    }

    /// `hidden_states[select_layer]` without the CLS row, or with it (`keep_cls`).
    pub fn patch_features(&self, pixels: &Tensor, select_layer: i64, keep_cls: bool) -> Result<Tensor> {
        select_feature(self.hidden_state(pixels, select_layer)?, keep_cls)
    }

    /// The CLS row of `hidden_states[select_layer]`.
    pub fn cls_feature(&self, pixels: &Tensor, select_layer: i64) -> Result<Tensor> {
        Ok(self.hidden_state(pixels, select_layer)?.narrow(1, 0, 1)?.squeeze(1)?)
    }
}

/// Infers the config from the tensors (after [`resolve_eva02_scope`]), assuming EVA02's head_dim
/// 64, LayerNorm eps 1e-6, rope temperature 10000 and the EVA02-CLIP rope reference grid 16
/// (`pt_hw_seq_len` / `ref_feat_shape` of every released EVA02-CLIP model).
pub fn infer_eva02_config(s: &Scope) -> Result<Eva02Config> {
    let (root, layout) = resolve_eva02_scope(s)?;
    let missing = |n: String| crate::Error::Invalid(format!("cannot infer the EVA02 tower: tensor {n} is missing"));
    let pw = root.shape("patch_embed.proj.weight").ok_or_else(|| missing(root.name("patch_embed.proj.weight")))?;
    let pos = root.shape("pos_embed").ok_or_else(|| missing(root.name("pos_embed")))?;
    let g1 = format!("blocks.0.{}", layout.block_leaf("mlp.fc1_g.weight"));
    let fc1 = root.shape(&g1).ok_or_else(|| missing(root.name(&g1)))?;
    if pw.len() != 4 || fc1.len() != 2 || pos.len() < 2 {
        return invalid(format!("cannot infer the EVA02 tower under {}: unexpected tensor ranks", root.prefix));
    }
    let hidden = pw[0];
    let patch = pw[2];
    let rows = pos[pos.len() - 2];
    let g = ((rows.saturating_sub(1)) as f64).sqrt().round() as usize;
    if g * g + 1 != rows {
        return invalid(format!(
            "cannot infer the EVA02 tower: {} has {rows} rows, not 1 + a square",
            root.name("pos_embed")
        ));
    }
    if hidden % 64 != 0 {
        return invalid(format!(
            "cannot infer the EVA02 tower: hidden size {hidden} is not a multiple of head_dim 64; give a config"
        ));
    }
    let prefix = if root.prefix.is_empty() { String::new() } else { format!("{}.", root.prefix) };
    Ok(Eva02Config {
        hidden_size: hidden,
        intermediate_size: fc1[0],
        num_hidden_layers: root.ck.count_indexed(&format!("{prefix}blocks.")),
        num_attention_heads: hidden / 64,
        image_size: g * patch,
        patch_size: patch,
        layer_norm_eps: 1e-6,
        rope_ref_grid: Some(16),
        rope_temperature: 10000.0,
    })
}

/// True when a tower config describes an EVA model: `model_type`, `architecture(s)`,
/// `model_name`, `timm_model_name` or `eva_model_name` (EVA-CLIP's own `EVA02-L-14-336.json`
/// names it only there, in `vision_cfg`), also inside `vision_cfg` / `vision_config`, mentions `eva`.
pub fn is_eva_config(v: &serde_json::Value) -> bool {
    let mentions = |v: &serde_json::Value| -> bool {
        ["model_type", "architecture", "architectures", "model_name", "timm_model_name", "eva_model_name"].iter().any(
            |k| match v.get(*k) {
                Some(serde_json::Value::String(s)) => s.to_ascii_lowercase().contains("eva"),
                Some(serde_json::Value::Array(a)) => {
                    a.iter().any(|x| x.as_str().is_some_and(|s| s.to_ascii_lowercase().contains("eva")))
                }
                _ => false,
            },
        )
    };
    mentions(v) || ["vision_cfg", "vision_config"].iter().any(|k| v.get(*k).is_some_and(mentions))
}

/// Reads an EVA02 tower config. Accepted forms (keys are read from `vision_cfg` /
/// `vision_config` when present, else from `model_args` then the top level):
/// * a timm name (`architecture`, `model_name` or `timm_model_name`) of
///   `eva02_large_patch14_clip_{224,336}` gives the preset, which explicit keys override;
/// * HF-style keys `hidden_size`, `intermediate_size`, `num_hidden_layers`,
///   `num_attention_heads`, `image_size`, `patch_size`, `layer_norm_eps`, `rope_ref_grid`;
/// * timm model args `embed_dim`, `depth`, `num_heads`, `img_size`, `patch_size`, `mlp_ratio`,
///   `ref_feat_shape`;
/// * EVA-CLIP `vision_cfg`: `width`, `layers`, `head_width`, `image_size`, `patch_size`,
///   `mlp_ratio`, `pt_hw_seq_len`.
pub fn parse_eva02_config(v: &serde_json::Value, file: &std::path::Path) -> Result<Eva02Config> {
    // A CLIP model config's top level describes the joint model (its `embed_dim` is the
    // projection width), so with a `vision_cfg` / `vision_config` only that object is read.
    let nested = ["vision_cfg", "vision_config"].iter().find_map(|k| v.get(*k).filter(|o| o.is_object()));
    let objs: Vec<&serde_json::Value> = match nested {
        Some(o) => vec![o],
        None => v.get("model_args").filter(|o| o.is_object()).into_iter().chain([v]).collect(),
    };
    let find = |keys: &[&str]| -> Option<&serde_json::Value> {
        objs.iter().find_map(|o| keys.iter().find_map(|k| o.get(*k).filter(|x| !x.is_null())))
    };
    let bad = |k: &str, x: &serde_json::Value| {
        crate::Error::Invalid(format!("{}: key `{k}` has an unusable value {x}", file.display()))
    };
    let uint = |keys: &[&str]| -> Result<Option<usize>> {
        match find(keys) {
            None => Ok(None),
            Some(x) => match x {
                // timm tuples (img_size, ref_feat_shape) must be square.
                serde_json::Value::Array(a) if a.len() == 2 && a[0] == a[1] => {
                    a[0].as_u64().map(|n| Some(n as usize)).ok_or_else(|| bad(keys[0], x))
                }
                _ => x.as_u64().map(|n| Some(n as usize)).ok_or_else(|| bad(keys[0], x)),
            },
        }
    };
    let name = find(&["timm_model_name", "architecture", "model_name"])
        .or_else(|| v.get("architecture"))
        .and_then(|x| x.as_str())
        .unwrap_or("");
    let mut cfg = if name.starts_with("eva02_large_patch14_clip_336") {
        Some(Eva02Config::large_patch14_336())
    } else if name.starts_with("eva02_large_patch14_clip_224") {
        Some(Eva02Config { image_size: 224, ..Eva02Config::large_patch14_336() })
    } else {
        None
    };
    let hidden = uint(&["hidden_size", "embed_dim", "width"])?;
    let layers = uint(&["num_hidden_layers", "depth", "layers"])?;
    let heads = match uint(&["num_attention_heads", "num_heads"])? {
        Some(h) => Some(h),
        None => match (uint(&["head_width"])?, hidden) {
            (Some(w), Some(h)) if w > 0 => Some(h / w),
            _ => None,
        },
    };
    let image = uint(&["image_size", "img_size"])?;
    let patch = uint(&["patch_size"])?;
    let mlp_ratio = find(&["mlp_ratio"]).map(|x| x.as_f64().ok_or_else(|| bad("mlp_ratio", x))).transpose()?;
    let inter = uint(&["intermediate_size"])?;
    let eps = find(&["layer_norm_eps"]).map(|x| x.as_f64().ok_or_else(|| bad("layer_norm_eps", x))).transpose()?;
    let rope_ref = uint(&["rope_ref_grid", "ref_feat_shape", "pt_hw_seq_len"])?;
    let temp = find(&["rope_temperature", "rope_theta"])
        .map(|x| x.as_f64().ok_or_else(|| bad("rope_temperature", x)))
        .transpose()?;
    if cfg.is_none() {
        let missing =
            |k: &str| crate::Error::Invalid(format!("{}: EVA02 tower config: missing key `{k}`", file.display()));
        let h = hidden.ok_or_else(|| missing("hidden_size / embed_dim / width"))?;
        cfg = Some(Eva02Config {
            hidden_size: h,
            intermediate_size: 0,
            num_hidden_layers: layers.ok_or_else(|| missing("num_hidden_layers / depth / layers"))?,
            num_attention_heads: heads.ok_or_else(|| missing("num_attention_heads / num_heads / head_width"))?,
            image_size: image.ok_or_else(|| missing("image_size / img_size"))?,
            patch_size: patch.ok_or_else(|| missing("patch_size"))?,
            layer_norm_eps: 1e-6,
            rope_ref_grid: Some(16),
            rope_temperature: 10000.0,
        });
        if inter.is_none() && mlp_ratio.is_none() {
            return Err(missing("intermediate_size / mlp_ratio"));
        }
    }
    let mut c = cfg.expect("set above");
    if let Some(h) = hidden {
        c.hidden_size = h;
    }
    if let Some(l) = layers {
        c.num_hidden_layers = l;
    }
    if let Some(h) = heads {
        c.num_attention_heads = h;
    }
    if let Some(s) = image {
        c.image_size = s;
    }
    if let Some(p) = patch {
        c.patch_size = p;
    }
    if let Some(i) = inter {
        c.intermediate_size = i;
    } else if let Some(r) = mlp_ratio {
        // timm: hidden_features = int(dim * mlp_ratio)
        c.intermediate_size = (c.hidden_size as f64 * r) as usize;
    }
    if let Some(e) = eps {
        c.layer_norm_eps = e;
    }
    if let Some(r) = rope_ref {
        c.rope_ref_grid = Some(r);
    }
    if let Some(t) = temp {
        c.rope_temperature = t;
    }
    if c.patch_size == 0 || c.image_size % c.patch_size != 0 {
        return invalid(format!(
            "{}: image_size {} is not a multiple of patch_size {}",
            file.display(),
            c.image_size,
            c.patch_size
        ));
    }
    if c.num_attention_heads == 0 || c.hidden_size % c.num_attention_heads != 0 {
        return invalid(format!(
            "{}: hidden size {} is not divisible by {} heads",
            file.display(),
            c.hidden_size,
            c.num_attention_heads
        ));
    }
    Ok(c)
}

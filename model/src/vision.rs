//! What every vision tower shares (CLIP in [`crate::clip`], EVA02 in [`crate::eva02`]): the
//! unmasked attention over patch tokens, the patch embedding, HF's `hidden_states` indexing
//! (`select_layer`, negative from the end; `hidden_states[0]` is the embedding output) and
//! Griffon's `mm_vision_select_feature` (source: transformers `models/clip/modeling_clip.py`,
//! LLaVA's `clip_encoder.py` `feature_select`).

use crate::error::{invalid, Result};
use crate::nn::attention_probs;
use crate::resample::{resize_grid, Interp};
use candle_core::{DType, Tensor};

/// Query rows per attention block: at 1022 px (5330 tokens, 16 heads) a full score matrix would
/// take 1.8 GB in f32; blocks of 1024 query rows bound it to a fifth, with identical results
/// (softmax is per row).
pub const ATTN_QUERY_CHUNK: usize = 1024;

/// Unmasked attention softmax(q k^T) v over [B, H, N, d] tensors (q already scaled), returned
/// with the heads merged: [B, N, H * d]. f32 on the CPU runs the fused kernel of
/// [`crate::cpu_kernels`] (q, k, v may be strided views), bf16 / f16 inference on a GPU the one of
/// [`crate::flash`]; elsewhere [`blocked_attention`].
pub fn full_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    if crate::nn::differentiable() && crate::attn_grad::enabled() {
        let spec = crate::attn_grad::GradSpec { scale: 1.0, softcap: None, causal: None };
        return crate::attn_grad::attention(q, k, v, &spec);
    }
    if crate::nn::cpu_kernels_apply(q) {
        let a = crate::cpu_kernels::Attention { scale: 1.0, softcap: None, causal: None };
        return Ok(q.apply_op3_no_bwd(k, v, &a)?);
    }
    let (b, h, n, d) = q.dims4()?;
    if crate::flash::applies(q) {
        let spec = crate::flash::FlashSpec { scale: 1.0, softcap: None, causal: None };
        return Ok(crate::flash::attention(q, k, v, &spec)?.reshape((b, n, h * d))?);
    }
    Ok(blocked_attention(&q.contiguous()?, &k.contiguous()?, &v.contiguous()?, ATTN_QUERY_CHUNK)?
        .transpose(1, 2)?
        .reshape((b, n, h * d))?)
}

/// Unmasked attention softmax(q k^T) v over [B, H, N, d] tensors (q already scaled) -> [B, H, N,
/// d], computed in blocks of `chunk` query rows.
pub fn blocked_attention(q: &Tensor, k: &Tensor, v: &Tensor, chunk: usize) -> Result<Tensor> {
    let n = q.dim(2)?;
    let kt = k.t()?;
    if n <= chunk {
        return Ok(attention_probs(&q.matmul(&kt)?, v.dtype())?.matmul(v)?);
    }
    let mut outs = Vec::with_capacity(n.div_ceil(chunk));
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let qc = q.narrow(2, start, len)?;
        outs.push(attention_probs(&qc.matmul(&kt)?, v.dtype())?.matmul(v)?);
        start += len;
    }
    Ok(Tensor::cat(&outs, 2)?)
}

/// `hidden_states[0]` before the tower's first norm, shared by every vision tower: pixels
/// [B, 3, S, S] (S the run size) cut into non-overlapping `p` x `p` patches embedded by one
/// matmul with the conv weight `patch_w` [D, 3 * p * p] (and its bias when the tower has one),
/// the CLS row in front, the position table [1 + (S / p)^2, D] added: [B, 1 + (S / p)^2, D].
pub fn embed_patches(
    pixels: &Tensor,
    run_size: usize,
    p: usize,
    patch_w: &Tensor,
    patch_b: Option<&Tensor>,
    cls: &Tensor,
    pos: &Tensor,
) -> Result<Tensor> {
    if p == 0 || run_size % p != 0 {
        return invalid(format!("image size {run_size} is not a positive multiple of the patch size {p}"));
    }
    let (b, c, hh, ww) = pixels.dims4()?;
    if c != 3 || hh != run_size || ww != run_size {
        return invalid(format!(
            "vision tower expects pixels of shape [B, 3, {run_size}, {run_size}], got {:?}",
            pixels.dims()
        ));
    }
    let g = hh / p;
    let d = patch_w.dim(0)?;
    // [B, 3, g, p, g, p] -> [B, g, g, 3, p, p]: the conv's input order of each patch
    let patches = pixels
        .to_dtype(patch_w.dtype())?
        .reshape((b, 3, g, p, g, p))?
        .permute((0, 2, 4, 1, 3, 5))?
        .reshape((b * g * g, 3 * p * p))?;
    let mut x = patches.matmul(&patch_w.t()?)?;
    if let Some(bias) = patch_b {
        x = x.broadcast_add(bias)?;
    }
    let x = x.reshape((b, g * g, d))?;
    let cls = cls.reshape((1, 1, d))?.repeat((b, 1, 1))?;
    Ok(Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&pos.unsqueeze(0)?)?)
}

/// A position table (`[..., 1 + g*g, h]`, CLS row first) with its patch grid resized to
/// `grid_out` x `grid_out` by `interp` ([`resize_grid`]: PyTorch's `F.interpolate` on the grid),
/// the CLS row kept: how the released `clip-vit-large-patch14-336_to_1022` tower was made
/// (shared/GRIFFON_FORMAT.md, "Architecture" 3). Same leading dims as `t`, in f32 whatever its
/// dtype: computed in f32 as the engine's load-time `--image-size` resize, a table rounded to a
/// bf16 source's dtype would answer differently from it (so `assemble --image-size` and
/// [`crate::assemble::resize_main_tower`] store it in f32).
pub fn resize_position_table(t: &Tensor, grid_out: usize, interp: Interp) -> Result<Tensor> {
    let (g, h) = table_grid(t, "the position table")?;
    let (dims, rows) = (t.dims().to_vec(), g * g + 1);
    if grid_out == 0 {
        return invalid("the resized grid must have at least one patch".to_string());
    }
    let flat = t.to_dtype(DType::F32)?.reshape((rows, h))?;
    let cls = flat.narrow(0, 0, 1)?;
    let grid: Vec<f32> = flat.narrow(0, 1, g * g)?.flatten_all()?.to_vec1()?;
    let resized = Tensor::from_vec(resize_grid(&grid, g, h, grid_out, interp), (grid_out * grid_out, h), t.device())?;
    let mut shape = dims;
    let last = shape.len() - 2;
    shape[last] = grid_out * grid_out + 1;
    Ok(Tensor::cat(&[&cls, &resized], 0)?.reshape(shape)?)
}

/// The patch grid side `g` and the width of a position table `[..., 1 + g*g, hidden]` (leading
/// dims of 1) named `what`.
pub fn table_grid(t: &Tensor, what: &str) -> Result<(usize, usize)> {
    let dims = t.dims();
    if dims.len() < 2 || dims[..dims.len() - 2].iter().any(|&d| d != 1) {
        return invalid(format!("{what} must be [1 + g*g, hidden] (leading dims of 1), got {dims:?}"));
    }
    let (rows, h) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    let g = ((rows.max(1) - 1) as f64).sqrt().round() as usize;
    if g == 0 || g * g + 1 != rows {
        return invalid(format!("{what} has {rows} rows, not 1 + a square grid"));
    }
    Ok((g, h))
}

/// Checks that hidden state `idx` can be computed from the `loaded` layers (a tower may be loaded
/// only up to the layer Griffon selects): state `idx` needs layers `0..idx`.
pub fn check_loaded(idx: usize, loaded: usize, what: &str) -> Result<usize> {
    if idx > loaded {
        return invalid(format!("hidden state {idx} needs {what} that were not loaded ({loaded} loaded)"));
    }
    Ok(idx)
}

/// `mm_vision_select_feature`: the whole hidden state (`cls_patch`) or its patch rows (`patch`,
/// the CLS row at index 0 dropped). Shared by every vision tower.
pub fn select_feature(x: Tensor, keep_cls: bool) -> Result<Tensor> {
    if keep_cls {
        Ok(x)
    } else {
        let n = x.dim(1)?;
        if n == 0 {
            return invalid("a hidden state with no rows has no CLS row to drop");
        }
        Ok(x.narrow(1, 1, n - 1)?)
    }
}

/// HF `hidden_states[select_layer]` index for a tower of `layers` layers (L + 1 states).
pub fn resolve_select_layer(select_layer: i64, layers: usize) -> Result<usize> {
    let n = layers as i64 + 1;
    let idx = if select_layer < 0 { n + select_layer } else { select_layer };
    if idx < 0 || idx >= n {
        return invalid(format!(
            "select layer {select_layer} is out of range for a tower with {layers} layers ({n} hidden states)"
        ));
    }
    Ok(idx as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn chunked_attention_equals_full() {
        let d = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (1, 2, 37, 8), &d).unwrap();
        let k = Tensor::randn(0f32, 1.0, (1, 2, 37, 8), &d).unwrap();
        let v = Tensor::randn(0f32, 1.0, (1, 2, 37, 8), &d).unwrap();
        let full = blocked_attention(&q, &k, &v, 1000).unwrap();
        let chunked = blocked_attention(&q, &k, &v, 10).unwrap();
        let diff = |a: &Tensor, b: &Tensor| -> f32 {
            (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
        };
        assert!(diff(&full, &chunked) < 1e-6, "{}", diff(&full, &chunked));
        // the fused CPU kernel (heads merged) computes the same
        let fused = full_attention(&q, &k, &v).unwrap();
        let merged = full.transpose(1, 2).unwrap().reshape((1, 37, 16)).unwrap();
        assert!(diff(&fused, &merged) < 1e-6, "{}", diff(&fused, &merged));
    }

    #[test]
    fn embed_patches_refuses_bad_sizes() {
        let d = Device::Cpu;
        let (p, g, dim) = (4usize, 2usize, 5usize);
        let w = Tensor::randn(0f32, 1.0, (dim, 3 * p * p), &d).unwrap();
        let cls = Tensor::zeros(dim, DType::F32, &d).unwrap();
        let pos = Tensor::zeros((1 + g * g, dim), DType::F32, &d).unwrap();
        let ok = Tensor::zeros((2, 3, g * p, g * p), DType::F32, &d).unwrap();
        let x = embed_patches(&ok, g * p, p, &w, None, &cls, &pos).unwrap();
        assert_eq!(x.dims(), &[2, 1 + g * g, dim]);
        // a run size the patch does not divide, a zero patch, pixels of another size
        let odd = Tensor::zeros((1, 3, 10, 10), DType::F32, &d).unwrap();
        let e = embed_patches(&odd, 10, p, &w, None, &cls, &pos).unwrap_err().to_string();
        assert!(e.contains("not a positive multiple of the patch size 4"), "{e}");
        let e = embed_patches(&ok, g * p, 0, &w, None, &cls, &pos).unwrap_err().to_string();
        assert!(e.contains("patch size 0"), "{e}");
        let e = embed_patches(&odd, g * p, p, &w, None, &cls, &pos).unwrap_err().to_string();
        assert!(e.contains("[B, 3, 8, 8]"), "{e}");
        // no rows: no CLS row to drop
        let empty = Tensor::zeros((1, 0, dim), DType::F32, &d).unwrap();
        assert!(select_feature(empty, false).is_err());
    }
}

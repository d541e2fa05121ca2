//! Vision-to-LLM projectors (source: jefferyZhan/Griffon
//! `griffon/model/multimodal_projector/builder.py`):
//! * `conv_reduce`: tokens row-major -> (C, g, g) -> Conv2d(C -> H, k3, s2, p1, bias) -> exact GELU
//!   -> (g' * g', H) row-major -> Linear(H -> H). 73x73 patches become 37x37 = 1369 tokens.
//! * `conv_reduce_wo_pad`: the same with padding 0.
//! * `linear`, `mlpNx_gelu` (Linear, then (GELU, Linear) x (N - 1)), `identity`.

use crate::config::ProjectorType;
use crate::error::{invalid, Result};
use crate::loader::Scope;
use crate::nn::{Act, Linear};
use candle_core::{DType, Tensor};

pub enum Projector {
    /// `weight` [out, C, 3, 3] as stored; `packed` the same as [out, 9 C] in the patch order of
    /// [`conv3x3_stride2`], made once at load outside training (in training the weight is a
    /// variable the optimizer updates in place, so it is rearranged at each call).
    ConvReduce {
        weight: Tensor,
        bias: Tensor,
        pad: usize,
        linear: Linear,
        packed: Option<Tensor>,
    },
    Mlp(Vec<Linear>),
    Identity,
}

impl Projector {
    /// `s` points at `model.mm_projector`.
    pub fn load(s: &Scope, kind: &ProjectorType, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(match kind {
            ProjectorType::ConvReduce { pad } => {
                let weight = s.get("conv.weight", &[out_dim, in_dim, 3, 3])?;
                let packed = if crate::nn::differentiable() { None } else { Some(pack_conv_weight(&weight)?) };
                Projector::ConvReduce {
                    weight,
                    bias: s.get("conv.bias", &[out_dim])?,
                    pad: *pad,
                    linear: Linear::load(&s.pp("linear"), out_dim, out_dim, true)?,
                    packed,
                }
            }
            ProjectorType::Linear => {
                // LLaVA's `linear` projector is a bare nn.Linear stored as `model.mm_projector.{weight,bias}`.
                Projector::Mlp(vec![Linear::load(s, in_dim, out_dim, true)?])
            }
            ProjectorType::Mlp(n) => {
                let mut layers = vec![Linear::load(&s.pp(0), in_dim, out_dim, true)?];
                for i in 1..*n {
                    layers.push(Linear::load(&s.pp(2 * i), out_dim, out_dim, true)?);
                }
                Projector::Mlp(layers)
            }
            ProjectorType::Identity => {
                if in_dim != out_dim {
                    return invalid(format!(
                        "identity projector needs the vision width ({in_dim}) to equal the LLM width ({out_dim})"
                    ));
                }
                Projector::Identity
            }
        })
    }

    /// Number of output tokens for `n` input tokens.
    pub fn out_tokens(&self, n: usize) -> usize {
        match self {
            Projector::ConvReduce { pad, .. } => {
                // a 3x3 stride-2 conv; a grid under 3 - 2 * pad gives nothing (forward rejects it)
                let g = (n as f64).sqrt() as usize;
                match (g + 2 * pad).checked_sub(3) {
                    Some(k) => (k / 2 + 1).pow(2),
                    None => 0,
                }
            }
            _ => n,
        }
    }

    /// x: [B, N, C] -> [B, N', H].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Projector::ConvReduce { weight, bias, pad, linear, packed } => {
                let n = x.dim(1)?;
                let g = (n as f64).sqrt().round() as usize;
                if g * g != n {
                    return invalid(format!("conv projector: {n} tokens do not form a square grid"));
                }
                if g + 2 * pad < 3 {
                    return invalid(format!("conv projector: a {g}x{g} grid is too small for a 3x3 kernel"));
                }
                let w = match packed {
                    Some(w) => w.clone(),
                    None => pack_conv_weight(weight)?,
                };
                let tokens = conv3x3_stride2(x, g, &w, bias, *pad)?;
                let tokens = Act::GeluErf.apply(&tokens)?;
                linear.forward(&tokens)
            }
            Projector::Mlp(layers) => {
                let mut y = layers[0].forward(x)?;
                for l in &layers[1..] {
                    y = l.forward(&Act::GeluErf.apply(&y)?)?;
                }
                Ok(y)
            }
            Projector::Identity => Ok(x.clone()),
        }
    }
}

/// A Conv2d weight [out, C, 3, 3] as the [out, 9 C] matrix of [`conv3x3_stride2`].
fn pack_conv_weight(w: &Tensor) -> Result<Tensor> {
    let (out, c, _, _) = w.dims4()?;
    Ok(w.permute((0, 2, 3, 1))?.reshape((out, 9 * c))?)
}

/// The 3x3, stride-2 convolution of a [B, g*g, C] token grid (row-major, channels last) ->
/// [B, o*o, out] tokens, as one matmul over gathered patches: `nn.Conv2d(C, out, 3, stride=2,
/// padding=pad)` of the reference applied to the grid, without its NCHW transposes. Patch
/// columns are ordered (kh, kw, c); the weight [out, C, 3, 3] is permuted to match. The same
/// arithmetic on every device, and on the CPU faster than candle's conv2d plus the layout
/// transposes around it (docs/PERFORMANCE.md).
fn conv3x3_stride2(x: &Tensor, g: usize, w: &Tensor, bias: &Tensor, pad: usize) -> Result<Tensor> {
    let (b, _, c) = x.dims3()?;
    let out = w.dim(0)?;
    let o = (g + 2 * pad - 3) / 2 + 1;
    // pad to an even side of at least g + 2 * pad, so rows and columns split into (pairs, parity)
    let side = (g + 2 * pad).next_multiple_of(2);
    let grid = x.reshape((b, g, g, c))?;
    let grid = grid.pad_with_zeros(1, pad, side - g - pad)?.pad_with_zeros(2, pad, side - g - pad)?;
    let grid = grid.reshape((b, side / 2, 2, side / 2, 2, c))?;
    let mut taps = Vec::with_capacity(9);
    for kh in 0..3 {
        for kw in 0..3 {
            // input row 2i + kh = 2 (i + kh / 2) + kh % 2
            let t = grid.narrow(1, kh / 2, o)?.narrow(2, kh % 2, 1)?.narrow(3, kw / 2, o)?.narrow(4, kw % 2, 1)?;
            taps.push(t.reshape((b, o * o, c))?);
        }
    }
    let patches = Tensor::cat(&taps, 2)?.reshape((b * o * o, 9 * c))?;
    let dt = patches.dtype();
    let y = if matches!(dt, DType::F16 | DType::BF16) && patches.device().is_cpu() {
        // half precision on the CPU: the product in f32 (candle converts per matmul anyway)
        patches.to_dtype(DType::F32)?.matmul(&w.to_dtype(DType::F32)?.t()?)?.to_dtype(dt)?
    } else {
        patches.matmul(&w.t()?)?
    };
    Ok(y.reshape((b, o * o, out))?.broadcast_add(bias)?)
}

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
    ConvReduce { weight: Tensor, bias: Tensor, pad: usize, linear: Linear },
    Mlp(Vec<Linear>),
    Identity,
}

impl Projector {
    /// `s` points at `model.mm_projector`.
    pub fn load(s: &Scope, kind: &ProjectorType, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(match kind {
            ProjectorType::ConvReduce { pad } => Projector::ConvReduce {
                weight: s.get("conv.weight", &[out_dim, in_dim, 3, 3])?,
                bias: s.get("conv.bias", &[out_dim])?,
                pad: *pad,
                linear: Linear::load(&s.pp("linear"), out_dim, out_dim, true)?,
            },
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
                let g = (n as f64).sqrt() as usize;
                let o = (g + 2 * pad - 3) / 2 + 1;
                o * o
            }
            _ => n,
        }
    }

    /// x: [B, N, C] -> [B, N', H].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Projector::ConvReduce { weight, bias, pad, linear } => {
                let (b, n, c) = x.dims3()?;
                let g = (n as f64).sqrt().round() as usize;
                if g * g != n {
                    return invalid(format!("conv projector: {n} tokens do not form a square grid"));
                }
                if g + 2 * pad < 3 {
                    return invalid(format!("conv projector: a {g}x{g} grid is too small for a 3x3 kernel"));
                }
                let grid = x.transpose(1, 2)?.reshape((b, c, g, g))?.contiguous()?;
                // candle 0.11 CPU conv2d fails for half types ("unsupported dtype BF16 for op matmul"):
                // run that case in f32
                let y = if matches!(grid.dtype(), DType::F16 | DType::BF16) && grid.device().is_cpu() {
                    grid.to_dtype(DType::F32)?.conv2d(&weight.to_dtype(DType::F32)?, *pad, 2, 1, 1)?.to_dtype(grid.dtype())?
                } else {
                    grid.conv2d(weight, *pad, 2, 1, 1)?
                };
                let y = y.broadcast_add(&bias.reshape((1, (), 1, 1))?)?;
                let y = Act::GeluErf.apply(&y)?;
                let (_, h, gh, gw) = y.dims4()?;
                let tokens = y.reshape((b, h, gh * gw))?.transpose(1, 2)?.contiguous()?;
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

//! Small layers shared by the towers and the LLMs.
//!
//! candle's fused `layer_norm`, `rms_norm` and `softmax_last_dim` have no backward pass and would
//! silently stop gradients in training. Each helper here has a fused form (inference) and a form
//! built from differentiable primitives; [`set_differentiable`] picks the latter for training.

use crate::error::Result;
use crate::loader::Scope;
use candle_core::{DType, Module, Tensor, D};
use std::sync::atomic::{AtomicBool, Ordering};

static DIFFERENTIABLE: AtomicBool = AtomicBool::new(false);

/// Use only differentiable primitives (slower; needed for backward passes).
pub fn set_differentiable(on: bool) {
    DIFFERENTIABLE.store(on, Ordering::SeqCst);
}

pub fn differentiable() -> bool {
    DIFFERENTIABLE.load(Ordering::Relaxed)
}

#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn load(s: &Scope, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = s.get("weight", &[out_dim, in_dim])?;
        let bias = if bias { Some(s.get("bias", &[out_dim])?) } else { None };
        Ok(Self { weight, bias })
    }

    /// Loads a bias when the checkpoint has one.
    pub fn load_opt_bias(s: &Scope, in_dim: usize, out_dim: usize) -> Result<Self> {
        Self::load(s, in_dim, out_dim, s.has("bias"))
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dim(0).unwrap_or(0)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, None)
    }

    /// `act(x W^T + b)`: on a GPU in bf16 / f16 inference the bias and the activation are one
    /// kernel over the matmul's output ([`crate::fused::bias_act`]), else the composed ops.
    pub fn forward_act(&self, x: &Tensor, act: Option<Act>) -> Result<Tensor> {
        let y = self.matmul(x)?;
        if let (Some(b), true) = (&self.bias, crate::fused::applies(&y)) {
            return crate::fused::bias_act(&y, b, act);
        }
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        match act {
            Some(a) => a.apply(&y),
            None => Ok(y),
        }
    }

    /// `residual + (x W^T + b)`: the bias and the add are one kernel on a GPU in bf16 / f16
    /// inference ([`crate::fused::bias_add`]), else the composed ops.
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let y = self.matmul(x)?;
        if let (Some(b), true) = (&self.bias, crate::fused::applies(&y)) {
            return crate::fused::bias_add(&y, b, residual);
        }
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        Ok((residual + y)?)
    }

    /// `x W^T` without the bias.
    fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        let wt = self.weight.t()?;
        let y = match x.rank() {
            3 => {
                let (b, n, k) = x.dims3()?;
                x.reshape((b * n, k))?.matmul(&wt)?.reshape((b, n, ()))?
            }
            // candle's CUDA matmul takes row-major or transposed operands only: a view with a
            // longer row stride (the CLS rows of a batch of region crops: [B, C] with stride
            // 65 C) is refused there, in the forward and in the backward, so it is copied first
            // (the CPU's gemm reads any strides)
            _ if !x.device().is_cpu() && !x.is_contiguous() => x.contiguous()?.broadcast_matmul(&wt)?,
            _ => x.broadcast_matmul(&wt)?,
        };
        Ok(y)
    }
}

/// The f32 form of a norm's parameter, made once at load when `t` is frozen (not a trainable
/// variable, whose updates must show at the next call). In bf16 on a GPU this saves the
/// conversions at every call: decoding is bound by the number of kernels launched, and Gemma-2
/// runs four norms per layer (docs/PERFORMANCE.md). The values are the ones formed per call.
fn frozen_f32(t: &Tensor, f: impl Fn(Tensor) -> candle_core::Result<Tensor>) -> Result<Option<Tensor>> {
    Ok(if t.is_variable() { None } else { Some(f(t.to_dtype(DType::F32)?)?) })
}

#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
    /// weight and bias in f32 when frozen ([`frozen_f32`])
    affine_f32: Option<(Tensor, Tensor)>,
}

impl LayerNorm {
    pub fn load(s: &Scope, dim: usize, eps: f64) -> Result<Self> {
        let (weight, bias) = (s.get("weight", &[dim])?, s.get("bias", &[dim])?);
        let affine_f32 = match (frozen_f32(&weight, Ok)?, frozen_f32(&bias, Ok)?) {
            (Some(w), Some(b)) => Some((w, b)),
            _ => None,
        };
        Ok(Self { weight, bias, eps, affine_f32 })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let (Some((w, b)), true) = (&self.affine_f32, crate::fused::applies(x)) {
            return crate::fused::norm(x, w, Some(b), self.eps, true);
        }
        let dt = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let (w, b) = match &self.affine_f32 {
            Some((w, b)) => (w.clone(), b.clone()),
            None => (self.weight.to_dtype(DType::F32)?, self.bias.to_dtype(DType::F32)?),
        };
        let y = if differentiable() {
            normalize_with_grad(&xf, self.eps, true)?.broadcast_mul(&w)?.broadcast_add(&b)?
        } else {
            candle_nn::ops::layer_norm(&xf.contiguous()?, &w, &b, self.eps as f32)?
        };
        Ok(y.to_dtype(dt)?)
    }
}

/// The factor an RMSNorm multiplies by: `1 + w` (Gemma) or `w`.
fn rms_scale(w: Tensor, one_plus: bool) -> candle_core::Result<Tensor> {
    if one_plus {
        w + 1.0
    } else {
        Ok(w)
    }
}

/// RMSNorm. Gemma multiplies by `(1 + w)`, Llama by `w`; both normalise in f32.
/// The scale of a trainable `w` is formed at each call, so its updates take effect; a frozen
/// one's once at load ([`frozen_f32`]).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    one_plus: bool,
    eps: f64,
    scale_f32: Option<Tensor>,
}

impl RmsNorm {
    pub fn load(s: &Scope, dim: usize, eps: f64, one_plus: bool) -> Result<Self> {
        let weight = s.get("weight", &[dim])?;
        let scale_f32 = frozen_f32(&weight, |w| rms_scale(w, one_plus))?;
        Ok(Self { weight, one_plus, eps, scale_f32 })
    }

    /// The f32 factor and eps the fused kernels take (inference only: None while training).
    pub fn fused_scale(&self) -> Option<(&Tensor, f64)> {
        self.scale_f32.as_ref().map(|s| (s, self.eps))
    }

    /// `residual + self(x)`: one kernel on a GPU in bf16 / f16 inference
    /// ([`crate::fused::rms_norm_add`]), else the norm and an add.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        if let (Some(scale), true) = (&self.scale_f32, crate::fused::applies(x)) {
            return crate::fused::rms_norm_add(x, scale, self.eps, residual);
        }
        Ok((residual + self.forward(x)?)?)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let (Some(scale), true) = (&self.scale_f32, crate::fused::applies(x)) {
            return crate::fused::norm(x, scale, None, self.eps, false);
        }
        let dt = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        if !self.one_plus && dt != DType::F32 {
            // HF Llama: `weight * hidden_states.to(input_dtype)`, the normalised value rounded to
            // the dtype before the weight multiplies it (Gemma's `(1 + w)` multiplies in f32)
            let n = normalize_with_grad(&xf, self.eps, false)?.to_dtype(dt)?;
            return Ok(n.broadcast_mul(&self.weight.to_dtype(dt)?)?);
        }
        let scale = match &self.scale_f32 {
            Some(s) => s.clone(),
            None => rms_scale(self.weight.to_dtype(DType::F32)?, self.one_plus)?,
        };
        let y = if differentiable() {
            normalize_with_grad(&xf, self.eps, false)?.broadcast_mul(&scale)?
        } else {
            candle_nn::ops::rms_norm(&xf.contiguous()?, &scale, self.eps as f32)?
        };
        Ok(y.to_dtype(dt)?)
    }
}

static LOW_PRECISION_ATTENTION_ON_CPU: AtomicBool = AtomicBool::new(false);

/// Runs the GPU's attention arithmetic on the CPU too (`griffon selfcheck
/// --low-precision-attention`), so its numerics can be checked against the fixtures here.
pub fn set_low_precision_attention_on_cpu(on: bool) {
    LOW_PRECISION_ATTENTION_ON_CPU.store(on, Ordering::SeqCst);
}

/// Whether attention scores of `t`'s dtype stay in that dtype up to the softmax. On a GPU in bf16
/// / f16 inference they do, as in the reference (HF eager attention computes scores, soft-capping
/// and the mask in the model dtype and the softmax with f32 accumulation): converting a ViT-L
/// score matrix at 1022 px (16 x 5330 x 5330 per layer) to f32 and back would add about 5 GB of
/// memory traffic per layer. On the CPU, and in training, scores go to f32 first.
pub fn low_precision_attention(t: &Tensor) -> bool {
    t.dtype() != DType::F32
        && !differentiable()
        && (!t.device().is_cpu() || LOW_PRECISION_ATTENTION_ON_CPU.load(Ordering::Relaxed))
}

/// Attention probabilities in `out` dtype from scores: candle's fused softmax straight on
/// half-precision scores (f32 accumulation inside the kernel) when [`low_precision_attention`],
/// else [`softmax_last`] in f32.
pub fn attention_probs(scores: &Tensor, out: DType) -> Result<Tensor> {
    if low_precision_attention(scores) {
        Ok(candle_nn::ops::softmax_last_dim(&scores.contiguous()?)?.to_dtype(out)?)
    } else {
        Ok(softmax_last(scores)?.to_dtype(out)?)
    }
}

/// Whether `t` takes the CPU kernels of [`crate::cpu_kernels`]: f32 on the CPU, outside training.
pub fn cpu_kernels_apply(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && !differentiable()
}

/// candle's fused softmax over the last dimension of a contiguous f32 tensor, or ours on the CPU
/// (a vectorised exp: candle's CPU kernel calls the scalar `expf` per element).
pub(crate) fn fused_softmax_last(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        Ok(x.apply_op1_no_bwd(&crate::cpu_kernels::SoftmaxLast)?)
    } else {
        Ok(candle_nn::ops::softmax_last_dim(x)?)
    }
}

/// Gemma-2's soft-cap `cap * tanh(x / cap)`, differentiable: our vectorised op on f32 CPU
/// tensors ([`crate::cpu_kernels::Pointwise::SoftCap`], with its backward), candle's composed ops
/// elsewhere, each rounded to the dtype as torch's (`x / cap`, `tanh`, `* cap`), the division by
/// [`scale_exact`].
pub fn softcap(x: &Tensor, cap: f64) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        Ok(x.contiguous()?.apply_op1(crate::cpu_kernels::Pointwise::SoftCap(cap as f32))?)
    } else {
        Ok(scale_exact(x, 1.0 / cap)?.tanh()?.affine(cap, 0.0)?)
    }
}

/// Whether `factor` is a value of `dt` (bf16: an f32 whose low 16 bits are 0; f16: a normal f16,
/// 10 mantissa bits, or 0); f32 / f64 tensors compute with it as it is.
fn held_exactly(factor: f64, dt: DType) -> bool {
    let f = factor as f32;
    let bits = f.to_bits();
    match dt {
        DType::BF16 => f as f64 == factor && bits & 0xFFFF == 0,
        DType::F16 => {
            f as f64 == factor && (f == 0.0 || ((6.103_515_6e-5..=65504.0).contains(&f.abs()) && bits & 0x1FFF == 0))
        }
        _ => true,
    }
}

/// `x * factor` as torch computes a half-precision tensor times a Python number: in f32, rounded
/// once to the dtype. candle's `affine` casts the factor to the tensor's dtype first, which for a
/// factor bf16 cannot hold is a different scale (1/30 becomes 0.033447, 0.34% larger: a soft-cap
/// of 29.9, about a bf16 ulp on a final logit of 25); such a factor goes through f32 instead.
pub fn scale_exact(x: &Tensor, factor: f64) -> Result<Tensor> {
    let dt = x.dtype();
    if held_exactly(factor, dt) {
        Ok(x.affine(factor, 0.0)?)
    } else {
        Ok(x.to_dtype(DType::F32)?.affine(factor, 0.0)?.to_dtype(dt)?)
    }
}

/// The gradient through [`softcap`] from its output `y`: `dy (1 - (y / cap)^2)`, by the same
/// dispatch (our one-pass op on f32 CPU tensors, composed ops elsewhere); for backward passes
/// written by hand (training's attention op).
pub(crate) fn softcap_grad(y: &Tensor, dy: &Tensor, cap: f64) -> Result<Tensor> {
    if y.device().is_cpu() && y.dtype() == DType::F32 {
        let op = crate::cpu_kernels::PointwiseGrad(crate::cpu_kernels::Pointwise::SoftCap(cap as f32));
        Ok(y.contiguous()?.apply_op2_no_bwd(&dy.contiguous()?, &op)?)
    } else {
        Ok((dy * (1.0 - (y / cap)?.sqr()?)?)?)
    }
}

/// Softmax over the last dimension, in f32.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let dt = x.dtype();
    let xf = x.to_dtype(DType::F32)?.contiguous()?;
    let y = if differentiable() { softmax_last_with_grad(&xf)? } else { fused_softmax_last(&xf)? };
    Ok(y.to_dtype(dt)?)
}

/// Softmax over the last dimension with candle's fused forward kernel and an explicit backward,
/// `dx = y * (dy - sum(dy * y))`. The composed form (max, sub, exp, sum, div) keeps four
/// score-sized tensors per attention layer alive for the backward pass and runs five kernels
/// forward; this one keeps the input, the fused result and its copy, and runs one kernel plus a
/// copy. At 5329 vision tokens a score tensor is 113 MB per head.
pub fn softmax_last_with_grad(x: &Tensor) -> Result<Tensor> {
    let y = fused_softmax_last(x)?;
    Ok(x.apply_op2(&y, WithGrad(GradRule::Softmax))?)
}

/// The normalisation of a layer / RMS norm over the last dimension without its affine part, f32:
/// `(x - mean) / sqrt(var + eps)` (`centered`) or `x / sqrt(mean(x^2) + eps)`. Forward by candle's
/// fused kernel (with unit weight), backward explicit:
/// `dx = rstd * (g - mean(g) - xhat * mean(g * xhat))` (RMS: without the `mean(g)` term).
pub fn normalize_with_grad(x: &Tensor, eps: f64, centered: bool) -> Result<Tensor> {
    let x = x.contiguous()?;
    let c = x.dim(D::Minus1)?;
    let ones = Tensor::ones(c, x.dtype(), x.device())?;
    let xhat = if centered {
        candle_nn::ops::layer_norm(&x, &ones, &Tensor::zeros(c, x.dtype(), x.device())?, eps as f32)?
    } else {
        candle_nn::ops::rms_norm(&x, &ones, eps as f32)?
    };
    Ok(x.apply_op2(&xhat, WithGrad(GradRule::Norm { eps, centered }))?)
}

/// HF-style rotary embedding of `x` [B, heads, T, d] by the tables `cos`, `sin` [T, d / 2] (in
/// x's dtype): candle's fused kernel forward (no graph of its own), backward explicit as the
/// inverse rotation, `dx = rope(dy, cos, -sin)`. The composed form runs nine graph nodes with
/// their x-sized temporaries (two table concatenations, halves, a negation, a concatenation,
/// two products, a sum) forward and again backward; this one a kernel and a copy.
pub fn rope_with_grad(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let x = x.contiguous()?;
    let y = candle_nn::rotary_emb::rope(&x, cos, sin)?;
    Ok(x.apply_op2(&y, WithGrad(GradRule::Rope { cos: cos.clone(), sin: sin.clone() }))?)
}

/// How [`WithGrad`] differentiates.
enum GradRule {
    /// softmax over the last dimension: `dx = y * (dy - sum(dy * y))`
    Softmax,
    /// layer (`centered`) or RMS normalisation over the last dimension
    Norm { eps: f64, centered: bool },
    /// the rotary embedding by these tables ([`rope_with_grad`])
    Rope { cos: Tensor, sin: Tensor },
}

/// A custom op returning its second argument — the result of a fused forward kernel applied to
/// the first, computed before — and differentiating with respect to the first by `GradRule`.
struct WithGrad(GradRule);

fn copy_fresh<S: candle_core::backend::BackendStorage>(
    y: &S,
    yl: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<(S, candle_core::Shape)> {
    if !yl.is_contiguous() || yl.start_offset() != 0 {
        candle_core::bail!("{op}: the precomputed result must be a fresh contiguous tensor");
    }
    Ok((y.try_clone(yl)?, yl.shape().clone()))
}

impl candle_core::CustomOp2 for WithGrad {
    fn name(&self) -> &'static str {
        match self.0 {
            GradRule::Softmax => "softmax-last-dim-with-grad",
            GradRule::Norm { .. } => "normalize-with-grad",
            GradRule::Rope { .. } => "rope-with-grad",
        }
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
        y: &candle_core::CpuStorage,
        yl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        copy_fresh(y, yl, self.name())
    }

    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &candle_core::Layout,
        y: &candle_core::CudaStorage,
        yl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        copy_fresh(y, yl, self.name())
    }

    fn bwd(
        &self,
        x: &Tensor,
        _y: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = match &self.0 {
            GradRule::Rope { cos, sin } => candle_nn::rotary_emb::rope(&grad.contiguous()?, cos, &sin.neg()?)?,
            GradRule::Softmax => {
                let gy = (grad * res)?;
                let s = gy.sum_keepdim(D::Minus1)?;
                (gy - res.broadcast_mul(&s)?)?
            }
            &GradRule::Norm { eps, centered } => {
                let var = if centered {
                    x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?.sqr()?.mean_keepdim(D::Minus1)?
                } else {
                    x.sqr()?.mean_keepdim(D::Minus1)?
                };
                let rstd = (var + eps)?.sqrt()?.recip()?;
                let mut inner = grad.broadcast_sub(&res.broadcast_mul(&(grad * res)?.mean_keepdim(D::Minus1)?)?)?;
                if centered {
                    inner = inner.broadcast_sub(&grad.mean_keepdim(D::Minus1)?)?;
                }
                inner.broadcast_mul(&rstd)?
            }
        };
        Ok((Some(dx), None))
    }
}

/// The activations used by the released models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// `x * sigmoid(1.702 x)` (OpenAI CLIP).
    QuickGelu,
    /// Exact erf GELU (`nn.GELU()`, the projectors).
    GeluErf,
    /// tanh-approximated GELU (`gelu_pytorch_tanh`, Gemma).
    GeluTanh,
    /// `x * sigmoid(x)` (Llama).
    Silu,
    Relu,
}

impl Act {
    pub fn from_hf(name: &str) -> Option<Act> {
        Some(match name {
            "quick_gelu" => Act::QuickGelu,
            "gelu" => Act::GeluErf,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Act::GeluTanh,
            "silu" | "swish" => Act::Silu,
            "relu" => Act::Relu,
            _ => return None,
        })
    }

    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        use crate::cpu_kernels::{Gate, Pointwise};
        let gate = match self {
            Act::QuickGelu => Some(Gate::Scaled(1.702)),
            Act::Silu => Some(Gate::Scaled(1.0)),
            Act::GeluTanh => Some(Gate::GeluTanh),
            _ => None,
        };
        // f32 on the CPU, in inference and training alike (the op has its backward pass)
        if let (Some(g), true) = (gate, x.device().is_cpu() && x.dtype() == DType::F32) {
            return Ok(x.contiguous()?.apply_op1(Pointwise::GateMul(g))?);
        }
        Ok(match self {
            Act::QuickGelu => (x * candle_nn::ops::sigmoid(&(x * 1.702)?)?)?,
            Act::GeluErf => x.gelu_erf()?,
            Act::GeluTanh => x.gelu()?,
            Act::Silu => x.silu()?,
            Act::Relu => x.relu()?,
        })
    }
}

/// Token embedding table lookup.
#[derive(Debug, Clone)]
pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::Embedding::new(self.weight.clone(), self.weight.dim(1)?).forward(ids)?)
    }
}

#[cfg(test)]
mod softmax_tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The fused-forward softmax and norms differentiate like the composed forms.
    #[test]
    fn fused_forward_ops_differentiate_like_the_composed_forms() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(Tensor::randn(0f32, 3.0, (2, 3, 5, 7), &dev).unwrap())).unwrap();
        let w = Tensor::randn(0f32, 1.0, (2, 3, 5, 7), &dev).unwrap();
        let a = softmax_last_with_grad(x.as_tensor()).unwrap();
        let b = candle_nn::ops::softmax(x.as_tensor(), D::Minus1).unwrap();
        let diff = |p: &Tensor, q: &Tensor| -> f32 {
            (p - q).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
        };
        assert!(diff(&a, &b) < 1e-6);
        let ga = (&a * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (&b * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let (ga, gb) = (ga.get(x.as_tensor()).unwrap(), gb.get(x.as_tensor()).unwrap());
        let scale: f32 = gb.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
        assert!(scale > 1e-3 && diff(ga, gb) < 1e-6 * scale.max(1.0), "{} vs scale {scale}", diff(ga, gb));
        // the norms' explicit backward equals the composed forms'
        for centered in [true, false] {
            let xs = x.as_tensor();
            let a = normalize_with_grad(xs, 1e-5, centered).unwrap();
            let b = if centered {
                let c = xs.broadcast_sub(&xs.mean_keepdim(D::Minus1).unwrap()).unwrap();
                let var = c.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
                c.broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap()).unwrap()
            } else {
                let ms = xs.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
                xs.broadcast_div(&(ms + 1e-5).unwrap().sqrt().unwrap()).unwrap()
            };
            assert!(diff(&a, &b) < 1e-5, "centered {centered}: forward {}", diff(&a, &b));
            let ga = (&a * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (&b * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let (ga, gb) = (ga.get(xs).unwrap(), gb.get(xs).unwrap());
            let scale: f32 = gb.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
            assert!(
                scale > 1e-3 && diff(ga, gb) < 1e-5 * scale.max(1.0),
                "centered {centered}: {} vs scale {scale}",
                diff(ga, gb)
            );
        }
        // a non-contiguous input is made contiguous by softmax_last, never passed through
        let t = x.as_tensor().transpose(2, 3).unwrap();
        assert!(softmax_last(&t).is_ok());
    }
}

#[cfg(test)]
mod norm_cache_tests {
    use super::*;
    use crate::loader::Checkpoint;
    use candle_core::Device;

    /// Frozen norms form their f32 scale once at load; trainable ones at every call, so an
    /// optimizer's update of the variable shows in the next forward.
    #[test]
    fn frozen_norms_cache_their_scale_and_trainable_ones_follow_updates() {
        let dev = Device::Cpu;
        let dir = tempfile::tempdir().unwrap();
        let mut m = std::collections::HashMap::new();
        m.insert("rms.weight".to_string(), Tensor::new(&[0.5f32, -0.25, 1.5, 0.0], &dev).unwrap());
        m.insert("ln.weight".to_string(), Tensor::new(&[1.5f32, 0.5, -1.0, 2.0], &dev).unwrap());
        m.insert("ln.bias".to_string(), Tensor::new(&[0.1f32, 0.2, -0.3, 0.0], &dev).unwrap());
        candle_core::safetensors::save(&m, dir.path().join("model.safetensors")).unwrap();
        let x = Tensor::new(&[[1.0f32, -2.0, 3.0, 0.5], [0.25, 4.0, -1.0, 2.0]], &dev).unwrap();
        let frozen = Checkpoint::open(dir.path(), &dev, DType::F32).unwrap();
        let mut trainable = Checkpoint::open(dir.path(), &dev, DType::F32).unwrap();
        trainable.set_trainable(Box::new(|_| true));
        let (rf, lf) = (
            RmsNorm::load(&frozen.scope("rms"), 4, 1e-6, true).unwrap(),
            LayerNorm::load(&frozen.scope("ln"), 4, 1e-5).unwrap(),
        );
        let (rt, lt) = (
            RmsNorm::load(&trainable.scope("rms"), 4, 1e-6, true).unwrap(),
            LayerNorm::load(&trainable.scope("ln"), 4, 1e-5).unwrap(),
        );
        assert!(rf.scale_f32.is_some() && lf.affine_f32.is_some());
        assert!(rt.scale_f32.is_none() && lt.affine_f32.is_none());
        let v = |t: Tensor| -> Vec<Vec<f32>> { t.to_vec2().unwrap() };
        // the same values either way (bit for bit)
        assert_eq!(v(rf.forward(&x).unwrap()), v(rt.forward(&x).unwrap()));
        assert_eq!(v(lf.forward(&x).unwrap()), v(lt.forward(&x).unwrap()));
        // an update of the trainable weights shows; the frozen norms are unchanged
        let before = (v(rt.forward(&x).unwrap()), v(lt.forward(&x).unwrap()));
        for (_, var) in trainable.take_vars() {
            var.set(&(var.as_tensor() * 2.0).unwrap()).unwrap();
        }
        assert_ne!(v(rt.forward(&x).unwrap()), before.0);
        assert_ne!(v(lt.forward(&x).unwrap()), before.1);
        assert_eq!(v(rf.forward(&x).unwrap()), before.0);
        assert_eq!(v(lf.forward(&x).unwrap()), before.1);
    }
}

#[cfg(test)]
mod rope_tests {
    use super::*;
    use candle_core::{Device, Var};

    /// [`rope_with_grad`]: the output is candle's kernel's, the gradient that of the composed
    /// rotation `x cos2 + rotate_half(x) sin2` under candle's autograd (within 1e-6 of the
    /// largest value), in f32 on the CPU.
    #[test]
    fn rope_with_grad_matches_the_composed_autograd() {
        let dev = Device::Cpu;
        let (b, h, t, d) = (2usize, 3usize, 5usize, 8usize);
        let ang = Tensor::randn(0f32, 2.0, (t, d / 2), &dev).unwrap();
        let (cos, sin) = (ang.cos().unwrap(), ang.sin().unwrap());
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, h, t, d), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (b, h, t, d), &dev).unwrap();
        let ours = rope_with_grad(x.as_tensor(), &cos, &sin).unwrap();
        let composed = {
            let cos2 = Tensor::cat(&[&cos, &cos], D::Minus1).unwrap();
            let sin2 = Tensor::cat(&[&sin, &sin], D::Minus1).unwrap();
            let x1 = x.as_tensor().narrow(D::Minus1, 0, d / 2).unwrap();
            let x2 = x.as_tensor().narrow(D::Minus1, d / 2, d / 2).unwrap();
            let rot = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
            (x.as_tensor().broadcast_mul(&cos2).unwrap() + rot.broadcast_mul(&sin2).unwrap()).unwrap()
        };
        let max_diff = |a: &Tensor, b: &Tensor| -> f32 {
            (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
        };
        assert!(max_diff(&ours, &composed) < 1e-6);
        let grad =
            |y: &Tensor| (y * &w).unwrap().sum_all().unwrap().backward().unwrap().get(x.as_tensor()).unwrap().clone();
        let (g_ours, g_composed) = (grad(&ours), grad(&composed));
        assert!(max_diff(&g_ours, &g_composed) < 1e-6, "{}", max_diff(&g_ours, &g_composed));
        // not the identity: the rotation moved the values
        assert!(max_diff(&g_ours, &w) > 1e-2);
    }
}

#[cfg(test)]
mod scale_tests {
    use super::*;
    use candle_core::Device;

    fn bf16(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32).unwrap().to_vec1().unwrap()
    }

    /// A Llama RMSNorm in bf16 rounds the normalised value to bf16 before the weight multiplies
    /// it (HF: `weight * hidden_states.to(input_dtype)`); Gemma's `(1 + w)` multiplies in f32.
    #[test]
    fn bf16_llama_norm_rounds_as_hf() {
        let x = bf16(&[0.3, -1.7, 2.9, 0.011, -0.6, 4.4, 1.3, -2.2]);
        let w = bf16(&[0.77, 1.31, -0.4, 2.5, 0.9, 1.1, -1.6, 0.35]);
        let norm = RmsNorm { weight: w.clone(), one_plus: false, eps: 1e-5, scale_f32: None };
        let got = values(&norm.forward(&x).unwrap());
        let xs = values(&x);
        let rms = (xs.iter().map(|v| v * v).sum::<f32>() / xs.len() as f32 + 1e-5).sqrt();
        let r = |f: f32| values(&bf16(&[f]))[0];
        let want: Vec<f32> = xs.iter().zip(values(&w)).map(|(v, wi)| r(r(v / rms) * wi)).collect();
        for (g, e) in got.iter().zip(&want) {
            assert!((g - e).abs() <= e.abs() * 1e-6, "{got:?} vs {want:?}");
        }
    }

    /// The bf16 soft-cap rounds each of torch's three steps from f32 (`logits / 30` with the
    /// factor in f32, `tanh`, `* 30`); the factor rounded to bf16 first (candle's affine) gives a
    /// logit 1 bf16 ulp off at 25.
    #[test]
    fn bf16_softcap_divides_by_the_cap_as_torch() {
        let x = bf16(&[25.0, -7.5, 3.0, 0.0, 118.0]);
        let torch_like = |v: f32| -> f32 {
            let r = |f: f32| Tensor::new(&[f], &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
            let a = values(&r(v * (1.0f32 / 30.0)))[0];
            let b = values(&r(a.tanh()))[0];
            values(&r(b * 30.0))[0]
        };
        let got = values(&softcap(&x, 30.0).unwrap());
        let want: Vec<f32> = values(&x).into_iter().map(torch_like).collect();
        assert_eq!(got, want);
        let old = values(&((&x / 30.0).unwrap().tanh().unwrap() * 30.0).unwrap());
        assert_ne!(old[0], got[0], "the bf16-rounded factor gave the same value: the test does not bite");
        // a factor bf16 holds (1/16, Gemma-2-9B's scale) stays one affine op, the same values
        let y = bf16(&[1.0, 3.3, -250.0]);
        assert_eq!(values(&scale_exact(&y, 1.0 / 16.0).unwrap()), values(&(&y * (1.0 / 16.0)).unwrap()));
        assert_eq!(scale_exact(&y, 1.0 / 12.0).unwrap().dtype(), DType::BF16);
        // which factors a half dtype holds
        for (f, bf, h) in
            [(0.0625, true, true), (1.0 / 30.0, false, false), (30.0, true, true), (1.0 / 3.0, false, false)]
        {
            assert_eq!((held_exactly(f, DType::BF16), held_exactly(f, DType::F16)), (bf, h), "{f}");
        }
        assert!(held_exactly(1.0 + 1.0 / 1024.0, DType::F16) && !held_exactly(1.0 + 1.0 / 1024.0, DType::BF16));
        let big = 2f64.powi(100);
        assert!(held_exactly(big, DType::BF16) && !held_exactly(big, DType::F16));
    }
}

//! Attention for training: one graph node with an explicit backward pass that recomputes the
//! probabilities block by block, instead of the composed ops' graph.
//!
//! The composed form (scores, soft-cap, mask, softmax, product with v) keeps every score-sized
//! tensor of every layer alive until the backward pass: at 1022 px (5330 tokens) that is 114 MB
//! per head, layer and image in f32, and the ops walk those tensors about a dozen times forward
//! and backward. Here the forward runs without a graph (the fused kernel where one exists: the
//! CPU kernel of [`crate::cpu_kernels`] on f32 CPU tensors, [`crate::flash`] on a GPU in bf16 /
//! f16; else the composed ops in blocks of query rows) and keeps only q, k, v and the output;
//! the backward recomputes each block's probabilities and forms the gradients of
//! FlashAttention-2's backward pass (Dao, 2023, arXiv 2307.08691, Algorithm 2), with
//! `D = rowsum(dO * O)`:
//!
//! ```text
//! P = softmax(S),  dV = P^T dO,  dP = dO V^T,  dS = P * (dP - D),
//! [soft-cap c: dS *= 1 - tanh(S_raw / c)^2],  dQ = scale * dS K,  dK = scale * dS^T Q
//! ```
//!
//! (with grouped-query attention, the query heads of a group add into their key / value head's
//! gradients). The arithmetic is f32 whatever the input dtype; gradients come back in the input
//! dtype. `GRIFFON_ATTN_GRAD=0` keeps the composed graph instead (a side-by-side figure).
//! Where they fit, the GPU's backward kernels run the same equations
//! ([`crate::flash::attention_backward`]: bf16 / f16, head sizes 32 and 64) without any
//! score-sized tensor; `GRIFFON_ATTN_BWD=composed` keeps the composed backward there.

use crate::cpu_kernels::Causal;
use crate::error::{invalid, Result};
use crate::fused::EnvSwitch;
use candle_core::{CustomOp3, DType, Layout, Shape, Tensor, D};

/// Query rows per block of the composed forward and of the backward pass: bounds the transient
/// score block to `B * H * 1024 * S` values.
pub const QUERY_BLOCK: usize = 1024;

static ATTN_GRAD: EnvSwitch = EnvSwitch::new("GRIFFON_ATTN_GRAD", &["0", "1"]);

/// A process-wide choice that overrides an environment switch when set (`None`: the
/// environment decides).
struct Override(std::sync::atomic::AtomicU8);

impl Override {
    const fn new() -> Self {
        Self(std::sync::atomic::AtomicU8::new(0))
    }

    fn set(&self, on: Option<bool>) {
        let v = match on {
            None => 0,
            Some(true) => 1,
            Some(false) => 2,
        };
        self.0.store(v, std::sync::atomic::Ordering::SeqCst);
    }

    fn get(&self) -> Option<bool> {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }
}

/// [`set_enabled`]'s choice over `GRIFFON_ATTN_GRAD`.
static FORCED: Override = Override::new();

/// Whether training attention takes this path (`GRIFFON_ATTN_GRAD=0`: the composed graph).
pub fn enabled() -> bool {
    FORCED.get().unwrap_or_else(|| !ATTN_GRAD.is("0"))
}

/// Picks the path for this process regardless of the environment (`None`: the environment's
/// choice again); for comparing both paths in one process.
pub fn set_enabled(on: Option<bool>) {
    FORCED.set(on);
}

/// [`set_backward_kernel`]'s choice over `GRIFFON_ATTN_BWD`.
static BWD_FORCED: Override = Override::new();

/// Picks whether the backward pass takes [`crate::flash::attention_backward`] (where it fits)
/// regardless of `GRIFFON_ATTN_BWD` (`None`: the environment's choice again); for the checks.
pub fn set_backward_kernel(on: Option<bool>) {
    BWD_FORCED.set(on);
}

fn backward_kernel(q: &Tensor) -> bool {
    BWD_FORCED.get().unwrap_or_else(crate::flash::backward_requested) && crate::flash::backward_fits(q)
}

/// What the scores are: `scale * q k^T`, soft-capped as `cap * tanh(s / cap)`, masked by
/// `causal` (query row `i` at position `offset + i`; `None`: every key visible).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradSpec {
    pub scale: f32,
    pub softcap: Option<f32>,
    pub causal: Option<Causal>,
}

/// `softmax(scores) v` for q [B, H, T, d], k and v [B, KV, S, d] (H a multiple of KV; query
/// head `h` reads key / value head `h / (H / KV)`) -> [B, T, H * d], the heads merged as the
/// output projection reads them; differentiable in q, k and v.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, spec: &GradSpec) -> Result<Tensor> {
    attention_blocked(q, k, v, spec, QUERY_BLOCK)
}

/// [`attention`] with `block` query rows per block (tests use small blocks).
pub fn attention_blocked(q: &Tensor, k: &Tensor, v: &Tensor, spec: &GradSpec, block: usize) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let (kb, kvh, s, kd) = k.dims4()?;
    if v.dims() != k.dims() || kb != b || kd != d || kvh == 0 || h % kvh != 0 {
        return invalid(format!(
            "attention: shapes q {:?} k {:?} v {:?} do not fit together",
            q.dims(),
            k.dims(),
            v.dims()
        ));
    }
    if q.dtype() != k.dtype() || q.dtype() != v.dtype() {
        return invalid(format!("attention: dtypes q {:?} k {:?} v {:?} differ", q.dtype(), k.dtype(), v.dtype()));
    }
    if let Some(c) = spec.causal {
        if c.offset + t > s {
            return invalid(format!(
                "attention: {t} queries at offset {} need {} keys, got {s}",
                c.offset,
                c.offset + t
            ));
        }
    }
    if block == 0 {
        return invalid("attention: the query block must hold at least one row".to_string());
    }
    let (qd, kd, vd) = (q.detach(), k.detach(), v.detach());
    let out = forward(&qd, &kd, &vd, spec, block)?.reshape((b, t, h * d))?.contiguous()?;
    Ok(q.apply_op3(k, v, AttnGrad { out, spec: *spec, block })?)
}

/// The output without a graph: a fused kernel where one applies, else the composed ops in
/// blocks of query rows (in f32). [B, T, H * d] or [B, T, H, d].
fn forward(q: &Tensor, k: &Tensor, v: &Tensor, spec: &GradSpec, block: usize) -> Result<Tensor> {
    if q.device().is_cpu() && q.dtype() == DType::F32 {
        let a = crate::cpu_kernels::Attention { scale: spec.scale, softcap: spec.softcap, causal: spec.causal };
        return Ok(q.apply_op3_no_bwd(k, v, &a)?);
    }
    if crate::flash::kernel_applies(q) {
        let f = crate::flash::FlashSpec { scale: spec.scale, softcap: spec.softcap, causal: spec.causal };
        return crate::flash::attention(q, k, v, &f);
    }
    let (b, h, t, d) = q.dims4()?;
    let kvh = k.dim(1)?;
    let (kf, vf) = (k.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?);
    let qg = grouped(q, kvh)?;
    let mut outs = Vec::with_capacity(t.div_ceil(block));
    for (t0, c) in blocks(t, block) {
        let qc = group_rows(&qg, t0, c)?;
        let (p, _) = probs(&qc, &kf, spec, t0, c)?;
        outs.push(p.matmul(&vf)?.reshape((b, kvh, h / kvh, c, d))?);
    }
    // [B, KV, rep, T, d] -> [B, T, H, d]
    Ok(Tensor::cat(&outs, 3)?.reshape((b, h, t, d))?.transpose(1, 2)?.to_dtype(q.dtype())?)
}

/// `[t0, t0 + c)` blocks covering `0..t`.
fn blocks(t: usize, block: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t).step_by(block).map(move |t0| (t0, block.min(t - t0)))
}

/// q [B, H, T, d] as f32 [B, KV, rep, T, d].
fn grouped(x: &Tensor, kvh: usize) -> Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    Ok(x.to_dtype(DType::F32)?.reshape((b, kvh, h / kvh, t, d))?)
}

/// Rows `t0..t0 + c` of every head of a grouped [B, KV, rep, T, n] tensor as [B, KV, rep * c, n].
fn group_rows(g: &Tensor, t0: usize, c: usize) -> Result<Tensor> {
    let (b, kvh, rep, _, n) = g.dims5()?;
    Ok(g.narrow(3, t0, c)?.contiguous()?.reshape((b, kvh, rep * c, n))?)
}

/// The probabilities of query rows `t0..t0 + c` (grouped, f32 [B, KV, rep * c, d]) over f32 keys
/// [B, KV, S, d]: [B, KV, rep * c, S], and the soft-capped scores `cap tanh(s / cap)` (before the
/// mask) when soft-capped.
fn probs(qc: &Tensor, k: &Tensor, spec: &GradSpec, t0: usize, c: usize) -> Result<(Tensor, Option<Tensor>)> {
    let (b, kvh, rc, _) = qc.dims4()?;
    let s = k.dim(2)?;
    // the scale goes on the query rows (rows x d), not on the scores (rows x S)
    let mut scores = (qc * spec.scale as f64)?.matmul(&k.t()?)?;
    let capped = match spec.softcap {
        Some(cap) => {
            scores = crate::nn::softcap(&scores, cap as f64)?;
            Some(scores.clone())
        }
        None => None,
    };
    if let Some(causal) = spec.causal {
        let mask = Tensor::from_vec(causal.additive_mask(t0..t0 + c, s), (c, s), qc.device())?;
        scores = scores.reshape((b, kvh, rc / c, c, s))?.broadcast_add(&mask)?.reshape((b, kvh, rc, s))?;
    }
    Ok((crate::nn::fused_softmax_last(&scores.contiguous()?)?, capped))
}

/// The op: its forward returns the output computed before (a copy of `out`), its backward the
/// recomputed gradients.
struct AttnGrad {
    out: Tensor,
    spec: GradSpec,
    block: usize,
}

impl AttnGrad {
    fn copy_out<S: candle_core::backend::BackendStorage>(
        &self,
        pick: impl Fn(&candle_core::Storage) -> Option<&S>,
    ) -> candle_core::Result<(S, Shape)> {
        let (storage, layout) = self.out.storage_and_layout();
        let Some(s) = pick(&storage) else {
            candle_core::bail!("attention with grad: the output is on another device than q");
        };
        Ok((s.try_clone(layout)?, layout.shape().clone()))
    }
}

impl CustomOp3 for AttnGrad {
    fn name(&self) -> &'static str {
        "attention-with-grad"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        self.copy_out(|s| match s {
            candle_core::Storage::Cpu(c) => Some(c),
            _ => None,
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.copy_out(|s| match s {
            candle_core::Storage::Cuda(c) => Some(c),
            _ => None,
        })
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dq, dk, dv) = backward(q, k, v, &self.out, grad, &self.spec, self.block)
            .map_err(|e| candle_core::Error::Msg(format!("attention backward: {e}")))?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// dq, dk, dv of the attention for the output gradient `grad` ([B, T, H * d]).
fn backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    grad: &Tensor,
    spec: &GradSpec,
    block: usize,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, h, t, d) = q.dims4()?;
    let kvh = k.dim(1)?;
    let rep = h / kvh;
    let heads = |x: &Tensor| -> Result<Tensor> { Ok(x.reshape((b, t, h, d))?.transpose(1, 2)?) };
    let (q, k, v) = (q.detach(), k.detach(), v.detach());
    if backward_kernel(&q) {
        // the GPU's backward kernels: no score-sized tensor (the default; GRIFFON_ATTN_BWD=composed: not)
        let f = crate::flash::FlashSpec { scale: spec.scale, softcap: spec.softcap, causal: spec.causal };
        return crate::flash::attention_backward(&q, &k, &v, out, &grad.detach(), &f);
    }
    let (kf, vf) = (k.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?);
    let qg = grouped(&q, kvh)?;
    let dog = grouped(&heads(&grad.detach())?, kvh)?;
    // D = rowsum(dO * O): [B, KV, rep, T, 1]
    let dg = (&dog * grouped(&heads(out)?, kvh)?)?.sum_keepdim(D::Minus1)?;
    let mut dk = kf.zeros_like()?;
    let mut dv = vf.zeros_like()?;
    let mut dqs = Vec::with_capacity(t.div_ceil(block));
    for (t0, c) in blocks(t, block) {
        let (qc, doc, dc) = (group_rows(&qg, t0, c)?, group_rows(&dog, t0, c)?, group_rows(&dg, t0, c)?);
        let (p, capped) = probs(&qc, &kf, spec, t0, c)?;
        dv = (dv + p.t()?.matmul(&doc)?)?;
        let dp = doc.matmul(&vf.t()?)?;
        let mut ds = (&p * dp.broadcast_sub(&dc)?)?;
        if let (Some(y), Some(cap)) = (capped, spec.softcap) {
            ds = crate::nn::softcap_grad(&y, &ds, cap as f64)?;
        }
        // the score scale goes on the products (rows x d), not on dS (rows x S)
        let scale = spec.scale as f64;
        dqs.push((ds.matmul(&kf)? * scale)?.reshape((b, kvh, rep, c, d))?);
        dk = (dk + (ds.t()?.matmul(&qc)? * scale)?)?;
    }
    let dq = Tensor::cat(&dqs, 3)?.reshape((b, h, t, d))?;
    let dt = q.dtype();
    Ok((dq.to_dtype(dt)?, dk.to_dtype(dt)?, dv.to_dtype(dt)?))
}

/// The reference: the composed ops with candle's autograd, as the models' reference computes
/// attention (`repeat_kv`, scores, soft-cap, additive mask, softmax, product with v) ->
/// [B, T, H * d], in the inputs' dtype (f32 for the checks).
pub fn composed_reference(q: &Tensor, k: &Tensor, v: &Tensor, spec: &GradSpec) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let (_, kvh, s, _) = k.dims4()?;
    let rep = h / kvh;
    let expand = |x: &Tensor| -> Result<Tensor> {
        Ok(x.unsqueeze(2)?.broadcast_as((b, kvh, rep, s, d))?.reshape((b, h, s, d))?)
    };
    let (k, v) = (expand(k)?, expand(v)?);
    let mut sc = (q.matmul(&k.t()?)? * spec.scale as f64)?;
    if let Some(cap) = spec.softcap {
        sc = ((sc / cap as f64)?.tanh()? * cap as f64)?;
    }
    if let Some(c) = spec.causal {
        let m = Tensor::from_vec(c.additive_mask(0..t, s), (t, s), q.device())?;
        sc = sc.broadcast_add(&m.to_dtype(sc.dtype())?)?;
    }
    let mx = sc.max_keepdim(D::Minus1)?.detach();
    let e = sc.broadcast_sub(&mx)?.exp()?;
    let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
    Ok(p.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h * d))?)
}

/// Shapes of [`check_against_composed`]: (B, H, KV, T, d, spec).
fn check_cases() -> Vec<(usize, usize, usize, usize, usize, GradSpec)> {
    let causal = |window| Some(Causal { offset: 0, window });
    vec![
        // a vision tower's layer (no mask), more rows than one query block
        (2, 2, 2, QUERY_BLOCK + 77, 64, GradSpec { scale: 0.125, softcap: None, causal: None }),
        // a Gemma-2 layer: causal, sliding window, soft-capped scores, grouped-query heads
        (2, 4, 2, 300, 64, GradSpec { scale: 0.125, softcap: Some(50.0), causal: causal(Some(128)) }),
        // a Llama layer
        (1, 4, 4, 200, 128, GradSpec { scale: 128f32.powf(-0.5), softcap: None, causal: causal(None) }),
    ]
}

/// Output and gradients of [`attention`] on `device` in f32 and bf16 (on a GPU the bf16 forward
/// is [`crate::flash`]'s kernel) against [`composed_reference`]'s autograd in f32 on the same
/// (rounded) inputs, for each case of [`check_cases`]; then, where they fit (a GPU, head sizes
/// 32 / 64), the same in bf16 through the backward kernels ([`crate::flash::attention_backward`]),
/// last and each case's error reported as a failed check (a kernel fault spoils the device for
/// what follows). Tolerance of the largest value: 1e-4 in f32, 2e-2 in bf16 (the output and the
/// gradients are rounded to bf16), 3e-2 through the backward kernels (they also round P and dS to
/// bf16 for their products, as FlashAttention does).
pub fn check_against_composed(device: &candle_core::Device) -> Result<Vec<crate::flash::FlashCheck>> {
    let mut out = Vec::new();
    for (i, case) in check_cases().into_iter().enumerate() {
        for dtype in [DType::F32, DType::BF16] {
            out.push(check_case(device, i, case, dtype, false)?);
        }
    }
    for (i, case) in check_cases().into_iter().enumerate() {
        let probe = Tensor::zeros((1, 1, 1, case.4), DType::BF16, device)?;
        if !crate::flash::backward_fits(&probe) {
            continue;
        }
        out.push(check_case(device, i, case, DType::BF16, true).unwrap_or_else(|e| crate::flash::FlashCheck {
            case: format!("training BF16 backward kernel: case {i} did not run: {e}"),
            rel_err: f64::NAN,
            tolerance: 3e-2,
        }));
    }
    Ok(out)
}

/// One case of [`check_against_composed`].
fn check_case(
    device: &candle_core::Device,
    i: usize,
    (b, h, kvh, t, d, spec): (usize, usize, usize, usize, usize, GradSpec),
    dtype: DType,
    kernel: bool,
) -> Result<crate::flash::FlashCheck> {
    use candle_core::Var;
    // deterministic inputs: a smooth pseudo-random pattern
    let input = |n: u64, shape: (usize, usize, usize, usize)| -> Result<Tensor> {
        let len = shape.0 * shape.1 * shape.2 * shape.3;
        let vals: Vec<f32> = (0..len as u64)
            .map(|j| (((j + 1) * 2654435761 + n * 40503 + i as u64 * 97) % 10007) as f32 / 10007.0 - 0.5)
            .map(|x| x * 4.0)
            .collect();
        Ok(Tensor::from_vec(vals, shape, device)?)
    };
    let (q, k, v) = (input(1, (b, h, t, d))?, input(2, (b, kvh, t, d))?, input(3, (b, kvh, t, d))?);
    let w = input(4, (b, t, h, d))?.reshape((b, t, h * d))?;
    let cast = |x: &Tensor| -> Result<Tensor> { Ok(x.to_dtype(dtype)?) };
    let (qv, kv, vv) = (Var::from_tensor(&cast(&q)?)?, Var::from_tensor(&cast(&k)?)?, Var::from_tensor(&cast(&v)?)?);
    set_backward_kernel(Some(kernel));
    let got = attention(&qv, &kv, &vv, &spec).and_then(|got| {
        let g = (got.to_dtype(DType::F32)? * &w)?.sum_all()?.backward()?;
        Ok((got, g))
    });
    set_backward_kernel(None);
    let (got, g_got) = got?;
    let f32v = |x: &Var| -> Result<Var> { Ok(Var::from_tensor(&x.as_tensor().to_dtype(DType::F32)?)?) };
    let (qr, kr, vr) = (f32v(&qv)?, f32v(&kv)?, f32v(&vv)?);
    let want = composed_reference(&qr, &kr, &vr, &spec)?;
    let g_want = (&want * &w)?.sum_all()?.backward()?;
    let rel = |a: &Tensor, e: &Tensor| -> Result<f64> {
        let err = (a.to_dtype(DType::F32)? - e)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? as f64;
        let scale = e.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? as f64;
        Ok(err / scale.max(1e-12))
    };
    let missing = |x: &str| crate::error::Error::Invalid(format!("attention check: no gradient for {x}"));
    let mut worst = rel(&got, &want)?;
    for (name, a, e) in [("q", &qv, &qr), ("k", &kv, &kr), ("v", &vv, &vr)] {
        let ga = g_got.get(a).ok_or_else(|| missing(name))?;
        let ge = g_want.get(e).ok_or_else(|| missing(name))?;
        worst = worst.max(rel(ga, ge)?);
    }
    Ok(crate::flash::FlashCheck {
        case: format!(
            "training {dtype:?}{}: {b} x heads {h}/{kvh}, {t} tokens, head dim {d}, softcap {:?}, causal {:?} (output, dq, dk, dv)",
            if kernel { " backward kernel" } else { "" },
            spec.softcap,
            spec.causal
        ),
        rel_err: worst,
        tolerance: match (dtype, kernel) {
            (DType::F32, _) => 1e-4,
            (_, false) => 2e-2,
            (_, true) => 3e-2,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-12);
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() / scale
    }

    /// Output and gradients of q, k, v equal the composed ops' autograd (f32 CPU), through the
    /// CPU kernel's forward and blocked backward passes: unmasked (the vision towers), causal,
    /// sliding window, soft-capped (Gemma-2), grouped-query, one query block and several.
    #[test]
    fn output_and_gradients_match_the_composed_autograd() {
        let dev = Device::Cpu;
        let cases: Vec<(&str, usize, usize, usize, usize, usize, GradSpec, usize)> = vec![
            ("unmasked", 2, 2, 2, 13, 8, GradSpec { scale: 1.0, softcap: None, causal: None }, 5),
            (
                "causal",
                1,
                3,
                3,
                11,
                16,
                GradSpec { scale: 0.25, softcap: None, causal: Some(Causal { offset: 0, window: None }) },
                4,
            ),
            (
                "window + softcap + gqa",
                2,
                4,
                2,
                9,
                8,
                GradSpec { scale: 0.35, softcap: Some(2.0), causal: Some(Causal { offset: 0, window: Some(4) }) },
                2,
            ),
            (
                "offset, one block",
                1,
                2,
                1,
                5,
                8,
                GradSpec { scale: 0.5, softcap: Some(5.0), causal: Some(Causal { offset: 3, window: None }) },
                64,
            ),
        ];
        for (name, b, h, kvh, t, d, spec, block) in cases {
            let s = spec.causal.map_or(t + 2, |c| c.offset + t);
            let q = Var::randn(0f32, 1.0, (b, h, t, d), &dev).unwrap();
            let k = Var::randn(0f32, 1.0, (b, kvh, s, d), &dev).unwrap();
            let v = Var::randn(0f32, 1.0, (b, kvh, s, d), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (b, t, h * d), &dev).unwrap();
            let ours = attention_blocked(&q, &k, &v, &spec, block).unwrap();
            let want = composed_reference(&q, &k, &v, &spec).unwrap();
            let err = max_rel(&ours, &want);
            assert!(err < 1e-5, "{name}: output differs by {err:e}");
            let g_ours = (&ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let g_want = (&want * &w).unwrap().sum_all().unwrap().backward().unwrap();
            for (what, x) in [("q", &q), ("k", &k), ("v", &v)] {
                let (a, e) = (g_ours.get(x).unwrap(), g_want.get(x).unwrap());
                let err = max_rel(a, e);
                eprintln!("{name}: d{what} max rel err {err:.2e}");
                assert!(err < 2e-5, "{name}: d{what} differs by {err:e}");
            }
        }
    }

    /// The composed forward in blocks (the path of f32 GPU training) gives the CPU kernel's output.
    #[test]
    fn blocked_composed_forward_matches_the_kernel() {
        let dev = Device::Cpu;
        let spec = GradSpec { scale: 0.3, softcap: Some(3.0), causal: Some(Causal { offset: 2, window: Some(5) }) };
        let q = Tensor::randn(0f32, 1.0, (2, 4, 10, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, 2, 12, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, 2, 12, 8), &dev).unwrap();
        // bf16 inputs take the composed blocks on the CPU (f32 arithmetic, the output rounded to
        // bf16); the kernel gets the same bf16 values in f32
        let bf = |x: &Tensor| x.to_dtype(DType::BF16).unwrap();
        let f = |x: &Tensor| x.to_dtype(DType::F32).unwrap();
        let (qb, kb, vb) = (bf(&q), bf(&k), bf(&v));
        let composed = f(&forward(&qb, &kb, &vb, &spec, 3).unwrap()).reshape((2, 10, 32)).unwrap();
        let kernel = forward(&f(&qb), &f(&kb), &f(&vb), &spec, 3).unwrap();
        assert_eq!(kernel.dims(), &[2, 10, 32]);
        let err = max_rel(&composed, &kernel);
        assert!(err < 8e-3, "blocked composed forward differs by {err:e} (bf16 output rounding: 3.9e-3)");
    }

    /// The GPU session's check (selfcheck) passes on the CPU: f32 through the CPU kernel, bf16
    /// through the composed blocks.
    #[test]
    fn the_device_check_passes_on_the_cpu() {
        for c in check_against_composed(&Device::Cpu).unwrap() {
            eprintln!("{}: {:.2e} (tol {:.0e})", c.case, c.rel_err, c.tolerance);
            assert!(c.passed(), "{}: {:e}", c.case, c.rel_err);
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let dev = Device::Cpu;
        let spec = GradSpec { scale: 1.0, softcap: None, causal: None };
        let q = Tensor::zeros((1, 3, 4, 8), DType::F32, &dev).unwrap();
        let k = Tensor::zeros((1, 2, 4, 8), DType::F32, &dev).unwrap();
        let e = attention(&q, &k, &k, &spec).unwrap_err().to_string();
        assert!(e.contains("do not fit together"), "{e}");
        let k = Tensor::zeros((1, 3, 4, 8), DType::F32, &dev).unwrap();
        let causal = GradSpec { causal: Some(Causal { offset: 1, window: None }), ..spec };
        let e = attention(&q, &k, &k, &causal).unwrap_err().to_string();
        assert!(e.contains("need 5 keys"), "{e}");
        let e = attention_blocked(&q, &k, &k, &spec, 0).unwrap_err().to_string();
        assert!(e.contains("at least one row"), "{e}");
    }
}

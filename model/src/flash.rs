//! Fused attention on NVIDIA GPUs: the kernel of `model/kernels/flash_attn.cu` (FlashAttention-2's
//! online softmax on tensor cores, written for this project), compiled to PTX by `build.rs` in the
//! `cuda` build. It replaces the composed attention (scores, scale, soft-cap, mask, softmax,
//! product, head transpose) for bf16 / f16 inference on the GPU: at 1022 px the vision tower's
//! composed attention writes and re-reads a 16 x 5330 x 5330 score matrix several times per
//! layer; the kernel keeps each tile of scores in registers.
//!
//! [`applies`] says whether a call can take it (a CUDA tensor of bf16 / f16, outside training,
//! a head size of 32, 64, 128 or 256, not turned off by `GRIFFON_FLASH=0`); the composed path
//! stays the reference and the fallback. `griffon selfcheck --device cuda` compares the two on
//! random inputs of every supported head size, causal or not, with soft-capping, a sliding
//! window and grouped-query heads ([`check_against_composed`]).

use candle_core::{DType, Tensor};

use crate::cpu_kernels::Causal;
use crate::error::Result;
use crate::fused::EnvSwitch;

/// Head sizes the kernel is compiled for.
pub const HEAD_DIMS: [usize; 4] = [32, 64, 128, 256];

/// What the kernel computes besides `softmax(q k^T) v`.
#[derive(Debug, Clone, Copy)]
pub struct FlashSpec {
    /// Factor on `q k^T`.
    pub scale: f32,
    /// `cap * tanh(s / cap)` on the scaled scores.
    pub softcap: Option<f32>,
    /// Causal (and sliding-window) mask of a decoder; `None`: every key is visible.
    pub causal: Option<Causal>,
}

/// Whether `GRIFFON_FLASH=0` turned the kernels off (read once per process): the composed path
/// then runs, for a side-by-side figure (`tools/cuda/speed_probe.sh` times both in one call).
pub fn enabled() -> bool {
    !FLASH.is("0")
}

static FLASH: EnvSwitch = EnvSwitch::new("GRIFFON_FLASH", &["0", "1"]);
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
static FLASH_KERNEL: EnvSwitch = EnvSwitch::new("GRIFFON_FLASH_KERNEL", &["base", "s1", "o4", "n16", "v2"]);
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
static FLASH_STAGES: EnvSwitch = EnvSwitch::new("GRIFFON_FLASH_STAGES", &["1", "2"]);
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
static DECODE_CHUNK: EnvSwitch = EnvSwitch::new("GRIFFON_DECODE_CHUNK", &["32", "64", "128"]);

/// Whether attention over `q` ([B, H, T, D]) runs the fused kernel.
pub fn applies(q: &Tensor) -> bool {
    !crate::nn::differentiable() && kernel_applies(q)
}

/// Whether the kernel can compute attention over `q` (training included: [`crate::attn_grad`]
/// runs it as the forward pass of its op, whose backward is its own).
pub fn kernel_applies(q: &Tensor) -> bool {
    cfg!(feature = "cuda")
        && q.device().is_cuda()
        && matches!(q.dtype(), DType::BF16 | DType::F16)
        && q.rank() == 4
        && HEAD_DIMS.contains(&q.dims()[3])
        && enabled()
}

/// The kernel's view of a tensor: last dimension contiguous, the other strides and the offset
/// multiples of 8 elements (it reads rows in 16-byte pieces); anything else is copied first.
fn kernel_ready(t: &Tensor) -> Result<Tensor> {
    let l = t.layout();
    let st = l.stride();
    let ok = st.len() == 4 && st[3] == 1 && st[..3].iter().all(|s| s % 8 == 0) && l.start_offset() % 8 == 0;
    Ok(if ok { t.clone() } else { t.contiguous()? })
}

/// `softmax(scale * q k^T [soft-capped] [masked]) v` for q [B, H, T, D], k and v [B, KV, S, D]
/// (H a multiple of KV; query head `h` reads key/value head `h / (H / KV)`) -> [B, T, H, D], the
/// heads merged as an output projection reads them. Query row `i` sits at position
/// `causal.offset + i`. Only where [`applies`] holds (an error elsewhere).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, spec: &FlashSpec) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let (kb, kvh, s, kd) = k.dims4()?;
    if v.dims() != k.dims() || kb != b || kd != d || kvh == 0 || h % kvh != 0 {
        return crate::error::invalid(format!(
            "flash attention: q {:?}, k {:?}, v {:?} do not fit [B, H, T, D] / [B, KV, S, D] with H a multiple of KV",
            q.dims(),
            k.dims(),
            v.dims()
        ));
    }
    if !HEAD_DIMS.contains(&d) {
        return crate::error::invalid(format!("flash attention: head size {d} is not one of {HEAD_DIMS:?}"));
    }
    if k.dtype() != q.dtype() || v.dtype() != q.dtype() {
        return crate::error::invalid(format!(
            "flash attention: q, k, v dtypes differ ({:?}, {:?}, {:?})",
            q.dtype(),
            k.dtype(),
            v.dtype()
        ));
    }
    if t == 0 || s == 0 {
        return crate::error::invalid(format!("flash attention: {t} queries over {s} keys"));
    }
    let op = FlashOp { spec: *spec, decode: false };
    Ok(kernel_ready(q)?.apply_op3_no_bwd(&kernel_ready(k)?, &kernel_ready(v)?, &op)?)
}

/// The attention op: the tiled kernel (`decode` false) or the split-KV one for a single query row.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct FlashOp {
    spec: FlashSpec,
    decode: bool,
}

/// The tiled kernel's variant for head size `d`, as the suffix of its name. Default (measured on
/// the H100 in session 10, docs/PERFORMANCE.md): `o4` for head sizes 32-128 (at most 128
/// registers, 4 blocks per SM: the 1022 px vision encoder 27.9 -> 26.1 ms) and `n16` for 256
/// (16-key tiles in two stages: Gemma-2-9B's prefill 75.7 -> 71.8 ms). `GRIFFON_FLASH_KERNEL`
/// picks another: `base` the two-stage kernels of session 8, `s1` the single-stage ones (also
/// `GRIFFON_FLASH_STAGES=1`; 32-128), `v2` K fragments by ldmatrix and unmasked full tiles (all
/// sizes; slower: 28.9 ms). A variant the head size lacks: the base kernel.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn kernel_suffix(d: usize) -> &'static str {
    let v = FLASH_KERNEL.get().or(FLASH_STAGES.is("1").then_some("s1"));
    match (v, d) {
        (Some("s1"), 32 | 64 | 128) => "_s1",
        (Some("o4") | None, 32 | 64 | 128) => "_o4",
        (Some("n16") | None, 256) => "_n16",
        (Some("v2"), _) => "_v2",
        _ => "",
    }
}

/// Keys per chunk of the decode kernel: 64 (session 10 on the H100: 90.1 tokens/s against 86.7
/// with 128 and 88.4 with 32, twice the blocks of 128 for the card); `GRIFFON_DECODE_CHUNK=32|128`
/// for comparison.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn decode_chunk() -> usize {
    match DECODE_CHUNK.get() {
        Some("32") => 32,
        Some("128") => 128,
        _ => 64,
    }
}

/// Query heads per key/value head the decode kernel handles (`DECODE_MAX_REP`).
pub const DECODE_MAX_REP: usize = 8;

/// One decoding step's attention: q [B, H, 1, D] over k, v [B, KV, S, D] with the causal mask of
/// `spec` (the query at position `offset`) -> [B, 1, H, D]. Split-KV ("flash-decoding"): chunks
/// of 128 keys scored in parallel, then merged; two kernels instead of the composed path's seven
/// (scores, scale, three for soft-capping, softmax, product). Where [`applies`] holds, with
/// H / KV at most [`DECODE_MAX_REP`].
pub fn decode(q: &Tensor, k: &Tensor, v: &Tensor, spec: &FlashSpec) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let (kb, kvh, s, kd) = k.dims4()?;
    if t != 1 || v.dims() != k.dims() || kb != b || kd != d || kvh == 0 || h % kvh != 0 || h / kvh > DECODE_MAX_REP {
        return crate::error::invalid(format!(
            "decode attention: q {:?}, k {:?}, v {:?} (one query row, H a multiple of KV, at most {DECODE_MAX_REP} per kv head)",
            q.dims(),
            k.dims(),
            v.dims()
        ));
    }
    if !HEAD_DIMS.contains(&d) || s == 0 || spec.causal.is_none() {
        return crate::error::invalid(format!("decode attention: head size {d}, {s} keys, causal {:?}", spec.causal));
    }
    let op = FlashOp { spec: *spec, decode: true };
    Ok(kernel_ready(q)?.apply_op3_no_bwd(&kernel_ready(k)?, &kernel_ready(v)?, &op)?)
}

/// Head sizes of the backward kernels (the shared tiles of larger heads exceed 48 KB).
pub const BWD_HEAD_DIMS: [usize; 2] = [32, 64];

static ATTN_BWD: EnvSwitch = EnvSwitch::new("GRIFFON_ATTN_BWD", &["composed", "flash"]);

/// Whether training's attention op takes the backward kernels ([`attention_backward`]) where
/// they fit: the default since session 14 (checked on the H100 against autograd, bf16 rel
/// 7.52e-3 at most, and 54 against 40 samples/s of a 1022 px training step: docs/PERFORMANCE.md);
/// `GRIFFON_ATTN_BWD=composed` keeps the op's composed backward.
pub fn backward_requested() -> bool {
    !ATTN_BWD.is("composed")
}

/// Whether [`attention_backward`] can take q (a GPU build, q bf16 / f16 on the GPU, [B, H, T, D]
/// with D in [`BWD_HEAD_DIMS`]).
pub fn backward_fits(q: &Tensor) -> bool {
    cfg!(feature = "cuda")
        && q.device().is_cuda()
        && matches!(q.dtype(), DType::BF16 | DType::F16)
        && q.rank() == 4
        && BWD_HEAD_DIMS.contains(&q.dims()[3])
}

/// The gradients of [`attention`] for the output gradient `grad` given the forward's output
/// `out` (both [B, T, H * D], heads merged): (dq, dk, dv) in q's dtype, by the kernels
/// `flash_bwd_prep` / `flash_bwd` (FlashAttention-2's backward; kernels/flash_attn.cu) without
/// any score-sized tensor. Where [`backward_fits`] holds.
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    grad: &Tensor,
    spec: &FlashSpec,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, h, t, d) = q.dims4()?;
    let (kb, kvh, s, kd) = k.dims4()?;
    if v.dims() != k.dims() || kb != b || kd != d || kvh == 0 || h % kvh != 0 || !BWD_HEAD_DIMS.contains(&d) {
        return crate::error::invalid(format!(
            "flash attention backward: q {:?}, k {:?}, v {:?} (head size {BWD_HEAD_DIMS:?}, H a multiple of KV)",
            q.dims(),
            k.dims(),
            v.dims()
        ));
    }
    if out.elem_count() != b * t * h * d || grad.elem_count() != b * t * h * d {
        return crate::error::invalid(format!(
            "flash attention backward: output {:?} / gradient {:?} are not [{b}, {t}, {}]",
            out.dims(),
            grad.dims(),
            h * d
        ));
    }
    if let Some(c) = spec.causal {
        if c.offset + t > s {
            return crate::error::invalid(format!(
                "flash attention backward: {t} queries at offset {} over {s} keys",
                c.offset
            ));
        }
    }
    let (q, k, v) = (kernel_ready(q)?, kernel_ready(k)?, kernel_ready(v)?);
    let out = out.reshape((b, t, h * d))?.contiguous()?;
    let grad = grad.reshape((b, t, h * d))?.contiguous()?;
    let stats = q.apply_op3_no_bwd(&k, &k, &BwdPrepOp { spec: *spec, out, grad: grad.clone() })?;
    let acc = q.apply_op3_no_bwd(&k, &v, &BwdOp { spec: *spec, grad, stats })?;
    let (nq, nk) = (b * h * t * d, b * kvh * s * d);
    let scale = spec.scale as f64;
    let dt = q.dtype();
    let dq = (acc.narrow(0, 0, nq)?.reshape((b, h, t, d))? * scale)?.to_dtype(dt)?;
    let dk = (acc.narrow(0, nq, nk)?.reshape((b, kvh, s, d))? * scale)?.to_dtype(dt)?;
    let dv = acc.narrow(0, nq + nk, nk)?.reshape((b, kvh, s, d))?.to_dtype(dt)?;
    Ok((dq, dk, dv))
}

/// The backward's first kernel: inputs q, k (and k as an unread third); the forward's output and
/// its gradient ride along.
/// Output: lse then dd, f32 [2 * B * H * T].
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct BwdPrepOp {
    spec: FlashSpec,
    out: Tensor,
    grad: Tensor,
}

// the third input is k again, unread (one op shape for every CUDA-only op)
cuda_only_op3!(BwdPrepOp, "griffon-flash-attention-bwd-prep", |op, q, ql, k, kl, _k2, _k2l| cuda::backward_prep(
    op,
    (q, ql),
    (k, kl)
));

/// The backward's main kernel: inputs q, k, v; the output gradient and the prepared statistics
/// ride along. Output: dq, dk, dv (before the scale for dq / dk), f32, flat.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct BwdOp {
    spec: FlashSpec,
    grad: Tensor,
    stats: Tensor,
}

cuda_only_op3!(BwdOp, "griffon-flash-attention-bwd", |op, q, ql, k, kl, v, vl| cuda::backward(
    op,
    (q, ql),
    (k, kl),
    (v, vl)
));

cuda_only_op3!(FlashOp, "griffon-flash-attention", |op, q, ql, k, kl, v, vl| if op.decode {
    cuda::decode(&op.spec, q, ql, k, kl, v, vl)
} else {
    cuda::forward(&op.spec, q, ql, k, kl, v, vl)
});

#[cfg(feature = "cuda")]
mod cuda {
    use super::{BwdOp, BwdPrepOp, FlashSpec};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CudaStorage, DType, Layout, Shape};
    use half::{bf16, f16};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/flash_attn.ptx"));
    /// Query rows per block (4 warps of 16), as `BM` in the kernel.
    const BLOCK_ROWS: usize = 64;

    /// `Params` of the kernel, field for field.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Params {
        qsb: i64,
        qsh: i64,
        qsr: i64,
        ksb: i64,
        ksh: i64,
        ksr: i64,
        vsb: i64,
        vsh: i64,
        vsr: i64,
        b: i32,
        h: i32,
        kv: i32,
        t: i32,
        s: i32,
        scale: f32,
        softcap: f32,
        causal: i32,
        offset: i32,
        window: i32,
    }
    // SAFETY: plain old data with the kernel's C layout.
    unsafe impl DeviceRepr for Params {}

    fn int(x: usize, what: &str) -> candle_core::Result<i32> {
        i32::try_from(x).map_err(|_| candle_core::Error::Msg(format!("flash attention: {what} {x} exceeds i32")))
    }

    /// The kernels' parameters of a call (strides and shapes checked).
    fn params(spec: &FlashSpec, ql: &Layout, kl: &Layout, vl: &Layout) -> candle_core::Result<Params> {
        let (b, h, t, _) = ql.shape().dims4()?;
        let (_, kvh, s, _) = kl.shape().dims4()?;
        for (name, l) in [("q", ql), ("k", kl), ("v", vl)] {
            let st = l.stride();
            if st[3] != 1 || st[..3].iter().any(|x| x % 8 != 0) || l.start_offset() % 8 != 0 {
                candle_core::bail!(
                    "flash attention: {name} has strides {st:?} / offset {} (needs a unit last stride, others multiples of 8)",
                    l.start_offset()
                );
            }
        }
        let (causal, offset, window) = match spec.causal {
            Some(c) => (1, int(c.offset, "offset")?, int(c.window.unwrap_or(0), "window")?),
            None => (0, 0, 0),
        };
        let (qs, ks, vs) = (ql.stride(), kl.stride(), vl.stride());
        let params = Params {
            qsb: qs[0] as i64,
            qsh: qs[1] as i64,
            qsr: qs[2] as i64,
            ksb: ks[0] as i64,
            ksh: ks[1] as i64,
            ksr: ks[2] as i64,
            vsb: vs[0] as i64,
            vsh: vs[1] as i64,
            vsr: vs[2] as i64,
            b: int(b, "batch")?,
            h: int(h, "heads")?,
            kv: int(kvh, "kv heads")?,
            t: int(t, "queries")?,
            s: int(s, "keys")?,
            scale: spec.scale,
            softcap: spec.softcap.unwrap_or(0.0),
            causal,
            offset,
            window,
        };
        Ok(params)
    }

    pub(super) fn forward(
        spec: &FlashSpec,
        q: &CudaStorage,
        ql: &Layout,
        k: &CudaStorage,
        kl: &Layout,
        v: &CudaStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (b, h, t, d) = ql.shape().dims4()?;
        let params = params(spec, ql, kl, vl)?;
        let cfg = LaunchConfig {
            grid_dim: (t.div_ceil(BLOCK_ROWS) as u32, h as u32, b as u32),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let dev = q.device().clone();
        let n_out = b * t * h * d;
        let io = ((q, ql), (k, kl), (v, vl));
        let storage = match q.dtype() {
            DType::BF16 => CudaStorage::wrap_cuda_slice(launch::<bf16>(&dev, "bf16", d, io, n_out, &params, cfg)?, dev),
            DType::F16 => CudaStorage::wrap_cuda_slice(launch::<f16>(&dev, "f16", d, io, n_out, &params, cfg)?, dev),
            other => candle_core::bail!("flash attention: dtype {other:?} (bf16 or f16 only)"),
        };
        Ok((storage, Shape::from((b, t, h, d))))
    }

    type Io<'a> = ((&'a CudaStorage, &'a Layout), (&'a CudaStorage, &'a Layout), (&'a CudaStorage, &'a Layout));

    fn launch<T: CudaDType + DeviceRepr>(
        dev: &candle_core::CudaDevice,
        ty: &str,
        d: usize,
        ((q, ql), (k, kl), (v, vl)): Io<'_>,
        n_out: usize,
        params: &Params,
        cfg: LaunchConfig,
    ) -> candle_core::Result<candle_core::cuda_backend::cudarc::driver::CudaSlice<T>> {
        let name = format!("flash_fwd_{ty}_d{d}{}", super::kernel_suffix(d));
        let func = dev.get_or_load_custom_func(&name, "griffon_flash_attn", PTX)?;
        let qv = q.as_cuda_slice::<T>()?.slice(ql.start_offset()..);
        let kv = k.as_cuda_slice::<T>()?.slice(kl.start_offset()..);
        let vv = v.as_cuda_slice::<T>()?.slice(vl.start_offset()..);
        // SAFETY: every element is written by the kernel (each output row by its warp).
        let out = unsafe { dev.alloc::<T>(n_out)? };
        let mut builder = func.builder();
        builder.arg(&qv);
        builder.arg(&kv);
        builder.arg(&vv);
        builder.arg(&out);
        builder.arg(params);
        // SAFETY: the arguments match the kernel's signature; shapes checked by the caller.
        unsafe { builder.launch(cfg) }.w()?;
        Ok(out)
    }

    /// `BwdIo` of the backward kernels: strides (batch, head, row) of O and dO, [B, T, H, D].
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct BwdIo {
        osb: i64,
        osh: i64,
        osr: i64,
        gsb: i64,
        gsh: i64,
        gsr: i64,
    }
    // SAFETY: plain old data with the kernel's C layout.
    unsafe impl DeviceRepr for BwdIo {}

    /// Strides of a contiguous [B, T, H * D] tensor viewed as [B, T, H, D] (both O and dO).
    fn bwd_io(t: usize, h: usize, d: usize) -> BwdIo {
        let (b, hh, r) = ((t * h * d) as i64, d as i64, (h * d) as i64);
        BwdIo { osb: b, osh: hh, osr: r, gsb: b, gsh: hh, gsr: r }
    }

    use crate::fused::cuda::{carried, cuda_of, suffix as type_name};

    const OUT: &str = "flash attention backward: the forward's output";
    const GRAD: &str = "flash attention backward: the output gradient";
    const STATS: &str = "flash attention backward: the statistics";

    pub(super) fn backward_prep(
        op: &BwdPrepOp,
        (q, ql): (&CudaStorage, &Layout),
        (k, kl): (&CudaStorage, &Layout),
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (b, h, t, d) = ql.shape().dims4()?;
        let params = params(&op.spec, ql, kl, kl)?;
        let io = bwd_io(t, h, d);
        let (og, ooff) = carried(&op.out, OUT)?;
        let (gg, goff) = carried(&op.grad, GRAD)?;
        let dev = q.device().clone();
        let n = b * h * t;
        let cfg = LaunchConfig {
            grid_dim: (t.div_ceil(BLOCK_ROWS) as u32, h as u32, b as u32),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let ty = type_name(q.dtype())?;
        fn go<T: CudaDType + DeviceRepr>(
            dev: &candle_core::CudaDevice,
            name: &str,
            (q, ql): (&CudaStorage, &Layout),
            (k, kl): (&CudaStorage, &Layout),
            (o, ooff): (&CudaStorage, usize),
            (g, goff): (&CudaStorage, usize),
            n: usize,
            (params, io): (&Params, &BwdIo),
            cfg: LaunchConfig,
        ) -> candle_core::Result<candle_core::cuda_backend::cudarc::driver::CudaSlice<f32>> {
            let func = dev.get_or_load_custom_func(name, "griffon_flash_attn", PTX)?;
            let qv = q.as_cuda_slice::<T>()?.slice(ql.start_offset()..);
            let kv = k.as_cuda_slice::<T>()?.slice(kl.start_offset()..);
            let ov = o.as_cuda_slice::<T>()?.slice(ooff..);
            let gv = g.as_cuda_slice::<T>()?.slice(goff..);
            let stats = dev.alloc_zeros::<f32>(2 * n)?;
            {
                let (lse, dd) = (stats.slice(..n), stats.slice(n..));
                let mut builder = func.builder();
                builder.arg(&qv);
                builder.arg(&kv);
                builder.arg(&ov);
                builder.arg(&gv);
                builder.arg(&lse);
                builder.arg(&dd);
                builder.arg(params);
                builder.arg(io);
                // SAFETY: the arguments match the kernel's signature; shapes checked by the caller.
                unsafe { builder.launch(cfg) }.w()?;
            }
            Ok(stats)
        }
        let name = format!("flash_bwd_prep_{ty}_d{d}");
        let (o, g) = ((cuda_of(&og, OUT)?, ooff), (cuda_of(&gg, GRAD)?, goff));
        let stats = match q.dtype() {
            DType::BF16 => go::<bf16>(&dev, &name, (q, ql), (k, kl), o, g, n, (&params, &io), cfg)?,
            _ => go::<f16>(&dev, &name, (q, ql), (k, kl), o, g, n, (&params, &io), cfg)?,
        };
        Ok((CudaStorage::wrap_cuda_slice(stats, dev), Shape::from(2 * n)))
    }

    pub(super) fn backward(
        op: &BwdOp,
        (q, ql): (&CudaStorage, &Layout),
        (k, kl): (&CudaStorage, &Layout),
        (v, vl): (&CudaStorage, &Layout),
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (b, h, t, d) = ql.shape().dims4()?;
        let (_, kvh, s, _) = kl.shape().dims4()?;
        let params = params(&op.spec, ql, kl, vl)?;
        let io = bwd_io(t, h, d);
        let (gg, goff) = carried(&op.grad, GRAD)?;
        let (sg, soff) = carried(&op.stats, STATS)?;
        if op.stats.dtype() != DType::F32 || op.stats.elem_count() != 2 * b * h * t {
            candle_core::bail!("flash attention backward: statistics {:?} {:?}", op.stats.dims(), op.stats.dtype());
        }
        let dev = q.device().clone();
        let (n, nq, nk) = (b * h * t, b * h * t * d, b * kvh * s * d);
        let cfg = LaunchConfig {
            grid_dim: (s.div_ceil(BLOCK_ROWS) as u32, kvh as u32, b as u32),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let ty = type_name(q.dtype())?;
        type In<'a> = (&'a CudaStorage, &'a Layout);
        fn go<T: CudaDType + DeviceRepr>(
            dev: &candle_core::CudaDevice,
            name: &str,
            (q, k, v): (In<'_>, In<'_>, In<'_>),
            (g, goff): (&CudaStorage, usize),
            (st, soff): (&CudaStorage, usize),
            (n, nq, nk): (usize, usize, usize),
            (params, io): (&Params, &BwdIo),
            cfg: LaunchConfig,
        ) -> candle_core::Result<candle_core::cuda_backend::cudarc::driver::CudaSlice<f32>> {
            let func = dev.get_or_load_custom_func(name, "griffon_flash_attn", PTX)?;
            let qv = q.0.as_cuda_slice::<T>()?.slice(q.1.start_offset()..);
            let kv = k.0.as_cuda_slice::<T>()?.slice(k.1.start_offset()..);
            let vv = v.0.as_cuda_slice::<T>()?.slice(v.1.start_offset()..);
            let gv = g.as_cuda_slice::<T>()?.slice(goff..);
            let stats = st.as_cuda_slice::<f32>()?;
            let (lse, dd) = (stats.slice(soff..soff + n), stats.slice(soff + n..soff + 2 * n));
            // dq is summed over key blocks with atomics: zeroed first
            let acc = dev.alloc_zeros::<f32>(nq + 2 * nk)?;
            {
                let (dq, dk, dv) = (acc.slice(..nq), acc.slice(nq..nq + nk), acc.slice(nq + nk..));
                let mut builder = func.builder();
                builder.arg(&qv);
                builder.arg(&kv);
                builder.arg(&vv);
                builder.arg(&gv);
                builder.arg(&lse);
                builder.arg(&dd);
                builder.arg(&dq);
                builder.arg(&dk);
                builder.arg(&dv);
                builder.arg(params);
                builder.arg(io);
                // SAFETY: the arguments match the kernel's signature; shapes checked by the caller.
                unsafe { builder.launch(cfg) }.w()?;
            }
            Ok(acc)
        }
        let name = format!("flash_bwd_{ty}_d{d}");
        let (g, st) = ((cuda_of(&gg, GRAD)?, goff), (cuda_of(&sg, STATS)?, soff));
        let io3 = ((q, ql), (k, kl), (v, vl));
        let acc = match q.dtype() {
            DType::BF16 => go::<bf16>(&dev, &name, io3, g, st, (n, nq, nk), (&params, &io), cfg)?,
            _ => go::<f16>(&dev, &name, io3, g, st, (n, nq, nk), (&params, &io), cfg)?,
        };
        Ok((CudaStorage::wrap_cuda_slice(acc, dev), Shape::from(nq + 2 * nk)))
    }

    /// Threads per block of the decode kernel (`DECODE_THREADS`).
    const DECODE_THREADS: u32 = 256;

    pub(super) fn decode(
        spec: &FlashSpec,
        q: &CudaStorage,
        ql: &Layout,
        k: &CudaStorage,
        kl: &Layout,
        v: &CudaStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (b, h, t, d) = ql.shape().dims4()?;
        let (_, kvh, s, _) = kl.shape().dims4()?;
        let params = params(spec, ql, kl, vl)?;
        let chunk = super::decode_chunk();
        let nc = s.div_ceil(chunk);
        let dev = q.device().clone();
        let ty = match q.dtype() {
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            other => candle_core::bail!("decode attention: dtype {other:?} (bf16 or f16 only)"),
        };
        // SAFETY: every element is written by the partial kernel before the combine reads it.
        let ws_o = unsafe { dev.alloc::<f32>(b * h * nc * d)? };
        let ws_ml = unsafe { dev.alloc::<f32>(b * h * nc * 2)? };
        {
            let variant = if chunk == 128 { String::new() } else { format!("_c{chunk}") };
            let func =
                dev.get_or_load_custom_func(&format!("decode_partial_{ty}_d{d}{variant}"), "griffon_flash_attn", PTX)?;
            let cfg = LaunchConfig {
                grid_dim: ((b * kvh) as u32, nc as u32, 1),
                block_dim: (DECODE_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let nc32 = nc as i32;
            macro_rules! launch_partial {
                ($t:ty) => {{
                    let qv = q.as_cuda_slice::<$t>()?.slice(ql.start_offset()..);
                    let kv = k.as_cuda_slice::<$t>()?.slice(kl.start_offset()..);
                    let vv = v.as_cuda_slice::<$t>()?.slice(vl.start_offset()..);
                    let mut builder = func.builder();
                    builder.arg(&qv);
                    builder.arg(&kv);
                    builder.arg(&vv);
                    builder.arg(&ws_o);
                    builder.arg(&ws_ml);
                    builder.arg(&params);
                    builder.arg(&nc32);
                    // SAFETY: the arguments match the kernel's signature; shapes checked above.
                    unsafe { builder.launch(cfg) }.w()?;
                }};
            }
            match q.dtype() {
                DType::BF16 => launch_partial!(bf16),
                _ => launch_partial!(f16),
            }
        }
        let func = dev.get_or_load_custom_func(&format!("decode_combine_{ty}"), "griffon_flash_attn", PTX)?;
        let cfg = LaunchConfig { grid_dim: ((b * h) as u32, 1, 1), block_dim: (d as u32, 1, 1), shared_mem_bytes: 0 };
        let (nc32, d32) = (nc as i32, d as i32);
        macro_rules! launch_combine {
            ($t:ty) => {{
                // SAFETY: every element is written by the combine kernel.
                let out = unsafe { dev.alloc::<$t>(b * h * d)? };
                let mut builder = func.builder();
                builder.arg(&ws_o);
                builder.arg(&ws_ml);
                builder.arg(&out);
                builder.arg(&nc32);
                builder.arg(&d32);
                // SAFETY: the arguments match the kernel's signature.
                unsafe { builder.launch(cfg) }.w()?;
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            }};
        }
        let storage = match q.dtype() {
            DType::BF16 => launch_combine!(bf16),
            _ => launch_combine!(f16),
        };
        Ok((storage, Shape::from((b, t, h, d))))
    }
}

/// The composed attention the kernel replaces, in f32 ([`crate::attn_grad::composed_reference`]
/// on f32 copies of the inputs); [B, T, H, D] like [`attention`]. The reference of
/// [`check_against_composed`].
pub fn composed_f32(q: &Tensor, k: &Tensor, v: &Tensor, spec: &FlashSpec) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let f = |x: &Tensor| x.to_dtype(DType::F32);
    let spec = crate::attn_grad::GradSpec { scale: spec.scale, softcap: spec.softcap, causal: spec.causal };
    Ok(crate::attn_grad::composed_reference(&f(q)?, &f(k)?, &f(v)?, &spec)?.reshape((b, t, h, d))?)
}

/// The cases of [`check_against_composed`]: (heads, kv heads, queries, keys, head size, soft-cap,
/// causal mask). Prefill / vision shapes take the tiled kernel, one-query rows the decode kernel.
#[allow(clippy::type_complexity)]
pub const CHECK_CASES: &[(usize, usize, usize, usize, usize, Option<f32>, Option<Causal>)] = &[
    // (heads, kv heads, queries, keys, head dim, softcap, causal)
    (4, 4, 300, 300, 64, None, None),
    (2, 2, 37, 37, 32, None, None),
    (4, 2, 100, 100, 128, Some(50.0), Some(Causal { offset: 0, window: None })),
    (8, 4, 70, 90, 256, Some(50.0), Some(Causal { offset: 20, window: None })),
    (4, 4, 130, 130, 256, None, Some(Causal { offset: 0, window: Some(48) })),
    (2, 1, 1, 333, 128, Some(30.0), Some(Causal { offset: 332, window: None })),
    (16, 8, 1, 1429, 256, Some(50.0), Some(Causal { offset: 1428, window: None })),
    (16, 8, 1, 1000, 256, Some(50.0), Some(Causal { offset: 999, window: Some(300) })),
    (40, 40, 1, 77, 128, None, Some(Causal { offset: 76, window: None })),
    (4, 4, 1, 300, 64, None, Some(Causal { offset: 150, window: None })),
    (2, 2, 1, 40, 32, None, Some(Causal { offset: 39, window: None })),
    (16, 16, 1025, 1025, 64, None, None),
];

/// One comparison of the kernel against [`composed_f32`].
#[derive(Debug, Clone)]
pub struct FlashCheck {
    pub case: String,
    /// max |kernel - composed| / max |composed|
    pub rel_err: f64,
    pub tolerance: f64,
}

impl FlashCheck {
    pub fn passed(&self) -> bool {
        self.rel_err.is_finite() && self.rel_err <= self.tolerance
    }
}

/// Runs the kernel on random bf16 inputs on `device` for every head size, with and without the
/// causal mask, soft-capping, a sliding window, grouped-query heads, a cache offset, lengths that
/// are not multiples of the tiles and strided q / k / v views, and compares each with the f32
/// composed attention of the same (bf16-rounded) inputs. Tolerance 2e-2 of the largest output:
/// the probabilities are rounded to bf16 before the product with v, and the output itself is bf16.
pub fn check_against_composed(device: &candle_core::Device) -> Result<Vec<FlashCheck>> {
    let mut out = Vec::new();
    for (i, &(h, kvh, t, s, d, softcap, causal)) in CHECK_CASES.iter().enumerate() {
        let seed = |n: usize, shape: (usize, usize, usize, usize)| -> Result<Tensor> {
            // deterministic inputs (no RNG state of the device): a smooth pseudo-random pattern
            let len = shape.0 * shape.1 * shape.2 * shape.3;
            let vals: Vec<f32> = (0..len)
                .map(|j| {
                    let x = ((j as u64 + 1) * 2654435761 + n as u64 * 40503 + i as u64 * 97) % 10007;
                    (x as f32 / 10007.0 - 0.5) * 4.0
                })
                .collect();
            Ok(Tensor::from_vec(vals, shape, device)?.to_dtype(DType::BF16)?)
        };
        // q as a strided view (every other head of a wider tensor) to exercise the strides
        let q = seed(1, (1, 2 * h, t, d))?.narrow(1, 0, h)?;
        let k = seed(2, (1, kvh, s, d))?;
        let v = seed(3, (1, kvh, s, d))?;
        let spec = FlashSpec { scale: 1.0 / (d as f32).sqrt(), softcap, causal };
        let decode_kernel = t == 1 && h / kvh <= DECODE_MAX_REP;
        let got = if decode_kernel { decode(&q, &k, &v, &spec)? } else { attention(&q, &k, &v, &spec)? };
        let got = got.to_dtype(DType::F32)?;
        let want = composed_f32(&q, &k, &v, &spec)?;
        let err = (got - &want)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? as f64;
        let scale = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? as f64;
        out.push(FlashCheck {
            case: format!(
                "{}heads {h}/{kvh}, {t} queries x {s} keys, head dim {d}, softcap {softcap:?}, causal {causal:?}",
                if decode_kernel { "decode: " } else { "" }
            ),
            rel_err: err / scale.max(1e-12),
            tolerance: 2e-2,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The backward kernels' entry checks shapes first, with errors naming them, and refuses the
    /// CPU (its kernels run on the GPU only; the CPU's training attention has its own path).
    #[test]
    fn backward_kernel_inputs_are_checked() {
        let dev = Device::Cpu;
        let z = |shape: (usize, usize, usize, usize)| Tensor::zeros(shape, DType::BF16, &dev).unwrap();
        let spec = FlashSpec { scale: 0.125, softcap: None, causal: None };
        let (q, k) = (z((1, 2, 5, 64)), z((1, 2, 5, 64)));
        let o = Tensor::zeros((1, 5, 128), DType::BF16, &dev).unwrap();
        let e = attention_backward(&z((1, 2, 5, 128)), &z((1, 2, 5, 128)), &z((1, 2, 5, 128)), &o, &o, &spec);
        assert!(e.unwrap_err().to_string().contains("head size"));
        let e = attention_backward(&q, &k, &k, &o.narrow(1, 0, 4).unwrap(), &o, &spec).unwrap_err();
        assert!(e.to_string().contains("are not [1, 5, 128]"), "{e}");
        let late = FlashSpec { causal: Some(Causal { offset: 1, window: None }), ..spec };
        let e = attention_backward(&q, &k, &k, &o, &o, &late).unwrap_err();
        assert!(e.to_string().contains("at offset 1"), "{e}");
        let e = attention_backward(&q, &k, &k, &o, &o, &spec).unwrap_err();
        assert!(e.to_string().contains("CUDA only"), "{e}");
        assert!(!backward_fits(&q), "never on the CPU");
    }

    /// The reference of the GPU check, [`composed_f32`], against the CPU's fused attention kernel
    /// (itself held to the transformers fixtures by the parity tests) on every case of the check:
    /// the same masks, grouped-query mapping, soft-capping and output layout. f32, 1e-5 relative.
    #[test]
    fn composed_reference_matches_the_cpu_kernel() {
        for (i, &(h, kvh, t, s, d, softcap, causal)) in CHECK_CASES.iter().enumerate() {
            // fewer heads to keep the CPU run short, the same grouping (query heads per kv head)
            let kvh = kvh.min(2);
            let h = kvh * (h / CHECK_CASES[i].1);
            let r = |n: u64, shape: (usize, usize, usize, usize)| {
                let len = shape.0 * shape.1 * shape.2 * shape.3;
                let v: Vec<f32> =
                    (0..len).map(|j| (((j as u64 + 3) * 2654435761 + n * 977) % 1009) as f32 / 504.5 - 1.0).collect();
                Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
            };
            let (q, k, v) = (r(1, (1, h, t, d)), r(2, (1, kvh, s, d)), r(3, (1, kvh, s, d)));
            let spec = FlashSpec { scale: 1.0 / (d as f32).sqrt(), softcap, causal };
            let got = composed_f32(&q, &k, &v, &spec).unwrap().reshape((1, t, h * d)).unwrap();
            let op = crate::cpu_kernels::Attention { scale: spec.scale, softcap, causal };
            let want = q.apply_op3_no_bwd(&k, &v, &op).unwrap();
            let err = (&got - &want)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(err <= 1e-5 * scale, "case {i}: {err} vs scale {scale}");
        }
    }

    /// The GPU kernels never claim CPU tensors (the CPU has its own), nor training.
    #[test]
    fn gpu_kernels_do_not_apply_on_the_cpu() {
        for dt in [DType::BF16, DType::F16, DType::F32] {
            let x = Tensor::zeros((1, 2, 3, 64), dt, &Device::Cpu).unwrap();
            assert!(!applies(&x));
            assert!(!crate::fused::applies(&x));
        }
    }

    /// On the CPU the ops refuse to run with an error naming them (never a silent wrong result).
    #[test]
    fn cpu_tensors_are_refused_with_an_error() {
        let q = Tensor::zeros((1, 2, 3, 64), DType::F32, &Device::Cpu).unwrap();
        let spec = FlashSpec { scale: 1.0, softcap: None, causal: None };
        let e = attention(&q, &q, &q, &spec).unwrap_err().to_string();
        assert!(e.contains("CUDA only"), "{e}");
        let e = attention(&q, &q.narrow(3, 0, 32).unwrap(), &q, &spec).unwrap_err().to_string();
        assert!(e.contains("do not fit"), "{e}");
    }
}

//! Fused kernels for bf16 / f16 inference on NVIDIA GPUs (`model/kernels/fused.cu`, compiled to
//! PTX by `build.rs` in the `cuda` build): a norm of a row in one pass with f32 parameters, the
//! gated activation `act(gate) * up` read straight from the fused gate/up projection, and a bias
//! plus activation applied in place after a matmul. Each replaces a chain of candle kernels that
//! session 8's ncu profile found costly (docs/PERFORMANCE.md): the norms' f32 round trip, the
//! product over strided views, the broadcast bias add.
//!
//! [`applies`] says whether a tensor takes them (a CUDA tensor of bf16 / f16, outside training,
//! not turned off by `GRIFFON_FUSED=0`); the composed forms stay the reference and the fallback.
//! `griffon selfcheck --device cuda` compares the two on random inputs ([`check_against_composed`]).

use candle_core::{DType, Tensor, D};

use crate::error::Result;
use crate::nn::Act;

/// A `GRIFFON_*` switch (the GPU kernels of [`crate::flash`] and this module, training's
/// attention op, the trainer's profiling), read from the environment once per process (the
/// kernels ask at every launch).
pub struct EnvSwitch {
    name: &'static str,
    /// The values it knows; `None`: a positive integer.
    accepted: Option<&'static [&'static str]>,
    value: std::sync::OnceLock<Option<String>>,
}

impl EnvSwitch {
    pub const fn new(name: &'static str, accepted: &'static [&'static str]) -> Self {
        Self { name, accepted: Some(accepted), value: std::sync::OnceLock::new() }
    }

    /// A switch whose value is a positive integer.
    pub const fn number(name: &'static str) -> Self {
        Self { name, accepted: None, value: std::sync::OnceLock::new() }
    }

    /// The variable's value, trimmed; `None` when unset (or not unicode), or when the value is
    /// not one it knows: then a warning naming the variable and its values is printed once and
    /// the default applies (a misspelt switch must not pass for a measured variant).
    pub fn get(&self) -> Option<&str> {
        self.value
            .get_or_init(|| {
                let v = std::env::var(self.name).ok()?.trim().to_string();
                let known = match self.accepted {
                    Some(values) => values.contains(&v.as_str()),
                    None => v.parse::<usize>().is_ok_and(|n| n > 0),
                };
                if !known {
                    let want = self.accepted.map(|a| a.join(", ")).unwrap_or_else(|| "a positive integer".into());
                    eprintln!("warning: {}={v:?} is not one of {want}: ignored, the default applies", self.name);
                    return None;
                }
                Some(v)
            })
            .as_deref()
    }

    pub fn is(&self, value: &str) -> bool {
        self.get() == Some(value)
    }
}

static FUSED: EnvSwitch = EnvSwitch::new("GRIFFON_FUSED", &["0", "1"]);
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
static FUSED_VEC: EnvSwitch = EnvSwitch::new("GRIFFON_FUSED_VEC", &["0", "1"]);
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
static NORM: EnvSwitch = EnvSwitch::new("GRIFFON_NORM", &["loop", "regs"]);
static NORM_GEMV: EnvSwitch = EnvSwitch::new("GRIFFON_NORM_GEMV", &["0", "1", "all"]);

/// Whether `GRIFFON_FUSED=0` turned the kernels off.
pub fn enabled() -> bool {
    !FUSED.is("0")
}

/// Whether `x` takes the fused kernels.
pub fn applies(x: &Tensor) -> bool {
    cfg!(feature = "cuda")
        && x.device().is_cuda()
        && matches!(x.dtype(), DType::BF16 | DType::F16)
        && !crate::nn::differentiable()
        && enabled()
}

/// Whether the gated-activation and bias kernels load and store two elements at a time (default;
/// session 10 on the H100: vision 27.9 -> 25.9 ms, prefill 75.7 -> 72.2 ms); `GRIFFON_FUSED_VEC=0`
/// the one-wide kernels.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn two_wide() -> bool {
    !FUSED_VEC.is("0")
}

/// Whether the norm kernel holds a row in registers, one read instead of three (default for rows
/// up to 8192; session 10 on the H100: prefill 75.7 -> 72.5 ms); `GRIFFON_NORM=loop` the
/// three-pass kernel.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn norm_in_registers() -> bool {
    !NORM.is("loop")
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn act_code(act: Option<Act>) -> i32 {
    match act {
        None => 0,
        Some(Act::QuickGelu) => 1,
        Some(Act::GeluErf) => 2,
        Some(Act::GeluTanh) => 3,
        Some(Act::Silu) => 4,
        Some(Act::Relu) => 5,
    }
}

/// RMSNorm (`shift` None, not `centered`) or LayerNorm (`centered`) over the last dimension of x,
/// computed in f32 with the f32 `scale` (and `shift`) and rounded once to x's dtype. Where
/// [`applies`] holds.
pub fn norm(x: &Tensor, scale: &Tensor, shift: Option<&Tensor>, eps: f64, centered: bool) -> Result<Tensor> {
    norm_impl(x, scale, shift, None, eps, centered)
}

/// `residual + rmsnorm(x)` (a post-norm and the residual add that follows it), each rounded to
/// x's dtype as the reference's two bf16 operations are. Where [`applies`] holds.
pub fn rms_norm_add(x: &Tensor, scale: &Tensor, eps: f64, residual: &Tensor) -> Result<Tensor> {
    norm_impl(x, scale, None, Some(residual), eps, false)
}

fn norm_impl(
    x: &Tensor,
    scale: &Tensor,
    shift: Option<&Tensor>,
    residual: Option<&Tensor>,
    eps: f64,
    centered: bool,
) -> Result<Tensor> {
    let c = x.dim(D::Minus1)?;
    if scale.dims() != [c]
        || scale.dtype() != DType::F32
        || shift.is_some_and(|s| s.dims() != [c] || s.dtype() != DType::F32)
    {
        return crate::error::invalid(format!(
            "fused norm: x {:?} needs f32 parameters of [{c}] (scale {:?} {:?})",
            x.dims(),
            scale.dims(),
            scale.dtype()
        ));
    }
    if residual.is_some_and(|r| r.dims() != x.dims() || r.dtype() != x.dtype())
        || (residual.is_some() && shift.is_some())
    {
        return crate::error::invalid(format!(
            "fused norm: the residual does not match x {:?} (or comes with a shift)",
            x.dims()
        ));
    }
    let x = x.contiguous()?;
    // one op of three inputs: the shift, the residual, or (plain RMSNorm) the scale again, unread
    let (third, kind) = match (shift, residual) {
        (Some(b), _) => (b.clone(), Third::Shift),
        (None, Some(r)) => (r.contiguous()?, Third::Residual),
        (None, None) => (scale.clone(), Third::Nothing),
    };
    let op = NormOp { eps: eps as f32, centered, third: kind };
    Ok(x.apply_op3_no_bwd(scale, &third, &op)?)
}

/// What the third input of a [`NormOp`] is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Third {
    Shift,
    Residual,
    /// none: the input is a placeholder the kernel does not read
    Nothing,
}

/// `act(gate) * up` for `gu` [.., 2I] = gate then up (the fused projection's output) -> [.., I];
/// the activation is rounded to gu's dtype before the product, as the reference's two bf16
/// tensors are. Where [`applies`] holds.
pub fn gated_act(gu: &Tensor, act: Act) -> Result<Tensor> {
    let two_i = gu.dim(D::Minus1)?;
    if two_i % 2 != 0 {
        return crate::error::invalid(format!("fused gated activation: last dimension {two_i} is odd"));
    }
    Ok(gu.contiguous()?.apply_op1_no_bwd(&GatedActOp { act })?)
}

/// `act(y + bias)` over the last dimension of y, written into y (a fresh matmul output: nothing
/// else holds it). Where [`applies`] holds.
pub fn bias_act(y: &Tensor, bias: &Tensor, act: Option<Act>) -> Result<Tensor> {
    bias_act_impl(y, bias, act, None)
}

/// `residual + (y + bias)`, each rounded to y's dtype, written into y (a fresh matmul output).
/// Where [`applies`] holds.
pub fn bias_add(y: &Tensor, bias: &Tensor, residual: &Tensor) -> Result<Tensor> {
    bias_act_impl(y, bias, None, Some(residual))
}

fn bias_act_impl(y: &Tensor, bias: &Tensor, act: Option<Act>, residual: Option<&Tensor>) -> Result<Tensor> {
    if residual.is_some_and(|r| r.dims() != y.dims() || r.dtype() != y.dtype()) {
        return crate::error::invalid(format!("fused bias: the residual does not match y {:?}", y.dims()));
    }
    let n = y.dim(D::Minus1)?;
    if bias.dims() != [n] || bias.dtype() != y.dtype() {
        return crate::error::invalid(format!(
            "fused bias: y {:?} {:?} and bias {:?} {:?} do not fit",
            y.dims(),
            y.dtype(),
            bias.dims(),
            bias.dtype()
        ));
    }
    let y = if y.is_contiguous() && y.layout().start_offset() == 0 { y.clone() } else { y.contiguous()? };
    // one op of three inputs: without a residual the bias stands in as the third, unread
    let op = BiasActOp { act, residual: residual.is_some() };
    let third = match residual {
        Some(r) => r.contiguous()?,
        None => bias.clone(),
    };
    y.inplace_op3(bias, &third, &op)?;
    Ok(y)
}

/// The fused q / k / v projection's output `y` [B, T, (H + 2 KV) * D] split into q [B, H, T, D]
/// and k, v [B, KV, T, D] (contiguous views of one buffer), with the rotary embedding of the
/// tables `cos`, `sin` [T, D / 2] applied to q and k (HF `rotate_half` form). Where [`applies`]
/// holds.
pub fn qkv_rope(
    y: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    heads: usize,
    kv_heads: usize,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, t, w) = y.dims3()?;
    let parts = heads + 2 * kv_heads;
    if parts == 0 || w % parts != 0 || (w / parts) % 2 != 0 {
        return crate::error::invalid(format!("fused q/k/v split: width {w} is not {parts} heads of an even size"));
    }
    let d = w / parts;
    if cos.dims() != [t, d / 2] || sin.dims() != [t, d / 2] || cos.dtype() != y.dtype() || sin.dtype() != y.dtype() {
        return crate::error::invalid(format!(
            "fused q/k/v split: rotary tables {:?} / {:?} ({:?}) do not fit {t} positions of head size {d} ({:?})",
            cos.dims(),
            sin.dims(),
            cos.dtype(),
            y.dtype()
        ));
    }
    let op = QkvRopeOp { heads, kv_heads };
    let all = y.contiguous()?.apply_op3_no_bwd(&cos.contiguous()?, &sin.contiguous()?, &op)?;
    let (nq, nk) = (b * heads * t * d, b * kv_heads * t * d);
    let q = all.narrow(0, 0, nq)?.reshape((b, heads, t, d))?;
    let k = all.narrow(0, nq, nk)?.reshape((b, kv_heads, t, d))?;
    let v = all.narrow(0, nq + nk, nk)?.reshape((b, kv_heads, t, d))?;
    Ok((q, k, v))
}

/// Most rows [`norm_matmul`] takes (a decode step of a batch of up to 4).
pub const NORM_MATMUL_MAX_ROWS: usize = 4;
/// Most rows x K of [`norm_matmul`]: its normalized rows live in the 48 KB of shared memory a block
/// gets without opting in (bf16 / f16, beside a small reduction buffer).
const NORM_MATMUL_MAX_ELEMS: usize = 24_000;

/// Whether a decode step's RMSNorms fold into the matmuls that read them ([`norm_matmul`]):
/// `GRIFFON_NORM_GEMV=1` or `all` (variants for measurement, off by default until measured on a
/// card), `x` [.., K] taking the fused kernels with at most [`NORM_MATMUL_MAX_ROWS`] rows and K a
/// multiple of 8.
pub fn norm_matmul_applies(x: &Tensor) -> bool {
    let k = x.dim(D::Minus1).unwrap_or(0);
    let rows = x.elem_count() / k.max(1);
    (NORM_GEMV.is("1") || gemv_everywhere())
        && applies(x)
        && k > 0
        && k % 8 == 0
        && (1..=NORM_MATMUL_MAX_ROWS).contains(&rows)
        && rows * k <= NORM_MATMUL_MAX_ELEMS
}

/// Whether `GRIFFON_NORM_GEMV=all` also gives a decode step's other matmuls (the attention output
/// and down projections) to [`norm_matmul`]'s kernel without a norm, instead of cuBLAS.
pub fn gemv_everywhere() -> bool {
    NORM_GEMV.is("all")
}

/// What [`norm_matmul`]'s pre-norm reads.
pub enum NormInput<'a> {
    /// x is the residual stream itself.
    Stream,
    /// x is a sublayer's output: the stream is `residual + post(x)`, with `post` an RMSNorm (f32
    /// scale, eps) as Gemma-2's post-norms, or nothing (Llama's plain residual add).
    Add { residual: &'a Tensor, post: Option<(&'a Tensor, f64)> },
}

/// `rmsnorm(h) W^T` for `weight` W [N, K] (no bias) in one kernel, with h the stream of `input`
/// (x, or `residual + post(x)`), each step rounded to x's dtype as the reference's bf16 tensors
/// are: y [.., N], and for [`NormInput::Add`] the stream h [.., K] too (the next residual add
/// reads it). RMSNorm with the f32 scale ((1 + w) for Gemma) and eps of `norm`; `None`: `h W^T`.
/// Replaces the separate norm launches of a decode step (docs/PERFORMANCE.md). Where
/// [`norm_matmul_applies`] holds.
pub fn norm_matmul(
    x: &Tensor,
    input: NormInput,
    norm: Option<(&Tensor, f64)>,
    weight: &Tensor,
) -> Result<(Tensor, Option<Tensor>)> {
    let k = x.dim(D::Minus1)?;
    let rows = x.elem_count() / k.max(1);
    let n = weight.dim(0)?;
    let bad_scale = |t: &Tensor| t.dims() != [k] || t.dtype() != DType::F32;
    if k == 0 || k % 8 != 0 || !(1..=NORM_MATMUL_MAX_ROWS).contains(&rows) || rows * k > NORM_MATMUL_MAX_ELEMS {
        return crate::error::invalid(format!(
            "fused norm + matmul: x {:?} needs 1-{NORM_MATMUL_MAX_ROWS} rows of a multiple of 8, at most \
             {NORM_MATMUL_MAX_ELEMS} values in all",
            x.dims()
        ));
    }
    if weight.dims() != [n, k] || weight.dtype() != x.dtype() {
        return crate::error::invalid(format!(
            "fused norm + matmul: weight {:?} {:?} does not fit x {:?} {:?} (needs [N, {k}])",
            weight.dims(),
            weight.dtype(),
            x.dims(),
            x.dtype()
        ));
    }
    let post = match &input {
        NormInput::Add { post: Some((p, e)), .. } => Some(((*p).clone(), *e as f32)),
        _ => None,
    };
    if norm.is_some_and(|(s, _)| bad_scale(s)) || post.as_ref().is_some_and(|(p, _)| bad_scale(p)) {
        return crate::error::invalid(format!("fused norm + matmul: x {:?} needs f32 norm scales of [{k}]", x.dims()));
    }
    let x = x.contiguous()?;
    // the residual, or x again as an unread placeholder
    let (second, add) = match input {
        NormInput::Add { residual, .. } => {
            if residual.dims() != x.dims() || residual.dtype() != x.dtype() {
                return crate::error::invalid(format!(
                    "fused norm + matmul: the residual {:?} does not match x {:?}",
                    residual.dims(),
                    x.dims()
                ));
            }
            (residual.contiguous()?, true)
        }
        NormInput::Stream => (x.clone(), false),
    };
    let op = NormGemvOp { norm: norm.map(|(s, e)| (s.clone(), e as f32)), post, add };
    let flat = x.apply_op3_no_bwd(&second, &weight.contiguous()?, &op)?;
    let mut y_dims = x.dims().to_vec();
    if let Some(last) = y_dims.last_mut() {
        *last = n;
    }
    if add {
        let h = flat.narrow(0, 0, rows * k)?.reshape(x.dims())?;
        let y = flat.narrow(0, rows * k, rows * n)?.reshape(y_dims)?;
        Ok((y, Some(h)))
    } else {
        Ok((flat.reshape(y_dims)?, None))
    }
}

/// [`norm_matmul`]'s op: inputs x, the residual (or x as a placeholder), W; the norm scales ride
/// along. Output: the stream h [rows * K] (with a residual), then y [rows * N], flat.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct NormGemvOp {
    norm: Option<(Tensor, f32)>,
    post: Option<(Tensor, f32)>,
    add: bool,
}

cuda_only_op3!(NormGemvOp, "griffon-fused-norm-gemv", |op, x, xl, r, rl, w, wl| cuda::norm_gemv(
    op,
    (x, xl),
    (r, rl),
    (w, wl)
));

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct QkvRopeOp {
    heads: usize,
    kv_heads: usize,
}

cuda_only_op3!(QkvRopeOp, "griffon-fused-qkv-rope", |op, y, yl, c, cl, s, sl| cuda::qkv_rope(
    op,
    (y, yl),
    (c, cl),
    (s, sl)
));

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct NormOp {
    eps: f32,
    centered: bool,
    third: Third,
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct GatedActOp {
    act: Act,
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct BiasActOp {
    act: Option<Act>,
    /// whether the third input is a residual to add (else a placeholder)
    residual: bool,
}

const CUDA_ONLY: &str = "runs on CUDA only (fused.rs)";

cuda_only_op3!(NormOp, "griffon-fused-norm", |op, x, xl, s, sl, b, bl| cuda::norm(
    op,
    x,
    xl,
    s,
    sl,
    (op.third != Third::Nothing).then_some((b, bl))
));

impl candle_core::CustomOp1 for GatedActOp {
    fn name(&self) -> &'static str {
        "griffon-fused-gated-act"
    }
    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        candle_core::bail!("griffon-fused-gated-act {CUDA_ONLY}")
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        cuda::gated_act(self, x, xl)
    }
}

impl candle_core::InplaceOp3 for BiasActOp {
    fn name(&self) -> &'static str {
        "griffon-fused-bias-act"
    }
    fn cpu_fwd(
        &self,
        _: &mut candle_core::CpuStorage,
        _: &candle_core::Layout,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        candle_core::bail!("griffon-fused-bias-act {CUDA_ONLY}")
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        y: &mut candle_core::CudaStorage,
        yl: &candle_core::Layout,
        b: &candle_core::CudaStorage,
        bl: &candle_core::Layout,
        r: &candle_core::CudaStorage,
        rl: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        cuda::bias_act(self, y, yl, b, bl, self.residual.then_some((r, rl)))
    }
}

#[cfg(feature = "cuda")]
pub(crate) mod cuda {
    use super::{act_code, BiasActOp, GatedActOp, NormGemvOp, NormOp, QkvRopeOp};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CudaDevice, CudaStorage, DType, Layout, Shape};
    use half::{bf16, f16};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));
    const MODULE: &str = "griffon_fused";

    /// The kernels' name suffix of a dtype (bf16 / f16 only); also [`crate::flash`]'s.
    pub(crate) fn suffix(dt: DType) -> candle_core::Result<&'static str> {
        match dt {
            DType::BF16 => Ok("bf16"),
            DType::F16 => Ok("f16"),
            other => candle_core::bail!("fused kernels: dtype {other:?} (bf16 or f16 only)"),
        }
    }

    fn int(x: usize, what: &str) -> candle_core::Result<i32> {
        i32::try_from(x).map_err(|_| candle_core::Error::Msg(format!("fused kernels: {what} {x} exceeds i32")))
    }

    fn contiguous_from_zero(l: &Layout, what: &str) -> candle_core::Result<()> {
        if !l.is_contiguous() {
            candle_core::bail!("fused kernels: {what} must be contiguous (strides {:?})", l.stride());
        }
        Ok(())
    }

    /// Grid for the elementwise kernels: 256 threads over the columns, rows over grid.y.
    fn elementwise_cfg(rows: usize, cols: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (cols.div_ceil(256) as u32, rows.clamp(1, 65535) as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    pub(super) fn norm(
        op: &NormOp,
        x: &CudaStorage,
        xl: &Layout,
        s: &CudaStorage,
        sl: &Layout,
        third: Option<(&CudaStorage, &Layout)>,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (shift, residual) = match op.third {
            super::Third::Shift => (third, None),
            super::Third::Residual => (None, third),
            super::Third::Nothing => (None, None),
        };
        if let Some((_, rl)) = residual {
            contiguous_from_zero(rl, "residual")?;
        }
        contiguous_from_zero(xl, "x")?;
        let dims = xl.shape().dims();
        let c = *dims.last().unwrap_or(&0);
        let rows = xl.shape().elem_count() / c.max(1);
        if c == 0 || rows == 0 {
            candle_core::bail!("fused norm: empty input {dims:?}");
        }
        let dev = x.device().clone();
        let threads = c.div_ceil(8).next_multiple_of(32).clamp(32, 1024) as u32;
        // the register variant holds 8 values per thread: rows up to 8192
        let kernel = if super::norm_in_registers() && c <= 8 * 1024 { "norm_regs" } else { "norm" };
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        let (c32, eps, centered) = (int(c, "row length")?, op.eps, op.centered as i32);
        let sv = s.as_cuda_slice::<f32>()?.slice(sl.start_offset()..);
        let row_stride = c as i64;
        fn go<T: CudaDType + DeviceRepr>(
            dev: &CudaDevice,
            name: &str,
            (x, xl): (&CudaStorage, &Layout),
            sv: &candle_core::cuda_backend::cudarc::driver::CudaView<'_, f32>,
            shift: Option<(&CudaStorage, &Layout)>,
            residual: Option<(&CudaStorage, &Layout)>,
            n: usize,
            args: (i64, i32, f32, i32),
            cfg: LaunchConfig,
        ) -> candle_core::Result<CudaStorage> {
            let func = dev.get_or_load_custom_func(name, MODULE, PTX)?;
            let xv = x.as_cuda_slice::<T>()?.slice(xl.start_offset()..);
            // SAFETY: every element is written by the kernel.
            let out = unsafe { dev.alloc::<T>(n)? };
            let null: u64 = 0;
            let bv = match shift {
                Some((b, bl)) => Some(b.as_cuda_slice::<f32>()?.slice(bl.start_offset()..)),
                None => None,
            };
            let rv = match residual {
                Some((r, rl)) => Some(r.as_cuda_slice::<T>()?.slice(rl.start_offset()..)),
                None => None,
            };
            let mut builder = func.builder();
            builder.arg(&xv);
            builder.arg(&args.0);
            builder.arg(sv);
            match &bv {
                Some(bv) => builder.arg(bv),
                None => builder.arg(&null),
            };
            match &rv {
                Some(rv) => builder.arg(rv),
                None => builder.arg(&null),
            };
            builder.arg(&out);
            builder.arg(&args.1);
            builder.arg(&args.2);
            builder.arg(&args.3);
            // SAFETY: the arguments match the kernel's signature.
            unsafe { builder.launch(cfg) }.w()?;
            Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
        }
        let name = format!("{kernel}_{}", suffix(x.dtype())?);
        let args = (row_stride, c32, eps, centered);
        let n = rows * c;
        let out = match x.dtype() {
            DType::BF16 => go::<bf16>(&dev, &name, (x, xl), &sv, shift, residual, n, args, cfg)?,
            _ => go::<f16>(&dev, &name, (x, xl), &sv, shift, residual, n, args, cfg)?,
        };
        Ok((out, xl.shape().clone()))
    }

    /// A tensor an op carries beside its inputs (contiguous): its storage guard and start offset,
    /// for reading on the GPU with [`cuda_of`]; `what` names it in errors. Also [`crate::flash`]'s.
    pub(crate) fn carried<'a>(
        t: &'a candle_core::Tensor,
        what: &str,
    ) -> candle_core::Result<(impl std::ops::Deref<Target = candle_core::Storage> + 'a, usize)> {
        let (st, l) = t.storage_and_layout();
        if !l.is_contiguous() {
            candle_core::bail!("{what} is not contiguous (strides {:?})", l.stride());
        }
        let off = l.start_offset();
        Ok((st, off))
    }

    /// The CUDA storage of a [`carried`] tensor.
    pub(crate) fn cuda_of<'a>(st: &'a candle_core::Storage, what: &str) -> candle_core::Result<&'a CudaStorage> {
        match st {
            candle_core::Storage::Cuda(c) => Ok(c),
            _ => candle_core::bail!("{what} is not on the GPU"),
        }
    }

    /// An optional f32 norm scale of the op on the device (its storage guard and start offset)
    /// and its eps.
    #[allow(clippy::type_complexity)]
    fn f32_param(
        p: &Option<(candle_core::Tensor, f32)>,
    ) -> candle_core::Result<Option<((impl std::ops::Deref<Target = candle_core::Storage> + '_, usize), f32)>> {
        let Some((t, eps)) = p else { return Ok(None) };
        if t.dtype() != DType::F32 {
            candle_core::bail!("fused norm + matmul: a norm scale must be f32, got {:?}", t.dtype());
        }
        Ok(Some((carried(t, SCALE)?, *eps)))
    }

    /// The [`Param`] of an [`f32_param`].
    fn on_device<G: std::ops::Deref<Target = candle_core::Storage>>(
        p: &Option<((G, usize), f32)>,
    ) -> candle_core::Result<Param<'_>> {
        Ok(match p {
            Some(((g, off), eps)) => Some(((cuda_of(g, SCALE)?, *off), *eps)),
            None => None,
        })
    }

    const SCALE: &str = "fused norm + matmul: a norm scale";

    /// An optional f32 norm scale on the device (storage, offset) and its eps.
    type Param<'a> = Option<((&'a CudaStorage, usize), f32)>;

    /// The device view of a [`Param`]'s scale.
    fn param_view(
        p: Param<'_>,
    ) -> candle_core::Result<Option<candle_core::cuda_backend::cudarc::driver::CudaView<'_, f32>>> {
        Ok(match p {
            Some(((t, off), _)) => Some(t.as_cuda_slice::<f32>()?.slice(off..)),
            None => None,
        })
    }

    pub(super) fn norm_gemv(
        op: &NormGemvOp,
        (x, xl): (&CudaStorage, &Layout),
        (r, rl): (&CudaStorage, &Layout),
        (w, wl): (&CudaStorage, &Layout),
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        contiguous_from_zero(xl, "x")?;
        contiguous_from_zero(rl, "residual")?;
        contiguous_from_zero(wl, "weight")?;
        let k = *xl.shape().dims().last().unwrap_or(&0);
        let rows = xl.shape().elem_count() / k.max(1);
        let n = wl.shape().dims().first().copied().unwrap_or(0);
        if k == 0 || k % 8 != 0 || wl.shape().dims() != [n, k] || wl.start_offset() % 8 != 0 || rows == 0 || rows > 4 {
            candle_core::bail!(
                "fused norm + matmul: x {:?} and weight {:?} (offset {}) do not fit the kernel",
                xl.shape().dims(),
                wl.shape().dims(),
                wl.start_offset()
            );
        }
        let dev = x.device().clone();
        let (norm, post) = (f32_param(&op.norm)?, f32_param(&op.post)?);
        let total = if op.add { rows * k + rows * n } else { rows * n };
        let blocks = n.div_ceil(8 * 4).clamp(1, 4096) as u32;
        let cfg =
            LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: (rows * k * 2) as u32 };
        let dims = (int(rows, "rows")?, int(k, "K")?, int(n, "N")?);
        #[allow(clippy::too_many_arguments)]
        fn go<T: CudaDType + DeviceRepr>(
            dev: &CudaDevice,
            name: &str,
            (x, xl): (&CudaStorage, &Layout),
            (r, rl): (&CudaStorage, &Layout),
            (w, wl): (&CudaStorage, &Layout),
            (norm, post): (Param<'_>, Param<'_>),
            (add, total, rows, k): (bool, usize, usize, usize),
            dims: (i32, i32, i32),
            cfg: LaunchConfig,
        ) -> candle_core::Result<CudaStorage> {
            let func = dev.get_or_load_custom_func(name, MODULE, PTX)?;
            let xv = x.as_cuda_slice::<T>()?.slice(xl.start_offset()..);
            let rv = r.as_cuda_slice::<T>()?.slice(rl.start_offset()..);
            let wv = w.as_cuda_slice::<T>()?.slice(wl.start_offset()..);
            let (sv, pv) = (param_view(norm)?, param_view(post)?);
            let (eps, post_eps) = (norm.map_or(0f32, |(_, e)| e), post.map_or(0f32, |(_, e)| e));
            // SAFETY: the kernel writes all of y, and (with a residual) all of h.
            let out = unsafe { dev.alloc::<T>(total)? };
            let null: u64 = 0;
            let (hv, yv) =
                if add { (Some(out.slice(..rows * k)), out.slice(rows * k..)) } else { (None, out.slice(..)) };
            {
                let mut builder = func.builder();
                builder.arg(&xv);
                match add {
                    true => builder.arg(&rv),
                    false => builder.arg(&null),
                };
                match &pv {
                    Some(pv) => builder.arg(pv),
                    None => builder.arg(&null),
                };
                builder.arg(&post_eps);
                match &sv {
                    Some(sv) => builder.arg(sv),
                    None => builder.arg(&null),
                };
                builder.arg(&eps);
                builder.arg(&wv);
                match &hv {
                    Some(hv) => builder.arg(hv),
                    None => builder.arg(&null),
                };
                builder.arg(&yv);
                builder.arg(&dims.0);
                builder.arg(&dims.1);
                builder.arg(&dims.2);
                // SAFETY: the arguments match the kernel's signature.
                unsafe { builder.launch(cfg) }.w()?;
            }
            drop((hv, yv));
            Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
        }
        let name = format!("norm_gemv_{}", suffix(x.dtype())?);
        let params = (on_device(&norm)?, on_device(&post)?);
        let args = (op.add, total, rows, k);
        let out = match x.dtype() {
            DType::BF16 => go::<bf16>(&dev, &name, (x, xl), (r, rl), (w, wl), params, args, dims, cfg)?,
            _ => go::<f16>(&dev, &name, (x, xl), (r, rl), (w, wl), params, args, dims, cfg)?,
        };
        Ok((out, Shape::from(total)))
    }

    pub(super) fn gated_act(
        op: &GatedActOp,
        x: &CudaStorage,
        xl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        contiguous_from_zero(xl, "gate/up")?;
        let mut dims = xl.shape().dims().to_vec();
        let two_i = dims.pop().unwrap_or(0);
        let i = two_i / 2;
        let rows = xl.shape().elem_count() / two_i.max(1);
        dims.push(i);
        let dev = x.device().clone();
        // the two-wide variant: pairs of an even row, from an even offset
        let two = super::two_wide() && i % 2 == 0 && xl.start_offset() % 2 == 0;
        let cfg = elementwise_cfg(rows, if two { i / 2 } else { i });
        let (rows64, i32_, act) = (rows as i64, int(i, "width")?, act_code(Some(op.act)));
        fn go<T: CudaDType + DeviceRepr>(
            dev: &CudaDevice,
            name: &str,
            (x, xl): (&CudaStorage, &Layout),
            n: usize,
            args: (i64, i32, i32),
            cfg: LaunchConfig,
        ) -> candle_core::Result<CudaStorage> {
            let func = dev.get_or_load_custom_func(name, MODULE, PTX)?;
            let xv = x.as_cuda_slice::<T>()?.slice(xl.start_offset()..);
            // SAFETY: every element is written by the kernel.
            let out = unsafe { dev.alloc::<T>(n)? };
            let mut builder = func.builder();
            builder.arg(&xv);
            builder.arg(&out);
            builder.arg(&args.0);
            builder.arg(&args.1);
            builder.arg(&args.2);
            // SAFETY: the arguments match the kernel's signature.
            unsafe { builder.launch(cfg) }.w()?;
            Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
        }
        let name = format!("gated_act{}_{}", if two { "2" } else { "" }, suffix(x.dtype())?);
        let n = rows * i;
        let out = match x.dtype() {
            DType::BF16 => go::<bf16>(&dev, &name, (x, xl), n, (rows64, i32_, act), cfg)?,
            _ => go::<f16>(&dev, &name, (x, xl), n, (rows64, i32_, act), cfg)?,
        };
        Ok((out, Shape::from(dims)))
    }

    type Arg<'a> = (&'a CudaStorage, &'a Layout);

    pub(super) fn qkv_rope(
        op: &QkvRopeOp,
        (y, yl): Arg<'_>,
        (c, cl): Arg<'_>,
        (s, sl): Arg<'_>,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        contiguous_from_zero(yl, "q/k/v")?;
        let (b, t, w) = yl.shape().dims3()?;
        let parts = op.heads + op.kv_heads * 2;
        let d = w / parts;
        let dev = y.device().clone();
        let cfg = LaunchConfig {
            grid_dim: ((b * t) as u32, parts as u32, 1),
            block_dim: ((d / 2) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let args = (int(t, "positions")?, int(op.heads, "heads")?, int(op.kv_heads, "kv heads")?, int(d, "head size")?);
        let n = b * t * w;
        fn go<T: CudaDType + DeviceRepr>(
            dev: &CudaDevice,
            name: &str,
            (y, yl): Arg<'_>,
            (c, cl): Arg<'_>,
            (s, sl): Arg<'_>,
            n: usize,
            args: (i32, i32, i32, i32),
            cfg: LaunchConfig,
        ) -> candle_core::Result<CudaStorage> {
            let func = dev.get_or_load_custom_func(name, MODULE, PTX)?;
            let yv = y.as_cuda_slice::<T>()?.slice(yl.start_offset()..);
            let cv = c.as_cuda_slice::<T>()?.slice(cl.start_offset()..);
            let sv = s.as_cuda_slice::<T>()?.slice(sl.start_offset()..);
            // SAFETY: every element is written by the kernel.
            let out = unsafe { dev.alloc::<T>(n)? };
            let mut builder = func.builder();
            builder.arg(&yv);
            builder.arg(&cv);
            builder.arg(&sv);
            builder.arg(&out);
            builder.arg(&args.0);
            builder.arg(&args.1);
            builder.arg(&args.2);
            builder.arg(&args.3);
            // SAFETY: the arguments match the kernel's signature.
            unsafe { builder.launch(cfg) }.w()?;
            Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
        }
        let name = format!("qkv_rope_{}", suffix(y.dtype())?);
        let out = match y.dtype() {
            DType::BF16 => go::<bf16>(&dev, &name, (y, yl), (c, cl), (s, sl), n, args, cfg)?,
            _ => go::<f16>(&dev, &name, (y, yl), (c, cl), (s, sl), n, args, cfg)?,
        };
        Ok((out, Shape::from(n)))
    }

    pub(super) fn bias_act(
        op: &BiasActOp,
        y: &mut CudaStorage,
        yl: &Layout,
        b: &CudaStorage,
        bl: &Layout,
        residual: Option<Arg<'_>>,
    ) -> candle_core::Result<()> {
        contiguous_from_zero(yl, "y")?;
        if let Some((_, rl)) = residual {
            contiguous_from_zero(rl, "residual")?;
        }
        let n = *yl.shape().dims().last().unwrap_or(&0);
        let rows = yl.shape().elem_count() / n.max(1);
        let dev = y.device().clone();
        let two = super::two_wide()
            && n % 2 == 0
            && yl.start_offset() % 2 == 0
            && bl.start_offset() % 2 == 0
            && residual.is_none_or(|(_, rl)| rl.start_offset() % 2 == 0);
        let cfg = elementwise_cfg(rows, if two { n / 2 } else { n });
        let name = format!("bias_act{}_{}", if two { "2" } else { "" }, suffix(y.dtype())?);
        let (rows64, n32, act) = (rows as i64, int(n, "width")?, act_code(op.act));
        fn go<T: CudaDType + DeviceRepr>(
            dev: &CudaDevice,
            name: &str,
            (y, yl): (&mut CudaStorage, &Layout),
            (b, bl): (&CudaStorage, &Layout),
            residual: Option<Arg<'_>>,
            args: (i64, i32, i32),
            cfg: LaunchConfig,
        ) -> candle_core::Result<()> {
            let func = dev.get_or_load_custom_func(name, MODULE, PTX)?;
            let bv = b.as_cuda_slice::<T>()?.slice(bl.start_offset()..);
            let rv = match residual {
                Some((r, rl)) => Some(r.as_cuda_slice::<T>()?.slice(rl.start_offset()..)),
                None => None,
            };
            let null: u64 = 0;
            let mut yv = y.as_cuda_slice_mut::<T>()?.slice_mut(yl.start_offset()..);
            let mut builder = func.builder();
            builder.arg(&mut yv);
            builder.arg(&bv);
            match &rv {
                Some(rv) => builder.arg(rv),
                None => builder.arg(&null),
            };
            builder.arg(&args.0);
            builder.arg(&args.1);
            builder.arg(&args.2);
            // SAFETY: the arguments match the kernel's signature.
            unsafe { builder.launch(cfg) }.w()?;
            Ok(())
        }
        match y.dtype() {
            DType::BF16 => go::<bf16>(&dev, &name, (y, yl), (b, bl), residual, (rows64, n32, act), cfg),
            _ => go::<f16>(&dev, &name, (y, yl), (b, bl), residual, (rows64, n32, act), cfg),
        }
    }
}

/// One comparison of a fused kernel against its composed form.
#[derive(Debug, Clone)]
pub struct FusedCheck {
    pub case: String,
    /// max |fused - composed| / max |composed|
    pub rel_err: f64,
    pub tolerance: f64,
}

impl FusedCheck {
    pub fn passed(&self) -> bool {
        self.rel_err.is_finite() && self.rel_err <= self.tolerance
    }
}

/// Runs every fused kernel on deterministic pseudo-random bf16 inputs on `device` and compares it
/// with the f32 composed computation on the same inputs: RMSNorm and LayerNorm (on a strided
/// view), the gated activation for tanh-GELU and SiLU, bias plus each activation. Tolerance
/// 1e-2 of the largest output (one bf16 rounding of the result, two for the gated activation).
pub fn check_against_composed(device: &candle_core::Device) -> Result<Vec<FusedCheck>> {
    let (pattern, rel) = (check_pattern(device), check_rel);
    let mut out = Vec::new();
    let mut push = |case: String, rel_err: f64| out.push(FusedCheck { case, rel_err, tolerance: 1e-2 });
    // norms of a narrowed view (made contiguous first), rows of 1000, 3584 and 64
    for (c, centered) in [(1000usize, true), (3584, false), (64, true)] {
        let x = pattern(1, &[2, 37, c])?.narrow(1, 0, 30)?;
        let scale = (pattern(2, &[c])?.to_dtype(DType::F32)? * 0.3)?;
        let shift = pattern(3, &[c])?.to_dtype(DType::F32)?;
        let got = norm(&x, &scale, centered.then_some(&shift), 1e-5, centered)?;
        let xf = x.to_dtype(DType::F32)?;
        let want = if centered {
            candle_nn::ops::layer_norm(&xf.contiguous()?, &scale, &shift, 1e-5)?
        } else {
            candle_nn::ops::rms_norm(&xf.contiguous()?, &scale, 1e-5)?
        };
        push(format!("{} over rows of {c}", if centered { "LayerNorm" } else { "RMSNorm" }), rel(&got, &want)?);
    }
    {
        let x = pattern(8, &[2, 5, 3584])?;
        let r = pattern(9, &[2, 5, 3584])?;
        let scale = (pattern(2, &[3584])?.to_dtype(DType::F32)? + 1.0)?;
        let got = rms_norm_add(&x, &scale, 1e-6, &r)?;
        let normed = candle_nn::ops::rms_norm(&x.to_dtype(DType::F32)?, &scale, 1e-6)?;
        let want = (r.to_dtype(DType::F32)? + normed)?;
        push("RMSNorm + residual".into(), rel(&got, &want)?);
        let y = pattern(10, &[2, 5, 3584])?;
        let b = pattern(11, &[3584])?;
        let got = bias_add(&y.copy()?, &b, &r)?;
        let want = (r.to_dtype(DType::F32)? + y.to_dtype(DType::F32)?.broadcast_add(&b.to_dtype(DType::F32)?)?)?;
        push("bias + residual".into(), rel(&got, &want)?);
    }
    for act in [Act::GeluTanh, Act::Silu] {
        let gu = pattern(4, &[3, 50, 2 * 1000])?;
        let got = gated_act(&gu, act)?;
        let g = gu.narrow(D::Minus1, 0, 1000)?.to_dtype(DType::F32)?;
        let u = gu.narrow(D::Minus1, 1000, 1000)?.to_dtype(DType::F32)?;
        let want = (act.apply(&g)? * u)?;
        push(format!("gated {act:?}"), rel(&got, &want)?);
    }
    for act in [None, Some(Act::QuickGelu), Some(Act::GeluErf), Some(Act::GeluTanh), Some(Act::Silu), Some(Act::Relu)] {
        let y = pattern(5, &[70, 300])?;
        let b = pattern(6, &[300])?;
        let want = y.to_dtype(DType::F32)?.broadcast_add(&b.to_dtype(DType::F32)?)?;
        let want = match act {
            Some(a) => a.apply(&want)?,
            None => want,
        };
        let got = bias_act(&y.copy()?, &b, act)?;
        push(format!("bias + {act:?}"), rel(&got, &want)?);
    }
    // q / k / v split with the rotary embedding, against the composed reshape + candle's rope
    {
        let (b, t, h, kv, d) = (2, 9, 4, 2, 64);
        let y = pattern(7, &[b, t, (h + 2 * kv) * d])?;
        let rope = crate::llm::Rope::new(d, 10000.0);
        let (cos, sin) = rope.tables(5, t, device, DType::BF16)?;
        let (q, k, v) = qkv_rope(&y, &cos, &sin, h, kv)?;
        let split = |from: usize, n: usize| -> Result<Tensor> {
            Ok(y.narrow(D::Minus1, from * d, n * d)?.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous()?)
        };
        let want_q = rope.apply_tables(&split(0, h)?, &(cos.clone(), sin.clone()))?.to_dtype(DType::F32)?;
        let want_k = rope.apply_tables(&split(h, kv)?, &(cos.clone(), sin.clone()))?.to_dtype(DType::F32)?;
        let want_v = split(h + kv, kv)?.to_dtype(DType::F32)?;
        push("q/k/v split + rope: q".into(), rel(&q, &want_q)?);
        push("q/k/v split + rope: k".into(), rel(&k, &want_k)?);
        push("q/k/v split + rope: v".into(), rel(&v, &want_v)?);
    }
    Ok(out)
}

/// [`norm_matmul`] (whether or not `GRIFFON_NORM_GEMV` selects it) against the f32 composed norm
/// and matmul on pseudo-random bf16 inputs: the stream itself (the first layer, the lm_head),
/// Gemma-2's post-norm + residual, Llama's plain residual on 3 rows; N not a multiple of the 32
/// outputs of a block. Tolerance 1e-2 of the largest output. A case that fails to run is reported
/// as failed with its error (selfcheck runs these last: a kernel fault spoils the device).
pub fn check_norm_matmul(device: &candle_core::Device) -> Vec<FusedCheck> {
    let mut out = Vec::new();
    for (rows, k, n, mode) in
        [(1usize, 3584usize, 1000usize, 0usize), (1, 3584, 2085, 1), (3, 1024, 4100, 2), (1, 14336, 700, 3)]
    {
        let what = ["stream", "post-norm + residual", "residual, 3 rows", "no norm, K 14336"][mode];
        match norm_matmul_case(device, rows, k, n, mode) {
            Ok((y, h)) => {
                out.push(FusedCheck {
                    case: format!("RMSNorm folded into the matmul ({what}): y"),
                    rel_err: y,
                    tolerance: 1e-2,
                });
                if let Some(h) = h {
                    out.push(FusedCheck {
                        case: format!("RMSNorm folded into the matmul ({what}): stream"),
                        rel_err: h,
                        tolerance: 1e-2,
                    });
                }
            }
            Err(e) => out.push(FusedCheck {
                case: format!("RMSNorm folded into the matmul ({what}): {e}"),
                rel_err: f64::NAN,
                tolerance: 1e-2,
            }),
        }
    }
    out
}

/// Relative errors of y (and the stream) of one [`check_norm_matmul`] case.
fn norm_matmul_case(
    device: &candle_core::Device,
    rows: usize,
    k: usize,
    n: usize,
    mode: usize,
) -> Result<(f64, Option<f64>)> {
    let (pattern, rel) = (check_pattern(device), check_rel);
    {
        let x = (pattern(12, &[rows, 1, k])?.to_dtype(DType::F32)? * 0.5)?.to_dtype(DType::BF16)?;
        let r = pattern(13, &[rows, 1, k])?;
        let s2 = pattern(14, &[k])?.to_dtype(DType::F32)?.affine(0.1, 1.0)?;
        let s1 = pattern(15, &[k])?.to_dtype(DType::F32)?.affine(0.1, 1.0)?;
        let w = (pattern(16, &[n, k])?.to_dtype(DType::F32)? * 0.02)?.to_dtype(DType::BF16)?;
        let input = match mode {
            0 | 3 => NormInput::Stream,
            1 => NormInput::Add { residual: &r, post: Some((&s1, 1e-6)) },
            _ => NormInput::Add { residual: &r, post: None },
        };
        let norm = if mode == 3 { None } else { Some((&s2, 1e-6)) };
        let (y, h) = norm_matmul(&x, input, norm, &w)?;
        let xf = x.to_dtype(DType::F32)?;
        let want_h = match mode {
            0 | 3 => xf,
            1 => (r.to_dtype(DType::F32)? + candle_nn::ops::rms_norm(&xf, &s1, 1e-6)?)?,
            _ => (r.to_dtype(DType::F32)? + xf)?,
        };
        let a = if mode == 3 { want_h.clone() } else { candle_nn::ops::rms_norm(&want_h, &s2, 1e-6)? };
        let want_y = a.reshape((rows, k))?.matmul(&w.to_dtype(DType::F32)?.t()?)?.reshape((rows, 1, n))?;
        let h_err = match h {
            Some(h) => Some(rel(&h, &want_h)?),
            None => None,
        };
        Ok((rel(&y, &want_y)?, h_err))
    }
}

/// The deterministic pseudo-random bf16 inputs of the checks: values in [-3, 3).
fn check_pattern(device: &candle_core::Device) -> impl Fn(usize, &[usize]) -> Result<Tensor> + '_ {
    move |n, shape| {
        let len: usize = shape.iter().product();
        let vals: Vec<f32> = (0..len)
            .map(|j| {
                let x = ((j as u64 + 7) * 2654435761 + n as u64 * 40503) % 10007;
                (x as f32 / 10007.0 - 0.5) * 6.0
            })
            .collect();
        Ok(Tensor::from_vec(vals, shape, device)?.to_dtype(DType::BF16)?)
    }
}

/// max |got - want| / max |want| (got in any dtype, want f32).
fn check_rel(got: &Tensor, want: &Tensor) -> Result<f64> {
    let got = got.to_dtype(DType::F32)?;
    let err = (got - want)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? as f64;
    let scale = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? as f64;
    Ok(err / scale.max(1e-12))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A switch reads the values it knows and ignores (with a warning) one it does not, so a
    /// misspelt variant cannot pass for a measured one. Variables of this test only.
    #[test]
    fn env_switch_values_are_checked() {
        std::env::set_var("GRIFFON_TEST_SWITCH_A", " loop ");
        std::env::set_var("GRIFFON_TEST_SWITCH_B", "lopo");
        std::env::set_var("GRIFFON_TEST_SWITCH_C", "0");
        std::env::set_var("GRIFFON_TEST_SWITCH_D", "12");
        let a = EnvSwitch::new("GRIFFON_TEST_SWITCH_A", &["loop", "regs"]);
        let b = EnvSwitch::new("GRIFFON_TEST_SWITCH_B", &["loop", "regs"]);
        let c = EnvSwitch::number("GRIFFON_TEST_SWITCH_C");
        let d = EnvSwitch::number("GRIFFON_TEST_SWITCH_D");
        let unset = EnvSwitch::new("GRIFFON_TEST_SWITCH_UNSET", &["1"]);
        assert!(a.is("loop"));
        assert_eq!((b.get(), c.get(), d.get(), unset.get()), (None, None, Some("12"), None));
    }

    /// Shapes and dtypes are checked before any kernel, with errors naming what is wrong; on the
    /// CPU the ops refuse to run (never a silent result).
    #[test]
    fn bad_inputs_and_cpu_tensors_are_errors() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 8), DType::BF16, &dev).unwrap();
        let e = norm(&x, &Tensor::zeros(7, DType::F32, &dev).unwrap(), None, 1e-6, false).unwrap_err().to_string();
        assert!(e.contains("f32 parameters of [8]"), "{e}");
        let e = norm(&x, &Tensor::zeros(8, DType::BF16, &dev).unwrap(), None, 1e-6, false).unwrap_err().to_string();
        assert!(e.contains("f32 parameters"), "{e}");
        let scale = Tensor::zeros(8, DType::F32, &dev).unwrap();
        let e = rms_norm_add(&x, &scale, 1e-6, &Tensor::zeros((2, 4), DType::BF16, &dev).unwrap()).unwrap_err();
        assert!(e.to_string().contains("residual does not match"), "{e}");
        let e = norm(&x, &scale, None, 1e-6, false).unwrap_err().to_string();
        assert!(e.contains("CUDA only"), "{e}");
        let e = gated_act(&Tensor::zeros((2, 7), DType::BF16, &dev).unwrap(), Act::Silu).unwrap_err().to_string();
        assert!(e.contains("odd"), "{e}");
        let e = bias_act(&x, &Tensor::zeros(8, DType::F32, &dev).unwrap(), None).unwrap_err().to_string();
        assert!(e.contains("do not fit"), "{e}");
        // through the in-place machinery with the bias as its own placeholder third input
        let e = bias_act(&x.copy().unwrap(), &Tensor::zeros(8, DType::BF16, &dev).unwrap(), None).unwrap_err();
        assert!(e.to_string().contains("CUDA only"), "{e}");
        let y = Tensor::zeros((1, 3, 5 * 8), DType::BF16, &dev).unwrap();
        let cs = Tensor::zeros((3, 4), DType::BF16, &dev).unwrap();
        let e = qkv_rope(&y, &cs, &cs, 2, 2).unwrap_err().to_string();
        assert!(e.contains("not 6 heads"), "{e}");
        let e = qkv_rope(&y, &cs, &cs, 3, 1).unwrap_err().to_string();
        assert!(e.contains("CUDA only"), "{e}");
        // the decode step's norm folded into the matmul
        let (x, w) =
            (Tensor::zeros((1, 1, 16), DType::BF16, &dev).unwrap(), Tensor::zeros((5, 16), DType::BF16, &dev).unwrap());
        let s16 = Tensor::zeros(16, DType::F32, &dev).unwrap();
        let e =
            norm_matmul(&Tensor::zeros((1, 12), DType::BF16, &dev).unwrap(), NormInput::Stream, Some((&s16, 1e-6)), &w);
        assert!(e.unwrap_err().to_string().contains("multiple of 8"));
        let e =
            norm_matmul(&Tensor::zeros((5, 16), DType::BF16, &dev).unwrap(), NormInput::Stream, Some((&s16, 1e-6)), &w);
        assert!(e.unwrap_err().to_string().contains("1-4 rows"));
        let e =
            norm_matmul(&x, NormInput::Stream, Some((&s16, 1e-6)), &Tensor::zeros((5, 8), DType::BF16, &dev).unwrap());
        assert!(e.unwrap_err().to_string().contains("does not fit x"));
        let e = norm_matmul(&x, NormInput::Stream, Some((&Tensor::zeros(8, DType::F32, &dev).unwrap(), 1e-6)), &w);
        assert!(e.unwrap_err().to_string().contains("f32 norm scales of [16]"));
        let r = Tensor::zeros((1, 2, 16), DType::BF16, &dev).unwrap();
        let e = norm_matmul(&x, NormInput::Add { residual: &r, post: None }, Some((&s16, 1e-6)), &w).unwrap_err();
        assert!(e.to_string().contains("residual"), "{e}");
        let e = norm_matmul(&x, NormInput::Add { residual: &x, post: Some((&s16, 1e-6)) }, None, &w).unwrap_err();
        assert!(e.to_string().contains("CUDA only"), "{e}");
        assert!(!norm_matmul_applies(&x), "never on the CPU");
    }
}

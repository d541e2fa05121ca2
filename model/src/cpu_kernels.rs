//! CPU kernels for the places where candle 0.11's CPU backend spends most of the time at
//! inference: the exponential (candle calls libm's scalar `expf` per element, about 2 ns each
//! here: 0.57 ms of a tiny ViT layer's 4 x 257 x 257 softmax), and attention built from
//! separate batched matmuls, a softmax and head transposes. Each kernel is plain Rust written so
//! that LLVM vectorises it, compiled for AVX-512 and AVX2 + FMA beside the baseline and picked
//! at run time.
//!
//! - [`exp`]: Cephes' single-precision `expf` (range reduction by ln 2 in two parts, a degree-5
//!   polynomial; within 2 ulp of the exact value, tested against f64), with the scale by 2^n
//!   split in two so that results down to the subnormals and up to overflow come out right.
//! - [`SoftmaxLast`]: softmax over the last dimension (max, exp, sum, multiply by the
//!   reciprocal), rows in parallel.
//! - [`Pointwise::GateMul`]: `x * sigmoid(g(x))`: SiLU (`g = x`), CLIP's quick-GELU (`g = 1.702 x`) and
//!   GELU's tanh form (`gelu_pytorch_tanh`, Gemma), written as
//!   `0.5 x (1 + tanh(u)) = x sigmoid(2u)`, `u = sqrt(2/pi) (x + 0.044715 x^3)` (since
//!   `1 + tanh(u) = 2 sigmoid(2u)`; candle's CPU kernel calls libm's scalar `tanhf`, about half
//!   of a training step's non-matmul time before this op). With its backward pass,
//!   `dx = dy (s + x s (1 - s) g'(x))`, `s = sigmoid(g(x))`, in one op instead of candle's
//!   dozen (its GELU backward raises to powers and recomputes tanh through separate tensors).
//! - [`Attention`]: `softmax(scale * q k^T [soft-capped] + causal/window mask) v` in blocks of
//!   query rows, one task per (batch, head, block) on rayon, the two products by the `gemm`
//!   crate (candle's own CPU matmul) on strided views (no copies of q, k, v or the KV cache),
//!   the masked part of each row never computed, the output written with heads merged
//!   (`[B, T, H * d]`), which is what the output projection reads. The score block of a task is
//!   at most 64 rows of keys, so no full score matrix exists (at 1022 px one head's would be
//!   113 MB).
//!
//! - [`Pointwise::SoftCap`]: Gemma-2's `cap * tanh(x / cap)` through a vectorised [`tanh`], with its
//!   backward `dy (1 - (y / cap)^2)` from the output.
//!
//! These kernels except the [`Pointwise`] ops are for inference: they have no backward pass, and the
//! callers use them only for f32 tensors on the CPU outside training
//! ([`crate::nn::differentiable`]).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape};
use rayon::prelude::*;
use std::cell::RefCell;

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// `e^x`; see the module text. NaN stays NaN, -inf gives 0, overflow gives +inf.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // written as comparisons so that a NaN passes through
    let x = if x < -104.0 { -104.0 } else { x };
    let x = if x > 88.8 { 88.8 } else { x };
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let z = r * r;
    let p = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 5.000_000_1e-1;
    let y = p * z + r + 1.0;
    // 2^n as two factors: n runs from -150 to 128, each half stays a normal number. The
    // integer comes from the bits of n + 1.5 * 2^23 (exact for these n), not from `as i32`,
    // whose saturating semantics LLVM does not vectorise.
    let ni = ((n + 12_582_912.0).to_bits() as i32).wrapping_sub(0x4B40_0000);
    let n1 = ni >> 1;
    let n2 = ni - n1;
    y * f32::from_bits(((n1 + 127) as u32) << 23) * f32::from_bits(((n2 + 127) as u32) << 23)
}

const LANES: usize = 16;

#[inline(always)]
fn softmax_row_impl(row: &mut [f32]) {
    let mut mx = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            mx[i] = if c[i] > mx[i] { c[i] } else { mx[i] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in chunks.remainder().iter().chain(mx.iter()) {
        m = if v > m { v } else { m };
    }
    if m == f32::NEG_INFINITY {
        // every entry masked (or the row empty): NaN, as torch and candle give
        row.fill(f32::NAN);
        return;
    }
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            let e = exp(c[i] - m);
            c[i] = e;
            acc[i] += e;
        }
    }
    let mut s = 0f32;
    for v in chunks.into_remainder() {
        let e = exp(*v - m);
        *v = e;
        s += e;
    }
    s += acc.iter().sum::<f32>();
    let inv = 1.0 / s;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// The argument `g(x)` of the sigmoid in [`Pointwise::GateMul`]'s `x * sigmoid(g(x))`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gate {
    /// `g = a x`: SiLU (a = 1), quick-GELU (a = 1.702).
    Scaled(f32),
    /// `g = 2 sqrt(2/pi) (x + 0.044715 x^3)`: GELU's tanh approximation.
    GeluTanh,
}

/// `2 sqrt(2 / pi)`.
const GELU_K: f32 = 1.595_769_1;
const GELU_C: f32 = 0.044_715;

#[inline(always)]
fn gate_mul_impl(x: &[f32], gate: Gate, out: &mut [f32]) {
    match gate {
        Gate::Scaled(a) => {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = v / (1.0 + exp(-a * v));
            }
        }
        Gate::GeluTanh => {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = v / (1.0 + exp(-GELU_K * (v + GELU_C * v * v * v)));
            }
        }
    }
}

/// `dx = dy (s + x s (1 - s) g'(x))`; where `s (1 - s)` is 0 the second term is 0 (at huge |x|
/// `g'` may be inf, and 0 * inf would be NaN).
#[inline(always)]
fn gate_mul_grad_impl(x: &[f32], dy: &[f32], gate: Gate, out: &mut [f32]) {
    #[inline(always)]
    fn term(v: f32, z: f32, dz: f32) -> f32 {
        let s = 1.0 / (1.0 + exp(-z));
        let t = s * (1.0 - s);
        s + if t > 0.0 { v * t * dz } else { 0.0 }
    }
    match gate {
        Gate::Scaled(a) => {
            for ((o, &v), &g) in out.iter_mut().zip(x).zip(dy) {
                *o = g * term(v, a * v, a);
            }
        }
        Gate::GeluTanh => {
            for ((o, &v), &g) in out.iter_mut().zip(x).zip(dy) {
                let v2 = v * v;
                *o = g * term(v, GELU_K * (v + GELU_C * v2 * v), GELU_K * (1.0 + 3.0 * GELU_C * v2));
            }
        }
    }
}

/// `tanh(x)`: Cephes' single-precision `tanhf` (an odd degree-11 polynomial for |x| <= 0.625,
/// else `1 - 2 / (e^{2|x|} + 1)` with the sign of x, through [`exp`]), both branches computed
/// and one selected so that LLVM vectorises it (libm's scalar `tanhf` is what candle calls).
/// Against f64 (tested): within 2.4e-7 relative where |tanh| >= 0.25 (about 2 ulp), 6e-8
/// absolute below, and 2.4e-7 relative at tiny x; NaN stays NaN, +-inf gives +-1.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    let small = ((((-5.704_988_7e-3 * z + 2.063_908_9e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1) * z
        - 3.333_328_2e-1)
        * z
        * x
        + x;
    let big = (1.0 - 2.0 / (exp(2.0 * a) + 1.0)).copysign(x);
    if a > 0.625 {
        big
    } else {
        small
    }
}

#[inline(always)]
fn softcap_impl(row: &mut [f32], cap: f32) {
    let inv = 1.0 / cap;
    for v in row.iter_mut() {
        *v = tanh(*v * inv) * cap;
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2,
    Base,
}

fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Base
    })
}

/// A public function running `$body` compiled for the best instruction set found at run time.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$m])* $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) { body($($arg),*) }
                match isa() {
                    // SAFETY: the features were detected on this CPU
                    Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    Isa::Base => {}
                }
            }
            body($($arg),*)
        }
    };
}

multiversion! {
    /// Softmax of each `n`-long row of `data`, in place.
    pub fn softmax_rows(data: &mut [f32], n: usize) {
        for row in data.chunks_mut(n.max(1)) {
            softmax_row_impl(row);
        }
    }
}

multiversion! {
    /// `out = x * sigmoid(g(x))`, elementwise.
    pub fn gate_mul(x: &[f32], gate: Gate, out: &mut [f32]) {
        gate_mul_impl(x, gate, out)
    }
}

multiversion! {
    /// The gradient of [`gate_mul`] with respect to `x` for the output gradient `dy`.
    pub fn gate_mul_grad(x: &[f32], dy: &[f32], gate: Gate, out: &mut [f32]) {
        gate_mul_grad_impl(x, dy, gate, out)
    }
}

multiversion! {
    /// `cap * tanh(x / cap)` of each element (Gemma-2's soft-cap), in place.
    pub fn softcap_in_place(data: &mut [f32], cap: f32) {
        softcap_impl(data, cap)
    }
}

multiversion! {
    /// The gradient of the soft-cap from its output `y = cap tanh(x / cap)`:
    /// `dx = dy (1 - (y / cap)^2)`.
    pub fn softcap_grad(y: &[f32], dy: &[f32], cap: f32, out: &mut [f32]) {
        let inv = 1.0 / cap;
        for ((o, &v), &g) in out.iter_mut().zip(y).zip(dy) {
            let t = v * inv;
            *o = g * (1.0 - t * t);
        }
    }
}

multiversion! {
    /// `e^x` of each element, in place.
    pub fn exp_in_place(data: &mut [f32]) {
        for v in data.iter_mut() {
            *v = exp(*v);
        }
    }
}

/// Elements below which a kernel runs on the calling thread (rayon's hand-off costs more).
const PARALLEL_MIN: usize = 1 << 15;

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("{op}: f32 only, got {:?}", s.dtype());
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: the input must be contiguous"),
    }
}

/// A new `len`-long buffer filled by `f(range, out)` for consecutive ranges of the elements: in
/// parallel chunks from [`PARALLEL_MIN`] elements, else in one call.
fn elementwise(len: usize, f: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync) -> Vec<f32> {
    const CHUNK: usize = PARALLEL_MIN / 4;
    let mut out = vec![0f32; len];
    if len >= PARALLEL_MIN {
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(i, o)| f(i * CHUNK..i * CHUNK + o.len(), o));
    } else {
        f(0..len, &mut out);
    }
    out
}

/// Softmax over the last dimension of a contiguous f32 CPU tensor.
pub struct SoftmaxLast;

impl CustomOp1 for SoftmaxLast {
    fn name(&self) -> &'static str {
        "cpu-softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let n = l.dims().last().copied().unwrap_or(1).max(1);
        let mut out = x.to_vec();
        if out.len() >= PARALLEL_MIN {
            let rows_per_task = (PARALLEL_MIN / n).max(1);
            out.par_chunks_mut(rows_per_task * n).for_each(|c| softmax_rows(c, n));
        } else {
            softmax_rows(&mut out, n);
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// Elementwise functions of contiguous f32 CPU tensors, differentiable: the backward pass of
/// each is [`PointwiseGrad`], one op.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pointwise {
    /// `x * sigmoid(g(x))` ([`Gate`]); its gradient is computed from the input.
    GateMul(Gate),
    /// `cap * tanh(x / cap)`, Gemma-2's soft-cap of attention scores and logits; its gradient is
    /// computed from the output.
    SoftCap(f32),
}

impl CustomOp1 for Pointwise {
    fn name(&self) -> &'static str {
        match self {
            Pointwise::GateMul(_) => "cpu-gate-mul",
            Pointwise::SoftCap(_) => "cpu-softcap",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let out = elementwise(x.len(), |r, o| match *self {
            Pointwise::GateMul(g) => gate_mul(&x[r], g, o),
            Pointwise::SoftCap(cap) => {
                o.copy_from_slice(&x[r]);
                softcap_in_place(o, cap)
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &candle_core::Tensor,
        res: &candle_core::Tensor,
        grad: &candle_core::Tensor,
    ) -> candle_core::Result<Option<candle_core::Tensor>> {
        let from = match self {
            Pointwise::GateMul(_) => arg,
            Pointwise::SoftCap(_) => res,
        };
        Ok(Some(from.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &PointwiseGrad(*self))?))
    }
}

/// The gradient of a [`Pointwise`] op: `(a, dy) -> dx` for contiguous f32 CPU tensors of one
/// shape, `a` the op's input (`GateMul`: `dy (s + x s (1 - s) g'(x))`) or its output
/// (`SoftCap`: `dy (1 - (y / cap)^2)`).
pub struct PointwiseGrad(pub Pointwise);

impl candle_core::CustomOp2 for PointwiseGrad {
    fn name(&self) -> &'static str {
        match self.0 {
            Pointwise::GateMul(_) => "cpu-gate-mul-grad",
            Pointwise::SoftCap(_) => "cpu-softcap-grad",
        }
    }

    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        l: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if l.shape() != gl.shape() {
            candle_core::bail!("{}: {:?} and its gradient {:?} differ in shape", self.name(), l.shape(), gl.shape());
        }
        let a = f32_slice(s, l, self.name())?;
        let dy = f32_slice(gs, gl, self.name())?;
        let out = elementwise(a.len(), |r, o| match self.0 {
            Pointwise::GateMul(g) => gate_mul_grad(&a[r.clone()], &dy[r], g, o),
            Pointwise::SoftCap(cap) => softcap_grad(&a[r.clone()], &dy[r], cap, o),
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// The causal mask of a decoder: query row `i` sits at position `offset + i` and sees the keys
/// `j <= offset + i`, and with a `window` only those with `offset + i - j < window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Causal {
    pub offset: usize,
    pub window: Option<usize>,
}

impl Causal {
    /// The visible keys `[lo, hi)` of query row `i`.
    pub fn range(&self, i: usize) -> (usize, usize) {
        let pos = self.offset + i;
        let lo = self.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        (lo, pos + 1)
    }

    /// The additive mask of query rows `rows` over `keys` keys, row-major: 0 where a key is
    /// visible ([`Self::range`]), -inf elsewhere (for the composed forms that add it to scores).
    pub fn additive_mask(&self, rows: std::ops::Range<usize>, keys: usize) -> Vec<f32> {
        let mut m = vec![0f32; rows.len() * keys];
        for (r, i) in rows.enumerate() {
            let (lo, hi) = self.range(i);
            for (j, x) in m[r * keys..(r + 1) * keys].iter_mut().enumerate() {
                if j < lo || j >= hi {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
        m
    }
}

/// Query rows per task.
pub const QUERY_BLOCK: usize = 64;

/// Fused attention on f32 CPU tensors: q `[B, Hq, T, d]`, k and v `[B, Hkv, S, d]` (any strides
/// with the last one 1; Hq a multiple of Hkv, query head h reading kv head h / (Hq / Hkv)) ->
/// `[B, T, Hq * d]`. Scores are `scale * q k^T`, soft-capped as `cap * tanh(s / cap)` when
/// `softcap` is set (Gemma-2), masked by `causal` when set (else every query sees every key).
pub struct Attention {
    pub scale: f32,
    pub softcap: Option<f32>,
    pub causal: Option<Causal>,
}

struct View<'a> {
    data: &'a [f32],
    start: usize,
    dims: [usize; 4],
    strides: [usize; 4],
}

fn view4<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<View<'a>> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("cpu attention: {what} must be f32, got {:?}", s.dtype());
    };
    let (d, st) = (l.dims(), l.stride());
    if d.len() != 4 {
        candle_core::bail!("cpu attention: {what} must have rank 4 [B, H, T, d], got {d:?}");
    }
    if st[3] != 1 && d[3] > 1 {
        candle_core::bail!("cpu attention: {what} must be contiguous in its last dimension, strides {st:?}");
    }
    Ok(View {
        data: data.as_slice(),
        start: l.start_offset(),
        dims: [d[0], d[1], d[2], d[3]],
        strides: [st[0], st[1], st[2], st[3]],
    })
}

impl View<'_> {
    fn ptr(&self, b: usize, h: usize, t: usize) -> *const f32 {
        let at = self.start + b * self.strides[0] + h * self.strides[1] + t * self.strides[2];
        // SAFETY of later reads: the layout's offsets lie inside `data` (candle checks layouts)
        unsafe { self.data.as_ptr().add(at) }
    }
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint parts of the output (their own rows of their own head)
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    // a method, so that closures capture the wrapper rather than its raw field
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: offsets passed are inside the output buffer
        unsafe { self.0.add(offset) }
    }
}

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "cpu-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k, v) = (view4(qs, ql, "q")?, view4(ks, kl, "k")?, view4(vs, vl, "v")?);
        let [b, hq, t, d] = q.dims;
        let [kb, hk, s, kd] = k.dims;
        if kb != b || kd != d || v.dims != k.dims || hk == 0 || hq % hk != 0 {
            candle_core::bail!(
                "cpu attention: shapes q {:?} k {:?} v {:?} do not fit together",
                q.dims,
                k.dims,
                v.dims
            );
        }
        if let Some(c) = self.causal {
            if c.offset + t > s {
                candle_core::bail!(
                    "cpu attention: {t} queries at offset {} need {} keys, got {s}",
                    c.offset,
                    c.offset + t
                );
            }
        }
        let rep = hq / hk;
        let mut out = vec![0f32; b * t * hq * d];
        let out_ptr = OutPtr(out.as_mut_ptr());
        let blocks = t.div_ceil(QUERY_BLOCK);
        let task = |i: usize| {
            let (bi, rest) = (i / (hq * blocks), i % (hq * blocks));
            let (h, blk) = (rest / blocks, rest % blocks);
            let r0 = blk * QUERY_BLOCK;
            let rows = QUERY_BLOCK.min(t - r0);
            let ((lo, _), (_, hi)) = match self.causal {
                Some(c) => (c.range(r0), c.range(r0 + rows - 1)),
                None => ((0, s), (0, s)),
            };
            let width = hi - lo;
            SCORES.with(|cell| {
                let mut buf = cell.borrow_mut();
                if buf.len() < rows * width {
                    buf.resize(rows * width, 0.0);
                }
                let sc = &mut buf[..rows * width];
                // SAFETY: all pointers and strides come from candle layouts of these buffers;
                // the destination blocks of different tasks are disjoint.
                unsafe {
                    gemm::gemm(
                        rows,
                        width,
                        d,
                        sc.as_mut_ptr(),
                        1,
                        width as isize,
                        false,
                        q.ptr(bi, h, r0),
                        1,
                        q.strides[2] as isize,
                        k.ptr(bi, h / rep, lo),
                        k.strides[2] as isize,
                        1,
                        0.0,
                        self.scale,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                for r in 0..rows {
                    let row = &mut sc[r * width..(r + 1) * width];
                    if let Some(cap) = self.softcap {
                        softcap_impl(row, cap);
                    }
                    match self.causal {
                        Some(c) => {
                            let (a, z) = c.range(r0 + r);
                            let (a, z) = (a - lo, z - lo);
                            row[..a].fill(0.0);
                            row[z..].fill(0.0);
                            softmax_rows(&mut row[a..z], z - a);
                        }
                        None => softmax_rows(row, width),
                    }
                }
                unsafe {
                    gemm::gemm(
                        rows,
                        d,
                        width,
                        out_ptr.at((bi * t + r0) * hq * d + h * d),
                        1,
                        (hq * d) as isize,
                        false,
                        sc.as_ptr(),
                        1,
                        width as isize,
                        v.ptr(bi, h / rep, lo),
                        1,
                        v.strides[2] as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            });
        };
        let tasks = b * hq * blocks;
        if b * hq * t * s * d >= PARALLEL_MIN * 8 && tasks > 1 {
            (0..tasks).into_par_iter().for_each(task);
        } else {
            (0..tasks).for_each(task);
        }
        Ok((CpuStorage::F32(out), Shape::from((b, t, hq * d))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor, D};

    #[test]
    fn exp_is_within_two_ulp_everywhere() {
        let mut worst = 0f64;
        let mut x = -103.9f32;
        while x < 88.7 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            if want > f32::MIN_POSITIVE as f64 {
                worst = worst.max(((got - want) / want).abs());
            } else {
                // subnormal results: within one subnormal step
                assert!((got - want).abs() <= 1.5e-45, "exp({x}) = {got}, want {want}");
            }
            x += 0.001_37;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        // the multiversioned in-place form computes the same numbers
        let mut v: Vec<f32> = (0..1000).map(|i| i as f32 * 0.17 - 80.0).collect();
        let want: Vec<f32> = v.iter().map(|&x| exp(x)).collect();
        exp_in_place(&mut v);
        assert_eq!(v, want);
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let scale: f32 = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
        let d: f32 = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
        d / scale.max(1e-30)
    }

    #[test]
    fn softmax_and_sigmoid_match_candle() {
        let dev = Device::Cpu;
        for shape in [(3usize, 7usize), (40, 257), (300, 1000)] {
            let x = (Tensor::randn(0f32, 4.0, shape, &dev).unwrap()).contiguous().unwrap();
            let ours = x.apply_op1_no_bwd(&SoftmaxLast).unwrap();
            let theirs = candle_nn::ops::softmax_last_dim(&x).unwrap();
            assert!(max_rel(&ours, &theirs) < 1e-6, "{shape:?}");
            for a in [1.0f32, 1.702] {
                let ours = x.apply_op1_no_bwd(&Pointwise::GateMul(Gate::Scaled(a))).unwrap();
                let theirs = (&x * candle_nn::ops::sigmoid(&(&x * a as f64).unwrap()).unwrap()).unwrap();
                assert!(max_rel(&ours, &theirs) < 1e-6, "{shape:?} a {a}");
            }
        }
        // a masked entry stays 0
        let x = Tensor::new(&[[0f32, f32::NEG_INFINITY, 1.0]], &dev).unwrap();
        let y: Vec<Vec<f32>> = x.apply_op1_no_bwd(&SoftmaxLast).unwrap().to_vec2().unwrap();
        assert_eq!(y[0][1], 0.0);
        assert!((y[0][0] + y[0][2] - 1.0).abs() < 1e-7);
    }

    /// GELU's tanh form as `x sigmoid(2u)` matches candle's `gelu` (libm tanh) within 2e-6 of the
    /// largest value, and the op's backward matches candle's autograd of the composed forms
    /// (`gelu`, `x * sigmoid(a x)`) within 2e-5 of the largest gradient; far tails stay finite.
    #[test]
    fn gate_mul_and_its_gradient_match_candle() {
        let dev = Device::Cpu;
        for n in [7usize, 1000, 70_000] {
            let x = Tensor::randn(0f32, 3.0, n, &dev).unwrap();
            let gelu = x.apply_op1_no_bwd(&Pointwise::GateMul(Gate::GeluTanh)).unwrap();
            assert!(max_rel(&gelu, &x.gelu().unwrap()) < 2e-6, "{n}");
            let w = Tensor::randn(0f32, 1.0, n, &dev).unwrap(); // a random output gradient
            for gate in [Gate::GeluTanh, Gate::Scaled(1.0), Gate::Scaled(1.702)] {
                let v = candle_core::Var::from_tensor(&x).unwrap();
                let ours =
                    (v.as_tensor().apply_op1(Pointwise::GateMul(gate)).unwrap() * &w).unwrap().sum_all().unwrap();
                let g_ours = ours.backward().unwrap().get(v.as_tensor()).unwrap().clone();
                let y = match gate {
                    Gate::GeluTanh => v.as_tensor().gelu().unwrap(),
                    Gate::Scaled(a) => (v.as_tensor()
                        * candle_nn::ops::sigmoid(&(v.as_tensor() * a as f64).unwrap()).unwrap())
                    .unwrap(),
                };
                let theirs = (y * &w).unwrap().sum_all().unwrap();
                let g_theirs = theirs.backward().unwrap().get(v.as_tensor()).unwrap().clone();
                assert!(max_rel(&g_ours, &g_theirs) < 2e-5, "{n} {gate:?}");
            }
        }
        let tails = Tensor::new(&[-1e30f32, -1e5, -30.0, 0.0, 30.0, 1e5, 1e30], &dev).unwrap();
        for gate in [Gate::GeluTanh, Gate::Scaled(1.0)] {
            let y: Vec<f32> = tails.apply_op1_no_bwd(&Pointwise::GateMul(gate)).unwrap().to_vec1().unwrap();
            let dy = Tensor::ones(7, candle_core::DType::F32, &dev).unwrap();
            let g: Vec<f32> =
                tails.apply_op2_no_bwd(&dy, &PointwiseGrad(Pointwise::GateMul(gate))).unwrap().to_vec1().unwrap();
            assert_eq!(&y[3..], &[0.0, 30.0, 1e5, 1e30], "{gate:?}");
            assert!(y[..3].iter().all(|v| *v <= 0.0 && *v > -1e-6), "{gate:?} {y:?}");
            assert_eq!(&g[4..], &[1.0, 1.0, 1.0], "{gate:?}");
            assert!(g[..3].iter().all(|v| v.abs() < 1e-6), "{gate:?} {g:?}");
        }
    }

    #[test]
    fn tanh_matches_f64() {
        let mut worst = 0f64;
        let mut x = -12.0f32;
        while x < 12.0 {
            let want = (x as f64).tanh();
            let got = tanh(x) as f64;
            // relative where |tanh| is large, absolute near 0
            worst = worst.max((got - want).abs() / want.abs().max(0.25));
            x += 0.000_37;
        }
        assert!(worst < 2.4e-7, "worst error {worst}");
        for x in [1e-30f32, 1e-8, 1e-4, 0.01, 0.3] {
            let want = (x as f64).tanh();
            assert!(((tanh(x) as f64 - want) / want).abs() < 2.4e-7, "tanh({x}) = {}", tanh(x));
            assert_eq!(tanh(-x), -tanh(x));
        }
        assert_eq!(tanh(0.0), 0.0);
        assert_eq!(tanh(f32::INFINITY), 1.0);
        assert_eq!(tanh(f32::NEG_INFINITY), -1.0);
        assert_eq!(tanh(1e30), 1.0);
        assert!(tanh(f32::NAN).is_nan());
    }

    /// The soft-cap matches candle's composed `(x / cap).tanh() * cap` within 5e-7 of the largest
    /// value, its backward candle's autograd of that form within 2e-6 of the largest gradient.
    #[test]
    fn softcap_and_its_gradient_match_candle() {
        let dev = Device::Cpu;
        for (n, cap) in [(7usize, 50.0f32), (1000, 30.0), (70_000, 2.0)] {
            let x = Tensor::randn(0f32, 3.0 * cap, n, &dev).unwrap();
            let composed = |x: &Tensor| ((x / cap as f64).unwrap().tanh().unwrap() * cap as f64).unwrap();
            let ours = x.apply_op1_no_bwd(&Pointwise::SoftCap(cap)).unwrap();
            assert!(max_rel(&ours, &composed(&x)) < 5e-7, "{n}");
            let w = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
            let v = candle_core::Var::from_tensor(&x).unwrap();
            let loss = (v.as_tensor().apply_op1(Pointwise::SoftCap(cap)).unwrap() * &w).unwrap().sum_all().unwrap();
            let g_ours = loss.backward().unwrap().get(v.as_tensor()).unwrap().clone();
            let loss = (composed(v.as_tensor()) * &w).unwrap().sum_all().unwrap();
            let g_theirs = loss.backward().unwrap().get(v.as_tensor()).unwrap().clone();
            assert!(max_rel(&g_ours, &g_theirs) < 2e-6, "{n}");
        }
        let y = Tensor::new(&[1f32, 2.0], &dev).unwrap();
        let e = y
            .apply_op2_no_bwd(&Tensor::new(&[1f32, 2.0, 3.0], &dev).unwrap(), &PointwiseGrad(Pointwise::SoftCap(5.0)))
            .unwrap_err();
        assert!(e.to_string().contains("differ in shape"), "{e}");
    }

    /// The composed reference: scores, soft-cap, dense mask, softmax, product, heads merged.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, a: &Attention) -> Tensor {
        let (b, hq, t, d) = q.dims4().unwrap();
        let (_, hk, s, _) = k.dims4().unwrap();
        let rep = hq / hk;
        let k = k.unsqueeze(2).unwrap().repeat((1, 1, rep, 1, 1)).unwrap().reshape((b, hq, s, d)).unwrap();
        let v = v.unsqueeze(2).unwrap().repeat((1, 1, rep, 1, 1)).unwrap().reshape((b, hq, s, d)).unwrap();
        let mut sc = (q.contiguous().unwrap().matmul(&k.t().unwrap()).unwrap() * a.scale as f64).unwrap();
        if let Some(cap) = a.softcap {
            sc = ((sc / cap as f64).unwrap().tanh().unwrap() * cap as f64).unwrap();
        }
        if let Some(c) = a.causal {
            let mut m = vec![0f32; t * s];
            for i in 0..t {
                let (lo, hi) = c.range(i);
                for j in 0..s {
                    if j < lo || j >= hi {
                        m[i * s + j] = f32::NEG_INFINITY;
                    }
                }
            }
            sc = sc.broadcast_add(&Tensor::from_vec(m, (t, s), q.device()).unwrap()).unwrap();
        }
        let p = candle_nn::ops::softmax(&sc, D::Minus1).unwrap();
        p.matmul(&v).unwrap().transpose(1, 2).unwrap().reshape((b, t, hq * d)).unwrap()
    }

    #[test]
    fn attention_matches_the_composed_form() {
        let dev = Device::Cpu;
        let cases: [(usize, usize, usize, usize, usize, usize, Option<f32>, Option<Causal>); 6] = [
            // b, hq, hk, t, s, d, softcap, causal
            (1, 4, 4, 257, 257, 16, None, None),
            (2, 2, 2, 70, 70, 8, None, None),
            (1, 4, 2, 130, 130, 16, Some(50.0), Some(Causal { offset: 0, window: None })),
            (2, 6, 3, 100, 150, 8, None, Some(Causal { offset: 50, window: None })),
            (1, 4, 1, 90, 100, 8, Some(30.0), Some(Causal { offset: 10, window: Some(33) })),
            (1, 2, 2, 1, 77, 16, None, Some(Causal { offset: 76, window: Some(20) })),
        ];
        for (b, hq, hk, t, s, d, softcap, causal) in cases {
            let q = Tensor::randn(0f32, 1.0, (b, hq, t, d), &dev).unwrap();
            // k and v as strided views (a cache buffer with spare room, transposed layouts)
            let kbuf = Tensor::randn(0f32, 1.0, (b, hk, s + 9, d), &dev).unwrap();
            let k = kbuf.narrow(2, 0, s).unwrap();
            let v = Tensor::randn(0f32, 1.0, (b, s, hk, d), &dev).unwrap().transpose(1, 2).unwrap();
            let a = Attention { scale: 1.0 / (d as f32).sqrt(), softcap, causal };
            let ours = q.apply_op3_no_bwd(&k, &v, &a).unwrap();
            let want = reference(&q, &k, &v, &a);
            let err = max_rel(&ours, &want);
            assert!(err < 2e-6, "b {b} hq {hq} hk {hk} t {t} s {s}: {err}");
        }
        // bad shapes are refused, not read out of bounds
        let q = Tensor::zeros((1, 3, 4, 8), candle_core::DType::F32, &dev).unwrap();
        let k = Tensor::zeros((1, 2, 4, 8), candle_core::DType::F32, &dev).unwrap();
        assert!(q.apply_op3_no_bwd(&k, &k, &Attention { scale: 1.0, softcap: None, causal: None }).is_err());
        let k = Tensor::zeros((1, 3, 4, 8), candle_core::DType::F32, &dev).unwrap();
        let a = Attention { scale: 1.0, softcap: None, causal: Some(Causal { offset: 1, window: None }) };
        assert!(q.apply_op3_no_bwd(&k, &k, &a).is_err());
    }
}

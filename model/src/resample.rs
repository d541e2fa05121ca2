//! Resampling that matches the reference Python stack bit-for-bit (or to float rounding), plus
//! image loading and CLIP preprocessing.
//!
//! * [`resize_grid`]: PyTorch's `F.interpolate(..., mode="bilinear"|"bicubic",
//!   align_corners=False, antialias=False|True)` on a float32 NCHW tensor. Used to resize a
//!   ViT position table when the tower runs at another resolution (Griffon v2 runs a 336 px
//!   CLIP at 1022 px: a 24x24 grid becomes 73x73).
//! * [`pil_resize_rgb8`]: Pillow's `Image.resize((w, h), Image.BILINEAR | Image.BICUBIC)` on
//!   an 8-bit RGB image, reproducing Pillow's fixed-point arithmetic (and Pillow 13's choice of
//!   pass order) exactly.
//! * [`load_rgb`] + [`preprocess`]: `Image.open(p).convert("RGB")`, squash-resize, then
//!   HF `CLIPImageProcessor` rescale + normalize.
//!
//! Sources of the arithmetic (read, not copied):
//! * Pillow `src/libImaging/Resample.c` (`precompute_coeffs`, `normalize_coeffs_8bpc`,
//!   `ImagingResampleHorizontal_8bpc`, `ImagingResampleVertical_8bpc`, `ImagingResampleInner`,
//!   `clip8`, `bilinear_filter`, `bicubic_filter`).
//! * PyTorch `aten/src/ATen/native/UpSample.h` (`area_pixel_compute_scale`,
//!   `area_pixel_compute_source_index`, `guard_index_and_lambda`, `cubic_convolution1/2`,
//!   `get_cubic_upsample_coefficients`) and `aten/src/ATen/native/cpu/UpSampleKernel.cpp`
//!   (`HelperInterpBase::_compute_weights_aa`, `_compute_index_ranges_weights`,
//!   `HelperInterpLinear::aa_filter`, `HelperInterpCubic::aa_filter`,
//!   `separable_upsample_generic_Nd_kernel_impl`).
//! * transformers `image_transforms.py` (`rescale`: upcast to float64, multiply, cast to
//!   float32; `normalize`: `(image - mean) / std` in the image's float32 dtype).
//!
//! Every claim above is checked against the real libraries by the golden fixtures written by
//! `tools/reference/make_resample_fixtures.py` (tests: `model/tests/resample.rs`).

use std::fmt;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::{Device, Tensor};
use image::{DynamicImage, ImageFormat, RgbImage};

// ---------------------------------------------------------------------------------------------
// Position-grid interpolation (PyTorch F.interpolate, float32)
// ---------------------------------------------------------------------------------------------

/// 1-D interpolation filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interp {
    /// `mode="bilinear", antialias=False`.
    Bilinear,
    /// `mode="bilinear", antialias=True` (`_upsample_bilinear2d_aa`).
    BilinearAa,
    /// `mode="bicubic", antialias=False` (cubic convolution, A = -0.75).
    Bicubic,
    /// `mode="bicubic", antialias=True` (`_upsample_bicubic2d_aa`, Keys a = -0.5).
    BicubicAa,
}

impl Interp {
    /// Every mode, in a fixed order.
    pub const ALL: [Interp; 4] = [Interp::Bilinear, Interp::BilinearAa, Interp::Bicubic, Interp::BicubicAa];

    /// The name accepted by [`FromStr`].
    pub fn name(self) -> &'static str {
        match self {
            Interp::Bilinear => "bilinear",
            Interp::BilinearAa => "bilinear-aa",
            Interp::Bicubic => "bicubic",
            Interp::BicubicAa => "bicubic-aa",
        }
    }

    fn antialias(self) -> bool {
        matches!(self, Interp::BilinearAa | Interp::BicubicAa)
    }

    fn cubic(self) -> bool {
        matches!(self, Interp::Bicubic | Interp::BicubicAa)
    }
}

impl fmt::Display for Interp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Interp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Interp::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Interp::ALL.iter().map(|m| m.name()).collect();
            format!("unknown interpolation {s:?}: expected one of {}", names.join(", "))
        })
    }
}

/// One output position of a 1-D resampling: `out = sum_j weights[j] * in[indices[j]]`.
#[derive(Debug, Clone)]
struct Taps {
    indices: Vec<usize>,
    weights: Vec<f32>,
}

/// `area_pixel_compute_scale` with `align_corners=False` and no explicit scale factor
/// (F.interpolate was given `size=`): `(float)input_size / output_size` in the op-math type,
/// float32 for float32 tensors (PyTorch UpSample.h `compute_scales_value`).
fn torch_scale(in_size: usize, out_size: usize) -> f32 {
    in_size as f32 / out_size as f32
}

/// `area_pixel_compute_source_index` (align_corners=False): `scale * (dst + 0.5) - 0.5`,
/// clamped at 0 for linear modes only (PyTorch UpSample.h).
///
/// Float rounding: PyTorch's x86 CPU kernels are built for AVX2/AVX-512 with FMA available, and
/// the compiler contracts `a * b + c` into fused multiply-adds in some places. Which ones is not
/// visible from the source; measured against torch 2.15 (see the grid fixtures), evaluating the
/// cubic source index and the cubic weight polynomials with `mul_add` cuts the max error vs
/// torch from ~4e-6 to ~7e-7 (bicubic) and from ~3e-6 to ~5e-7 (bicubic-aa), while the linear
/// index matches best without it. Either way the results are within float32 noise of torch (its
/// own float32 vs float64 difference on these grids is ~6e-6).
fn torch_source_index(scale: f32, dst: usize, cubic: bool) -> f32 {
    let src = if cubic { scale.mul_add(dst as f32 + 0.5, -0.5) } else { scale * (dst as f32 + 0.5) - 0.5 };
    if !cubic && src < 0.0 {
        0.0
    } else {
        src
    }
}

/// `guard_index_and_lambda` (PyTorch UpSample.h): index = min(floor(src), in - 1),
/// lambda = clamp(src - index, 0, 1).
fn torch_guard_index_and_lambda(src: f32, in_size: usize) -> (i64, f32) {
    let index = (src.floor() as i64).min(in_size as i64 - 1);
    let lambda = (src - index as f32).clamp(0.0, 1.0);
    (index, lambda)
}

/// PyTorch UpSample.h `cubic_convolution1`: |x| <= 1 branch of the cubic kernel,
/// `((A + 2) * x - (A + 3)) * x * x + 1`, with the multiply-adds fused (see
/// [`torch_source_index`]).
fn cubic_convolution1(x: f32, a: f32) -> f32 {
    ((a + 2.0).mul_add(x, -(a + 3.0)) * x).mul_add(x, 1.0)
}

/// PyTorch UpSample.h `cubic_convolution2`: 1 < |x| < 2 branch of the cubic kernel,
/// `((A * x - 5A) * x + 8A) * x - 4A`, with the multiply-adds fused.
fn cubic_convolution2(x: f32, a: f32) -> f32 {
    a.mul_add(x, -5.0 * a).mul_add(x, 8.0 * a).mul_add(x, -4.0 * a)
}

/// Taps of the non-antialiased kernels (`HelperInterpLinear` / `HelperInterpCubic`
/// `compute_indices_weights`, UpSampleKernel.cpp).
fn torch_plain_taps(in_size: usize, out_size: usize, cubic: bool) -> Vec<Taps> {
    let scale = torch_scale(in_size, out_size);
    let last = in_size as i64 - 1;
    (0..out_size)
        .map(|i| {
            let src = torch_source_index(scale, i, cubic);
            let (i0, t) = torch_guard_index_and_lambda(src, in_size);
            if cubic {
                // get_cubic_upsample_coefficients with A = -0.75 (UpSample.h).
                const A: f32 = -0.75;
                let x2 = 1.0 - t;
                let weights = vec![
                    cubic_convolution2(t + 1.0, A),
                    cubic_convolution1(t, A),
                    cubic_convolution1(x2, A),
                    cubic_convolution2(x2 + 1.0, A),
                ];
                // Taps i0-1 .. i0+2, each clamped into [0, in-1] (upsample_get_value_bounded).
                let indices = (0..4).map(|j| (i0 - 1 + j).clamp(0, last) as usize).collect();
                Taps { indices, weights }
            } else {
                let i1 = if i0 < last { i0 + 1 } else { i0 };
                Taps { indices: vec![i0 as usize, i1 as usize], weights: vec![1.0 - t, t] }
            }
        })
        .collect()
}

/// `HelperInterpLinear::aa_filter` (triangle) and `HelperInterpCubic::aa_filter`
/// (Keys cubic with a = -0.5, the same kernel as Pillow's BICUBIC), UpSampleKernel.cpp.
fn torch_aa_filter(x: f32, cubic: bool) -> f32 {
    let x = x.abs();
    if cubic {
        const A: f32 = -0.5;
        if x < 1.0 {
            cubic_convolution1(x, A)
        } else if x < 2.0 {
            cubic_convolution2(x, A)
        } else {
            0.0
        }
    } else if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Taps of the antialiased kernels: `_compute_index_ranges_weights` + `_compute_weights_aa`
/// (UpSampleKernel.cpp). Mixed float/double arithmetic mirrors the C++ expression types:
/// `center` and weights are float32, `center - support + 0.5` and the filter argument
/// `(j + xmin - center + 0.5) * invscale` are evaluated partly in double.
fn torch_aa_taps(in_size: usize, out_size: usize, cubic: bool) -> Vec<Taps> {
    let scale = torch_scale(in_size, out_size);
    let interp_size: f64 = if cubic { 4.0 } else { 2.0 };
    let support: f32 =
        if scale >= 1.0 { (interp_size * 0.5 * scale as f64) as f32 } else { (interp_size * 0.5) as f32 };
    let invscale: f32 = if scale >= 1.0 { (1.0 / scale as f64) as f32 } else { 1.0 };
    (0..out_size)
        .map(|i| {
            let center = (scale as f64 * (i as f64 + 0.5)) as f32;
            // static_cast<int64_t> truncates toward zero, as Rust's `as` does.
            let xmin = (((center - support) as f64 + 0.5) as i64).max(0);
            let xmax = (((center + support) as f64 + 0.5) as i64).min(in_size as i64);
            let xsize = (xmax - xmin).max(0);
            let mut weights: Vec<f32> = (0..xsize)
                .map(|j| {
                    // (j + xmin - center) is int64 - float -> float in C++.
                    let d = (j + xmin) as f32 - center;
                    torch_aa_filter(((d as f64 + 0.5) * invscale as f64) as f32, cubic)
                })
                .collect();
            let total: f32 = weights.iter().fold(0.0f32, |acc, w| acc + w);
            if total != 0.0 {
                for w in &mut weights {
                    *w /= total;
                }
            }
            let indices = (xmin..xmin + xsize).map(|j| j as usize).collect();
            Taps { indices, weights }
        })
        .collect()
}

/// `sum_j w[j] * x[j]`, accumulated left to right in float32 like `interpolate_aa_single_dim`
/// and the `Interpolate<1, ...>::eval` recursion in UpSampleKernel.cpp.
fn dot(taps: &Taps, mut value: impl FnMut(usize) -> f32) -> f32 {
    let mut acc = value(taps.indices[0]) * taps.weights[0];
    for (&i, &w) in taps.indices.iter().zip(&taps.weights).skip(1) {
        acc += value(i) * w;
    }
    acc
}

/// Resize a (grid_in x grid_in x channels) row-major f32 grid to (grid_out x grid_out x
/// channels) exactly like `torch.nn.functional.interpolate(x.permute(0, 3, 1, 2),
/// size=(grid_out, grid_out), mode=bilinear|bicubic, align_corners=False, antialias=false|true)`
/// computed in float32. Used to resize a ViT position table.
///
/// Non-antialiased modes evaluate the 2-D kernel directly (height taps outside, width taps
/// inside, as `upsample_generic_Nd_kernel_impl`); antialiased modes are separable, width pass
/// first into a float32 buffer, then height (`separable_upsample_generic_Nd_kernel_impl`).
/// Results agree with PyTorch to float32 rounding: max abs error <= 1.5e-6 on the fixture grids
/// (values ~N(0, 1)), i.e. a few ulps.
///
/// Panics if `src.len() != grid_in * grid_in * channels` or a grid size is 0 (caller bug).
pub fn resize_grid(src: &[f32], grid_in: usize, channels: usize, grid_out: usize, mode: Interp) -> Vec<f32> {
    assert_eq!(
        src.len(),
        grid_in * grid_in * channels,
        "resize_grid: expected a {grid_in}x{grid_in}x{channels} grid ({} values), got {} values",
        grid_in * grid_in * channels,
        src.len()
    );
    assert!(grid_in > 0 && grid_out > 0, "resize_grid: grid sizes must be > 0 (got {grid_in} -> {grid_out})");
    if grid_in == grid_out {
        // Every kernel reduces to the identity at scale 1 (weights exactly 1 and 0).
        return src.to_vec();
    }
    let (c, gi, go) = (channels, grid_in, grid_out);
    let at = |y: usize, x: usize, k: usize| src[(y * gi + x) * c + k];
    let mut out = vec![0.0f32; go * go * c];
    if mode.antialias() {
        let taps = torch_aa_taps(gi, go, mode.cubic());
        // Width pass: (gi rows) x (go cols).
        let mut tmp = vec![0.0f32; gi * go * c];
        for y in 0..gi {
            for (x, t) in taps.iter().enumerate() {
                for k in 0..c {
                    tmp[(y * go + x) * c + k] = dot(t, |j| at(y, j, k));
                }
            }
        }
        // Height pass.
        for (y, t) in taps.iter().enumerate() {
            for x in 0..go {
                for k in 0..c {
                    out[(y * go + x) * c + k] = dot(t, |j| tmp[(j * go + x) * c + k]);
                }
            }
        }
    } else {
        let taps = torch_plain_taps(gi, go, mode.cubic());
        for (y, ty) in taps.iter().enumerate() {
            for (x, tx) in taps.iter().enumerate() {
                for k in 0..c {
                    out[(y * go + x) * c + k] = dot(ty, |yy| dot(tx, |xx| at(yy, xx, k)));
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Pillow fixed-point resampler (8-bit RGB)
// ---------------------------------------------------------------------------------------------

/// Pillow resampling filters supported by [`pil_resize_rgb8`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PilFilter {
    /// `Image.BILINEAR` (triangle, support 1).
    Bilinear,
    /// `Image.BICUBIC` (Keys cubic with a = -0.5, support 2).
    Bicubic,
}

impl PilFilter {
    /// Resample.c `struct filter` support values.
    fn support(self) -> f64 {
        match self {
            PilFilter::Bilinear => 1.0,
            PilFilter::Bicubic => 2.0,
        }
    }

    /// Resample.c `bilinear_filter` / `bicubic_filter` (evaluated in double).
    fn eval(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            PilFilter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            PilFilter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Resample.c: `#define PRECISION_BITS (32 - 8 - 2)`.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Fixed-point coefficients of one resampling pass: for output `i`, taps
/// `bounds[i].0 .. bounds[i].0 + bounds[i].1` with weights `kk[i * ksize ..]`.
struct PilCoeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    kk: Vec<i32>,
}

/// Resample.c `precompute_coeffs` (box = whole image: in0 = 0, in1 = in_size, both C floats)
/// followed by `normalize_coeffs_8bpc`.
fn pil_coeffs(in_size: usize, out_size: usize, filter: PilFilter) -> PilCoeffs {
    let (in0, in1) = (0.0f32, in_size as f32);
    let scale = (in1 - in0) as f64 / out_size as f64;
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut kk = vec![0i32; out_size * ksize];
    let mut k = vec![0.0f64; ksize];
    for xx in 0..out_size {
        let center = in0 as f64 + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // `(int)` casts truncate toward zero; Rust's `as` does the same.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let n = (xmax - xmin).clamp(0, ksize as i64) as usize;
        let mut ww = 0.0f64;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = filter.eval((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for (x, kx) in k.iter().enumerate().take(n) {
            let v = if ww != 0.0 { kx / ww } else { *kx };
            // normalize_coeffs_8bpc: round half away from zero, then truncate to int.
            let scaled = v * (1u32 << PRECISION_BITS) as f64;
            kk[xx * ksize + x] = if v < 0.0 { (-0.5 + scaled) as i32 } else { (0.5 + scaled) as i32 };
        }
        bounds.push((xmin as usize, n));
    }
    PilCoeffs { ksize, bounds, kk }
}

/// Resample.c `clip8`.
fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// One Pillow pass over an interleaved RGB buffer. `horizontal`: resample along x
/// (`ImagingResampleHorizontal_8bpc`), else along y (`ImagingResampleVertical_8bpc`).
fn pil_pass(src: &[u8], w: usize, h: usize, out_len: usize, co: &PilCoeffs, horizontal: bool) -> Vec<u8> {
    let (ow, oh) = if horizontal { (out_len, h) } else { (w, out_len) };
    let mut out = vec![0u8; ow * oh * 3];
    let half = 1i64 << (PRECISION_BITS - 1);
    for y in 0..oh {
        for x in 0..ow {
            let i = if horizontal { x } else { y };
            let (min, n) = co.bounds[i];
            let k = &co.kk[i * co.ksize..i * co.ksize + n];
            let mut ss = [half; 3];
            for (j, &kj) in k.iter().enumerate() {
                let p = if horizontal { (y * w + min + j) * 3 } else { ((min + j) * w + x) * 3 };
                for c in 0..3 {
                    ss[c] += src[p + c] as i64 * kj as i64;
                }
            }
            let o = (y * ow + x) * 3;
            for c in 0..3 {
                out[o + c] = clip8(ss[c]);
            }
        }
    }
    out
}

/// Whether Pillow 13 runs the vertical pass before the horizontal one.
///
/// Earlier Pillow releases' `ImagingResampleInner` always ran the horizontal pass first;
/// Pillow 13.0.0 (the pinned reference) runs the vertical pass first when the height shrinks
/// and `2 * out_w + in_h > 2 * in_w + out_h` (i.e. the rows removed exceed twice the columns
/// removed); ties go horizontal-first. The pass order changes the 8-bit intermediate, so results
/// differ by one level in many pixels if it is wrong. (A portrait photo squashed to 1022 x 1022
/// takes the vertical-first path.) The rule was determined empirically against Pillow 13.0.0:
/// it predicted the order for all of ~2000 random resizes (BILINEAR and BICUBIC, inputs up to
/// 700 px, outputs up to 1400 px, ~90 exact ties); the golden fixtures pin both sides of it.
fn pil_vertical_first(in_w: usize, in_h: usize, out_w: usize, out_h: usize) -> bool {
    out_h < in_h && 2 * out_w + in_h > 2 * in_w + out_h
}

/// Resize an 8-bit RGB image exactly like Pillow's `Image.resize((w, h), Image.BILINEAR)`
/// (or `Image.BICUBIC`) with `reducing_gap=None`: Pillow's two-pass fixed-point resampler
/// (Resample.c `ImagingResampleInner`): 22-bit fixed-point coefficients, clip8 after each pass,
/// a pass skipped when that dimension does not change, and the pass order Pillow 13 picks (see
/// [`pil_vertical_first`]). Same size returns a copy, as `Image.resize` does.
///
/// Panics if `width` or `height` is 0 (Pillow raises `ValueError` there too).
pub fn pil_resize_rgb8(img: &RgbImage, width: u32, height: u32, filter: PilFilter) -> RgbImage {
    assert!(width > 0 && height > 0, "pil_resize_rgb8: target size must be > 0, got {width}x{height}");
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    let (ow, oh) = (width as usize, height as usize);
    let mut buf: Vec<u8> = img.as_raw().clone();
    let horizontal = |buf: &[u8], h: usize| pil_pass(buf, iw, h, ow, &pil_coeffs(iw, ow, filter), true);
    let vertical = |buf: &[u8], w: usize| pil_pass(buf, w, ih, oh, &pil_coeffs(ih, oh, filter), false);
    match (ow != iw, oh != ih) {
        (false, false) => {}
        (true, false) => buf = horizontal(&buf, ih),
        (false, true) => buf = vertical(&buf, iw),
        (true, true) if pil_vertical_first(iw, ih, ow, oh) => {
            buf = vertical(&buf, iw);
            buf = horizontal(&buf, oh);
        }
        (true, true) => {
            buf = horizontal(&buf, ih);
            buf = vertical(&buf, ow);
        }
    }
    RgbImage::from_raw(width, height, buf).expect("buffer size matches the output dimensions")
}

// ---------------------------------------------------------------------------------------------
// Loading and CLIP preprocessing
// ---------------------------------------------------------------------------------------------

/// Why an image file could not be used. Every message starts with the file's path.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{}: cannot read image file: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: image file is empty (0 bytes)", .path.display())]
    Empty { path: PathBuf },
    #[error(
        "{}: not a supported image (format not recognised from its content or extension; \
         supported: PNG, JPEG, BMP, GIF, WebP, TIFF)",
        .path.display()
    )]
    UnknownFormat { path: PathBuf },
    #[error("{}: cannot decode {format} image (corrupt or truncated?): {source}", .path.display())]
    Decode {
        path: PathBuf,
        format: String,
        #[source]
        source: image::ImageError,
    },
    #[error("{}: the {format} decoder crashed on this file (corrupt?): {message}", .path.display())]
    DecoderPanic { path: PathBuf, format: String, message: String },
    #[error("{}: {format} data is truncated ({what})", .path.display())]
    Truncated { path: PathBuf, format: String, what: &'static str },
    #[error("{}: image has zero size ({width}x{height})", .path.display())]
    ZeroSize { path: PathBuf, width: u32, height: u32 },
    #[error(
        "{}: image of {width}x{height} pixels: more than {} pixels (twice Pillow's MAX_IMAGE_PIXELS, \
         where Pillow refuses a decompression bomb)",
        .path.display(),
        2 * PIL_MAX_IMAGE_PIXELS
    )]
    TooLarge { path: PathBuf, width: u32, height: u32 },
}

/// Pillow's `PIL.Image.MAX_IMAGE_PIXELS` (1024 * 1024 * 1024 // 4 // 3): it warns above it and
/// refuses above twice it.
pub const PIL_MAX_IMAGE_PIXELS: u64 = 89_478_485;

/// Open an image file and convert to RGB like PIL's `Image.open(path).convert("RGB")`: alpha
/// dropped (not composited), grey replicated, palette expanded, EXIF orientation NOT applied
/// (PIL's `open` does not apply it either). The format is detected from the file's content,
/// falling back to its extension. Unreadable / empty / truncated / non-image / zero-sized files
/// give an error naming the path (never a panic).
///
/// 16-bit files follow Pillow's conversions (checked with Pillow 13): 16-bit RGB(A) and 16-bit
/// grey+alpha keep the high byte; 16-bit grey (mode `I;16`, also with a tRNS colour) is clipped
/// to 255 by `convert("RGB")`. 8-bit CMYK TIFFs use Pillow's rounding (image-rs truncates); a
/// CMYK JPEG is within 2 levels of Pillow's (two decoders). These modes are checked against
/// Pillow's output (tools/reference/make_pixel_mode_fixtures.py). Float images fall back to
/// image-rs's conversion (Pillow differs there).
pub fn load_rgb(path: &Path) -> Result<RgbImage, ImageError> {
    let bytes = std::fs::read(path).map_err(|source| ImageError::Io { path: path.to_path_buf(), source })?;
    if bytes.is_empty() {
        return Err(ImageError::Empty { path: path.to_path_buf() });
    }
    let reader = image::ImageReader::new(Cursor::new(bytes.as_slice()))
        .with_guessed_format()
        .map_err(|source| ImageError::Io { path: path.to_path_buf(), source })?;
    let format = match reader.format().or_else(|| ImageFormat::from_path(path).ok()) {
        Some(f) => f,
        None => return Err(ImageError::UnknownFormat { path: path.to_path_buf() }),
    };
    let mut reader = reader;
    reader.set_format(format);
    let format_name = format!("{format:?}").to_uppercase();
    // Pillow's size rule instead of image-rs's 512 MiB decode budget (which refuses a 12000 x
    // 12000 RGBA PNG that Pillow opens): refused above twice PIL.Image.MAX_IMAGE_PIXELS
    // (Pillow's DecompressionBombError), read from the header before anything is decoded
    let dims = std::panic::catch_unwind(|| {
        let mut header = image::ImageReader::new(Cursor::new(bytes.as_slice()));
        header.set_format(format);
        header.into_dimensions()
    });
    // (a header the decoder fails or panics on is reported by the guarded decode below)
    if let Ok(Ok((width, height))) = dims {
        if width as u64 * height as u64 > 2 * PIL_MAX_IMAGE_PIXELS {
            return Err(ImageError::TooLarge { path: path.to_path_buf(), width, height });
        }
    }
    reader.no_limits();
    // zune-jpeg decodes a JPEG cut short inside its scan data without complaint (filling the rest);
    // Pillow raises "image file is truncated" for it, so reject it here as well.
    if format == ImageFormat::Jpeg && jpeg_truncated(&bytes) {
        return Err(ImageError::Truncated {
            path: path.to_path_buf(),
            format: format_name,
            what: "the file ends before the end-of-image marker",
        });
    }
    // 8-bit CMYK TIFF: image-rs converts to RGB truncating; Pillow's cmyk2rgb rounds
    if format == ImageFormat::Tiff {
        if let Some(rgb) = tiff_cmyk8_like_pil(&bytes) {
            return Ok(rgb);
        }
    }
    // Decoders should report errors, not panic; guard anyway so a hostile file cannot take the
    // process down.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.decode()));
    let img = match decoded {
        Ok(Ok(img)) => img,
        Ok(Err(image::ImageError::Unsupported(_))) if !is_known_format_magic(&bytes) => {
            return Err(ImageError::UnknownFormat { path: path.to_path_buf() })
        }
        Ok(Err(source)) => return Err(ImageError::Decode { path: path.to_path_buf(), format: format_name, source }),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            return Err(ImageError::DecoderPanic { path: path.to_path_buf(), format: format_name, message });
        }
    };
    if img.width() == 0 || img.height() == 0 {
        return Err(ImageError::ZeroSize { path: path.to_path_buf(), width: img.width(), height: img.height() });
    }
    // a 16-bit grey PNG with a tRNS colour: image-rs adds an alpha channel, Pillow opens it as
    // I;16 (the transparency kept aside) and clips, as for any 16-bit grey PNG
    let img = match img {
        DynamicImage::ImageLumaA16(i) if format == ImageFormat::Png && png_grey16(&bytes) => {
            DynamicImage::ImageLuma16(image::ImageBuffer::from_fn(i.width(), i.height(), |x, y| {
                image::Luma([i.get_pixel(x, y).0[0]])
            }))
        }
        other => other,
    };
    Ok(to_rgb_like_pil(img))
}

/// Whether a PNG's header (IHDR, first after the signature) says 16-bit greyscale without alpha
/// (colour type 0).
fn png_grey16(bytes: &[u8]) -> bool {
    bytes.len() >= 26 && &bytes[12..16] == b"IHDR" && bytes[24] == 16 && bytes[25] == 0
}

/// An 8-bit CMYK TIFF as Pillow's `convert("RGB")` makes it (Convert.c `cmyk2rgb`: with
/// nk = 255 - k, each channel is nk - MULDIV255(c, nk), MULDIV255 rounding), or None for any
/// other TIFF, or one the decoder fails on (image-rs then reports it).
fn tiff_cmyk8_like_pil(bytes: &[u8]) -> Option<RgbImage> {
    let decoded = std::panic::catch_unwind(|| {
        let mut d = tiff::decoder::Decoder::new(Cursor::new(bytes)).ok()?;
        if d.colortype().ok()? != tiff::ColorType::CMYK(8) {
            return None;
        }
        let (w, h) = d.dimensions().ok()?;
        match d.read_image().ok()? {
            tiff::decoder::DecodingResult::U8(v) if v.len() as u64 == 4 * w as u64 * h as u64 => Some((w, h, v)),
            _ => None,
        }
    });
    let (w, h, v) = decoded.ok()??;
    if w == 0 || h == 0 {
        return None;
    }
    let muldiv255 = |a: u32, b: u32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    let rgb = v
        .chunks_exact(4)
        .flat_map(|p| {
            let nk = 255 - p[3] as u32;
            [0, 1, 2].map(|c| (nk - muldiv255(p[c] as u32, nk)) as u8)
        })
        .collect();
    RgbImage::from_raw(w, h, rgb)
}

/// Whether a JPEG stream ends before its EOI marker (FF D9). Walks the marker segments from
/// SOI (ITU-T T.81 annex B): each segment's length is skipped, and after an SOS header the
/// entropy-coded data runs to the next FF byte that is not followed by 00 (byte stuffing), an RSTn
/// marker (D0-D7) or another FF (fill). Bytes after the first EOI (e.g. a Motion Photo's video)
/// are never looked at, as in Pillow. A stream that does not start with SOI or whose structure
/// is broken is left to the decoder (returns false).
fn jpeg_truncated(b: &[u8]) -> bool {
    let n = b.len();
    if n < 2 || b[0] != 0xFF || b[1] != 0xD8 {
        return false;
    }
    let mut i = 2;
    loop {
        if i >= n {
            return true;
        }
        if b[i] != 0xFF {
            return false; // not at a marker: corrupt, the decoder will say so
        }
        while i < n && b[i] == 0xFF {
            i += 1; // fill bytes
        }
        if i >= n {
            return true;
        }
        let marker = b[i];
        i += 1;
        match marker {
            0xD9 => return false,           // EOI: complete
            0xD0..=0xD7 | 0x01 => continue, // RSTn, TEM: no length field
            0x00 | 0xD8 => return false,    // not a valid marker here: corrupt
            _ => {
                if i + 2 > n {
                    return true;
                }
                let len = u16::from_be_bytes([b[i], b[i + 1]]) as usize;
                if len < 2 {
                    return false;
                }
                i += len;
                if i > n {
                    return true;
                }
                if marker == 0xDA {
                    // Entropy-coded data up to the next real marker.
                    loop {
                        if i + 1 >= n {
                            return true;
                        }
                        if b[i] == 0xFF && !matches!(b[i + 1], 0x00 | 0xD0..=0xD7 | 0xFF) {
                            break;
                        }
                        i += 1;
                    }
                }
            }
        }
    }
}

/// Whether the bytes start with the signature of a format this build can decode.
fn is_known_format_magic(bytes: &[u8]) -> bool {
    image::guess_format(bytes).is_ok()
}

/// `convert("RGB")` after PIL's `open`, for each decoded pixel layout.
fn to_rgb_like_pil(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let from_fn = |f: &dyn Fn(u32, u32) -> [u8; 3]| RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
    match img {
        DynamicImage::ImageRgb8(i) => i,
        // Pillow: RGBA / LA -> RGB drops alpha (no compositing); L -> RGB replicates.
        DynamicImage::ImageRgba8(i) => from_fn(&|x, y| {
            let p = i.get_pixel(x, y).0;
            [p[0], p[1], p[2]]
        }),
        DynamicImage::ImageLuma8(i) => from_fn(&|x, y| [i.get_pixel(x, y).0[0]; 3]),
        DynamicImage::ImageLumaA8(i) => from_fn(&|x, y| [i.get_pixel(x, y).0[0]; 3]),
        // Pillow opens 16-bit grey as mode "I;16"; convert("RGB") clips each value to 255.
        DynamicImage::ImageLuma16(i) => from_fn(&|x, y| [i.get_pixel(x, y).0[0].min(255) as u8; 3]),
        // Pillow unpacks 16-bit LA / RGB / RGBA with the "…;16B" raw modes: high byte kept.
        DynamicImage::ImageLumaA16(i) => from_fn(&|x, y| [(i.get_pixel(x, y).0[0] >> 8) as u8; 3]),
        DynamicImage::ImageRgb16(i) => from_fn(&|x, y| {
            let p = i.get_pixel(x, y).0;
            [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8]
        }),
        DynamicImage::ImageRgba16(i) => from_fn(&|x, y| {
            let p = i.get_pixel(x, y).0;
            [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8]
        }),
        other => other.to_rgb8(),
    }
}

/// `CLIPImageProcessor` `image_mean` (OpenAI CLIP).
pub const CLIP_MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
/// `CLIPImageProcessor` `image_std` (OpenAI CLIP), digits as in its preprocessor_config.json.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];

/// `CLIPImageProcessor.rescale_factor` (1/255 as a Python float).
const RESCALE_FACTOR: f64 = 1.0 / 255.0;

/// The normalized value of every 8-bit level, per channel: transformers `rescale` computes
/// `image.astype(float64) * rescale_factor` and casts to float32, then `normalize` computes
/// `(image - mean) / std` with float32 mean / std. (Multiplying by 1/255 and dividing by 255
/// agree on all 256 levels after the float32 cast; the multiply is what transformers does.)
pub fn clip_normalize_lut() -> [[f32; 256]; 3] {
    let mut lut = [[0.0f32; 256]; 3];
    for (c, row) in lut.iter_mut().enumerate() {
        for (v, out) in row.iter_mut().enumerate() {
            let x = (v as f64 * RESCALE_FACTOR) as f32;
            *out = (x - CLIP_MEAN[c]) / CLIP_STD[c];
        }
    }
    lut
}

/// Squash-resize to `size` x `size` with [`pil_resize_rgb8`] (Bilinear; aspect ratio NOT kept, no
/// padding), then `x = (((u8 as f64) * (1/255)) as f32 - mean) / std` (HF `CLIPImageProcessor`:
/// rescale in float64 then cast to f32, normalize in f32), returned as a `[3, size, size]` f32
/// tensor on `device`.
pub fn preprocess(img: &RgbImage, size: usize, device: &Device) -> candle_core::Result<Tensor> {
    if size == 0 || size > u32::MAX as usize {
        candle_core::bail!("preprocess: target size must be in 1..={}, got {size}", u32::MAX);
    }
    if img.width() == 0 || img.height() == 0 {
        candle_core::bail!("preprocess: cannot resize an empty {}x{} image", img.width(), img.height());
    }
    let resized = if img.width() as usize == size && img.height() as usize == size {
        None
    } else {
        Some(pil_resize_rgb8(img, size as u32, size as u32, PilFilter::Bilinear))
    };
    let px = resized.as_ref().unwrap_or(img).as_raw();
    let lut = clip_normalize_lut();
    let plane = size * size;
    let mut data = vec![0.0f32; 3 * plane];
    for (i, p) in px.chunks_exact(3).enumerate() {
        for c in 0..3 {
            data[c * plane + i] = lut[c][p[c] as usize];
        }
    }
    Tensor::from_vec(data, (3, size, size), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interp_names_round_trip() {
        for m in Interp::ALL {
            assert_eq!(m.name().parse::<Interp>().unwrap(), m);
        }
        let err = "nearest".parse::<Interp>().unwrap_err();
        for m in Interp::ALL {
            assert!(err.contains(m.name()), "error {err:?} should list {}", m.name());
        }
    }

    #[test]
    fn pil_coefficients_sum_to_one_in_fixed_point() {
        for (i, o) in [(5, 8), (400, 97), (97, 1022), (3, 1)] {
            for f in [PilFilter::Bilinear, PilFilter::Bicubic] {
                let co = pil_coeffs(i, o, f);
                for (x, &(_, n)) in co.bounds.iter().enumerate() {
                    let s: i64 = co.kk[x * co.ksize..x * co.ksize + n].iter().map(|&k| k as i64).sum();
                    assert!((s - (1 << PRECISION_BITS)).abs() <= 4, "{i}->{o} {f:?} out {x}: sum {s}");
                }
            }
        }
    }

    #[test]
    fn constant_grid_stays_constant() {
        let src = vec![0.25f32; 7 * 7 * 2];
        for m in Interp::ALL {
            for out in [3, 7, 16] {
                let r = resize_grid(&src, 7, 2, out, m);
                assert_eq!(r.len(), out * out * 2);
                assert!(r.iter().all(|v| (v - 0.25).abs() < 1e-6), "{m} 7->{out}");
            }
        }
    }
}

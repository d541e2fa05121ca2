//! Golden tests for `griffon_model::resample` against the real reference libraries.
//!
//! Fixtures: `model/tests/fixtures/resample/`, written by
//! `tools/reference/make_resample_fixtures.py` (Pillow 13.0.0, torch 2.15.0, transformers 5.24.0;
//! see the README and manifest.json there). A missing fixture fails the test with its path; no
//! test is skipped.
//!
//! Tolerances (measured values are printed; run with `-- --nocapture` to see them):
//! * PNG photos through `pil_resize_rgb8`: exact, max |u8 diff| = 0 (Pillow's fixed-point
//!   arithmetic is reproduced integer for integer).
//! * Normalized tensors from `preprocess`: max abs error <= 1e-6 and mean abs error <= 1e-7
//!   (measured 0: the float32 steps are the same IEEE operations transformers performs).
//! * JPEG: Pillow decodes with libjpeg(-turbo), image-rs with zune-jpeg; their IDCT / chroma
//!   upsampling round differently, so the decoded pixels differ by up to 4 levels (mean 0.29).
//!   Bounds are set just above the measured errors (see the `JPEG_*` constants).
//! * Position grids vs `F.interpolate` (float32): max abs error <= 1e-5 for all four modes.

use candle_core::{Device, Tensor};
use griffon_model::resample::{
    clip_normalize_lut, load_rgb, pil_resize_rgb8, preprocess, resize_grid, Interp, PilFilter, CLIP_MEAN, CLIP_STD,
};
use image::RgbImage;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const REGEN: &str = "regenerate with: /work/venv/bin/python tools/reference/make_resample_fixtures.py";

fn fixture(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/resample").join(name);
    assert!(p.is_file(), "fixture {} is missing ({REGEN})", p.display());
    p
}

fn tensors(file: &str) -> HashMap<String, Tensor> {
    let p = fixture(file);
    candle_core::safetensors::load(&p, &Device::Cpu).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

fn get<'a>(map: &'a HashMap<String, Tensor>, file: &str, key: &str) -> &'a Tensor {
    map.get(key).unwrap_or_else(|| panic!("fixture {file} has no tensor {key:?} ({REGEN})"))
}

/// A reference image written by Pillow (RGB, or "L" when its three channels are equal).
fn reference_rgb(name: &str) -> RgbImage {
    let p = fixture(name);
    image::open(&p).unwrap_or_else(|e| panic!("cannot decode {}: {e}", p.display())).to_rgb8()
}

fn photo(name: &str) -> RgbImage {
    let p = fixture(name);
    load_rgb(&p).unwrap_or_else(|e| panic!("load_rgb failed on fixture: {e}"))
}

/// (max |a - b|, number of differing samples) over two equally sized u8 images.
fn u8_diff(a: &RgbImage, b: &RgbImage) -> (u8, usize) {
    assert_eq!(a.dimensions(), b.dimensions(), "image sizes differ");
    a.as_raw().iter().zip(b.as_raw()).fold((0u8, 0usize), |(m, n), (&x, &y)| {
        let d = x.abs_diff(y);
        (m.max(d), n + usize::from(d != 0))
    })
}

/// (max abs error, mean abs error) of two equally long f32 slices.
fn f32_err(got: &[f32], want: &[f32]) -> (f32, f64) {
    assert_eq!(got.len(), want.len(), "lengths differ");
    assert!(!got.is_empty());
    let mut max = 0.0f32;
    let mut sum = 0.0f64;
    for (&g, &w) in got.iter().zip(want) {
        let d = (g - w).abs();
        assert!(d.is_finite(), "non-finite value: got {g}, want {w}");
        max = max.max(d);
        sum += d as f64;
    }
    (max, sum / got.len() as f64)
}

/// The reference normalized tensor [3, H, W] of a Pillow-resized reference image, from the
/// transformers-computed per-level table stored in photos.safetensors (normalisation is
/// element-wise, and the fixture script asserts table lookup == transformers output).
fn normalized_from_lut(img: &RgbImage, lut: &[Vec<f32>]) -> Vec<f32> {
    let plane = (img.width() * img.height()) as usize;
    let mut v = vec![0.0f32; 3 * plane];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            v[c * plane + i] = lut[c][p.0[c] as usize];
        }
    }
    v
}

fn fixture_lut() -> Vec<Vec<f32>> {
    let t = tensors("photos.safetensors");
    let lut = get(&t, "photos.safetensors", "clip_lut");
    assert_eq!(lut.dims(), &[3, 256], "clip_lut shape");
    lut.to_vec2::<f32>().unwrap()
}

fn preprocess_vec(img: &RgbImage, size: usize) -> Vec<f32> {
    let t = preprocess(img, size, &Device::Cpu).unwrap();
    assert_eq!(t.dims(), &[3, size, size], "preprocess shape");
    assert_eq!(t.dtype(), candle_core::DType::F32, "preprocess dtype");
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// PNG inputs (RGB, grey "L", RGBA, palette "P") and the sizes Pillow resized them to.
const PNG_CASES: &[(&str, &str, PilFilter, &[u32])] = &[
    ("astronaut_rgb", "astronaut_rgb.png", PilFilter::Bilinear, &[97, 224, 336]),
    ("astronaut_rgb", "astronaut_rgb.png", PilFilter::Bicubic, &[97, 260]),
    ("camera_grey", "camera_grey.png", PilFilter::Bilinear, &[97, 224, 336, 448]),
    ("chelsea_rgba", "chelsea_rgba.png", PilFilter::Bilinear, &[97, 224, 336]),
    ("coffee_palette", "coffee_palette.png", PilFilter::Bilinear, &[97, 224, 336]),
];

fn filter_name(f: PilFilter) -> &'static str {
    match f {
        PilFilter::Bilinear => "bilinear",
        PilFilter::Bicubic => "bicubic",
    }
}

#[test]
fn normalization_table_matches_transformers() {
    // transformers rescale (float64 * 1/255 -> float32) + normalize ((x - mean) / std in float32):
    // expected bit-exact.
    let want = fixture_lut();
    let got = clip_normalize_lut();
    for c in 0..3 {
        let (max, _) = f32_err(&got[c], &want[c]);
        assert_eq!(max, 0.0, "channel {c}: CLIP normalisation table differs from transformers by up to {max}");
    }
    // Sanity of the constants themselves (ImageNet-like CLIP statistics).
    assert!(CLIP_MEAN.iter().chain(&CLIP_STD).all(|v| (0.2..0.5).contains(v)));
}

#[test]
fn png_photos_match_pillow_exactly() {
    let lut = fixture_lut();
    let mut report = Vec::new();
    for &(name, file, filter, sizes) in PNG_CASES {
        let img = photo(file);
        for &s in sizes {
            let ref_name = format!("ref_{name}_{}_{s}.png", filter_name(filter));
            let want = reference_rgb(&ref_name);
            let got = pil_resize_rgb8(&img, s, s, filter);
            let (max, n) = u8_diff(&got, &want);
            report.push(format!("{ref_name}: max |u8 diff| {max}, {n} samples differ"));
            assert_eq!(
                max, 0,
                "{ref_name}: pil_resize_rgb8 differs from Pillow by up to {max} levels in {n} samples (expected exact)"
            );

            if filter == PilFilter::Bilinear {
                let got_t = preprocess_vec(&img, s as usize);
                let want_t = normalized_from_lut(&want, &lut);
                let (max, mean) = f32_err(&got_t, &want_t);
                report.push(format!("{ref_name}: normalized max abs err {max:e}, mean abs err {mean:e}"));
                assert!(max <= 1e-6, "{ref_name}: normalized tensor max abs error {max:e} > 1e-6");
                assert!(mean <= 1e-7, "{ref_name}: normalized tensor mean abs error {mean:e} > 1e-7");
            }
        }
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn preprocess_matches_stored_transformers_tensor() {
    // The full [3, 97, 97] tensor transformers produced (not via the table): max <= 1e-6.
    let t = tensors("photos.safetensors");
    let want = get(&t, "photos.safetensors", "norm_astronaut_rgb_97");
    assert_eq!(want.dims(), &[3, 97, 97]);
    let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let got = preprocess_vec(&photo("astronaut_rgb.png"), 97);
    let (max, mean) = f32_err(&got, &want);
    eprintln!("norm_astronaut_rgb_97: max abs err {max:e}, mean abs err {mean:e}");
    assert!(max <= 1e-6, "max abs error {max:e} > 1e-6");
    assert!(mean <= 1e-7, "mean abs error {mean:e} > 1e-7");
}

#[test]
fn load_rgb_converts_like_pil() {
    // Grey "L": replicated into three equal channels.
    let grey = photo("camera_grey.png");
    assert_eq!(grey.dimensions(), (320, 260));
    assert!(grey.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]), "grey not replicated");
    assert!(grey.pixels().any(|p| p.0[0] != grey.get_pixel(0, 0).0[0]), "grey image is flat");

    // RGBA: alpha dropped, not composited (PIL convert("RGB")); the fixture has alpha 0 corners.
    let p = fixture("chelsea_rgba.png");
    let rgba = image::open(&p).unwrap().to_rgba8();
    assert_eq!(rgba.get_pixel(0, 0).0[3], 0, "fixture corner should be fully transparent");
    let rgb = photo("chelsea_rgba.png");
    assert_eq!(rgb.dimensions(), rgba.dimensions());
    for (a, b) in rgba.pixels().zip(rgb.pixels()) {
        assert_eq!(&a.0[..3], &b.0[..], "RGBA -> RGB must keep the colour channels unchanged");
    }
    assert_ne!(rgb.get_pixel(0, 0).0, [0, 0, 0], "transparent pixel's colour should survive");

    // Palette "P": expanded; it resizes identically to Pillow (checked in the exact tests), and
    // its pixels are colours of the palette, so a few hundred distinct colours at most.
    let pal = photo("coffee_palette.png");
    let distinct: std::collections::HashSet<[u8; 3]> = pal.pixels().map(|p| p.0).collect();
    assert!(distinct.len() > 16 && distinct.len() <= 256, "{} distinct colours", distinct.len());
}

/// JPEG decoder difference: Pillow decodes with libjpeg(-turbo), image-rs with zune-jpeg; their
/// IDCT and 4:2:0 chroma upsampling round differently. Measured on coffee.jpg (256x171, quality
/// 90, 4:2:0, written by Pillow) with Pillow 13.0.0 vs image 0.25.10 / zune-jpeg 0.5.15:
/// decoded pixels differ in 27467 of 131328 samples, max 4 levels, mean 0.286 level; after the
/// 224 x 224 resize + normalisation, max abs error 4.38e-2 (3 levels / 255 / std), mean abs error
/// 4.08e-3. Bounds are set just above those numbers.
const JPEG_DECODE_MAX_U8: u8 = 5;
const JPEG_DECODE_MEAN_U8: f64 = 0.32;
/// Normalized tensor after resize: mean abs error bound (measured 4.08e-3).
const JPEG_NORM_MEAN: f64 = 4.5e-3;
/// Normalized tensor after resize: max abs error bound (measured 4.38e-2; 4 levels ~= 0.060).
const JPEG_NORM_MAX: f32 = 0.06;

#[test]
fn jpeg_photo_within_decoder_tolerance() {
    let img = photo("coffee.jpg");
    let pil_decoded = reference_rgb("ref_coffee_jpeg_decoded.png");
    let (max, n) = u8_diff(&img, &pil_decoded);
    let mean = img.as_raw().iter().zip(pil_decoded.as_raw()).map(|(&a, &b)| a.abs_diff(b) as f64).sum::<f64>()
        / img.as_raw().len() as f64;
    eprintln!("coffee.jpg decode vs Pillow: max |u8 diff| {max}, mean {mean:.4}, {n} samples differ");
    assert!(max <= JPEG_DECODE_MAX_U8, "JPEG decode differs from Pillow by {max} > {JPEG_DECODE_MAX_U8} levels");
    assert!(mean <= JPEG_DECODE_MEAN_U8, "JPEG decode mean diff {mean} > {JPEG_DECODE_MEAN_U8}");
    // The resampler itself is exact on Pillow's decode, so the whole error is the decoder's.
    let s = 224u32;
    let ref_name = format!("ref_coffee_jpeg_bilinear_{s}.png");
    let want = reference_rgb(&ref_name);
    assert_eq!(u8_diff(&pil_resize_rgb8(&pil_decoded, s, s, PilFilter::Bilinear), &want).0, 0, "{ref_name}");
    let lut = fixture_lut();
    let (max, mean) = f32_err(&preprocess_vec(&img, s as usize), &normalized_from_lut(&want, &lut));
    eprintln!("{ref_name}: normalized max abs err {max:e}, mean abs err {mean:e}");
    assert!(max <= JPEG_NORM_MAX, "{ref_name}: max abs error {max} > {JPEG_NORM_MAX}");
    assert!(mean <= JPEG_NORM_MEAN, "{ref_name}: mean abs error {mean} > {JPEG_NORM_MEAN}");
}

/// Sizes from a 40x40 noise image on both sides of Pillow 13's pass-order rule (vertical pass
/// first iff the height shrinks and 2*out_w + in_h > 2*in_w + out_h), as in
/// make_resample_fixtures.py PASS_ORDER_SIZES: (30,21) horizontal first (100 < 101), (31,21)
/// vertical first (102 > 101), (30,20) a tie (horizontal first), (45,39) and (60,30) vertical
/// first, (21,50) and (12,30) horizontal first.
const PASS_ORDER_SIZES: &[(u32, u32)] = &[(30, 21), (31, 21), (30, 20), (45, 39), (60, 30), (21, 50), (12, 30)];

#[test]
fn pass_order_matches_pillow_exactly() {
    let noise = photo("noise_40x40.png");
    assert_eq!(noise.dimensions(), (40, 40));
    let mut failures = Vec::new();
    for filter in [PilFilter::Bilinear, PilFilter::Bicubic] {
        for &(w, h) in PASS_ORDER_SIZES {
            let ref_name = format!("ref_noise_{}_{w}x{h}.png", filter_name(filter));
            let (max, n) = u8_diff(&pil_resize_rgb8(&noise, w, h, filter), &reference_rgb(&ref_name));
            if max != 0 {
                failures.push(format!("{ref_name}: max |u8 diff| {max} in {n} samples"));
            }
        }
    }
    assert!(failures.is_empty(), "pil_resize_rgb8 differs from Pillow (expected exact):\n{}", failures.join("\n"));
}

/// (grid_in, channels, grid_out), as in make_resample_fixtures.py GRID_CASES.
const GRID_CASES: &[(usize, usize, usize)] = &[(5, 3, 8), (24, 2, 73), (9, 2, 4), (7, 3, 5), (16, 2, 37)];
const GRID_TOL: f32 = 1e-5;

#[test]
fn grids_match_torch_interpolate() {
    let file = "grids.safetensors";
    let t = tensors(file);
    let mut worst = HashMap::new();
    for &(gi, ch, go) in GRID_CASES {
        let input = get(&t, file, &format!("g{gi}c{ch}_in"));
        assert_eq!(input.dims(), &[gi, gi, ch]);
        let input = input.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for mode in Interp::ALL {
            let key = format!("g{gi}c{ch}_to{go}_{}", mode.name());
            let want = get(&t, file, &key);
            assert_eq!(want.dims(), &[go, go, ch], "{key} shape");
            let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got = resize_grid(&input, gi, ch, go, mode);
            let (max, mean) = f32_err(&got, &want);
            eprintln!("{key}: max abs err {max:e}, mean abs err {mean:e}");
            assert!(max <= GRID_TOL, "{key}: resize_grid differs from torch F.interpolate by {max:e} > {GRID_TOL:e}");
            let w = worst.entry(mode.name()).or_insert(0.0f32);
            *w = w.max(max);
        }
    }
    assert_eq!(worst.len(), 4, "all four modes must be covered");
    eprintln!("worst max abs error per mode: {worst:?}");
}

#[test]
fn antialias_differs_from_plain_when_downsampling() {
    // Guards against a mode silently aliasing another one (tests above would then still pass
    // only if the fixtures were wrong too).
    let t = tensors("grids.safetensors");
    let input = get(&t, "grids.safetensors", "g9c2_in").flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let outs: Vec<Vec<f32>> = Interp::ALL.iter().map(|&m| resize_grid(&input, 9, 2, 4, m)).collect();
    for i in 0..4 {
        for j in i + 1..4 {
            let (max, _) = f32_err(&outs[i], &outs[j]);
            assert!(max > 1e-3, "{} and {} give the same 9 -> 4 result", Interp::ALL[i], Interp::ALL[j]);
        }
    }
}

fn err_message(path: &Path) -> String {
    match load_rgb(path) {
        Ok(img) => panic!("load_rgb({}) should fail, got a {}x{} image", path.display(), img.width(), img.height()),
        Err(e) => {
            eprintln!("load_rgb error: {e}");
            e.to_string()
        }
    }
}

fn assert_names_path(msg: &str, path: &Path, what: &str) {
    assert!(msg.contains(&path.display().to_string()), "{what}: error {msg:?} does not name {}", path.display());
}

#[test]
fn load_rgb_rejects_bad_files_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("missing.png");
    let m = err_message(&missing);
    assert_names_path(&m, &missing, "missing file");

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "this is not an image\n").unwrap();
    let m = err_message(&text);
    assert_names_path(&m, &text, "text file");
    assert!(m.contains("not a supported image"), "text file: {m:?}");

    let fake = dir.path().join("fake.png");
    std::fs::write(&fake, "this is not an image either\n").unwrap();
    let m = err_message(&fake);
    assert_names_path(&m, &fake, "text file named .png");

    let empty = dir.path().join("empty.jpg");
    std::fs::write(&empty, b"").unwrap();
    let m = err_message(&empty);
    assert_names_path(&m, &empty, "empty file");
    assert!(m.contains("empty"), "empty file: {m:?}");

    let png = std::fs::read(fixture("astronaut_rgb.png")).unwrap();
    for cut in [8, 33, 100, png.len() / 2, png.len() - 13] {
        let truncated = dir.path().join(format!("truncated_{cut}.png"));
        std::fs::write(&truncated, &png[..cut]).unwrap();
        let m = err_message(&truncated);
        assert_names_path(&m, &truncated, "truncated PNG");
    }

    // Pillow raises "image file is truncated" for a JPEG cut anywhere (even just its final EOI
    // marker); zune-jpeg would silently fill the missing part, so load_rgb checks for it.
    let jpg = std::fs::read(fixture("coffee.jpg")).unwrap();
    for cut in [0, 2, 20, 200, 700, jpg.len() / 2, jpg.len() - 100, jpg.len() - 2, jpg.len() - 1] {
        let truncated = dir.path().join(format!("truncated_{cut}.jpg"));
        std::fs::write(&truncated, &jpg[..cut]).unwrap();
        let m = err_message(&truncated);
        assert_names_path(&m, &truncated, "truncated JPEG");
    }
    // ... while the complete file, and one with trailing bytes after its EOI (as Motion Photos
    // carry a video there; these contain FF DA but no FF D9), load.
    let padded = dir.path().join("padded.jpg");
    std::fs::write(&padded, [jpg.as_slice(), b"\0\xff\xda\x00\x08trailing"].concat()).unwrap();
    let got = load_rgb(&padded).expect("JPEG with trailing bytes");
    assert_eq!(got, load_rgb(&fixture("coffee.jpg")).unwrap(), "trailing bytes changed the decode");

    // A PNG header declaring a 0 x 5 image (valid CRC): rejected, not a 0-sized RgbImage.
    let zero = dir.path().join("zero_width.png");
    std::fs::write(&zero, png_header_only(0, 5)).unwrap();
    let m = err_message(&zero);
    assert_names_path(&m, &zero, "zero-width PNG");

    let folder = dir.path().join("a_directory.png");
    std::fs::create_dir(&folder).unwrap();
    let m = err_message(&folder);
    assert_names_path(&m, &folder, "directory");
}

/// PNG signature + IHDR (8-bit RGB) + IEND, with correct CRCs.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn resize_edge_cases() {
    // Same size: a copy (Pillow's Image.resize returns self.copy()).
    let img = photo("coffee_palette.png");
    let same = pil_resize_rgb8(&img, img.width(), img.height(), PilFilter::Bilinear);
    assert_eq!(same.as_raw(), img.as_raw());
    // One dimension unchanged: only the other pass runs, so unchanged rows stay exact in x.
    let wide = pil_resize_rgb8(&img, 100, img.height(), PilFilter::Bilinear);
    assert_eq!(wide.dimensions(), (100, img.height()));
    // 1x1 source: every output pixel is that pixel.
    let one = RgbImage::from_pixel(1, 1, image::Rgb([10, 200, 30]));
    for f in [PilFilter::Bilinear, PilFilter::Bicubic] {
        let r = pil_resize_rgb8(&one, 7, 3, f);
        assert!(r.pixels().all(|p| p.0 == [10, 200, 30]), "{f:?}");
    }
    // Grid identity size is returned unchanged.
    let g: Vec<f32> = (0..4 * 4 * 3).map(|i| i as f32 * 0.1).collect();
    for m in Interp::ALL {
        assert_eq!(resize_grid(&g, 4, 3, 4, m), g, "{m}");
    }
    // preprocess rejects size 0.
    assert!(preprocess(&img, 0, &Device::Cpu).is_err());
}

#[test]
fn sixteen_bit_pngs_convert_like_pillow() {
    // Pillow 13 (checked when writing this): a 16-bit grey PNG opens as mode "I;16" and
    // convert("RGB") clips each value to 255; 16-bit RGB / RGBA / grey+alpha PNGs are unpacked
    // with the "...;16B" raw modes, which keep the high byte.
    let dir = tempfile::tempdir().unwrap();
    let grey = dir.path().join("grey16.png");
    image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_raw(4, 1, vec![0, 200, 4000, 65535])
        .unwrap()
        .save(&grey)
        .unwrap();
    let got: Vec<u8> = load_rgb(&grey).unwrap().pixels().map(|p| p.0[0]).collect();
    assert_eq!(got, [0, 200, 255, 255], "16-bit grey -> RGB must clip like Pillow's I;16 -> RGB");

    let rgb = dir.path().join("rgb16.png");
    image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_raw(2, 1, vec![4000, 300, 65535, 255, 256, 0x8080])
        .unwrap()
        .save(&rgb)
        .unwrap();
    let got = load_rgb(&rgb).unwrap();
    assert_eq!(got.as_raw(), &[15, 1, 255, 0, 1, 128], "16-bit RGB -> RGB must keep the high byte");

    let la = dir.path().join("la16.png");
    image::ImageBuffer::<image::LumaA<u16>, Vec<u16>>::from_raw(2, 1, vec![4000, 0, 65535, 65535])
        .unwrap()
        .save(&la)
        .unwrap();
    let got = load_rgb(&la).unwrap();
    assert_eq!(got.as_raw(), &[15, 15, 15, 255, 255, 255], "16-bit grey+alpha -> RGB must keep the high byte");
}

/// Modes whose conversion image-rs does differently from Pillow, against Pillow's own
/// `convert("RGB")` (tools/reference/make_pixel_mode_fixtures.py): exact, but for the CMYK JPEG
/// (two JPEG decoders: within 2 levels).
#[test]
fn pixel_modes_convert_like_pillow() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pixel_modes");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    for (file, want) in expected["images"].as_object().unwrap() {
        let got = load_rgb(&dir.join(file)).unwrap();
        let size: Vec<u64> = want["size"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!([got.width() as u64, got.height() as u64], size[..], "{file}");
        let want: Vec<u8> = want["rgb"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8))
            .collect();
        let tolerance = if file.ends_with(".jpg") { 2 } else { 0 };
        let worst = got.as_raw().iter().zip(&want).map(|(&a, &b)| a.abs_diff(b)).max().unwrap();
        assert!(
            worst <= tolerance,
            "{file}: differs from Pillow by up to {worst}\n got {:?}\nwant {:?}",
            got.as_raw(),
            want
        );
    }
}

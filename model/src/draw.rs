//! Drawing detections on an image for `--save`: box outlines, and a label with its score on a
//! filled tab, in the 8x8 public-domain bitmap font of the `font8x8` crate (scaled).

use font8x8::legacy::BASIC_LEGACY;
use image::{Rgb, RgbImage};

const PALETTE: [[u8; 3]; 10] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [250, 190, 212],
];

/// Checks a path an annotated image is to be saved to, before the work that makes it: an
/// extension naming a format this build writes, in a folder that exists.
pub fn check_save_path(path: &std::path::Path) -> Result<(), String> {
    let format = image::ImageFormat::from_path(path)
        .map_err(|_| format!("{}: the extension names no image format (use .png or .jpg)", path.display()))?;
    if !format.writing_enabled() {
        return Err(format!("{}: this build cannot write {format:?} images (use .png or .jpg)", path.display()));
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    if !dir.is_dir() {
        return Err(format!("{}: the folder {} does not exist", path.display(), dir.display()));
    }
    Ok(())
}

/// A stable colour per label.
pub fn label_color(label: &str) -> Rgb<u8> {
    let h = label.bytes().fold(2166136261u32, |h, b| (h ^ b as u32).wrapping_mul(16777619));
    Rgb(PALETTE[(h as usize) % PALETTE.len()])
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

/// Rectangle outline, `thickness` pixels inward from xyxy (pixel coordinates, clipped).
pub fn draw_rect(img: &mut RgbImage, b: [f64; 4], c: Rgb<u8>, thickness: i64) {
    let (x1, y1, x2, y2) = (b[0].round() as i64, b[1].round() as i64, b[2].round() as i64 - 1, b[3].round() as i64 - 1);
    for t in 0..thickness {
        for x in x1..=x2 {
            put(img, x, y1 + t, c);
            put(img, x, y2 - t, c);
        }
        for y in y1..=y2 {
            put(img, x1 + t, y, c);
            put(img, x2 - t, y, c);
        }
    }
}

/// Text with a filled background; ASCII only (other characters are drawn as '?').
pub fn draw_label(img: &mut RgbImage, x: i64, y: i64, text: &str, bg: Rgb<u8>, scale: i64) {
    let w = 8 * scale * text.chars().count() as i64 + 2 * scale;
    let h = 8 * scale + 2 * scale;
    let y = if y - h < 0 { y } else { y - h };
    for yy in y..y + h {
        for xx in x..x + w {
            put(img, xx, yy, bg);
        }
    }
    let luminance = 0.299 * bg[0] as f64 + 0.587 * bg[1] as f64 + 0.114 * bg[2] as f64;
    let fg = if luminance > 140.0 { Rgb([0, 0, 0]) } else { Rgb([255, 255, 255]) };
    for (i, ch) in text.chars().enumerate() {
        let code = if (ch as u32) < 128 { ch as usize } else { '?' as usize };
        let glyph = BASIC_LEGACY[code];
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits >> col & 1 == 1 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            put(
                                img,
                                x + scale + (i as i64 * 8 + col) * scale + dx,
                                y + scale + row as i64 * scale + dy,
                                fg,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Draws every box with `label score` above it.
pub fn draw_detections(img: &mut RgbImage, dets: &[(Option<String>, [f64; 4], f64)]) {
    let short = img.width().min(img.height()) as i64;
    let thickness = (short / 300).max(2);
    let scale = (short / 400).max(1);
    for (label, b, score) in dets {
        let name = label.clone().unwrap_or_else(|| "object".into());
        let c = label_color(&name);
        draw_rect(img, *b, c, thickness);
        let shown: String = name.chars().take(40).collect();
        draw_label(img, b[0].round() as i64, b[1].round() as i64, &format!("{shown} {}", score_text(*score)), c, scale);
    }
}

/// A score as drawn: two decimals, or two significant digits below 0.01 (the confidence is a
/// product over every coordinate token, so a weakly trained model's correct boxes can score
/// 0.0009, which two decimals would show as 0.00).
pub fn score_text(score: f64) -> String {
    if score >= 0.01 || score <= 0.0 {
        format!("{score:.2}")
    } else {
        format!("{score:.1e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_scores_keep_two_digits() {
        assert_eq!(score_text(0.5), "0.50");
        assert_eq!(score_text(0.01), "0.01");
        assert_eq!(score_text(0.000877), "8.8e-4");
        assert_eq!(score_text(0.0), "0.00");
    }

    #[test]
    fn draws_inside_and_clips() {
        let mut img = RgbImage::new(40, 30);
        draw_detections(
            &mut img,
            &[(Some("cat".into()), [5.0, 12.0, 20.0, 25.0], 0.5), (None, [-10.0, -10.0, 100.0, 100.0], 1.0)],
        );
        let c = label_color("cat");
        assert_eq!(*img.get_pixel(5, 20), c); // left edge of the box
        assert_eq!(*img.get_pixel(12, 24), c); // bottom edge
        assert_eq!(*img.get_pixel(12, 18), Rgb([0, 0, 0])); // inside untouched
    }
}

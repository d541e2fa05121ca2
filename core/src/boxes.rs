//! Boxes and coordinate frames. Griffon writes boxes as xyxy normalized by the image width and
//! height, clamped to [0, 1], with 3 decimals (shared/GRIFFON_FORMAT.md, "Answer grammar").

use serde::{Deserialize, Serialize};

/// A box in normalized xyxy coordinates (fractions of the image width / height).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NormBox {
    pub x1: f64,
    pub y1: f64,
    pub x2: f64,
    pub y2: f64,
}

/// A box in pixel xyxy coordinates of some image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PixelBox {
    pub x1: f64,
    pub y1: f64,
    pub x2: f64,
    pub y2: f64,
}

/// Into [0, 1]; -0.0 becomes 0.0 (clamp keeps the sign of a zero, and `format` would write
/// `-0.000`, which the answer grammar and the reference's regex refuse). NaN stays NaN.
fn clamp01(v: f64) -> f64 {
    v.clamp(0.0, 1.0) + 0.0
}

impl NormBox {
    pub fn new(x1: f64, y1: f64, x2: f64, y2: f64) -> Self {
        Self { x1, y1, x2, y2 }
    }

    pub fn clamped(self) -> Self {
        Self { x1: clamp01(self.x1), y1: clamp01(self.y1), x2: clamp01(self.x2), y2: clamp01(self.y2) }
    }

    pub fn to_pixels(self, width: u32, height: u32) -> PixelBox {
        let (w, h) = (width as f64, height as f64);
        PixelBox { x1: self.x1 * w, y1: self.y1 * h, x2: self.x2 * w, y2: self.y2 * h }
    }

    pub fn area(self) -> f64 {
        (self.x2 - self.x1).max(0.0) * (self.y2 - self.y1).max(0.0)
    }

    pub fn iou(self, o: NormBox) -> f64 {
        iou_xyxy([self.x1, self.y1, self.x2, self.y2], [o.x1, o.y1, o.x2, o.y2])
    }

    /// `[0.123,0.456,0.789,0.999]`: clamped to [0, 1], 3 decimals, no spaces.
    pub fn format(self) -> String {
        let b = self.clamped();
        format!("[{:.3},{:.3},{:.3},{:.3}]", b.x1, b.y1, b.x2, b.y2)
    }

    pub fn as_array(self) -> [f64; 4] {
        [self.x1, self.y1, self.x2, self.y2]
    }
}

impl PixelBox {
    pub fn new(x1: f64, y1: f64, x2: f64, y2: f64) -> Self {
        Self { x1, y1, x2, y2 }
    }

    /// Normalizes by the image size (not clamped).
    pub fn to_norm(self, width: u32, height: u32) -> NormBox {
        let (w, h) = (width as f64, height as f64);
        NormBox { x1: self.x1 / w, y1: self.y1 / h, x2: self.x2 / w, y2: self.y2 / h }
    }

    /// COCO `[x, y, w, h]`.
    pub fn to_xywh(self) -> [f64; 4] {
        [self.x1, self.y1, self.x2 - self.x1, self.y2 - self.y1]
    }

    pub fn as_array(self) -> [f64; 4] {
        [self.x1, self.y1, self.x2, self.y2]
    }

    pub fn width(self) -> f64 {
        self.x2 - self.x1
    }

    pub fn height(self) -> f64 {
        self.y2 - self.y1
    }

    /// Checks the box is finite, has positive area and lies inside a `width` x `height` image.
    pub fn validate(self, width: u32, height: u32) -> Result<(), String> {
        self.validate_within(width, height, 0.0)
    }

    /// [`PixelBox::validate`], allowing coordinates up to `slop` pixels past the image's edges.
    pub fn validate_within(self, width: u32, height: u32, slop: f64) -> Result<(), String> {
        let a = self.as_array();
        if a.iter().any(|v| !v.is_finite()) {
            return Err(format!("box {a:?} has a non-finite coordinate"));
        }
        if self.x2 <= self.x1 || self.y2 <= self.y1 {
            return Err(format!("box {a:?} has zero or negative area (need x1 < x2 and y1 < y2)"));
        }
        let (w, h) = (width as f64, height as f64);
        // (within the slop, it must still overlap the image: a box wholly in the margin is none of it)
        let beyond = self.x1 < -slop || self.y1 < -slop || self.x2 > w + slop || self.y2 > h + slop;
        if beyond || self.x1 >= w || self.y1 >= h || self.x2 <= 0.0 || self.y2 <= 0.0 {
            return Err(format!("box {a:?} lies outside the {width}x{height} image"));
        }
        Ok(())
    }
}

/// IoU of two xyxy boxes (continuous coordinates, no +1).
pub fn iou_xyxy(a: [f64; 4], b: [f64; 4]) -> f64 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |x: [f64; 4]| (x[2] - x[0]).max(0.0) * (x[3] - x[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_clamps_and_rounds() {
        assert_eq!(NormBox::new(-0.1, 0.12345, 0.5, 1.2).format(), "[0.000,0.123,0.500,1.000]");
        // a negative zero is written as zero (`-0.000` is outside the answer grammar)
        assert_eq!(NormBox::new(-0.0, -0.0, 0.5, 0.5).format(), "[0.000,0.000,0.500,0.500]");
        assert_eq!(PixelBox::new(-0.0, 1.0, 5.0, 5.0).to_norm(10, 10).format(), "[0.000,0.100,0.500,0.500]");
    }

    #[test]
    fn iou_basic() {
        assert_eq!(iou_xyxy([0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]), 1.0 / 7.0);
        assert_eq!(iou_xyxy([0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0]), 0.0);
        assert_eq!(iou_xyxy([0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]), 0.0);
    }

    #[test]
    fn pixel_validation() {
        assert!(PixelBox::new(0.0, 0.0, 10.0, 10.0).validate(10, 10).is_ok());
        assert!(PixelBox::new(0.0, 0.0, 11.0, 10.0).validate(10, 10).unwrap_err().contains("outside"));
        assert!(PixelBox::new(5.0, 0.0, 5.0, 10.0).validate(10, 10).unwrap_err().contains("zero"));
        assert!(PixelBox::new(f64::NAN, 0.0, 5.0, 10.0).validate(10, 10).unwrap_err().contains("non-finite"));
    }
}

//! Prompt assembly as the reference does it (source: jefferyZhan/Griffon `griffon/mm_utils.py`
//! `tokenizer_image_token`, `griffon/eval/run_griffon.py`, and `griffon_arch.py`
//! `prepare_inputs_labels_for_multimodal`):
//!
//! 1. every `<region>` in the rendered prompt becomes `<image>`;
//! 2. the prompt is split on `<image>` and each chunk is tokenized on its own (with the
//!    tokenizer's special tokens, so tokens never merge across a placeholder);
//! 3. if the first chunk starts with BOS, that one BOS is kept and the first token of *every*
//!    chunk is dropped (each chunk carries its own BOS);
//! 4. placeholder k (0-based) receives the main image's tokens when k is even and the region
//!    token of the image before it when k is odd.

use crate::template::{IMAGE_TOKEN, REGION_TOKEN};
use std::fmt;

/// Which visual input fills a placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    /// The i-th main image (all its projected tokens).
    Image(usize),
    /// The region / exemplar token belonging to main image i, i.e. the i-th region image.
    Region(usize),
}

/// One element of an assembled prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    Token(u32),
    Visual(Placeholder),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptError(pub String);

impl fmt::Display for PromptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for PromptError {}

/// Splits a rendered prompt into text chunks and the placeholders between them
/// (`chunks.len() == placeholders.len() + 1`).
pub fn split_placeholders(prompt: &str) -> (Vec<String>, Vec<Placeholder>) {
    let unified = prompt.replace(REGION_TOKEN, IMAGE_TOKEN);
    let chunks: Vec<String> = unified.split(IMAGE_TOKEN).map(str::to_string).collect();
    let placeholders = (0..chunks.len() - 1)
        .map(|k| if k % 2 == 0 { Placeholder::Image(k / 2) } else { Placeholder::Region(k / 2) })
        .collect();
    (chunks, placeholders)
}

/// Checks that each placeholder is written as what the reference fills it with: the reference
/// reads `<region>` as `<image>` and fills the placeholders by position alone (image, region,
/// image, region, ...), so a `<region>` written where an image goes, or a second `<image>` where
/// a region goes, would silently swap the pictures.
pub fn check_marker_order(prompt: &str) -> Result<(), PromptError> {
    let mut rest = prompt;
    let mut k = 0;
    loop {
        let next = [(rest.find(IMAGE_TOKEN), IMAGE_TOKEN), (rest.find(REGION_TOKEN), REGION_TOKEN)]
            .into_iter()
            .filter_map(|(at, tok)| at.map(|a| (a, tok)))
            .min_by_key(|(a, _)| *a);
        let Some((at, written)) = next else { return Ok(()) };
        let expected = if k % 2 == 0 { IMAGE_TOKEN } else { REGION_TOKEN };
        if written != expected {
            return Err(PromptError(format!(
                "placeholder {} of the prompt is written {written} but the reference fills it with {}: \
                 placeholders alternate {IMAGE_TOKEN}, {REGION_TOKEN}, {IMAGE_TOKEN}, ... (each image's \
                 {IMAGE_TOKEN} before its {REGION_TOKEN})",
                k + 1,
                if expected == IMAGE_TOKEN { "a main image" } else { "a region" }
            )));
        }
        rest = &rest[at + written.len()..];
        k += 1;
    }
}

/// Joins per-chunk token ids (each tokenized with special tokens) with the placeholders, keeping
/// a single BOS exactly as `tokenizer_image_token` does.
pub fn assemble_ids(chunk_ids: &[Vec<u32>], placeholders: &[Placeholder], bos: Option<u32>) -> Vec<Piece> {
    assert_eq!(chunk_ids.len(), placeholders.len() + 1, "one more chunk than placeholders");
    let mut out = Vec::new();
    let offset = match (chunk_ids.first().and_then(|c| c.first()), bos) {
        (Some(&first), Some(b)) if first == b => {
            out.push(Piece::Token(b));
            1
        }
        _ => 0,
    };
    for (i, chunk) in chunk_ids.iter().enumerate() {
        out.extend(chunk.get(offset..).unwrap_or(&[]).iter().map(|&t| Piece::Token(t)));
        if let Some(p) = placeholders.get(i) {
            out.push(Piece::Visual(*p));
        }
    }
    out
}

/// Checks that the placeholders can be filled from `n_images` main images and `n_regions`
/// region images, and that every given image is used.
pub fn check_visual_counts(placeholders: &[Placeholder], n_images: usize, n_regions: usize) -> Result<(), PromptError> {
    let need_images = placeholders.iter().filter(|p| matches!(p, Placeholder::Image(_))).count();
    let need_regions = placeholders.len() - need_images;
    if need_regions > 0 && need_images < need_regions {
        // cannot happen by construction (placeholders alternate starting with an image)
        return Err(PromptError("a <region> placeholder comes before any image".into()));
    }
    if need_images != n_images {
        return Err(PromptError(format!(
            "the prompt places {need_images} main image(s) (the reference alternates placeholders: \
             image, region, image, region, ...) but {n_images} image(s) were given"
        )));
    }
    if need_regions != n_regions {
        return Err(PromptError(format!(
            "the prompt has {need_regions} <region> placeholder(s) but {n_regions} region image(s) were given"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_order_must_follow_the_alternation() {
        for ok in
            ["no markers", "<image>\nfind", "a<image>b<region>c", "<image><region><image><region>", "<image><image"]
        {
            assert!(check_marker_order(ok).is_ok(), "{ok}");
        }
        let e = check_marker_order("<region> first <image>").unwrap_err().0;
        assert!(e.contains("placeholder 1 of the prompt is written <region>") && e.contains("a main image"), "{e}");
        let e = check_marker_order("<image> and <image>").unwrap_err().0;
        assert!(e.contains("placeholder 2 of the prompt is written <image>") && e.contains("a region"), "{e}");
        let e = check_marker_order("<image><region><region>").unwrap_err().0;
        assert!(e.contains("placeholder 3"), "{e}");
    }

    #[test]
    fn alternating_placeholders() {
        let (chunks, ph) = split_placeholders("a<image>\nb <region> c");
        assert_eq!(chunks, vec!["a", "\nb ", " c"]);
        assert_eq!(ph, vec![Placeholder::Image(0), Placeholder::Region(0)]);
        let (_, ph) = split_placeholders("<image><region><image><region>");
        assert_eq!(
            ph,
            vec![Placeholder::Image(0), Placeholder::Region(0), Placeholder::Image(1), Placeholder::Region(1)]
        );
    }

    #[test]
    fn one_bos_kept_and_each_chunk_stripped() {
        let ph = [Placeholder::Image(0), Placeholder::Region(0)];
        let ids = assemble_ids(&[vec![2, 10, 11], vec![2, 12], vec![2]], &ph, Some(2));
        assert_eq!(
            ids,
            vec![
                Piece::Token(2),
                Piece::Token(10),
                Piece::Token(11),
                Piece::Visual(Placeholder::Image(0)),
                Piece::Token(12),
                Piece::Visual(Placeholder::Region(0)),
            ]
        );
    }

    #[test]
    fn no_bos_nothing_stripped() {
        let ph = [Placeholder::Image(0)];
        let ids = assemble_ids(&[vec![10], vec![11, 12]], &ph, Some(2));
        assert_eq!(
            ids,
            vec![Piece::Token(10), Piece::Visual(Placeholder::Image(0)), Piece::Token(11), Piece::Token(12)]
        );
        // an empty chunk must not panic
        let ids = assemble_ids(&[vec![2, 5], vec![]], &ph, Some(2));
        assert_eq!(ids, vec![Piece::Token(2), Piece::Token(5), Piece::Visual(Placeholder::Image(0))]);
    }

    #[test]
    fn counts_checked() {
        let (_, ph) = split_placeholders("<image> x <region> y <region>");
        let e = check_visual_counts(&ph, 1, 2).unwrap_err();
        assert!(e.0.contains("2 main image"), "{e}");
        let (_, ph) = split_placeholders("<image> x <region>");
        assert!(check_visual_counts(&ph, 1, 1).is_ok());
        assert!(check_visual_counts(&ph, 1, 0).unwrap_err().0.contains("1 <region>"));
        let (_, ph) = split_placeholders("<image> x");
        assert!(check_visual_counts(&ph, 1, 1).unwrap_err().0.contains("0 <region>"));
    }
}

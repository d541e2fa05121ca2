//! The answer grammar: `name-[x1,y1,x2,y2]&name-[...]`, the name-less counting form
//! `[..]&[..]`, and `None` (shared/GRIFFON_FORMAT.md, "Answer grammar").
//!
//! The reference parser (jefferyZhan/Griffon `eval/run_griffon.py` `extract`) splits on `&`, keeps
//! pieces matching `\[\d+\.\d{3},...\]`, takes the name as the text before `-` (the second-to-last
//! part when there are several `-`), and drops x2 < x1 or y2 < y1. It leaves names unstripped,
//! cuts hyphenated names ("t-shirt" -> "shirt") and loses a whole answer when a piece carries
//! trailing text. This parser instead:
//! * finds every `[a,b,c,d]` group (spaces and any number of decimals allowed) in each `&` piece;
//! * names a box by the text before its `[`, trimmed, without the joining `-` (hyphens inside the
//!   name are kept); a box with no name text takes the previous box's name in the same piece, or none;
//! * clamps coordinates to [0, 1]; drops inverted boxes, boxes wholly outside [0, 1] (clamping
//!   would collapse them to an edge) and non-numeric groups;
//! * removes exact duplicates and near duplicates (same label, IoU >= [`NEAR_DUPLICATE_IOU`]),
//!   keeping them in [`ParsedAnswer::repeats`] for scores that count every box;
//! * reports everything it dropped, with the reason. It never panics.

use crate::boxes::NormBox;
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Same-label boxes overlapping at least this much are near duplicates; the later one is dropped.
pub const NEAR_DUPLICATE_IOU: f64 = 0.95;

/// The literal answer for "nothing found".
pub const NONE_ANSWER: &str = "None";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// The object name, or `None` for the counting form.
    pub label: Option<String>,
    pub norm: NormBox,
    /// Byte range of the name in the answer text.
    pub name_span: Option<Range<usize>>,
    /// Byte range of `[...]` in the answer text.
    pub box_span: Range<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dropped {
    pub text: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ParsedAnswer {
    pub instances: Vec<Instance>,
    pub dropped: Vec<Dropped>,
    /// The boxes removed as repeats (each also in `dropped`, saying which box it repeats), in
    /// answer order. The reference's evaluation keeps them (its parser removes nothing), so a
    /// COCO score or a count of the answer's boxes takes them back.
    #[serde(default)]
    pub repeats: Vec<Instance>,
    /// The answer was the explicit empty answer `None`.
    pub is_none: bool,
}

/// `name-[..]&name-[..]` sorted by x1 (stable), or `None` when empty.
pub fn format_instances(items: &[(String, NormBox)]) -> String {
    if items.is_empty() {
        return NONE_ANSWER.to_string();
    }
    let mut v: Vec<&(String, NormBox)> = items.iter().collect();
    v.sort_by(|a, b| a.1.clamped().x1.total_cmp(&b.1.clamped().x1));
    v.iter().map(|(n, b)| format!("{n}-{}", b.format())).collect::<Vec<_>>().join("&")
}

/// The counting form `[..]&[..]` sorted by x1, or `None` when empty.
pub fn format_boxes(boxes: &[NormBox]) -> String {
    if boxes.is_empty() {
        return NONE_ANSWER.to_string();
    }
    let mut v = boxes.to_vec();
    v.sort_by(|a, b| a.clamped().x1.total_cmp(&b.clamped().x1));
    v.iter().map(|b| b.format()).collect::<Vec<_>>().join("&")
}

fn parse_number(s: &str) -> Option<f64> {
    let t = s.trim();
    if t.is_empty() || !t.chars().all(|c| c.is_ascii_digit() || c == '.' || c == '-' || c == '+') {
        return None;
    }
    t.parse::<f64>().ok().filter(|v| v.is_finite())
}

fn parse_group(inner: &str) -> Result<NormBox, String> {
    let parts: Vec<&str> = inner.split(',').collect();
    if parts.len() != 4 {
        return Err(format!("{} coordinates instead of 4", parts.len()));
    }
    let mut v = [0.0; 4];
    for (i, p) in parts.iter().enumerate() {
        v[i] = parse_number(p).ok_or_else(|| format!("coordinate {:?} is not a number", p.trim()))?;
    }
    Ok(NormBox::new(v[0], v[1], v[2], v[3]))
}

/// Trims whitespace and one joining `-` (with whitespace around it) from the end of a name;
/// `after_box`: the name follows another box in the same `&` piece, so separators written
/// between the two (`cat-[..], dog-[..]`: `,` `;` `:`) are not part of it either.
fn clean_name(raw: &str, offset: usize, after_box: bool) -> Option<(String, Range<usize>)> {
    let mut s = raw.trim_end();
    if let Some(x) = s.strip_suffix('-') {
        s = x.trim_end();
    }
    let s2 = if after_box {
        s.trim_start_matches(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | ':'))
    } else {
        s.trim_start()
    };
    let lead = s.len() - s2.len();
    if s2.is_empty() {
        None
    } else {
        Some((s2.to_string(), offset + lead..offset + lead + s2.len()))
    }
}

/// A span `lo..hi` (lo <= hi) that clamping to [0, 1] would collapse to an edge: wholly beyond
/// it, or touching it from outside with a positive length (`[1.0, 1.4]`). A point span inside
/// (`[0, 0]`) is kept as written.
fn outside_unit(lo: f64, hi: f64) -> bool {
    hi < 0.0 || lo > 1.0 || (hi > lo && (hi <= 0.0 || lo >= 1.0))
}

fn is_none_text(s: &str) -> bool {
    let t = s.trim().trim_end_matches(['.', '!']);
    t.eq_ignore_ascii_case(NONE_ANSWER)
}

/// What a dropped piece reports: its text with its name, without the separator after the box
/// before it (`, ` in `cat-[..], dog-[0.3`) or surrounding whitespace.
fn dropped_text(s: &str, after_box: bool) -> String {
    let s =
        if after_box { s.trim_start_matches(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | ':')) } else { s };
    s.trim().to_string()
}

/// Parses model text. Never panics; everything not understood is reported in `dropped`.
pub fn parse_answer(text: &str) -> ParsedAnswer {
    let mut out = ParsedAnswer::default();
    if is_none_text(text) {
        out.is_none = true;
        return out;
    }
    let mut piece_start = 0;
    for piece in text.split('&') {
        let base = piece_start;
        piece_start += piece.len() + 1;
        let mut cursor = 0; // byte offset inside the piece
        let mut last_label: Option<(String, Range<usize>)> = None;
        let mut found_any = false;
        while let Some(open_rel) = piece[cursor..].find('[') {
            let open = cursor + open_rel;
            let Some(close_rel) = piece[open..].find(']') else {
                out.dropped.push(Dropped {
                    text: dropped_text(&piece[cursor..], cursor > 0),
                    reason: "unclosed bracket".into(),
                });
                cursor = piece.len();
                break;
            };
            let close = open + close_rel;
            // A nested '[' before ']' means the first '[' is junk: restart there.
            if let Some(nested) = piece[open + 1..close].rfind('[') {
                let junk = &piece[open..open + 1 + nested];
                // (reported with the name written before it, which names nothing now)
                let text = dropped_text(&piece[cursor..open + 1 + nested], cursor > 0);
                out.dropped.push(Dropped { text, reason: "unclosed bracket".into() });
                // the junk may end with the next box's name (`[0.3 bird-[...]`): what follows its
                // partial coordinates (a run of digits, points and commas after the `[`) names that
                // box, not the previous box's name (`[0.3 No. 5 bus-[` names "No. 5 bus")
                let coords =
                    junk[1..].trim_start().trim_start_matches(|c: char| c.is_ascii_digit() || matches!(c, '.' | ','));
                let tail = junk.len() - coords.len();
                if let Some(name) = clean_name(&junk[tail..], base + open + tail, true) {
                    last_label = Some(name);
                }
                cursor = open + 1 + nested;
                continue;
            }
            let name_text = &piece[cursor..open];
            let label = match clean_name(name_text, base + cursor, cursor > 0) {
                Some(l) => Some(l),
                None => last_label.clone(),
            };
            match parse_group(&piece[open + 1..close]) {
                Ok(b) => {
                    if b.x2 < b.x1 || b.y2 < b.y1 {
                        out.dropped.push(Dropped {
                            text: dropped_text(&piece[cursor..=close], cursor > 0),
                            reason: "inverted box (x2 < x1 or y2 < y1)".into(),
                        });
                    } else if outside_unit(b.x1, b.x2) || outside_unit(b.y1, b.y2) {
                        out.dropped.push(Dropped {
                            text: dropped_text(&piece[cursor..=close], cursor > 0),
                            reason: "box wholly outside the image (coordinates beyond [0, 1])".into(),
                        });
                    } else {
                        out.instances.push(Instance {
                            label: label.as_ref().map(|l| l.0.clone()),
                            norm: b.clamped(),
                            name_span: label.as_ref().map(|l| l.1.clone()),
                            box_span: base + open..base + close + 1,
                        });
                        found_any = true;
                    }
                }
                Err(reason) => {
                    out.dropped.push(Dropped { text: dropped_text(&piece[cursor..=close], cursor > 0), reason })
                }
            }
            last_label = label;
            cursor = close + 1;
        }
        let rest = piece[cursor.min(piece.len())..].trim();
        if !rest.is_empty() && !is_none_text(rest) {
            let reason = if found_any || cursor > 0 { "text after the last box" } else { "no box" };
            out.dropped.push(Dropped { text: rest.to_string(), reason: reason.into() });
        }
    }
    dedupe(&mut out);
    out
}

/// The reasons [`parse_answer`] gives a removed duplicate, followed by the kept box's index.
const DUPLICATE: &str = "duplicate of box";
const NEAR_DUPLICATE: &str = "near duplicate of box";

impl Dropped {
    /// Whether this is a box the answer wrote twice (exactly, or nearly: same label, IoU >=
    /// [`NEAR_DUPLICATE_IOU`]), removed by [`parse_answer`]: a box the answer holds all the same,
    /// which a count of the answer's boxes includes.
    pub fn is_duplicate(&self) -> bool {
        self.reason.starts_with(DUPLICATE) || self.reason.starts_with(NEAR_DUPLICATE)
    }
}

fn dedupe(out: &mut ParsedAnswer) {
    let mut kept: Vec<Instance> = Vec::with_capacity(out.instances.len());
    for inst in out.instances.drain(..) {
        let dup = kept.iter().position(|k| k.label == inst.label && k.norm.format() == inst.norm.format());
        let near = kept.iter().position(|k| k.label == inst.label && k.norm.iou(inst.norm) >= NEAR_DUPLICATE_IOU);
        let label = inst.label.clone().map(|l| format!("{l}-")).unwrap_or_default();
        let reason = match (dup, near) {
            (Some(k), _) => format!("{DUPLICATE} {k}"),
            (None, Some(k)) => format!("{NEAR_DUPLICATE} {k} (IoU >= {NEAR_DUPLICATE_IOU})"),
            (None, None) => {
                kept.push(inst);
                continue;
            }
        };
        out.dropped.push(Dropped { text: format!("{label}{}", inst.norm.format()), reason });
        out.repeats.push(inst);
    }
    out.instances = kept;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(p: &ParsedAnswer) -> Vec<Option<&str>> {
        p.instances.iter().map(|i| i.label.as_deref()).collect()
    }

    #[test]
    fn plain_detection_answer() {
        let t = "person-[0.100,0.200,0.300,0.400]&car-[0.500,0.500,0.900,0.950]";
        let p = parse_answer(t);
        assert_eq!(labels(&p), vec![Some("person"), Some("car")]);
        assert_eq!(p.instances[1].norm, NormBox::new(0.5, 0.5, 0.9, 0.95));
        assert!(p.dropped.is_empty());
        assert_eq!(&t[p.instances[1].name_span.clone().unwrap()], "car");
        assert_eq!(&t[p.instances[1].box_span.clone()], "[0.500,0.500,0.900,0.950]");
    }

    // The reference parser's known failure cases.
    #[test]
    fn hyphenated_names_are_kept_whole() {
        let p = parse_answer("t-shirt-[0.100,0.200,0.300,0.400]");
        assert_eq!(labels(&p), vec![Some("t-shirt")]);
    }

    #[test]
    fn names_are_stripped() {
        let p = parse_answer(" person - [0.100,0.200,0.300,0.400] & dog-[0.2,0.2,0.3,0.3]");
        assert_eq!(labels(&p), vec![Some("person"), Some("dog")]);
    }

    #[test]
    fn trailing_text_keeps_the_good_boxes() {
        let p = parse_answer("cat-[0.100,0.200,0.300,0.400] and that is all");
        assert_eq!(p.instances.len(), 1);
        assert_eq!(
            p.dropped,
            vec![Dropped { text: "and that is all".into(), reason: "text after the last box".into() }]
        );
    }

    #[test]
    fn spaces_and_precision_tolerated() {
        let p = parse_answer("cat-[ 0.1, 0.25 ,0.5,0.75 ]");
        assert_eq!(p.instances[0].norm, NormBox::new(0.1, 0.25, 0.5, 0.75));
    }

    #[test]
    fn broken_pieces_reported() {
        let p = parse_answer("cat-[0.1,0.2,0.3]&dog-[0.1,0.2,0.3,0.4]&bird-[0.5,0.5,0.4,0.9]&fish-[0.1,0.2");
        assert_eq!(labels(&p), vec![Some("dog")]);
        let reasons: Vec<&str> = p.dropped.iter().map(|d| d.reason.as_str()).collect();
        assert_eq!(
            reasons,
            vec!["3 coordinates instead of 4", "inverted box (x2 < x1 or y2 < y1)", "unclosed bracket"]
        );
        // each with the name written before it: nothing of the answer goes unreported
        let texts: Vec<&str> = p.dropped.iter().map(|d| d.text.as_str()).collect();
        assert_eq!(texts, ["cat-[0.1,0.2,0.3]", "bird-[0.5,0.5,0.4,0.9]", "fish-[0.1,0.2"]);
    }

    /// A box wholly outside [0, 1] would clamp to a zero-area box on an edge: dropped with its
    /// reason; one that overlaps the image is clamped, and an in-range point box is kept as written.
    #[test]
    fn boxes_outside_the_image_are_dropped() {
        let p = parse_answer(
            "cat-[1.5,0.2,2.0,0.4]&dog-[-0.5,-0.5,-0.1,-0.1]&cow-[0.9,0.9,1.4,1.2]&ant-[0,0,0,0]&elk-[1.0,0.2,1.4,0.4]&fox-[0.2,-0.3,0.5,0.0]",
        );
        assert_eq!(labels(&p), vec![Some("cow"), Some("ant")]);
        assert_eq!(p.instances[0].norm, NormBox::new(0.9, 0.9, 1.0, 1.0));
        let reasons: Vec<&str> = p.dropped.iter().map(|d| d.reason.as_str()).collect();
        assert_eq!(reasons, vec!["box wholly outside the image (coordinates beyond [0, 1])"; 4]);
        assert_eq!(p.dropped[0].text, "cat-[1.5,0.2,2.0,0.4]");
    }

    #[test]
    fn clamps_and_counting_form() {
        let p = parse_answer("[-0.100,0.200,1.300,0.400]&[0.5,0.5,0.6,0.6]");
        assert_eq!(labels(&p), vec![None, None]);
        assert_eq!(p.instances[0].norm, NormBox::new(0.0, 0.2, 1.0, 0.4));
    }

    #[test]
    fn none_answer() {
        assert!(parse_answer("None").is_none);
        assert!(parse_answer(" none. ").is_none);
        assert!(parse_answer("").instances.is_empty());
    }

    #[test]
    fn duplicates_removed() {
        let p =
            parse_answer("a-[0.1,0.1,0.5,0.5]&a-[0.100,0.100,0.500,0.500]&a-[0.1,0.1,0.5,0.501]&b-[0.1,0.1,0.5,0.5]");
        assert_eq!(labels(&p), vec![Some("a"), Some("b")]);
        assert_eq!(p.dropped.len(), 2);
        assert!(p.dropped[0].reason.starts_with("duplicate"));
        assert!(p.dropped[1].reason.starts_with("near duplicate"));
        assert!(p.dropped.iter().all(Dropped::is_duplicate));
        assert!(!parse_answer("cat-[0.1").dropped.iter().any(Dropped::is_duplicate));
        // the repeats themselves, with their spans (their scores come from their own tokens)
        assert_eq!(p.repeats.len(), 2);
        assert_eq!(p.repeats[1].norm, NormBox::new(0.1, 0.1, 0.5, 0.501));
        let t = "a-[0.1,0.1,0.5,0.5]&a-[0.100,0.100,0.500,0.500]";
        assert_eq!(&t[parse_answer(t).repeats[0].box_span.clone()], "[0.100,0.100,0.500,0.500]");
    }

    #[test]
    fn several_boxes_in_one_piece_share_the_name() {
        let p = parse_answer("person-[0.1,0.1,0.2,0.2][0.3,0.3,0.4,0.4]");
        assert_eq!(labels(&p), vec![Some("person"), Some("person")]);
    }

    /// Separators between two boxes of one piece are not part of the second name, and a name
    /// written after a broken box names the next box (not the box before it).
    #[test]
    fn names_after_a_box_and_after_a_broken_box() {
        let text = "cat-[0.1,0.1,0.2,0.2], dog-[0.3,0.3,0.4,0.4]; bird-[0.5,0.5,0.6,0.6]";
        let p = parse_answer(text);
        let labels: Vec<_> = p.instances.iter().map(|i| i.label.clone().unwrap()).collect();
        assert_eq!(labels, ["cat", "dog", "bird"]);
        assert_eq!(&text[p.instances[1].name_span.clone().unwrap()], "dog");
        assert!(p.dropped.is_empty(), "{:?}", p.dropped);
        let text = "cat-[0.1,0.1,0.2,0.2] dog-[0.3 bird-[0.5,0.5,0.6,0.6]";
        let p = parse_answer(text);
        assert_eq!(p.instances.len(), 2);
        assert_eq!(p.instances[1].label.as_deref(), Some("bird"));
        assert_eq!(&text[p.instances[1].name_span.clone().unwrap()], "bird");
        assert_eq!(p.dropped.len(), 1);
        assert_eq!(p.dropped[0].reason, "unclosed bracket");
        assert_eq!(p.dropped[0].text, "dog-[0.3 bird-");
        // after a box, in a piece of its own: no separator, the name kept
        let p = parse_answer("cat-[0.1,0.1,0.2,0.2], dog-[0.3,0.3,0.2,0.4]; café-[0.5");
        let texts: Vec<&str> = p.dropped.iter().map(|d| d.text.as_str()).collect();
        assert_eq!(texts, ["dog-[0.3,0.3,0.2,0.4]", "café-[0.5"]);
        // names holding digits and hyphens are kept whole
        for (text, want) in [
            ("a-[0.1,0.1,0.2,0.2] [0.3 No. 5 bus-[0.5,0.5,0.6,0.6]", "No. 5 bus"),
            ("a-[0.1,0.1,0.2,0.2] [0.3,0.4 7-eleven-[0.5,0.5,0.6,0.6]", "7-eleven"),
            ("a-[0.1,0.1,0.2,0.2] [ bird-[0.5,0.5,0.6,0.6]", "bird"),
        ] {
            let p = parse_answer(text);
            assert_eq!(p.instances[1].label.as_deref(), Some(want), "{text}");
            assert_eq!(&text[p.instances[1].name_span.clone().unwrap()], want, "{text}");
        }
        // junk without a name: the box keeps the piece's previous name, as before
        let p = parse_answer("cat-[0.1,0.1,0.2,0.2] [0.3 [0.5,0.5,0.6,0.6]");
        assert_eq!(p.instances[1].label.as_deref(), Some("cat"));
    }

    #[test]
    fn format_sorts_by_x1() {
        let s = format_instances(&[
            ("b".into(), NormBox::new(0.5, 0.0, 0.6, 0.1)),
            ("a".into(), NormBox::new(0.1, 0.0, 0.2, 0.1)),
        ]);
        assert_eq!(s, "a-[0.100,0.000,0.200,0.100]&b-[0.500,0.000,0.600,0.100]");
        assert_eq!(format_instances(&[]), "None");
        assert_eq!(format_boxes(&[NormBox::new(0.5, 0.0, 0.6, 0.1)]), "[0.500,0.000,0.600,0.100]");
    }
}

//! Property tests of the answer grammar: arbitrary text never panics, and formatted boxes
//! round-trip through the parser.

use griffon_core::answer::{format_boxes, format_instances, parse_answer};
use griffon_core::NormBox;
use proptest::prelude::*;

fn unit() -> impl Strategy<Value = f64> {
    (0u32..=1000).prop_map(|v| v as f64 / 1000.0)
}

fn norm_box() -> impl Strategy<Value = NormBox> {
    (unit(), unit(), unit(), unit()).prop_map(|(a, b, c, d)| NormBox::new(a.min(c), b.min(d), a.max(c), b.max(d)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_panics(s in ".*") {
        let p = parse_answer(&s);
        for i in &p.instances {
            prop_assert!(i.norm.x1 >= 0.0 && i.norm.x2 <= 1.0 && i.norm.x1 <= i.norm.x2 && i.norm.y1 <= i.norm.y2);
            prop_assert!(s.get(i.box_span.clone()).is_some());
        }
    }

    #[test]
    fn never_panics_on_grammar_like_text(s in "[a-z \\-\\[\\],.0-9&]{0,80}") {
        let _ = parse_answer(&s);
    }

    #[test]
    fn named_boxes_round_trip(items in proptest::collection::vec(("[a-z][a-z \\-]{0,10}[a-z]", norm_box()), 0..8)) {
        let text = format_instances(&items);
        let p = parse_answer(&text);
        // every formatted box is recovered (minus exact / near duplicates, which are reported)
        prop_assert_eq!(p.instances.len() + p.dropped.len(), items.len());
        prop_assert!(p.dropped.iter().all(|d| d.reason.contains("duplicate")));
        for inst in &p.instances {
            let label = inst.label.clone().unwrap();
            prop_assert!(items.iter().any(|(n, b)| *n == label && b.format() == inst.norm.format()));
        }
        prop_assert_eq!(p.is_none, items.is_empty());
    }

    #[test]
    fn counting_boxes_round_trip(boxes in proptest::collection::vec(norm_box(), 1..8)) {
        let p = parse_answer(&format_boxes(&boxes));
        prop_assert_eq!(p.instances.len() + p.dropped.len(), boxes.len());
        prop_assert!(p.instances.iter().all(|i| i.label.is_none()));
    }
}

//! Property tests of the answer grammar: arbitrary text never panics, and formatted boxes
//! round-trip through the parser.

use griffon_core::answer::{format_boxes, format_instances, parse_answer};
use griffon_core::grammar::{AnswerGrammar, PrefixState};
use griffon_core::NormBox;
use proptest::prelude::*;

fn unit() -> impl Strategy<Value = f64> {
    (0u32..=1000).prop_map(|v| v as f64 / 1000.0)
}

/// A number as the grammar writes it ("0.ddd" or "1.000"), or now and then one it does not.
fn num_text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (0u32..1000).prop_map(|v| format!("0.{v:03}")),
        1 => Just("1.000".to_string()),
        1 => prop_oneof![Just("1.5".to_string()), Just("0.1".to_string()), Just("-0.2".to_string())],
    ]
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

    /// The constrained decoder's grammar and the parser are kept apart: every answer the grammar
    /// calls complete parses into its items with nothing dropped but repeats, and one it refuses
    /// for an inverted or malformed box is one the parser drops a box of.
    #[test]
    fn grammar_complete_answers_parse_whole(
        items in proptest::collection::vec(("(|[a-z][a-z ]{0,6}[a-z])", num_text(), num_text(), num_text(), num_text()), 1..6)
    ) {
        let text = items
            .iter()
            .map(|(n, a, b, c, d)| match n.is_empty() {
                true => format!("[{a},{b},{c},{d}]"),
                false => format!("{n}-[{a},{b},{c},{d}]"),
            })
            .collect::<Vec<_>>()
            .join("&");
        let g = AnswerGrammar { names: None, nameless: false };
        let p = parse_answer(&text);
        let broken = p.dropped.iter().filter(|d| !d.reason.contains("duplicate")).count();
        match g.check_prefix(&text) {
            PrefixState::Complete => {
                prop_assert_eq!(broken, 0, "{} -> {:?}", text, p.dropped);
                prop_assert_eq!(p.instances.len() + p.dropped.len(), items.len(), "{}", text);
                if p.dropped.is_empty() {
                    for (inst, (n, ..)) in p.instances.iter().zip(&items) {
                        prop_assert_eq!(inst.label.as_deref(), (!n.is_empty()).then_some(n.as_str()), "{}", text);
                    }
                }
            }
            PrefixState::Partial => prop_assert!(false, "a whole answer is never partial: {}", text),
            PrefixState::Invalid => {
                // refused only for a number outside the grammar or an inverted box, both of
                // which the parser drops (1.5 clamps, so it is kept there unless inverted)
                let outside = items.iter().any(|(_, a, b, c, d)| {
                    [a, b, c, d].iter().any(|v| !(v.starts_with("0.") && v.len() == 5) && v.as_str() != "1.000")
                });
                prop_assert!(outside || broken > 0, "{} refused, parsed whole: {:?}", text, p);
            }
        }
    }
}

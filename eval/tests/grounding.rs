//! Grounding and counting metrics against vectors computed with the reference formulas
//! (tools/reference/make_grounding_vectors.py).

mod common;

use common::{f64s, fixture, read_json};
use griffon_eval::{counting_errors, flickr30k_recall_at_1, rec_accuracy, BoxXyxy, PhraseSample};

fn bx(v: &serde_json::Value) -> BoxXyxy {
    f64s(v).try_into().expect("4 coordinates")
}

#[test]
fn rec_accuracy_matches_eval_rec() {
    let v = read_json(&fixture("grounding/vectors.json"));
    let samples = v["rec"]["samples"].as_array().unwrap();
    let preds: Vec<Option<Vec<BoxXyxy>>> =
        samples.iter().map(|s| s["pred"].as_array().map(|a| a.iter().map(bx).collect())).collect();
    let pairs: Vec<(Option<&[BoxXyxy]>, BoxXyxy)> =
        preds.iter().zip(samples).map(|(p, s)| (p.as_deref(), bx(&s["gt"]))).collect();
    for (i, (pair, s)) in pairs.iter().zip(samples).enumerate() {
        let one = rec_accuracy(std::slice::from_ref(pair)).unwrap();
        assert_eq!(one.hits == 1, s["hit"].as_bool().unwrap(), "sample {i}: {s}");
    }
    let acc = rec_accuracy(&pairs).unwrap();
    assert_eq!(acc.value, v["rec"]["accuracy"].as_f64().unwrap());
}

#[test]
fn flickr_recall_matches_mdetr() {
    let v = read_json(&fixture("grounding/vectors.json"));
    let phrases = v["flickr"]["phrases"].as_array().unwrap();
    let gts: Vec<Vec<BoxXyxy>> =
        phrases.iter().map(|p| p["gts"].as_array().unwrap().iter().map(bx).collect()).collect();
    let samples: Vec<PhraseSample> = phrases
        .iter()
        .zip(&gts)
        .map(|(p, g)| PhraseSample { top1: (!p["pred"].is_null()).then(|| bx(&p["pred"])), gt_boxes: g })
        .collect();
    for (i, (s, p)) in samples.iter().zip(phrases).enumerate() {
        let r = flickr30k_recall_at_1(std::slice::from_ref(s)).unwrap();
        assert_eq!(r.any_box.hits == 1, p["any"].as_bool().unwrap(), "phrase {i} ANY-BOX: {p}");
        assert_eq!(r.merged_box.hits == 1, p["merged"].as_bool().unwrap(), "phrase {i} MERGED-BOX: {p}");
    }
    let r = flickr30k_recall_at_1(&samples).unwrap();
    assert_eq!(r.any_box.value, v["flickr"]["any_box"].as_f64().unwrap());
    assert_eq!(r.merged_box.value, v["flickr"]["merged_box"].as_f64().unwrap());
}

#[test]
fn counting_matches_fsc147_and_counting_detr() {
    let v = read_json(&fixture("grounding/vectors.json"));
    let c = &v["counting"];
    let samples: Vec<(f64, f64)> =
        c["samples"].as_array().unwrap().iter().map(|s| (s[0].as_f64().unwrap(), s[1].as_f64().unwrap())).collect();
    let e = counting_errors(&samples).unwrap();
    assert_eq!(e.mae, c["mae"].as_f64().unwrap());
    assert_eq!(e.rmse, c["rmse"].as_f64().unwrap());
    assert_eq!(e.nae, Some(c["nae"].as_f64().unwrap()));
    assert_eq!(e.n, samples.len());
}

/// A record of a sample that ran, as the runner stores it, with what scoring reads.
fn scored_record(
    answer: &str,
    detections: Vec<griffon_eval::runners::RecordBox>,
    dropped: Vec<griffon_core::answer::Dropped>,
    truth: griffon_eval::datasets::Truth,
) -> griffon_eval::runners::Record {
    griffon_eval::runners::Record {
        id: "s".into(),
        image: "i.png".into(),
        prompts: vec![],
        answer: answer.into(),
        detections,
        dropped,
        truth,
        model: None,
        decoding: None,
        exemplar: None,
        error: None,
        truncated: false,
        max_new_tokens: None,
        repeats: None,
        image_size: None,
    }
}

/// A phrase that occurs twice in a sentence is scored with the box of its own occurrence (the
/// k-th box labelled with it), not both with the first.
#[test]
fn repeated_phrase_takes_its_own_box() {
    use griffon_eval::datasets::{PhraseTruth, Truth};
    use griffon_eval::runners::{score, RecordBox};
    let b = |x: f64, label: &str| RecordBox {
        label: Some(label.into()),
        box_px: [x, 0.0, x + 10.0, 10.0],
        box_norm: [0.0; 4],
        score: 1.0,
        phrase: None,
    };
    let truth = Truth::Phrases {
        phrases: vec![
            PhraseTruth { phrase: "a dog".into(), boxes: vec![[0.0, 0.0, 10.0, 10.0]] },
            PhraseTruth { phrase: "a dog".into(), boxes: vec![[50.0, 0.0, 60.0, 10.0]] },
        ],
    };
    let rec = scored_record("", vec![b(0.0, "a dog"), b(50.0, "a dog")], vec![], truth);
    let tmp = tempfile::tempdir().unwrap();
    let m = score(&[rec.clone()], None, tmp.path()).unwrap();
    assert_eq!(m["any_box_r@1"], 1.0, "{m}");
    // records that store each box's phrase: the first "a dog" got no box, the second's box is
    // its own and does not count for the first (older records could not tell)
    let mut indexed = rec;
    indexed.detections = vec![RecordBox { phrase: Some(1), ..b(50.0, "a dog") }];
    let m = score(&[indexed.clone()], None, tmp.path()).unwrap();
    assert_eq!(m["any_box_r@1"], 0.5, "{m}");
    indexed.detections[0].phrase = None;
    let m = score(&[indexed], None, tmp.path()).unwrap();
    assert_eq!(m["any_box_r@1"], 0.0, "older records: the box went to the first phrase, {m}");
}

/// A counting answer that writes a box twice counts it twice: the parser removes the repeat
/// from the detections (reporting it in `dropped`), the count of the answer's boxes keeps it.
#[test]
fn counting_counts_repeated_boxes() {
    use griffon_eval::datasets::Truth;
    use griffon_eval::runners::{score, RecordBox};
    let text = "[0.100,0.100,0.200,0.200]&[0.100,0.100,0.200,0.200]&[0.500,0.500,0.600,0.600]";
    let parsed = griffon_core::answer::parse_answer(text);
    assert_eq!((parsed.instances.len(), parsed.dropped.len()), (2, 1));
    let boxes = parsed
        .instances
        .iter()
        .map(|i| RecordBox {
            label: None,
            box_px: i.norm.as_array(),
            box_norm: i.norm.as_array(),
            score: 1.0,
            phrase: None,
        })
        .collect();
    let rec = scored_record(text, boxes, parsed.dropped.clone(), Truth::Count { count: 2.0, boxes: None });
    let tmp = tempfile::tempdir().unwrap();
    let m = score(&[rec], None, tmp.path()).unwrap();
    assert_eq!(m["mae"], 1.0, "{m}");
}

/// `merge` keeps, per id, a later settled record over a failed or cut one, and never replaces a
/// settled record by a later failure (records as the runner writes them, old ones without the
/// `truncated` field).
#[test]
fn merge_prefers_settled_records() {
    let tmp = tempfile::tempdir().unwrap();
    let line = |id: &str, extra: &str| {
        format!(
            r#"{{"id": "{id}", "image": "i.png", "prompts": [], "answer": "a", "detections": [], "dropped": [], "truth": {{"kind": "rec", "gt_box": [0, 0, 1, 1]}}{extra}}}"#
        )
    };
    let shard = [
        line("1", r#", "error": "missing image""#),
        line("2", r#", "truncated": true, "max_new_tokens": 8"#),
        line("3", ""),
        line("1", ""),
        line("2", r#", "truncated": true, "max_new_tokens": 64"#),
        line("3", r#", "error": "later failure""#),
    ]
    .join("\n");
    std::fs::write(tmp.path().join("predictions.shard-0-of-1.jsonl"), shard + "\n").unwrap();
    // (the marker a finished run writes: merge refuses a shard without it)
    std::fs::write(griffon_eval::runners::done_file(tmp.path(), (0, 1)), r#"{"items": 3, "limit": null}"#).unwrap();
    let recs = griffon_eval::runners::merge(tmp.path()).unwrap();
    let got: Vec<(&str, bool, bool, Option<usize>)> =
        recs.iter().map(|r| (r.id.as_str(), r.error.is_some(), r.truncated, r.max_new_tokens)).collect();
    assert_eq!(got, [("1", false, false, None), ("2", false, true, Some(64)), ("3", false, false, None)]);
}

/// COCO scoring sends every box the answer wrote to pycocotools, in answer order (a repeated box
/// is a false positive there, as in the reference's evaluation, whose parser keeps it), with
/// boxes scaled by the annotation's image size (as the reference does), and reports images whose
/// decoded size differs and older records whose repeats it cannot score.
#[test]
fn coco_scores_every_box_in_the_annotation_frame() {
    use griffon_eval::datasets::Truth;
    use griffon_eval::runners::{score, RecordBox, RecordRepeat};
    let tmp = tempfile::tempdir().unwrap();
    let ann = tmp.path().join("instances.json");
    let gt = serde_json::json!({
        "images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 50},
                   {"id": 2, "file_name": "b.png", "width": 100, "height": 100}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10.0, 5.0, 40.0, 20.0], "area": 800.0, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 7, "bbox": [20.0, 20.0, 40.0, 40.0], "area": 1600.0, "iscrowd": 0}],
        "categories": [{"id": 7, "name": "cat"}]
    });
    std::fs::write(&ann, gt.to_string()).unwrap();
    // boxes carry the normalized coordinates; box_px is of a decoded image at twice the size
    let b = |n: [f64; 4], score: f64| RecordBox {
        label: Some("cat".into()),
        box_px: [n[0] * 200.0, n[1] * 100.0, n[2] * 200.0, n[3] * 100.0],
        box_norm: n,
        score,
        phrase: None,
    };
    let on_1 = [0.1, 0.1, 0.5, 0.5];
    let mut one =
        scored_record("", vec![b(on_1, 0.9), b([0.7, 0.7, 0.9, 0.9], 0.6)], vec![], Truth::Coco { image_id: 1 });
    // the answer wrote the first box again between its two boxes
    one.repeats = Some(vec![RecordRepeat { repeat: b(on_1, 0.8), after: 1 }]);
    one.image_size = Some([200, 100]);
    let mut two = scored_record("", vec![b([0.2, 0.2, 0.6, 0.6], 0.7)], vec![], Truth::Coco { image_id: 2 });
    two.id = "t".into();
    two.repeats = Some(vec![]);
    two.image_size = Some([100, 100]);
    let m = score(&[one.clone(), two.clone()], Some(&ann), tmp.path()).unwrap();
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("coco_results.json")).unwrap()).unwrap();
    let got: Vec<(u64, Vec<f64>, f64)> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["image_id"].as_u64().unwrap(), f64s(&r["bbox"]), r["score"].as_f64().unwrap()))
        .collect();
    let want = vec![
        (1, vec![10.0, 5.0, 40.0, 20.0], 0.9),
        (1, vec![10.0, 5.0, 40.0, 20.0], 0.8),
        (1, vec![70.0, 35.0, 20.0, 10.0], 0.6),
        (2, vec![20.0, 20.0, 40.0, 40.0], 0.7),
    ];
    assert_eq!(got.len(), want.len(), "{results}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.0, w.0);
        assert_eq!(g.2, w.2);
        for (a, b) in g.1.iter().zip(&w.1) {
            assert!((a - b).abs() < 1e-9, "{g:?} vs {w:?}");
        }
    }
    assert_eq!(m["detections"], 4, "{m}");
    assert_eq!(m["images_of_another_size"], 1, "{m}");
    assert!(m.get("repeats_unscored").is_none(), "{m}");
    // the repeat is a false positive: AP50 below the 1.0 that scoring without it gives
    let ap50 = m["stats"][1].as_f64().unwrap();
    let mut deduped = one.clone();
    deduped.repeats = Some(vec![]);
    let m1 = score(&[deduped, two.clone()], Some(&ann), tmp.path()).unwrap();
    assert_eq!(m1["stats"][1], 1.0, "{m1}");
    assert!(ap50 < 0.99, "{m}");
    // a record written before repeats were stored: its repeat (in `dropped`) is reported, not scored
    let mut old = one;
    old.repeats = None;
    old.dropped = griffon_core::answer::parse_answer("cat-[0.1,0.1,0.5,0.5]&cat-[0.1,0.1,0.5,0.5]").dropped;
    let m2 = score(&[old, two], Some(&ann), tmp.path()).unwrap();
    assert_eq!(m2["repeats_unscored"], 1, "{m2}");
    assert_eq!(m2["stats"][1], 1.0, "{m2}");
}

/// A counting record that stores its repeats counts them from there (older ones from `dropped`,
/// in counting_counts_repeated_boxes).
#[test]
fn counting_counts_stored_repeats() {
    use griffon_eval::datasets::Truth;
    use griffon_eval::runners::{score, RecordBox, RecordRepeat};
    let b = RecordBox { label: None, box_px: [1.0, 1.0, 2.0, 2.0], box_norm: [0.1; 4], score: 1.0, phrase: None };
    let mut rec = scored_record("", vec![b.clone()], vec![], Truth::Count { count: 3.0, boxes: None });
    rec.repeats = Some(vec![RecordRepeat { repeat: b.clone(), after: 1 }, RecordRepeat { repeat: b, after: 1 }]);
    let tmp = tempfile::tempdir().unwrap();
    let m = score(&[rec], None, tmp.path()).unwrap();
    assert_eq!(m["mae"], 0.0, "{m}");
}

/// REC scales the answer's normalized box by the data's image size where a line gives one (as
/// `eval_rec.py` does with its `width` / `height`), reporting an image that decoded to another
/// size; without one, the decoded image's pixels.
#[test]
fn rec_scores_in_the_data_frame() {
    use griffon_eval::datasets::Truth;
    use griffon_eval::runners::{score, RecordBox};
    let b = RecordBox {
        label: None,
        box_px: [20.0, 20.0, 100.0, 100.0], // on a 200 x 200 decode
        box_norm: [0.1, 0.1, 0.5, 0.5],
        score: 1.0,
        phrase: None,
    };
    let tmp = tempfile::tempdir().unwrap();
    let gt_box = [10.0, 10.0, 50.0, 50.0];
    let mut rec = scored_record("", vec![b], vec![], Truth::Rec { gt_box, size: Some([100, 100]) });
    rec.image_size = Some([200, 200]);
    let m = score(&[rec.clone()], None, tmp.path()).unwrap();
    assert_eq!((m["acc@0.5"].as_f64(), m["images_of_another_size"].as_u64()), (Some(1.0), Some(1)), "{m}");
    let mut old = rec.clone();
    old.truth = Truth::Rec { gt_box, size: None };
    let m = score(&[old.clone()], None, tmp.path()).unwrap();
    assert_eq!(m["acc@0.5"], 0.0, "{m}");
    assert!(m.get("images_of_another_size").is_none() && m.get("records_without_size").is_none(), "{m}");
    // a folder resumed from records without the size: both frames, reported
    let m = score(&[rec, old], None, tmp.path()).unwrap();
    assert_eq!(m["records_without_size"], 1, "{m}");
}

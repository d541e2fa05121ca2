//! COCO bbox mAP against pycocotools: the shared parity vectors and our generated ones.

mod common;

use common::{f64s, fixture, read_json, scratch, shared};
use griffon_eval::{
    coco_detections_stats, coco_detections_stats_on, coco_results_stats, format_coco_stats, CocoDetection, EvalError,
};

const TOL: f64 = 1e-12;

fn check(name: &str, got: &[f64; 12], want: &[f64]) {
    assert_eq!(want.len(), 12, "{name}: expected 12 stats");
    let max = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    eprintln!("{name}: max |ours - pycocotools| = {max:e}");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= TOL, "{name}: stat {i}: ours {a:?} vs pycocotools {b:?}");
    }
}

#[test]
fn shared_parity_vectors() {
    let expected = read_json(&shared("coco-fake100/expected.json"));
    let cases = &expected["expected_pycocotools_2_0_11"];
    for name in ["fakebbox100", "tiny"] {
        let case = &cases[name];
        let gt = shared(&format!("coco-fake100/{}", case["annotations"].as_str().unwrap()));
        let dt = shared(&format!("coco-fake100/{}", case["results"].as_str().unwrap()));
        let stats = coco_results_stats(&gt, &dt).unwrap_or_else(|e| panic!("{name}: {e}"));
        check(name, &stats, &f64s(&case["stats"]));
    }
}

#[test]
fn generated_vectors_and_summary_text() {
    let expected = read_json(&fixture("coco/expected.json"));
    let cases = expected["cases"].as_object().unwrap();
    assert!(cases.len() >= 4);
    for (name, case) in cases {
        let gt = fixture(&format!("coco/{}", case["gt"].as_str().unwrap()));
        let dt = fixture(&format!("coco/{}", case["dt"].as_str().unwrap()));
        let stats = coco_results_stats(&gt, &dt).unwrap_or_else(|e| panic!("{name}: {e}"));
        check(name, &stats, &f64s(&case["stats"]));
        assert_eq!(format_coco_stats(&stats), case["summary"].as_str().unwrap(), "{name}: summarize() text");
    }
}

/// A results file's detections in memory.
fn detections_of(dt: &std::path::Path) -> Vec<CocoDetection> {
    read_json(dt)
        .as_array()
        .unwrap()
        .iter()
        .map(|d| CocoDetection {
            image_id: d["image_id"].as_u64().unwrap(),
            category_id: d["category_id"].as_u64().unwrap(),
            bbox: f64s(&d["bbox"]).try_into().unwrap(),
            score: d["score"].as_f64().unwrap(),
        })
        .collect()
}

#[test]
fn in_memory_detections_match_the_file_path() {
    let gt = fixture("coco/edge/gt.json");
    let dt = fixture("coco/edge/dt.json");
    let dets = detections_of(&dt);
    assert_eq!(coco_detections_stats(&gt, &dets).unwrap(), coco_results_stats(&gt, &dt).unwrap());
    let mut bad = dets.clone();
    bad[3].score = f64::NAN;
    let err = coco_detections_stats(&gt, &bad).unwrap_err();
    assert!(matches!(err, EvalError::NonFinite { index: 3, field: "score", .. }), "{err}");
}

#[test]
fn malformed_json_is_an_error_naming_the_file() {
    let gt = fixture("coco/edge/gt.json");
    let dt = scratch("malformed.json", r#"[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5"#);
    let err = coco_results_stats(&gt, &dt).unwrap_err();
    assert!(matches!(err, EvalError::Json { .. }), "{err}");
    assert!(err.to_string().contains("malformed.json"), "{err}");

    let bad_gt = scratch("malformed_gt.json", "{\"images\": [");
    let err = coco_results_stats(&bad_gt, &fixture("coco/edge/dt.json")).unwrap_err();
    assert!(matches!(err, EvalError::Json { .. }), "{err}");
    assert!(err.to_string().contains("malformed_gt.json"), "{err}");
}

#[test]
fn unknown_image_ids_are_an_error() {
    let gt = fixture("coco/edge/gt.json");
    let dt = scratch(
        "unknown_ids.json",
        r#"[{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9},
            {"image_id": 777, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9},
            {"image_id": 778, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9}]"#,
    );
    let err = coco_results_stats(&gt, &dt).unwrap_err();
    assert!(matches!(err, EvalError::UnknownImageIds { index: 1, image_id: 777, count: 2, .. }), "{err}");
    assert!(err.to_string().contains("results[1] has image_id 777"), "{err}");
}

/// Ground truths pycocotools scores without a word although they cannot be meant: errors naming
/// the annotation.
#[test]
fn inconsistent_ground_truth_is_an_error() {
    let dt = scratch("one_det.json", r#"[{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9}]"#);
    let ann = |extra: &str| {
        format!(
            r#"{{"images": [{{"id": 1, "width": 100, "height": 100}}], "categories": [{{"id": 1, "name": "a"}}],
               "annotations": [{{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "area": 2500, "iscrowd": 0}},
                               {{"id": 2, "bbox": [1, 1, 5, 5], "iscrowd": 0, {extra}}}]}}"#
        )
    };
    let ok = scratch("gt_ok.json", &ann(r#""image_id": 1, "category_id": 1, "area": 25"#));
    coco_results_stats(&ok, &dt).unwrap();
    for (name, extra, want) in [
        (
            "gt_img.json",
            r#""image_id": 5, "category_id": 1, "area": 25"#,
            "annotations[1] (id 2): image_id 5 is not one of `images`",
        ),
        ("gt_cat.json", r#""image_id": 1, "category_id": 9, "area": 25"#, "category_id 9 is not one of `categories`"),
        ("gt_area.json", r#""image_id": 1, "category_id": 1, "area": -25"#, "area -25 is negative"),
    ] {
        let err = coco_results_stats(&scratch(name, &ann(extra)), &dt).unwrap_err().to_string();
        assert!(err.contains(want) && err.contains(name), "{err}");
    }
    let no_cats = scratch(
        "gt_nocats.json",
        r#"{"images": [{"id": 1, "width": 100, "height": 100}], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "area": 2500, "iscrowd": 0}]}"#,
    );
    let err = coco_results_stats(&no_cats, &dt).unwrap_err().to_string();
    assert!(err.contains("no `categories`"), "{err}");
}

#[test]
fn empty_results_are_an_error() {
    let gt = fixture("coco/edge/gt.json");
    let err = coco_results_stats(&gt, &scratch("empty.json", "[]")).unwrap_err();
    assert!(matches!(err, EvalError::EmptyResults { .. }), "{err}");
    let err = coco_detections_stats(&gt, &[]).unwrap_err();
    assert!(matches!(err, EvalError::EmptyResults { .. }), "{err}");
}

#[test]
fn non_finite_values_name_the_entry() {
    let gt = fixture("coco/edge/gt.json");
    let dt = scratch(
        "nan.json",
        r#"[{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9},
            {"image_id": 2, "category_id": 1, "bbox": [10, 10, 50, 50], "score": NaN}]"#,
    );
    let err = coco_results_stats(&gt, &dt).unwrap_err();
    assert!(matches!(err, EvalError::NonFinite { index: 1, field: "score", image_id: Some(2), .. }), "{err}");
    assert!(err.to_string().contains("results[1] (image_id 2) has a non-finite score"), "{err}");

    let dt = scratch(
        "inf_box.json",
        r#"[{"image_id": 3, "category_id": 1, "bbox": [10, -Infinity, 50, 50], "score": 0.9}]"#,
    );
    let err = coco_results_stats(&gt, &dt).unwrap_err();
    assert!(matches!(err, EvalError::NonFinite { index: 0, field: "bbox", .. }), "{err}");
}

#[test]
fn wrong_shapes_are_errors() {
    let gt = fixture("coco/edge/gt.json");
    for (name, text, needle) in [
        ("obj.json", r#"{"annotations": []}"#, "JSON array"),
        (
            "no_score.json",
            r#"[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}]"#,
            "results[0]: missing or invalid \"score\"",
        ),
        ("bad_box.json", r#"[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3], "score": 1}]"#, "\"bbox\""),
        ("neg_id.json", r#"[{"image_id": -1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 1}]"#, "\"image_id\""),
    ] {
        let err = coco_results_stats(&gt, &scratch(name, text)).unwrap_err();
        assert!(matches!(err, EvalError::Format { .. }), "{name}: {err}");
        assert!(err.to_string().contains(needle), "{name}: {err}");
    }
    let missing = std::path::Path::new("/nonexistent/griffon/results.json");
    let err = coco_results_stats(&gt, missing).unwrap_err();
    assert!(
        matches!(err, EvalError::Io { .. }) && err.to_string().contains("/nonexistent/griffon/results.json"),
        "{err}"
    );
    let err = coco_results_stats(missing, &fixture("coco/edge/dt.json")).unwrap_err();
    assert!(matches!(err, EvalError::Io { .. }), "{err}");
}

/// Scoring some of the images (pycocotools with `params.imgIds`): the generator's subsets, and
/// the same over every image equals the whole-file stats; an id outside the ground truth and an
/// empty list are errors.
#[test]
fn a_subset_of_the_images_scores_as_pycocotools_with_img_ids() {
    let expected = read_json(&fixture("coco/expected.json"));
    let subsets = expected["subsets"].as_object().expect("expected.json has subsets");
    assert!(!subsets.is_empty());
    for (name, case) in subsets {
        let gt = fixture(&format!("coco/{}", case["gt"].as_str().unwrap()));
        let dt = fixture(&format!("coco/{}", case["dt"].as_str().unwrap()));
        let ids: Vec<u64> = case["img_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        let dets = detections_of(&dt);
        let stats = coco_detections_stats_on(&gt, &dets, &ids).unwrap_or_else(|e| panic!("{name}: {e}"));
        check(name, &stats, &f64s(&case["stats"]));
        let whole = coco_results_stats(&gt, &dt).unwrap();
        assert_ne!(stats, whole, "{name}: the subset scores differently from the whole");
        let all: Vec<u64> =
            read_json(&gt)["images"].as_array().unwrap().iter().map(|i| i["id"].as_u64().unwrap()).collect();
        assert_eq!(coco_detections_stats_on(&gt, &dets, &all).unwrap(), whole, "{name}: every image");
        let e = coco_detections_stats_on(&gt, &dets, &[1, 9999]).unwrap_err().to_string();
        assert!(e.contains("image id 9999"), "{e}");
        assert!(coco_detections_stats_on(&gt, &dets, &[]).is_err());
    }
}

//! PTB tokenizer and CIDEr-D against pycocoevalcap: the shared vector and our generated ones.

mod common;

use common::{fixture, read_json, scratch, shared};
use griffon_eval::{cider_d, cider_from_files, cider_raw, ptb_tokenize, ptb_tokenize_raw, EvalError};

const TOL: f64 = 1e-9;

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array().expect("array").iter().map(|s| s.as_str().expect("string").to_string()).collect()
}

#[test]
fn shared_vector_scores_and_tokenizer_examples() {
    let v = read_json(&shared("cider/vector.json"));
    let refs_obj = v["refs"].as_object().unwrap();
    // serde_json's map is sorted by key; the vector's ids "1", "2", "3" are already in order.
    let ids: Vec<&String> = refs_obj.keys().collect();
    let refs: Vec<Vec<String>> = ids.iter().map(|k| strings(&refs_obj[*k])).collect();
    let hyps: Vec<String> = ids.iter().map(|k| v["hyps"][k.as_str()].as_str().unwrap().to_string()).collect();
    let (score, per) = cider_raw(&refs, &hyps).unwrap();
    let want = v["expected"]["cider"].as_f64().unwrap();
    eprintln!("shared CIDEr: ours {score:?} pycocoevalcap {want:?} diff {:e}", (score - want).abs());
    assert!((score - want).abs() <= TOL);
    for (k, s) in ids.iter().zip(&per) {
        let w = v["expected"]["per_item"][k.as_str()].as_f64().unwrap();
        assert!((s - w).abs() <= TOL, "image {k}: {s} vs {w}");
    }
    // Without PTB tokenization (whitespace split of the raw captions) the vector records the
    // score rounded to 4 decimals.
    let (raw_score, _) = cider_d(&refs, &hyps).unwrap();
    let rounded = v["expected"]["cider_without_ptb_tokenization"].as_f64().unwrap();
    assert!((raw_score - rounded).abs() <= 5e-5, "{raw_score} vs {rounded}");

    for (input, want) in v["ptb_tokenizer_examples"].as_object().unwrap() {
        assert_eq!(ptb_tokenize(&[input.as_str()]), vec![want.as_str().unwrap().to_string()], "{input:?}");
    }
}

#[test]
fn tokenizer_matches_java_token_for_token() {
    let t = read_json(&fixture("cider/tokenizer.json"));
    let mut lines = 0;
    for g in t["groups"].as_array().unwrap() {
        let name = g["name"].as_str().unwrap();
        let caps = strings(&g["captions"]);
        let raw = ptb_tokenize_raw(&caps);
        let tok = ptb_tokenize(&caps);
        // (the fixture's lists are as long as the captions: a short one would zip silently)
        assert_eq!(strings(&g["raw"]).len(), caps.len(), "{name}: fixture raw lines");
        assert_eq!(strings(&g["tokenized"]).len(), caps.len(), "{name}: fixture tokenized lines");
        for (i, ((c, r), w)) in caps.iter().zip(&raw).zip(strings(&g["raw"])).enumerate() {
            assert_eq!(r, &w, "{name}[{i}] raw tokens of {c:?}");
        }
        for (i, ((c, r), w)) in caps.iter().zip(&tok).zip(strings(&g["tokenized"])).enumerate() {
            let ours: Vec<&str> = r.split(' ').collect();
            let theirs: Vec<&str> = w.split(' ').collect();
            assert_eq!(ours, theirs, "{name}[{i}] tokens of {c:?}");
        }
        assert_eq!(raw.len(), caps.len());
        assert_eq!(tok.len(), caps.len());
        lines += caps.len();
    }
    assert!(lines > 900, "{lines}");
}

#[test]
fn generated_cider_vectors() {
    let e = read_json(&fixture("cider/expected.json"));
    let mut max = 0.0f64;
    for (name, case) in e["cases"].as_object().unwrap() {
        let refs = fixture(&format!("cider/{}", case["refs"].as_str().unwrap()));
        let hyps = fixture(&format!("cider/{}", case["hyps"].as_str().unwrap()));
        let report = cider_from_files(&refs, &hyps).unwrap_or_else(|err| panic!("{name}: {err}"));
        let want = case["cider"].as_f64().unwrap();
        max = max.max((report.score - want).abs());
        assert!((report.score - want).abs() <= TOL, "{name}: {} vs {want}", report.score);
        let per = case["per_image"].as_object().unwrap();
        assert_eq!(report.per_image.len(), per.len(), "{name}");
        for (id, s) in &report.per_image {
            let w = per[id].as_f64().unwrap();
            max = max.max((s - w).abs());
            assert!((s - w).abs() <= TOL, "{name} image {id}: {s} vs {w}");
        }
    }
    eprintln!("generated CIDEr vectors: max |ours - pycocoevalcap| = {max:e}");
}

#[test]
fn list_shaped_files_give_the_same_scores() {
    let a = cider_from_files(&fixture("cider/coco_like/refs.json"), &fixture("cider/coco_like/hyps.json")).unwrap();
    let b = cider_from_files(&fixture("cider/coco_like_list/refs.json"), &fixture("cider/coco_like_list/hyps.json"))
        .unwrap();
    assert_eq!(a, b);
}

#[test]
fn bad_inputs_are_errors() {
    let refs = scratch("refs_ok.json", r#"{"1": ["a dog", "the dog"], "2": ["a cat"]}"#);
    let cases = [
        ("hyps_missing.json", r#"{"1": "a dog"}"#, "no candidate caption for image \"2\""),
        ("hyps_extra.json", r#"{"1": "a dog", "2": "a cat", "3": "x"}"#, "image \"3\""),
        (
            "hyps_two.json",
            r#"[{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}, {"image_id": 2, "caption": "c"}]"#,
            "2 candidate captions",
        ),
        ("hyps_shape.json", r#"{"1": 5, "2": "a cat"}"#, "image \"1\""),
        ("hyps_entry.json", r#"[{"id": 1, "caption": "a"}]"#, "entry 0"),
        ("hyps_scalar.json", "3", "expected an object"),
        ("hyps_dup.json", r#"{"1": "a", "1": "b", "2": "c"}"#, "appears twice"),
    ];
    for (name, text, needle) in cases {
        let err = cider_from_files(&refs, &scratch(name, text)).unwrap_err();
        assert!(matches!(err, EvalError::Format { .. }), "{name}: {err}");
        assert!(err.to_string().contains(needle), "{name}: {err}");
    }
    let err = cider_from_files(&refs, &scratch("hyps_bad.json", r#"{"1": "a dog""#)).unwrap_err();
    assert!(matches!(err, EvalError::Json { .. }) && err.to_string().contains("hyps_bad.json"), "{err}");
    let empty_refs = scratch("refs_empty_list.json", r#"{"1": []}"#);
    let err = cider_from_files(&empty_refs, &scratch("hyps_1.json", r#"{"1": "a"}"#)).unwrap_err();
    assert!(err.to_string().contains("empty caption list"), "{err}");
    let no_words = scratch("refs_no_words.json", r#"{"1": ["...", "!"]}"#);
    let err = cider_from_files(&no_words, &scratch("hyps_2.json", r#"{"1": "a"}"#)).unwrap_err();
    assert!(err.to_string().contains("no words"), "{err}");
    assert!(cider_d(&[], &[]).is_err());
    assert!(cider_d(&[vec!["a".into()]], &[]).is_err());
}

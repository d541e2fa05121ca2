//! Every verb end to end on the tiny Gemma-2 fixture checkpoint (random weights: the answers are
//! noise, so these tests check the plumbing and the JSON shape, and that --constrained answers
//! always parse).

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn fixture() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/parity/gemma2_region");
    assert!(d.join("ckpt/config.json").is_file(), "fixture {} is missing", d.display());
    d
}

fn griffon(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_griffon")).args(args).output().expect("run griffon")
}

fn task(verb: &str, extra: &[&str]) -> Value {
    let d = fixture();
    let (model, image) = (d.join("ckpt"), d.join("image.png"));
    let mut args = vec![verb, "--model", model.to_str().unwrap(), "--image", image.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let out = griffon(&args);
    assert!(out.status.success(), "griffon {verb} failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_shape(&v);
    v
}

fn assert_shape(v: &Value) {
    assert_eq!(v["image"]["width"], 90);
    assert_eq!(v["image"]["height"], 70);
    assert!(v["text"].is_string());
    assert!(v["dropped"].is_array());
    for d in v["detections"].as_array().expect("detections array") {
        assert!(d["label"].is_string() || d["label"].is_null());
        let b: Vec<f64> = d["box"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let n: Vec<f64> = d["box_norm"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!((b.len(), n.len()), (4, 4));
        assert!(n.iter().all(|x| (0.0..=1.0).contains(x)) && n[0] <= n[2] && n[1] <= n[3], "{n:?}");
        assert!((b[0] - n[0] * 90.0).abs() < 1e-9 && (b[3] - n[3] * 70.0).abs() < 1e-9);
        let s = d["score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&s), "score {s}");
    }
}

#[test]
fn detect_json_shape_and_chunks() {
    let v = task("detect", &["--categories", "person,car,dog", "--chunk", "2", "--max-new-tokens", "12"]);
    // two chunks -> two turns, joined by a newline
    assert_eq!(v["text"].as_str().unwrap().matches('\n').count(), 1, "{v}");
}

#[test]
fn constrained_detection_always_parses() {
    for cats in ["person,car", "red circle", "dog"] {
        let v = task("detect", &["--categories", cats, "--constrained", "--max-new-tokens", "200"]);
        let text = v["text"].as_str().unwrap();
        assert!(v["dropped"].as_array().unwrap().is_empty(), "constrained answer {text:?} dropped {}", v["dropped"]);
        let allowed: Vec<&str> = cats.split(',').collect();
        for d in v["detections"].as_array().unwrap() {
            assert!(allowed.contains(&d["label"].as_str().unwrap()), "{text}");
        }
        assert!(text == "None" || !v["detections"].as_array().unwrap().is_empty(), "{text:?}");
    }
}

/// With the list split into chunks, each call's answer may only name the categories it asked
/// about (not the whole list's).
#[test]
fn constrained_detection_names_only_its_chunk() {
    let cats = ["person", "car", "dog"];
    let v =
        task("detect", &["--categories", "person,car,dog", "--chunk", "1", "--constrained", "--max-new-tokens", "120"]);
    let texts: Vec<&str> = v["text"].as_str().unwrap().split('\n').collect();
    assert_eq!(texts.len(), 3, "{v}");
    // (the fixture's answers name boxes, so the check below has something to check)
    assert!(texts.iter().filter(|t| t.contains("-[")).count() >= 2, "{v}");
    for (t, cat) in texts.iter().zip(cats) {
        for other in cats.iter().filter(|c| **c != cat) {
            assert!(!t.contains(&format!("{other}-[")), "the call asking for {cat} answered {t:?}");
        }
    }
    assert!(v["dropped"].as_array().unwrap().is_empty(), "{v}");
}

#[test]
fn constrained_count_is_nameless() {
    let d = fixture();
    let ex = d.join("region.png");
    let v = task("count", &["--exemplar", ex.to_str().unwrap(), "--constrained", "--max-new-tokens", "200"]);
    assert!(v["dropped"].as_array().unwrap().is_empty(), "{v}");
    assert_eq!(v["count"].as_u64().unwrap() as usize, v["detections"].as_array().unwrap().len());
    assert!(v["detections"].as_array().unwrap().iter().all(|d| d["label"].is_null()));
}

#[test]
fn ground_and_phrases() {
    let v = task("ground", &["--expression", "the red square", "--max-new-tokens", "16"]);
    assert!(v["detections"].as_array().unwrap().len() <= 1);
    let v = task("ground", &["--phrase", "a red square", "--phrase", "a blue circle", "--max-new-tokens", "8"]);
    assert_eq!(v["text"].as_str().unwrap().matches('\n').count(), 1);
}

#[test]
fn describe_returns_text_and_the_box() {
    let v = task("describe", &["--box", "10,20,40,60", "--max-new-tokens", "8"]);
    let d = &v["detections"][0];
    assert_eq!(d["box"], serde_json::json!([10.0, 20.0, 40.0, 60.0]));
    assert_eq!(d["label"], v["text"]);
    assert!(v["text_score"].as_f64().unwrap() > 0.0);
}

#[test]
fn count_with_box_on_same_and_other_image_and_coco_format() {
    let d = fixture();
    let v = task("count", &["--exemplar-box", "5,5,30,30", "--max-new-tokens", "12"]);
    assert!(v["count"].is_u64());
    let other = d.join("region.png");
    let out = griffon(&[
        "count",
        "--model",
        d.join("ckpt").to_str().unwrap(),
        "--image",
        d.join("image.png").to_str().unwrap(),
        "--exemplar-image",
        other.to_str().unwrap(),
        "--exemplar-box",
        "0,0,20,25",
        "--max-new-tokens",
        "12",
        "--json",
        "--format",
        "coco",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    for det in v["detections"].as_array().unwrap() {
        assert_eq!(det["bbox"].as_array().unwrap().len(), 4);
        assert!(det.get("category").is_some() && det["score"].is_number());
    }
}

#[test]
fn chat_with_region_and_save() {
    let d = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("out.png");
    let v = task(
        "chat",
        &[
            "--prompt",
            "What is <region>?",
            "--region",
            d.join("region.png").to_str().unwrap(),
            "--max-new-tokens",
            "8",
            "--save",
            png.to_str().unwrap(),
        ],
    );
    assert!(v["text"].is_string());
    let img = image::open(&png).expect("saved image");
    assert_eq!((img.width(), img.height()), (90, 70));
}

#[test]
fn parse_reads_stdin() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_griffon"))
        .args(["parse", "--width", "100", "--height", "50"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"cat-[0.100,0.200,0.300,0.400]&junk&cat-[0.1,0.2,0.3,0.4]\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["detections"][0]["label"], "cat");
    assert_eq!(v["detections"][0]["box"], serde_json::json!([10.0, 10.0, 30.0, 20.0]));
    assert_eq!(v["dropped"][0]["text"], "junk");
    assert!(v["detections"][0]["score"].is_null(), "no confidence without decoding probabilities");
    // the repeated box, as `detect --json` lists it: after the one kept box, without a score
    assert_eq!(v["repeats"][0]["box"], serde_json::json!([10.0, 10.0, 30.0, 20.0]), "{v}");
    assert_eq!(v["repeats"][0]["after"], 1, "{v}");
    assert!(v["repeats"][0]["score"].is_null(), "{v}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let d = fixture();
    let m = d.join("ckpt");
    let img = d.join("image.png");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["describe", "--box", "0,0,200,10"], "outside"),
        (vec!["describe", "--box", "5,5,5,9"], "zero"),
        (vec!["describe", "--box", "1,2,3"], "4 numbers"),
        // a negative number is a value, not a flag: the box and the temperature are named
        (vec!["describe", "--box", "-5,0,10,10"], "lies outside"),
        (vec!["count", "--exemplar-box", "-5,0,10,10"], "lies outside"),
        (vec!["detect", "--categories", "a", "--temperature", "-1"], "--temperature must be >= 0"),
        (vec!["generate", "--prompt", " "], "--prompt is empty"),
        (vec!["detect", "--categories", " , "], "empty"),
        (vec!["count", "--exemplar", "/nonexistent/ex.png"], "/nonexistent/ex.png"),
        (vec!["count"], "give an exemplar"),
        (vec!["chat", "--prompt", "a <region> b <region>", "--region", img.to_str().unwrap()], "2 <region>"),
        (vec!["detect", "--categories", "a", "--chunk", "0"], "must be at least 1"),
        (vec!["detect", "--categories", "a", "--image-size", "1400000"], "exceeds 8192 px"),
        (vec!["detect", "--categories", "a", "--tiles", "100000"], "exceeds 8192 px"),
        // sampling settings without sampling would pass a greedy answer off as sampled
        (vec!["detect", "--categories", "a", "--top-p", "0.9"], "--top-p applies when sampling only"),
        (vec!["detect", "--categories", "a", "--top-k", "5"], "--top-k applies when sampling only"),
        (vec!["detect", "--categories", "a", "--seed", "3"], "--seed applies when sampling only"),
        (vec!["describe", "--box", "1,1,9,9", "--constrained"], "--constrained is for detection-style answers"),
        (vec!["detect", "--categories", "a", "--format", "coco"], "--json"),
    ];
    for (args, needle) in cases {
        let mut full = vec![args[0], "--model", m.to_str().unwrap(), "--image", img.to_str().unwrap()];
        full.extend_from_slice(&args[1..]);
        let out = griffon(&full);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(err.contains(needle), "{args:?}: stderr {err:?} lacks {needle:?}");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
    // --save naming an input: the boxed copy would replace the photo it was drawn from (a copy of
    // the fixture here, so a failure cannot overwrite the fixture)
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("photo.png");
    std::fs::copy(&img, &copy).unwrap();
    let before = std::fs::read(&copy).unwrap();
    let c = copy.to_str().unwrap();
    for args in [
        vec!["detect", "--image", c, "--categories", "a", "--save", c],
        vec!["count", "--image", img.to_str().unwrap(), "--exemplar", c, "--save", c],
    ] {
        let mut full = vec![args[0], "--model", m.to_str().unwrap()];
        full.extend_from_slice(&args[1..]);
        let out = griffon(&full);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("is an input image of this request"), "{args:?}: {err}");
    }
    assert_eq!(std::fs::read(&copy).unwrap(), before, "the input was overwritten");
    // a model path that is a file is named as such, not as missing
    let out =
        griffon(&["detect", "--model", img.to_str().unwrap(), "--image", img.to_str().unwrap(), "--categories", "a"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a folder"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // --save is checked before the model loads (a model that does not exist is not reached)
    for (save, needle) in [("/nonexistent/dir/out.png", "/nonexistent/dir does not exist"), ("out.txt", "extension")] {
        let out = griffon(&[
            "detect",
            "--model",
            "/nonexistent/model",
            "--image",
            img.to_str().unwrap(),
            "--categories",
            "a",
            "--save",
            save,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "--save {save}: stderr {err:?} lacks {needle:?}");
    }
    let out =
        griffon(&["detect", "--model", m.to_str().unwrap(), "--image", "/nonexistent/x.jpg", "--categories", "a"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.jpg"));
    // a cache budget that is not a number of megabytes is named, not replaced by the default
    let out = Command::new(env!("CARGO_BIN_EXE_griffon"))
        .args(["detect", "--model", m.to_str().unwrap(), "--image", img.to_str().unwrap(), "--categories", "a"])
        .env("GRIFFON_IMAGE_CACHE_MB", "lots")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("GRIFFON_IMAGE_CACHE_MB=\"lots\""), "{err}");
    // scenes too large for memory, and more objects than the COCO ids allow
    let tmp = tempfile::tempdir().unwrap();
    let o = tmp.path().join("s");
    for (args, needle) in
        [(["--size", "4000000000"], "outside 32..=8192"), (["--max-objects", "400"], "outside 1..=100")]
    {
        let out = griffon(&[&["synth", "--out", o.to_str().unwrap(), "--n", "1"][..], &args[..]].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "{args:?}: {err}");
    }
    // resize-tower into a folder inside the model would copy the copy into itself
    fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.path().is_dir() {
                copy_dir(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }
    let model = tmp.path().join("m");
    copy_dir(&m, &model);
    let inside = model.join("r");
    let out = griffon(&[
        "resize-tower",
        "--model",
        model.to_str().unwrap(),
        "--out",
        inside.to_str().unwrap(),
        "--image-size",
        "28",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("inside the model folder"), "{err}");
}

/// A temperature too small for f32 samples the most likely token instead of NaN noise.
#[test]
fn tiny_temperature_samples_like_greedy() {
    let greedy = task("describe", &["--box", "10,10,40,40", "--max-new-tokens", "8"]);
    let tiny = task("describe", &["--box", "10,10,40,40", "--max-new-tokens", "8", "--temperature", "1e-50"]);
    assert_eq!(tiny["text"], greedy["text"]);
}

#[test]
fn bench_reports_every_measure() {
    for cfg in ["tiny", "tiny-eva02"] {
        let out = griffon(&["bench", "--config", cfg, "--random-weights", "--decode-tokens", "4", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        for k in [
            "vision_ms",
            "projector_ms",
            "prefill_ms",
            "prefill_last_ms",
            "decode_tok_per_s",
            "decode_step_ms",
            "decode_step_issue_ms",
        ] {
            assert!(v[k].as_f64().is_some_and(|x| x > 0.0), "{cfg}: {k} in {v}");
        }
        assert!(v["decode_step_issue_ms"].as_f64() <= v["decode_step_ms"].as_f64(), "{v}");
        assert_eq!(v["prefill_tokens"], 64 + 60);
    }
    // one part alone, once (for a profiler): the others are null
    let out = griffon(&["bench", "--config", "tiny", "--random-weights", "--only", "vision", "--quick", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["vision_ms"].as_f64().is_some_and(|x| x > 0.0), "{v}");
    for k in ["projector_ms", "prefill_ms", "decode_tok_per_s", "decode_step_ms"] {
        assert!(v[k].is_null(), "{k} in {v}");
    }
    let out = griffon(&["bench", "--config", "tiny", "--random-weights", "--only", "lm-head"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("vision, projector"));
    let out = griffon(&["bench", "--config", "nope", "--random-weights"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("tiny"));
}

#[test]
fn selfcheck_passes_on_cpu_in_f32_and_bf16() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/parity");
    // the last run checks the GPU's half-precision attention arithmetic (bf16 scores, soft-caps and
    // masks) against the fixtures, within the bf16 tolerance
    for (dtype, low) in [("f32", false), ("bf16", false), ("bf16", true)] {
        let mut args = vec!["selfcheck", "--fixtures", fixtures.to_str().unwrap(), "--dtype", dtype, "--json"];
        if low {
            args.push("--low-precision-attention");
        }
        let out = griffon(&args);
        assert!(out.status.success(), "{dtype}: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let cases = v.as_array().unwrap();
        assert_eq!(cases.len(), 4, "gemma2_region, gemma2_interp72, llama2_bf16, qwen2");
        assert!(cases.iter().all(|c| c["pass"] == true), "{dtype}: {v}");
    }
}

/// `generate --stream` prints, piece by piece, the same text the plain command prints (the
/// Llama fixture's byte-level pieces and the Gemma fixture's `▁` pieces, 40 tokens each).
#[test]
fn streamed_generation_prints_the_same_text() {
    for case in ["gemma2_region", "llama2_bf16", "qwen2"] {
        let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/parity").join(case);
        let (model, image) = (d.join("ckpt"), d.join("image.png"));
        let base = [
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--prompt",
            "Describe the image.",
            "--max-new-tokens",
            "40",
        ];
        let plain = griffon(&base);
        assert!(plain.status.success(), "{case}: {}", String::from_utf8_lossy(&plain.stderr));
        let mut args = base.to_vec();
        args.push("--stream");
        let streamed = griffon(&args);
        assert!(streamed.status.success(), "{case}: {}", String::from_utf8_lossy(&streamed.stderr));
        let (a, b) = (String::from_utf8_lossy(&plain.stdout), String::from_utf8_lossy(&streamed.stdout));
        assert!(!a.trim().is_empty(), "{case}: empty answer");
        assert_eq!(a, b, "{case}");
    }
}

/// `--model` falls back to $GRIFFON_MODEL and wins over it.
#[test]
fn model_from_the_environment() {
    let d = fixture();
    let image = d.join("image.png");
    let args =
        ["detect", "--image", image.to_str().unwrap(), "--categories", "red square", "--max-new-tokens", "4", "--json"];
    let out =
        Command::new(env!("CARGO_BIN_EXE_griffon")).args(args).env("GRIFFON_MODEL", d.join("ckpt")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_shape(&v);
    // a --model that is not there is named, whatever the environment says
    let missing = d.join("no-such-model");
    let out = Command::new(env!("CARGO_BIN_EXE_griffon"))
        .args(args)
        .args(["--model", missing.to_str().unwrap()])
        .env("GRIFFON_MODEL", d.join("ckpt"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-model"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Without --model or $GRIFFON_MODEL the bundled default model is used; in a source tree without
/// one (models/default removed) the error says what to give. What the default model answers:
/// tests/default_model.rs.
#[test]
fn without_a_model_the_bundled_default_is_used_or_named() {
    let d = fixture();
    let default = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/default/config.json");
    let out = Command::new(env!("CARGO_BIN_EXE_griffon"))
        .args(["detect", "--image", d.join("image.png").to_str().unwrap(), "--categories", "circle", "--json"])
        .env_remove("GRIFFON_MODEL")
        .output()
        .expect("run griffon");
    // $GRIFFON_MODEL set but empty is unset (clap read it as an empty --model)
    let empty = Command::new(env!("CARGO_BIN_EXE_griffon"))
        .args(["detect", "--image", d.join("image.png").to_str().unwrap(), "--categories", "circle", "--json"])
        .env("GRIFFON_MODEL", "")
        .output()
        .expect("run griffon");
    assert_eq!(empty.status.success(), out.status.success(), "{}", String::from_utf8_lossy(&empty.stderr));
    assert_eq!(empty.stdout, out.stdout);
    if default.is_file() {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("--model") && err.contains("models/default"), "{err}");
    }
}

/// `griffon train` says which records it refused before it trains (they used to show only in the
/// end summary), with the first record of each kind by file and line.
#[test]
fn train_reports_refused_records_before_training() {
    let d = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("images");
    std::fs::create_dir_all(&img).unwrap();
    std::fs::copy(d.join("image.png"), img.join("a.png")).unwrap();
    let good = r#"{"image_path": "a.png", "height": 70, "width": 90, "dataset_name": "t", "objects": [{"category_name": "red square", "bboxes": [[18, 17, 45, 35]]}]}"#;
    let lines = [good.to_string(), good.replace("a.png", "gone.png"), "{\"broken".to_string()];
    std::fs::write(tmp.path().join("det.jsonl"), lines.join("\n") + "\n").unwrap();
    std::fs::write(tmp.path().join("tasks.txt"), "DET & det.jsonl & images\n").unwrap();
    let cfg = tmp.path().join("t.toml");
    std::fs::write(
        &cfg,
        format!(
            "[model]\ninit = {:?}\n[data]\ntasks = \"tasks.txt\"\nmax_len = 512\n[train]\nout = \"out\"\nstage = 1\nlr = 1e-3\nmax_steps = 1\n",
            d.join("ckpt")
        ),
    )
    .unwrap();
    let out = griffon(&["train", "--config", cfg.to_str().unwrap(), "--quiet"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let before = err.split("skipped 1 records before training").count() - 1;
    assert_eq!(before, 2, "{err}");
    assert!(err.contains("missing image (first: ") && err.contains("det.jsonl:2: missing image"), "{err}");
    assert!(err.contains("det.jsonl:3: not JSON"), "{err}");
}

//! `griffon eval`: the metric commands on the shared parity vectors, and every dataset runner
//! end to end on the tiny fixture checkpoint (shape of the outputs, resume, shards + merge).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn griffon(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_griffon")).args(args).output().expect("run griffon")
}

fn ok(args: &[&str]) -> String {
    let out = griffon(args);
    assert!(out.status.success(), "griffon {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn shared_data() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    assert!(d.is_dir(), "SHARED DATA MISSING: {} must exist beside the repo (../shared/data)", d.display());
    d
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/parity/gemma2_region")
}

#[test]
fn coco_results_matches_pycocotools_on_shared_vector() {
    let d = shared_data().join("coco-fake100");
    let (ann, res) = (d.join("instances_val2014_100.json"), d.join("fakebbox100.json"));
    let args = ["eval", "coco-results", "--annotations", ann.to_str().unwrap(), "--results", res.to_str().unwrap()];
    let out = ok(&[&args[..], &["--json"]].concat());
    let v: Value = serde_json::from_str(&out).unwrap();
    let stats: Vec<f64> = v["stats"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(d.join("expected.json")).unwrap()).unwrap();
    let want: Vec<f64> = expected["expected_pycocotools_2_0_11"]["fakebbox100"]["stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(stats.len(), 12);
    for (a, b) in stats.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-12, "{stats:?} vs {want:?}");
    }
    // the human-readable form is pycocotools' summary
    let text = ok(&args);
    assert!(text.contains("Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]"), "{text}");
}

/// Detections of categories the ground truth lacks are not scored (as in pycocotools, whose
/// scores the golden vector holds) and are counted in a warning and in the JSON.
#[test]
fn coco_results_warns_of_unknown_categories() {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../eval/tests/fixtures/coco");
    let (ann, res) = (d.join("foreign/gt.json"), d.join("foreign/dt.json"));
    let args = ["eval", "coco-results", "--annotations", ann.to_str().unwrap(), "--results", res.to_str().unwrap()];
    let out = griffon(&[&args[..], &["--json"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning: 2 of 2 detections") && err.contains("(the first: 3)"), "{err}");
    assert!(err.contains("all of them"), "{err}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["unknown_category_detections"], 2);
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(d.join("expected.json")).unwrap()).unwrap();
    assert_eq!(v["stats"], expected["cases"]["foreign"]["stats"]);
    // one unknown among many: counted, not "all of them"
    let (ann, res) = (d.join("edge/gt.json"), d.join("edge/dt.json"));
    let out =
        griffon(&["eval", "coco-results", "--annotations", ann.to_str().unwrap(), "--results", res.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("1 of 146 detections") && !err.contains("all of them"), "{err}");
    // a file of known categories only: no warning
    let (ann, res) = (d.join("random/gt.json"), d.join("random/dt.json"));
    let out =
        griffon(&["eval", "coco-results", "--annotations", ann.to_str().unwrap(), "--results", res.to_str().unwrap()]);
    assert!(out.status.success() && out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn cider_matches_pycocoevalcap_on_shared_vector() {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(shared_data().join("cider/vector.json")).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (r, h) = (tmp.path().join("refs.json"), tmp.path().join("hyps.json"));
    std::fs::write(&r, v["refs"].to_string()).unwrap();
    std::fs::write(&h, v["hyps"].to_string()).unwrap();
    let out: Value = serde_json::from_str(&ok(&[
        "eval",
        "cider",
        "--refs",
        r.to_str().unwrap(),
        "--hyps",
        h.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    let want = v["expected"]["cider"].as_f64().unwrap();
    assert!((out["cider"].as_f64().unwrap() - want).abs() <= 1e-9, "{out} vs {want}");
}

#[test]
fn metric_commands_reject_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, "{ nope").unwrap();
    let d = shared_data().join("coco-fake100");
    let out = griffon(&[
        "eval",
        "coco-results",
        "--annotations",
        d.join("instances_val2014_100.json").to_str().unwrap(),
        "--results",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.json") && !err.contains("panicked"), "{err}");
}

/// A toy dataset over the fixture images in every runner format.
struct Toy {
    dir: tempfile::TempDir,
}

impl Toy {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("images");
        std::fs::create_dir_all(&img).unwrap();
        std::fs::copy(fixture().join("image.png"), img.join("a.png")).unwrap();
        std::fs::copy(fixture().join("region.png"), img.join("b.png")).unwrap();
        image::open(fixture().join("image.png")).unwrap().to_rgb8().save(img.join("1000.jpg")).unwrap();
        let coco = serde_json::json!({
            "images": [{"id": 1, "file_name": "a.png", "width": 90, "height": 70}, {"id": 2, "file_name": "b.png", "width": 40, "height": 50}],
            "categories": [{"id": 1, "name": "red square"}, {"id": 2, "name": "blue circle"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "bbox": [18, 17, 27, 18], "area": 486, "iscrowd": 0},
                {"id": 2, "image_id": 1, "category_id": 2, "bbox": [45, 35, 40, 30], "area": 1200, "iscrowd": 0},
                {"id": 3, "image_id": 2, "category_id": 1, "bbox": [8, 12, 12, 13], "area": 156, "iscrowd": 0}
            ]
        });
        std::fs::write(dir.path().join("coco.json"), coco.to_string()).unwrap();
        std::fs::write(
            dir.path().join("refcoco.jsonl"),
            "{\"id\": 7, \"img_path\": \"a.png\", \"expression\": \"the red square\", \"bbox\": [18, 17, 45, 35]}\n\
             {\"id\": 8, \"img_path\": \"b.png\", \"expression\": \"the small square\", \"bbox\": [8, 12, 20, 25]}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("reg.jsonl"),
            "{\"img_path\": \"a.png\", \"bbox\": [18, 17, 45, 35], \"expressions\": [\"a red square\", \"red box on the left\"]}\n\
             {\"img_path\": \"b.png\", \"bbox\": [8, 12, 20, 25], \"expressions\": [\"small square\"]}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("count.jsonl"),
            "{\"image\": \"a.png\", \"exemplar\": [18, 17, 45, 35], \"count\": 2}\n{\"image\": \"b.png\", \"exemplar\": [8, 12, 20, 25], \"count\": 1}\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("Sentences")).unwrap();
        std::fs::create_dir_all(dir.path().join("Annotations")).unwrap();
        std::fs::write(
            dir.path().join("Sentences/1000.txt"),
            "[/EN#1/other A red square] next to [/EN#2/other a blue circle] .\n[/EN#3/other Nothing boxed] here .\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("Annotations/1000.xml"),
            "<annotation><object><name>1</name><bndbox><xmin>18</xmin><ymin>17</ymin><xmax>45</xmax><ymax>35</ymax></bndbox></object>\
             <object><name>2</name><bndbox><xmin>45</xmin><ymin>35</ymin><xmax>85</xmax><ymax>65</ymax></bndbox></object></annotation>",
        )
        .unwrap();
        Toy { dir }
    }
    fn p(&self, rel: &str) -> String {
        self.dir.path().join(rel).to_str().unwrap().to_string()
    }
}

fn run_eval(task: &str, toy: &Toy, out: &str, extra: &[&str]) -> Value {
    let model = fixture().join("ckpt");
    let mut args: Vec<String> = vec![
        "eval".into(),
        task.into(),
        "--model".into(),
        model.to_str().unwrap().into(),
        "--images".into(),
        toy.p("images"),
        "--out".into(),
        toy.p(out),
        "--quiet".into(),
    ];
    if !extra.contains(&"--max-new-tokens") {
        args.extend(["--max-new-tokens".to_string(), "40".to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let text = ok(&refs);
    if text.trim().is_empty() {
        return Value::Null;
    }
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn records(dir: &Path) -> Vec<Value> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().starts_with("predictions.shard-") {
            for l in std::fs::read_to_string(&p).unwrap().lines() {
                v.push(serde_json::from_str(l).unwrap());
            }
        }
    }
    v
}

#[test]
fn coco_runner_resume_and_shards() {
    let toy = Toy::new();
    let ann = toy.p("coco.json");
    // a partial run, then the rest: the first record is not redone
    let m1 = run_eval("coco", &toy, "full", &["--annotations", &ann, "--constrained", "--limit", "1"]);
    let first = records(&toy.dir.path().join("full"));
    assert_eq!(first.len(), 1);
    // scored on the image that ran only (pycocotools' params.imgIds), not on every image
    assert_eq!(m1["images"], 1, "{m1}");
    // a kill mid-write leaves a torn line, which resume cuts off
    let shard = toy.dir.path().join("full/predictions.shard-0-of-1.jsonl");
    let mut text = std::fs::read_to_string(&shard).unwrap();
    text.push_str("{\"id\": \"2\", \"ima");
    std::fs::write(&shard, text).unwrap();
    let m = run_eval("coco", &toy, "full", &["--annotations", &ann, "--constrained"]);
    let all = records(&toy.dir.path().join("full"));
    assert_eq!(all.len(), 2);
    assert_eq!(m["images"], 2, "{m}");
    assert_eq!(all[0], first[0]);
    for r in &all {
        for k in ["id", "image", "prompts", "answer", "detections", "dropped", "truth"] {
            assert!(r.get(k).is_some(), "record lacks {k}: {r}");
        }
        assert!(r["dropped"].as_array().unwrap().is_empty(), "constrained answers parse: {r}");
    }
    // a random model may find nothing: then there is no results list to score (documented)
    match m["stats"].as_array() {
        Some(stats) => assert_eq!(stats.len(), 12),
        None => assert_eq!(m["detections"], 0, "{m}"),
    }
    // two shards + merge give the same metrics
    run_eval("coco", &toy, "sharded", &["--annotations", &ann, "--constrained", "--shard", "0/2"]);
    run_eval("coco", &toy, "sharded", &["--annotations", &ann, "--constrained", "--shard", "1/2"]);
    let merged: Value =
        serde_json::from_str(&ok(&["eval", "merge", "--out", &toy.p("sharded"), "--annotations", &ann])).unwrap();
    assert_eq!(merged["stats"], m["stats"]);
    assert!(toy.dir.path().join("sharded/metrics.json").is_file());
}

#[test]
fn grounding_description_and_counting_runners() {
    let toy = Toy::new();
    let m = run_eval("refcoco", &toy, "rec", &["--data", &toy.p("refcoco.jsonl")]);
    let acc = m["acc@0.5"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc) && m["total"] == 2, "{m}");
    // a rerun into the same folder with a smaller --limit scores its own items only
    let m = run_eval("refcoco", &toy, "rec", &["--data", &toy.p("refcoco.jsonl"), "--limit", "1"]);
    assert_eq!(m["total"], 1, "{m}");
    // records another evaluation wrote are refused, not mixed in: an edited ground truth, and
    // another dataset into the same folder
    let model = fixture().join("ckpt");
    let (images, rec) = (toy.p("images"), toy.p("rec"));
    // a refcoco run of `data` with these images into `out`
    let refcoco_run = |images: &str, out: &str, data: &str, extra: &[&str]| {
        let model = model.to_str().unwrap();
        let mut args = vec!["eval", "refcoco", "--model", model, "--images", images, "--out", out, "--quiet"];
        args.extend_from_slice(&["--max-new-tokens", "40", "--data", data]);
        args.extend_from_slice(extra);
        griffon(&args)
    };
    let rerun = |data: &str, extra: &[&str]| refcoco_run(&images, &rec, data, extra);
    std::fs::write(
        toy.p("edited.jsonl"),
        "{\"id\": 7, \"img_path\": \"a.png\", \"expression\": \"the red square\", \"bbox\": [18, 17, 46, 35]}\n",
    )
    .unwrap();
    std::fs::write(
        toy.p("other.jsonl"),
        "{\"id\": 9, \"img_path\": \"a.png\", \"expression\": \"the red square\", \"bbox\": [18, 17, 45, 35]}\n",
    )
    .unwrap();
    std::fs::write(
        toy.p("asked.jsonl"),
        "{\"id\": 7, \"img_path\": \"a.png\", \"expression\": \"the blue thing\", \"bbox\": [18, 17, 45, 35]}\n",
    )
    .unwrap();
    for (data, why) in [
        ("edited.jsonl", "ground truth differs"),
        ("other.jsonl", "this dataset has no such id"),
        ("asked.jsonl", "it asked the model something else"),
    ] {
        let o = rerun(&toy.p(data), &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("another evaluation wrote") && err.contains(why), "{data}: {err}");
    }
    // another model (here the same folder at another input size) into the same folder: refused
    let o = rerun(&toy.p("refcoco.jsonl"), &["--image-size", "56"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("answered by another model") && err.contains("image size 56"), "{err}");
    // the model's own template named is the same decoding as auto; another template is not
    let o = rerun(&toy.p("refcoco.jsonl"), &["--template", "gemma_instruct"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = rerun(&toy.p("refcoco.jsonl"), &["--template", "qwen2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("template qwen2"), "{err}");
    // records written before session 29 name the model's own template, and a chunk refcoco has
    // no use for: they resume
    let shard = toy.dir.path().join("rec/predictions.shard-0-of-1.jsonl");
    let text = std::fs::read_to_string(&shard).unwrap();
    // (one old record kept, the other sample run again: the folder then holds both forms)
    let first = text.lines().next().unwrap();
    let older = first.replace("template auto, chunk 80", "template gemma_instruct, chunk 5");
    assert_ne!(older, first);
    std::fs::write(&shard, older + "\n").unwrap();
    let o = rerun(&toy.p("refcoco.jsonl"), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["total"], 2, "{m}");
    // so is another decoding (here the constraint; --max-new-tokens is not compared, above)
    let o = rerun(&toy.p("refcoco.jsonl"), &["--constrained"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("or decoding") && err.contains(", constrained"), "{err}");
    // records of before the decoding was stored (the model alone) resume with that model
    let shard = toy.dir.path().join("rec/predictions.shard-0-of-1.jsonl");
    let text = std::fs::read_to_string(&shard).unwrap();
    let old: String = text
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("decoding").expect("the decoding is stored");
            format!("{v}\n")
        })
        .collect();
    assert_ne!(old, text);
    std::fs::write(&shard, old).unwrap();
    let o = rerun(&toy.p("refcoco.jsonl"), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = rerun(&toy.p("refcoco.jsonl"), &["--image-size", "56"]);
    assert!(!o.status.success(), "another model is still refused");
    // a merge with a shard missing is refused instead of scoring half the dataset
    run_eval("refcoco", &toy, "rec2", &["--data", &toy.p("refcoco.jsonl"), "--shard", "0/2"]);
    let o = griffon(&["eval", "merge", "--out", &toy.p("rec2")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("shard(s) 1/2 not run yet"), "{err}");
    // a run of another split into that folder is refused before it runs anything
    let o = refcoco_run(&images, &toy.p("rec2"), &toy.p("refcoco.jsonl"), &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("2-way split and this run is 1-way"), "{err}");
    // the same images named another way (./ in the path) are the same evaluation: resumed
    let dotted = format!("{images}/./");
    let o = refcoco_run(&dotted, &rec, &toy.p("refcoco.jsonl"), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["total"], 2, "{m}");
    let m = run_eval(
        "flickr",
        &toy,
        "flickr",
        &["--sentences", &toy.p("Sentences"), "--annotations", &toy.p("Annotations")],
    );
    assert_eq!(m["phrases"], 2, "{m}");
    assert!(m["any_box_r@1"].as_f64().unwrap() >= m["merged_box_r@1"].as_f64().unwrap() - 1.0);
    let m = run_eval("reg", &toy, "reg", &["--data", &toy.p("reg.jsonl"), "--max-new-tokens", "6"]);
    assert!(m["cider"].as_f64().unwrap() >= 0.0 && m["images"] == 2, "{m}");
    let m = run_eval("count", &toy, "count", &["--data", &toy.p("count.jsonl"), "--constrained"]);
    assert!(m["mae"].as_f64().unwrap() >= 0.0 && m["images"] == 2, "{m}");
    // the exemplar is not in the prompt ("similar to <region>"): each record stores it, and a
    // resume with another exemplar is refused
    std::fs::write(
        toy.p("count2.jsonl"),
        "{\"image\": \"a.png\", \"exemplar\": [18, 17, 45, 36], \"count\": 2}\n{\"image\": \"b.png\", \"exemplar\": [8, 12, 20, 25], \"count\": 1}\n",
    )
    .unwrap();
    let ckpt = model.to_str().unwrap();
    let count_run = |data: &str| {
        let (out, data) = (toy.p("count"), toy.p(data));
        let args = ["eval", "count", "--model", ckpt, "--images", &images, "--out", &out, "--quiet"];
        griffon(&[&args[..], &["--max-new-tokens", "40", "--constrained", "--data", &data]].concat())
    };
    let o = count_run("count2.jsonl");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("counting exemplar differs"), "{err}");
    let o = count_run("count.jsonl");
    assert!(o.status.success(), "the same exemplars resume: {}", String::from_utf8_lossy(&o.stderr));
    // options that these evaluations would ignore are refused
    let o = refcoco_run(&images, &toy.p("rc-chunk"), &toy.p("refcoco.jsonl"), &["--chunk", "5"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--chunk is for detection"), "{err}");
    let reg = toy.p("reg.jsonl");
    let out = toy.p("reg-c");
    let o =
        griffon(&["eval", "reg", "--model", ckpt, "--images", &images, "--out", &out, "--data", &reg, "--constrained"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("free text"), "{err}");
}

#[test]
fn runner_records_unreadable_images_as_failed() {
    let toy = Toy::new();
    std::fs::write(
        toy.dir.path().join("rc.jsonl"),
        "{\"img_path\": \"missing.png\", \"expression\": \"x\", \"bbox\": [1, 1, 5, 5]}\n{\"img_path\": \"a.png\", \"expression\": \"y\", \"bbox\": [1, 1, 5, 5]}\n",
    )
    .unwrap();
    let m = run_eval("refcoco", &toy, "rcbad", &["--data", &toy.p("rc.jsonl"), "--max-new-tokens", "8"]);
    assert_eq!(m["failed_samples"], 1, "{m}");
    let recs = records(&toy.dir.path().join("rcbad"));
    assert!(recs.iter().any(|r| r["error"].as_str().is_some_and(|e| e.contains("missing.png"))));
    // once the image is there, a rerun runs the failed sample again and scores the new record
    std::fs::copy(fixture().join("image.png"), toy.dir.path().join("images/missing.png")).unwrap();
    let m = run_eval("refcoco", &toy, "rcbad", &["--data", &toy.p("rc.jsonl"), "--max-new-tokens", "8"]);
    assert_eq!((m["failed_samples"].as_u64(), m["samples"].as_u64()), (Some(0), Some(2)), "{m}");
    // every sample failing (here a wrong --images) is an error, with the zero scores kept
    let model = fixture().join("ckpt");
    let (model, images, data) = (model.to_str().unwrap(), toy.p("nowhere"), toy.p("rc.jsonl"));
    let base = ["eval", "refcoco", "--model", model, "--images", &images, "--data", &data, "--quiet"];
    let o = griffon(&[&base[..], &["--out", &toy.p("rcnone"), "--max-new-tokens", "8"]].concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("all 2 samples failed") && err.contains("nowhere"), "{err}");
    assert!(toy.dir.path().join("rcnone/metrics.json").is_file());
    // a shard's run fails the same way (before, it exited 0 and only `eval merge` told)
    let o = griffon(&[&base[..], &["--out", &toy.p("rcshard"), "--max-new-tokens", "8", "--shard", "0/2"]].concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("all 1 samples of the shard failed") && err.contains("nowhere"),
        "{err}"
    );
}

#[test]
fn runner_rejects_duplicate_ids_and_zero_chunks() {
    let toy = Toy::new();
    std::fs::write(
        toy.dir.path().join("dup.jsonl"),
        "{\"id\": 5, \"img_path\": \"a.png\", \"expression\": \"x\", \"bbox\": [1, 1, 5, 5]}\n\
         {\"id\": \"5\", \"img_path\": \"b.png\", \"expression\": \"y\", \"bbox\": [1, 1, 5, 5]}\n",
    )
    .unwrap();
    let model = fixture().join("ckpt");
    let base = ["eval", "refcoco", "--model", model.to_str().unwrap(), "--images", &toy.p("images"), "--quiet"];
    let o = griffon(&[&base[..], &["--data", &toy.p("dup.jsonl"), "--out", &toy.p("dup")]].concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("\"5\" twice") && err.contains("item 1") && err.contains("b.png"),
        "{err}"
    );
    let o = griffon(&[&base[..], &["--data", &toy.p("refcoco.jsonl"), "--out", &toy.p("c0"), "--chunk", "0"]].concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--chunk") && err.contains("must be at least 1"), "{err}");
    // --limit 0 is refused before anything is written; so is a dataset without --images
    let o = griffon(&[&base[..], &["--data", &toy.p("refcoco.jsonl"), "--out", &toy.p("l0"), "--limit", "0"]].concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--limit") && !toy.dir.path().join("l0").exists(), "{err}");
    let o = griffon(&[
        "eval",
        "refcoco",
        "--model",
        model.to_str().unwrap(),
        "--data",
        &toy.p("refcoco.jsonl"),
        "--out",
        &toy.p("noimg"),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("give --images"), "{err}");
    let o =
        griffon(&[&base[..], &["--data", &toy.p("refcoco.jsonl"), "--out", &toy.p("s0"), "--shard", "0/1x"]].concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--shard \"0/1x\": \"1x\" is not a whole number"), "{err}");
}

/// An answer cut at --max-new-tokens is reported (a dropped entry, `truncated` in the record and
/// the summary), not passed off as complete.
#[test]
fn cut_answers_are_reported() {
    let toy = Toy::new();
    let m = run_eval("refcoco", &toy, "cut", &["--data", &toy.p("refcoco.jsonl"), "--max-new-tokens", "2"]);
    assert_eq!(m["truncated_samples"], 2, "{m}");
    for r in records(&toy.dir.path().join("cut")) {
        assert_eq!(r["truncated"], true, "{r}");
        let reasons: Vec<&str> = r["dropped"].as_array().unwrap().iter().filter_map(|d| d["reason"].as_str()).collect();
        assert!(reasons.iter().any(|x| x.contains("max_new_tokens (2)")), "{r}");
    }
    // a rerun into the same --out with a higher limit runs the cut answers again and scores the
    // new records
    let m = run_eval("refcoco", &toy, "cut", &["--data", &toy.p("refcoco.jsonl"), "--max-new-tokens", "60"]);
    let recs = records(&toy.dir.path().join("cut"));
    assert_eq!(recs.len(), 4, "both samples ran again");
    let still_cut = recs[2..].iter().filter(|r| r.get("truncated").is_some()).count();
    assert_eq!(m["truncated_samples"].as_u64(), Some(still_cut as u64), "{m}");
    assert!(recs[2..].iter().all(|r| r.get("truncated").is_none() || r["max_new_tokens"] == 60), "{recs:?}");
}

#[test]
fn synth_benchmark_generates_and_evaluates() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("synth");
    let d = data.to_str().unwrap();
    let summary: Value =
        serde_json::from_str(&ok(&["synth", "--out", d, "--n", "3", "--size", "112", "--max-objects", "5"])).unwrap();
    assert_eq!(summary["test"]["images"], 1);
    let model = fixture().join("ckpt");
    let base = ["eval", "synth", "--model", model.to_str().unwrap(), "--data", d, "--images", d, "--quiet"];
    let run = |out: &Path, extra: &[&str]| griffon(&[&base[..], &["--out", out.to_str().unwrap()], extra].concat());
    let eval_summary = |out: &Path, extra: &[&str]| -> Value {
        let o = run(out, extra);
        assert!(o.status.success(), "eval synth {extra:?}: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let out = tmp.path().join("eval");
    let m = eval_summary(&out, &["--constrained", "--max-new-tokens", "30"]);
    for k in ["rec_acc@0.5", "count_mae", "exemplar_count_mae", "exemplar_box_f1@0.5", "reg_cider"] {
        assert!(m[k].is_number(), "{k} missing in {m}");
    }
    assert!(m.get("detection_mAP").is_some(), "{m}");
    assert!(out.join("synth_metrics.json").is_file());
    // --tasks runs only the named evaluations
    let out2 = tmp.path().join("eval-some");
    let m = eval_summary(&out2, &["--tasks", "count,reg", "--max-new-tokens", "30"]);
    let keys: Vec<&String> = m.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["count_mae", "data", "decoding", "limit", "model", "reg_cider", "samples"], "{m}");
    assert_eq!(m["samples"].as_object().unwrap().keys().collect::<Vec<_>>(), ["count", "reg"], "{m}");
    assert!(!out2.join("detection").exists() && !out2.join("count_any").exists());
    // a later run of another task into the same --out adds to its summary
    let m = eval_summary(&out2, &["--tasks", "rec", "--max-new-tokens", "30"]);
    let keys: Vec<&String> = m.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["count_mae", "data", "decoding", "limit", "model", "rec_acc@0.5", "reg_cider", "samples"], "{m}");
    assert_eq!(m["samples"].as_object().unwrap().keys().collect::<Vec<_>>(), ["count", "rec", "reg"], "{m}");
    assert_eq!(m["samples"]["rec"]["failed"], 0, "{m}");
    let written: Value = serde_json::from_slice(&std::fs::read(out2.join("synth_metrics.json")).unwrap()).unwrap();
    assert_eq!(written, m);
    // another decoding (or model) does not add to that summary: the next task would be scored
    // under other settings than the ones beside it
    let o = run(&out2, &["--tasks", "count_any", "--max-new-tokens", "30", "--constrained"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("holds results of another decoding"), "{err}");
    assert!(!out2.join("count_any").exists(), "it ran before refusing");
    // nor does another number of samples (or split, or data folder)
    let o = run(&out2, &["--tasks", "count_any", "--max-new-tokens", "30", "--limit", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("holds results of another limit"), "{err}");
    assert!(!out2.join("count_any").exists(), "it ran before refusing");
    // a shard of it would write a summary without scores
    let o = run(&tmp.path().join("e5"), &["--shard", "0/2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("eval synth runs in one process"), "{err}");
    // a split written before count_any.jsonl existed: skipped by default, an error when asked for
    std::fs::remove_file(data.join("test/count_any.jsonl")).unwrap();
    let e3 = tmp.path().join("e3");
    let o = run(&e3, &["--tasks", "detection,count_any"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("count_any.jsonl") && err.contains("absent"), "{err}");
    assert!(!e3.join("detection").exists(), "detection ran before the missing file was reported");
    let m = eval_summary(&tmp.path().join("e4"), &["--constrained", "--max-new-tokens", "30"]);
    assert!(m["count_mae"].is_number() && m["rec_acc@0.5"].is_number() && m.get("exemplar_count_mae").is_none(), "{m}");
}

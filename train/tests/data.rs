//! Data builders: every released format parsed, the DET category-set rules, answers, None samples,
//! task lists, COCO conversion, write -> read round trips and every kind of bad record.
//! Annotation fixtures are committed under tests/fixtures/data/; the images they name are tiny
//! PNGs written into a temporary folder by each test.

use griffon_core::request::{rec_prompt, COUNT_PROMPT, DETECT_PROMPT};
use griffon_core::{parse_answer, Exemplar, PixelBox};
use griffon_train::data::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data")
}

fn fx(name: &str) -> PathBuf {
    fixtures().join(name)
}

/// A folder with the images the fixtures name (tiny real PNGs).
fn images() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a.png", "b.png", "c.png", "d.png", "patch7/o1.png"] {
        let p = dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        image::RgbImage::from_pixel(3, 2, image::Rgb([10, 20, 30])).save(&p).unwrap();
    }
    dir
}

fn opts(max_categories: usize) -> BuildOptions {
    BuildOptions { max_categories, seed: 7, check_images: true, none_prob: 0.0, det_format_prob: 1.0 }
}

fn src(kind: TaskKind, annotations: PathBuf, images: &Path) -> TaskSource {
    TaskSource { kind, annotations, images: images.to_path_buf() }
}

fn build(
    kind: TaskKind,
    annotations: PathBuf,
    images: &Path,
    vocab: &[String],
    o: &BuildOptions,
    seed: u64,
) -> (Vec<Sample>, Vec<Skipped>) {
    let mut rng = StdRng::seed_from_u64(seed);
    build_source(&src(kind, annotations, images), vocab, o, &mut rng).unwrap()
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The category list of a training detection instruction.
fn category_set(user: &str) -> Vec<String> {
    let head = DETECT_PROMPT.split("{categories}").next().unwrap();
    assert!(user.starts_with(head), "not a detection instruction: {user}");
    let rest = user[head.len()..].strip_suffix(DET_FORMAT_SUFFIX).expect("training suffix");
    let list = rest.strip_suffix('.').unwrap();
    list.split(", ").map(str::to_string).collect()
}

fn line_of(source: &str) -> usize {
    source.rsplit(':').next().unwrap().parse().unwrap()
}

fn reason_for(skipped: &[Skipped], line: usize) -> &str {
    let s: Vec<&Skipped> = skipped.iter().filter(|s| line_of(&s.source) == line).collect();
    assert_eq!(s.len(), 1, "line {line}: {skipped:#?}");
    &s[0].reason
}

// ----------------------------------------------------------------------------------------------
// DET
// ----------------------------------------------------------------------------------------------

#[test]
fn det_fixture_answers_sorted_normalized_three_decimals() {
    let img = images();
    let vocab = names(&["bird", "cat", "dog", "horse", "person", "zebra"]);
    let (s, skipped) = build(TaskKind::Det, fx("det.jsonl"), img.path(), &vocab, &opts(80), 1);
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(s.len(), 3);

    // Line 1: two dogs and a cat, sorted by x1, normalized by 200x100.
    assert_eq!(s[0].image, img.path().join("a.png"));
    assert_eq!(s[0].task, TaskKind::Det);
    assert!(s[0].regions.is_empty());
    assert_eq!(s[0].turns.len(), 1);
    assert_eq!(
        s[0].turns[0].1,
        "dog-[0.100,0.300,0.300,0.900]&cat-[0.250,0.000,0.350,0.200]&dog-[0.500,0.100,0.750,0.600]"
    );
    assert_eq!(line_of(&s[0].source), 1);
    assert!(s[0].source.starts_with(&fx("det.jsonl").display().to_string()));
    let mut set = category_set(&s[0].turns[0].0);
    set.sort();
    assert_eq!(set, vocab, "whole vocabulary fits under the cap");

    // Line 3 (line 2 is blank): the listed absent class `zebra`; unknown keys are fine.
    assert_eq!(line_of(&s[1].source), 3);
    assert_eq!(s[1].image, img.path().join("b.png"));
    assert_eq!(s[1].turns[0].1, "person-[0.000,0.000,0.333,0.333]");

    // Line 4: Objects365 path rule (last two components) and a box 0.5 / 0.8 px beyond the
    // border, clamped; height written as 10.0.
    assert_eq!(s[2].image, img.path().join("patch7/o1.png"));
    assert_eq!(s[2].turns[0].1, "bird-[0.000,0.000,1.000,0.500]");

    // The answers parse back with the project parser.
    let p = parse_answer(&s[0].turns[0].1);
    assert_eq!(p.instances.len(), 3);
    assert!(p.dropped.is_empty());
}

#[test]
fn det_listed_absent_classes_fill_the_set_first() {
    let img = images();
    let vocab = names(&["bird", "cat", "dog", "horse", "person", "zebra"]);
    for seed in 0..10 {
        let (s, _) = build(TaskKind::Det, fx("det.jsonl"), img.path(), &vocab, &opts(2), seed);
        let mut set = category_set(&s[1].turns[0].0);
        set.sort();
        assert_eq!(set, names(&["person", "zebra"]));
    }
}

fn det_file(dir: &Path, recs: &[DetRecord]) -> PathBuf {
    let p = dir.join("gen_det.jsonl");
    write_det_jsonl(&p, recs).unwrap();
    p
}

#[test]
fn det_category_set_has_all_gt_no_duplicates_capped_and_seeded() {
    let img = images();
    let vocab: Vec<String> = (0..200).map(|i| format!("c{i:03}")).collect();
    let rec = DetRecord::new(
        "a.png",
        200,
        100,
        vec![
            DetObject::new("c005", vec![[1.0, 1.0, 20.0, 20.0]]),
            DetObject::new("c150", vec![[30.0, 1.0, 50.0, 20.0], [60.0, 1.0, 80.0, 20.0]]),
            DetObject::new("c005", vec![[90.0, 1.0, 95.0, 20.0]]),
        ],
    );
    let file = det_file(img.path(), &[rec]);
    let mut texts = HashSet::new();
    let mut first_positions = HashSet::new();
    for seed in 0..20 {
        let (s, skipped) = build(TaskKind::Det, file.clone(), img.path(), &vocab, &opts(10), seed);
        assert!(skipped.is_empty());
        assert_eq!(s.len(), 1);
        let set = category_set(&s[0].turns[0].0);
        assert_eq!(set.len(), 10, "capped at max_categories");
        let uniq: HashSet<&String> = set.iter().collect();
        assert_eq!(uniq.len(), set.len(), "no duplicates: {set:?}");
        assert!(set.contains(&"c005".to_string()) && set.contains(&"c150".to_string()), "GT classes present");
        assert!(set.iter().all(|c| vocab.contains(c)));
        first_positions.insert(set.iter().position(|c| c == "c005").unwrap());
        texts.insert(s[0].turns[0].0.clone());
        // Same seed, same sample.
        let (again, _) = build(TaskKind::Det, file.clone(), img.path(), &vocab, &opts(10), seed);
        assert_eq!(again, s);
        // Every instance in the answer, sorted by x1.
        assert_eq!(
            s[0].turns[0].1,
            "c005-[0.005,0.010,0.100,0.200]&c150-[0.150,0.010,0.250,0.200]&c150-[0.300,0.010,0.400,0.200]&c005-[0.450,0.010,0.475,0.200]"
        );
    }
    assert!(texts.len() > 15, "different seeds draw different sets/orders: {}", texts.len());
    assert!(first_positions.len() > 3, "the set is shuffled, GT classes are not always in front: {first_positions:?}");
}

#[test]
fn det_large_vocabulary_sampling() {
    // Over 1024 names takes the rejection-sampling path.
    let img = images();
    let vocab: Vec<String> = (0..3000).map(|i| format!("v{i}")).collect();
    let rec = DetRecord::new("a.png", 200, 100, vec![DetObject::new("v17", vec![[1.0, 1.0, 20.0, 20.0]])]);
    let file = det_file(img.path(), &[rec]);
    let (s, _) = build(TaskKind::Det, file, img.path(), &vocab, &opts(80), 3);
    let set = category_set(&s[0].turns[0].0);
    assert_eq!(set.len(), 80);
    assert_eq!(set.iter().collect::<HashSet<_>>().len(), 80);
    assert!(set.contains(&"v17".to_string()));
}

#[test]
fn det_more_classes_than_the_cap_are_split() {
    let img = images();
    let vocab = names(&["k0", "k1", "k2", "k3", "k4", "n0", "n1", "n2"]);
    let objects: Vec<DetObject> = (0..5)
        .map(|i| DetObject::new(format!("k{i}"), vec![[10.0 * i as f64, 0.0, 10.0 * i as f64 + 5.0, 5.0]]))
        .collect();
    let file = det_file(img.path(), &[DetRecord::new("a.png", 100, 100, objects)]);
    let (s, skipped) = build(TaskKind::Det, file, img.path(), &vocab, &opts(2), 5);
    assert!(skipped.is_empty());
    assert_eq!(s.len(), 3, "5 classes over sets of 2");
    let mut seen_instances = Vec::new();
    let mut gt_seen = HashSet::new();
    for smp in &s {
        let set = category_set(&smp.turns[0].0);
        assert!(set.len() <= 2);
        let p = parse_answer(&smp.turns[0].1);
        for inst in &p.instances {
            let label = inst.label.clone().unwrap();
            assert!(set.contains(&label), "answer class {label} is in this sample's set {set:?}");
            seen_instances.push(label);
        }
        // A set never names another chunk's (present) class without its boxes.
        for c in &set {
            if c.starts_with('k') {
                assert!(p.instances.iter().any(|i| i.label.as_deref() == Some(c)), "{c} listed but not answered");
                gt_seen.insert(c.clone());
            }
        }
    }
    seen_instances.sort();
    assert_eq!(seen_instances, names(&["k0", "k1", "k2", "k3", "k4"]), "every instance exactly once");
    assert_eq!(gt_seen.len(), 5);
}

#[test]
fn det_none_samples() {
    let img = images();
    let vocab = names(&["bird", "cat", "dog", "horse", "person", "zebra"]);
    let o = BuildOptions { none_prob: 1.0, ..opts(80) };
    let (s, skipped) = build(TaskKind::Det, fx("det.jsonl"), img.path(), &vocab, &o, 11);
    assert!(skipped.is_empty());
    assert_eq!(s.len(), 6, "one extra non-existence sample per image");
    let nones: Vec<&Sample> = s.iter().filter(|x| x.turns[0].1 == "None").collect();
    assert_eq!(nones.len(), 3);
    let gt: [&[&str]; 3] = [&["dog", "cat"], &["person"], &["bird"]];
    for (n, gt) in nones.iter().zip(gt) {
        let set = category_set(&n.turns[0].0);
        assert!(!set.is_empty() && set.len() <= 80);
        assert!(set.iter().all(|c| !gt.contains(&c.as_str())), "a None set holds only absent classes: {set:?}");
        assert!(set.iter().all(|c| vocab.contains(c)));
        assert_eq!(set.iter().collect::<HashSet<_>>().len(), set.len());
        assert!(parse_answer(&n.turns[0].1).is_none);
    }
    // Off by default; invalid probabilities are refused.
    let (s0, _) = build(TaskKind::Det, fx("det.jsonl"), img.path(), &vocab, &opts(80), 11);
    assert!(s0.iter().all(|x| x.turns[0].1 != "None"));
    let mut rng = StdRng::seed_from_u64(0);
    let bad = BuildOptions { none_prob: 1.5, ..opts(80) };
    let e = build_source(&src(TaskKind::Det, fx("det.jsonl"), img.path()), &vocab, &bad, &mut rng).unwrap_err();
    assert!(e.to_string().contains("none_prob"), "{e}");
    let zero = opts(0);
    assert!(build_source(&src(TaskKind::Det, fx("det.jsonl"), img.path()), &vocab, &zero, &mut rng).is_err());
}

#[test]
fn det_format_suffix_share() {
    // det_format_prob 0: every DET instruction is the evaluation template itself; 1 (default): all
    // carry the training suffix; in between: both forms, the answers unchanged in form.
    let img = images();
    let vocab = names(&["bird", "cat", "dog", "horse", "person", "zebra"]);
    let (s, _) = build(
        TaskKind::Det,
        fx("det.jsonl"),
        img.path(),
        &vocab,
        &BuildOptions { det_format_prob: 0.0, ..opts(80) },
        3,
    );
    assert!(!s.is_empty());
    for x in &s {
        let user = &x.turns[0].0;
        let set = category_set(&(user.clone() + DET_FORMAT_SUFFIX));
        assert_eq!(user, &griffon_core::request::detect_prompt(&set));
    }
    let (s1, _) = build(TaskKind::Det, fx("det.jsonl"), img.path(), &vocab, &opts(80), 3);
    assert!(s1.iter().all(|x| x.turns[0].0.ends_with(DET_FORMAT_SUFFIX)));
    let (mut with, mut without) = (0, 0);
    for seed in 0..40 {
        let (s, _) = build(
            TaskKind::Det,
            fx("det.jsonl"),
            img.path(),
            &vocab,
            &BuildOptions { det_format_prob: 0.5, ..opts(80) },
            seed,
        );
        for x in &s {
            if x.turns[0].0.ends_with(DET_FORMAT_SUFFIX) {
                with += 1;
            } else {
                without += 1;
            }
            assert!(parse_answer(&x.turns[0].1).instances.iter().all(|i| i.label.is_some()), "{}", x.turns[0].1);
        }
    }
    assert!(with > 20 && without > 20, "with suffix {with}, without {without}");
    let mut rng = StdRng::seed_from_u64(0);
    for bad in [1.5, -0.1, f64::NAN] {
        let o = BuildOptions { det_format_prob: bad, ..opts(80) };
        let e = build_source(&src(TaskKind::Det, fx("det.jsonl"), img.path()), &vocab, &o, &mut rng).unwrap_err();
        assert!(e.to_string().contains("det_format_prob"), "{e}");
    }
}

#[test]
fn det_bad_records_counted_with_reasons() {
    let img = images();
    let vocab = names(&["dog"]);
    let (s, skipped) = build(TaskKind::Det, fx("det_bad.jsonl"), img.path(), &vocab, &opts(80), 0);
    assert_eq!(s.len(), 1, "only the last line is good");
    assert_eq!(line_of(&s[0].source), 13);
    assert_eq!(skipped.len(), 12);
    let expect = [
        (1, "not JSON"),
        (2, "bad record: missing field `width`"),
        (3, "bad size: width/height is 0"),
        (4, "bad box"),
        (5, "bad box"),
        (6, "missing image"),
        (7, "no objects"),
        (8, "bad record: object 0 has an empty category_name"),
        (9, "reserved text"),
        (10, "bad record: invalid length 3"),
        (11, "bad record: image size must be a number"),
        (12, "bad box"),
    ];
    for (line, prefix) in expect {
        let r = reason_for(&skipped, line);
        assert!(r.starts_with(prefix), "line {line}: {r:?} should start with {prefix:?}");
    }
    assert!(reason_for(&skipped, 4).contains("zero or negative area"));
    assert!(reason_for(&skipped, 5).contains("outside the 200x100 image"));
    assert!(reason_for(&skipped, 12).contains("collapses"));
    assert!(reason_for(&skipped, 6).contains("missing.png"));

    let summary = skip_summary(&skipped);
    assert_eq!(summary[0], ("bad record".to_string(), 4));
    assert!(summary.contains(&("bad box".to_string(), 3)));
    assert_eq!(summary.iter().map(|x| x.1).sum::<usize>(), 12);

    // Without the image check the missing image builds.
    let no_check = BuildOptions { check_images: false, ..opts(80) };
    let (s2, sk2) = build(TaskKind::Det, fx("det_bad.jsonl"), img.path(), &vocab, &no_check, 0);
    assert_eq!((s2.len(), sk2.len()), (2, 11));
}

#[test]
fn validate_box_rules() {
    // a negative zero (Python's round(-1e-5, 2)) is written as zero in the sample's text
    let b = validate_box([-0.0, -0.0, 5.0, 5.0], 10, 10).unwrap();
    assert_eq!(b.to_norm(10, 10).format(), "[0.000,0.000,0.500,0.500]");
    assert!(b.x1.is_sign_positive() && b.y1.is_sign_positive());
    assert!(validate_box([f64::NAN, 0.0, 5.0, 5.0], 10, 10).unwrap_err().contains("non-finite"));
    assert!(validate_box([0.0, 0.0, f64::INFINITY, 5.0], 10, 10).unwrap_err().contains("non-finite"));
    assert!(validate_box([5.0, 0.0, 5.0, 5.0], 10, 10).unwrap_err().contains("zero or negative"));
    assert!(validate_box([6.0, 0.0, 5.0, 5.0], 10, 10).unwrap_err().contains("zero or negative"));
    assert!(validate_box([-1.5, 0.0, 5.0, 5.0], 10, 10).unwrap_err().contains("outside"));
    assert!(validate_box([0.0, 0.0, 5.0, 11.01], 10, 10).unwrap_err().contains("outside"));
    assert!(validate_box([10.2, 0.0, 10.9, 5.0], 10, 10).unwrap_err().contains("outside"));
    assert_eq!(validate_box([-1.0, -0.3, 11.0, 10.5], 10, 10).unwrap(), PixelBox::new(0.0, 0.0, 10.0, 10.0));
    assert_eq!(validate_box([1.0, 2.0, 3.0, 4.0], 10, 10).unwrap(), PixelBox::new(1.0, 2.0, 3.0, 4.0));
    assert!(validate_box([0.0, 0.0, 1.0, 10.0], 10000, 10).unwrap_err().contains("collapses"));
}

// ----------------------------------------------------------------------------------------------
// REG / VG
// ----------------------------------------------------------------------------------------------

#[test]
fn reg_fixture() {
    let img = images();
    let (s, skipped) = build(TaskKind::Reg, fx("reg.jsonl"), img.path(), &[], &opts(80), 0);
    assert!(skipped.is_empty(), "{skipped:?}");
    let got: Vec<(&str, &str)> = s.iter().map(|x| (x.turns[0].0.as_str(), x.turns[0].1.as_str())).collect();
    let p = |b: &str| format!("Please generate a distinguishing description for the region {b} in the image.");
    assert_eq!(
        got,
        vec![
            (p("[0.500,0.100,0.750,0.600]").as_str(), "the brown dog"),
            // list expression: expression[0] with bboxes[0]
            (p("[0.000,0.000,0.500,0.500]").as_str(), "a man"),
            // one flat box
            (p("[0.100,0.300,0.300,0.900]").as_str(), "the small dog"),
            // several boxes: all of them, joined by &, record order
            (p("[0.500,0.100,0.750,0.600]&[0.100,0.300,0.300,0.900]").as_str(), "both dogs"),
        ]
    );
    assert!(s.iter().all(|x| x.task == TaskKind::Reg && x.regions.is_empty()));
    assert_eq!(s[1].image, img.path().join("b.png"));
}

#[test]
fn reg_bad_records() {
    let img = images();
    let (s, skipped) = build(TaskKind::Reg, fx("reg_bad.jsonl"), img.path(), &[], &opts(80), 0);
    assert!(s.is_empty());
    assert_eq!(skipped.len(), 5);
    assert!(reason_for(&skipped, 1).starts_with("empty expression"));
    assert!(reason_for(&skipped, 2).starts_with("no box"));
    assert!(reason_for(&skipped, 3).starts_with("missing image"));
    assert!(reason_for(&skipped, 4).starts_with("bad record: missing field `width`"));
    assert!(reason_for(&skipped, 5).starts_with("bad record: expression must be a string"));
}

#[test]
fn vg_fixture_names_boxes_with_the_expression() {
    let img = images();
    let (s, skipped) = build(TaskKind::Vg, fx("vg.jsonl"), img.path(), &[], &opts(80), 0);
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(s.len(), 3);
    assert_eq!(s[0].turns[0].0, rec_prompt("dog"));
    // vg.py: the expression names every box, in record order (not re-sorted).
    assert_eq!(s[0].turns[0].1, "dog-[0.500,0.100,0.750,0.600]&dog-[0.100,0.300,0.300,0.900]");
    assert_eq!(s[1].turns[0], (rec_prompt("a unicorn"), "None".to_string()));
    assert_eq!(
        s[2].turns[0],
        (rec_prompt("the man on the left"), "the man on the left-[0.000,0.000,0.500,0.500]".to_string())
    );
    let p = parse_answer(&s[0].turns[0].1);
    assert!(p.instances.iter().all(|i| i.label.as_deref() == Some("dog")));
    assert!(s.iter().all(|x| x.task == TaskKind::Vg));
}

#[test]
fn vg_bad_records() {
    let img = images();
    let (s, skipped) = build(TaskKind::Vg, fx("vg_bad.jsonl"), img.path(), &[], &opts(80), 0);
    assert!(s.is_empty());
    assert_eq!(skipped.len(), 4);
    assert!(reason_for(&skipped, 1).starts_with("reserved text"));
    assert!(reason_for(&skipped, 2).starts_with("empty expression"));
    assert!(reason_for(&skipped, 3).starts_with("bad box"));
    assert!(reason_for(&skipped, 4).starts_with("not JSON"));
}

// ----------------------------------------------------------------------------------------------
// VISJ
// ----------------------------------------------------------------------------------------------

fn exemplar_box(s: &Sample) -> PixelBox {
    assert_eq!(s.regions.len(), 1);
    assert_eq!(s.turns[0].0.matches("<region>").count(), 1);
    match &s.regions[0] {
        Exemplar::BoxOnImage(b) => *b,
        other => panic!("expected a box on the main image, got {other:?}"),
    }
}

#[test]
fn visj_jsonl_fixture() {
    let img = images();
    let mut seen_exemplars = HashSet::new();
    let mut seen_answers = HashSet::new();
    for seed in 0..30 {
        let (s, skipped) = build(TaskKind::Visj, fx("visj.jsonl"), img.path(), &[], &opts(80), seed);
        assert_eq!(s.len(), 2);
        assert_eq!(skipped.len(), 1);
        assert!(reason_for(&skipped, 3).starts_with("no boxes"));
        for x in &s {
            assert_eq!(x.task, TaskKind::Visj);
            assert_eq!(x.turns[0].0, COUNT_PROMPT);
        }
        // Line 1: one category; exemplar is one of its boxes; answer all boxes, sorted, nameless.
        assert_eq!(s[0].turns[0].1, "[0.050,0.100,0.100,0.200]&[0.250,0.050,0.300,0.150]&[0.500,0.500,0.550,0.600]");
        let e = exemplar_box(&s[0]);
        let apples = [[100.0, 50.0, 110.0, 60.0], [10.0, 10.0, 20.0, 20.0], [50.0, 5.0, 60.0, 15.0]];
        assert!(apples.contains(&e.as_array()), "{e:?}");
        seen_exemplars.insert(format!("{e:?}"));
        // Line 2: a random category; the answer holds that category's boxes and the exemplar is one of them.
        let e2 = exemplar_box(&s[1]);
        let a2 = s[1].turns[0].1.clone();
        if a2 == "[0.000,0.000,0.100,0.100]" {
            assert_eq!(e2.as_array(), [0.0, 0.0, 30.0, 30.0]);
        } else {
            assert_eq!(a2, "[0.333,0.333,0.433,0.433]&[0.667,0.667,0.767,0.767]");
            assert!([[200.0, 200.0, 230.0, 230.0], [100.0, 100.0, 130.0, 130.0]].contains(&e2.as_array()));
        }
        seen_answers.insert(a2);
    }
    assert_eq!(seen_exemplars.len(), 3, "the exemplar is drawn with the rng");
    assert_eq!(seen_answers.len(), 2, "the category is drawn with the rng");
}

#[test]
fn visj_coco_with_count_file() {
    let img = images();
    let (s, skipped) = build(TaskKind::Visj, fx("instances_visj.json"), img.path(), &[], &opts(80), 0);
    assert_eq!(s.len(), 1, "{skipped:?}");
    let name = fx("instances_visj.json").display().to_string();
    assert_eq!(s[0].source, format!("{name}:image_id=1"));
    assert_eq!(s[0].image, img.path().join("a.png"));
    // Exemplar from count_visj.json (x,y,w,h -> xyxy), answer all non-crowd boxes.
    assert_eq!(exemplar_box(&s[0]), PixelBox::new(100.0, 50.0, 110.0, 60.0));
    assert_eq!(s[0].turns[0].1, "[0.050,0.100,0.100,0.200]&[0.500,0.500,0.550,0.600]");
    let mut sk = skipped.clone();
    sk.sort_by(|a, b| a.source.cmp(&b.source));
    assert_eq!(sk.len(), 2);
    assert_eq!(sk[0].source, format!("{name}:image_id=2"));
    assert!(sk[0].reason.starts_with("no exemplar"));
    assert_eq!(sk[1].source, format!("{name}:image_id=3"));
    assert!(sk[1].reason.starts_with("no annotations"));
}

#[test]
fn visj_coco_without_count_file_picks_a_category() {
    let img = images();
    let mut answers = HashSet::new();
    for seed in 0..20 {
        let (s, skipped) = build(TaskKind::Visj, fx("visj_coco_plain.json"), img.path(), &[], &opts(80), seed);
        assert!(skipped.is_empty());
        assert_eq!(s.len(), 1);
        let e = exemplar_box(&s[0]).as_array();
        let a = s[0].turns[0].1.clone();
        match a.as_str() {
            "[0.000,0.000,0.100,0.100]" => assert_eq!(e, [0.0, 0.0, 30.0, 30.0]),
            "[0.333,0.333,0.433,0.433]&[0.667,0.667,0.767,0.767]" => {
                assert!(e == [100.0, 100.0, 130.0, 130.0] || e == [200.0, 200.0, 230.0, 230.0])
            }
            other => panic!("unexpected answer {other}"),
        }
        answers.insert(a);
    }
    assert_eq!(answers.len(), 2);
}

/// Annotations of an image the file does not list, and a repeated image id, are reported as
/// skipped (they were dropped silently / trained twice).
#[test]
fn visj_coco_reports_orphan_annotations_and_repeated_images() {
    let img = images();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("visj_orphans.json");
    let doc = serde_json::json!({
        "images": [{"id": 7, "file_name": "b.png", "height": 300, "width": 300},
                   {"id": 7, "file_name": "c.png", "height": 300, "width": 300},
                   {"id": 7, "file_name": "d.png", "height": 300, "width": 300},
                   {"id": 8, "file_name": "d.png", "height": "tall", "width": 300}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [0, 0, 30, 30]},
                        {"id": 2, "image_id": 9, "category_id": 1, "bbox": [10, 10, 30, 30]},
                        {"id": 3, "image_id": 8, "category_id": 1, "bbox": [10, 10, 30, 30]}],
        "categories": [{"id": 1, "name": "egg"}]
    });
    std::fs::write(&f, doc.to_string()).unwrap();
    let (s, skipped) = build(TaskKind::Visj, f.clone(), img.path(), &[], &opts(80), 0);
    assert_eq!(s.len(), 1, "{skipped:?}");
    let name = f.display().to_string();
    let reasons: Vec<(String, String)> = skipped.iter().map(|k| (k.source.clone(), k.reason.clone())).collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    for k in [1, 2] {
        let want = format!("images[{k}] repeats the id of images[0]");
        assert!(
            reasons.iter().any(|(src, r)| *src == format!("{name}:image_id=7") && r.contains(&want)),
            "{reasons:?}"
        );
    }
    // the broken entry is reported once, by its index; its annotations are not "unlisted"
    assert!(reasons.iter().any(|(src, _)| *src == format!("{name}:images[3]")), "{reasons:?}");
    assert!(!reasons.iter().any(|(src, _)| *src == format!("{name}:image_id=8")), "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|(src, r)| *src == format!("{name}:image_id=9")
                && r.starts_with("no image: annotations for image_id 9")),
        "{reasons:?}"
    );
}

#[test]
fn raw_fsc147_is_refused_clearly() {
    let img = images();
    let mut rng = StdRng::seed_from_u64(0);
    let e = build_source(&src(TaskKind::Visj, fx("fsc147.json"), img.path()), &[], &opts(80), &mut rng).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("FSC-147") && msg.contains("points"), "{msg}");
}

// ----------------------------------------------------------------------------------------------
// LAZY
// ----------------------------------------------------------------------------------------------

#[test]
fn lazy_json_list() {
    let img = images();
    let (s, skipped) = build(TaskKind::Lazy, fx("lazy.json"), img.path(), &[], &opts(80), 0);
    assert_eq!(s.len(), 2, "{skipped:#?}");
    assert_eq!(s[0].image, img.path().join("a.png"));
    assert_eq!(
        s[0].turns,
        vec![
            ("What is this?".to_string(), "A dog.".to_string()),
            ("What color is it?".to_string(), "Brown.".to_string())
        ]
    );
    assert_eq!(s[1].turns, vec![("Describe it briefly.".to_string(), "A man standing.".to_string())]);
    assert!(s.iter().all(|x| x.task == TaskKind::Lazy && x.regions.is_empty()));
    let name = fx("lazy.json").display().to_string();
    assert_eq!(s[1].source, format!("{name}:[1]"));

    let by_index = |i: usize| -> &str {
        let want = format!("{name}:[{i}]");
        &skipped.iter().find(|k| k.source == want).unwrap_or_else(|| panic!("no skip for {want}: {skipped:#?}")).reason
    };
    assert_eq!(skipped.len(), 7);
    assert!(by_index(2).starts_with("no image"));
    assert!(by_index(3).starts_with("empty answer"));
    assert!(by_index(4).contains("no answer"));
    assert!(by_index(5).contains("alternate"));
    assert!(by_index(6).starts_with("missing image"));
    assert!(by_index(7).starts_with("bad record: missing field `conversations`"));
    assert!(by_index(8).contains("<region>"));
}

#[test]
fn lazy_jsonl_caption_pairs() {
    let img = images();
    let (s, skipped) = build(TaskKind::Lazy, fx("lazy.jsonl"), img.path(), &[], &opts(80), 0);
    assert_eq!(s.len(), 1);
    assert_eq!(
        s[0].turns,
        vec![("Render a clear and concise summary of the photo.".to_string(), "a horse in a field".to_string())]
    );
    assert_eq!(s[0].image, img.path().join("c.png"));
    assert_eq!(skipped.len(), 1);
    assert!(reason_for(&skipped, 2).starts_with("not JSON"));
}

// ----------------------------------------------------------------------------------------------
// Whole-file errors
// ----------------------------------------------------------------------------------------------

#[test]
fn whole_file_errors() {
    let img = images();
    let mut rng = StdRng::seed_from_u64(0);
    let o = opts(80);
    // Missing file.
    let e =
        build_source(&src(TaskKind::Det, img.path().join("nope.jsonl"), img.path()), &[], &o, &mut rng).unwrap_err();
    assert!(matches!(e, DataError::Io { .. }), "{e}");
    // A COCO json given as DET.
    let e = build_source(&src(TaskKind::Det, fx("coco_instances.json"), img.path()), &[], &o, &mut rng).unwrap_err();
    assert!(e.to_string().contains("coco_to_det_jsonl"), "{e}");
    // A broken JSON list given as LAZY.
    let broken = img.path().join("broken.json");
    std::fs::write(&broken, "[{\"image\": \"a.png\",\n").unwrap();
    let e = build_source(&src(TaskKind::Lazy, broken, img.path()), &[], &o, &mut rng).unwrap_err();
    assert!(matches!(e, DataError::Malformed { .. }), "{e}");
    // A COCO json with a broken category table.
    let bad_coco = img.path().join("bad_coco.json");
    std::fs::write(&bad_coco, json!({"images": [], "annotations": [], "categories": [{"id": 1}]}).to_string()).unwrap();
    let e = build_source(&src(TaskKind::Visj, bad_coco, img.path()), &[], &o, &mut rng).unwrap_err();
    assert!(e.to_string().contains("categories[0]"), "{e}");
}

// ----------------------------------------------------------------------------------------------
// Task list
// ----------------------------------------------------------------------------------------------

#[test]
fn task_list_fixture() {
    let list = read_task_list(&fx("tasks.txt")).unwrap();
    let d = fixtures();
    let want = vec![
        TaskSource { kind: TaskKind::Det, annotations: d.join("det.jsonl"), images: d.join("images") },
        TaskSource { kind: TaskKind::Det, annotations: d.join("det_b.jsonl"), images: d.join("images/other") },
        TaskSource { kind: TaskKind::Reg, annotations: d.join("reg.jsonl"), images: d.join("images") },
        TaskSource { kind: TaskKind::Vg, annotations: d.join("vg.jsonl"), images: d.join("images") },
        TaskSource { kind: TaskKind::Visj, annotations: d.join("visj.jsonl"), images: d.join("images") },
        TaskSource {
            kind: TaskKind::Lazy,
            annotations: d.join("lazy.json"),
            images: PathBuf::from("/abs/llava/images"),
        },
        TaskSource { kind: TaskKind::Det, annotations: d.join("det_b.jsonl"), images: d.join("images") },
    ];
    assert_eq!(list, want);
}

#[test]
fn task_list_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let sources = vec![
        TaskSource { kind: TaskKind::Lazy, annotations: dir.path().join("llava.json"), images: dir.path().join("img") },
        TaskSource {
            kind: TaskKind::Det,
            annotations: dir.path().join("d/coco.jsonl"),
            images: PathBuf::from("/data/coco/train2017"),
        },
        TaskSource {
            kind: TaskKind::Det,
            annotations: dir.path().join("o365.jsonl"),
            images: dir.path().to_path_buf(),
        },
        TaskSource { kind: TaskKind::Reg, annotations: dir.path().join("reg.jsonl"), images: dir.path().join("img") },
        TaskSource { kind: TaskKind::Vg, annotations: dir.path().join("vg.jsonl"), images: dir.path().join("img") },
        TaskSource {
            kind: TaskKind::Visj,
            annotations: PathBuf::from("/elsewhere/count.jsonl"),
            images: dir.path().join("img"),
        },
    ];
    let path = dir.path().join("tasks.txt");
    write_task_list(&path, &sources).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("DET_0 & d/coco.jsonl & /data/coco/train2017\n"), "{text}");
    assert!(text.contains("DET_1 & o365.jsonl & .\n"), "{text}");
    assert!(text.contains("VISJ_0 & /elsewhere/count.jsonl & img\n"), "{text}");
    assert_eq!(read_task_list(&path).unwrap(), sources);

    // Paths a task list cannot hold are refused.
    let bad = vec![TaskSource {
        kind: TaskKind::Det,
        annotations: dir.path().join("a&b.jsonl"),
        images: dir.path().join("img"),
    }];
    assert!(matches!(write_task_list(&dir.path().join("bad.txt"), &bad), Err(DataError::Write { .. })));
}

#[test]
fn task_list_bad_lines_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("# c\nDET_0 & a.jsonl\n", 2, "3 fields"),
        ("DET_0 & a.jsonl & img\n\nFOO_1 & b.jsonl & img\n", 3, "unknown task"),
        ("DET_0 & a.jsonl & img\nDET_0 & b.jsonl & img\n", 2, "already used on line 1"),
        ("REG_0 &  & img\n", 1, "empty annotation path"),
        ("VG_0 & a.jsonl & \n", 1, "empty image folder"),
        ("det_0 & a.jsonl & img\n", 1, "unknown task"),
        ("DET_ & a.jsonl & img\n", 1, "empty suffix"),
        ("DET_0 & a.jsonl & img & extra\n", 1, "3 fields"),
    ];
    for (text, line, needle) in cases {
        let p = dir.path().join("t.txt");
        std::fs::write(&p, text).unwrap();
        match read_task_list(&p) {
            Err(DataError::TaskList { line: l, message, .. }) => {
                assert_eq!(l, line, "{text:?}: {message}");
                assert!(message.contains(needle), "{text:?}: {message}");
            }
            other => panic!("{text:?}: expected a task-list error, got {other:?}"),
        }
    }
    assert!(matches!(read_task_list(&dir.path().join("absent.txt")), Err(DataError::Io { .. })));
}

// ----------------------------------------------------------------------------------------------
// COCO -> DET, writers, round trips
// ----------------------------------------------------------------------------------------------

#[test]
fn coco_to_det_conversion() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("coco_det.jsonl");
    let n = coco_to_det_jsonl(&fx("coco_instances.json"), &out).unwrap();
    assert_eq!(n, 2, "image 2 has only a crowd box, image 3 nothing");
    let (recs, bad) = read_det_jsonl(&out).unwrap();
    assert!(bad.is_empty());
    let mut a = DetRecord::new(
        "a.png",
        200,
        100,
        vec![
            DetObject::new("dog", vec![[10.0, 20.0, 40.0, 60.0], [50.0, 50.0, 60.0, 60.0]]),
            DetObject::new("cat", vec![[0.0, 0.0, 5.0, 5.0]]),
        ],
    );
    a.dataset_name = Some("COCO".into());
    let mut d = DetRecord::new("d.png", 80, 40, vec![DetObject::new("cat", vec![[8.0, 4.0, 24.0, 12.0]])]);
    d.dataset_name = Some("COCO".into());
    assert_eq!(recs, vec![a, d]);
    // The reference field layout, one object per line.
    let first = std::fs::read_to_string(&out).unwrap().lines().next().unwrap().to_string();
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(v["objects"][0]["bboxes"][1], json!([50.0, 50.0, 60.0, 60.0]));
    assert_eq!(v["height"], json!(100));

    // The converted file builds.
    let img = images();
    let (s, sk) = build(TaskKind::Det, out, img.path(), &names(&["cat", "dog", "person"]), &opts(80), 0);
    assert!(sk.is_empty());
    assert_eq!(
        s[0].turns[0].1,
        "cat-[0.000,0.000,0.025,0.050]&dog-[0.050,0.200,0.200,0.600]&dog-[0.250,0.500,0.300,0.600]"
    );

    // Malformed entries are errors naming the entry.
    let bad = dir.path().join("bad.json");
    let base = |anns: serde_json::Value| json!({"images": [{"id": 1, "file_name": "a.png", "height": 10, "width": 10}], "annotations": anns, "categories": [{"id": 1, "name": "x"}]});
    for (anns, needle) in [
        (json!([{"image_id": 9, "category_id": 1, "bbox": [0, 0, 1, 1]}]), "unknown image_id 9"),
        (json!([{"image_id": 1, "category_id": 4, "bbox": [0, 0, 1, 1]}]), "unknown category_id 4"),
        (json!([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1]}]), "annotations[0]: bbox"),
        (json!([{"category_id": 1, "bbox": [0, 0, 1, 1]}]), "annotations[0]"),
    ] {
        std::fs::write(&bad, base(anns).to_string()).unwrap();
        let e = coco_to_det_jsonl(&bad, &dir.path().join("x.jsonl")).unwrap_err();
        assert!(e.to_string().contains(needle), "{e} / {needle}");
    }
}

#[test]
fn write_read_round_trips_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    // DET with unknown keys at both levels and awkward floats.
    let mut obj = DetObject::new("traffic light", vec![[0.1 + 0.2, 1.0 / 3.0, 100.0, 1e-7 + 50.0]]);
    obj.extra.insert("category_id".into(), json!(10));
    let mut rec = DetRecord::new("x/y.jpg", 640, 480, vec![obj, DetObject::new("zebra", vec![])]);
    rec.dataset_name = Some("OBJ365".into());
    rec.extra.insert("note".into(), json!({"k": [1, 2]}));
    let recs = vec![rec, DetRecord::new("z.png", 1, 2, vec![DetObject::new("a", vec![[0.0, 0.0, 1.0, 2.0]])])];
    let p = dir.path().join("det.jsonl");
    write_det_jsonl(&p, &recs).unwrap();
    let (back, bad) = read_det_jsonl(&p).unwrap();
    assert!(bad.is_empty());
    assert_eq!(back, recs);

    // VG / REG with discrete_ids and extras.
    let mut g =
        GroundRecord::new("a.jpg", 200, 100, "the man-in-black", vec![[1.5, 2.0, 3.0, 4.25], [5.0, 6.0, 7.0, 8.0]]);
    g.discrete_ids = Some(json!([[1, 2], [3]]));
    g.extra.insert("id".into(), json!("r1"));
    let ground = vec![g, GroundRecord::new("b.jpg", 3, 3, "nothing", vec![])];
    for write in [write_vg_jsonl, write_reg_jsonl] {
        let p = dir.path().join("g.jsonl");
        write(&p, &ground).unwrap();
        let (back, bad) = read_ground_jsonl(&p).unwrap();
        assert!(bad.is_empty());
        assert_eq!(back, ground);
    }

    // LLaVA.
    let mut l = LazyRecord::new(Some("a.png".into()), &[("human", "<image>\nHi"), ("gpt", "Hello")]);
    l.extra.insert("id".into(), json!("000001"));
    let lazy = vec![l, LazyRecord::new(None, &[("human", "text only"), ("gpt", "ok")])];
    let p = dir.path().join("lazy.json");
    write_lazy_json(&p, &lazy).unwrap();
    let (back, bad) = read_lazy_records(&p).unwrap();
    assert!(bad.is_empty());
    assert_eq!(back, lazy);

    // JSON cannot hold a NaN: the writer refuses instead of writing null.
    let nan = vec![DetRecord::new("a.png", 10, 10, vec![DetObject::new("a", vec![[f64::NAN, 0.0, 1.0, 1.0]])])];
    assert!(matches!(write_det_jsonl(&dir.path().join("nan.jsonl"), &nan), Err(DataError::Write { .. })));
    let inf = vec![GroundRecord::new("a.png", 10, 10, "a", vec![[0.0, 0.0, f64::INFINITY, 1.0]])];
    assert!(matches!(write_vg_jsonl(&dir.path().join("inf.jsonl"), &inf), Err(DataError::Write { .. })));
}

#[test]
fn sample_serde_round_trip() {
    let img = images();
    let (s, _) = build(TaskKind::Visj, fx("visj.jsonl"), img.path(), &[], &opts(80), 0);
    let text = serde_json::to_string(&s).unwrap();
    let back: Vec<Sample> = serde_json::from_str(&text).unwrap();
    assert_eq!(back, s);
}

// ----------------------------------------------------------------------------------------------
// build_all
// ----------------------------------------------------------------------------------------------

#[test]
fn build_all_vocabulary_and_determinism() {
    let img = images();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("tasks.txt");
    let sources = vec![
        src(TaskKind::Det, fx("det.jsonl"), img.path()),
        src(TaskKind::Det, fx("det_b.jsonl"), img.path()),
        src(TaskKind::Reg, fx("reg.jsonl"), img.path()),
        src(TaskKind::Vg, fx("vg.jsonl"), img.path()),
        src(TaskKind::Visj, fx("visj.jsonl"), img.path()),
        src(TaskKind::Visj, fx("instances_visj.json"), img.path()),
        src(TaskKind::Lazy, fx("lazy.json"), img.path()),
        src(TaskKind::Lazy, fx("lazy.jsonl"), img.path()),
    ];
    write_task_list(&list, &sources).unwrap();
    let sources = read_task_list(&list).unwrap();
    let o = BuildOptions { seed: 42, ..opts(80) };
    let (s, skipped) = build_all(&sources, &o).unwrap();
    assert_eq!(s.len(), 3 + 1 + 4 + 3 + 2 + 1 + 2 + 1);
    assert_eq!(skipped.len(), 1 + 2 + 7 + 1);
    // The vocabulary spans both DET sources: `horse` (only in det_b) is offered to det.jsonl's
    // images and vice versa; sets are the whole sorted vocabulary under the cap.
    let vocab = names(&["bird", "cat", "dog", "horse", "person", "zebra"]);
    for x in s.iter().filter(|x| x.task == TaskKind::Det) {
        let mut set = category_set(&x.turns[0].0);
        set.sort();
        assert_eq!(set, vocab);
    }
    assert_eq!(
        det_categories(&fx("det.jsonl")).unwrap().into_iter().collect::<Vec<_>>(),
        names(&["bird", "cat", "dog", "person", "zebra"])
    );

    let (again, skipped_again) = build_all(&sources, &o).unwrap();
    assert_eq!(again, s);
    assert_eq!(skipped_again, skipped);
    let (other, _) = build_all(&sources, &BuildOptions { seed: 43, ..o.clone() }).unwrap();
    assert_ne!(other, s, "another seed shuffles differently");
    // A source's draws depend on the seed, its position and the vocabulary, not on the sources
    // after it.
    let (prefix, _) = build_all(&sources[..2], &o).unwrap();
    assert_eq!(prefix[..], s[..4]);
}

/// A record whose declared size is not its image's: the sample fails to load, naming both sizes
/// and the record (its boxes were normalised by the declared size), instead of training on
/// boxes in the wrong place.
#[test]
fn declared_size_is_checked_when_the_image_loads() {
    let img = images();
    let vocab = names(&["bird", "cat", "dog", "horse", "person", "zebra"]);
    let (s, _) = build(TaskKind::Det, fx("det.jsonl"), img.path(), &vocab, &opts(80), 1);
    assert_eq!(s[0].size, Some((200, 100)));
    let e = griffon_train::trainer::load_pixels(&s[0], None, 28, 28).unwrap_err();
    assert!(e.contains("a.png: the image is 3x2 but its record") && e.contains("declares 200x100"), "{e}");
    let fits = griffon_train::data::Sample { size: Some((3, 2)), ..s[0].clone() };
    let (px, _) = griffon_train::trainer::load_pixels(&fits, None, 28, 28).unwrap();
    assert_eq!(px.dims(), &[3, 28, 28]);
}

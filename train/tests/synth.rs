//! The synthetic benchmark: deterministic, every annotation format readable by our own readers,
//! many tiny objects at 1022 px, referring expressions that pick out one object.

use griffon_train::data::{build_all, read_task_list, BuildOptions};
use griffon_train::synth::{generate, scene, SynthOptions};
use std::collections::HashMap;

#[test]
fn deterministic_from_the_seed() {
    let (a, oa) = scene(7, 3, 128, 12);
    let (b, ob) = scene(7, 3, 128, 12);
    let (c, _) = scene(8, 3, 128, 12);
    assert_eq!(a.as_raw(), b.as_raw());
    assert_eq!(oa, ob);
    assert_ne!(a.as_raw(), c.as_raw());
}

#[test]
fn high_resolution_scenes_have_many_tiny_objects() {
    let mut tiny = 0;
    let mut all = 0;
    for k in 0..4 {
        let (img, objs) = scene(1, k, 1022, 20);
        assert_eq!(img.dimensions(), (1022, 1022));
        for o in &objs {
            assert!(o.bbox[2] <= 1022 && o.bbox[3] <= 1022 && o.bbox[0] < o.bbox[2]);
            all += 1;
            tiny += usize::from(o.bbox[2] - o.bbox[0] <= 16);
        }
    }
    assert!(all > 0 && tiny * 5 >= all, "{tiny} of {all} objects are 16 px or less");
}

#[test]
fn every_format_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("synth");
    let summary = generate(&SynthOptions {
        out: out.clone(),
        n: 10,
        seed: 5,
        size: 192,
        max_objects: 8,
        object_scale: 1.0,
        only_split: None,
    })
    .unwrap();
    assert_eq!(summary["train"].images + summary["val"].images + summary["test"].images, 10);
    // training data through the released task-list format
    let sources = read_task_list(&out.join("train/tasks.txt")).unwrap();
    let (samples, skipped) = build_all(&sources, &BuildOptions::default()).unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    assert!(samples.len() >= 8 * 3, "{} samples", samples.len());
    // evaluation data through the eval readers
    let img = out.join("images/test");
    let d = out.join("test");
    assert_eq!(griffon_eval::datasets::coco(&d.join("instances.json"), &img).unwrap().len(), summary["test"].images);
    assert!(!griffon_eval::datasets::refcoco(&d.join("refcoco.jsonl"), &img).unwrap().is_empty());
    assert!(!griffon_eval::datasets::reg(&d.join("reg_eval.jsonl"), &img).unwrap().is_empty());
    assert!(!griffon_eval::datasets::count(&d.join("count.jsonl"), &img, None).unwrap().is_empty());
    // count_any.jsonl: one line per class of each scene, the class's boxes matching the instances
    let any = griffon_eval::datasets::count(&d.join("count_any.jsonl"), &img, None).unwrap();
    let inst: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("instances.json")).unwrap()).unwrap();
    let n_inst = inst["annotations"].as_array().unwrap().len();
    let mut n_boxes = 0;
    for it in &any {
        match (&it.truth, &it.request.task) {
            (
                griffon_eval::datasets::Truth::Count { count, boxes: Some(b) },
                griffon_core::request::Task::Count { exemplar: griffon_core::request::Exemplar::BoxOnImage(e) },
            ) => {
                assert_eq!(*count as usize, b.len());
                assert_eq!(b[0], e.as_array(), "the exemplar is the class's first instance");
                n_boxes += b.len();
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(n_boxes, n_inst, "every object belongs to exactly one class line");
    assert!(any.len() > griffon_eval::datasets::count(&d.join("count.jsonl"), &img, None).unwrap().len());
    let fl =
        griffon_eval::datasets::flickr(&d.join("Sentences"), &d.join("Annotations"), &img, Some(&d.join("ids.txt")))
            .unwrap();
    assert!(fl.iter().all(|it| it.request.image.is_file()));
    // a referring expression names one object: no expression with two different boxes in an image
    let text = std::fs::read_to_string(out.join("train/vg.jsonl")).unwrap();
    let mut seen: HashMap<(String, String), String> = HashMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let key = (v["image_path"].to_string(), v["expression"].to_string());
        let b = v["bboxes"].to_string();
        if let Some(prev) = seen.insert(key.clone(), b.clone()) {
            assert_eq!(prev, b, "{key:?} refers to two objects");
        }
    }
}

/// The on-the-fly stream renders the same scenes and builds the same records as the files
/// `griffon synth` writes for that seed, and its answers hold exactly the annotated boxes.
#[test]
fn stream_matches_the_written_benchmark() {
    use griffon_core::answer::parse_answer;
    use griffon_train::data::{read_det_jsonl, TaskKind};
    use griffon_train::synth::{scene_annotations, SynthStream};
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("synth");
    generate(&SynthOptions {
        out: out.clone(),
        n: 10,
        seed: 3,
        size: 160,
        max_objects: 8,
        object_scale: 1.0,
        only_split: None,
    })
    .unwrap();
    let (det, _) = read_det_jsonl(&out.join("train/det.jsonl")).unwrap();
    let opts = BuildOptions { max_categories: 6, ..BuildOptions::default() };
    let stream = SynthStream::new(3, 160, 8, vec![(TaskKind::Det, 1.0)], opts.clone()).unwrap();
    for (k, rec) in det.iter().enumerate() {
        let (s, img, _) = stream.sample(k).unwrap();
        let written = image::open(out.join(format!("images/train/{k:06}.png"))).unwrap().to_rgb8();
        assert_eq!(img.as_raw(), written.as_raw(), "scene {k} image");
        let (_, objs) = scene(3, k, 160, 8);
        let ann = scene_annotations(3, k, &objs, 160, &rec.image_path);
        assert_eq!(&ann.det, rec, "scene {k} DET record");
        assert_eq!(s.task, TaskKind::Det);
        let want: usize = rec.objects.iter().map(|o| o.bboxes.len()).sum();
        let got = parse_answer(&s.turns[0].1);
        assert_eq!(got.instances.len(), want, "scene {k}: {}", s.turns[0].1);
    }
    // every task of the mix shows up and builds
    let mixed = SynthStream::new(
        4,
        96,
        6,
        vec![(TaskKind::Det, 1.0), (TaskKind::Vg, 1.0), (TaskKind::Reg, 1.0), (TaskKind::Visj, 1.0)],
        opts,
    )
    .unwrap();
    let kinds: std::collections::HashSet<TaskKind> = (0..40).map(|k| mixed.sample(k).unwrap().0.task).collect();
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    assert!(SynthStream::new(4, 96, 6, vec![(TaskKind::Lazy, 1.0)], BuildOptions::default()).is_err());
    assert!(SynthStream::new(4, 96, 6, vec![(TaskKind::Det, 0.0)], BuildOptions::default()).is_err());
}

/// Region naming (a visual prompt answered with the object's name) and the share of counting
/// samples on a random class: the naming samples name the object under the exemplar box, the
/// other samples are those of the stream without naming, and the default share leaves the stream
/// as it was.
#[test]
fn stream_region_naming_and_visj_share() {
    use griffon_core::request::{reg_region_prompt, Exemplar};
    use griffon_train::data::TaskKind;
    use griffon_train::synth::SynthStream;
    let mix = vec![(TaskKind::Det, 1.0), (TaskKind::Vg, 1.0), (TaskKind::Reg, 1.0), (TaskKind::Visj, 1.0)];
    let plain = SynthStream::new(5, 96, 4, mix.clone(), BuildOptions::default()).unwrap();
    let named =
        SynthStream::new(5, 96, 4, mix.clone(), BuildOptions::default()).unwrap().with_region_naming(0.5).unwrap();
    let (mut n_named, mut n_other) = (0, 0);
    for k in 0..60 {
        let (a, _, objs) = plain.sample(k).unwrap();
        let (b, _, _) = named.sample(k).unwrap();
        if b.turns[0].0 == reg_region_prompt() {
            n_named += 1;
            assert_eq!(b.task, TaskKind::Reg);
            assert_eq!(b.regions.len(), 1);
            let Exemplar::BoxOnImage(e) = &b.regions[0] else { panic!("{:?}", b.regions) };
            // the answer names an object whose box is the exemplar
            let hit = objs.iter().any(|p| {
                let (f, n) = (p.bbox.map(|v| v as f64), format!("the {}", p.name()));
                e.as_array() == f && b.turns[0].1 == n
            });
            assert!(hit, "scene {k}: {:?} -> {:?}", e, b.turns[0].1);
        } else {
            n_other += 1;
            assert_eq!(a, b, "scene {k}: a sample without naming changed");
        }
    }
    assert!(n_named > 15 && n_other > 15, "{n_named} named, {n_other} other");
    // visj_random 0: every counting sample counts the scene's most frequent class; 1: a random
    // class, so some answers hold fewer boxes than the most frequent class has
    let visj = vec![(TaskKind::Visj, 1.0)];
    let share =
        |p: f64| SynthStream::new(6, 96, 12, visj.clone(), BuildOptions::default()).unwrap().with_visj_random(p);
    let (most, random) = (share(0.0).unwrap(), share(1.0).unwrap());
    let mut fewer = 0;
    for k in 0..60 {
        let (a, _, objs) = most.sample(k).unwrap();
        let max = objs.iter().map(|p| objs.iter().filter(|q| (q.shape, q.colour) == (p.shape, p.colour)).count()).max();
        let boxes = |s: &griffon_train::data::Sample| griffon_core::answer::parse_answer(&s.turns[0].1).instances.len();
        assert_eq!(Some(boxes(&a)), max, "scene {k}: {}", a.turns[0].1);
        let (b, _, _) = random.sample(k).unwrap();
        assert!(Some(boxes(&b)) <= max, "scene {k}");
        fewer += (Some(boxes(&b)) < max) as usize;
    }
    assert!(fewer >= 5, "only {fewer} of 60 random-class samples count fewer than the most frequent class");
    assert!(plain.clone().with_region_naming(1.0).is_err() && plain.clone().with_visj_random(-0.1).is_err());
}

/// `rec_not_largest`: at 1, every REC sample of a scene with a referable object other than its
/// largest refers to one of those; the other samples are those of the stream without it, and
/// at 0 the stream is unchanged.
#[test]
fn stream_rec_not_largest() {
    use griffon_train::data::TaskKind;
    use griffon_train::synth::SynthStream;
    let mix = vec![(TaskKind::Det, 1.0), (TaskKind::Vg, 2.0), (TaskKind::Reg, 1.0)];
    let stream =
        |p: f64| SynthStream::new(7, 96, 3, mix.clone(), BuildOptions::default()).unwrap().with_rec_not_largest(p);
    let (plain, zero, away) = (stream(0.0).unwrap(), stream(0.0).unwrap(), stream(1.0).unwrap());
    let (mut moved, mut on_largest_before, mut rec) = (0, 0, 0);
    for k in 0..120 {
        let (a, _, objs) = plain.sample(k).unwrap();
        assert_eq!(a, zero.sample(k).unwrap().0, "scene {k}: a share of 0 changed the stream");
        let (b, _, _) = away.sample(k).unwrap();
        if a.task != TaskKind::Vg || objs.len() < 2 {
            assert_eq!(a, b, "scene {k}: a sample other than REC in a scene of several objects changed");
            continue;
        }
        rec += 1;
        let area = |o: &griffon_train::synth::Object| (o.bbox[2] - o.bbox[0]) * (o.bbox[3] - o.bbox[1]);
        let largest = objs.iter().rev().max_by_key(|o| area(o)).unwrap();
        let target = |s: &griffon_train::data::Sample| {
            let found = griffon_core::answer::parse_answer(&s.turns[0].1).instances;
            assert_eq!(found.len(), 1, "scene {k}: {:?}", s.turns[0].1);
            found[0].norm
        };
        // boxes in the answer are normalised: compare with the largest object's box the same way
        let norm = |o: &griffon_train::synth::Object| o.bbox.map(|v| v as f64 / 96.0);
        let is_largest = |s: &griffon_train::data::Sample| {
            let t = target(s).as_array();
            t.iter().zip(norm(largest)).all(|(x, y)| (x - y).abs() < 0.006)
        };
        on_largest_before += is_largest(&a) as usize;
        if is_largest(&b) {
            // only when no other object has a unique expression
            let others = objs
                .iter()
                .enumerate()
                .filter(|(i, o)| !std::ptr::eq(*o, largest) && griffon_train::synth::refer(&objs, *i, 96).is_some());
            assert_eq!(others.count(), 0, "scene {k}: REC still refers to the largest object: {:?}", b.turns[0].1);
        }
        moved += (a != b) as usize;
    }
    assert!(
        rec >= 30 && on_largest_before >= 8 && moved >= on_largest_before / 2,
        "{rec} REC, {on_largest_before} on the largest, {moved} moved"
    );
    assert!(stream(1.5).is_err() && stream(-0.1).is_err());
}

/// `rec_turns`: REC samples ask for the scene's other referable objects in later turns (the
/// one-turn sample's question first, each object once, every turn a REC question); the other
/// samples are those of the stream without it, and at 1 the stream is unchanged.
#[test]
fn stream_rec_turns() {
    use griffon_train::data::TaskKind;
    use griffon_train::synth::SynthStream;
    let mix = vec![(TaskKind::Det, 1.0), (TaskKind::Vg, 2.0), (TaskKind::Reg, 1.0)];
    let stream = |n: usize| SynthStream::new(7, 96, 3, mix.clone(), BuildOptions::default()).unwrap().with_rec_turns(n);
    let (plain, one, three) = (
        stream(1).unwrap(),
        SynthStream::new(7, 96, 3, mix.clone(), BuildOptions::default()).unwrap(),
        stream(3).unwrap(),
    );
    let (mut multi, mut rec) = (0, 0);
    for k in 0..120 {
        let (a, _, objs) = plain.sample(k).unwrap();
        assert_eq!(a, one.sample(k).unwrap().0, "scene {k}: rec_turns = 1 changed the stream");
        let (b, _, _) = three.sample(k).unwrap();
        if a.task != TaskKind::Vg {
            assert_eq!(a, b, "scene {k}: a sample other than REC changed");
            continue;
        }
        rec += 1;
        assert_eq!(a.turns[0], b.turns[0], "scene {k}: the first turn changed");
        let referable = (0..objs.len()).filter(|&i| griffon_train::synth::refer(&objs, i, 96).is_some()).count();
        assert_eq!(b.turns.len(), referable.min(3), "scene {k}: {:?}", b.turns);
        let mut answers: Vec<&String> = b.turns.iter().map(|(_, ans)| ans).collect();
        for (q, ans) in &b.turns {
            let expr = ans.split("-[").next().unwrap();
            assert_eq!(q, &griffon_core::request::rec_prompt(expr), "scene {k}");
            assert_eq!(griffon_core::answer::parse_answer(ans).instances.len(), 1, "scene {k}: {ans}");
        }
        answers.sort();
        answers.dedup();
        assert_eq!(answers.len(), b.turns.len(), "scene {k}: an object asked for twice: {:?}", b.turns);
        multi += (b.turns.len() > 1) as usize;
    }
    assert!(rec >= 30 && multi >= 10, "{rec} REC samples, {multi} with several turns");
    assert!(stream(0).is_err());
    // fewer turns than referable objects: the first `n` of them
    let crowd = |n: usize| SynthStream::new(7, 96, 6, mix.clone(), BuildOptions::default()).unwrap().with_rec_turns(n);
    let (three, two) = (crowd(3).unwrap(), crowd(2).unwrap());
    let mut cut = 0;
    for k in 0..120 {
        let (a, _, objs) = three.sample(k).unwrap();
        if a.task != TaskKind::Vg {
            continue;
        }
        let b = two.sample(k).unwrap().0;
        let referable = (0..objs.len()).filter(|&i| griffon_train::synth::refer(&objs, i, 96).is_some()).count();
        assert_eq!(b.turns.len(), referable.min(2), "scene {k}: {:?}", b.turns);
        assert_eq!(b.turns[..], a.turns[..b.turns.len()], "scene {k}: two turns are not the first two of three");
        cut += (a.turns.len() == 3) as usize;
    }
    assert!(cut >= 5, "only {cut} samples with three referable objects");
}

/// `det_subsets`: at 1, every detection prompt lists fewer than the six shapes, and its answer
/// holds every object of the listed shapes and nothing else; the other samples are those of the
/// stream without it, and at 0 every detection prompt lists all six.
#[test]
fn stream_det_subsets() {
    use griffon_train::data::TaskKind;
    use griffon_train::synth::{SynthStream, SHAPES};
    let mix = vec![(TaskKind::Det, 2.0), (TaskKind::Vg, 1.0), (TaskKind::Reg, 1.0)];
    let stream = |p: f64| SynthStream::new(7, 96, 6, mix.clone(), BuildOptions::default()).unwrap().with_det_subsets(p);
    let (plain, zero, subsets) = (
        SynthStream::new(7, 96, 6, mix.clone(), BuildOptions::default()).unwrap(),
        stream(0.0).unwrap(),
        stream(1.0).unwrap(),
    );
    let listed = |s: &griffon_train::data::Sample| -> Vec<String> {
        let q = &s.turns[0].0;
        let list = q.split("The category set includes ").nth(1).unwrap().split('.').next().unwrap();
        list.split(", ").map(str::to_string).collect()
    };
    let (mut det, mut sizes, mut chunked) = (0, std::collections::BTreeSet::new(), 0);
    for k in 0..160 {
        let (a, _, objs) = plain.sample(k).unwrap();
        assert_eq!(a, zero.sample(k).unwrap().0, "scene {k}: a share of 0 changed the stream");
        let (b, _, _) = subsets.sample(k).unwrap();
        if a.task != TaskKind::Det {
            assert_eq!(a, b, "scene {k}: a sample other than detection changed");
            continue;
        }
        assert_eq!(listed(&a).len(), SHAPES.len(), "scene {k}: without the share every shape is listed");
        det += 1;
        let names = listed(&b);
        assert!(!names.is_empty() && names.len() < SHAPES.len(), "scene {k}: {names:?}");
        sizes.insert(names.len());
        let found = griffon_core::answer::parse_answer(&b.turns[0].1).instances;
        for (i, shape) in SHAPES.iter().enumerate() {
            let want = if names.iter().any(|n| n == shape) { objs.iter().filter(|o| o.shape == i).count() } else { 0 };
            let got = found.iter().filter(|f| f.label.as_deref() == Some(*shape)).count();
            assert_eq!(got, want, "scene {k}: {shape} in {names:?}: {:?}", b.turns[0].1);
        }
        assert_eq!(found.len(), found.iter().filter(|f| names.contains(f.label.as_ref().unwrap())).count());
        let present = SHAPES.iter().enumerate().filter(|(i, _)| objs.iter().any(|o| o.shape == *i)).count();
        chunked += (present > names.len()) as usize;
    }
    assert!(
        det >= 40 && sizes.len() == SHAPES.len() - 1 && chunked >= 5,
        "{det} detection, sizes {sizes:?}, {chunked} chunked"
    );
    // a share of one half: some detection samples ask for every shape, some for fewer
    let half = stream(0.5).unwrap();
    let (mut all, mut fewer) = (0, 0);
    for k in 0..160 {
        let s = half.sample(k).unwrap().0;
        if s.task == TaskKind::Det {
            let n = listed(&s).len();
            all += (n == SHAPES.len()) as usize;
            fewer += (n < SHAPES.len()) as usize;
        }
    }
    assert!(all >= 10 && fewer >= 10, "{all} with every shape, {fewer} with fewer");
    assert!(stream(1.5).is_err() && stream(-0.1).is_err());
}

/// `--split test` writes exactly the test split of the full benchmark, nothing else.
#[test]
fn one_split_equals_that_split_of_the_full_benchmark() {
    let tmp = tempfile::tempdir().unwrap();
    let (full, part) = (tmp.path().join("full"), tmp.path().join("part"));
    generate(&SynthOptions {
        out: full.clone(),
        n: 20,
        seed: 9,
        size: 96,
        max_objects: 5,
        object_scale: 1.0,
        only_split: None,
    })
    .unwrap();
    let s = generate(&SynthOptions {
        out: part.clone(),
        n: 20,
        seed: 9,
        size: 96,
        max_objects: 5,
        object_scale: 1.0,
        only_split: Some("test".into()),
    })
    .unwrap();
    assert_eq!(s.keys().collect::<Vec<_>>(), vec!["test"]);
    assert!(!part.join("train").exists() && !part.join("images/train").exists());
    for f in [
        "test/instances.json",
        "test/refcoco.jsonl",
        "test/count.jsonl",
        "test/count_any.jsonl",
        "test/reg_eval.jsonl",
        "images/test/000018.png",
    ] {
        assert_eq!(std::fs::read(full.join(f)).unwrap(), std::fs::read(part.join(f)).unwrap(), "{f}");
    }
    assert!(generate(&SynthOptions {
        out: part.clone(),
        n: 20,
        seed: 9,
        size: 96,
        max_objects: 5,
        object_scale: 1.0,
        only_split: Some("dev".into())
    })
    .is_err());
    // another split of the same benchmark joins the folder; other options are refused (they left
    // the earlier images beside the new annotations), and so is a non-empty folder of other files
    let opts = |out: &std::path::Path, seed: u64, n: usize, split: &str| SynthOptions {
        out: out.to_path_buf(),
        n,
        seed,
        size: 96,
        max_objects: 5,
        object_scale: 1.0,
        only_split: Some(split.into()),
    };
    assert_eq!(generate(&opts(&part, 9, 20, "val")).unwrap().keys().collect::<Vec<_>>(), vec!["val"]);
    assert!(part.join("val/instances.json").exists());
    for (seed, n) in [(10, 20), (9, 10)] {
        let e = generate(&opts(&part, seed, n, "test")).unwrap_err();
        assert!(e.contains("other options") && e.contains("new folder"), "{e}");
    }
    // a folder written before synth.json existed is recognised by its images (and gets one);
    // other options over it are still refused
    std::fs::remove_file(part.join("synth.json")).unwrap();
    let e = generate(&opts(&part, 10, 20, "test")).unwrap_err();
    assert!(e.contains("not those of these options"), "{e}");
    let e = generate(&opts(&part, 9, 30, "test")).unwrap_err();
    assert!(e.contains("not those of these options"), "{e}");
    generate(&opts(&part, 9, 20, "test")).unwrap();
    assert!(part.join("synth.json").is_file());
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "x").unwrap();
    let e = generate(&opts(&other, 9, 20, "test")).unwrap_err();
    assert!(e.contains("not empty") && e.contains("synth.json"), "{e}");
    assert!(!other.join("images").exists());
}

/// Counting is not degenerate: about half the scenes hold a crowd of one colour and shape, the
/// counting benchmark's exemplar belongs to the most frequent class, and its counts reach beyond
/// the ones and twos a random class gives (so answering "one" scores badly).
#[test]
fn counting_has_crowds() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("synth");
    generate(&SynthOptions {
        out: out.clone(),
        n: 400,
        seed: 0,
        size: 64,
        max_objects: 20,
        object_scale: 1.0,
        only_split: Some("test".into()),
    })
    .unwrap();
    let counts: Vec<f64> = std::fs::read_to_string(out.join("test/count.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["count"].as_f64().unwrap())
        .collect();
    assert_eq!(counts.len(), 40);
    let mae_of_one = counts.iter().map(|c| (c - 1.0).abs()).sum::<f64>() / counts.len() as f64;
    let big = counts.iter().filter(|c| **c >= 3.0).count();
    eprintln!("counts {counts:?}: answering 1 gives MAE {mae_of_one:.2}");
    assert!(big * 4 >= counts.len(), "only {big} of {} counts are 3 or more", counts.len());
    assert!(mae_of_one > 1.5, "answering 1 would score MAE {mae_of_one}");
}

/// Every referring expression names exactly one object: no two objects of a scene get the same
/// expression (a middle member of a crowd gets none), over scenes full of look-alikes.
#[test]
fn referring_expressions_are_unique_in_crowds() {
    use griffon_train::synth::refer;
    let (mut named, mut unnamed) = (0, 0);
    for k in 0..300 {
        let (_, objs) = scene(11, k, 128, 20);
        let mut seen = std::collections::HashMap::new();
        for i in 0..objs.len() {
            match refer(&objs, i, 128) {
                Some(e) => {
                    named += 1;
                    if let Some(j) = seen.insert(e.clone(), i) {
                        panic!("scene {k}: objects {j} and {i} are both {e:?}");
                    }
                }
                None => unnamed += 1,
            }
        }
    }
    assert!(named > 1000 && unnamed > 50, "named {named}, unnamed {unnamed}");
}

/// `object_scale` 1.0 is the benchmark itself; a larger scale draws the same scenes with larger
/// objects, identically in the stream and in the written files; bad scales are refused.
#[test]
fn object_scale_enlarges_objects_and_keeps_stream_and_files_equal() {
    use griffon_train::data::TaskKind;
    use griffon_train::synth::{scene_scaled, SynthStream};
    let mean_side = |scale: f64| -> f64 {
        let (mut sum, mut n) = (0u64, 0u64);
        for k in 0..30 {
            let (img, objs) = scene_scaled(2, k, 224, 3, scale);
            if scale == 1.0 {
                let (plain, plain_objs) = scene(2, k, 224, 3);
                assert_eq!(img.as_raw(), plain.as_raw());
                assert_eq!(objs, plain_objs);
            }
            for o in &objs {
                assert!(o.bbox[2] <= 224 && o.bbox[3] <= 224 && o.bbox[0] < o.bbox[2]);
                sum += (o.bbox[2] - o.bbox[0]) as u64;
                n += 1;
            }
        }
        sum as f64 / n as f64
    };
    let (one, four) = (mean_side(1.0), mean_side(4.0));
    assert!(four > 3.0 * one, "mean side {one} px at scale 1, {four} px at scale 4");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("synth");
    generate(&SynthOptions {
        out: out.clone(),
        n: 10,
        seed: 3,
        size: 128,
        max_objects: 3,
        object_scale: 4.0,
        only_split: Some("train".into()),
    })
    .unwrap();
    let stream = SynthStream::new(3, 128, 3, vec![(TaskKind::Det, 1.0)], BuildOptions::default())
        .unwrap()
        .with_object_scale(4.0)
        .unwrap();
    for k in 0..8 {
        let written = image::open(out.join(format!("images/train/{k:06}.png"))).unwrap().to_rgb8();
        assert_eq!(stream.sample(k).unwrap().1.as_raw(), written.as_raw(), "scene {k}");
    }
    for bad in [0.0, -1.0, f64::NAN, 100.0] {
        assert!(generate(&SynthOptions {
            out: out.clone(),
            n: 10,
            seed: 3,
            size: 128,
            max_objects: 3,
            object_scale: bad,
            only_split: None
        })
        .is_err());
        assert!(SynthStream::new(3, 128, 3, vec![(TaskKind::Det, 1.0)], BuildOptions::default())
            .unwrap()
            .with_object_scale(bad)
            .is_err());
    }
}

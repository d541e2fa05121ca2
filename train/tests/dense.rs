//! Stage 0, the dense perception loss (train/src/dense.rs): per-patch targets, training of the
//! vision tower alone, exact resume with the head, and the auxiliary form beside the answer loss.

use candle_core::{DType, Device, Tensor, Var, D};
use griffon_model::loader::Checkpoint;
use griffon_train::config::TrainConfig;
use griffon_train::dense::{DenseHead, DenseTargets, BOX_WEIGHT, COLOUR_CLASSES, HEAD_FILE, SHAPE_CLASSES};
use griffon_train::synth::Object;
use griffon_train::trainer::Trainer;
use std::path::{Path, PathBuf};

mod common;
use common::{max_abs, max_abs_diff};

fn fixture() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/parity/gemma2_region/ckpt");
    assert!(d.join("config.json").is_file(), "fixture {} is missing", d.display());
    d
}

fn obj(shape: usize, colour: usize, bbox: [u32; 4]) -> Object {
    Object { shape, colour, bbox }
}

#[test]
fn targets_give_patches_to_the_smallest_covering_object_and_keep_tiny_ones() {
    // 80 px scene on a 4 x 4 grid: cells of 20 px, centres at 10, 30, 50, 70
    let big = obj(1, 2, [0, 0, 60, 60]); // covers centres 10, 30, 50 in x and y: 9 patches
    let inner = obj(0, 0, [25, 25, 40, 40]); // covers centre (30, 30) only: patch (1, 1)
    let tiny = obj(5, 7, [72, 2, 76, 6]); // covers no centre; owns the patch of its centre (3, 0)
    let t = DenseTargets::new(&[inner.clone(), big.clone(), tiny.clone()], 80, 4).unwrap();
    assert_eq!(t.grid, 4);
    let at = |x: usize, y: usize| y * 4 + x;
    assert_eq!(t.foreground(), 10);
    assert_eq!((t.shape[at(0, 0)], t.colour[at(0, 0)]), (2, 3));
    assert_eq!((t.shape[at(1, 1)], t.colour[at(1, 1)]), (1, 1));
    assert_eq!((t.shape[at(3, 0)], t.colour[at(3, 0)]), (6, 8));
    assert_eq!((t.shape[at(3, 3)], t.colour[at(3, 3)]), (0, 0));
    assert_eq!(t.boxes[at(0, 0)], [0.0, 0.0, 0.75, 0.75]);
    assert_eq!(t.boxes[at(1, 1)], [25.0 / 80.0, 25.0 / 80.0, 0.5, 0.5]);
    assert_eq!(t.boxes[at(3, 3)], [0.0; 4]);
    // the same whatever the object order
    assert_eq!(t, DenseTargets::new(&[tiny, big, inner], 80, 4).unwrap());
    assert!(DenseTargets::new(&[], 80, 0).is_err());
}

fn config(dir: &Path, name: &str, train: &str) -> TrainConfig {
    let text = format!(
        "[model]\ninit = {:?}\n[data]\nmax_len = 1024\nmax_categories = 6\n[data.synth]\nseed = 3\nsamples = 4\nsize = 64\nmax_objects = 4\n\
         [train]\nout = {name:?}\nbatch_size = 2\nworkers = 1\nwarmup_ratio = 0.0\n{train}\n",
        fixture()
    );
    let f = dir.join(format!("{name}.toml"));
    std::fs::write(&f, text).unwrap();
    TrainConfig::from_file(&f).unwrap()
}

#[test]
fn stage0_trains_the_tower_alone_falls_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    // four scenes seen over and over: the dense loss must fall well below its start
    let body = "stage = 0\nlr = 3e-3\nmax_steps = 40\nsave_every = 20";
    let straight = Trainer::new(config(tmp.path(), "a", body), &Device::Cpu).unwrap().run(None, false).unwrap();
    let (first, last) = (straight.losses[0], straight.losses[38..].iter().sum::<f64>() / 2.0);
    eprintln!("dense loss {first:.4} -> {last:.4}");
    // stated threshold: from about ln 7 + ln 9 = 4.1 nats (+ box term) to under half of the start
    assert!(first > 3.0 && last < 0.5 * first, "dense loss only went {first} -> {last}");
    let metrics = std::fs::read_to_string(tmp.path().join("a/metrics.jsonl")).unwrap();
    let row: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    assert_eq!(row["dense"].as_f64().unwrap(), row["loss"].as_f64().unwrap());
    assert_eq!(row["tokens"].as_u64().unwrap(), 2 * 49, "patches of the 56 px / 8 px tower, batch 2");
    // the loader wait and the forward / backward / optimizer time of every step are logged; the
    // passes take time, and together they fit in the time between two rows
    let mut before = 0.0;
    for line in metrics.lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        let wait = r["data_wait_s"].as_f64().expect("data_wait_s in every row");
        let phase = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} in every row: {line}"));
        let (fwd, bwd, opt) = (phase("forward_s"), phase("backward_s"), phase("optim_s"));
        assert!(wait >= 0.0 && fwd > 0.0 && bwd > 0.0 && opt >= 0.0, "{line}");
        let elapsed = r["elapsed_s"].as_f64().unwrap();
        assert!(wait + fwd + bwd + opt <= elapsed - before + 1e-6, "{line}");
        // the forward pass's parts: stage 0 runs the vision side alone
        let (up, vis, lang) = (phase("upload_s"), phase("vision_s"), phase("language_s"));
        assert!(up > 0.0 && vis > 0.0 && lang == 0.0 && up + vis <= fwd + 1e-6, "{line}");
        before = elapsed;
    }

    // only the tower moved; the head is kept beside the checkpoint
    assert!(straight.checkpoint.join(HEAD_FILE).is_file());
    let init = Checkpoint::open(&fixture(), &Device::Cpu, DType::F32).unwrap();
    let done = Checkpoint::open(&straight.checkpoint, &Device::Cpu, DType::F32).unwrap();
    assert!(
        max_abs_diff(&init, &done, "model.vision_tower.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight")
            > 1e-4
    );
    for n in ["model.layers.0.self_attn.q_proj.weight", "model.mm_projector.conv.weight"] {
        assert_eq!(max_abs_diff(&init, &done, n), 0.0, "{n} changed in stage 0");
    }

    // interrupted at the first save and resumed: the same curve and weights
    let cfg = config(tmp.path(), "b", body);
    let part = Trainer::new(cfg.clone(), &Device::Cpu).unwrap().run(Some(20), false).unwrap();
    let rest = Trainer::new(cfg, &Device::Cpu).unwrap().run(None, false).unwrap();
    let resumed: Vec<f64> = part.losses.iter().chain(&rest.losses).cloned().collect();
    assert_eq!(resumed.len(), straight.losses.len());
    for (a, b) in straight.losses.iter().zip(&resumed) {
        assert!((a - b).abs() <= 1e-6 * a.abs(), "loss curves differ: {a} vs {b}");
    }
    let wb = Checkpoint::open(&rest.checkpoint, &Device::Cpu, DType::F32).unwrap();
    assert!(
        max_abs_diff(
            &done,
            &wb,
            "model.vision_tower.vision_tower.vision_model.encoder.layers.1.self_attn.q_proj.weight"
        ) <= 1e-6
    );

    // the next stage starts from it and adds the loss beside the answers'
    let next = format!("stage = 2\nlr = 1e-3\nmax_steps = 2\ndense_weight = 0.5\n");
    let mut c = config(tmp.path(), "c", &next);
    c.model.init = tmp.path().join("a");
    let r = Trainer::new(c, &Device::Cpu).unwrap().run(None, false).unwrap();
    let metrics = std::fs::read_to_string(tmp.path().join("c/metrics.jsonl")).unwrap();
    for line in metrics.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let (loss, dense) = (row["loss"].as_f64().unwrap(), row["dense"].as_f64().unwrap());
        // the head came from stage 0: its loss starts near where stage 0 ended, not at ~4 nats
        assert!(dense < 0.75 * first, "dense loss {dense} after stage 0 ended at {last}");
        assert!(loss > 0.5 * dense, "answer loss missing: total {loss}, dense {dense}");
        // with answers the language model's part of the forward pass is timed too
        let part = |k: &str| row[k].as_f64().unwrap_or_else(|| panic!("{k} in every row: {line}"));
        let (up, vis, lang, fwd) = (part("upload_s"), part("vision_s"), part("language_s"), part("forward_s"));
        assert!(up > 0.0 && vis > 0.0 && lang > 0.0 && up + vis + lang <= fwd + 1e-6, "{line}");
    }
    assert!(r.checkpoint.join(HEAD_FILE).is_file());
}

/// With `train.ema_decay` the head kept beside a checkpoint is the moving average too (the
/// optimizer state holds its raw weights), updated at TensorFlow's rates like the tower's.
#[test]
fn stage0_head_is_saved_as_its_moving_average() {
    let tmp = tempfile::tempdir().unwrap();
    let body = "stage = 0\nlr = 3e-3\nmax_steps = 2\nsave_every = 1\nema_decay = 0.2";
    Trainer::new(config(tmp.path(), "ema", body), &Device::Cpu).unwrap().run(None, false).unwrap();
    let load = |n: usize, file: &str| {
        candle_core::safetensors::load(tmp.path().join(format!("ema/checkpoint-{n}/{file}")), &Device::Cpu).unwrap()
    };
    let (opt1, opt2, head) = (load(1, "optimizer.safetensors"), load(2, "optimizer.safetensors"), load(2, HEAD_FILE));
    for name in ["dense_head.weight", "dense_head.bias"] {
        // update 2 at rate min(0.2, 3 / 12) = 0.2
        let (ema1, master2) = (&opt1[&format!("{name}::ema")], &opt2[&format!("{name}::master")]);
        let want = ((ema1 * 0.2).unwrap() + (master2 * 0.8).unwrap()).unwrap();
        let saved = head[name].to_dtype(DType::F32).unwrap();
        assert!(max_abs(&saved, &want) <= 1e-6, "{name}: the saved head is not the moving average");
        assert!(max_abs(&saved, master2) > 1e-6, "{name}: the saved head equals the raw weights");
    }
}

#[test]
fn the_dense_loss_needs_synthetic_scenes() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("c.toml");
    for train in ["stage = 0", "stage = 2\ndense_weight = 1.0"] {
        std::fs::write(
            &f,
            format!("[model]\ninit = \"x\"\n[data]\ntasks = \"t.txt\"\n[train]\nout = \"o\"\nlr = 1e-3\n{train}\n"),
        )
        .unwrap();
        let e = TrainConfig::from_file(&f).unwrap_err();
        assert!(e.contains("dense") && e.contains("synth"), "{e}");
    }
    std::fs::write(
        &f,
        "[model]\ninit = \"x\"\n[data]\ntasks = \"t.txt\"\n[train]\nout = \"o\"\nlr = 1e-3\nstage = 4\n",
    )
    .unwrap();
    assert!(TrainConfig::from_file(&f).unwrap_err().contains("0, 1, 2 or 3"));
    for (key, v) in [("det_format_prob", "1.5"), ("none_prob", "-1")] {
        std::fs::write(&f, format!("[model]\ninit = \"x\"\n[data]\ntasks = \"t.txt\"\n{key} = {v}\n[train]\nout = \"o\"\nlr = 1e-3\nstage = 2\n")).unwrap();
        let e = TrainConfig::from_file(&f).unwrap_err();
        assert!(e.contains(&format!("data.{key}")) && e.contains("[0, 1]"), "{e}");
    }
}

/// Tiled input (the study's patch-partition baseline): each tile gets its own targets, objects
/// clipped to the tile with boxes normalized to it; one tile is the untiled targets.
#[test]
fn tiled_targets_clip_objects_to_each_tile() {
    let across = obj(2, 3, [30, 10, 50, 30]); // spans the vertical tile border at x = 40
    let corner = obj(4, 5, [60, 60, 80, 80]); // bottom-right tile only
    let objs = [across.clone(), corner.clone()];
    assert_eq!(DenseTargets::tiled(&objs, 80, 4, 1).unwrap(), vec![DenseTargets::new(&objs, 80, 4).unwrap()]);
    // 80 px in 2 x 2 tiles of 40 px, each on a 2 x 2 grid of 20 px cells (centres 10, 30)
    let t = DenseTargets::tiled(&objs, 80, 2, 2).unwrap();
    assert_eq!(t.len(), 4);
    // top-left tile: `across` clipped to [30, 10, 40, 30] covers the centre (30, 10) of patch
    // (1, 0) and owns the patch of its own centre (35, 20), (1, 1)
    assert_eq!(t[0].shape, vec![0, 3, 0, 3]);
    assert_eq!(t[0].boxes[1], [0.75, 0.25, 1.0, 0.75]);
    // top-right tile: `across` clipped to [0, 10, 10, 30] (tile pixels) covers no centre and
    // owns the patch of its centre (5, 20), (0, 1)
    assert_eq!(t[1].shape, vec![0, 0, 3, 0]);
    assert_eq!(t[1].boxes[2], [0.0, 0.25, 0.25, 0.75]);
    // bottom-left: nothing; bottom-right: `corner` [20, 20, 40, 40] covers the centre (30, 30)
    assert_eq!(t[2].foreground(), 0);
    assert_eq!((t[3].shape.clone(), t[3].colour[3]), (vec![0, 0, 0, 5], 6));
    assert_eq!(t[3].boxes[3], [0.5, 0.5, 1.0, 1.0]);
    assert!(DenseTargets::tiled(&objs, 80, 2, 0).is_err());
}

/// Stage 0 with tiled input: the loss is over every tile's patches, and the checkpoint records
/// the tiles.
#[test]
fn stage0_trains_on_tiled_input() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path(), "tiled", "stage = 0\nlr = 3e-3\nmax_steps = 3");
    cfg.model.tiles = Some(2);
    let mut t = Trainer::new(cfg, &Device::Cpu).unwrap();
    assert_eq!(t.model.image_size(), 112);
    let r = t.run(None, false).unwrap();
    assert!(r.losses.iter().all(|l| l.is_finite() && *l > 0.0), "{:?}", r.losses);
    let metrics = std::fs::read_to_string(tmp.path().join("tiled/metrics.jsonl")).unwrap();
    let row: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    assert_eq!(row["tokens"].as_u64().unwrap(), 2 * 4 * 49, "batch 2 x 4 tiles x 49 patches of the 56 px tower");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(r.checkpoint.join("config.json")).unwrap()).unwrap();
    assert_eq!(saved["mm_tiles"], 2);
}

#[test]
fn score_counts_what_the_head_reads() {
    use candle_core::{Tensor, Var};
    use griffon_train::dense::{DenseHead, OUTPUTS, SHAPE_CLASSES};
    // a head that always says "background, box [0.5; 4]" (zero weight, bias only)
    let mut bias = vec![0f32; OUTPUTS];
    bias[0] = 1.0; // shape: background
    bias[SHAPE_CLASSES + 1] = 1.0; // colour: red (class 1)
    for b in &mut bias[OUTPUTS - 4..] {
        *b = 0.5;
    }
    let dev = Device::Cpu;
    let head = DenseHead {
        weight: Var::from_tensor(&Tensor::zeros((OUTPUTS, 3), DType::F32, &dev).unwrap()).unwrap(),
        bias: Var::from_tensor(&Tensor::new(bias, &dev).unwrap()).unwrap(),
    };
    // 2 x 2 grid of an 80 px scene: one red circle over the top-left patch, one green one top-right
    let t = DenseTargets::new(&[obj(0, 0, [0, 0, 40, 40]), obj(0, 1, [40, 0, 80, 40])], 80, 2).unwrap();
    let feats = Tensor::zeros((1, 4, 3), DType::F32, &dev).unwrap();
    let s = head.score(&feats, &[&t]).unwrap();
    assert_eq!((s.patches, s.foreground, s.background), (4, 2, 2));
    assert_eq!((s.shape_accuracy, s.colour_accuracy, s.background_recall, s.foreground_missed), (0.0, 0.5, 1.0, 1.0));
    // |0.5 - 0| + |0.5 - 0| + |0.5 - 0.5| + |0.5 - 0.5| over 4, and the same for the second box
    assert!((s.box_l1 - 0.25).abs() < 1e-9, "{}", s.box_l1);
    assert!(head.score(&feats, &[&t, &t]).is_err());
}

/// The balanced loss as defined (the mean over covered patches plus the mean over background
/// ones, of each cross-entropy; BOX_WEIGHT x the mean L1 over covered boxes), by row selection.
fn loss_by_selection(head: &DenseHead, feats: &Tensor, targets: &[&DenseTargets]) -> Tensor {
    let out = head.outputs(feats).unwrap();
    let shapes: Vec<u32> = targets.iter().flat_map(|t| t.shape.clone()).collect();
    let colours: Vec<u32> = targets.iter().flat_map(|t| t.colour.clone()).collect();
    let pick = |fg: bool| -> Tensor {
        let rows: Vec<u32> = (0..shapes.len() as u32).filter(|&i| (shapes[i as usize] != 0) == fg).collect();
        Tensor::new(rows, &Device::Cpu).unwrap()
    };
    let (fg, bg) = (pick(true), pick(false));
    let ce = |from: usize, len: usize, labels: &[u32]| -> Tensor {
        let lsm = candle_nn::ops::log_softmax(&out.narrow(1, from, len).unwrap(), D::Minus1).unwrap();
        let y = Tensor::new(labels, &Device::Cpu).unwrap().unsqueeze(1).unwrap();
        let nll = lsm.gather(&y, 1).unwrap().neg().unwrap();
        // the mean of each non-empty set
        let means: Vec<Tensor> = [&fg, &bg]
            .into_iter()
            .filter(|rows| rows.dim(0).unwrap() > 0)
            .map(|rows| nll.index_select(rows, 0).unwrap().mean_all().unwrap())
            .collect();
        means.into_iter().reduce(|a, b| (a + b).unwrap()).unwrap()
    };
    let want: Vec<f32> = targets
        .iter()
        .flat_map(|t| t.shape.iter().zip(&t.boxes).filter(|(&s, _)| s != 0).flat_map(|(_, b)| *b))
        .collect();
    let want = Tensor::from_vec(want, (fg.dim(0).unwrap(), 4), &Device::Cpu).unwrap();
    let got = out.index_select(&fg, 0).unwrap().narrow(1, SHAPE_CLASSES + COLOUR_CLASSES, 4).unwrap();
    let l1 = (got - want).unwrap().abs().unwrap().mean_all().unwrap();
    ((ce(0, SHAPE_CLASSES, &shapes) + ce(SHAPE_CLASSES, COLOUR_CLASSES, &colours)).unwrap()
        + (l1 * BOX_WEIGHT).unwrap())
    .unwrap()
}

#[test]
fn the_weighted_dense_loss_equals_the_means_of_row_selections() {
    // two 80 px scenes on a 4 x 4 grid (20 of the 32 patches background), 12 channels
    let a = DenseTargets::new(&[obj(1, 2, [0, 0, 60, 60]), obj(5, 7, [72, 2, 76, 6])], 80, 4).unwrap();
    let b = DenseTargets::new(&[obj(3, 4, [20, 40, 45, 79])], 80, 4).unwrap();
    let dev = Device::Cpu;
    let head = DenseHead::init(12, 5, DType::F32, &dev).unwrap();
    let x: Vec<f32> = (0..2 * 16 * 12).map(|i| (i * 37 % 101) as f32 / 50.0 - 1.0).collect();
    let feats = Var::from_tensor(&Tensor::from_vec(x, (2, 16, 12), &dev).unwrap()).unwrap();
    let targets = [&a, &b];
    let got = head.loss(feats.as_tensor(), &targets).unwrap();
    let want = loss_by_selection(&head, feats.as_tensor(), &targets);
    let (g, w) = (got.to_scalar::<f32>().unwrap(), want.to_scalar::<f32>().unwrap());
    // stated tolerance: f32 sums in another order
    assert!((g - w).abs() <= 1e-5 * w.abs(), "loss {g} against {w}");
    let (gg, gw) = (got.backward().unwrap(), want.backward().unwrap());
    for (name, v) in [("features", &feats), ("head weight", &head.weight), ("head bias", &head.bias)] {
        let (x, y) = (gg.get(v.as_tensor()).unwrap(), gw.get(v.as_tensor()).unwrap());
        let scale = y.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let d = x.sub(y).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(scale > 0.0 && d <= 1e-5 * scale, "{name} gradient differs by {d} (scale {scale})");
    }
    // one image covered everywhere (no background patch): the covered means alone
    let full = DenseTargets::new(&[obj(2, 5, [0, 0, 80, 80])], 80, 4).unwrap();
    assert_eq!(full.foreground(), 16);
    let feats1 = feats.as_tensor().narrow(0, 1, 1).unwrap();
    let (g, w) = (head.loss(&feats1, &[&full]).unwrap(), loss_by_selection(&head, &feats1, &[&full]));
    let (g, w) = (g.to_scalar::<f32>().unwrap(), w.to_scalar::<f32>().unwrap());
    assert!(g.is_finite() && (g - w).abs() <= 1e-5 * w.abs(), "all-covered loss {g} against {w}");
    // one image without any covered patch: the background mean alone, no box term
    let empty = DenseTargets::new(&[], 80, 4).unwrap();
    let feats1 = feats.as_tensor().narrow(0, 0, 1).unwrap();
    let only_bg = head.loss(&feats1, &[&empty]).unwrap().to_scalar::<f32>().unwrap();
    let out = head.outputs(&feats1).unwrap();
    let mean_nll = |from: usize, len: usize| -> f32 {
        let lsm = candle_nn::ops::log_softmax(&out.narrow(1, from, len).unwrap(), D::Minus1).unwrap();
        lsm.narrow(1, 0, 1).unwrap().neg().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap()
    };
    let want = mean_nll(0, SHAPE_CLASSES) + mean_nll(SHAPE_CLASSES, COLOUR_CLASSES);
    assert!((only_bg - want).abs() <= 1e-5 * want, "background-only loss {only_bg} against {want}");
}

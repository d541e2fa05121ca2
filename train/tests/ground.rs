//! The grounding loss (train/src/ground.rs): the token grid it maps boxes onto, the answer
//! positions it supervises, the tapped forward pass, and a head that learns to look at the
//! referred object when trained on it.

use candle_core::{Device, Tensor};
use griffon_core::Piece;
use griffon_train::config::TrainConfig;
use griffon_train::data::{Sample, TaskKind};
use griffon_train::ground::{token_centres, GroundQuery, GroundSpec, SampleGround};
use griffon_train::trainer::{encode_sample, Trainer, VisualLens};
use std::path::{Path, PathBuf};

mod common;
use common::max_abs;

fn fixture() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/parity/gemma2_region/ckpt");
    assert!(d.join("config.json").is_file(), "fixture {} is missing", d.display());
    d
}

fn config(dir: &Path, name: &str, train: &str) -> TrainConfig {
    let text = format!(
        "[model]\ninit = {:?}\n[data]\nmax_len = 1024\nmax_categories = 6\n[data.synth]\nseed = 5\nsamples = 4\nsize = 64\nmax_objects = 3\n\
         mix = {{ vg = 1.0 }}\n[train]\nout = {name:?}\nbatch_size = 2\nworkers = 1\nwarmup_ratio = 0.0\nstage = 2\ntrainable = [\"llm\"]\n{train}\n",
        fixture()
    );
    let f = dir.join(format!("{name}.toml"));
    std::fs::write(&f, text).unwrap();
    TrainConfig::from_file(&f).unwrap()
}

fn rec(turns: &[(&str, &str)]) -> Sample {
    Sample {
        image: PathBuf::from("unused.png"),
        regions: vec![],
        turns: turns.iter().map(|(u, a)| (u.to_string(), a.to_string())).collect(),
        task: TaskKind::Vg,
        source: "test:1".into(),
    }
}

#[test]
fn boxes_map_onto_the_projectors_token_grid() {
    let tmp = tempfile::tempdir().unwrap();
    let t = Trainer::new(config(tmp.path(), "a", "max_steps = 1\nlr = 1e-3"), &Device::Cpu).unwrap();
    // the fixture's tower: 56 px, 8 px patches = 7 x 7; conv_reduce (3x3, stride 2, padding 1)
    // gives 4 x 4 tokens centred on patches 0, 2, 4, 6
    let c = token_centres(&t.model).unwrap();
    assert_eq!(c.len(), 16);
    let at = |p: f64| (p + 0.5) / 7.0;
    assert_eq!(c[0], (at(0.0), at(0.0)));
    assert_eq!(c[1 * 4 + 2], (at(4.0), at(2.0)), "row-major: (x, y) of row 1, column 2");
    assert_eq!(c[15], (at(6.0), at(6.0)));
    let g = GroundSpec::new(&t.model, 1, 3, 0.0, true).unwrap();
    // x and y in [0.1, 0.5) hold the centre 2.5 / 7 = 0.357 only: token (1, 1)
    assert_eq!(g.targets([0.1, 0.2, 0.5, 0.6]), vec![5]);
    assert_eq!(g.targets([0.0, 0.0, 1.0, 1.0]), (0..16).collect::<Vec<_>>());
    assert_eq!(g.targets([0.0, 0.0, 0.4, 1.0]), vec![0, 1, 4, 5, 8, 9, 12, 13]);
    // no centre inside: the token nearest the box's centre (0.525, 0.525) is (2, 2)
    assert_eq!(g.targets([0.5, 0.5, 0.55, 0.55]), vec![10]);
    // out of range settings are named
    let e = GroundSpec::new(&t.model, 4, 0, 0.0, true).err().unwrap();
    assert!(e.contains("train.ground_layer = 4") && e.contains("4 layers"), "{e}");
    let e = GroundSpec::new(&t.model, 0, 4, 0.0, true).err().unwrap();
    assert!(e.contains("train.ground_head = 4") && e.contains("4 attention heads"), "{e}");
}

#[test]
fn queries_are_the_positions_that_predict_each_box() {
    let tmp = tempfile::tempdir().unwrap();
    let t = Trainer::new(config(tmp.path(), "a", "max_steps = 1\nlr = 1e-3"), &Device::Cpu).unwrap();
    let g = GroundSpec::new(&t.model, 1, 0, 0.0, true).unwrap();
    let lens = VisualLens::of(&t.model);
    let tok = &t.model.tokenizer;
    let s = rec(&[
        ("Where is the red circle?", "the red circle-[0.100,0.200,0.500,0.600]"),
        ("And the blue cross?", "the blue cross-[0.000,0.000,0.400,1.000]"),
    ]);
    let enc = encode_sample(tok, t.template, &s, lens).unwrap();
    // the sequence as positions: a token id, or None for the image's positions
    let mut seq: Vec<Option<u32>> = Vec::new();
    for p in &enc.pieces {
        match p {
            Piece::Token(id) => seq.push(Some(*id)),
            _ => seq.extend(std::iter::repeat_n(None, lens.image)),
        }
    }
    let sg = g.sample(tok, &s, &enc, lens, &[]).unwrap().expect("a REC sample has queries");
    assert_eq!(seq[sg.image_start], None);
    assert!(sg.image_start == 0 || seq[sg.image_start - 1].is_some(), "the image starts at its first position");
    assert_eq!(seq[sg.image_start..].iter().take_while(|x| x.is_none()).count(), lens.image);
    assert_eq!(sg.queries.len(), 2);
    for (q, (text, targets)) in sg
        .queries
        .iter()
        .zip([("0.100,0.200,0.500,0.600]", vec![5]), ("0.000,0.000,0.400,1.000]", vec![0, 1, 4, 5, 8, 9, 12, 13])])
    {
        assert_eq!(q.targets, targets);
        // consecutive positions, each predicting the token after it: the coordinates and the
        // ']' (this BPE merges "-[": the first position holds that token)
        assert!(q.positions.windows(2).all(|w| w[1] == w[0] + 1), "{:?}", q.positions);
        let predicted: Vec<u32> = q.positions.iter().map(|&p| seq[p + 1].unwrap()).collect();
        assert_eq!(tok.decode(&predicted, false).unwrap(), text);
        assert!(tok.decode(&[seq[q.positions[0]].unwrap()], false).unwrap().ends_with('['));
    }
    // with the scene's objects known, each query also knows the other objects' tokens: the
    // first box is the first object's (IoU 1), the second matches none (all objects are others);
    // tokens of the box itself are never others
    let objects = [[0.1, 0.2, 0.5, 0.6], [0.5, 0.5, 1.0, 1.0]];
    let sg = g.sample(tok, &s, &enc, lens, &objects).unwrap().unwrap();
    assert_eq!(sg.queries[0].others, vec![10, 11, 14, 15]);
    assert_eq!(sg.queries[1].others, vec![10, 11, 14, 15]);
    assert_eq!(sg.queries[0].positions, g.sample(tok, &s, &enc, lens, &[]).unwrap().unwrap().queries[0].positions);
    // other tasks carry no queries; answers whose boxes the parser drops are refused by name
    let det = Sample { task: TaskKind::Det, ..s.clone() };
    assert_eq!(g.sample(tok, &det, &enc, lens, &[]).unwrap(), None);
    let bad = rec(&[("Where is the red circle?", "the red circle-[0.5,0.2,0.1,0.6]")]);
    let enc_bad = encode_sample(tok, t.template, &bad, lens).unwrap();
    let err = g.sample(tok, &bad, &enc_bad, lens, &[]).unwrap_err();
    assert!(err.contains("grounding loss") && err.contains("0.5,0.2,0.1,0.6"), "{err}");
}

#[test]
fn tapping_a_layer_leaves_the_forward_pass_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let t = Trainer::new(config(tmp.path(), "a", "max_steps = 1\nlr = 1e-3"), &Device::Cpu).unwrap();
    let llm = &t.model.llm;
    let h = t.model.config.llm.hidden_size();
    let x = Tensor::randn(0f32, 1.0, (2, 9, h), &Device::Cpu).unwrap();
    let plain = llm.hidden(&x, &mut llm.new_cache()).unwrap();
    let (tapped, qk) = llm.hidden_tapped(&x, &mut llm.new_cache(), Some(2)).unwrap();
    assert_eq!(max_abs(&plain, &tapped), 0.0);
    let (q, k, v) = qk.expect("layer 2 tapped");
    let (heads, kv, d) = llm.heads();
    assert_eq!(q.dims(), &[2, heads, 9, d]);
    assert_eq!(k.dims(), &[2, kv, 9, d]);
    assert_eq!(v.dims(), &[2, kv, 9, d]);
    assert!(llm.hidden_tapped(&x, &mut llm.new_cache(), None).unwrap().1.is_none());
    assert!(llm.hidden_tapped(&x, &mut llm.new_cache(), Some(4)).is_err());
}

fn column(dir: &Path, name: &str, key: &str) -> Vec<Option<f64>> {
    std::fs::read_to_string(dir.join(name).join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()[key].as_f64())
        .collect()
}

#[test]
fn the_supervised_head_learns_to_look_at_the_referred_object() {
    let tmp = tempfile::tempdir().unwrap();
    // four REC scenes seen over and over, the grounding loss weighted up
    let body = "lr = 3e-3\nmax_steps = 40\nground_weight = 5.0\nground_layer = 1\nground_head = 2";
    Trainer::new(config(tmp.path(), "g", body), &Device::Cpu).unwrap().run(None, false).unwrap();
    let g: Vec<f64> = column(tmp.path(), "g", "ground").into_iter().map(|v| v.expect("ground in every row")).collect();
    let (first, last) = (g[0], g[37..].iter().sum::<f64>() / 3.0);
    eprintln!("grounding loss {first:.4} -> {last:.4}");
    // stated threshold: from near uniform attention over 16 tokens (-ln(k / 16) for an object of
    // k tokens, 1.4-2.8 nats) to under a quarter of that
    assert!(first > 1.0 && last < 0.25 * first, "grounding loss only went {first} -> {last}");
    // its attention on the referred object and on the others, where a scene has others
    let own = column(tmp.path(), "g", "ground_own");
    let other = column(tmp.path(), "g", "ground_other");
    let (o0, x0, o1, x1) = (own[0].unwrap(), other[0].unwrap(), own[39].unwrap(), other[39].unwrap());
    eprintln!("attention on the referred object {o0:.3} -> {o1:.3}, on the others {x0:.3} -> {x1:.3}");
    assert!(o1 > 0.5 && o1 > 4.0 * x1, "{o0} -> {o1}, {x0} -> {x1}");
    // with the box readout, the head's attended values learn to hold the referred box
    let body =
        "lr = 3e-3\nmax_steps = 40\nground_weight = 5.0\nground_layer = 1\nground_head = 2\nground_box_weight = 5.0";
    Trainer::new(config(tmp.path(), "b", body), &Device::Cpu).unwrap().run(None, false).unwrap();
    let b: Vec<f64> =
        column(tmp.path(), "b", "ground_box").into_iter().map(|v| v.expect("ground_box in every row")).collect();
    let (first, last) = (b[0], b[37..].iter().sum::<f64>() / 3.0);
    eprintln!("box readout L1 {first:.4} -> {last:.4}");
    // stated threshold: under a third of the start (boxes in [0, 1], values start near 0)
    assert!(last < first / 3.0, "box readout L1 only went {first} -> {last}");
    assert!(column(tmp.path(), "g", "ground_box").iter().all(|v| v.is_none()), "no readout column when it is off");
    // off by default: no grounding column
    Trainer::new(config(tmp.path(), "n", "max_steps = 2\nlr = 1e-3"), &Device::Cpu).unwrap().run(None, false).unwrap();
    assert!(column(tmp.path(), "n", "ground").iter().all(|v| v.is_none()));
}

#[test]
fn grounding_settings_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let text = |train: &str| {
        format!("[model]\ninit = {:?}\n[data]\n[data.synth]\nseed = 1\nsamples = 4\nsize = 64\n[train]\nout = \"o\"\n{train}\n", fixture())
    };
    for (train, want) in [
        ("ground_weight = -1.0\nstage = 2\nlr = 1e-3", "train.ground_weight must be a non-negative number"),
        ("ground_weight = 1.0\nstage = 0\nlr = 1e-3", "train.ground_weight needs answers"),
        ("ground_box_weight = 1.0\nstage = 2\nlr = 1e-3", "set train.ground_weight > 0 too"),
        ("ground_keys = \"text\"\nstage = 2\nlr = 1e-3", "train.ground_keys must be"),
        (
            "ground_weight = 1.0\nground_box_weight = -2.0\nstage = 2\nlr = 1e-3",
            "train.ground_box_weight must be a non-negative",
        ),
    ] {
        let f = tmp.path().join("c.toml");
        std::fs::write(&f, text(train)).unwrap();
        let e = TrainConfig::from_file(&f).err().unwrap();
        assert!(e.contains(want), "{train}: {e}");
    }
    let e = Trainer::new(
        config(tmp.path(), "a", "max_steps = 1\nlr = 1e-3\nground_weight = 1.0\nground_layer = 9"),
        &Device::Cpu,
    )
    .err()
    .unwrap();
    assert!(e.contains("train.ground_layer = 9"), "{e}");
}

/// The loss from tapped tensors, against the same computed with plain loops: the head's scores
/// (scale, soft-capping), its causal row or the image tokens alone, -log of the mass on the targets.
#[test]
fn the_loss_is_the_heads_attention_on_the_targets() {
    let tmp = tempfile::tempdir().unwrap();
    let t = Trainer::new(config(tmp.path(), "a", "max_steps = 1\nlr = 1e-3"), &Device::Cpu).unwrap();
    let (heads, kv, d) = t.model.llm.heads();
    let spec = t.model.llm.attn_spec();
    let (start, n_img, len) = (3usize, 16usize, 26usize);
    let dev = Device::Cpu;
    let q = Tensor::randn(0f32, 1.0, (2, heads, len, d), &dev).unwrap();
    let k = Tensor::randn(0f32, 1.0, (2, kv, len, d), &dev).unwrap();
    let v = Tensor::randn(0f32, 1.0, (2, kv, len, d), &dev).unwrap();
    let query = |positions: Vec<usize>, targets: Vec<usize>| GroundQuery {
        positions,
        targets,
        others: vec![],
        bbox: [0.1, 0.2, 0.5, 0.6],
    };
    // sample 0 has no queries (another task); sample 1 two boxes
    let samples = vec![
        None,
        Some(SampleGround {
            image_start: start,
            queries: vec![query(vec![20, 21], vec![5]), query(vec![24], vec![0, 1, 4])],
        }),
    ];
    let rows: Vec<(usize, Vec<usize>)> = vec![(20, vec![5]), (21, vec![5]), (24, vec![0, 1, 4])];
    let head = 3usize;
    let kvh = head / (heads / kv);
    let qh: Vec<Vec<f32>> = q.get(1).unwrap().get(head).unwrap().to_vec2().unwrap();
    let kh: Vec<Vec<f32>> = k.get(1).unwrap().get(kvh).unwrap().to_vec2().unwrap();
    let score = |p: usize, c: usize| {
        let x = qh[p].iter().zip(&kh[c]).map(|(a, b)| (a * b) as f64).sum::<f64>() * spec.scale;
        match spec.softcap {
            Some(cap) => (x / cap).tanh() * cap,
            None => x,
        }
    };
    for all in [true, false] {
        let g = GroundSpec::new(&t.model, 1, head, 0.0, all).unwrap();
        let got = g.loss(&q, &k, &v, &samples).unwrap().unwrap().loss.to_scalar::<f32>().unwrap() as f64;
        let mut want = 0.0;
        for (p, targets) in &rows {
            let keys: Vec<usize> = if all { (0..=*p).collect() } else { (start..start + n_img).collect() };
            let z: f64 = keys.iter().map(|&c| score(*p, c).exp()).sum();
            let on: f64 = targets.iter().map(|&t| score(*p, start + t).exp()).sum();
            want -= (on / z).ln();
        }
        want /= rows.len() as f64;
        eprintln!("all keys {all}: loss {got:.6}, by loops {want:.6}");
        assert!((got - want).abs() < 1e-4 * want.abs().max(1.0), "all keys {all}: {got} vs {want}");
    }
    // no sample with queries: no loss
    let g = GroundSpec::new(&t.model, 1, head, 0.0, true).unwrap();
    assert!(g.loss(&q, &k, &v, &[None, None]).unwrap().is_none());
}

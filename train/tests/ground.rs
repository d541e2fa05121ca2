//! The grounding loss (train/src/ground.rs): the token grid it maps boxes onto, the answer
//! positions it supervises, the tapped forward pass, and a head that learns to look at the
//! referred object when trained on it.

use candle_core::{Device, Tensor};
use griffon_core::Piece;
use griffon_train::config::{GroundKeys, GroundPositions, TrainConfig};
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
        size: None,
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
    let g = GroundSpec::new(&t.model, 1, 3, 0.0, GroundKeys::All).unwrap();
    // x and y in [0.1, 0.5) hold the centre 2.5 / 7 = 0.357 only: token (1, 1)
    assert_eq!(g.targets([0.1, 0.2, 0.5, 0.6]), vec![5]);
    assert_eq!(g.targets([0.0, 0.0, 1.0, 1.0]), (0..16).collect::<Vec<_>>());
    assert_eq!(g.targets([0.0, 0.0, 0.4, 1.0]), vec![0, 1, 4, 5, 8, 9, 12, 13]);
    // no centre inside: the token nearest the box's centre (0.525, 0.525) is (2, 2)
    assert_eq!(g.targets([0.5, 0.5, 0.55, 0.55]), vec![10]);
    // out of range settings are named
    let e = GroundSpec::new(&t.model, 4, 0, 0.0, GroundKeys::All).err().unwrap();
    assert!(e.contains("train.ground_layer = 4") && e.contains("4 layers"), "{e}");
    let e = GroundSpec::new(&t.model, 0, 4, 0.0, GroundKeys::All).err().unwrap();
    assert!(e.contains("train.ground_head = 4") && e.contains("4 attention heads"), "{e}");
}

#[test]
fn queries_are_the_positions_that_predict_each_box() {
    let tmp = tempfile::tempdir().unwrap();
    let t = Trainer::new(config(tmp.path(), "a", "max_steps = 1\nlr = 1e-3"), &Device::Cpu).unwrap();
    let g = GroundSpec::new(&t.model, 1, 0, 0.0, GroundKeys::All).unwrap();
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
    assert_eq!(enc.image_start(lens).unwrap(), sg.image_start);
    assert_eq!(seq[sg.image_start], None);
    assert!(seq[sg.image_start - 1].is_some(), "the image starts at its first position (a prompt token before it)");
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
    // `choice_only` keeps each box's first positions, up to the one predicting x1's first decimal
    let c = GroundSpec::new(&t.model, 1, 0, 0.0, GroundKeys::All).unwrap().with_positions(GroundPositions::Choice);
    let sc = c.sample(tok, &s, &enc, lens, &objects).unwrap().unwrap();
    // (the predicted text reaches x1's first decimal, and no further than a token merged with it)
    for ((q, full), x1) in sc.queries.iter().zip(&sg.queries).zip(["0.100", "0.000"]) {
        assert!(!q.positions.is_empty() && q.positions.len() < full.positions.len());
        assert_eq!(q.positions[..], full.positions[..q.positions.len()]);
        assert_eq!((&q.targets, &q.others), (&full.targets, &full.others));
        let predicted: Vec<u32> = q.positions.iter().map(|&p| seq[p + 1].unwrap()).collect();
        let text = tok.decode(&predicted, false).unwrap();
        let before: Vec<u32> = predicted[..predicted.len() - 1].to_vec();
        let before = tok.decode(&before, false).unwrap();
        assert!(text.len() >= 3 && x1.starts_with(&text) && before.len() < 3, "{text:?} after {before:?}");
    }
    // every query knows the position predicting x1's first decimal (the choice-only run's last)
    // and the tokens spelling the name before its box
    for ((q, c), name) in sg.queries.iter().zip(&sc.queries).zip(["red circle", "blue cross"]) {
        assert_eq!(q.choice, *c.positions.last().unwrap());
        // (this BPE merges the name's end with "-[": that token spells the name too)
        let spelt = tok.decode(&q.name, false).unwrap();
        assert!(spelt.trim().starts_with(name) && spelt.len() <= name.len() + 3, "{spelt:?}");
    }
    // the name lens: the layer's input at each choosing position through the LLM's own head,
    // -log p of each name token, averaged over the (query, token) pairs (against a plain loop)
    let n = GroundSpec::new(&t.model, 1, 0, 0.0, GroundKeys::All).unwrap().with_name_weight(1.0).unwrap();
    let e = GroundSpec::new(&t.model, 0, 0, 0.0, GroundKeys::All).unwrap().with_name_weight(1.0).err().unwrap();
    assert!(e.contains("layer >= 1"), "{e}");
    let t_len = seq.len() + 3;
    let h = t.model.config.llm.hidden_size();
    let input = Tensor::randn(0f32, 1.0, (2, t_len, h), &Device::Cpu).unwrap();
    let both = [None, Some(sc.clone())];
    let got = n.name_loss(&t.model.llm, &input, &both).unwrap().unwrap().to_scalar::<f32>().unwrap() as f64;
    let mut want = Vec::new();
    for q in &sc.queries {
        let row = input.get(1).unwrap().get(q.choice).unwrap().unsqueeze(0).unwrap();
        let lp = candle_nn::ops::log_softmax(&t.model.llm.head(&row).unwrap(), 1).unwrap().squeeze(0).unwrap();
        let lp = lp.to_vec1::<f32>().unwrap();
        want.extend(q.name.iter().map(|&id| -(lp[id as usize] as f64)));
    }
    let want = want.iter().sum::<f64>() / want.len() as f64;
    assert!((got - want).abs() < 1e-4, "name lens {got} vs {want}");
    assert!(n.name_loss(&t.model.llm, &input, &[None, None]).unwrap().is_none());
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
    let tap = qk.expect("layer 2 tapped");
    let (heads, kv, d) = llm.heads();
    assert_eq!(tap.q.dims(), &[2, heads, 9, d]);
    assert_eq!(tap.k.dims(), &[2, kv, 9, d]);
    assert_eq!(tap.v.dims(), &[2, kv, 9, d]);
    assert_eq!(tap.input.dims(), &[2, 9, h]);
    // layer 0 reads the embeddings, scaled by Gemma-2's sqrt(hidden)
    let tap0 = llm.hidden_tapped(&x, &mut llm.new_cache(), Some(0)).unwrap().1.unwrap();
    assert!(max_abs(&tap0.input, &(&x * (h as f64).sqrt()).unwrap()) < 1e-5);
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
    let last3 = |c: &[Option<f64>]| c[37..].iter().map(|v| v.expect("in every row")).sum::<f64>() / 3.0;
    let (o0, x0, o1, x1) = (own[0].unwrap(), other[0].unwrap(), last3(&own), last3(&other));
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
    // with the name lens, the layer's input at the choosing position learns to spell the name
    let body = "lr = 3e-3\nmax_steps = 40\nground_weight = 1.0\nground_layer = 1\nground_head = 2\n\
                ground_positions = \"choice\"\nground_name_weight = 5.0";
    Trainer::new(config(tmp.path(), "l", body), &Device::Cpu).unwrap().run(None, false).unwrap();
    let l: Vec<f64> =
        column(tmp.path(), "l", "ground_name").into_iter().map(|v| v.expect("ground_name in every row")).collect();
    let (first, last) = (l[0], l[37..].iter().sum::<f64>() / 3.0);
    eprintln!("name lens {first:.4} -> {last:.4}");
    // stated threshold: from about the vocabulary's spread to under half of it (the floor is
    // ln of the name's token count, 0.7-1.4, since one position spells every token of it)
    assert!(first > 4.0 && last < first / 2.0, "name lens only went {first} -> {last}");
    assert!(column(tmp.path(), "g", "ground_name").iter().all(|v| v.is_none()), "no name column when it is off");
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
        // stage 0 trains the dense loss alone, at weight 1, through the vision tower
        ("dense_weight = 0.1\nstage = 0\nlr = 1e-3", "train.dense_weight = 0.1 does nothing in stage 0"),
        ("choice_weight = 2.0\nstage = 0\nlr = 1e-3", "train.choice_weight = 2 weighs answer tokens"),
        ("trainable = [\"vision\", \"llm\"]\nstage = 0\nlr = 1e-3", "its dense loss reaches the vision tower only"),
        ("ground_box_weight = 1.0\nstage = 2\nlr = 1e-3", "set train.ground_weight > 0 too"),
        (
            "ground_keys = \"text\"\nstage = 2\nlr = 1e-3",
            "unknown variant `text`, expected `all` or `image`\nin `train.ground_keys`",
        ),
        (
            "ground_positions = \"x1\"\nstage = 2\nlr = 1e-3",
            "unknown variant `x1`, expected `box` or `choice`\nin `train.ground_positions`",
        ),
        ("ground_weight = 1.0\nground_name_weight = -1.0\nstage = 2\nlr = 1e-3", "train.ground_name_weight must be"),
        ("ground_name_weight = 1.0\nstage = 2\nlr = 1e-3", "set train.ground_weight > 0 too"),
        (
            "ground_positions = \"choice\"\nground_head = 2\nstage = 2\nlr = 1e-3",
            "train.ground_head, train.ground_positions: settings of the grounding loss, which is off",
        ),
        ("ground_layer = 3\nstage = 2\nlr = 1e-3", "train.ground_layer: settings of the grounding loss, which is off"),
        ("ground_weight = 1.0\nground_layer = 0\nground_name_weight = 1.0\nstage = 2\nlr = 1e-3", "ground_layer >= 1"),
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
    // the synthetic stream's ranges are checked with the config, named by key
    for (from, to, want) in [
        ("size = 64", "size = 16", "data.synth.size 16 is outside 32..="),
        ("size = 64", "size = 64\nobject_scale = 30.0", "data.synth.object_scale 30 is outside"),
        ("size = 64", "size = 64\nmax_objects = 0", "data.synth.max_objects must be at least 1"),
        ("size = 64", "size = 64\n[data.synth.mix]\ndet = 0.0", "data.synth.mix = {det = 0, vg = 0"),
    ] {
        let f = tmp.path().join("c.toml");
        std::fs::write(&f, text("stage = 2\nlr = 1e-3").replace(from, to)).unwrap();
        let e = TrainConfig::from_file(&f).err().unwrap();
        assert!(e.contains(want), "{to}: {e}");
    }
    let e = Trainer::new(
        config(tmp.path(), "a", "max_steps = 1\nlr = 1e-3\nground_weight = 1.0\nground_layer = 9"),
        &Device::Cpu,
    )
    .err()
    .unwrap();
    assert!(e.contains("train.ground_layer = 9"), "{e}");
}

/// The loss, its attention masses and its box readout from tapped tensors, against the same
/// computed with plain loops: the head's scores (scale, soft-capping), its causal row (within
/// the layer's sliding window) or the image tokens alone, two samples whose images start at
/// different positions.
#[test]
fn the_loss_is_the_heads_attention_on_the_targets() {
    let tmp = tempfile::tempdir().unwrap();
    let t = Trainer::new(config(tmp.path(), "a", "max_steps = 1\nlr = 1e-3"), &Device::Cpu).unwrap();
    let (heads, kv, d) = t.model.llm.heads();
    let spec = t.model.llm.attn_spec();
    let (n_img, len, head) = (16usize, 26usize, 3usize);
    // the fixture's layer 0 has a sliding window (8 keys, fewer than its 16 image tokens), layer 1 none
    assert!(t.model.llm.layer_window(0).is_some() && t.model.llm.layer_window(1).is_none());
    let dev = Device::Cpu;
    let q = Tensor::randn(0f32, 1.0, (2, heads, len, d), &dev).unwrap();
    let k = Tensor::randn(0f32, 1.0, (2, kv, len, d), &dev).unwrap();
    let v = Tensor::randn(0f32, 1.0, (2, kv, len, d), &dev).unwrap();
    struct Q {
        b: usize,
        start: usize,
        positions: Vec<usize>,
        targets: Vec<usize>,
        others: Vec<usize>,
        bbox: [f64; 4],
    }
    let qs = [
        Q { b: 0, start: 2, positions: vec![18, 19], targets: vec![3], others: vec![7, 8], bbox: [0.1, 0.2, 0.5, 0.6] },
        Q { b: 1, start: 3, positions: vec![20, 21], targets: vec![5], others: vec![], bbox: [0.0, 0.0, 0.3, 0.3] },
        Q { b: 1, start: 3, positions: vec![24], targets: vec![0, 1, 4], others: vec![9], bbox: [0.5, 0.4, 0.9, 1.0] },
    ];
    let ground = |b: usize| {
        let queries: Vec<GroundQuery> = qs
            .iter()
            .filter(|x| x.b == b)
            .map(|x| GroundQuery {
                positions: x.positions.clone(),
                targets: x.targets.clone(),
                others: x.others.clone(),
                bbox: x.bbox,
                choice: x.positions[0],
                name: vec![],
            })
            .collect();
        Some(SampleGround { image_start: qs.iter().find(|x| x.b == b).unwrap().start, queries })
    };
    let samples = vec![ground(0), ground(1)];
    let kvh = head / (heads / kv);
    let (qv, kv3, vv): (Vec<Vec<Vec<f32>>>, Vec<Vec<Vec<f32>>>, Vec<Vec<Vec<f32>>>) = (
        (0..2).map(|b| q.get(b).unwrap().get(head).unwrap().to_vec2().unwrap()).collect(),
        (0..2).map(|b| k.get(b).unwrap().get(kvh).unwrap().to_vec2().unwrap()).collect(),
        (0..2).map(|b| v.get(b).unwrap().get(kvh).unwrap().to_vec2().unwrap()).collect(),
    );
    let score = |b: usize, p: usize, c: usize| {
        let x = qv[b][p].iter().zip(&kv3[b][c]).map(|(a, b)| (*a as f64) * (*b as f64)).sum::<f64>() * spec.scale;
        match spec.softcap {
            Some(cap) => (x / cap).tanh() * cap,
            None => x,
        }
    };
    for (layer, mode) in [(1, GroundKeys::All), (1, GroundKeys::Image)] {
        let all = mode == GroundKeys::All;
        let window = t.model.llm.layer_window(layer);
        let g = GroundSpec::new(&t.model, layer, head, 1.0, mode).unwrap();
        let got = g.loss(&q, &k, &v, &samples).unwrap().unwrap();
        let (mut loss, mut own, mut other, mut with, mut l1, mut rows) = (0.0, 0.0, 0.0, 0usize, 0.0, 0usize);
        for x in &qs {
            for &p in &x.positions {
                let keys: Vec<usize> = if all {
                    (0..=p).filter(|&c| window.is_none_or(|w| p - c < w)).collect()
                } else {
                    (x.start..x.start + n_img).collect()
                };
                let z: f64 = keys.iter().map(|&c| score(x.b, p, c).exp()).sum();
                let mass = |ts: &[usize]| ts.iter().map(|&t| score(x.b, p, x.start + t).exp()).sum::<f64>() / z;
                loss -= mass(&x.targets).ln();
                if !x.others.is_empty() {
                    own += mass(&x.targets);
                    other += mass(&x.others);
                    with += 1;
                }
                // the readout: the image tokens' values under the attention renormalised over them
                let zi: f64 = (0..n_img).map(|t| score(x.b, p, x.start + t).exp()).sum();
                for (j, want) in x.bbox.iter().enumerate() {
                    let read: f64 = (0..n_img)
                        .map(|t| score(x.b, p, x.start + t).exp() / zi * vv[x.b][x.start + t][j] as f64)
                        .sum();
                    l1 += (read - want).abs();
                }
                rows += 1;
            }
        }
        let want = [loss / rows as f64, l1 / (4 * rows) as f64, own / with as f64, other / with as f64];
        let (m_own, m_other) = got.masses.unwrap();
        let have = [&got.loss, &got.box_l1.unwrap(), &m_own, &m_other].map(|t| t.to_scalar::<f32>().unwrap() as f64);
        eprintln!("all keys {all} (window {window:?}): loss, box L1, own, other {have:?}, by loops {want:?}");
        for (h, w) in have.iter().zip(&want) {
            assert!((h - w).abs() < 1e-4 * w.abs().max(1.0), "all keys {all}: {have:?} vs {want:?}");
        }
    }
    // a sliding window that hides image tokens from a query is refused (in both forms)
    for keys in [GroundKeys::All, GroundKeys::Image] {
        let err = GroundSpec::new(&t.model, 0, head, 1.0, keys).unwrap().loss(&q, &k, &v, &samples).err().unwrap();
        assert!(err.contains("sees only the last 8 keys"), "{err}");
    }
    // no sample with queries: no loss; positions that cannot see the whole image are refused
    let g = GroundSpec::new(&t.model, 1, head, 0.0, GroundKeys::All).unwrap();
    assert!(g.loss(&q, &k, &v, &[None, None]).unwrap().is_none());
    let early = vec![Some(SampleGround {
        image_start: 3,
        queries: vec![GroundQuery {
            positions: vec![10],
            targets: vec![0],
            others: vec![],
            bbox: [0.0; 4],
            choice: 10,
            name: vec![],
        }],
    })];
    let err = g.loss(&q, &k, &v, &early).err().unwrap();
    assert!(err.contains("query position 10") && err.contains("image's end (19)"), "{err}");
    let bad = vec![Some(SampleGround {
        image_start: 3,
        queries: vec![GroundQuery {
            positions: vec![20],
            targets: vec![16],
            others: vec![],
            bbox: [0.0; 4],
            choice: 10,
            name: vec![],
        }],
    })];
    let err = g.loss(&q, &k, &v, &bad).err().unwrap();
    assert!(err.contains("image token 16 of 16"), "{err}");
}

#[test]
fn the_choice_weight_scales_the_first_decimal_of_each_boxs_x1() {
    use griffon_train::data::BuildOptions;
    use griffon_train::synth::SynthStream;
    use griffon_train::trainer::{batch_objective, choice_tokens, load_pixels, Loaded, Objective};
    let tmp = tempfile::tempdir().unwrap();
    let t = Trainer::new(config(tmp.path(), "c", "max_steps = 1\nlr = 1e-3"), &Device::Cpu).unwrap();
    let m = &t.model;
    // the token of each box's x1 first decimal, whatever the BPE merged around it
    let answer = "red circle-[0.123,0.456,0.789,0.999]&blue square-[0.300,0.200,0.400,0.500]";
    let ids = m.tokenizer.encode_plain(answer).unwrap();
    let found = choice_tokens(&m.tokenizer, &ids).unwrap();
    assert_eq!(found.len(), 2, "{found:?}");
    let (text, spans) = m.tokenizer.decode_spans(&ids).unwrap();
    let firsts: Vec<usize> = text.match_indices("[0.").map(|(o, _)| o + 3).collect();
    for (j, d) in found.iter().zip(firsts) {
        assert!(spans[*j].0 <= d && d < spans[*j].1, "token {j} {:?} does not hold byte {d} of {text:?}", spans[*j]);
    }
    assert!(choice_tokens(&m.tokenizer, &m.tokenizer.encode_plain("None").unwrap()).unwrap().is_empty());
    // the loss: sum of the tokens' losses over their count, the chosen ones weighted, so linear
    // in the weight, and the plain mean at 1
    let stream = SynthStream::new(5, 64, 3, vec![(TaskKind::Vg, 1.0)], BuildOptions::default()).unwrap();
    let (s, img, _) = stream.sample(0).unwrap();
    let enc = encode_sample(&m.tokenizer, m.template, &s, VisualLens::of(m)).unwrap();
    let (pixels, regions) = load_pixels(&s, Some(img), m.image_size(), m.region_size()).unwrap();
    let batch = [Loaded { sample: s, enc, pixels, regions, dense: None, objects: vec![] }];
    let loss = |w: f64| -> f64 {
        let o = batch_objective(m, &batch, Objective { answers: true, dense: None, ground: None, choice: w }).unwrap();
        o.loss.to_scalar::<f32>().unwrap() as f64
    };
    let (l1, l2, l5) = (loss(1.0), loss(2.0), loss(5.0));
    assert!(l2 > l1 + 1e-4, "the chosen token adds its loss: {l1} -> {l2}");
    assert!((l5 - l1 - 4.0 * (l2 - l1)).abs() < 1e-4, "linear in the weight: {l1} {l2} {l5}");
    // a weight that is not positive is refused
    config(tmp.path(), "ok", "max_steps = 1\nlr = 1e-3");
    let text = std::fs::read_to_string(tmp.path().join("ok.toml")).unwrap();
    for w in ["0.0", "-1.0", "nan"] {
        let f = tmp.path().join("w.toml");
        std::fs::write(&f, format!("{text}choice_weight = {w}\n")).unwrap();
        let r = TrainConfig::from_file(&f).and_then(|c| c.validate());
        assert!(matches!(&r, Err(e) if e.contains("choice_weight")), "choice_weight = {w}: {r:?}");
    }
}

#[test]
fn the_choosing_token_is_the_one_spanning_x1s_first_decimal() {
    use griffon_train::trainer::choosing_token;
    // "a-[0.25,..": '[' at byte 2, x1's first decimal '2' at byte 5
    let spans = [(0, 1), (1, 3), (3, 5), (5, 6), (6, 7)];
    assert_eq!(choosing_token(&spans, 2), Some(3));
    // a token merging "0.2" holds the decimal: it is the choosing token
    assert_eq!(choosing_token(&[(0, 1), (1, 3), (3, 6), (6, 7)], 2), Some(2));
    // empty spans (special tokens decode to nothing) never hold it
    assert_eq!(choosing_token(&[(0, 3), (3, 3), (5, 5), (5, 8)], 2), Some(3));
    // the text ends before the decimal
    assert_eq!(choosing_token(&[(0, 1), (1, 3), (3, 5)], 2), None);
}

#[test]
fn the_image_start_needs_exactly_one_main_image() {
    use griffon_core::Placeholder;
    use griffon_train::trainer::Encoded;
    let lens = VisualLens { image: 9, region: 1 };
    let enc = |pieces: Vec<Piece>| Encoded { supervised: vec![false; pieces.len()], len: 0, pieces };
    let one = enc(vec![
        Piece::Token(1),
        Piece::Visual(Placeholder::Region(0)),
        Piece::Token(2),
        Piece::Visual(Placeholder::Image(0)),
        Piece::Token(3),
    ]);
    assert_eq!(one.image_start(lens).unwrap(), 3, "one token, one region token, one token before the image");
    let none = enc(vec![Piece::Token(1), Piece::Visual(Placeholder::Region(0))]);
    assert!(none.image_start(lens).unwrap_err().contains("no image"));
    let two = enc(vec![Piece::Visual(Placeholder::Image(0)), Piece::Visual(Placeholder::Image(1))]);
    assert!(two.image_start(lens).unwrap_err().contains("two images"));
}

//! Tests that can fail: every trainable tensor receives a finite, non-zero gradient (this catches
//! candle ops without a backward pass), and gradients agree with finite differences.

use candle_core::{DType, Device, Tensor, Var};
use griffon_core::{Exemplar, PixelBox};
use griffon_model::griffon::{Griffon, LoadOptions};
use griffon_train::data::{Sample, TaskKind};
use griffon_train::trainer::{encode_sample, sample_loss, VisualLens};
use std::path::PathBuf;

fn fixture() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/parity/gemma2_region");
    assert!(d.join("ckpt/config.json").is_file(), "fixture {} is missing", d.display());
    d
}

fn samples(d: &std::path::Path) -> Vec<Sample> {
    vec![
        Sample {
            image: d.join("image.png"),
            regions: vec![Exemplar::BoxOnImage(PixelBox::new(10.0, 10.0, 40.0, 40.0))],
            turns: vec![(
                "In this image, find all objects similar to <region> and output their coordinates.".into(),
                "[0.100,0.200,0.300,0.400]&[0.500,0.500,0.900,0.950]".into(),
            )],
            task: TaskKind::Visj,
            source: "test:1".into(),
            size: None,
        },
        Sample {
            image: d.join("image.png"),
            regions: vec![Exemplar::Image(d.join("region.png"))],
            turns: vec![
                ("What is <region>?".into(), "a red square".into()),
                ("And where is it?".into(), "square-[0.200,0.250,0.500,0.500]".into()),
            ],
            task: TaskKind::Lazy,
            source: "test:2".into(),
            size: None,
        },
    ]
}

fn load_all_trainable() -> (Griffon, Vec<(String, Var)>) {
    griffon_model::nn::set_differentiable(true);
    Griffon::load_trainable(&fixture().join("ckpt"), &LoadOptions::default(), Box::new(|_| true)).unwrap()
}

fn total_loss(m: &Griffon) -> Tensor {
    let d = fixture();
    let lens = VisualLens::of(m);
    let mut total: Option<Tensor> = None;
    for s in samples(&d) {
        let enc = encode_sample(&m.tokenizer, m.template, &s, lens).unwrap();
        let (l, n) = sample_loss(m, &s, &enc).unwrap();
        assert!(n > 0);
        total = Some(match total {
            None => l,
            Some(t) => (t + l).unwrap(),
        });
    }
    total.unwrap()
}

#[test]
fn every_trainable_tensor_gets_a_finite_nonzero_gradient() {
    let (m, vars) = load_all_trainable();
    // every tensor the forward pass reads is trainable here: towers (up to the selected layer),
    // projector, region encoder, LLM
    assert!(vars.len() > 60, "only {} trainable tensors", vars.len());
    let loss = total_loss(&m);
    let grads = loss.backward().unwrap();
    let mut bad = Vec::new();
    for (name, v) in &vars {
        match grads.get(v.as_tensor()) {
            None => bad.push(format!("{name}: no gradient")),
            Some(g) => {
                let g = g.to_dtype(DType::F32).unwrap();
                let max: f32 = g.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
                let sum: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
                if !sum.is_finite() {
                    bad.push(format!("{name}: non-finite gradient"));
                } else if max == 0.0 {
                    bad.push(format!("{name}: zero gradient"));
                }
            }
        }
    }
    assert!(bad.is_empty(), "{} of {} tensors have bad gradients:\n{}", bad.len(), vars.len(), bad.join("\n"));
}

/// Central differences in f32 with eps = 1e-2 on the entries with the largest gradients of a
/// few tensors across the pipeline. Tolerance: 5% relative (+2e-4 absolute), set by f32 noise
/// in the loss (~1e-6) over 2 eps and the O(eps^2) truncation error.
#[test]
fn gradients_match_finite_differences() {
    let (m, vars) = load_all_trainable();
    let loss = total_loss(&m);
    let grads = loss.backward().unwrap();
    let names = [
        "model.mm_projector.conv.weight",
        "model.mm_projector.linear.bias",
        "model.prompt_projector.0.weight",
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.3.mlp.down_proj.weight",
        "model.norm.weight",
        "model.embed_tokens.weight",
        "model.vision_tower.vision_tower.vision_model.encoder.layers.0.self_attn.k_proj.weight",
        "model.vision_tower.vision_tower.vision_model.embeddings.position_embedding.weight",
        "model.prompt_visual_encoder.vision_model.encoder.layers.1.mlp.fc2.weight",
    ];
    let eps = 1e-2f32;
    let mut checked = 0;
    for name in names {
        let (_, var) = vars.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} not trainable"));
        let g: Vec<f32> = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let orig: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        // the two largest-magnitude entries
        let mut idx: Vec<usize> = (0..g.len()).collect();
        idx.sort_by(|a, b| g[*b].abs().total_cmp(&g[*a].abs()));
        for &i in idx.iter().take(2) {
            let eval = |delta: f32| -> f64 {
                let mut w = orig.clone();
                w[i] += delta;
                var.set(&Tensor::from_vec(w, var.as_tensor().shape(), &Device::Cpu).unwrap()).unwrap();
                total_loss(&m).to_scalar::<f32>().unwrap() as f64
            };
            let fd = (eval(eps) - eval(-eps)) / (2.0 * eps as f64);
            var.set(&Tensor::from_vec(orig.clone(), var.as_tensor().shape(), &Device::Cpu).unwrap()).unwrap();
            let an = g[i] as f64;
            eprintln!("{name}[{i}]: analytic {an:.6e}, finite difference {fd:.6e}");
            assert!((fd - an).abs() <= 0.05 * an.abs() + 2e-4, "{name}[{i}]: analytic {an} vs finite difference {fd}");
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * names.len());
}

/// A right-padded micro-batch gives each sample the loss it has alone: the batch mean equals the
/// token-weighted mean of the single-sample losses (tolerance 1e-5 relative, f32 sums in a
/// different order), and so do the gradients (1e-4 relative).
#[test]
fn padded_batch_loss_equals_per_sample_losses() {
    use griffon_train::trainer::{batch_loss, load_pixels, Loaded};
    let (m, vars) = load_all_trainable();
    let d = fixture();
    let lens = VisualLens::of(&m);
    // a third, shorter sample without regions so the lengths differ
    let mut all = samples(&d);
    all.push(Sample {
        image: d.join("region.png"),
        regions: vec![],
        turns: vec![("Where is the square?".into(), "square-[0.1,0.2,0.3,0.4]".into())],
        task: TaskKind::Vg,
        source: "test:3".into(),
        size: None,
    });
    let loaded: Vec<Loaded> = all
        .iter()
        .map(|s| {
            let enc = encode_sample(&m.tokenizer, m.template, s, lens).unwrap();
            let (pixels, regions) = load_pixels(s, None, m.image_size(), m.region_size()).unwrap();
            Loaded { sample: s.clone(), enc, pixels, regions, dense: None, objects: Vec::new() }
        })
        .collect();
    let lens_of: Vec<usize> = loaded.iter().map(|l| l.enc.len).collect();
    assert!(lens_of.iter().any(|l| *l != lens_of[0]), "lengths must differ to test padding: {lens_of:?}");
    let (batch, n) = batch_loss(&m, &loaded).unwrap();
    let mut weighted: Option<Tensor> = None;
    let mut total = 0;
    for l in &loaded {
        let (x, k) = batch_loss(&m, std::slice::from_ref(l)).unwrap();
        total += k;
        let x = (x * k as f64).unwrap();
        weighted = Some(match weighted {
            None => x,
            Some(w) => (w + x).unwrap(),
        });
    }
    assert_eq!(n, total);
    let single = (weighted.unwrap() / total as f64).unwrap();
    let (a, b) = (batch.to_scalar::<f32>().unwrap(), single.to_scalar::<f32>().unwrap());
    assert!((a - b).abs() <= 1e-5 * b.abs(), "batched {a} vs per-sample {b}");
    let ga = batch.backward().unwrap();
    let gb = single.backward().unwrap();
    let mut checked = 0;
    for (name, v) in &vars {
        let (Some(x), Some(y)) = (ga.get(v.as_tensor()), gb.get(v.as_tensor())) else { continue };
        let diff: f32 = (x - y).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
        let scale: f32 = y.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
        // absolute floor 1e-7: some gradients are zero in exact arithmetic (a key bias cannot
        // change a softmax) and only rounding noise remains
        assert!(diff <= 1e-4 * scale + 1e-7, "{name}: gradient differs by {diff} (scale {scale})");
        checked += 1;
    }
    assert!(checked > 20, "only {checked} gradients compared");
}

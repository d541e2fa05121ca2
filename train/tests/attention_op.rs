//! Training's attention op (`griffon_model::attn_grad`) inside the whole model: the loss and the
//! gradient of every trainable tensor equal those of the composed graph it replaces (the
//! `GRIFFON_ATTN_GRAD=0` path), on the tiny Gemma-2 fixture with its CLIP tower, region encoder
//! and a two-turn sample (causal LLM attention with a sliding window and soft-capping, unmasked
//! tower attention). A file of its own: the switch is process-wide.

use candle_core::{DType, Tensor};
use griffon_core::{Exemplar, PixelBox};
use griffon_model::griffon::{Griffon, LoadOptions};
use griffon_train::data::{Sample, TaskKind};
use griffon_train::trainer::{encode_sample, sample_loss, VisualLens};
use std::collections::HashMap;
use std::path::PathBuf;

fn fixture() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/parity/gemma2_region");
    assert!(d.join("ckpt/config.json").is_file(), "fixture {} is missing", d.display());
    d
}

/// (loss, gradient per trainable tensor name) with the op on or off.
fn loss_and_grads(op: bool) -> (f32, HashMap<String, Tensor>) {
    griffon_model::attn_grad::set_enabled(Some(op));
    griffon_model::nn::set_differentiable(true);
    let d = fixture();
    let (m, vars) = Griffon::load_trainable(&d.join("ckpt"), &LoadOptions::default(), Box::new(|_| true)).unwrap();
    let s = Sample {
        image: d.join("image.png"),
        regions: vec![Exemplar::BoxOnImage(PixelBox::new(10.0, 10.0, 40.0, 40.0))],
        turns: vec![
            (
                "In this image, find all objects similar to <region> and output their coordinates.".into(),
                "[0.100,0.200,0.300,0.400]&[0.500,0.500,0.900,0.950]".into(),
            ),
            ("And the largest?".into(), "[0.500,0.500,0.900,0.950]".into()),
        ],
        task: TaskKind::Visj,
        source: "test:1".into(),
        size: None,
    };
    let enc = encode_sample(&m.tokenizer, m.template, &s, VisualLens::of(&m)).unwrap();
    let (loss, n) = sample_loss(&m, &s, &enc).unwrap();
    assert!(n > 20, "{n} supervised tokens");
    let grads = loss.backward().unwrap();
    let value = loss.to_scalar::<f32>().unwrap();
    let g = vars
        .iter()
        .map(|(name, v)| (name.clone(), grads.get(v.as_tensor()).expect("gradient").to_dtype(DType::F32).unwrap()))
        .collect();
    griffon_model::attn_grad::set_enabled(None);
    (value, g)
}

#[test]
fn the_attention_op_gives_the_composed_graphs_loss_and_gradients() {
    let (l_op, g_op) = loss_and_grads(true);
    let (l_ref, g_ref) = loss_and_grads(false);
    eprintln!("loss {l_op} (op) vs {l_ref} (composed)");
    assert!((l_op - l_ref).abs() <= 1e-5 * l_ref.abs().max(1.0), "loss {l_op} vs {l_ref}");
    assert_eq!(g_op.len(), g_ref.len());
    // stated tolerance: 1e-4 of each gradient's largest value (f32, reassociated sums), with a
    // floor of 1e-3 of the largest gradient in the model: the key projections' biases have an
    // exactly zero gradient (softmax ignores a per-row constant), so both paths give rounding
    // noise there, and noise has no scale of its own
    let amax = |t: &Tensor| t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let global = g_ref.values().map(amax).fold(0f32, f32::max);
    let mut worst = (0f32, String::new());
    for (name, want) in &g_ref {
        let got = &g_op[name];
        let scale = amax(want).max(1e-3 * global);
        let err = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() / scale;
        if err > worst.0 {
            worst = (err, name.clone());
        }
    }
    eprintln!("largest relative gradient difference {:.2e} ({})", worst.0, worst.1);
    assert!(worst.0 <= 1e-4, "{}: gradients differ by {:e} of their scale", worst.1, worst.0);
}

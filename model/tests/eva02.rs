//! Golden parity of the EVA02 tower with timm (`Eva`, configured like
//! `eva02_large_patch14_clip_336`, tiny random weights). Fixtures: model/tests/fixtures/eva02/,
//! written by tools/reference/make_eva02_fixtures.py.
//!
//! Every hidden state must match with max |ours - ref| <= 1e-4 * max |ref|; the measured errors
//! are printed (run with `--nocapture`).

use candle_core::{DType, Device, Tensor};
use griffon_model::eva02::{rope_tables, Eva02Config, Eva02Layout, Eva02Vision};
use griffon_model::loader::Checkpoint;
use griffon_model::resample::Interp;
use std::collections::HashMap;
use std::path::PathBuf;

mod common;
use common::assert_close;

fn dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eva02");
    assert!(
        d.join("golden.json").is_file() && d.join("golden.safetensors").is_file(),
        "EVA02 fixture {} is missing: run tools/reference/make_eva02_fixtures.py",
        d.display()
    );
    d
}

fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("golden.json")).unwrap()).unwrap()
}

fn golden() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join("golden.safetensors"), &Device::Cpu).unwrap()
}

fn config(m: &serde_json::Value) -> Eva02Config {
    let c = &m["config"];
    let u = |k: &str| c[k].as_u64().unwrap_or_else(|| panic!("golden.json: config.{k}")) as usize;
    let r = c["ref_feat_shape"].as_array().unwrap();
    assert_eq!(r[0], r[1], "square reference grid");
    Eva02Config {
        hidden_size: u("embed_dim"),
        intermediate_size: m["intermediate_size"].as_u64().unwrap() as usize,
        num_hidden_layers: u("depth"),
        num_attention_heads: u("num_heads"),
        image_size: u("img_size"),
        patch_size: u("patch_size"),
        layer_norm_eps: m["layer_norm_eps"].as_f64().unwrap(),
        rope_ref_grid: Some(r[0].as_u64().unwrap() as usize),
        rope_temperature: 10000.0,
    }
}

fn ckpt(weights: &str) -> Checkpoint {
    let d = dir();
    let f = d.join(format!("{weights}.safetensors"));
    assert!(f.is_file(), "EVA02 fixture {} is missing: run tools/reference/make_eva02_fixtures.py", f.display());
    Checkpoint::open_files(&d, &[f], &Device::Cpu, DType::F32).unwrap()
}

fn case<'a>(m: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    m["cases"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("case {name} missing"))
}

/// Runs one golden case with the given weights file, comparing every hidden state and the
/// select_layer -2 patch features.
fn check(name: &str, weights: &str, expect_layout: Eva02Layout) {
    let m = meta();
    let g = golden();
    let c = case(&m, name);
    let size = c["size"].as_u64().unwrap() as usize;
    let interp: Interp = c["interp"].as_str().unwrap().parse().unwrap();
    let states = c["states"].as_u64().unwrap() as usize;
    let cfg = config(&m);
    let ck = ckpt(weights);
    let tower = Eva02Vision::load(&ck.scope(""), &cfg, size, interp).unwrap();
    assert_eq!(tower.layout, expect_layout);
    assert_eq!(tower.num_patches(), (size / cfg.patch_size).pow(2));
    let gt = |k: &str| g.get(&format!("{name}.{k}")).unwrap_or_else(|| panic!("golden tensor {name}.{k} missing"));
    let pixels = gt("pixels");
    let hs = tower.hidden_states(pixels, states - 1).unwrap();
    assert_eq!(hs.len(), states);
    for (i, h) in hs.iter().enumerate() {
        assert_close(&format!("{name}/{weights} hidden_states[{i}]"), h, gt(&format!("hs{i}")));
    }
    let f = tower.patch_features(pixels, -2, false).unwrap();
    assert_close(&format!("{name}/{weights} patch_features(-2)"), &f, gt("feat_m2"));
    let last = tower.hidden_state(pixels, -1).unwrap();
    assert_close(&format!("{name}/{weights} hidden_state(-1)"), &last, gt(&format!("hs{}", states - 1)));
}

#[test]
fn native_timm_layout() {
    check("native56", "timm", Eva02Layout::Timm);
}

#[test]
fn native_evaclip_layout() {
    check("native56", "evaclip", Eva02Layout::EvaClip);
}

#[test]
fn upsampled_table_72() {
    check("interp72", "timm", Eva02Layout::Timm);
    check("interp72", "evaclip", Eva02Layout::EvaClip);
}

#[test]
fn downsampled_table_40() {
    check("interp40", "timm", Eva02Layout::Timm);
}

#[test]
fn fused_qkv() {
    check("fused56", "fused", Eva02Layout::Timm);
}

#[test]
fn load_upto_and_select_layer() {
    let m = meta();
    let g = golden();
    let cfg = config(&m);
    let ck = ckpt("timm");
    let tower = Eva02Vision::load_upto(&ck.scope(""), &cfg, 56, Interp::BicubicAa, 2).unwrap();
    let px = &g["native56.pixels"];
    assert_eq!(tower.resolve_layer(-2).unwrap(), 2);
    assert_eq!(tower.resolve_layer(0).unwrap(), 0);
    assert_close("load_upto(2) hidden_state(-2)", &tower.hidden_state(px, -2).unwrap(), &g["native56.hs2"]);
    assert_close("load_upto(2) hidden_state(0)", &tower.hidden_state(px, 0).unwrap(), &g["native56.hs0"]);
    let e = tower.hidden_state(px, -1).unwrap_err().to_string();
    assert!(e.contains("not loaded"), "{e}");
    let e = tower.resolve_layer(-5).unwrap_err().to_string();
    assert!(e.contains("out of range"), "{e}");
    let e = tower.hidden_state(&Tensor::zeros((1, 3, 48, 48), DType::F32, &Device::Cpu).unwrap(), -2).unwrap_err();
    assert!(e.to_string().contains("[B, 3, 56, 56]"), "{e}");
    assert!(Eva02Vision::load(&ck.scope(""), &cfg, 60, Interp::BicubicAa).is_err(), "60 is not a multiple of 8");
}

fn tensors(weights: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join(format!("{weights}.safetensors")), &Device::Cpu).unwrap()
}

fn load_err(t: HashMap<String, Tensor>) -> String {
    let cfg = config(&meta());
    let ck = Checkpoint::from_tensors(t, &Device::Cpu, DType::F32).unwrap();
    match Eva02Vision::load(&ck.scope(""), &cfg, 56, Interp::BicubicAa) {
        Ok(_) => panic!("load should fail"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unmapped_tensor_is_named() {
    let mut t = tensors("timm");
    t.insert("blocks.1.attn.bogus.weight".into(), Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap());
    let e = load_err(t);
    eprintln!("{e}");
    assert!(e.contains("blocks.1.attn.bogus.weight") && e.contains("does not map"), "{e}");

    let mut t = tensors("evaclip");
    t.insert("visual.blocks.0.mlp.w12.weight".into(), Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap());
    let e = load_err(t);
    eprintln!("{e}");
    assert!(e.contains("visual.blocks.0.mlp.w12.weight"), "{e}");

    // A register token would shift the prefix count: refused by name.
    let mut t = tensors("timm");
    t.insert("reg_token".into(), Tensor::zeros((1, 1, 32), DType::F32, &Device::Cpu).unwrap());
    let e = load_err(t);
    assert!(e.contains("reg_token"), "{e}");

    // A missing tensor is named too.
    let mut t = tensors("evaclip");
    t.remove("visual.blocks.2.attn.v_bias");
    let e = load_err(t);
    eprintln!("{e}");
    assert!(e.contains("visual.blocks.2.attn.v_bias"), "{e}");

    // No tower at all.
    let e = load_err(HashMap::from([("foo".to_string(), Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap())]));
    assert!(e.contains("blocks.0.mlp.fc1_g.weight"), "{e}");
}

/// An EVA-CLIP checkpoint stores the shared rope module's buffers in every block too
/// (`visual.blocks.{i}.attn.rope.freqs_cos`): they load (and are recomputed) as the root's do.
#[test]
fn per_block_rope_buffers_load() {
    let cfg = config(&meta());
    let mut t = tensors("evaclip");
    for i in 0..cfg.num_hidden_layers {
        for b in ["freqs_cos", "freqs_sin"] {
            t.insert(
                format!("visual.blocks.{i}.attn.rope.{b}"),
                Tensor::zeros((16, 8), DType::F32, &Device::Cpu).unwrap(),
            );
        }
    }
    let ck = Checkpoint::from_tensors(t, &Device::Cpu, DType::F32).unwrap();
    Eva02Vision::load(&ck.scope(""), &cfg, 56, Interp::BicubicAa).unwrap();
}

#[test]
fn rope_tables_layout() {
    // head_dim 8 -> 2 bands [1, 1/100]; grid 2 with reference 4: coordinates {0, 2}.
    let (sin, cos) = rope_tables(8, 2, Some(4), 10000.0);
    // token 3 = (row 1, col 1): angles [2, 0.02, 2, 0.02], each repeated in place.
    let t = &sin[3 * 8..4 * 8];
    let want =
        [2f32.sin(), 2f32.sin(), 0.02f32.sin(), 0.02f32.sin(), 2f32.sin(), 2f32.sin(), 0.02f32.sin(), 0.02f32.sin()];
    for (a, b) in t.iter().zip(want) {
        assert!((a - b).abs() < 1e-6, "{t:?}");
    }
    // token 1 = (row 0, col 1): row angles 0, column angles [2, 0.02].
    let t = &cos[8..16];
    assert!((t[0] - 1.0).abs() < 1e-7 && (t[3] - 1.0).abs() < 1e-7, "{t:?}");
    assert!((t[4] - 2f32.cos()).abs() < 1e-6 && (t[6] - 0.02f32.cos()).abs() < 1e-6, "{t:?}");
}

/// The fixture discriminates the rope frequency grid: raw indices instead of timm's
/// `ref_feat_shape` rescaling give a block-1 output far outside the tolerance.
#[test]
fn wrong_rope_grid_is_detected() {
    let m = meta();
    let g = golden();
    let mut cfg = config(&m);
    cfg.rope_ref_grid = None;
    let ck = ckpt("timm");
    let tower = Eva02Vision::load(&ck.scope(""), &cfg, 56, Interp::BicubicAa).unwrap();
    let h1 = tower.hidden_state(&g["native56.pixels"], 1).unwrap();
    let want = &g["native56.hs1"];
    let err: f32 = (&h1 - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
    let scale: f32 = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
    eprintln!("rope without ref grid: relative error {:.3e}", err / scale);
    assert!(err / scale > 1e-3, "the fixture does not exercise the rope grid");
}

/// `layout::eva02_layout` names exactly what the loader reads (random weights load and run).
#[test]
fn random_layout_loads() {
    let cfg = config(&meta());
    let layout = griffon_model::layout::eva02_layout("t", &cfg);
    let t = griffon_model::layout::random_tensors(&layout, false, DType::F32, &Device::Cpu, 1).unwrap();
    let ck = Checkpoint::from_tensors(t, &Device::Cpu, DType::F32).unwrap();
    let tower = Eva02Vision::load(&ck.scope("t"), &cfg, 64, Interp::Bilinear).unwrap();
    let f = tower.patch_features(&Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu).unwrap(), -2, false).unwrap();
    assert_eq!(f.dims(), &[1, 64, 32]);
}

// ---- Griffon::load with an EVA02 main tower -------------------------------------------------

/// Builds a Griffon checkpoint from the gemma2_interp72 parity fixture (LLM, tokenizer) with the
/// tiny EVA02 tower under `model.vision_tower.vision_tower` (names: `tower_file` with `rename`)
/// and a projector for its width; `tower_cfg` is written to the `mm_vision_tower` folder.
fn griffon_with_eva(
    tower_file: &str,
    rename: &dyn Fn(&str) -> String,
    tower_cfg: Option<serde_json::Value>,
) -> tempfile::TempDir {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity/gemma2_interp72/ckpt");
    assert!(src.join("config.json").is_file(), "parity fixture {} is missing", src.display());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), out.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["mm_vision_tower"] = "checkpoints/eva02-tiny-patch8-56".into();
    cfg["mm_hidden_size"] = 32.into();
    std::fs::write(out.join("config.json"), serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    if let Some(tc) = tower_cfg {
        std::fs::create_dir(out.join("eva02-tiny-patch8-56")).unwrap();
        std::fs::write(out.join("eva02-tiny-patch8-56/config.json"), serde_json::to_string_pretty(&tc).unwrap())
            .unwrap();
    }
    let base = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut t: HashMap<String, Tensor> =
        base.into_iter().filter(|(k, _)| !k.starts_with("model.vision_tower.")).collect();
    let h = t["model.mm_projector.conv.bias"].dim(0).unwrap();
    t.insert("model.mm_projector.conv.weight".into(), Tensor::randn(0f32, 0.05, (h, 32, 3, 3), &Device::Cpu).unwrap());
    for (k, v) in tensors(tower_file) {
        t.insert(format!("model.vision_tower.vision_tower.{}", rename(&k)), v);
    }
    candle_core::safetensors::save(&t, out.join("model.safetensors")).unwrap();
    tmp
}

fn tiny_tower_config() -> serde_json::Value {
    let m = meta();
    let c = &m["config"];
    serde_json::json!({
        "architecture": "eva02_tiny_fixture",
        "embed_dim": c["embed_dim"], "depth": c["depth"], "num_heads": c["num_heads"],
        "img_size": c["img_size"], "patch_size": c["patch_size"], "mlp_ratio": c["mlp_ratio"],
        "ref_feat_shape": c["ref_feat_shape"],
    })
}

fn check_griffon(dir: &std::path::Path) {
    use griffon_model::griffon::{Griffon, LoadOptions};
    let opts = LoadOptions { image_size: Some(72), pos_interp: Interp::BicubicAa, ..Default::default() };
    let m = Griffon::load(dir, &opts).unwrap();
    assert!(m.tower.is_eva02());
    assert_eq!(m.tower.cfg.hidden_size, 32);
    assert_eq!(m.image_size(), 72);
    assert_eq!(m.tower.num_patches(), 81);
    let g = golden();
    let px = &g["interp72.pixels"];
    let f = m.tower.patch_features(px, m.config.mm.select_layer, m.config.mm.keep_cls).unwrap();
    assert_close("Griffon EVA02 tower features(-2) at 72", &f, &g["interp72.feat_m2"]);
    let tokens = m.encode_image(px).unwrap();
    assert_eq!(tokens.dims(), &[1, 25, m.config.llm.hidden_size()]);
}

#[test]
fn griffon_loads_eva02_tower_timm_names_with_config() {
    let tmp = griffon_with_eva("timm", &|k| k.to_string(), Some(tiny_tower_config()));
    check_griffon(tmp.path());
}

#[test]
fn griffon_loads_eva02_tower_evaclip_names_with_config() {
    let tmp = griffon_with_eva("evaclip", &|k| k.to_string(), Some(tiny_tower_config()));
    check_griffon(tmp.path());
}

/// Without a tower config the tower is recognised by its tensor names and inferred; the tiny
/// tower's width (32) is not a multiple of EVA02's head_dim 64, so inference must say so.
#[test]
fn griffon_eva02_without_config_is_detected_by_names() {
    use griffon_model::griffon::{Griffon, LoadOptions};
    let tmp = griffon_with_eva("timm", &|k| k.to_string(), None);
    let e = match Griffon::load(tmp.path(), &LoadOptions::default()) {
        Ok(_) => panic!("inference should refuse width 32"),
        Err(e) => e.to_string(),
    };
    eprintln!("{e}");
    assert!(e.contains("EVA02") && e.contains("head_dim 64"), "{e}");
}

#[test]
fn config_forms() {
    use griffon_model::eva02::{is_eva_config, parse_eva02_config};
    let f = std::path::Path::new("cfg.json");
    // timm hub config: the architecture name gives the preset.
    let v = serde_json::json!({"architecture": "eva02_large_patch14_clip_336", "num_classes": 768});
    assert!(is_eva_config(&v));
    assert_eq!(parse_eva02_config(&v, f).unwrap(), Eva02Config::large_patch14_336());
    // EVA-CLIP model config (EVA02-CLIP-L-14-336.json style).
    let v = serde_json::json!({"embed_dim": 768, "vision_cfg": {"image_size": 336, "layers": 24, "width": 1024,
        "head_width": 64, "mlp_ratio": 2.6667, "patch_size": 14, "eva_model_name": "eva-clip-l-14-336",
        "pt_hw_seq_len": 16, "rope": true, "model_name": "EVA02-CLIP-L-14-336"}});
    assert!(is_eva_config(&v));
    let c = parse_eva02_config(&v, f).unwrap();
    assert_eq!((c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size), (1024, 24, 16, 2730));
    assert_eq!((c.image_size, c.patch_size, c.rope_ref_grid), (336, 14, Some(16)));
    // A CLIP config is not EVA.
    assert!(!is_eva_config(&serde_json::json!({"model_type": "clip_vision_model", "hidden_size": 1024})));
    // Missing keys are named.
    let e =
        parse_eva02_config(&serde_json::json!({"model_type": "eva02", "embed_dim": 64}), f).unwrap_err().to_string();
    assert!(e.contains("cfg.json") && e.contains("depth"), "{e}");
}

/// bf16 weights and activations run (rope in f32) and stay near the f32 reference.
#[test]
fn bf16_runs_close() {
    let m = meta();
    let g = golden();
    let cfg = config(&m);
    let d = dir();
    let ck = Checkpoint::open_files(&d, &[d.join("timm.safetensors")], &Device::Cpu, DType::BF16).unwrap();
    let tower = Eva02Vision::load(&ck.scope(""), &cfg, 56, Interp::BicubicAa).unwrap();
    let h = tower.hidden_state(&g["native56.pixels"], -1).unwrap();
    assert_eq!(h.dtype(), DType::BF16);
    let want = &g["native56.hs3"];
    let h = h.to_dtype(DType::F32).unwrap();
    let err: f32 = (&h - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
    let scale: f32 = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
    eprintln!("bf16 hidden_states[3]: relative {:.3e}", err / scale);
    assert!(err / scale < 5e-2, "bf16 relative error {}", err / scale);
}

/// The trainer's path (load_trainable + differentiable ops): every EVA02 tower tensor the forward
/// pass reads gets a finite, non-zero gradient.
#[test]
fn eva02_tower_is_trainable() {
    use griffon_model::griffon::{Griffon, LoadOptions};
    griffon_model::nn::set_differentiable(true);
    let tmp = griffon_with_eva("timm", &|k| k.to_string(), Some(tiny_tower_config()));
    let opts = LoadOptions { image_size: Some(72), pos_interp: Interp::BicubicAa, ..Default::default() };
    let (m, vars) = Griffon::load_trainable(
        tmp.path(),
        &opts,
        Box::new(|n: &str| n.starts_with("model.vision_tower.") || n.starts_with("model.mm_projector.")),
    )
    .unwrap();
    let px = &golden()["interp72.pixels"];
    let loss = m.encode_image(px).unwrap().sqr().unwrap().mean_all().unwrap();
    let grads = loss.backward().unwrap();
    let tower_vars: Vec<_> = vars.iter().filter(|(n, _)| n.starts_with("model.vision_tower.")).collect();
    assert!(tower_vars.len() > 10, "{} tower tensors trainable", tower_vars.len());
    for (name, v) in &vars {
        // at an interpolated size the stored position table is resized on the host: not trainable
        if name.ends_with("pos_embed") {
            continue;
        }
        let g = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient"));
        let max: f32 = g.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
        assert!(max.is_finite() && max > 0.0, "{name}: gradient max {max}");
    }
}

/// The paper configuration from public parts: an HF Llama folder + an EVA02 tower folder ->
/// a Griffon checkpoint whose stored position table is baked at 72 px (bicubic-aa, as timm
/// resamples); it loads natively at 72 and gives timm's features there.
#[test]
fn assemble_paper_configuration_from_parts() {
    use griffon_model::assemble::{assemble, AssembleOptions};
    use griffon_model::griffon::{Griffon, LoadOptions};
    let llm = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity/llama2_bf16/ckpt");
    let tmp = tempfile::tempdir().unwrap();
    let vision = tmp.path().join("eva");
    std::fs::create_dir_all(&vision).unwrap();
    std::fs::write(vision.join("config.json"), serde_json::to_string_pretty(&tiny_tower_config()).unwrap()).unwrap();
    candle_core::safetensors::save(&tensors("timm"), vision.join("model.safetensors")).unwrap();
    let out = tmp.path().join("griffon-v2-tiny");
    assemble(&AssembleOptions {
        llm: llm.clone(),
        vision,
        out: out.clone(),
        projector: "conv_reduce".into(),
        image_size: Some(72),
        pos_interp: Interp::BicubicAa,
        seed: 0,
    })
    .unwrap();
    let m = Griffon::load(&out, &LoadOptions::default()).unwrap();
    assert!(m.tower.is_eva02());
    assert_eq!(m.image_size(), 72, "the table is stored at 72 px");
    let g = golden();
    let f = m.tower.patch_features(&g["interp72.pixels"], -2, false).unwrap();
    assert_close("assembled EVA02 tower features(-2) at 72", &f, &g["interp72.feat_m2"]);
    assert_eq!(m.template, griffon_core::Template::LlavaLlama2);
    // the LLM is carried over unchanged
    let a = Checkpoint::open(&llm, &Device::Cpu, DType::F32).unwrap();
    let b = Checkpoint::open(&out, &Device::Cpu, DType::F32).unwrap();
    let n = "model.layers.1.mlp.up_proj.weight";
    let diff = (a.get_unchecked(n).unwrap() - b.get_unchecked(n).unwrap()).unwrap();
    let d: f32 = diff.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
    assert_eq!(d, 0.0);
    // a timm hub config (the architecture and `model_args`, no top-level patch size): the new
    // size is written where the loader reads it, in `model_args` beside its old `img_size`
    let hub = tmp.path().join("eva-hub");
    std::fs::create_dir_all(&hub).unwrap();
    let mut args = tiny_tower_config();
    args.as_object_mut().unwrap().remove("architecture");
    let hub_cfg = serde_json::json!({"architecture": "eva02_tiny_fixture", "model_args": args});
    std::fs::write(hub.join("config.json"), serde_json::to_string_pretty(&hub_cfg).unwrap()).unwrap();
    candle_core::safetensors::save(&tensors("timm"), hub.join("model.safetensors")).unwrap();
    let out_hub = tmp.path().join("griffon-v2-tiny-hub");
    assemble(&AssembleOptions {
        llm: llm.clone(),
        vision: hub,
        out: out_hub.clone(),
        projector: "conv_reduce".into(),
        image_size: Some(72),
        pos_interp: Interp::BicubicAa,
        seed: 0,
    })
    .unwrap();
    let m = Griffon::load(&out_hub, &LoadOptions::default()).unwrap();
    assert_eq!(m.image_size(), 72, "the hub config's model_args took the new size");
    let f = m.tower.patch_features(&g["interp72.pixels"], -2, false).unwrap();
    assert_close("assembled EVA02 tower (timm hub config) features(-2) at 72", &f, &g["interp72.feat_m2"]);
    // a bf16 tower: its other weights stay bf16, the resized table is stored in f32 (computed in
    // f32 as the load-time resize; rounded to bf16 it would answer differently from
    // `--image-size` on the source)
    let vision16 = tmp.path().join("eva16");
    std::fs::create_dir_all(&vision16).unwrap();
    std::fs::write(vision16.join("config.json"), serde_json::to_string_pretty(&tiny_tower_config()).unwrap()).unwrap();
    let bf: HashMap<String, Tensor> =
        tensors("timm").into_iter().map(|(k, v)| (k, v.to_dtype(DType::BF16).unwrap())).collect();
    candle_core::safetensors::save(&bf, vision16.join("model.safetensors")).unwrap();
    let out16 = tmp.path().join("griffon-v2-tiny-bf16");
    assemble(&AssembleOptions {
        llm,
        vision: vision16,
        out: out16.clone(),
        projector: "conv_reduce".into(),
        image_size: Some(72),
        pos_interp: Interp::BicubicAa,
        seed: 0,
    })
    .unwrap();
    let stored = candle_core::safetensors::load(out16.join("model.safetensors"), &Device::Cpu).unwrap();
    let tower: Vec<_> = stored.iter().filter(|(n, _)| n.starts_with("model.vision_tower.")).collect();
    let (table, rest): (Vec<_>, Vec<_>) = tower.into_iter().partition(|(n, _)| n.ends_with("pos_embed"));
    assert_eq!(table.len(), 1, "one position table");
    assert_eq!(table[0].1.dtype(), DType::F32, "{} is stored in f32", table[0].0);
    assert!(
        !rest.is_empty() && rest.iter().all(|(_, t)| t.dtype() == DType::BF16),
        "the other tower weights stay bf16"
    );
    // refused: a non-empty output folder (nothing overwritten), and a Griffon checkpoint given as
    // the tower (its table is not a tower tensor: a model without a tower was written)
    let opts = |vision: PathBuf, out: PathBuf| AssembleOptions {
        llm: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity/llama2_bf16/ckpt"),
        vision,
        out,
        projector: "conv_reduce".into(),
        image_size: None,
        pos_interp: Interp::BicubicAa,
        seed: 0,
    };
    let before = std::fs::read(out16.join("model.safetensors")).unwrap();
    let e = assemble(&opts(tmp.path().join("eva16"), out16.clone())).unwrap_err().to_string();
    assert!(e.contains("exists and is not empty"), "{e}");
    assert_eq!(std::fs::read(out16.join("model.safetensors")).unwrap(), before);
    let e = assemble(&opts(out16, tmp.path().join("from-griffon"))).unwrap_err().to_string();
    assert!(e.contains("no vision-tower position table") && e.contains("--vision must be"), "{e}");
}

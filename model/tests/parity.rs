//! Golden parity with the PyTorch reference (transformers + torch, f32, eager attention).
//! Fixtures: model/tests/fixtures/parity/<case>/, written by tools/reference/make_parity_fixtures.py.
//!
//! Tolerances: every f32 tensor must match with max |ours - ref| <= 1e-4 * max |ref| (the
//! issue's bound: 1e-4 of the tensor's scale); greedy token ids and decoded text must be identical.
//! The measured errors are printed (run with `--nocapture`).

use candle_core::{DType, Device, Tensor};
use griffon_model::generate::{generate, SamplingOptions, StopReason};
use griffon_model::griffon::{Griffon, LoadOptions, MAIN_TOWER_PREFIX};
use griffon_model::loader::Checkpoint;
use griffon_model::resample::Interp;
use std::collections::HashMap;
use std::path::PathBuf;

mod common;
use common::assert_close;

fn case_dir(case: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity").join(case);
    assert!(
        d.join("golden.json").is_file(),
        "parity fixture {} is missing: run tools/reference/make_parity_fixtures.py",
        d.display()
    );
    d
}

struct Case {
    dir: PathBuf,
    /// The checkpoint folder: the fixture's `ckpt/`, or a copy resized to the golden's size
    /// (then loaded without a size override).
    ckpt: PathBuf,
    resized: bool,
    meta: serde_json::Value,
    golden: HashMap<String, Tensor>,
}

fn load_case(case: &str) -> Case {
    let dir = case_dir(case);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    let golden = candle_core::safetensors::load(dir.join("golden.safetensors"), &Device::Cpu).unwrap();
    Case { ckpt: dir.join("ckpt"), resized: false, dir, meta, golden }
}

impl Case {
    fn g(&self, name: &str) -> &Tensor {
        self.golden.get(name).unwrap_or_else(|| panic!("golden tensor {name} missing in {}", self.dir.display()))
    }
    fn usize(&self, key: &str) -> usize {
        self.meta[key].as_u64().unwrap_or_else(|| panic!("golden.json: {key}")) as usize
    }
    fn str(&self, key: &str) -> &str {
        self.meta[key].as_str().unwrap_or_else(|| panic!("golden.json: {key}"))
    }
    fn ids(&self, key: &str) -> Vec<i64> {
        self.meta[key].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect()
    }
    fn model(&self) -> Griffon {
        let opts = if self.resized {
            LoadOptions::default()
        } else {
            LoadOptions {
                image_size: Some(self.usize("image_size")),
                pos_interp: self.str("pos_interp").parse::<Interp>().unwrap(),
                ..Default::default()
            }
        };
        Griffon::load(&self.ckpt, &opts).unwrap()
    }
}

fn check_case(case: &str) {
    check_loaded(&load_case(case));
}

fn check_loaded(c: &Case) {
    let case = c.dir.file_name().unwrap().to_str().unwrap();
    let m = c.model();

    // Preprocessing: our PIL-bilinear resize + normalisation of the same file.
    let pixels = m.image_pixels(&c.dir.join("image.png")).unwrap();
    assert_close(&format!("{case} pixels"), &pixels, c.g("pixels"));

    // Every hidden state of the main tower, from the reference's pixels.
    let gpix = c.g("pixels").unsqueeze(0).unwrap();
    let want_hs = c.g("vision_hidden_states");
    let n_states = want_hs.dim(0).unwrap();
    // the model loads only the layers it runs (up to select_layer); check every layer with a full tower
    let ck = Checkpoint::open(&c.ckpt, &Device::Cpu, DType::F32).unwrap();
    let full = griffon_model::clip::ClipVision::load(
        &ck.scope(MAIN_TOWER_PREFIX),
        &m.tower.cfg,
        m.image_size(),
        c.str("pos_interp").parse().unwrap(),
    )
    .unwrap();
    let hs = full.hidden_states(&gpix, n_states - 1).unwrap();
    assert_eq!(hs.len(), n_states);
    for (i, h) in hs.iter().enumerate() {
        assert_close(&format!("{case} hidden_states[{i}]"), h, &want_hs.get(i).unwrap());
    }
    // the model's own tower stops at its select layer (-2 in every fixture): asking it for every
    // state is an error, not a shorter list
    let e = m.tower.hidden_states(&gpix, n_states - 1).unwrap_err().to_string();
    assert!(e.contains("not loaded"), "{case}: {e}");

    // Projector output (select layer -2, CLS dropped).
    let proj = m.encode_image(&gpix).unwrap();
    assert_close(&format!("{case} projector"), &proj, c.g("projector_out"));

    // Region token.
    let regions: Vec<Tensor> = if let Some(want) = c.golden.get("region_token") {
        let rpix = m.region_pixels(&c.dir.join("region.png")).unwrap();
        assert_close(&format!("{case} region pixels"), &rpix, c.g("region_pixels"));
        let tok = m.encode_region(&c.g("region_pixels").unsqueeze(0).unwrap()).unwrap();
        assert_close(&format!("{case} region token"), &tok.flatten_all().unwrap(), want);
        vec![c.g("region_pixels").clone()]
    } else {
        vec![]
    };

    // Prompt assembly: identical input_ids (with -200 at placeholders).
    let prompt = m.render_prompt(c.str("user_prompt"), None);
    assert_eq!(prompt, c.str("rendered_prompt"));
    let prepared = m.prepare(&prompt, &[c.g("pixels").clone()], &regions).unwrap();
    assert_eq!(prepared.input_ids, c.ids("input_ids"), "{case}: input_ids");
    assert_eq!(prepared.embeds.dim(1).unwrap(), c.usize("sequence_length"));

    // Prefill logits at every position.
    let mut cache = m.llm.new_cache();
    let logits = m.llm.forward_embeds(&prepared.embeds, &mut cache, true).unwrap();
    assert_close(&format!("{case} prefill logits"), &logits.squeeze(0).unwrap(), c.g("prefill_logits"));

    // Greedy continuation: identical ids and text; token probabilities close.
    let stop: Vec<u32> = c.ids("stop_ids").iter().map(|&x| x as u32).collect();
    assert_eq!(m.stop_ids(m.template), stop, "{case}: stop ids");
    let opts = SamplingOptions { max_new_tokens: c.usize("max_new_tokens"), ..Default::default() };
    let gen = generate(&m.llm, &prepared.embeds, &stop, &opts, |_| {}).unwrap();
    let want_ids: Vec<u32> = c.ids("greedy_ids").iter().map(|&x| x as u32).collect();
    assert_eq!(gen.tokens, want_ids, "{case}: greedy ids");
    if gen.tokens.len() < opts.max_new_tokens {
        assert_eq!(gen.stop, StopReason::StopToken);
    }
    let text = m.tokenizer.decode(&gen.tokens, true).unwrap();
    assert_eq!(text.trim(), c.str("greedy_text"), "{case}: greedy text");
    let want_p: Vec<f32> =
        c.meta["greedy_probs"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let perr = gen.probs.iter().zip(&want_p).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("{case} greedy token probabilities: max abs err {perr:.3e}");
    assert!(perr <= 1e-4, "{case}: token probabilities differ by {perr}");

    // End to end from the files, through the public answer path.
    let mut images = vec![pixels];
    images.truncate(1);
    let region_files: Vec<Tensor> = c
        .golden
        .get("region_token")
        .map(|_| vec![m.region_pixels(&c.dir.join("region.png")).unwrap()])
        .unwrap_or_default();
    let prepared = m.prepare(&prompt, &images, &region_files).unwrap();
    let ans = m.answer(&prepared, &stop, &opts).unwrap();
    assert_eq!(ans.text, c.str("greedy_text"), "{case}: end-to-end text");
}

#[test]
fn gemma2_with_region_sliding_window_and_sharded_checkpoint() {
    check_case("gemma2_region");
}

#[test]
fn gemma2_at_interpolated_resolution() {
    check_case("gemma2_interp72");
}

/// `griffon resize-tower`: the fixture's checkpoint resized to the golden's size and stored loads
/// without a size override and matches the reference, which resized the table at load (every
/// hidden state, projector, logits, greedy answer); the copy names its new tower folder.
#[test]
fn resized_tower_checkpoint_matches_the_reference_natively() {
    let mut c = load_case("gemma2_interp72");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("resized");
    let interp = c.str("pos_interp").parse::<Interp>().unwrap();
    let r = griffon_model::assemble::resize_main_tower(&c.ckpt, &out, c.usize("image_size"), interp).unwrap();
    assert_eq!((r.grid_from, r.grid_to), (7, 9));
    assert_eq!(r.table, format!("{MAIN_TOWER_PREFIX}.embeddings.position_embedding.weight"));
    assert_eq!(r.tower_folder, out.join("clip-vit-tiny-patch8-to-56_to_72"));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert!(cfg["mm_vision_tower"].as_str().unwrap().ends_with("clip-vit-tiny-patch8-to-56_to_72"), "{cfg}");
    let tcfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(r.tower_folder.join("config.json")).unwrap()).unwrap();
    assert_eq!(tcfg["image_size"], 72);
    // every other tensor is the source's, bit for bit
    let before = candle_core::safetensors::load(c.ckpt.join("model.safetensors"), &Device::Cpu).unwrap();
    let after = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(before.len(), after.len());
    for (name, t) in &before {
        if name != &r.table {
            let d = (t - &after[name]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(d, 0.0, "{name} changed");
        }
    }
    assert_eq!(after[&r.table].dims(), &[82, before[&r.table].dim(1).unwrap()]);
    c.ckpt = out.clone();
    c.resized = true;
    assert_eq!(c.model().image_size(), 72);
    check_loaded(&c);
    // a second resize of the copy: the folder suffix is replaced, not stacked; a trainer's dense
    // head comes along, the records of the source's training do not; bad sizes are errors
    std::fs::write(out.join("dense_head.safetensors"), b"head").unwrap();
    std::fs::write(out.join("trainer_state.json"), b"{}").unwrap();
    std::fs::write(out.join("optimizer.safetensors"), b"state").unwrap();
    std::fs::create_dir(out.join("metrics")).unwrap();
    std::fs::write(out.join("metrics/stage2.jsonl"), b"{}").unwrap();
    let again = tmp.path().join("again");
    let r2 = griffon_model::assemble::resize_main_tower(&out, &again, 56, interp).unwrap();
    assert_eq!(r2.tower_folder, again.join("clip-vit-tiny-patch8-to-56_to_56"));
    assert_eq!(std::fs::read(again.join("dense_head.safetensors")).unwrap(), b"head");
    for gone in ["trainer_state.json", "optimizer.safetensors", "metrics", "clip-vit-tiny-patch8-to-56_to_72"] {
        assert!(!again.join(gone).exists(), "{gone} was copied");
    }
    let e = griffon_model::assemble::resize_main_tower(&out, &tmp.path().join("bad"), 60, interp).unwrap_err();
    assert!(e.to_string().contains("not a positive multiple of the patch size 8"), "{e}");
    let e = griffon_model::assemble::resize_main_tower(&out, &again, 64, interp).unwrap_err();
    assert!(e.to_string().contains("exists and is not empty"), "{e}");
}

#[test]
fn qwen2_chatml_without_bos() {
    check_case("qwen2");
}

/// A tied checkpoint (Qwen2's here) that also stores an `lm_head.weight` runs with the embedding
/// table as its head, as HF ties them after loading: a stale stored copy (zeros here, which would
/// make every logit 0) is not used.
#[test]
fn tied_checkpoint_ignores_a_stored_lm_head() {
    let mut c = load_case("qwen2");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.ckpt.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["tie_word_embeddings"], true, "the qwen2 fixture is tied");
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("qwen2");
    common::copy_dir(&c.ckpt, &ckpt);
    let f = ckpt.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&f, &Device::Cpu).unwrap();
    let embed = t.get("model.embed_tokens.weight").expect("the fixture's embedding table").clone();
    t.insert("lm_head.weight".into(), embed.zeros_like().unwrap());
    candle_core::safetensors::save(&t, &f).unwrap();
    c.ckpt = ckpt;
    check_loaded(&c);
}

#[test]
fn llama2_bf16_checkpoint_inferred_tower() {
    let c = load_case("llama2_bf16");
    let m = c.model();
    assert_eq!(m.tower_source, griffon_model::config::TowerSource::Inferred);
    check_case("llama2_bf16");
}

/// The main tower at other sizes, with every position-table interpolation.
#[test]
fn tower_hidden_states_at_interpolated_sizes() {
    let dir = case_dir("gemma2_region");
    let goldens = candle_core::safetensors::load(dir.join("tower_interp.safetensors"), &Device::Cpu).unwrap();
    let ck = Checkpoint::open(&dir.join("ckpt"), &Device::Cpu, DType::F32).unwrap();
    let cfg_file = dir.join("ckpt/clip-vit-tiny-patch8-to-56/config.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_file).unwrap()).unwrap();
    let cfg = griffon_model::clip::parse_clip_config(&v, &cfg_file).unwrap();
    let mut keys: Vec<&String> = goldens.keys().filter(|k| !k.ends_with("_pixels")).collect();
    keys.sort();
    assert_eq!(keys.len(), 6, "expected six size/mode goldens, got {keys:?}");
    for key in keys {
        let (size, mode) = key.split_once('_').unwrap();
        let size: usize = size.parse().unwrap();
        let interp: Interp = mode.parse().unwrap();
        let tower = griffon_model::clip::ClipVision::load(&ck.scope(MAIN_TOWER_PREFIX), &cfg, size, interp).unwrap();
        let px = goldens[&format!("{key}_pixels")].unsqueeze(0).unwrap();
        let want = &goldens[key];
        let hs = tower.hidden_states(&px, want.dim(0).unwrap() - 1).unwrap();
        for (i, h) in hs.iter().enumerate() {
            assert_close(&format!("tower {key} hidden_states[{i}]"), h, &want.get(i).unwrap());
        }
    }
}

/// Every projector kind against the reference modules (conv_reduce, conv_reduce_wo_pad, linear,
/// mlp2x_gelu, mlp3x_gelu) on the same random features.
#[test]
fn projectors_match_reference() {
    use griffon_model::config::ProjectorType;
    use griffon_model::projector::Projector;
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity/projectors.safetensors");
    assert!(path.is_file(), "fixture {} is missing: run tools/reference/make_parity_fixtures.py", path.display());
    let all = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let x = &all["input"];
    let (cin, h) = (x.dim(2).unwrap(), all["conv_reduce/output"].dim(2).unwrap());
    for kind in ["conv_reduce", "conv_reduce_wo_pad", "linear", "mlp2x_gelu", "mlp3x_gelu"] {
        let prefix = format!("{kind}/");
        let weights: HashMap<String, Tensor> = all
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(&prefix).filter(|k| k.starts_with("model.")).map(|k| (k.to_string(), v.clone()))
            })
            .collect();
        let ck = Checkpoint::from_tensors(weights, &Device::Cpu, DType::F32).unwrap();
        let p = Projector::load(&ck.scope("model.mm_projector"), &ProjectorType::parse(kind).unwrap(), cin, h).unwrap();
        let y = p.forward(x).unwrap();
        assert_eq!(y.dim(1).unwrap(), p.out_tokens(x.dim(1).unwrap()), "{kind}: token count");
        assert_close(&format!("projector {kind}"), &y, &all[&format!("{kind}/output")]);
    }
}

/// --vision-config: an explicit tower config overrides the checkpoint's resolution.
#[test]
fn vision_config_override() {
    let dir = case_dir("llama2_bf16");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = serde_json::json!({"hidden_size": 128, "intermediate_size": 160, "num_hidden_layers": 3,
        "num_attention_heads": 2, "image_size": 48, "patch_size": 8, "hidden_act": "quick_gelu"});
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    let opts = LoadOptions { vision_config: Some(tmp.path().to_path_buf()), ..Default::default() };
    let m = Griffon::load(&dir.join("ckpt"), &opts).unwrap();
    assert!(matches!(m.tower_source, griffon_model::config::TowerSource::Override(_)));
    // a wrong override is reported against the tensors
    let bad = serde_json::json!({"hidden_size": 128, "intermediate_size": 160, "num_hidden_layers": 3,
        "num_attention_heads": 2, "image_size": 56, "patch_size": 8});
    std::fs::write(tmp.path().join("config.json"), bad.to_string()).unwrap();
    let e = Griffon::load(&dir.join("ckpt"), &opts).err().expect("must fail").to_string();
    assert!(e.contains("position_embedding") && e.contains("image_size 56"), "{e}");
}

/// Tiling (the resolution study's patch-partition baseline): a 2x2-tiled image gives the tokens
/// of its four tiles encoded one by one, row-major, and the prompt makes room for all of them.
#[test]
fn tiled_input_is_tiles_encoded_separately() {
    let dir = case_dir("gemma2_region").join("ckpt");
    let direct = Griffon::load(&dir, &LoadOptions::default()).unwrap();
    let tiled = Griffon::load(&dir, &LoadOptions { tiles: Some(2), ..Default::default() }).unwrap();
    let s = direct.image_size();
    assert_eq!(tiled.image_size(), 2 * s);
    assert_eq!(tiled.image_tokens(), 4 * direct.image_tokens());
    let px = Tensor::randn(0f32, 1.0, (1, 3, 2 * s, 2 * s), &Device::Cpu).unwrap();
    let got = tiled.encode_image(&px).unwrap();
    let mut parts = Vec::new();
    for ty in 0..2 {
        for tx in 0..2 {
            let tile = px.narrow(2, ty * s, s).unwrap().narrow(3, tx * s, s).unwrap().contiguous().unwrap();
            parts.push(direct.encode_image(&tile).unwrap());
        }
    }
    let want = Tensor::cat(&parts, 1).unwrap();
    assert_close("tiled tokens", &got, &want);
    let img = tiled.image_pixels(&case_dir("gemma2_region").join("image.png")).unwrap();
    let r = tiled.region_pixels(&case_dir("gemma2_region").join("region.png")).unwrap();
    let p = tiled.prepare(&tiled.render_prompt("find <region>", None), &[img], &[r]).unwrap();
    let text_tokens = p.input_ids.iter().filter(|&&i| i >= 0).count();
    assert_eq!(p.embeds.dim(1).unwrap(), text_tokens + tiled.image_tokens() + 1);
}

/// The image-token cache: a second request on the same file reuses its tokens (same answer as
/// the first, which encoded), a rewritten file is encoded again, and a zero budget never caches.
#[test]
fn image_tokens_are_reused_for_the_same_file_only() {
    use griffon_core::{Request, Task};
    use griffon_model::tasks::{ImageTokenCache, RunOptions};
    let c = load_case("gemma2_interp72");
    let mut m = c.model();
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("a.png");
    std::fs::copy(c.dir.join("image.png"), &img).unwrap();
    let opts = RunOptions {
        sampling: griffon_model::generate::SamplingOptions { max_new_tokens: 6, ..Default::default() },
        ..Default::default()
    };
    let detect = Request { image: img.clone(), task: Task::Detect { categories: vec!["cat".into(), "dog".into()] } };
    let ground = Request { image: img.clone(), task: Task::Ground { expression: "the cat".into() } };
    let first = m.run(&detect, &opts).unwrap();
    assert_eq!(m.image_cache.hits(), 0);
    let again = m.run(&detect, &opts).unwrap();
    let other_task = m.run(&ground, &opts).unwrap();
    assert_eq!(m.image_cache.hits(), 2);
    assert_eq!((first.text.as_str(), first.prompts.len()), (again.text.as_str(), again.prompts.len()));
    // the same answer as a model without a cache
    m.image_cache = ImageTokenCache::new(0);
    assert_eq!(m.run(&ground, &opts).unwrap().text, other_task.text);
    assert_eq!(m.image_cache.hits(), 0);
    // a rewritten file is a new key
    m.image_cache = ImageTokenCache::new(64 << 20);
    m.run(&detect, &opts).unwrap();
    let rgb = image::open(&img).unwrap().fliph();
    std::thread::sleep(std::time::Duration::from_millis(20));
    rgb.save(&img).unwrap();
    m.run(&detect, &opts).unwrap();
    assert_eq!(m.image_cache.hits(), 0);
    m.run(&detect, &opts).unwrap();
    assert_eq!(m.image_cache.hits(), 1);
}

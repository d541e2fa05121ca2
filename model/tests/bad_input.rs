//! Bad input gets an error that names the file, tensor or key at fault; never a panic.

use candle_core::{Device, Tensor};
use griffon_model::griffon::{Griffon, LoadOptions};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[allow(dead_code)] // (its golden-comparison helpers are not used here)
mod common;

fn fixture(case: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity").join(case);
    assert!(d.is_dir(), "fixture {} is missing: run tools/reference/make_parity_fixtures.py", d.display());
    d
}

/// Copies a fixture checkpoint folder (recursively) into a fresh temp dir.
fn copy_ckpt(case: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("ckpt");
    common::copy_dir(&fixture(case).join("ckpt"), &dst);
    (tmp, dst)
}

fn load_err(dir: &Path) -> String {
    match Griffon::load(dir, &LoadOptions::default()) {
        Ok(_) => panic!("loading {} should have failed", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let f = dir.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&f, &Device::Cpu).unwrap();
    edit(&mut t);
    candle_core::safetensors::save(&t, &f).unwrap();
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let f = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(&f, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn missing_tensor_is_named() {
    let (_t, dir) = copy_ckpt("llama2_bf16");
    let name = "model.layers.1.self_attn.k_proj.weight";
    rewrite_weights(&dir, |t| {
        t.remove(name).unwrap();
    });
    let e = load_err(&dir);
    assert!(e.contains(name) && e.contains("missing"), "{e}");
}

#[test]
fn misshaped_tensor_is_named_with_both_shapes() {
    let (_t, dir) = copy_ckpt("llama2_bf16");
    let name = "model.mm_projector.0.weight";
    rewrite_weights(&dir, |t| {
        t.insert(name.into(), Tensor::zeros((64, 100), candle_core::DType::F32, &Device::Cpu).unwrap());
    });
    let e = load_err(&dir);
    assert!(e.contains(name) && e.contains("[64, 100]") && e.contains("expected"), "{e}");
}

#[test]
fn missing_config_key_is_named() {
    let (_t, dir) = copy_ckpt("llama2_bf16");
    edit_config(&dir, |c| {
        c.remove("num_hidden_layers");
    });
    let e = load_err(&dir);
    assert!(e.contains("num_hidden_layers") && e.contains("config.json"), "{e}");

    let (_t, dir) = copy_ckpt("gemma2_region");
    edit_config(&dir, |c| {
        c.remove("query_pre_attn_scalar");
    });
    let e = load_err(&dir);
    assert!(e.contains("query_pre_attn_scalar"), "{e}");

    let (_t, dir) = copy_ckpt("gemma2_region");
    edit_config(&dir, |c| {
        c.insert("hidden_size".into(), serde_json::json!("big"));
    });
    let e = load_err(&dir);
    assert!(e.contains("hidden_size") && e.contains("integer"), "{e}");
}

/// Values that load but would make every logit NaN or the attention meaningless are refused by
/// name (an epsilon, scale or cap of 0 or below, a window of 0), and so are values that would be
/// ignored (token ids outside the vocabulary, a padded aspect ratio).
#[test]
fn meaningless_config_values_are_refused() {
    for (key, value) in [
        ("rms_norm_eps", serde_json::json!(-1.0)),
        ("query_pre_attn_scalar", serde_json::json!(0.0)),
        ("final_logit_softcapping", serde_json::json!(0.0)),
        ("attn_logit_softcapping", serde_json::json!(-5.0)),
        ("rope_theta", serde_json::json!(0.0)),
        ("sliding_window", serde_json::json!(0)),
        // ids outside the vocabulary, and a preprocessing the engine does not do
        ("eos_token_id", serde_json::json!([1, 5000000])),
        ("bos_token_id", serde_json::json!(99999999)),
        ("image_aspect_ratio", serde_json::json!("pad")),
        // heads that do not group evenly over the key/value heads
        ("num_key_value_heads", serde_json::json!(3)),
        ("num_key_value_heads", serde_json::json!(0)),
    ] {
        let (_t, dir) = copy_ckpt("gemma2_region");
        edit_config(&dir, |c| {
            c.insert(key.into(), value.clone());
        });
        let e = load_err(&dir);
        assert!(e.contains(key) && e.contains("config.json"), "{key} = {value}: {e}");
    }
    // null still turns a soft-cap off
    let (_t, dir) = copy_ckpt("gemma2_region");
    edit_config(&dir, |c| {
        c.insert("final_logit_softcapping".into(), serde_json::Value::Null);
    });
    Griffon::load(&dir, &LoadOptions::default()).unwrap();
    // the sliding window: HF's 4096 when absent, off when null
    let window = |edit: fn(&mut serde_json::Map<String, serde_json::Value>)| {
        let (_t, dir) = copy_ckpt("gemma2_region");
        edit_config(&dir, edit);
        match Griffon::load(&dir, &LoadOptions::default()).unwrap().config.llm {
            griffon_model::config::LlmConfig::Gemma2(g) => g.sliding_window,
            _ => panic!("a Gemma-2 fixture"),
        }
    };
    assert_eq!(window(|c| drop(c.remove("sliding_window"))), Some(4096));
    // a Llama whose hidden size the heads do not divide, given no head_dim; a Mistral is not a Llama
    let (_t, dir) = copy_ckpt("llama2_bf16");
    edit_config(&dir, |c| {
        let heads = c["num_attention_heads"].as_u64().unwrap();
        c.insert("hidden_size".into(), serde_json::json!(heads * 8 + 1));
        c.remove("head_dim");
    });
    let e = load_err(&dir);
    assert!(e.contains("hidden_size") && e.contains("num_attention_heads"), "{e}");
    let (_t, dir) = copy_ckpt("llama2_bf16");
    edit_config(&dir, |c| drop(c.insert("model_type".into(), serde_json::json!("llava_mistral"))));
    let e = load_err(&dir);
    assert!(e.contains("llava_mistral") && e.contains("not supported"), "{e}");
    assert_eq!(window(|c| drop(c.insert("sliding_window".into(), serde_json::Value::Null))), None);
}

#[test]
fn malformed_config_and_checkpoint_files() {
    let (_t, dir) = copy_ckpt("llama2_bf16");
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    let e = load_err(&dir);
    assert!(e.contains("config.json") && e.contains("malformed"), "{e}");

    let (_t, dir) = copy_ckpt("llama2_bf16");
    std::fs::write(dir.join("model.safetensors"), b"garbage bytes, not a safetensors file").unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.safetensors"), "{e}");

    let (_t, dir) = copy_ckpt("gemma2_region");
    let shard = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("model-00002"));
    std::fs::remove_file(shard.unwrap()).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model-00002-of-00002.safetensors") && e.contains("does not exist"), "{e}");

    let e = load_err(Path::new("/nonexistent/griffon/model"));
    assert!(e.contains("/nonexistent/griffon/model"), "{e}");
}

#[test]
fn unknown_model_type_and_unsupported_projector() {
    let (_t, dir) = copy_ckpt("llama2_bf16");
    edit_config(&dir, |c| {
        c.insert("model_type".into(), serde_json::json!("mistral"));
    });
    assert!(load_err(&dir).contains("mistral"));
    let (_t, dir) = copy_ckpt("llama2_bf16");
    edit_config(&dir, |c| {
        c.insert("mm_projector_type".into(), serde_json::json!("resampler"));
    });
    assert!(load_err(&dir).contains("resampler"));
}

#[test]
fn only_sentencepiece_tokenizer_gives_instructions() {
    let (_t, dir) = copy_ckpt("llama2_bf16");
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    std::fs::write(dir.join("tokenizer.model"), b"x").unwrap();
    let e = load_err(&dir);
    assert!(e.contains("tokenizer.json") && e.contains("save_pretrained"), "{e}");
}

#[test]
fn unreadable_images_are_named() {
    let m = Griffon::load(&fixture("llama2_bf16").join("ckpt"), &LoadOptions::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.png");
    let e = m.image_pixels(&missing).unwrap_err().to_string();
    assert!(e.contains("nope.png"), "{e}");
    let empty = tmp.path().join("empty.jpg");
    std::fs::write(&empty, b"").unwrap();
    let e = m.image_pixels(&empty).unwrap_err().to_string();
    assert!(e.contains("empty.jpg"), "{e}");
    let text = tmp.path().join("text.png");
    std::fs::write(&text, b"this is not an image").unwrap();
    let e = m.image_pixels(&text).unwrap_err().to_string();
    assert!(e.contains("text.png"), "{e}");
}

#[test]
fn more_regions_in_prompt_than_images() {
    let dir = fixture("gemma2_region");
    let m = Griffon::load(&dir.join("ckpt"), &LoadOptions::default()).unwrap();
    let img = m.image_pixels(&dir.join("image.png")).unwrap();
    let prompt = m.render_prompt("find <region> here", None);
    let e = m.prepare(&prompt, &[img.clone()], &[]).err().expect("must fail").to_string();
    assert!(e.contains("<region>") && e.contains("0 region image"), "{e}");
    // a region image the prompt never uses is an error too (nothing silently dropped)
    let r = m.region_pixels(&dir.join("region.png")).unwrap();
    let prompt = m.render_prompt("no marker here", None);
    let e = m.prepare(&prompt, &[img], &[r]).err().expect("must fail").to_string();
    assert!(e.contains("1 region image"), "{e}");
}

#[test]
fn wrong_pixel_shape_is_reported() {
    let m = Griffon::load(&fixture("llama2_bf16").join("ckpt"), &LoadOptions::default()).unwrap();
    let bad = Tensor::zeros((1, 3, 40, 40), candle_core::DType::F32, &Device::Cpu).unwrap();
    let e = m.encode_image(&bad).unwrap_err().to_string();
    assert!(e.contains("[1, 3, 40, 40]") && e.contains("48"), "{e}");
}

#[test]
fn bad_image_size_is_reported() {
    let opts = LoadOptions { image_size: Some(50), ..Default::default() };
    let e = Griffon::load(&fixture("llama2_bf16").join("ckpt"), &opts).err().expect("must fail").to_string();
    assert!(e.contains("50") && e.contains("patch size 8"), "{e}");
}

/// A config declaring fewer layers than the checkpoint holds (edited, or copied from another
/// size) is refused for each stack, not run as a shallower model.
#[test]
fn config_with_fewer_layers_than_the_weights_is_refused() {
    let cases: [(&str, &str, usize, &str); 3] = [
        ("config.json", "the LLM", 3, "model.layers.3."),
        ("clip-vit-tiny-patch8-to-56/config.json", "the CLIP tower", 2, "vision_tower.vision_model.encoder.layers.2."),
        (
            "clip-vit-large-patch14/config.json",
            "the CLIP tower",
            1,
            "prompt_visual_encoder.vision_model.encoder.layers.1.",
        ),
    ];
    for (file, what, layers, named) in cases {
        let (_t, dir) = copy_ckpt("gemma2_region");
        let f = dir.join(file);
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let o = v.as_object_mut().unwrap();
        o.insert("num_hidden_layers".into(), layers.into());
        if let Some(types) = o.get_mut("layer_types").and_then(|t| t.as_array_mut()) {
            types.truncate(layers);
        }
        std::fs::write(&f, serde_json::to_string_pretty(&v).unwrap()).unwrap();
        let e = load_err(&dir);
        assert!(
            e.contains(what) && e.contains(named) && e.contains(&format!("num_hidden_layers = {layers}")),
            "{file}: {e}"
        );
    }
}

/// A prompt longer than the model's max_position_embeddings is refused, naming both lengths
/// (the fixture's 512 positions hold a short prompt and its 16 image tokens).
#[test]
fn prompt_longer_than_the_context_is_refused() {
    let (_t, dir) = copy_ckpt("gemma2_region");
    let image = fixture("gemma2_region").join("image.png");
    let m = Griffon::load(&dir, &LoadOptions::default()).unwrap();
    let img = m.image_pixels(&image).unwrap();
    assert!(m.prepare(&m.render_prompt("find the cat", None), &[img.clone()], &[]).is_ok());
    let long = m.render_prompt(&"cat ".repeat(600), None);
    let e = m.prepare(&long, &[img], &[]).err().expect("must fail").to_string();
    assert!(e.contains("more than the model's max_position_embeddings 512"), "{e}");
    edit_config(&dir, |c| {
        c.insert("max_position_embeddings".into(), 0.into());
    });
    assert!(load_err(&dir).contains("max_position_embeddings must be at least 1"));
}

/// Generation stops where the model's positions end: the token chosen at the last position is
/// kept, none is read past it, and the cut is reported (it decoded on into positions the model
/// was never built for before).
#[test]
fn generation_stops_at_the_models_positions() {
    use griffon_model::generate::{generate, SamplingOptions, StopReason};
    let (_t, dir) = copy_ckpt("gemma2_region");
    let image = fixture("gemma2_region").join("image.png");
    let m = Griffon::load(&dir, &LoadOptions::default()).unwrap();
    let img = m.image_pixels(&image).unwrap();
    let prepared = m.prepare(&m.render_prompt("find the cat", None), &[img.clone()], &[]).unwrap();
    let t = prepared.embeds.dim(1).unwrap();
    let opts = SamplingOptions { max_new_tokens: 40, ..Default::default() };
    let free = generate(&m.llm, &prepared.embeds, &[], &opts, |_| {}).unwrap();
    assert_eq!((free.tokens.len(), free.stop), (40, StopReason::MaxTokens));
    for room in [0, 3] {
        edit_config(&dir, |c| {
            c.insert("max_position_embeddings".into(), (t + room).into());
        });
        let m = Griffon::load(&dir, &LoadOptions::default()).unwrap();
        let prepared = m.prepare(&m.render_prompt("find the cat", None), &[img.clone()], &[]).unwrap();
        let g = generate(&m.llm, &prepared.embeds, &[], &opts, |_| {}).unwrap();
        assert_eq!(g.stop, StopReason::MaxPositions(t + room));
        // `room` tokens read at the free positions, one more chosen at the last
        assert_eq!(g.tokens, free.tokens[..room + 1], "room {room}");
        let why = griffon_model::tasks::cut_reason(g.stop, 40).unwrap();
        assert!(why.contains(&format!("max_position_embeddings ({} positions", t + room)), "{why}");
    }
}

/// What constrained decoding relies on for a character split across tokens: a byte-level BPE
/// (the Qwen2 fixture) decodes its first byte alone to U+FFFD and both bytes to the character.
#[test]
fn a_split_character_decodes_to_the_replacement_character_until_complete() {
    let tok = griffon_model::tokenize::PromptTokenizer::load(&fixture("qwen2").join("ckpt"), None).unwrap();
    let (a, b) = (tok.token_id("\u{C3}").unwrap(), tok.token_id("\u{A9}").unwrap()); // bytes c3 a9: é
    let caf = tok.encode_plain("caf").unwrap();
    let with = |ids: &[u32]| tok.decode(&[&caf[..], ids].concat(), true).unwrap();
    assert_eq!(with(&[a]).trim_start(), "caf\u{FFFD}");
    assert_eq!(with(&[a, b]).trim_start(), "café");
    // a 3-byte character (€: e2 82 ac), one token per byte: one U+FFFD until it is complete
    let euro = tok.encode_plain("€").unwrap();
    assert_eq!(euro.len(), 3, "{euro:?}");
    assert_eq!(with(&euro[..1]).trim_start(), "caf\u{FFFD}");
    assert_eq!(with(&euro[..2]).trim_start(), "caf\u{FFFD}");
    assert_eq!(with(&euro).trim_start(), "caf€");
}

/// Settings the weights contradict, or that leave nothing for the projector, are refused at load,
/// naming the setting; not found at the first image, or run as another model.
#[test]
fn settings_the_weights_contradict_are_refused() {
    // region-encoder weights with the flag off would send exemplars through the main tower
    let (_t, dir) = copy_ckpt("gemma2_region");
    edit_config(&dir, |c| {
        c.insert("unshared_visual_encoder".into(), false.into());
    });
    let e = load_err(&dir);
    assert!(e.contains("unshared_visual_encoder") && e.contains("model.prompt_"), "{e}");
    // a CLS row cannot join the conv projector's grid
    let (_t, dir) = copy_ckpt("gemma2_region");
    edit_config(&dir, |c| {
        c.insert("mm_vision_select_feature".into(), "cls_patch".into());
    });
    assert!(load_err(&dir).contains("cls_patch"));
    // an input too small for the unpadded conv's 3x3 kernel (patch 8: a 2x2 grid)
    let (_t, dir) = copy_ckpt("gemma2_region");
    edit_config(&dir, |c| {
        c.insert("mm_projector_type".into(), "conv_reduce_wo_pad".into());
    });
    let opts = LoadOptions { image_size: Some(16), ..Default::default() };
    let e = Griffon::load(&dir, &opts).err().expect("must fail").to_string();
    assert!(e.contains("2x2 patch grid") && e.contains("--image-size"), "{e}");
    // a BOS id beyond u32 is not cut to a small one
    let (_t, dir) = copy_ckpt("gemma2_region");
    edit_config(&dir, |c| {
        c.insert("bos_token_id".into(), 4294967298u64.into());
    });
    assert!(load_err(&dir).contains("bos_token_id 4294967298 is not a token id"));
    // weights cloned without Git LFS
    let (_t, dir) = copy_ckpt("llama2_bf16");
    std::fs::write(
        dir.join("model.safetensors"),
        "version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n",
    )
    .unwrap();
    assert!(load_err(&dir).contains("a Git LFS pointer, not the weights"));
}

/// An image over Pillow's decompression-bomb size is refused from its header, naming the size;
/// under it, image-rs's default decode budget (512 MiB) does not apply.
#[test]
fn images_over_pillows_size_rule_are_refused() {
    // a 24-bit BMP header of 20000 x 10000 pixels (2e8 > 2 * 89478485), no pixel data
    let (w, h) = (20_000i32, 10_000i32);
    let mut bmp = b"BM".to_vec();
    bmp.extend(54u32.to_le_bytes()); // file size (not checked)
    bmp.extend([0u8; 4]);
    bmp.extend(54u32.to_le_bytes()); // pixel data offset
    bmp.extend(40u32.to_le_bytes());
    bmp.extend(w.to_le_bytes());
    bmp.extend(h.to_le_bytes());
    bmp.extend(1u16.to_le_bytes());
    bmp.extend(24u16.to_le_bytes());
    bmp.extend([0u8; 24]);
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("huge.bmp");
    std::fs::write(&f, &bmp).unwrap();
    let e = griffon_model::resample::load_rgb(&f).unwrap_err().to_string();
    assert!(e.contains("huge.bmp") && e.contains("20000x10000") && e.contains("178956970"), "{e}");
}

/// A tokenizer.json saved with truncation and padding settings (as after a call with
/// `truncation=True` or `padding=...`) encodes prompts as the reference's `tokenizer(chunk)`
/// does: neither cut nor padded.
#[test]
fn stored_truncation_and_padding_are_not_applied() {
    let src = fixture("qwen2").join("ckpt");
    let tmp = tempfile::tempdir().unwrap();
    let mut j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer.json")).unwrap()).unwrap();
    j["truncation"] =
        serde_json::json!({"direction": "Right", "max_length": 2, "strategy": "LongestFirst", "stride": 0});
    j["padding"] = serde_json::json!({"strategy": {"Fixed": 40}, "direction": "Right", "pad_to_multiple_of": null,
                                      "pad_id": 0, "pad_type_id": 0, "pad_token": "!"});
    std::fs::write(tmp.path().join("tokenizer.json"), j.to_string()).unwrap();
    let plain = griffon_model::tokenize::PromptTokenizer::load(&src, None).unwrap();
    let saved = griffon_model::tokenize::PromptTokenizer::load(tmp.path(), None).unwrap();
    let text = "Examine the image for any objects from the category set.";
    let want = plain.encode_chunk(text).unwrap();
    assert!(want.len() > 2 && want.len() < 40, "{want:?}");
    assert_eq!(saved.encode_chunk(text).unwrap(), want);
    assert_eq!(saved.encode_plain(text).unwrap(), plain.encode_plain(text).unwrap());
}

/// A generation from an empty prompt is a request error (there is nothing to predict the first
/// token from), not an index underflow.
#[test]
fn an_empty_prompt_is_refused() {
    let m = Griffon::load(&fixture("llama2_bf16").join("ckpt"), &LoadOptions::default()).unwrap();
    let h = m.config.llm.hidden_size();
    let empty = Tensor::zeros((1, 0, h), m.dtype, &Device::Cpu).unwrap();
    let opts = griffon_model::generate::SamplingOptions { max_new_tokens: 2, ..Default::default() };
    let e = griffon_model::generate::generate(&m.llm, &empty, &[], &opts, |_| {}).unwrap_err().to_string();
    assert!(e.contains("at least one position"), "{e}");
}

/// The LLM family is read from model_type with the same words as the template: a "llava_qwen"
/// checkpoint (LLaVA-NeXT's naming) is a Qwen2 with its q/k/v biases, as its ChatML template
/// says, and a Gemma other than Gemma-2 is refused by name.
#[test]
fn model_type_names_the_llm_as_the_template_does() {
    let (_t, dir) = copy_ckpt("qwen2");
    edit_config(&dir, |c| drop(c.insert("model_type".into(), serde_json::json!("llava_qwen"))));
    let m = Griffon::load(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(m.template, griffon_core::template::Template::Qwen2);
    match &m.config.llm {
        griffon_model::config::LlmConfig::Llama(l) => assert!(l.qkv_bias),
        _ => panic!("a Qwen2 is read as the Llama family with biases"),
    }
    let (_t, dir) = copy_ckpt("gemma2_region");
    edit_config(&dir, |c| drop(c.insert("model_type".into(), serde_json::json!("llava_gemma"))));
    let e = load_err(&dir);
    assert!(e.contains("only Gemma-2 is supported"), "{e}");
}

/// generation_config.json's eos ids stop every task's answer (HF's generate merges them), read
/// once at load; a malformed file is an error naming it.
#[test]
fn generation_config_eos_ids_stop_answers() {
    let (_t, dir) = copy_ckpt("llama2_bf16");
    let before = Griffon::load(&dir, &LoadOptions::default()).unwrap();
    let own = before.stop_ids(before.template);
    std::fs::write(dir.join("generation_config.json"), r#"{"eos_token_id": [7, 9]}"#).unwrap();
    let m = Griffon::load(&dir, &LoadOptions::default()).unwrap();
    let stop = m.stop_ids(m.template);
    assert!(stop.contains(&7) && stop.contains(&9) && own.iter().all(|t| stop.contains(t)), "{stop:?}");
    std::fs::write(dir.join("generation_config.json"), r#"{"eos_token_id": "x"}"#).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("generation_config.json"), "{e}");
}

/// tokenizer_config.json's add_bos_token / add_eos_token (what the reference's tokenizer adds)
/// must agree with tokenizer.json's post-processor (what ours adds): refused by name otherwise.
#[test]
fn tokenizer_flags_that_disagree_with_tokenizer_json_are_refused() {
    let set = |dir: &Path, key: &str, v: serde_json::Value| {
        let f = dir.join("tokenizer_config.json");
        let mut c: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        c.insert(key.into(), v);
        std::fs::write(&f, serde_json::to_string(&c).unwrap()).unwrap();
    };
    let (_t, dir) = copy_ckpt("gemma2_region");
    set(&dir, "tokenizer_class", "GemmaTokenizer".into());
    set(&dir, "add_bos_token", true.into());
    set(&dir, "add_eos_token", false.into());
    Griffon::load(&dir, &LoadOptions::default()).unwrap();
    for (key, v) in [("add_bos_token", false), ("add_eos_token", true)] {
        let (_t, dir) = copy_ckpt("gemma2_region");
        set(&dir, "tokenizer_class", "GemmaTokenizer".into());
        set(&dir, key, v.into());
        let e = load_err(&dir);
        assert!(e.contains(key) && e.contains("tokenizer_config.json") && e.contains("tokenizer.json"), "{e}");
        // a tokenizer class that ignores the flags (as transformers does) loads
        set(&dir, "tokenizer_class", "Qwen2Tokenizer".into());
        Griffon::load(&dir, &LoadOptions::default()).unwrap();
    }
}

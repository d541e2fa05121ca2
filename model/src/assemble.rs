//! Building a Griffon checkpoint from public parts (the Griffon v2 paper configuration:
//! EVA02-CLIP-L/14-336 + a fresh conv projector + Llama-2), ready for stage I training:
//!
//! * the LLM: an HF folder (config.json, safetensors, tokenizer files) of Llama-2 or Gemma-2;
//! * the vision tower: a folder with its config.json and safetensors, in timm / EVA-CLIP
//!   (open_clip `visual.*`) / HF CLIP (`vision_model.*`) naming; text towers are dropped;
//! * optionally the tower's position table resized to the run size and stored (as the released
//!   `clip-vit-large-patch14-336_to_1022` tower was made), so every later stage runs natively;
//! * a randomly initialised projector (N(0, 0.02) weights, zero biases).
//!
//! Layout written: shared/GRIFFON_FORMAT.md "Checkpoint layout" (`model.vision_tower.vision_tower.*`,
//! `model.mm_projector.*`, the LLM's own names) plus `vision_tower/config.json`, named by
//! `mm_vision_tower`.

use crate::config::{read_json, ProjectorType};
use crate::error::{invalid, io_err, Error, Result};
use crate::layout::projector_layout;
use crate::loader::Checkpoint;
use crate::resample::{resize_grid, Interp};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;

pub struct AssembleOptions {
    pub llm: PathBuf,
    pub vision: PathBuf,
    pub out: PathBuf,
    pub projector: String,
    /// Store the tower's position table resized to this square size.
    pub image_size: Option<usize>,
    pub pos_interp: Interp,
    pub seed: u64,
}

const LLM_PREFIXES: [&str; 4] = ["model.embed_tokens.", "model.layers.", "model.norm.", "lm_head."];

/// Where the size keys of a tower config live (top level, or `vision_cfg` / `vision_config`).
fn tower_section(v: &mut Value) -> &mut Value {
    if v.get("vision_cfg").is_some_and(Value::is_object) {
        return &mut v["vision_cfg"];
    }
    if v.get("vision_config").is_some_and(Value::is_object) {
        return &mut v["vision_config"];
    }
    v
}

pub fn assemble(o: &AssembleOptions) -> Result<PathBuf> {
    let llm_cfg_path = o.llm.join("config.json");
    let mut cfg = read_json(&llm_cfg_path)?;
    let mt = cfg.get("model_type").and_then(Value::as_str).unwrap_or("").to_ascii_lowercase();
    if !(mt.contains("llama") || mt.starts_with("gemma2")) {
        return invalid(format!("{}: model_type `{mt}` is not a Llama or Gemma-2 LLM", llm_cfg_path.display()));
    }
    let hidden = cfg
        .get("hidden_size")
        .and_then(Value::as_u64)
        .ok_or_else(|| Error::Invalid(format!("{}: missing key `hidden_size`", llm_cfg_path.display())))?
        as usize;
    let kind = ProjectorType::parse(&o.projector)
        .ok_or_else(|| Error::Invalid(format!("unknown projector `{}`", o.projector)))?;

    let vis_cfg_path = o.vision.join("config.json");
    let mut vis_cfg = read_json(&vis_cfg_path)?;
    let eva = crate::eva02::is_eva_config(&vis_cfg);
    let llm = Checkpoint::open(&o.llm, &Device::Cpu, DType::F32)?;
    let vis = Checkpoint::open(&o.vision, &Device::Cpu, DType::F32)?;

    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for n in llm.names() {
        if LLM_PREFIXES.iter().any(|p| n.starts_with(p)) {
            tensors.insert(n.to_string(), llm.get_stored(n)?);
        }
    }
    if !tensors.contains_key("model.embed_tokens.weight") {
        return invalid(format!("{}: no model.embed_tokens.weight: not an HF LLM checkpoint", o.llm.display()));
    }
    // keep only the vision tower (drop text towers / heads of joint CLIP checkpoints)
    let keep = |n: &str| -> bool {
        if eva {
            !(n.starts_with("text.")
                || n.starts_with("transformer.")
                || n == "logit_scale"
                || n.starts_with("token_embedding")
                || n.starts_with("ln_final")
                || n == "positional_embedding"
                || n == "text_projection"
                || n.starts_with("head."))
        } else {
            n.starts_with("vision_model.")
        }
    };
    let pos_name = vis
        .names()
        .into_iter()
        .find(|n| n.ends_with("position_embedding.weight") || *n == "pos_embed" || n.ends_with(".pos_embed"))
        .map(str::to_string)
        .ok_or_else(|| {
            Error::Invalid(format!("{}: no position table (pos_embed / position_embedding.weight)", o.vision.display()))
        })?;
    let mut vision_width = 0;
    for n in vis.names() {
        if !keep(n) {
            continue;
        }
        let mut t = vis.get_stored(n)?;
        if n == pos_name {
            let dims = t.dims().to_vec();
            let (rows, h) = (dims[dims.len() - 2], dims[dims.len() - 1]);
            vision_width = h;
            let g = ((rows - 1) as f64).sqrt().round() as usize;
            if g * g + 1 != rows {
                return invalid(format!("{n} has {rows} rows, not 1 + a square grid"));
            }
            if let Some(size) = o.image_size {
                let sec = tower_section(&mut vis_cfg);
                let patch =
                    sec.get("patch_size").and_then(Value::as_u64).ok_or_else(|| {
                        Error::Invalid(format!("{}: missing key `patch_size`", vis_cfg_path.display()))
                    })? as usize;
                if size % patch != 0 {
                    return invalid(format!("image size {size} is not a multiple of the patch size {patch}"));
                }
                let g2 = size / patch;
                if g2 != g {
                    let dt = t.dtype();
                    let flat = t.to_dtype(DType::F32)?.reshape((rows, h))?;
                    let cls = flat.narrow(0, 0, 1)?;
                    let grid: Vec<f32> = flat.narrow(0, 1, g * g)?.flatten_all()?.to_vec1()?;
                    let resized =
                        Tensor::from_vec(resize_grid(&grid, g, h, g2, o.pos_interp), (g2 * g2, h), &Device::Cpu)?;
                    let table = Tensor::cat(&[&cls, &resized], 0)?;
                    let mut shape = dims.clone();
                    let last = shape.len() - 2;
                    shape[last] = g2 * g2 + 1;
                    t = table.reshape(shape)?.to_dtype(dt)?;
                }
                for key in ["image_size", "img_size"] {
                    if sec.get(key).is_some() || (key == "image_size" && !eva) || (key == "img_size" && eva) {
                        sec[key] = Value::from(size);
                    }
                }
            }
        }
        tensors.insert(format!("model.vision_tower.vision_tower.{n}"), t);
    }
    // a fresh projector
    let layout = projector_layout(&kind, vision_width, hidden);
    let rnd = crate::layout::random_tensors(&layout, false, DType::F32, &Device::Cpu, o.seed)?;
    let stored_dt = tensors["model.embed_tokens.weight"].dtype();
    for (n, t) in rnd {
        tensors.insert(n, t.to_dtype(stored_dt)?);
    }

    std::fs::create_dir_all(o.out.join("vision_tower")).map_err(io_err(&o.out))?;
    std::fs::write(o.out.join("vision_tower/config.json"), serde_json::to_string_pretty(&vis_cfg).expect("json"))
        .map_err(io_err(o.out.join("vision_tower/config.json")))?;
    let obj =
        cfg.as_object_mut().ok_or_else(|| Error::Invalid(format!("{}: not a JSON object", llm_cfg_path.display())))?;
    for (k, v) in [
        ("mm_vision_tower", Value::from("vision_tower")),
        ("mm_projector_type", Value::from(o.projector.clone())),
        ("mm_vision_select_layer", Value::from(-2)),
        ("mm_vision_select_feature", Value::from("patch")),
        ("mm_hidden_size", Value::from(vision_width)),
        ("image_aspect_ratio", Value::from("square")),
        ("mm_use_im_start_end", Value::from(false)),
        ("mm_use_im_patch_token", Value::from(false)),
        ("unshared_visual_encoder", Value::from(false)),
    ] {
        obj.insert(k.to_string(), v);
    }
    std::fs::write(o.out.join("config.json"), serde_json::to_string_pretty(&cfg).expect("json"))
        .map_err(io_err(o.out.join("config.json")))?;
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "special_tokens_map.json",
        "generation_config.json",
    ] {
        if o.llm.join(f).is_file() {
            std::fs::copy(o.llm.join(f), o.out.join(f)).map_err(io_err(o.llm.join(f)))?;
        }
    }
    let file = o.out.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &file).map_err(|e| Error::Invalid(format!("{}: {e}", file.display())))?;
    Ok(o.out.clone())
}

//! Building a Griffon checkpoint from public parts (the Griffon v2 paper configuration:
//! EVA02-CLIP-L/14-336 + a fresh conv projector + Llama-2), ready for stage I training:
//!
//! * the LLM: an HF folder (config.json, safetensors, tokenizer files) of Llama-2 or Gemma-2;
//! * the vision tower: a folder with its config.json and safetensors, in timm / EVA-CLIP
//!   (open_clip `visual.*`) / HF CLIP (`vision_model.*`) naming; text towers are dropped;
//! * optionally the tower's position table resized to the run size and stored in f32 (as the
//!   released `clip-vit-large-patch14-336_to_1022` tower was made), so every later stage runs
//!   natively;
//! * a randomly initialised projector (N(0, 0.02) weights, zero biases).
//!
//! Layout written: shared/GRIFFON_FORMAT.md "Checkpoint layout" (`model.vision_tower.vision_tower.*`,
//! `model.mm_projector.*`, the LLM's own names) plus `vision_tower/config.json`, named by
//! `mm_vision_tower`.

use crate::config::{read_json, ProjectorType};
use crate::error::{invalid, io_err, Error, Result};
use crate::layout::projector_layout;
use crate::loader::Checkpoint;
use crate::resample::Interp;
use crate::vision::{resize_position_table, table_grid};
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

/// An output folder that exists with files in it is refused (nothing is overwritten).
fn refuse_non_empty(out: &std::path::Path) -> Result<()> {
    if out.exists() && std::fs::read_dir(out).map_err(io_err(out))?.next().is_some() {
        return invalid(format!("{}: the output folder exists and is not empty", out.display()));
    }
    Ok(())
}

pub fn assemble(o: &AssembleOptions) -> Result<PathBuf> {
    refuse_non_empty(&o.out)?;
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
        .find(|n| {
            keep(n) && (n.ends_with("position_embedding.weight") || *n == "pos_embed" || n.ends_with(".pos_embed"))
        })
        .map(str::to_string)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{}: no vision-tower position table (`vision_model.` ... `position_embedding.weight`, or \
                 `pos_embed`): --vision must be an HF CLIP or EVA02 tower checkpoint",
                o.vision.display()
            ))
        })?;
    let mut vision_width = 0;
    for n in vis.names() {
        if !keep(n) {
            continue;
        }
        let mut t = vis.get_stored(n)?;
        if n == pos_name {
            let (g, h) = table_grid(&t, n)?;
            vision_width = h;
            if let Some(size) = o.image_size {
                let patch = set_tower_size(&mut vis_cfg, &vis_cfg_path, size, eva)?;
                if size / patch != g {
                    t = resize_position_table(&t, size / patch, o.pos_interp)?; // stored in f32
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

/// Sets a tower config's input size (`image_size`; `img_size` for EVA configs, and either key it
/// already has) to `size`, a positive multiple of its `patch_size`, which it returns.
fn set_tower_size(cfg: &mut Value, path: &std::path::Path, size: usize, eva: bool) -> Result<usize> {
    // an EVA config's patch size may come from a timm preset name or `model_args` (a timm hub
    // config has no top-level key): read it as the loader does
    let patch = if eva {
        crate::eva02::parse_eva02_config(cfg, path)?.patch_size
    } else {
        tower_section(cfg)
            .get("patch_size")
            .and_then(Value::as_u64)
            .ok_or_else(|| Error::Invalid(format!("{}: missing key `patch_size`", path.display())))? as usize
    };
    // the size goes where the loader reads it first: beside a timm config's `model_args`, the
    // loader would otherwise keep its old `img_size`
    let sec = match (eva, tower_section(cfg).get("model_args").is_some_and(Value::is_object)) {
        (true, true) => &mut tower_section(cfg)["model_args"],
        _ => tower_section(cfg),
    };
    if size == 0 || patch == 0 || size % patch != 0 {
        return invalid(format!("image size {size} is not a positive multiple of the patch size {patch}"));
    }
    if size > crate::griffon::MAX_INPUT_SIZE {
        return invalid(format!("image size {size} exceeds {} px", crate::griffon::MAX_INPUT_SIZE));
    }
    for key in ["image_size", "img_size"] {
        if sec.get(key).is_some() || (key == "image_size" && !eva) || (key == "img_size" && eva) {
            sec[key] = Value::from(size);
        }
    }
    if eva {
        let read = crate::eva02::parse_eva02_config(cfg, path)?.image_size;
        if read != size {
            return invalid(format!(
                "{}: the size written ({size}) is not the one the config reads back ({read}): an unsupported layout",
                path.display()
            ));
        }
    }
    Ok(patch)
}

/// What [`resize_main_tower`] wrote.
#[derive(Debug, Clone)]
pub struct Resized {
    pub out: PathBuf,
    /// The position table's name and its grid before / after.
    pub table: String,
    pub grid_from: usize,
    pub grid_to: usize,
    /// The tower config folder written (named in the new config's `mm_vision_tower`).
    pub tower_folder: PathBuf,
}

/// `p` made absolute, with symlinks and `..` resolved as the system would once the missing part
/// of it is created: each existing prefix is canonicalized, `..` then goes to the real parent.
fn resolved(p: &std::path::Path) -> std::io::Result<PathBuf> {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in std::path::absolute(p)?.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => {
                out.push(other);
                if let Ok(real) = out.canonicalize() {
                    out = real;
                }
            }
        }
    }
    Ok(out)
}

/// Writes a copy of the Griffon checkpoint `model` whose main vision tower runs natively at
/// `image_size`: its position table resized and stored ([`resize_position_table`]), its config's
/// `image_size` set, the tower folder renamed `<name>_to_<size>` (as the released
/// `clip-vit-large-patch14-336_to_1022`) and `mm_vision_tower` pointing at it. The resized table
/// is stored in f32 whatever the source's dtype (it is computed in f32, as the load-time resize
/// computes it: rounding it to a bf16 source's dtype would make the copy answer differently from
/// `--image-size` on the source). Every other tensor
/// is copied unchanged in its stored dtype (into one `model.safetensors`), the other files and
/// folders too (a trainer's dense head included), except what describes the source's own
/// training: its model card `README.md`, `trainer_state.json`, `optimizer.safetensors`,
/// `metrics/` and `train_log.txt`. This is
/// how a model trained at one resolution starts training at another with a trainable table; the
/// engine's `--image-size` resizes at load instead (the same table, not trainable).
pub fn resize_main_tower(
    model: &std::path::Path,
    out: &std::path::Path,
    image_size: usize,
    interp: Interp,
) -> Result<Resized> {
    use crate::config::{find_tower_config, TowerSource};
    let cfg_path = model.join("config.json");
    let mut cfg = read_json(&cfg_path)?;
    refuse_non_empty(out)?;
    let ck = Checkpoint::open(model, &Device::Cpu, DType::F32)?;
    let written = cfg.get("mm_vision_tower").and_then(Value::as_str).map(str::to_string);
    let tower_dir = match find_tower_config(&ck, written.as_deref(), None) {
        Some((_, TowerSource::Folder(d))) => d,
        _ => {
            return invalid(format!(
                "{}: the main tower's config folder (mm_vision_tower = {written:?}) was not found; resizing needs its config.json",
                model.display()
            ))
        }
    };
    // the model folder and the tower's config folder are copied into `out`: inside either, the
    // copy would contain itself
    let out_abs = resolved(out).map_err(io_err(out))?;
    for (dir, what) in [(model, "model folder"), (tower_dir.as_path(), "tower config folder")] {
        if out_abs.starts_with(dir.canonicalize().map_err(io_err(dir))?) {
            return invalid(format!("{}: the output folder is inside the {what} {}", out.display(), dir.display()));
        }
    }
    let tower_cfg_path = tower_dir.join("config.json");
    let mut tower_cfg = read_json(&tower_cfg_path)?;
    let eva = crate::eva02::is_eva_config(&tower_cfg);
    let patch = set_tower_size(&mut tower_cfg, &tower_cfg_path, image_size, eva)?;
    let prefix = if eva { crate::griffon::EVA02_TOWER_PREFIX } else { crate::griffon::MAIN_TOWER_PREFIX };
    let tables: Vec<String> = ck
        .names_with_prefix(&format!("{prefix}."))
        .into_iter()
        .filter(|n| n.ends_with("position_embedding.weight") || n.ends_with("pos_embed"))
        .map(str::to_string)
        .collect();
    let table = match tables.as_slice() {
        [one] => one.clone(),
        [] => return invalid(format!("{}: no main-tower position table under {prefix}", model.display())),
        more => return invalid(format!("{}: several main-tower position tables: {more:?}", model.display())),
    };
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for n in ck.names() {
        tensors.insert(n.to_string(), ck.get_stored(n)?);
    }
    let old = &tensors[&table];
    let (grid_from, _) = table_grid(old, &table)?;
    let grid_to = image_size / patch;
    let resized = resize_position_table(old, grid_to, interp)?;
    tensors.insert(table.clone(), resized);

    // the tower folder under its new name, and the config naming it
    let base = tower_dir.file_name().and_then(|s| s.to_str()).unwrap_or("vision_tower");
    let base = match base.rfind("_to_") {
        Some(i) if base[i + 4..].chars().all(|c| c.is_ascii_digit()) && i + 4 < base.len() => &base[..i],
        _ => base,
    };
    let folder = format!("{base}_to_{image_size}");
    let new_written = match written.as_deref().and_then(|w| w.rfind('/').map(|i| &w[..=i])) {
        Some(parent) => format!("{parent}{folder}"),
        None => folder.clone(),
    };
    cfg.as_object_mut()
        .ok_or_else(|| Error::Invalid(format!("{}: not a JSON object", cfg_path.display())))?
        .insert("mm_vision_tower".into(), Value::from(new_written));

    std::fs::create_dir_all(out).map_err(io_err(out))?;
    // the weights (rewritten below) and what describes the source's own training
    let skip = |name: &str| {
        matches!(
            name,
            "config.json"
                | "model.safetensors"
                | "model.safetensors.index.json"
                | "README.md"
                | "trainer_state.json"
                | "optimizer.safetensors"
                | "metrics"
                | "train_log.txt"
        ) || (name.starts_with("model-") && name.ends_with(".safetensors"))
    };
    for entry in std::fs::read_dir(model).map_err(io_err(model))? {
        let entry = entry.map_err(io_err(model))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if skip(&name) || entry.path() == tower_dir {
            continue;
        }
        copy_tree(&entry.path(), &out.join(&name))?;
    }
    let tower_out = out.join(&folder);
    copy_tree(&tower_dir, &tower_out)?;
    let write_json = |path: PathBuf, v: &Value| {
        std::fs::write(&path, serde_json::to_string_pretty(v).expect("json")).map_err(io_err(&path))
    };
    write_json(tower_out.join("config.json"), &tower_cfg)?;
    write_json(out.join("config.json"), &cfg)?;
    let file = out.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &file).map_err(|e| Error::Invalid(format!("{}: {e}", file.display())))?;
    Ok(Resized { out: out.to_path_buf(), table, grid_from, grid_to, tower_folder: tower_out })
}

/// Copies a file, or a folder with everything in it.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    if from.is_dir() {
        std::fs::create_dir_all(to).map_err(io_err(to))?;
        for entry in std::fs::read_dir(from).map_err(io_err(from))? {
            let entry = entry.map_err(io_err(from))?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        std::fs::copy(from, to).map(|_| ()).map_err(io_err(from))
    }
}

#[cfg(test)]
mod tests {
    use super::resolved;

    /// `..` after an existing folder goes to its real parent; a missing tail is kept as written.
    #[test]
    fn resolved_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let model = root.join("m");
        std::fs::create_dir_all(model.join("sub")).unwrap();
        assert_eq!(resolved(&model.join("x/../../other")).unwrap(), root.join("other"));
        assert_eq!(resolved(&root.join("nope/../m/r")).unwrap(), model.join("r"));
        assert_eq!(resolved(&model.join("sub/./new/deeper")).unwrap(), model.join("sub/new/deeper"));
        #[cfg(unix)]
        {
            // through a symlink to the model folder: inside it
            std::os::unix::fs::symlink(&model, root.join("link")).unwrap();
            assert!(resolved(&root.join("link/r")).unwrap().starts_with(&model));
        }
    }
}

//! The whole Griffon model: high-resolution CLIP tower -> projector -> LLM inputs, optional
//! region encoder, prompt assembly and generation (source of the data flow: jefferyZhan/Griffon
//! `griffon_arch.py` `prepare_inputs_labels_for_multimodal` and `eval/run_griffon.py`).

use crate::clip::{parse_clip_config, ClipVision, ClipVisionConfig};
use crate::config::{find_tower_config, read_json, resolve_tower, GriffonConfig, TowerSource};
use crate::error::{invalid, Error, Result};
use crate::eva02::{infer_eva02_config, is_eva_config, parse_eva02_config, Eva02Config, Eva02Vision};
use crate::generate::{generate, Generation, SamplingOptions};
use crate::llm::Llm;
use crate::loader::Checkpoint;
use crate::projector::Projector;
use crate::region::RegionEncoder;
use crate::resample::{preprocess, Interp};
use crate::tokenize::PromptTokenizer;
use candle_core::{DType, Device, Tensor, Var};
use griffon_core::prompt::check_visual_counts;
use griffon_core::template::with_image_marker;
use griffon_core::{Piece, Placeholder, Template};
use std::path::{Path, PathBuf};

/// Token id the reference uses for a visual placeholder in `input_ids` (IMAGE_TOKEN_INDEX).
pub const IMAGE_TOKEN_INDEX: i64 = -200;

/// Largest square input side (tower size x tiles per side): 8x the paper's 1022 px.
pub const MAX_INPUT_SIZE: usize = 8192;

pub const MAIN_TOWER_PREFIX: &str = "model.vision_tower.vision_tower.vision_model";
/// Root of an EVA02 main tower: timm names (`...vision_tower.blocks.0...`), or EVA-CLIP /
/// open_clip names under `visual.` / `visual.trunk.` (see [`crate::eva02`]).
pub const EVA02_TOWER_PREFIX: &str = "model.vision_tower.vision_tower";
pub const REGION_TOWER_PREFIX: &str = "model.prompt_visual_encoder.vision_model";
/// The folder the reference hard-codes for the region encoder's tower.
pub const REGION_TOWER_FOLDER: &str = "checkpoints/clip-vit-large-patch14";

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: DType,
    /// Run the main tower at this square size instead of the checkpoint's.
    pub image_size: Option<usize>,
    /// How the position table is resized when `image_size` differs from the stored grid.
    pub pos_interp: Interp,
    pub vision_config: Option<PathBuf>,
    pub region_config: Option<PathBuf>,
    /// Override the checkpoint's `mm_tiles` (see [`crate::config::MmConfig::tiles`]).
    pub tiles: Option<usize>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            image_size: None,
            pos_interp: Interp::Bilinear,
            vision_config: None,
            region_config: None,
            tiles: None,
        }
    }
}

/// The main image encoder: the released CLIP tower, or the paper's EVA02-CLIP tower.
pub enum VisionTower {
    Clip(ClipVision),
    Eva02(Eva02Vision),
}

impl VisionTower {
    pub fn run_size(&self) -> usize {
        match self {
            VisionTower::Clip(t) => t.run_size,
            VisionTower::Eva02(t) => t.run_size,
        }
    }
    pub fn num_patches(&self) -> usize {
        match self {
            VisionTower::Clip(t) => t.num_patches(),
            VisionTower::Eva02(t) => t.num_patches(),
        }
    }
    pub fn resolve_layer(&self, select_layer: i64) -> Result<usize> {
        match self {
            VisionTower::Clip(t) => t.resolve_layer(select_layer),
            VisionTower::Eva02(t) => t.resolve_layer(select_layer),
        }
    }
    pub fn hidden_states(&self, pixels: &Tensor, upto: usize) -> Result<Vec<Tensor>> {
        match self {
            VisionTower::Clip(t) => t.hidden_states(pixels, upto),
            VisionTower::Eva02(t) => t.hidden_states(pixels, upto),
        }
    }
    pub fn hidden_state(&self, pixels: &Tensor, select_layer: i64) -> Result<Tensor> {
        match self {
            VisionTower::Clip(t) => t.hidden_state(pixels, select_layer),
            VisionTower::Eva02(t) => t.hidden_state(pixels, select_layer),
        }
    }
    pub fn patch_features(&self, pixels: &Tensor, select_layer: i64, keep_cls: bool) -> Result<Tensor> {
        match self {
            VisionTower::Clip(t) => t.patch_features(pixels, select_layer, keep_cls),
            VisionTower::Eva02(t) => t.patch_features(pixels, select_layer, keep_cls),
        }
    }
}

/// [`Griffon::tower`]: the [`VisionTower`] plus its geometry as a [`ClipVisionConfig`] (`cfg`).
/// For a CLIP tower `cfg` is its exact config; for EVA02 it carries the ViT geometry
/// (hidden_size, intermediate_size, layers, heads, stored image_size, patch_size, eps; hidden_act
/// Silu standing for SwiGLU) and the exact config is the tower's own [`Eva02Config`].
pub struct MainTower {
    pub cfg: ClipVisionConfig,
    pub tower: VisionTower,
}

impl MainTower {
    /// Square input size the tower runs at.
    pub fn run_size(&self) -> usize {
        self.tower.run_size()
    }
    pub fn num_patches(&self) -> usize {
        self.tower.num_patches()
    }
    pub fn is_eva02(&self) -> bool {
        matches!(self.tower, VisionTower::Eva02(_))
    }
    pub fn resolve_layer(&self, select_layer: i64) -> Result<usize> {
        self.tower.resolve_layer(select_layer)
    }
    pub fn hidden_states(&self, pixels: &Tensor, upto: usize) -> Result<Vec<Tensor>> {
        self.tower.hidden_states(pixels, upto)
    }
    pub fn hidden_state(&self, pixels: &Tensor, select_layer: i64) -> Result<Tensor> {
        self.tower.hidden_state(pixels, select_layer)
    }
    pub fn patch_features(&self, pixels: &Tensor, select_layer: i64, keep_cls: bool) -> Result<Tensor> {
        self.tower.patch_features(pixels, select_layer, keep_cls)
    }
}

fn eva_geometry(c: &Eva02Config) -> ClipVisionConfig {
    ClipVisionConfig {
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        num_hidden_layers: c.num_hidden_layers,
        num_attention_heads: c.num_attention_heads,
        image_size: c.image_size,
        patch_size: c.patch_size,
        layer_norm_eps: c.layer_norm_eps,
        hidden_act: crate::nn::Act::Silu,
    }
}

/// Which main tower a checkpoint holds, with its config.
enum MainTowerConfig {
    Clip(ClipVisionConfig),
    Eva02(Eva02Config),
}

/// Picks the main tower: a tower config file (override or the `mm_vision_tower` folder) whose
/// `model_type` / `architecture(s)` / timm name mentions `eva` -> EVA02, another config -> CLIP;
/// without a config file, EVA02 when the checkpoint has `model.vision_tower.vision_tower.blocks.*`
/// or `...vision_tower.visual.*` tensors (config inferred from them), else CLIP (inferred).
fn resolve_main_tower(
    ck: &Checkpoint,
    written: Option<&str>,
    override_file: Option<&Path>,
) -> Result<(MainTowerConfig, TowerSource)> {
    if let Some((f, source)) = find_tower_config(ck, written, override_file) {
        let v = read_json(&f)?;
        let cfg = if is_eva_config(&v) {
            MainTowerConfig::Eva02(parse_eva02_config(&v, &f)?)
        } else {
            MainTowerConfig::Clip(parse_clip_config(&v, &f)?)
        };
        return Ok((cfg, source));
    }
    let eva_tensors = !ck.names_with_prefix(&format!("{EVA02_TOWER_PREFIX}.blocks.")).is_empty()
        || !ck.names_with_prefix(&format!("{EVA02_TOWER_PREFIX}.visual.")).is_empty();
    if eva_tensors {
        let cfg = infer_eva02_config(&ck.scope(EVA02_TOWER_PREFIX)).map_err(|e| {
            Error::Invalid(format!(
                "{e}; no EVA02 tower config found{} (give one with --vision-config)",
                written.map(|w| format!(" for `{w}`")).unwrap_or_default()
            ))
        })?;
        return Ok((MainTowerConfig::Eva02(cfg), TowerSource::Inferred));
    }
    let (cfg, source) = resolve_tower(ck, written, MAIN_TOWER_PREFIX, override_file, "--vision-config")?;
    Ok((MainTowerConfig::Clip(cfg), source))
}

pub struct Griffon {
    pub config: GriffonConfig,
    pub tower: MainTower,
    pub tower_source: TowerSource,
    pub projector: Projector,
    pub region: Option<RegionEncoder>,
    pub llm: Llm,
    pub tokenizer: PromptTokenizer,
    pub template: Template,
    pub device: Device,
    pub dtype: DType,
    /// Tiles per side of the main image (1 = direct input).
    pub tiles: usize,
    /// Image tokens of recently seen image files ([`crate::tasks`]: a file asked about again —
    /// the next referring expression, region or task on the same image — is not encoded again).
    pub image_cache: crate::tasks::ImageTokenCache,
    /// generation_config.json's eos ids (HF's generate stops at them too).
    pub generation_eos: Vec<u32>,
}

/// A prompt ready for the LLM.
pub struct Prepared {
    /// Token ids with [`IMAGE_TOKEN_INDEX`] at each placeholder (the reference's `input_ids`).
    pub input_ids: Vec<i64>,
    /// [1, T, H] input embeddings (image tokens spliced in).
    pub embeds: Tensor,
}

pub struct Answer {
    pub text: String,
    pub generation: Generation,
}

/// A model path that is not a folder, named: it does not exist, or is a file.
pub fn check_model_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let what = if dir.exists() { "is not a folder (a model is a folder with config.json)" } else { "does not exist" };
    invalid(format!("model folder {} {what}", dir.display()))
}

impl Griffon {
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        Ok(Self::load_inner(dir, opts, None)?.0)
    }

    /// Loads for training: tensors whose names `trainable` accepts become [`Var`]s, returned with
    /// their names (frozen tensors stay constants and get no gradient).
    pub fn load_trainable(
        dir: &Path,
        opts: &LoadOptions,
        trainable: Box<dyn Fn(&str) -> bool>,
    ) -> Result<(Self, Vec<(String, Var)>)> {
        Self::load_inner(dir, opts, Some(trainable))
    }

    fn load_inner(
        dir: &Path,
        opts: &LoadOptions,
        trainable: Option<Box<dyn Fn(&str) -> bool>>,
    ) -> Result<(Self, Vec<(String, Var)>)> {
        let config_path = dir.join("config.json");
        check_model_dir(dir)?;
        let config = GriffonConfig::from_file(&config_path)?;
        let mut ck = Checkpoint::open(dir, &opts.device, opts.dtype)?;
        if let Some(t) = trainable {
            ck.set_trainable(t);
        }
        let (main_cfg, tower_source) =
            resolve_main_tower(&ck, config.mm.vision_tower.as_deref(), opts.vision_config.as_deref())?;
        let tower_cfg = match &main_cfg {
            MainTowerConfig::Clip(c) => c.clone(),
            MainTowerConfig::Eva02(c) => eva_geometry(c),
        };
        if let Some(m) = config.mm.mm_hidden_size {
            if m != tower_cfg.hidden_size {
                return invalid(format!(
                    "{}: mm_hidden_size {m} differs from the vision tower's hidden_size {}",
                    config_path.display(),
                    tower_cfg.hidden_size
                ));
            }
        }
        let run_size = opts.image_size.unwrap_or(tower_cfg.image_size);
        let tiles = opts.tiles.unwrap_or(config.mm.tiles);
        if tiles == 0 {
            return invalid("tiles must be at least 1");
        }
        if run_size.saturating_mul(tiles) > MAX_INPUT_SIZE {
            return invalid(format!(
                "input of {run_size} px x {tiles} tiles per side exceeds {MAX_INPUT_SIZE} px (the tower's tables and \
                 the resized image would not fit in memory)"
            ));
        }
        // (each stack refuses a checkpoint with more layers than its config declares as it loads:
        // ClipVision::load_upto, Eva02Vision::load_upto, Llm::load)
        let needed = crate::vision::resolve_select_layer(config.mm.select_layer, tower_cfg.num_hidden_layers)?;
        let tower = match &main_cfg {
            MainTowerConfig::Clip(c) => VisionTower::Clip(ClipVision::load_upto(
                &ck.scope(MAIN_TOWER_PREFIX),
                c,
                run_size,
                opts.pos_interp,
                needed,
            )?),
            MainTowerConfig::Eva02(c) => VisionTower::Eva02(Eva02Vision::load_upto(
                &ck.scope(EVA02_TOWER_PREFIX),
                c,
                run_size,
                opts.pos_interp,
                needed,
            )?),
        };
        let tower = MainTower { cfg: tower_cfg.clone(), tower };
        let h = config.llm.hidden_size();
        let projector =
            Projector::load(&ck.scope("model.mm_projector"), &config.mm.projector, tower_cfg.hidden_size, h)?;
        // checked here rather than at the first image, naming the setting at fault
        if let crate::config::ProjectorType::ConvReduce { .. } = config.mm.projector {
            if config.mm.keep_cls {
                return invalid(format!(
                    "{}: mm_vision_select_feature `cls_patch` with the conv projector: the CLS row is not \
                     part of the patch grid the conv reduces (use `patch`)",
                    config_path.display()
                ));
            }
            let patches = tower.num_patches();
            if projector.out_tokens(patches) == 0 {
                let g = (patches as f64).sqrt().round() as usize;
                return invalid(format!(
                    "input size {run_size} px gives a {g}x{g} patch grid, too small for the conv projector's \
                     3x3 kernel: give a larger --image-size"
                ));
            }
        }
        let region = if config.mm.unshared_visual_encoder {
            let (rcfg, _) = resolve_tower(
                &ck,
                Some(REGION_TOWER_FOLDER),
                REGION_TOWER_PREFIX,
                opts.region_config.as_deref(),
                "--region-config",
            )?;
            Some(RegionEncoder::load(&ck.scope(REGION_TOWER_PREFIX), &ck.scope("model.prompt_projector"), &rcfg, h)?)
        } else {
            // weights of a region encoder with the flag off: the exemplars would go through the
            // main tower as whole images, silently not the model that was trained
            let stray: Vec<&str> = ["model.prompt_visual_encoder.", "model.prompt_projector."]
                .iter()
                .flat_map(|p| ck.names_with_prefix(p))
                .collect();
            if let Some(first) = stray.first() {
                return invalid(format!(
                    "{}: the checkpoint holds region-encoder weights ({first} and {} more) but config.json's \
                     unshared_visual_encoder is false or missing: set it to true, or remove those weights",
                    dir.display(),
                    stray.len() - 1
                ));
            }
            None
        };
        let llm = Llm::load(&ck, &config.llm)?.with_max_positions(config.max_position_embeddings);
        let template = config.default_template();
        // HF takes BOS from the tokenizer's files; Llama / Gemma tokenizer classes default to
        // <s> / <bos> (config.json's id), Qwen2's has none (its config's bos_token_id is unused).
        let fallback_bos = if template == Template::Qwen2 { None } else { config.bos_token_id };
        let tokenizer = PromptTokenizer::load(dir, fallback_bos)?;
        let gc = dir.join("generation_config.json");
        let generation_eos = match gc.is_file() {
            true => {
                let v = crate::config::read_json(&gc)?;
                crate::config::Json::new(&v, &gc).opt_ids("eos_token_id")?.unwrap_or_default()
            }
            false => vec![],
        };
        let vars = ck.take_vars();
        let model = Self {
            config,
            tower,
            tower_source,
            projector,
            region,
            llm,
            tokenizer,
            template,
            device: opts.device.clone(),
            dtype: opts.dtype,
            tiles,
            image_cache: crate::tasks::ImageTokenCache::from_env()?,
            generation_eos,
        };
        Ok((model, vars))
    }

    /// Square input size of the main image: the tower's, times the tiles per side.
    pub fn image_size(&self) -> usize {
        self.tower.run_size() * self.tiles
    }

    /// LLM tokens one main image becomes.
    pub fn image_tokens(&self) -> usize {
        // (the CLS row travels with the patches under `cls_patch`; conv projectors refuse it)
        let rows = self.tower.num_patches() + usize::from(self.config.mm.keep_cls);
        self.projector.out_tokens(rows) * self.tiles * self.tiles
    }

    /// Square input size of region images (the region tower's, or the main one's when the
    /// model has no region encoder).
    pub fn region_size(&self) -> usize {
        self.region.as_ref().map(|r| r.image_size()).unwrap_or(self.image_size())
    }

    /// Main-image pixels [B, 3, S, S] -> projected tokens [B, N', H]. With tiles, S = tiles x the
    /// tower size; each tile is encoded on its own and the tokens are concatenated tile by tile
    /// (row-major).
    pub fn encode_image(&self, pixels: &Tensor) -> Result<Tensor> {
        let feats = self.tower.patch_features(
            &self.tile_pixels(pixels)?,
            self.config.mm.select_layer,
            self.config.mm.keep_cls,
        )?;
        self.merge_tiles(&self.projector.forward(&feats)?)
    }

    /// Main-image pixels [B, 3, S, S] as the tower's inputs: unchanged without tiles, else the
    /// tiles of each image [B * tiles^2, 3, s, s] (image-major, tiles row-major).
    pub fn tile_pixels(&self, pixels: &Tensor) -> Result<Tensor> {
        let t = self.tiles;
        if t == 1 {
            return Ok(pixels.clone());
        }
        let (b, c, h, w) = pixels.dims4()?;
        let s = self.tower.run_size();
        if h != s * t || w != s * t {
            return invalid(format!("tiled input expects [B, 3, {n}, {n}] pixels, got {:?}", pixels.dims(), n = s * t));
        }
        Ok(pixels
            .reshape((b, c, t, s, t, s))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b * t * t, c, s, s))?
            .contiguous()?)
    }

    /// Per-tile tokens [B * tiles^2, n, H] (from [`Self::tile_pixels`]' order) -> per image
    /// [B, tiles^2 * n, H]; unchanged without tiles.
    pub fn merge_tiles(&self, tokens: &Tensor) -> Result<Tensor> {
        let t = self.tiles;
        if t == 1 {
            return Ok(tokens.clone());
        }
        let (bt, n, h) = tokens.dims3()?;
        Ok(tokens.reshape((bt / (t * t), t * t * n, h))?)
    }

    /// Region-image pixels [B, 3, s, s] -> one token each [B, 1, H]. Without a region encoder the
    /// region goes through the main tower and projector, as the reference does.
    pub fn encode_region(&self, pixels: &Tensor) -> Result<Tensor> {
        match &self.region {
            Some(r) => Ok(r.forward(pixels)?.unsqueeze(1)?),
            None => self.encode_image(pixels),
        }
    }

    /// The whole prompt for a user text with this model's template (`<image>\n` prepended when absent).
    pub fn render_prompt(&self, user_text: &str, template: Option<Template>) -> String {
        template.unwrap_or(self.template).render(&with_image_marker(user_text))
    }

    /// Tokenizes a rendered prompt and splices in the visual tokens. `images` and `regions`
    /// are already-preprocessed pixel tensors [3, S, S] (see [`Griffon::image_pixels`]).
    pub fn prepare(&self, prompt: &str, images: &[Tensor], regions: &[Tensor]) -> Result<Prepared> {
        let image_tokens = match self.stack(images)? {
            Some(p) => Some(self.encode_image(&p)?),
            None => None,
        };
        let region_tokens = match self.stack(regions)? {
            Some(p) => Some(self.encode_region(&p)?),
            None => None,
        };
        self.splice(prompt, image_tokens.as_ref(), images.len(), region_tokens.as_ref(), regions.len())
    }

    /// As [`Griffon::prepare`] for one main image whose projected tokens [N, H] are already
    /// computed (several prompts on one image encode it once).
    pub fn prepare_with_image_tokens(
        &self,
        prompt: &str,
        image_tokens: &Tensor,
        regions: &[Tensor],
    ) -> Result<Prepared> {
        let region_tokens = match self.stack(regions)? {
            Some(p) => Some(self.encode_region(&p)?),
            None => None,
        };
        let image_tokens = image_tokens.unsqueeze(0)?;
        self.splice(prompt, Some(&image_tokens), 1, region_tokens.as_ref(), regions.len())
    }

    fn stack(&self, ts: &[Tensor]) -> Result<Option<Tensor>> {
        if ts.is_empty() {
            Ok(None)
        } else {
            Ok(Some(Tensor::stack(ts, 0)?.to_dtype(self.dtype)?.to_device(&self.device)?))
        }
    }

    /// image_tokens: [n_images, N, H]; region_tokens: [n_regions, 1, H].
    fn splice(
        &self,
        prompt: &str,
        image_tokens: Option<&Tensor>,
        n_images: usize,
        region_tokens: Option<&Tensor>,
        n_regions: usize,
    ) -> Result<Prepared> {
        let (pieces, placeholders) = self.tokenizer.assemble(prompt)?;
        check_visual_counts(&placeholders, n_images, n_regions).map_err(|e| Error::Request(e.0))?;
        // counted before anything is embedded: a huge text is refused without building its
        // tokens x hidden embeddings
        let rows = |t: Option<&Tensor>| t.map(|t| t.dim(1)).transpose().map(|n| n.unwrap_or(0));
        let (per_image, per_region) = (rows(image_tokens)?, rows(region_tokens)?);
        let len: usize = pieces
            .iter()
            .map(|p| match p {
                Piece::Token(_) => 1,
                Piece::Visual(Placeholder::Image(_)) => per_image,
                Piece::Visual(Placeholder::Region(_)) => per_region,
            })
            .sum();
        if let Some(max) = self.config.max_position_embeddings.filter(|&m| len > m) {
            return Err(Error::Request(format!(
                "the prompt takes {len} positions (image tokens included), more than the model's \
                 max_position_embeddings {max}: shorten the text or use fewer images / tiles"
            )));
        }
        let prepared = self.embed_pieces(&pieces, image_tokens, region_tokens)?;
        debug_assert_eq!(prepared.embeds.dim(1)?, len);
        Ok(prepared)
    }

    /// Embeds assembled pieces: token ids through the embedding table, placeholders replaced by
    /// `image_tokens` [n_images, N, H] / `region_tokens` [n_regions, 1, H] rows. The caller has
    /// checked that every placeholder has its tokens.
    pub fn embed_pieces(
        &self,
        pieces: &[Piece],
        image_tokens: Option<&Tensor>,
        region_tokens: Option<&Tensor>,
    ) -> Result<Prepared> {
        let mut input_ids = Vec::with_capacity(pieces.len());
        let mut parts: Vec<Tensor> = Vec::new();
        let mut run: Vec<u32> = Vec::new();
        let vocab = self.llm.vocab_size() as u32;
        let flush = |run: &mut Vec<u32>, parts: &mut Vec<Tensor>| -> Result<()> {
            if !run.is_empty() {
                let ids = Tensor::new(run.as_slice(), &self.device)?;
                parts.push(self.llm.embed_tokens(&ids)?);
                run.clear();
            }
            Ok(())
        };
        for p in pieces {
            match p {
                Piece::Token(t) => {
                    if *t >= vocab {
                        return invalid(format!(
                            "the tokenizer produced id {t}, outside the model's vocabulary of {vocab}"
                        ));
                    }
                    input_ids.push(*t as i64);
                    run.push(*t);
                }
                Piece::Visual(v) => {
                    flush(&mut run, &mut parts)?;
                    input_ids.push(IMAGE_TOKEN_INDEX);
                    let missing = || Error::Invalid(format!("no visual tokens for placeholder {v:?}"));
                    let feats = match v {
                        Placeholder::Image(i) => image_tokens.ok_or_else(missing)?.get(*i)?,
                        Placeholder::Region(i) => region_tokens.ok_or_else(missing)?.get(*i)?,
                    };
                    parts.push(feats.to_dtype(self.dtype)?);
                }
            }
        }
        flush(&mut run, &mut parts)?;
        let embeds = Tensor::cat(&parts, 0)?.unsqueeze(0)?;
        Ok(Prepared { input_ids, embeds })
    }

    /// Loads and preprocesses a main image.
    pub fn image_pixels(&self, path: &Path) -> Result<Tensor> {
        let img = crate::resample::load_rgb(path)?;
        Ok(preprocess(&img, self.image_size(), &self.device)?)
    }

    /// Loads and preprocesses a region / exemplar image.
    pub fn region_pixels(&self, path: &Path) -> Result<Tensor> {
        let img = crate::resample::load_rgb(path)?;
        Ok(preprocess(&img, self.region_size(), &self.device)?)
    }

    /// Ids that end generation: config eos ids, generation_config.json eos ids, and the
    /// template's end-of-turn token when it is a single token.
    pub fn stop_ids(&self, template: Template) -> Vec<u32> {
        let mut ids = self.config.eos_token_ids.clone();
        ids.extend(&self.generation_eos);
        if let Some(t) = self.tokenizer.token_id(template.stop_string()) {
            ids.push(t);
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Generates an answer; the text skips special tokens and is trimmed.
    pub fn answer(&self, prepared: &Prepared, stop_ids: &[u32], opts: &SamplingOptions) -> Result<Answer> {
        let generation = generate(&self.llm, &prepared.embeds, stop_ids, opts, |_| {})?;
        self.finish_answer(generation)
    }

    fn finish_answer(&self, generation: Generation) -> Result<Answer> {
        let text = self.tokenizer.decode(&generation.tokens, true)?.trim().to_string();
        Ok(Answer { text, generation })
    }

    /// [`Griffon::answer`], calling `on_text` with each new piece of the answer's text as it is
    /// generated (the pieces concatenate to the trimmed answer text, except where the decoder
    /// rewrites text already shown, see [`crate::tokenize::TextStream`]).
    pub fn answer_streaming(
        &self,
        prepared: &Prepared,
        stop_ids: &[u32],
        opts: &SamplingOptions,
        mut on_text: impl FnMut(&str),
    ) -> Result<Answer> {
        let mut stream = crate::tokenize::TextStream::new(&self.tokenizer);
        let mut failed = None;
        let generation = generate(&self.llm, &prepared.embeds, stop_ids, opts, |id| match stream.push(id) {
            Ok(piece) if !piece.is_empty() => on_text(&piece),
            Ok(_) => {}
            Err(e) => failed = failed.take().or(Some(e)),
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        let rest = stream.finish()?;
        if !rest.is_empty() {
            on_text(&rest);
        }
        self.finish_answer(generation)
    }
}

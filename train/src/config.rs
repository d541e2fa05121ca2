//! `griffon train --config FILE.toml`: what to train, on what, how.
//!
//! ```toml
//! [model]
//! init = "path/to/checkpoint"     # the engine's checkpoint layout
//! # image_size = 512              # must be the stored tower's size (another: `griffon resize-tower` first)
//! # tiles = 2                     # cut each image into 2 x 2 tiles (saved as the checkpoint's mm_tiles)
//! [data]
//! tasks = "data/tasks.txt"        # released task list: `DET & det.jsonl & images/`
//! # or, instead of `tasks`, scenes of `griffon synth` rendered on the fly (nothing on disk):
//! # [data.synth]
//! # seed = 1                      # not the evaluation benchmark's seed
//! # samples = 100000              # samples per epoch (sample k = scene k)
//! # size = 1022
//! # max_objects = 20
//! # mix = { det = 0.4, vg = 0.25, reg = 0.15, visj = 0.2 }
//! # visj_random = 0.5             # share of counting samples on a random class (else the most frequent)
//! # region_naming = 0.0           # share of samples naming an object given as <region> (REG prompt)
//! # rec_not_largest = 0.0         # share of REC samples referring to an object other than the largest
//! # rec_turns = 1                 # REC samples ask for up to this many of the scene's objects, a turn each
//! # det_subsets = 0.0             # share of DET samples asking for fewer categories than all the shapes
//! max_len = 2048                  # longer samples are skipped and reported
//! max_categories = 80
//! none_prob = 0.0
//! det_format_prob = 1.0           # share of DET prompts with the answer-format suffix (1 = reference)
//! [train]
//! stage = 2                       # 1 projector | 2 all but the region encoder | 3 LLM + projectors
//!                                 # | 0 vision tower alone on the dense loss (synthetic data)
//! dense_weight = 0.0              # synthetic data: add the dense perception loss (train::dense)
//! ground_weight = 0.0             # add the grounding loss on REC answers (train::ground); 0 = off
//! ground_layer = 1                # its supervised head: decoder layer (0-based) ...
//! ground_head = 0                 # ... and query head
//! ground_box_weight = 0.0         # with it: the head's attended values should hold the box (0 = off)
//! ground_keys = "all"             # the head's whole causal row, or "image": renormalised over the image
//! ground_positions = "box"        # every box position, or "choice": those up to x1's first decimal
//! ground_name_weight = 0.0        # the name lens at the choosing position (0 = off; needs ground_layer >= 1)
//! choice_weight = 1.0             # answer-loss weight of each box's first decimal of x1 (1 = plain mean)
//! lr = 2e-5
//! vision_lr = 2e-6                # optional: train the vision tower at its own rate (Griffon-G stage 3)
//! region_lr = 1e-3                # optional: the region encoder and its projector at their own rate
//! epochs = 1
//! grad_accum = 8
//! warmup_ratio = 0.03
//! weight_decay = 0.0
//! max_grad_norm = 1.0
//! seed = 0
//! out = "runs/stage2"
//! save_every = 100                # optimizer steps; 0 = only at the end
//! max_steps = 0                   # 0 = epochs decide
//! batch_size = 1                  # samples per micro-batch (right-padded)
//! workers = 0                     # data threads; 0 = one per core
//! max_time_s = 0                  # stop (and save) after this many seconds of training in
//!                                 # total, resumed segments included; 0 = no limit
//! schedule = "steps"              # or "time": warmup + cosine over max_time_s of wall clock
//!                                 # (fixed-budget GPU sessions; not bit-reproducible), or
//!                                 # "constant": warmup, then the full rate (averaged runs)
//! tf32 = false                    # CUDA: f32 matmuls on TF32 tensor cores
//! dtype = "f32"                   # or "bf16" / "f16": mixed precision, f32 master weights
//! keep_checkpoints = 0            # keep only the newest N checkpoint-* folders; 0 = all
//! ```

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The most data threads `train.workers` may ask for.
pub const MAX_WORKERS: usize = 256;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelSection,
    pub data: DataSection,
    pub train: TrainSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub init: PathBuf,
    #[serde(default)]
    pub image_size: Option<usize>,
    /// Tiles per side (the tiling baseline of the resolution study); default: the checkpoint's.
    #[serde(default)]
    pub tiles: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    #[serde(default)]
    pub tasks: Option<PathBuf>,
    #[serde(default)]
    pub synth: Option<SynthSection>,
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    #[serde(default = "default_max_categories")]
    pub max_categories: usize,
    #[serde(default)]
    pub none_prob: f64,
    #[serde(default = "one_f64")]
    pub det_format_prob: f64,
    #[serde(default = "yes")]
    pub check_images: bool,
}

impl DataSection {
    /// What the sample builders read of this section (`seed`: the run's).
    pub fn build_options(&self, seed: u64) -> crate::data::BuildOptions {
        crate::data::BuildOptions {
            max_categories: self.max_categories,
            seed,
            check_images: self.check_images,
            none_prob: self.none_prob,
            det_format_prob: self.det_format_prob,
        }
    }
}

/// Synthetic scenes rendered on the fly (`griffon synth`'s generator).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthSection {
    pub seed: u64,
    /// Samples per epoch: sample k is scene k.
    pub samples: usize,
    #[serde(default = "default_synth_size")]
    pub size: u32,
    #[serde(default = "default_max_objects")]
    pub max_objects: usize,
    /// Multiplies the objects' sides (1.0, the default: the benchmark's distribution).
    #[serde(default = "default_object_scale")]
    pub object_scale: f64,
    #[serde(default)]
    pub mix: SynthMix,
    /// Share of exemplar-counting samples that count a random class of the scene instead of its
    /// most frequent one (0.5, the reference's VISJ builder).
    #[serde(default = "default_visj_random")]
    pub visj_random: f64,
    /// Share of samples naming an object given as a visual prompt (`SynthStream::with_region_naming`).
    #[serde(default)]
    pub region_naming: f64,
    /// Share of REC samples referring to an object other than the scene's largest
    /// (`SynthStream::with_rec_not_largest`).
    #[serde(default)]
    pub rec_not_largest: f64,
    /// Most REC turns per REC sample, one per referable object (`SynthStream::with_rec_turns`).
    #[serde(default = "default_rec_turns")]
    pub rec_turns: usize,
    /// Share of detection samples asking for a subset of the shapes (`SynthStream::with_det_subsets`).
    #[serde(default)]
    pub det_subsets: f64,
}

fn default_rec_turns() -> usize {
    1
}

fn default_visj_random() -> f64 {
    0.5
}

/// Task weights of the synthetic stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthMix {
    #[serde(default)]
    pub det: f64,
    #[serde(default)]
    pub vg: f64,
    #[serde(default)]
    pub reg: f64,
    #[serde(default)]
    pub visj: f64,
}

impl Default for SynthMix {
    fn default() -> Self {
        Self { det: 0.4, vg: 0.25, reg: 0.15, visj: 0.2 }
    }
}

fn default_synth_size() -> u32 {
    1022
}

fn default_object_scale() -> f64 {
    1.0
}

fn default_max_objects() -> usize {
    20
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    pub stage: u8,
    pub lr: f64,
    #[serde(default)]
    pub vision_lr: Option<f64>,
    /// Learning rate of the region encoder and its projector (a from-scratch region path next
    /// to a trained LLM learns faster at a higher rate); unset: `lr`.
    #[serde(default)]
    pub region_lr: Option<f64>,
    /// Explicit trainable modules (overrides the stage's): llm, projector, vision, region, region_projector.
    #[serde(default)]
    pub trainable: Option<Vec<String>>,
    #[serde(default = "one")]
    pub epochs: usize,
    #[serde(default = "one")]
    pub grad_accum: usize,
    #[serde(default = "default_warmup")]
    pub warmup_ratio: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "default_clip")]
    pub max_grad_norm: f64,
    /// Decay of an exponential moving average of the trained weights (0 = off, the default;
    /// e.g. 0.99 averages over about the last 100 steps; [`crate::optim::Ema`]). When on, each
    /// checkpoint's `model.safetensors` (and dense head) holds the average, which is what the
    /// engine loads; the raw weights stay in `optimizer.safetensors`, from which a resumed run
    /// continues them exactly.
    #[serde(default)]
    pub ema_decay: f64,
    #[serde(default)]
    pub seed: u64,
    pub out: PathBuf,
    #[serde(default)]
    pub save_every: usize,
    #[serde(default)]
    pub max_steps: usize,
    #[serde(default = "one")]
    pub batch_size: usize,
    #[serde(default)]
    pub workers: usize,
    #[serde(default)]
    pub max_time_s: f64,
    #[serde(default)]
    pub schedule: Schedule,
    /// Let CUDA f32 matmuls use TF32 tensor cores (10-bit mantissa products, f32 accumulation),
    /// as PyTorch's `allow_tf32`; no effect on CPU.
    #[serde(default)]
    pub tf32: bool,
    /// Compute dtype of the model: f32 (default), bf16 or f16 (mixed precision: the optimizer
    /// keeps f32 master weights and moments, checkpoints are written from the masters).
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// Keep only the newest N checkpoints of this run (0 = keep all), as transformers'
    /// `save_total_limit`.
    #[serde(default)]
    pub keep_checkpoints: usize,
    /// Weight of the dense perception loss ([`crate::dense`]) added to the answer loss on
    /// synthetic data (0 = off). Stage 0 trains on that loss alone.
    #[serde(default)]
    pub dense_weight: f64,
    /// Weight of the grounding loss ([`crate::ground`]) on REC answers (0 = off): one head's
    /// attention (see `ground_keys`) is supervised towards the referred object's image tokens.
    #[serde(default)]
    pub ground_weight: f64,
    /// The decoder layer (0-based) and query head the grounding loss supervises.
    #[serde(default = "one")]
    pub ground_layer: usize,
    #[serde(default)]
    pub ground_head: usize,
    /// Weight of the grounding loss's box readout (0 = off): the first four value channels of
    /// the supervised head's image tokens, averaged under its attention renormalised over them,
    /// regress the referred box (L1), so what the head finds carries where it is.
    #[serde(default)]
    pub ground_box_weight: f64,
    /// The grounding loss's attention: the head's whole causal row (`"all"`, default) or
    /// renormalised over the image tokens alone (`"image"`).
    #[serde(default)]
    pub ground_keys: GroundKeys,
    /// The grounding loss's positions: every one predicting a box token (`"box"`, default) or
    /// only those up to x1's first decimal (`"choice"`: before a coordinate is written that
    /// would let the head find the object by position).
    #[serde(default)]
    pub ground_positions: GroundPositions,
    /// Weight of the name lens (0 = off; [`crate::ground::GroundSpec::name_loss`]): the residual
    /// stream the grounding layer reads, at the position choosing each REC box's object, read
    /// through the LLM's output head, should spell the object's name. Needs the grounding loss
    /// (`ground_weight` > 0) on a layer above the first (`ground_layer` >= 1).
    #[serde(default)]
    pub ground_name_weight: f64,
    /// Weight, in the answer loss, of the token that gives each box's first decimal of `x1`
    /// (where a box's object is chosen under teacher forcing, docs/SYNTH.md session 17); the
    /// loss stays a sum over the supervised tokens divided by their count. 1 = the plain mean.
    #[serde(default = "one_f64")]
    pub choice_weight: f64,
}

fn default_dtype() -> String {
    "f32".into()
}

impl TrainSection {
    pub fn compute_dtype(&self) -> Result<candle_core::DType, String> {
        match self.dtype.as_str() {
            "f32" => Ok(candle_core::DType::F32),
            "bf16" => Ok(candle_core::DType::BF16),
            "f16" => Ok(candle_core::DType::F16),
            o => Err(format!("train.dtype must be f32, bf16 or f16, got {o:?}")),
        }
    }
}

/// The grounding loss's attention row (`train.ground_keys`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroundKeys {
    /// The head's whole causal row: attention elsewhere counts against it.
    #[default]
    All,
    /// Renormalised over the image tokens alone.
    Image,
}

/// The answer positions the grounding loss supervises (`train.ground_positions`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroundPositions {
    /// Every position predicting a box token.
    #[default]
    Box,
    /// Those up to x1's first decimal (where the object is chosen).
    Choice,
}

/// What the learning-rate schedule runs over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Optimizer steps (transformers' cosine with warmup; exact resume).
    #[default]
    Steps,
    /// Wall-clock fraction of `max_time_s`.
    Time,
    /// Optimizer steps: the same linear warmup, then the full rate to the end
    /// (transformers' `get_constant_schedule_with_warmup`): for runs whose weights are averaged
    /// (`ema_decay`, `tools/synth/average.py`), where a decay to zero would leave nothing to average.
    Constant,
}

fn default_max_len() -> usize {
    2048
}
fn default_max_categories() -> usize {
    80
}
fn default_warmup() -> f64 {
    0.03
}
fn default_clip() -> f64 {
    1.0
}
fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}

fn one_f64() -> f64 {
    1.0
}

/// The parts of a Griffon checkpoint, by tensor-name prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Module {
    Llm,
    Projector,
    Vision,
    Region,
    RegionProjector,
}

impl Module {
    pub fn of(name: &str) -> Module {
        if name.starts_with("model.vision_tower.") {
            Module::Vision
        } else if name.starts_with("model.mm_projector.") {
            Module::Projector
        } else if name.starts_with("model.prompt_visual_encoder.") {
            Module::Region
        } else if name.starts_with("model.prompt_projector.") {
            Module::RegionProjector
        } else {
            Module::Llm
        }
    }

    fn parse(s: &str) -> Result<Module, String> {
        Ok(match s {
            "llm" => Module::Llm,
            "projector" => Module::Projector,
            "vision" => Module::Vision,
            "region" => Module::Region,
            "region_projector" => Module::RegionProjector,
            o => return Err(format!("unknown module `{o}` (llm, projector, vision, region, region_projector)")),
        })
    }
}

impl TrainConfig {
    pub fn from_file(path: &Path) -> Result<Self, String> {
        Self::from_file_with(path, &[])
    }

    /// Reads a config, then applies `key.path=value` overrides (`griffon train --set`): the value
    /// is read as a TOML value (a bare word that is not one is taken as a string); an empty value
    /// (`key.path=`) removes the entry (an error when the file has none), so its default applies
    /// (e.g. `train.region_lr=`: the region path back on the main learning rate). Relative paths
    /// in the file are relative to the file; relative paths given as overrides are relative to the
    /// working directory.
    pub fn from_file_with(path: &Path, overrides: &[String]) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut doc: toml::Table = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut overridden = Vec::new();
        for o in overrides {
            let (key, value) = o.split_once('=').ok_or_else(|| format!("--set {o:?}: expected key.path=value"))?;
            let key = key.trim();
            let value: Option<toml::Value> = if value.trim().is_empty() {
                None
            } else {
                Some(match toml::from_str::<toml::Table>(&format!("v = {value}")) {
                    Ok(mut t) => t.remove("v").expect("parsed key"),
                    Err(_) => toml::Value::String(value.to_string()),
                })
            };
            let parts: Vec<&str> = key.split('.').collect();
            if parts.iter().any(|p| p.is_empty()) {
                return Err(format!("--set {o:?}: empty key component"));
            }
            let last = parts[parts.len() - 1];
            let mut table = &mut doc;
            for p in &parts[..parts.len() - 1] {
                if value.is_none() && !table.contains_key(*p) {
                    return Err(format!("--set {o:?}: the config has no entry {key} to remove"));
                }
                let entry = table.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
                table = entry.as_table_mut().ok_or_else(|| format!("--set {o:?}: `{p}` is not a table"))?;
            }
            match value {
                Some(v) => {
                    table.insert(last.to_string(), v);
                }
                // removing what is not there is a typo or a misunderstanding, not a no-op
                None if table.remove(last).is_none() => {
                    return Err(format!("--set {o:?}: the config has no entry {key} to remove"));
                }
                None => {}
            }
            overridden.push(key.to_string());
        }
        // with overrides, an error may be theirs (a misspelt key, a value of the wrong type): say so
        let source = match overridden.is_empty() {
            true => path.display().to_string(),
            false => format!("{} with --set {}", path.display(), overridden.join(", ")),
        };
        let mut cfg: TrainConfig = doc.try_into().map_err(|e: toml::de::Error| format!("{source}: {e}"))?;
        // relative paths are relative to the config file (overrides: to the working directory)
        let base = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf, key: &str| {
            if p.is_relative() && !overridden.iter().any(|k| k == key) {
                *p = base.join(&*p);
            }
        };
        fix(&mut cfg.model.init, "model.init");
        if let Some(t) = cfg.data.tasks.as_mut() {
            fix(t, "data.tasks");
        }
        fix(&mut cfg.train.out, "train.out");
        cfg.validate().map_err(|e| format!("{source}: {e}"))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), String> {
        let t = &self.train;
        if t.stage > 3 {
            return Err(format!("train.stage must be 0, 1, 2 or 3, got {}", t.stage));
        }
        if !(t.dense_weight >= 0.0 && t.dense_weight.is_finite()) {
            return Err(format!("train.dense_weight must be a non-negative number, got {}", t.dense_weight));
        }
        if !(t.ground_weight >= 0.0 && t.ground_weight.is_finite()) {
            return Err(format!("train.ground_weight must be a non-negative number, got {}", t.ground_weight));
        }
        if !(t.ground_box_weight >= 0.0 && t.ground_box_weight.is_finite()) {
            return Err(format!("train.ground_box_weight must be a non-negative number, got {}", t.ground_box_weight));
        }
        if t.ground_weight == 0.0 {
            // the grounding loss's own settings do nothing while it is off: say so instead of
            // training without what they ask for
            let set: Vec<&str> = [
                ("train.ground_layer", t.ground_layer != 1),
                ("train.ground_head", t.ground_head != 0),
                ("train.ground_keys", t.ground_keys != GroundKeys::All),
                ("train.ground_positions", t.ground_positions != GroundPositions::Box),
            ]
            .into_iter()
            .filter_map(|(k, on)| on.then_some(k))
            .collect();
            if !set.is_empty() {
                return Err(format!(
                    "{}: settings of the grounding loss, which is off (train.ground_weight = 0): set train.ground_weight > 0, \
                     or leave them out",
                    set.join(", ")
                ));
            }
        }
        if t.ground_box_weight > 0.0 && t.ground_weight == 0.0 {
            return Err(
                "train.ground_box_weight reads the grounding loss's head: set train.ground_weight > 0 too".into()
            );
        }
        if !(t.ground_name_weight >= 0.0 && t.ground_name_weight.is_finite()) {
            return Err(format!(
                "train.ground_name_weight must be a non-negative number, got {}",
                t.ground_name_weight
            ));
        }
        if t.ground_name_weight > 0.0 && t.ground_weight == 0.0 {
            return Err(
                "train.ground_name_weight reads the grounding loss's layer: set train.ground_weight > 0 too".into()
            );
        }
        if t.ground_name_weight > 0.0 && t.ground_layer == 0 {
            return Err(
                "train.ground_name_weight needs train.ground_layer >= 1: layer 0 reads the embeddings alone".into()
            );
        }
        if !(t.choice_weight > 0.0 && t.choice_weight.is_finite()) {
            return Err(format!("train.choice_weight must be a positive number, got {}", t.choice_weight));
        }
        if t.ground_weight > 0.0 && t.stage == 0 {
            return Err("train.ground_weight needs answers to supervise: stage 0 trains the dense loss alone".into());
        }
        // stage 0 trains the dense loss alone, at weight 1: the answer-loss settings do nothing
        if t.stage == 0 && t.dense_weight != 0.0 && t.dense_weight != 1.0 {
            return Err(format!(
                "train.dense_weight = {} does nothing in stage 0, which trains the dense loss alone (at weight 1)",
                t.dense_weight
            ));
        }
        if t.stage == 0 {
            // the dense head reads the tower's features: nothing else gets a gradient
            let modules = self.trainable_modules();
            if modules != [Module::Vision] {
                return Err(format!(
                    "train.trainable = {modules:?} in stage 0: its dense loss reaches the vision tower only \
                     (train [\"vision\"], or leave trainable unset)"
                ));
            }
        }
        if t.stage == 0 && t.choice_weight != 1.0 {
            return Err(format!(
                "train.choice_weight = {} weighs answer tokens, which stage 0 does not train",
                t.choice_weight
            ));
        }
        if (t.stage == 0 || t.dense_weight > 0.0) && self.data.synth.is_none() {
            return Err("the dense perception loss (stage 0 or train.dense_weight) needs [data.synth]: it is built from the scenes' objects".into());
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return Err(format!("train.lr must be positive, got {}", t.lr));
        }
        for (name, v) in [("vision_lr", t.vision_lr), ("region_lr", t.region_lr)] {
            if let Some(v) = v.filter(|v| !(*v > 0.0 && v.is_finite())) {
                return Err(format!("train.{name} must be positive, got {v}"));
            }
        }
        if !(t.weight_decay >= 0.0 && t.weight_decay.is_finite()) {
            return Err(format!("train.weight_decay must be a non-negative number, got {}", t.weight_decay));
        }
        if !(t.max_grad_norm >= 0.0 && t.max_grad_norm.is_finite()) {
            return Err(format!(
                "train.max_grad_norm must be a non-negative number (0 = no clipping), got {}",
                t.max_grad_norm
            ));
        }
        if !(0.0..1.0).contains(&t.ema_decay) {
            return Err(format!("train.ema_decay must be in [0, 1) (0 = no moving average), got {}", t.ema_decay));
        }
        if t.workers > MAX_WORKERS {
            // each loads its share of a round of micro-batches before any is delivered
            return Err(format!(
                "train.workers = {} is more data threads than this trainer runs (at most {MAX_WORKERS}; 0 = one per core)",
                t.workers
            ));
        }
        if t.grad_accum == 0 || t.epochs == 0 || t.batch_size == 0 {
            return Err("train.grad_accum, train.batch_size and train.epochs must be at least 1".into());
        }
        if !(t.max_time_s >= 0.0 && t.max_time_s.is_finite()) {
            return Err(format!("train.max_time_s must be a non-negative number of seconds, got {}", t.max_time_s));
        }
        t.compute_dtype()?;
        if t.schedule == Schedule::Time && t.max_time_s <= 0.0 {
            return Err("train.schedule = \"time\" needs train.max_time_s > 0".into());
        }
        match (&self.data.tasks, &self.data.synth) {
            (None, None) => return Err("[data] needs `tasks` (a task list) or a [data.synth] section".into()),
            (Some(_), Some(_)) => return Err("[data] takes `tasks` or [data.synth], not both".into()),
            (None, Some(s)) if s.samples == 0 => return Err("data.synth.samples must be at least 1".into()),
            // the stream's own checks, named by the config key before anything is built
            (None, Some(s)) => {
                crate::synth::check_visj_random(s.visj_random).map_err(|m| format!("data.synth.{m}"))?;
                crate::synth::check_region_naming(s.region_naming).map_err(|m| format!("data.synth.{m}"))?;
                crate::synth::check_rec_not_largest(s.rec_not_largest).map_err(|m| format!("data.synth.{m}"))?;
                crate::synth::check_rec_turns(s.rec_turns).map_err(|m| format!("data.synth.{m}"))?;
                crate::synth::check_det_subsets(s.det_subsets).map_err(|m| format!("data.synth.{m}"))?;
                let most = crate::synth::MAX_SCENE_SIZE;
                if !(32..=most).contains(&s.size) {
                    return Err(format!("data.synth.size {} is outside 32..={most} px", s.size));
                }
                if s.max_objects == 0 {
                    return Err("data.synth.max_objects must be at least 1".into());
                }
                if !(s.object_scale.is_finite() && (0.25..=20.0).contains(&s.object_scale)) {
                    return Err(format!("data.synth.object_scale {} is outside 0.25..=20", s.object_scale));
                }
                let m = &s.mix;
                let w = [m.det, m.vg, m.reg, m.visj];
                if w.iter().any(|w| !(w.is_finite() && *w >= 0.0)) || w.iter().all(|w| *w == 0.0) {
                    return Err(format!(
                        "data.synth.mix = {{det = {}, vg = {}, reg = {}, visj = {}}}: the weights must be \
                         finite, non-negative and not all zero",
                        m.det, m.vg, m.reg, m.visj
                    ));
                }
            }
            _ => {}
        }
        self.data.build_options(t.seed).check().map_err(|m| format!("data.{m}"))?;
        if !(0.0..1.0).contains(&t.warmup_ratio) {
            return Err(format!("train.warmup_ratio must be in [0, 1), got {}", t.warmup_ratio));
        }
        if let Some(m) = &t.trainable {
            for s in m {
                Module::parse(s)?;
            }
        }
        let modules = self.trainable_modules();
        if t.region_lr.is_some() && !modules.iter().any(|m| matches!(m, Module::Region | Module::RegionProjector)) {
            return Err("train.region_lr is set but neither `region` nor `region_projector` is trainable".into());
        }
        if t.vision_lr.is_some() && !modules.contains(&Module::Vision) {
            return Err("train.vision_lr is set but train.trainable does not list `vision` (without a list, vision_lr adds the tower)".into());
        }
        Ok(())
    }

    /// Trainable modules: the stage's (paper recipe, shared/GRIFFON_FORMAT.md) unless listed.
    pub fn trainable_modules(&self) -> Vec<Module> {
        if let Some(list) = &self.train.trainable {
            return list.iter().filter_map(|s| Module::parse(s).ok()).collect();
        }
        let mut v = match self.train.stage {
            0 => vec![Module::Vision],
            1 => vec![Module::Projector],
            2 => vec![Module::Llm, Module::Projector, Module::Vision, Module::RegionProjector],
            _ => vec![Module::Llm, Module::Projector, Module::RegionProjector],
        };
        if self.train.vision_lr.is_some() && !v.contains(&Module::Vision) {
            v.push(Module::Vision);
        }
        v
    }

    /// Learning rate for a module (the vision tower and the region path may have their own).
    pub fn lr_of(&self, m: Module) -> f64 {
        match (m, self.train.vision_lr, self.train.region_lr) {
            (Module::Vision, Some(v), _) => v,
            (Module::Region | Module::RegionProjector, _, Some(r)) => r,
            _ => self.train.lr,
        }
    }
}

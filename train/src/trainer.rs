//! The trainer: loss on answer tokens only; AdamW with f32 master weights and moments; cosine
//! schedule with warmup ratio; gradient accumulation and clipping; per-module freezing and
//! learning rates; checkpoints in the engine's layout written atomically; exact resume.

use crate::config::{Module, TrainConfig};
use crate::data::{build_all, read_task_list, BuildOptions, Sample, Skipped};
use crate::optim::{clip_grad_norm, cosine_with_warmup, warmup_steps, AdamW};
use candle_core::{DType, Device, Tensor, Var, D};
use griffon_core::template::with_image_marker;
use griffon_core::{check_visual_counts, Piece, Placeholder, Template};
use griffon_model::griffon::{Griffon, LoadOptions};
use griffon_model::loader::Checkpoint;
use griffon_model::resample::{load_rgb, preprocess};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub type Error = String;

/// A sample turned into model input: pieces with a supervision flag per piece.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub pieces: Vec<Piece>,
    /// True for answer tokens (and their turn suffix): the loss targets.
    pub supervised: Vec<bool>,
    /// Sequence length after placeholders expand.
    pub len: usize,
}

/// Turns a sample's conversation into pieces; the user turns are the prompt, the assistant
/// turns (plus the template's answer suffix) are supervised.
pub fn encode_sample(m: &Griffon, template: Template, s: &Sample, image_len: usize) -> Result<Encoded, Error> {
    let mut pieces = Vec::new();
    let mut supervised = Vec::new();
    for (k, (user, answer)) in s.turns.iter().enumerate() {
        if answer.trim().is_empty() {
            return Err("empty answer".into());
        }
        let prompt_pieces = if k == 0 {
            let prompt = template.render(&with_image_marker(user));
            let (p, ph) = m.tokenizer.assemble(&prompt).map_err(|e| e.to_string())?;
            check_visual_counts(&ph, 1, s.regions.len()).map_err(|e| e.0)?;
            p
        } else {
            if user.contains("<region>") || user.contains("<image>") {
                return Err("visual markers are only supported in the first turn".into());
            }
            let ids = m.tokenizer.encode_plain(&template.render_followup(user)).map_err(|e| e.to_string())?;
            ids.into_iter().map(Piece::Token).collect()
        };
        supervised.extend(std::iter::repeat_n(false, prompt_pieces.len()));
        pieces.extend(prompt_pieces);
        let ans = m.tokenizer.encode_plain(&format!("{answer}{}", template.answer_suffix())).map_err(|e| e.to_string())?;
        supervised.extend(std::iter::repeat_n(true, ans.len()));
        pieces.extend(ans.into_iter().map(Piece::Token));
    }
    let len = pieces
        .iter()
        .map(|p| match p {
            Piece::Visual(Placeholder::Image(_)) => image_len,
            _ => 1,
        })
        .sum();
    Ok(Encoded { pieces, supervised, len })
}

/// Mean cross-entropy of the supervised tokens given logits [T, V] over the expanded sequence.
pub fn answer_loss(logits: &Tensor, enc: &Encoded, image_len: usize) -> candle_core::Result<(Tensor, usize)> {
    let mut pos = 0usize;
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (p, &sup) in enc.pieces.iter().zip(&enc.supervised) {
        match p {
            Piece::Token(t) => {
                if sup && pos > 0 {
                    rows.push((pos - 1) as u32);
                    targets.push(*t);
                }
                pos += 1;
            }
            Piece::Visual(Placeholder::Image(_)) => pos += image_len,
            Piece::Visual(Placeholder::Region(_)) => pos += 1,
        }
    }
    let dev = logits.device();
    let n = rows.len();
    let rows = Tensor::new(rows, dev)?;
    let targets = Tensor::new(targets, dev)?.unsqueeze(1)?;
    let lsm = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?.index_select(&rows, 0)?, D::Minus1)?;
    let nll = lsm.gather(&targets, 1)?.neg()?.mean_all()?;
    Ok((nll, n))
}

/// Loss of one sample (graph kept for backward) and its supervised token count.
pub fn sample_loss(m: &Griffon, s: &Sample, enc: &Encoded) -> Result<(Tensor, usize), Error> {
    let main = load_rgb(&s.image).map_err(|e| e.to_string())?;
    let px = preprocess(&main, m.image_size(), &m.device).map_err(|e| e.to_string())?;
    let image_tokens = m.encode_image(&px.unsqueeze(0).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let region_tokens = if s.regions.is_empty() {
        None
    } else {
        let crops = s
            .regions
            .iter()
            .map(|r| griffon_model::tasks::exemplar_image(r, &main).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let px = crops
            .iter()
            .map(|c| preprocess(c, m.region_size(), &m.device))
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(|e| e.to_string())?;
        let stacked = Tensor::stack(&px, 0).map_err(|e| e.to_string())?;
        Some(m.encode_region(&stacked).map_err(|e| e.to_string())?)
    };
    let prepared = m.embed_pieces(&enc.pieces, Some(&image_tokens), region_tokens.as_ref()).map_err(|e| e.to_string())?;
    let mut cache = m.llm.new_cache();
    let logits = m.llm.forward_embeds(&prepared.embeds, &mut cache, true).map_err(|e| e.to_string())?;
    let image_len = image_tokens.dim(1).map_err(|e| e.to_string())?;
    answer_loss(&logits.squeeze(0).map_err(|e| e.to_string())?, enc, image_len).map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Serialize)]
pub struct StepLog {
    pub step: usize,
    pub epoch: f64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub steps: usize,
    pub total_steps: usize,
    pub samples: usize,
    pub losses: Vec<f64>,
    pub skipped: Vec<Skipped>,
    pub checkpoint: PathBuf,
}

/// A model ready to train with its optimizer and data.
pub struct Trainer {
    pub cfg: TrainConfig,
    pub model: Griffon,
    pub template: Template,
    pub opt: AdamW,
    /// Checkpoint the model was loaded from (frozen tensors are copied from it on save).
    source_dir: PathBuf,
    pub samples: Vec<(Sample, Encoded)>,
    pub skipped: Vec<Skipped>,
    pub total_steps: usize,
    /// learning rate per optimizer group
    group_lrs: Vec<f64>,
    /// The sample order of one epoch, kept while that epoch runs (a shuffle per micro-batch
    /// would cost O(samples) each time).
    order: Option<(usize, Vec<usize>)>,
}

const STATE_FILE: &str = "trainer_state.json";
const OPT_FILE: &str = "optimizer.safetensors";
const LATEST: &str = "latest";

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
struct TrainerState {
    step: usize,
    total_steps: usize,
    samples: usize,
    seed: u64,
}

fn latest_checkpoint(out: &Path) -> Option<PathBuf> {
    let name = std::fs::read_to_string(out.join(LATEST)).ok()?;
    let dir = out.join(name.trim());
    dir.join(STATE_FILE).is_file().then_some(dir)
}

impl Trainer {
    /// Builds the data, loads the model (resuming from `out/latest` when present).
    pub fn new(cfg: TrainConfig, device: &Device) -> Result<Self, Error> {
        griffon_model::nn::set_differentiable(true);
        let sources = read_task_list(&cfg.data.tasks).map_err(|e| e.to_string())?;
        let bopts = BuildOptions {
            max_categories: cfg.data.max_categories,
            seed: cfg.train.seed,
            check_images: cfg.data.check_images,
            none_prob: cfg.data.none_prob,
        };
        let (samples, mut skipped) = build_all(&sources, &bopts).map_err(|e| e.to_string())?;
        let resume = latest_checkpoint(&cfg.train.out);
        // `init` may name a previous stage's output folder: follow its `latest` pointer
        let init = latest_checkpoint(&cfg.model.init).unwrap_or_else(|| cfg.model.init.clone());
        let source_dir = resume.clone().unwrap_or(init);
        let modules = cfg.trainable_modules();
        let pred_modules = modules.clone();
        let opts = LoadOptions {
            device: device.clone(),
            dtype: DType::F32,
            image_size: cfg.model.image_size,
            tiles: cfg.model.tiles,
            ..Default::default()
        };
        let (model, vars) = Griffon::load_trainable(
            &source_dir,
            &opts,
            Box::new(move |name: &str| pred_modules.contains(&Module::of(name))),
        )
        .map_err(|e| e.to_string())?;
        if vars.is_empty() {
            return Err(format!("no trainable tensors for modules {modules:?} in {}", source_dir.display()));
        }
        if modules.contains(&Module::Vision) && model.tower.run_size() != model.tower.cfg.image_size {
            return Err("training the vision tower at an interpolated resolution is not supported; resize the checkpoint's position table first".into());
        }
        let template = model.template;
        let image_len = model.image_tokens();
        let mut encoded = Vec::new();
        for s in samples {
            match encode_sample(&model, template, &s, image_len) {
                Ok(e) if e.len > cfg.data.max_len => skipped.push(Skipped {
                    source: s.source.clone(),
                    reason: format!("over-long: {} positions > max_len {}", e.len, cfg.data.max_len),
                }),
                Ok(e) if !e.supervised.iter().any(|x| *x) => {
                    skipped.push(Skipped { source: s.source.clone(), reason: "no supervised tokens".into() })
                }
                Ok(e) => encoded.push((s, e)),
                Err(reason) => skipped.push(Skipped { source: s.source.clone(), reason }),
            }
        }
        if encoded.is_empty() {
            return Err(format!("no usable training samples ({} skipped)", skipped.len()));
        }
        let mut groups: Vec<f64> = Vec::new();
        let mut params = Vec::new();
        for (name, var) in vars {
            let lr = cfg.lr_of(Module::of(&name));
            let g = groups.iter().position(|x| *x == lr).unwrap_or_else(|| {
                groups.push(lr);
                groups.len() - 1
            });
            params.push((name, var, g));
        }
        let opt = AdamW::new(params, cfg.train.weight_decay).map_err(|e| e.to_string())?;
        let per_epoch = encoded.len().div_ceil(cfg.train.grad_accum);
        let total_steps = if cfg.train.max_steps > 0 { cfg.train.max_steps } else { per_epoch * cfg.train.epochs };
        let mut t = Self {
            cfg,
            model,
            template,
            opt,
            source_dir: source_dir.clone(),
            samples: encoded,
            skipped,
            total_steps,
            group_lrs: groups,
            order: None,
        };
        if let Some(dir) = resume {
            t.restore(&dir)?;
        }
        Ok(t)
    }

    fn restore(&mut self, dir: &Path) -> Result<(), Error> {
        let state: TrainerState = serde_json::from_str(
            &std::fs::read_to_string(dir.join(STATE_FILE)).map_err(|e| format!("{}: {e}", dir.display()))?,
        )
        .map_err(|e| format!("{}: {e}", dir.join(STATE_FILE).display()))?;
        let want = TrainerState { step: state.step, total_steps: self.total_steps, samples: self.samples.len(), seed: self.cfg.train.seed };
        if state != want {
            return Err(format!(
                "{} was written by a different run (state {state:?}, this run {want:?}); use a new train.out",
                dir.display()
            ));
        }
        let opt = candle_core::safetensors::load(dir.join(OPT_FILE), &self.model.device).map_err(|e| e.to_string())?;
        self.opt.load_state(&opt, state.step)?;
        Ok(())
    }

    /// The sample used by global micro-batch `k` (epoch-wise seeded permutations).
    fn sample_index(&mut self, k: usize) -> usize {
        let n = self.samples.len();
        let epoch = k / n;
        if self.order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut perm: Vec<usize> = (0..n).collect();
            perm.shuffle(&mut StdRng::seed_from_u64(self.cfg.train.seed.wrapping_add(epoch as u64)));
            self.order = Some((epoch, perm));
        }
        self.order.as_ref().expect("set above").1[k % n]
    }

    fn lrs_at(&self, step: usize) -> Vec<f64> {
        let warm = warmup_steps(self.total_steps, self.cfg.train.warmup_ratio);
        let f = cosine_with_warmup(step, warm, self.total_steps);
        self.group_lrs.iter().map(|lr| lr * f).collect()
    }

    /// Summed (averaged over the accumulation) gradients of one optimizer step, its mean loss
    /// and supervised token count. Samples whose images fail are reported in `skipped`.
    pub fn step_gradients(&mut self, step: usize) -> Result<(Vec<Tensor>, f64, usize), Error> {
        let accum = self.cfg.train.grad_accum;
        let mut grads: Vec<Tensor> = self
            .opt
            .params
            .iter()
            .map(|p| p.master.zeros_like())
            .collect::<candle_core::Result<_>>()
            .map_err(|e| e.to_string())?;
        let mut loss_sum = 0.0;
        let mut tokens = 0;
        for j in 0..accum {
            let idx = self.sample_index(step * accum + j);
            let (s, enc) = &self.samples[idx];
            let (loss, n) = match sample_loss(&self.model, s, enc) {
                Ok(x) => x,
                Err(reason) => {
                    self.skipped.push(Skipped { source: s.source.clone(), reason });
                    continue;
                }
            };
            let l = (loss / accum as f64).map_err(|e| e.to_string())?;
            let gs = l.backward().map_err(|e| e.to_string())?;
            loss_sum += l.to_scalar::<f32>().map_err(|e| e.to_string())? as f64;
            tokens += n;
            for (g, p) in grads.iter_mut().zip(&self.opt.params) {
                if let Some(pg) = gs.get(p.var.as_tensor()) {
                    *g = (&*g + pg.to_dtype(DType::F32).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
                }
            }
        }
        Ok((grads, loss_sum, tokens))
    }

    /// Trains to the end (or `stop_after` more steps, for tests of interruption), logging to
    /// `out/metrics.jsonl` and saving checkpoints.
    pub fn run(&mut self, stop_after: Option<usize>, progress: bool) -> Result<TrainReport, Error> {
        let out = self.cfg.train.out.clone();
        std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out.join("metrics.jsonl"))
            .map_err(|e| format!("{}: {e}", out.join("metrics.jsonl").display()))?;
        let bar = if progress {
            let b = indicatif::ProgressBar::new(self.total_steps as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
                    .expect("valid template"),
            );
            b.set_position(self.opt.step as u64);
            b
        } else {
            indicatif::ProgressBar::hidden()
        };
        let start = Instant::now();
        let mut losses = Vec::new();
        let mut done = 0;
        let mut checkpoint = self.source_dir.clone();
        while self.opt.step < self.total_steps {
            if stop_after.is_some_and(|n| done >= n) {
                break;
            }
            let step = self.opt.step;
            let t0 = Instant::now();
            let (mut grads, loss, tokens) = self.step_gradients(step)?;
            let grad_norm = clip_grad_norm(&mut grads, self.cfg.train.max_grad_norm).map_err(|e| e.to_string())?;
            let lrs = self.lrs_at(step);
            self.opt.step(&grads, &lrs).map_err(|e| e.to_string())?;
            done += 1;
            losses.push(loss);
            let entry = StepLog {
                step: self.opt.step,
                epoch: (self.opt.step * self.cfg.train.grad_accum) as f64 / self.samples.len() as f64,
                loss,
                lr: lrs[0],
                grad_norm,
                tokens,
                tokens_per_s: tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9),
                elapsed_s: start.elapsed().as_secs_f64(),
            };
            writeln!(log, "{}", serde_json::to_string(&entry).expect("serializable")).map_err(|e| e.to_string())?;
            bar.set_position(self.opt.step as u64);
            bar.set_message(format!("loss {loss:.4} lr {:.2e} tok/s {:.0}", lrs[0], entry.tokens_per_s));
            let every = self.cfg.train.save_every;
            if self.opt.step == self.total_steps || (every > 0 && self.opt.step % every == 0) {
                checkpoint = self.save()?;
            }
        }
        bar.finish();
        Ok(TrainReport {
            steps: self.opt.step,
            total_steps: self.total_steps,
            samples: self.samples.len(),
            losses,
            skipped: self.skipped.clone(),
            checkpoint,
        })
    }

    /// Writes `out/checkpoint-{step}` in the engine's layout plus the optimizer state, into a
    /// temporary folder renamed into place, then points `out/latest` at it (also by rename), so a
    /// kill at any moment leaves the last good checkpoint intact.
    pub fn save(&mut self) -> Result<PathBuf, Error> {
        let out = self.cfg.train.out.clone();
        let name = format!("checkpoint-{}", self.opt.step);
        let final_dir = out.join(&name);
        let tmp = out.join(format!(".tmp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        let io = |e: std::io::Error| e.to_string();
        // non-weight files (config, tokenizer, tower config folders) as they were
        copy_support_files(&self.source_dir, &tmp).map_err(io)?;
        // weights: trainable from the variables (stored dtype), frozen as stored
        let src = Checkpoint::open(&self.source_dir, &Device::Cpu, DType::F32).map_err(|e| e.to_string())?;
        let trained: HashMap<&str, &Var> = self.opt.params.iter().map(|p| (p.name.as_str(), &p.var)).collect();
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for n in src.names() {
            let stored = src.get_stored(n).map_err(|e| e.to_string())?;
            let t = match trained.get(n) {
                Some(v) => v.as_tensor().to_dtype(stored.dtype()).and_then(|t| t.to_device(&Device::Cpu)).map_err(|e| e.to_string())?,
                None => stored,
            };
            tensors.insert(n.to_string(), t);
        }
        candle_core::safetensors::save(&tensors, tmp.join("model.safetensors")).map_err(|e| e.to_string())?;
        let opt: HashMap<String, Tensor> = self
            .opt
            .state_tensors()
            .into_iter()
            .map(|(k, v)| v.to_device(&Device::Cpu).map(|v| (k, v)))
            .collect::<candle_core::Result<_>>()
            .map_err(|e| e.to_string())?;
        candle_core::safetensors::save(&opt, tmp.join(OPT_FILE)).map_err(|e| e.to_string())?;
        let state = TrainerState { step: self.opt.step, total_steps: self.total_steps, samples: self.samples.len(), seed: self.cfg.train.seed };
        std::fs::write(tmp.join(STATE_FILE), serde_json::to_string_pretty(&state).expect("serializable")).map_err(io)?;
        sync_dir(&tmp).map_err(io)?;
        let _ = std::fs::remove_dir_all(&final_dir);
        std::fs::rename(&tmp, &final_dir).map_err(io)?;
        let latest_tmp = out.join(format!(".{LATEST}.tmp"));
        std::fs::write(&latest_tmp, &name).map_err(io)?;
        std::fs::File::open(&latest_tmp).and_then(|f| f.sync_all()).map_err(io)?;
        std::fs::rename(&latest_tmp, out.join(LATEST)).map_err(io)?;
        Ok(final_dir)
    }
}

fn copy_support_files(from: &Path, to: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let p = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        if p.is_dir() {
            if p.join("config.json").is_file() {
                std::fs::create_dir_all(to.join(&name))?;
                copy_support_files(&p, &to.join(&name))?;
            }
        } else if !(name.ends_with(".safetensors") || name == "model.safetensors.index.json" || name == STATE_FILE) {
            std::fs::copy(&p, to.join(&name))?;
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_file() {
            std::fs::File::open(&p)?.sync_all()?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

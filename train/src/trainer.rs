//! The trainer: loss on answer tokens only; AdamW with f32 master weights and moments; cosine
//! schedule with warmup ratio; gradient accumulation and clipping; per-module freezing and
//! learning rates; checkpoints in the engine's layout written atomically; exact resume.

use crate::config::{Module, Schedule, TrainConfig};
use crate::data::{build_all, read_task_list, Sample, Skipped, TaskKind};
use crate::dense::{DenseHead, DenseTargets, HEAD_BIAS, HEAD_WEIGHT};
use crate::ground::{GroundLoss, GroundSpec};
use crate::optim::{
    clip_grad_norm, constant_with_warmup, cosine_with_warmup, cosine_with_warmup_frac, warmup_steps, AdamW, Ema,
};
use crate::synth::SynthStream;
use candle_core::{DType, Device, Tensor, D};
use griffon_core::template::with_image_marker;
use griffon_core::{check_visual_counts, Piece, Placeholder, Template};
use griffon_model::fused::EnvSwitch;
use griffon_model::griffon::{Griffon, LoadOptions};
use griffon_model::loader::Checkpoint;
use griffon_model::resample::{load_rgb, preprocess};
use griffon_model::tokenize::PromptTokenizer;
use image::RgbImage;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
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

impl Encoded {
    /// (position, id) of each supervised token, positions counted with `lens`.
    pub fn answer_tokens(&self, lens: VisualLens) -> Vec<(usize, u32)> {
        let mut out = Vec::new();
        let mut pos = 0usize;
        for (p, &sup) in self.pieces.iter().zip(&self.supervised) {
            if let (Piece::Token(t), true) = (p, sup) {
                out.push((pos, *t));
            }
            pos += lens.of_piece(p);
        }
        out
    }

    /// The position of the sample's one main image (its first image token, positions counted
    /// with `lens`); an error when the sample holds no image or two (what the grounding loss and
    /// the diagnostics need: one image whose tokens the objects' boxes index).
    pub fn image_start(&self, lens: VisualLens) -> Result<usize, String> {
        let mut start = None;
        let mut pos = 0usize;
        for p in &self.pieces {
            if let Piece::Visual(Placeholder::Image(_)) = p {
                if start.replace(pos).is_some() {
                    return Err("the sample holds two images".into());
                }
            }
            pos += lens.of_piece(p);
        }
        start.ok_or_else(|| "the sample has no image".into())
    }
}

/// Positions a model gives each visual placeholder: (image tokens, tokens per region).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisualLens {
    pub image: usize,
    pub region: usize,
}

impl VisualLens {
    pub fn of(m: &Griffon) -> Self {
        // without a region encoder a region goes through the main tower (griffon::encode_region)
        Self { image: m.image_tokens(), region: if m.region.is_some() { 1 } else { m.image_tokens() } }
    }

    /// Positions one piece takes.
    pub fn of_piece(&self, p: &Piece) -> usize {
        match p {
            Piece::Token(_) => 1,
            Piece::Visual(Placeholder::Image(_)) => self.image,
            Piece::Visual(Placeholder::Region(_)) => self.region,
        }
    }
}

/// Turns a sample's conversation into pieces; the user turns are the prompt, the assistant
/// turns (plus the template's answer suffix) are supervised.
pub fn encode_sample(
    tok: &PromptTokenizer,
    template: Template,
    s: &Sample,
    lens: VisualLens,
) -> Result<Encoded, Error> {
    let mut pieces = Vec::new();
    let mut supervised = Vec::new();
    for (k, (user, answer)) in s.turns.iter().enumerate() {
        if answer.trim().is_empty() {
            return Err("empty answer".into());
        }
        let prompt_pieces = if k == 0 {
            let prompt = template.render(&with_image_marker(user));
            let (p, ph) = tok.assemble(&prompt).map_err(|e| e.to_string())?;
            check_visual_counts(&ph, 1, s.regions.len()).map_err(|e| e.0)?;
            p
        } else {
            if user.contains("<region>") || user.contains("<image>") {
                return Err("visual markers are only supported in the first turn".into());
            }
            let ids = tok.encode_plain(&template.render_followup(user)).map_err(|e| e.to_string())?;
            ids.into_iter().map(Piece::Token).collect()
        };
        supervised.extend(std::iter::repeat_n(false, prompt_pieces.len()));
        pieces.extend(prompt_pieces);
        let ans = tok.encode_plain(&format!("{answer}{}", template.answer_suffix())).map_err(|e| e.to_string())?;
        supervised.extend(std::iter::repeat_n(true, ans.len()));
        pieces.extend(ans.into_iter().map(Piece::Token));
    }
    let len = pieces.iter().map(|p| lens.of_piece(p)).sum();
    Ok(Encoded { pieces, supervised, len })
}

/// A sample ready for the model: its encoding and preprocessed pixels (CPU tensors).
pub struct Loaded {
    pub sample: Sample,
    pub enc: Encoded,
    /// [3, S, S] main image.
    pub pixels: Tensor,
    /// [3, r, r] per region exemplar, in placeholder order.
    pub regions: Vec<Tensor>,
    /// Dense perception targets (synthetic scenes, when trained): one per tile of the input.
    pub dense: Option<Vec<DenseTargets>>,
    /// Normalised xyxy boxes of the scene's objects (synthetic scenes; empty otherwise): the
    /// grounding loss's diagnostics tell the referred object's attention from the others'.
    pub objects: Vec<[f64; 4]>,
}

/// Preprocesses a sample's main image (read from disk unless given) and its exemplar crops.
pub fn load_pixels(
    s: &Sample,
    image: Option<RgbImage>,
    image_size: usize,
    region_size: usize,
) -> Result<(Tensor, Vec<Tensor>), Error> {
    let main = match image {
        Some(i) => i,
        None => load_rgb(&s.image).map_err(|e| e.to_string())?,
    };
    if let Some((w, h)) = s.size.filter(|&d| d != main.dimensions()) {
        return Err(format!(
            "{}: the image is {}x{} but its record ({}) declares {w}x{h}, by which its boxes were normalised",
            s.image.display(),
            main.width(),
            main.height(),
            s.source
        ));
    }
    let cpu = Device::Cpu;
    let px = preprocess(&main, image_size, &cpu).map_err(|e| e.to_string())?;
    let regions = s
        .regions
        .iter()
        .map(|r| {
            let crop = griffon_model::tasks::exemplar_image(r, &main).map_err(|e| e.to_string())?;
            preprocess(&crop, region_size, &cpu).map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((px, regions))
}

/// Mean cross-entropy of the supervised tokens of a micro-batch (graph kept for backward) and
/// their count. The sequences are right-padded to the longest: under the causal mask a real
/// position never attends to the padding after it, and padded rows carry no loss, so each
/// sample's loss is what it would be alone. Logits are computed for the supervised rows only.
pub fn batch_loss(m: &Griffon, batch: &[Loaded]) -> Result<(Tensor, usize), Error> {
    batch_objective(m, batch, Objective { answers: true, dense: None, ground: None, choice: 1.0 })
        .map(|o| (o.loss, o.tokens))
}

/// What a micro-batch is trained on: the answer tokens, the dense perception loss
/// ([`crate::dense`]) with its weight, or both (summed); with the answers, optionally the
/// grounding loss ([`crate::ground`]) with its weight.
#[derive(Clone, Copy)]
pub struct Objective<'a> {
    pub answers: bool,
    pub dense: Option<(&'a DenseHead, f64)>,
    pub ground: Option<(&'a GroundSpec, f64)>,
    /// Answer-loss weight of each box's first decimal of `x1` ([`choice_tokens`]; 1 = plain mean).
    pub choice: f64,
}

/// One sample as the model's teacher-forced input: its encoding and its embedded sequence
/// [1, T, H] (prompt, image tokens and answer), on the model's device; what the diagnostics
/// (`box_tokens`, `choice_probe`) run one sample's forward pass from. `image`: the sample's
/// main image when already in memory (a synthetic scene), else read from its path.
pub fn embed_sample(m: &Griffon, s: &Sample, image: Option<RgbImage>) -> Result<(Encoded, Tensor), Error> {
    let lens = VisualLens::of(m);
    let enc = encode_sample(&m.tokenizer, m.template, s, lens)?;
    let (px, _) = load_pixels(s, image, m.image_size(), m.region_size())?;
    let px = px.unsqueeze(0).and_then(|p| p.to_device(&m.device)).map_err(|e| e.to_string())?;
    let it = m.encode_image(&px).map_err(|e| e.to_string())?;
    let x = m.embed_pieces(&enc.pieces, Some(&it), None).map_err(|e| e.to_string())?.embeds;
    Ok((enc, x))
}

/// The id of the first single-character token of each digit 0-9 among ids `0..vocab` (what the
/// diagnostics read digit probabilities from; an error names a digit with no such token).
pub fn digit_tokens(tok: &PromptTokenizer, vocab: usize) -> Result<[u32; 10], String> {
    let mut digit = [None; 10];
    for id in 0..vocab as u32 {
        if let Ok(t) = tok.decode(&[id], true) {
            if t.len() == 1 && t.as_bytes()[0].is_ascii_digit() {
                digit[(t.as_bytes()[0] - b'0') as usize].get_or_insert(id);
            }
        }
    }
    let mut out = [0u32; 10];
    for (d, id) in digit.iter().enumerate() {
        out[d] = id.ok_or(format!("the tokenizer has no single token for the digit {d}"))?;
    }
    Ok(out)
}

/// Indices into `ids` (answer tokens) of the tokens that write each box's first decimal of
/// `x1` (the `d` of `[0.d..`): under teacher forcing the token where the box's object is chosen
/// (docs/SYNTH.md session 17). Found from the tokens' text spans, so merged tokens work; a
/// bracket not followed by `0.` and a digit is not a box and is passed over.
pub fn choice_tokens(tok: &PromptTokenizer, ids: &[u32]) -> Result<Vec<usize>, Error> {
    let (text, spans) = tok.decode_spans(ids).map_err(|e| format!("choice weight: {e}"))?;
    let b = text.as_bytes();
    let mut out = Vec::new();
    for (o, _) in text.match_indices('[') {
        let d = o + CHOICE_BYTE;
        if d < b.len() && b[o + 1].is_ascii_digit() && b[o + 2] == b'.' && b[d].is_ascii_digit() {
            match choosing_token(&spans, o) {
                Some(j) => out.push(j),
                None => return Err(format!("choice weight: no token spans byte {d} of {text:?}")),
            }
        }
    }
    Ok(out)
}

/// Where a box's object is chosen, in bytes after its `[`: the `d` of `[0.d`.
pub const CHOICE_BYTE: usize = 3;

/// The token where a box's object is chosen: the one holding the first decimal of `x1`, byte
/// `open + CHOICE_BYTE` of `[0.d` (`open`: the byte of `[` in the decoded answer; `spans`: each token's
/// byte range there, as `PromptTokenizer::decode_spans` gives them). One rule for the choice
/// weight, the grounding loss's choosing position and the diagnostics (`choice_probe`); `None`
/// when no token spans that byte.
pub fn choosing_token(spans: &[(usize, usize)], open: usize) -> Option<usize> {
    let d = open + CHOICE_BYTE;
    spans.iter().position(|&(a, e)| a <= d && d < e)
}

/// A micro-batch's loss (graph kept), its supervised count (answer tokens, or patches when only
/// the dense loss is trained) and the unweighted dense loss when it is on (a detached scalar:
/// read after the backward pass, so reading it does not make the host wait for the device
/// between the forward and the backward pass).
pub struct BatchLoss {
    pub loss: Tensor,
    pub tokens: usize,
    pub dense: Option<Tensor>,
    /// The unweighted grounding loss (detached) and its attention masses when it is on and the
    /// batch holds REC answers.
    pub ground: Option<GroundLoss>,
    /// Where the forward pass spent its time.
    pub parts: ForwardParts,
}

/// The host's time in the parts of a forward pass: stacking the pixels and region crops and
/// copying them to the device; the vision tower with the dense loss, the projector and the
/// region encoder; the language model with its loss. With `GRIFFON_TRAIN_SYNC=1` each part
/// waits for the device at its end, so the parts split the device's time too; otherwise the
/// host enqueues kernels and runs ahead (the copies to the device wait either way).
#[derive(Default, Clone, Copy, Debug)]
pub struct ForwardParts {
    pub upload: std::time::Duration,
    pub vision: std::time::Duration,
    pub language: std::time::Duration,
}

impl std::ops::AddAssign for ForwardParts {
    fn add_assign(&mut self, o: Self) {
        self.upload += o.upload;
        self.vision += o.vision;
        self.language += o.language;
    }
}

/// The time since `*mark` (after waiting for the device under `GRIFFON_TRAIN_SYNC=1`); moves
/// the mark to now.
fn lap(dev: &Device, mark: &mut Instant) -> Result<std::time::Duration, Error> {
    if sync_phases() {
        dev.synchronize().map_err(|e| e.to_string())?;
    }
    let now = Instant::now();
    let d = now - *mark;
    *mark = now;
    Ok(d)
}

/// [`batch_loss`] for an [`Objective`]; the vision tower runs once for both losses.
pub fn batch_objective(m: &Griffon, batch: &[Loaded], obj: Objective) -> Result<BatchLoss, Error> {
    let e = |x: candle_core::Error| x.to_string();
    let ge = |x: griffon_model::error::Error| x.to_string();
    if batch.is_empty() {
        return Err("empty micro-batch".into());
    }
    if !obj.answers && obj.dense.is_none() {
        return Err("nothing to train: neither answer tokens nor the dense loss".into());
    }
    let dev = &m.device;
    let mut mark = Instant::now();
    let mut parts = ForwardParts::default();
    // each sample's pixels are copied as they are and stacked on the device: stacking on the
    // host first wrote a fresh buffer of the whole batch every step (200 MB at 16 x 1022 px,
    // its pages faulted in anew each time) before the copy
    let to_dev = |ts: Vec<&Tensor>| -> Result<Tensor, Error> {
        let on: Vec<Tensor> =
            ts.into_iter().map(|t| t.to_device(dev)).collect::<candle_core::Result<_>>().map_err(e)?;
        Tensor::stack(&on, 0).map_err(e)
    };
    let px = to_dev(batch.iter().map(|l| &l.pixels).collect())?;
    let all_regions: Vec<&Tensor> = batch.iter().flat_map(|l| l.regions.iter()).collect();
    let regions = if all_regions.is_empty() || !obj.answers {
        None // (the dense-only objective reads no region crops)
    } else {
        Some(to_dev(all_regions)?)
    };
    parts.upload = lap(dev, &mut mark)?;
    let (image_tokens, dense) = match obj.dense {
        None => (m.encode_image(&px).map_err(ge)?, None),
        Some((head, weight)) => {
            // one target per tile, in the order of the tower's inputs
            let targets = batch
                .iter()
                .map(|l| {
                    l.dense
                        .as_ref()
                        .ok_or_else(|| format!("{}: no dense targets (synthetic scenes only)", l.sample.source))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let targets: Vec<&DenseTargets> = targets.into_iter().flatten().collect();
            let tiles = m.tile_pixels(&px).map_err(ge)?;
            let feats = m.tower.patch_features(&tiles, m.config.mm.select_layer, m.config.mm.keep_cls).map_err(ge)?;
            let dl = head.loss(&feats, &targets)?;
            let value = dl.detach();
            if !obj.answers {
                let patches = feats.dim(0).map_err(e)? * feats.dim(1).map_err(e)?;
                let loss = (dl * weight).map_err(e)?;
                parts.vision = lap(dev, &mut mark)?;
                return Ok(BatchLoss { loss, tokens: patches, dense: Some(value), ground: None, parts });
            }
            let tokens = m.merge_tiles(&m.projector.forward(&feats).map_err(ge)?).map_err(ge)?;
            (tokens, Some(((dl * weight).map_err(e)?, value)))
        }
    };
    let region_tokens = regions.map(|r| m.encode_region(&r)).transpose().map_err(ge)?;
    parts.vision = lap(dev, &mut mark)?;
    let lens = VisualLens {
        image: image_tokens.dim(1).map_err(e)?,
        region: region_tokens.as_ref().map(|r| r.dim(1)).transpose().map_err(e)?.unwrap_or(1),
    };
    let seq_len = |enc: &Encoded| enc.pieces.iter().map(|p| lens.of_piece(p)).sum::<usize>();
    let lmax = batch.iter().map(|l| seq_len(&l.enc)).max().expect("non-empty");
    let mut embeds = Vec::with_capacity(batch.len());
    let mut rows: Vec<u32> = Vec::new();
    let mut targets: Vec<u32> = Vec::new();
    let mut weights: Vec<f32> = Vec::new();
    let mut region_at = 0;
    let grounds = match obj.ground {
        Some((g, _)) => batch
            .iter()
            .map(|l| {
                g.sample(&m.tokenizer, &l.sample, &l.enc, lens, &l.objects)
                    .map_err(|r| format!("{}: {r}", l.sample.source))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    for (i, l) in batch.iter().enumerate() {
        let rt = match &region_tokens {
            Some(r) if !l.regions.is_empty() => Some(r.narrow(0, region_at, l.regions.len()).map_err(e)?),
            _ => None,
        };
        region_at += l.regions.len();
        let it = image_tokens.narrow(0, i, 1).map_err(e)?;
        let x = m.embed_pieces(&l.enc.pieces, Some(&it), rt.as_ref()).map_err(ge)?.embeds;
        let (_, t, h) = x.dims3().map_err(e)?;
        let answer = l.enc.answer_tokens(lens);
        let chosen = if obj.choice != 1.0 {
            let ids: Vec<u32> = answer.iter().map(|a| a.1).collect();
            choice_tokens(&m.tokenizer, &ids).map_err(|r| format!("{}: {r}", l.sample.source))?
        } else {
            Vec::new()
        };
        for (k, &(pos, tok)) in answer.iter().enumerate() {
            if pos > 0 {
                rows.push((i * lmax + pos - 1) as u32);
                targets.push(tok);
                weights.push(if chosen.contains(&k) { obj.choice as f32 } else { 1.0 });
            }
        }
        let len = seq_len(&l.enc);
        if len != t {
            return Err(format!("{}: embedded {t} positions, expected {len}", l.sample.source));
        }
        let x = if t < lmax {
            Tensor::cat(&[&x, &Tensor::zeros((1, lmax - t, h), x.dtype(), dev).map_err(e)?], 1).map_err(e)?
        } else {
            x
        };
        embeds.push(x);
    }
    if rows.is_empty() {
        return Err("no supervised tokens in the micro-batch".into());
    }
    let x = Tensor::cat(&embeds, 0).map_err(e)?;
    let mut cache = m.llm.new_cache();
    let (hidden, tapped) = m.llm.hidden_tapped(&x, &mut cache, obj.ground.map(|(g, _)| g.layer)).map_err(ge)?;
    let (b, t, h) = hidden.dims3().map_err(e)?;
    let n = rows.len();
    let rows = Tensor::new(rows, dev).map_err(e)?;
    let targets = Tensor::new(targets, dev).and_then(|t| t.unsqueeze(1)).map_err(e)?;
    let picked = hidden.reshape((b * t, h)).and_then(|x| x.index_select(&rows, 0)).map_err(e)?;
    let logits = m.llm.head(&picked).map_err(ge)?;
    let lsm = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32).map_err(e)?, D::Minus1).map_err(e)?;
    let nll = if obj.choice == 1.0 {
        lsm.gather(&targets, 1).and_then(|x| x.neg()).and_then(|x| x.mean_all()).map_err(e)?
    } else {
        // weighted sum over the count: the other tokens' gradients stay what the mean gives them
        let w = Tensor::new(weights, dev).and_then(|w| w.unsqueeze(1)).map_err(e)?;
        lsm.gather(&targets, 1)
            .and_then(|x| x.neg())
            .and_then(|x| x.mul(&w))
            .and_then(|x| x.sum_all())
            .and_then(|x| x / n as f64)
            .map_err(e)?
    };
    let (loss, dense) = match dense {
        None => (nll, None),
        Some((dl, value)) => ((nll + dl).map_err(e)?, Some(value)),
    };
    let (loss, ground) = match (obj.ground, tapped) {
        (Some((g, weight)), Some(tap)) => match g.loss(&tap.q, &tap.k, &tap.v, &grounds)? {
            Some(gl) => {
                let mut total = (loss + (&gl.loss * weight).map_err(e)?).map_err(e)?;
                if let Some(b) = &gl.box_l1 {
                    total = (total + (b * g.box_weight).map_err(e)?).map_err(e)?;
                }
                let name = if g.name_weight > 0.0 { g.name_loss(&m.llm, &tap.input, &grounds)? } else { None };
                if let Some(nl) = &name {
                    total = (total + (nl * g.name_weight).map_err(e)?).map_err(e)?;
                }
                let detached = GroundLoss {
                    loss: gl.loss.detach(),
                    box_l1: gl.box_l1.map(|b| b.detach()),
                    name: name.map(|n| n.detach()),
                    ..gl
                };
                (total, Some(detached))
            }
            None => (loss, None),
        },
        _ => (loss, None),
    };
    parts.language = lap(dev, &mut mark)?;
    Ok(BatchLoss { loss, tokens: n, dense, ground, parts })
}

/// Loss of one sample (graph kept for backward) and its supervised token count.
pub fn sample_loss(m: &Griffon, s: &Sample, enc: &Encoded) -> Result<(Tensor, usize), Error> {
    let (pixels, regions) = load_pixels(s, None, m.image_size(), m.region_size())?;
    batch_loss(m, &[Loaded { sample: s.clone(), enc: enc.clone(), pixels, regions, dense: None, objects: Vec::new() }])
}

/// Where training samples come from.
pub enum Data {
    /// Built from a task list; images read from disk when used.
    Files(Vec<(Sample, Encoded)>),
    /// Synthetic scenes rendered on demand: sample k (of `len` per epoch) is scene k.
    Synth { stream: SynthStream, len: usize },
}

impl Data {
    pub fn len(&self) -> usize {
        match self {
            Data::Files(v) => v.len(),
            Data::Synth { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the data threads need to turn an index into a [`Loaded`] sample.
struct Loader {
    data: Arc<Data>,
    tok: PromptTokenizer,
    template: Template,
    lens: VisualLens,
    image_size: usize,
    region_size: usize,
    max_len: usize,
    seed: u64,
    /// Patch grid of the dense targets (None: dense loss off), per tile.
    dense_grid: Option<usize>,
    /// Tiles per side of the main image (dense targets per tile).
    tiles: usize,
    /// A run of whole epochs (`train.epochs`, no `max_steps`): the micro-batch slots of one
    /// epoch's steps. The slots past the epoch's samples hold none, so its last step is short
    /// (as transformers' last batch) instead of taking the next epoch's first samples.
    slots_per_epoch: Option<usize>,
}

impl Loader {
    /// The sample at slot `i` (epoch-wise seeded permutations of the file samples; the
    /// synthetic stream is its own order), or None for a slot past an epoch's samples.
    fn load(&self, i: usize, order: &mut Option<(usize, Vec<usize>)>) -> Option<Result<Loaded, Skipped>> {
        let n = self.data.len();
        let i = match self.slots_per_epoch {
            Some(s) if i % s >= n => return None,
            Some(s) => i / s * n + i % s,
            None => i,
        };
        Some(self.load_at(i, order))
    }

    /// The sample at global position `i`.
    fn load_at(&self, i: usize, order: &mut Option<(usize, Vec<usize>)>) -> Result<Loaded, Skipped> {
        let n = self.data.len();
        let (epoch, k) = (i / n, i % n);
        match &*self.data {
            Data::Files(v) => {
                if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                    let mut perm: Vec<usize> = (0..n).collect();
                    perm.shuffle(&mut StdRng::seed_from_u64(self.seed.wrapping_add(epoch as u64)));
                    *order = Some((epoch, perm));
                }
                let (s, enc) = &v[order.as_ref().expect("set above").1[k]];
                let (pixels, regions) = load_pixels(s, None, self.image_size, self.region_size)
                    .map_err(|reason| Skipped { source: s.source.clone(), reason })?;
                Ok(Loaded { sample: s.clone(), enc: enc.clone(), pixels, regions, dense: None, objects: Vec::new() })
            }
            Data::Synth { stream, .. } => {
                let source = format!("synth:{}/{k}", stream.seed);
                let (s, img, objs) = stream.sample(k).map_err(|reason| Skipped { source: source.clone(), reason })?;
                let dense = match self.dense_grid {
                    Some(g) => Some(
                        DenseTargets::tiled(&objs, stream.size, g, self.tiles)
                            .map_err(|reason| Skipped { source: source.clone(), reason })?,
                    ),
                    None => None,
                };
                let enc = encode_sample(&self.tok, self.template, &s, self.lens)
                    .map_err(|reason| Skipped { source: source.clone(), reason })?;
                if enc.len > self.max_len {
                    return Err(Skipped {
                        source,
                        reason: format!("over-long: {} positions > max_len {}", enc.len, self.max_len),
                    });
                }
                let (pixels, regions) = load_pixels(&s, Some(img), self.image_size, self.region_size)
                    .map_err(|reason| Skipped { source, reason })?;
                let size = stream.size as f64;
                let objects = objs.iter().map(|o| o.bbox.map(|v| v as f64 / size)).collect();
                Ok(Loaded { sample: s, enc, pixels, regions, dense, objects })
            }
        }
    }
}

/// Loads micro-batches ahead of the training loop on `workers` threads, delivered in order, so
/// image decoding / scene rendering overlaps the model's forward and backward. With more workers
/// than samples per micro-batch, several micro-batches are loaded at once.
struct Prefetch {
    rx: Option<Receiver<Vec<Result<Loaded, Skipped>>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Prefetch {
    fn start(loader: Loader, first_mb: usize, batch: usize, workers: usize) -> Self {
        let workers = workers.max(1);
        // micro-batches loaded together
        let group = workers.div_ceil(batch).max(1);
        let (tx, rx) = sync_channel(2 * group);
        let handle = std::thread::spawn(move || {
            let per_worker = (group * batch).div_ceil(workers);
            let mut orders: Vec<Option<(usize, Vec<usize>)>> = vec![None; workers];
            for round in 0.. {
                let start = (first_mb + round * group) * batch;
                let mut out: Vec<Option<Option<Result<Loaded, Skipped>>>> = (0..group * batch).map(|_| None).collect();
                std::thread::scope(|sc| {
                    for (w, (chunk, order)) in out.chunks_mut(per_worker).zip(orders.iter_mut()).enumerate() {
                        let loader = &loader;
                        let base = start + w * per_worker;
                        sc.spawn(move || {
                            for (j, slot) in chunk.iter_mut().enumerate() {
                                *slot = Some(loader.load(base + j, order));
                            }
                        });
                    }
                });
                let mut items = out.into_iter().map(|x| x.expect("every slot filled"));
                for _ in 0..group {
                    // (a slot past an epoch's samples holds none: a shorter micro-batch)
                    if tx.send(items.by_ref().take(batch).flatten().collect()).is_err() {
                        return; // the trainer stopped
                    }
                }
            }
        });
        Self { rx: Some(rx), handle: Some(handle) }
    }

    fn next(&mut self) -> Result<Vec<Result<Loaded, Skipped>>, Error> {
        self.rx.as_ref().expect("open").recv().map_err(|_| "the data loader thread stopped unexpectedly".to_string())
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StepLog {
    pub step: usize,
    pub epoch: f64,
    pub loss: f64,
    /// The main learning rate (`train.lr` on the schedule); `vision_lr` / `region_lr` scale alike.
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
    /// Seconds of the step spent waiting for the data loader (image decoding / scene rendering):
    /// close to the step's time means the loader, not the device, bounds training.
    pub data_wait_s: f64,
    /// Seconds of the step in the forward passes (graph building; on a GPU the host enqueues
    /// kernels and runs ahead unless `GRIFFON_TRAIN_SYNC=1` waits for the device after each),
    /// in the backward passes (until the loss is read, which waits for the device; gradient
    /// accumulation included) and in clipping + the optimizer update (its norm is read on the
    /// host, so it waits too). With the data wait they account for the step's time.
    pub forward_s: f64,
    /// The forward passes' parts ([`ForwardParts`]): pixels (and region crops) to the device,
    pub upload_s: f64,
    /// the vision side (tower, dense loss, projector, region encoder),
    pub vision_s: f64,
    /// the language model with its loss.
    pub language_s: f64,
    pub backward_s: f64,
    pub optim_s: f64,
    /// Mean unweighted dense perception loss of the step, when it is trained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dense: Option<f64>,
    /// Mean unweighted grounding loss of the step's micro-batches that held REC answers, when
    /// it is trained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ground: Option<f64>,
    /// The supervised head's mean attention (over its whole causal row, or the image tokens with
    /// `ground_keys = "image"`) on the referred object's tokens and on the other objects'
    /// tokens, at the answer positions of scenes holding other
    /// objects (synthetic data): whether it finds the object asked for or just any object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ground_own: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ground_other: Option<f64>,
    /// Mean L1 of the grounding loss's box readout (`ground_box_weight` > 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ground_box: Option<f64>,
    /// Mean unweighted name-lens loss (`ground_name_weight` > 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ground_name: Option<f64>,
}

/// A running mean of scalar tensors (read on the host).
#[derive(Default)]
struct Mean {
    sum: f64,
    n: usize,
}

impl Mean {
    fn add(&mut self, t: &Tensor) -> Result<(), Error> {
        self.sum += t.to_scalar::<f32>().map_err(|e| e.to_string())? as f64;
        self.n += 1;
        Ok(())
    }

    /// The mean, `None` when nothing was added.
    fn get(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }
}

/// What [`Trainer::step_gradients`] returns.
#[derive(Default)]
pub struct StepGradients {
    pub grads: Vec<Tensor>,
    pub loss: f64,
    pub tokens: usize,
    pub dense: Option<f64>,
    pub ground: Option<f64>,
    /// Mean attention of the supervised head on the referred object and on the scene's other
    /// objects, over the answer positions of scenes with other objects.
    pub ground_masses: Option<[f64; 2]>,
    /// Mean L1 of the grounding loss's box readout, when it is on.
    pub ground_box: Option<f64>,
    /// Mean name-lens loss, when it is on.
    pub ground_name: Option<f64>,
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
    pub data: Arc<Data>,
    pub skipped: Vec<Skipped>,
    pub total_steps: usize,
    /// learning rate per optimizer group
    group_lrs: Vec<f64>,
    prefetch: Option<(usize, Prefetch)>,
    /// Training seconds of the segments before this one (from the resumed checkpoint).
    elapsed_before: f64,
    /// Start of this segment's training loop.
    segment_start: Option<Instant>,
    /// Time the current step has waited for the data loader (reset at each step).
    data_wait: std::time::Duration,
    /// Time the current step has spent in forward / backward passes (reset at each step).
    phases: Phases,
    /// The dense perception head (stage 0 or `dense_weight` > 0); its parameters are the
    /// optimizer's [`HEAD_WEIGHT`] and [`HEAD_BIAS`].
    dense: Option<DenseHead>,
    /// The grounding loss's head and token grid (`ground_weight` > 0).
    ground: Option<GroundSpec>,
    /// The moving average of the trained weights (`ema_decay` > 0): what checkpoints store.
    ema: Option<Ema>,
}

/// Time of a step's forward and backward passes, summed over its micro-batches.
#[derive(Default, Clone, Copy)]
struct Phases {
    forward: std::time::Duration,
    parts: ForwardParts,
    backward: std::time::Duration,
}

/// `GRIFFON_TRAIN_SYNC=1`: wait for the device after each forward pass, so `forward_s` /
/// `backward_s` split the device's time (costs the overlap of host and device at that point).
fn sync_phases() -> bool {
    static SYNC: EnvSwitch = EnvSwitch::new("GRIFFON_TRAIN_SYNC", &["0", "1"]);
    SYNC.is("1")
}

/// `GRIFFON_PROFILE_STEP=N`: the N-th step of this run (1-based) runs inside the profiler's
/// capture range (`ncu` / `nsys` with `--profile-from-start off` / `--capture-range=cudaProfilerApi`),
/// so a profile holds exactly one optimizer step, after N - 1 warm-up steps. CUDA only.
fn profile_step() -> Option<usize> {
    static STEP: EnvSwitch = EnvSwitch::number("GRIFFON_PROFILE_STEP");
    STEP.get().and_then(|v| v.parse().ok())
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
    /// Seconds of training so far, resumed segments included.
    #[serde(default)]
    elapsed_s: f64,
    /// `train.ema_decay` of the run (0: no moving average); absent in checkpoints written before
    /// the setting was recorded, which are then checked by their optimizer state alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ema_decay: Option<f64>,
    /// The settings a resume must keep ([`resume_settings`]); absent in checkpoints written
    /// before they were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    settings: Option<serde_json::Value>,
}

/// The settings that change what a step does: a resume with another value would silently train
/// another run under the checkpoint's name (another rate, batch, stage or set of trained
/// modules; since session 29 also other data: the `[data]` and `[data.synth]` values and the
/// model's input size and tiles, stored under their dotted names). Not the budget
/// (`max_time_s`), saving, logging or worker settings, which a resume may change, nor the path
/// of a task list (its sample count is compared, [`TrainerState::check_resume`]).
fn resume_settings(cfg: &TrainConfig) -> serde_json::Value {
    let t = &cfg.train;
    let d = &cfg.data;
    // a set: the order the list was written in does not matter
    let modules: std::collections::BTreeSet<String> =
        cfg.trainable_modules().iter().map(|m| format!("{m:?}").to_lowercase()).collect();
    let synth = d.synth.as_ref().map(|s| {
        serde_json::json!({
            "seed": s.seed, "samples": s.samples, "size": s.size, "max_objects": s.max_objects,
            "object_scale": s.object_scale, "visj_random": s.visj_random, "region_naming": s.region_naming,
            "rec_not_largest": s.rec_not_largest, "rec_turns": s.rec_turns, "det_subsets": s.det_subsets,
            "mix": {"det": s.mix.det, "vg": s.mix.vg, "reg": s.mix.reg, "visj": s.mix.visj},
        })
    });
    serde_json::json!({
        "stage": t.stage, "lr": t.lr, "vision_lr": t.vision_lr, "region_lr": t.region_lr,
        "trainable": modules, "batch_size": t.batch_size, "grad_accum": t.grad_accum,
        "warmup_ratio": t.warmup_ratio, "weight_decay": t.weight_decay, "max_grad_norm": t.max_grad_norm,
        // whole epochs (each ending with a short step) or a step count lay the samples out in
        // steps differently: a resume switching them would skip or repeat samples
        "whole_epochs": t.max_steps == 0,
        "schedule": format!("{:?}", t.schedule).to_lowercase(), "dtype": t.dtype,
        "dense_weight": t.dense_weight, "ground_weight": t.ground_weight,
        "ground_box_weight": t.ground_box_weight, "ground_name_weight": t.ground_name_weight,
        "choice_weight": t.choice_weight, "ground_layer": t.ground_layer, "ground_head": t.ground_head,
        "ground_keys": format!("{:?}", t.ground_keys).to_lowercase(),
        "ground_positions": format!("{:?}", t.ground_positions).to_lowercase(),
        "data.max_len": d.max_len, "data.max_categories": d.max_categories, "data.none_prob": d.none_prob,
        "data.det_format_prob": d.det_format_prob,
        "data.synth": synth,
        "model.image_size": cfg.model.image_size, "model.tiles": cfg.model.tiles,
    })
}

/// For a setting added to [`resume_settings`] after checkpoints were written without it, the value
/// every run before it had (so a resume that turns it on is refused); None for keys not compared
/// when absent.
fn value_before(key: &str) -> Option<serde_json::Value> {
    match key {
        "det_subsets" => Some(serde_json::json!(0.0)),
        _ => None,
    }
}

/// The keys whose values differ between two [`resume_settings`], with both values (numbers
/// compared exactly: the workspace's serde_json reads back the very f64 it wrote, its
/// `float_roundtrip` feature).
fn changed_settings(stored: &serde_json::Value, now: &serde_json::Value) -> Vec<String> {
    let (Some(a), Some(b)) = (stored.as_object(), now.as_object()) else { return Vec::new() };
    let same = |x: &serde_json::Value, y: &serde_json::Value| match (x.as_f64(), y.as_f64()) {
        (Some(x), Some(y)) => x == y, // 1 and 1.0 are the same setting
        _ => x == y,
    };
    let mut out = Vec::new();
    for (k, v) in b {
        // a key added later: what every run before it had, else not compared
        let Some(old) = a.get(k).cloned().or_else(|| value_before(k)) else { continue };
        let old = &old;
        if v.is_null() && matches!(k.as_str(), "model.image_size" | "model.tiles") {
            continue; // left out: the checkpoint's own (it stores what it was trained at)
        }
        // a table (data.synth): each of its values by name
        let name = if k.contains('.') { k.clone() } else { format!("train.{k}") };
        match (old.as_object(), v.as_object()) {
            (Some(_), Some(_)) => out.extend(changed_settings(old, v).into_iter().map(|c| {
                let inner = c.strip_prefix("train.").unwrap_or(&c);
                format!("{name}.{inner}")
            })),
            _ if !same(old, v) => out.push(format!("{name} {old} -> {v}")),
            _ => {}
        }
    }
    out
}

impl TrainerState {
    /// Reads the state a checkpoint folder holds.
    fn read(dir: &Path) -> Result<Self, Error> {
        let file = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))
    }

    /// Whether a run configured as `cfg` may resume this checkpoint's steps: the same seed, the
    /// same moving-average decay (a different one would silently change, or at 0 drop, the
    /// average the run keeps) and the same step settings ([`resume_settings`]).
    /// Needs the config alone, so it runs before the data is built and the model loaded. States
    /// written before the decay or the settings were recorded are not compared on them.
    fn check_settings(&self, cfg: &TrainConfig, dir: &Path) -> Result<(), Error> {
        if self.seed != cfg.train.seed {
            return Err(format!(
                "{} was written with train.seed = {}, this run has {}: resume it with the settings it was \
                 started with, or use a new train.out",
                dir.display(),
                self.seed,
                cfg.train.seed
            ));
        }
        let want = cfg.train.ema_decay;
        if let Some(d) = self.ema_decay {
            if d != want {
                return Err(format!(
                    "{} was written with train.ema_decay = {d}, this run has {want}: resume it with the \
                     settings it was started with, or use a new train.out",
                    dir.display()
                ));
            }
        }
        if let Some(stored) = &self.settings {
            let changed = changed_settings(stored, &resume_settings(cfg));
            if !changed.is_empty() {
                return Err(format!(
                    "{} was written with other settings ({}): resume it with the settings it was started \
                     with, or use a new train.out (with model.init = that checkpoint to continue from it)",
                    dir.display(),
                    changed.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Whether a checkpoint with this state belongs to a run whose state is `now`: the same
    /// schedule length and data (the seed and settings were checked by [`Self::check_settings`]).
    fn check_resume(&self, now: &TrainerState, dir: &Path) -> Result<(), Error> {
        let mut differs = Vec::new();
        if self.total_steps != now.total_steps {
            differs.push(format!("{} optimizer steps, this run {}", self.total_steps, now.total_steps));
        }
        if self.samples != now.samples {
            differs.push(format!("{} samples, this run {}", self.samples, now.samples));
        }
        if !differs.is_empty() {
            return Err(format!(
                "{} was written by a different run ({}: another max_steps, epochs, batch or data); use a \
                 new train.out",
                dir.display(),
                differs.join("; ")
            ));
        }
        Ok(())
    }
}

/// Keeps the rows of a run's `metrics.jsonl` up to `step` (the step training resumes from): a
/// segment stopped after its last checkpoint logged steps that the resumed run trains again, and a
/// kill can leave a torn last line. Returns how many rows were dropped; a missing file is empty.
pub fn trim_metrics(path: &Path, step: usize) -> Result<usize, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let row_step = |line: &str| serde_json::from_str::<serde_json::Value>(line).ok()?.get("step")?.as_u64();
    let mut kept = String::with_capacity(text.len());
    let mut dropped = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match row_step(line) {
            Some(s) if s as usize <= step => {
                kept.push_str(line);
                kept.push('\n');
            }
            _ => dropped += 1,
        }
    }
    if dropped > 0 {
        std::fs::write(path, kept).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(dropped)
}

/// The checkpoint `out/latest` names (`setting`: the config key `out` comes from, for the
/// messages); None when there is no `latest` (a new run). A `latest`
/// that cannot be followed (unreadable, empty, naming a folder without its trainer state) is an
/// error: starting over would overwrite the checkpoints and drop the metrics of the steps done.
fn latest_checkpoint(out: &Path, setting: &str) -> Result<Option<PathBuf>, Error> {
    let file = out.join(LATEST);
    let name = match std::fs::read_to_string(&file) {
        Ok(name) => name,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{setting} {}: cannot read {}: {e}", out.display(), file.display())),
    };
    let broken = |why: String| {
        let advice = if setting == "train.out" {
            "the run cannot resume (write the name of a checkpoint folder there into it, or give another \
             train.out to start over)"
        } else {
            "the run cannot start from that folder's newest checkpoint (point it at a checkpoint folder there, or \
             give the checkpoint folder itself)"
        };
        Err(format!("{setting} {}: {} {why}; {advice}", out.display(), file.display()))
    };
    let name = name.trim();
    if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
        return broken(format!("names no checkpoint folder ({name:?})"));
    }
    let dir = out.join(name);
    if !dir.join(STATE_FILE).is_file() {
        return broken(format!("names {}, which holds no {STATE_FILE}", dir.display()));
    }
    Ok(Some(dir))
}

impl Trainer {
    /// Builds the data, loads the model (resuming from `out/latest` when present).
    pub fn new(cfg: TrainConfig, device: &Device) -> Result<Self, Error> {
        griffon_model::nn::set_differentiable(true);
        cfg.validate()?;
        if device.is_cuda() {
            candle_core::cuda::set_gemm_reduced_precision_f32(cfg.train.tf32);
        }
        // the checkpoints to start from, before the data is built (cheap checks first)
        if cfg.train.out.exists() && !cfg.train.out.is_dir() {
            return Err(format!(
                "train.out {} is a file: it must be a folder (new, or a run's to resume)",
                cfg.train.out.display()
            ));
        }
        // the checkpoint to resume and its state, read once: its settings are checked here, its
        // run identity (schedule length, data) once the data is built, in `restore`
        let resume = match latest_checkpoint(&cfg.train.out, "train.out")? {
            Some(dir) => {
                let state = TrainerState::read(&dir)?;
                state.check_settings(&cfg, &dir)?;
                Some((dir, state))
            }
            None => {
                // no `latest`: a new run, which writes checkpoint-N folders (and prunes them with
                // keep_checkpoints): refused over checkpoints it did not write (another trainer's
                // folder, or a run whose `latest` was removed)
                let theirs = std::fs::read_dir(&cfg.train.out)
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .find(|n| n.starts_with("checkpoint-"));
                if let Some(n) = theirs {
                    return Err(format!(
                        "train.out {} holds {n} but no `{LATEST}` file: a new run there would overwrite or prune \
                         those checkpoints; give another train.out (or write the checkpoint's name into {LATEST} \
                         to resume from it)",
                        cfg.train.out.display()
                    ));
                }
                None
            }
        };
        // `init` may name a previous stage's output folder: follow its `latest` pointer
        let init = match cfg.model.init.is_dir() {
            true => latest_checkpoint(&cfg.model.init, "model.init")?,
            false => None,
        }
        .unwrap_or_else(|| cfg.model.init.clone());
        let bopts = cfg.data.build_options(cfg.train.seed);
        let (samples, mut skipped) = match &cfg.data.tasks {
            Some(tasks) => {
                let sources = read_task_list(tasks).map_err(|e| e.to_string())?;
                build_all(&sources, &bopts).map_err(|e| e.to_string())?
            }
            None => (Vec::new(), Vec::new()),
        };
        let source_dir = resume.as_ref().map_or(init, |(dir, _)| dir.clone());
        let modules = cfg.trainable_modules();
        let pred_modules = modules.clone();
        let opts = LoadOptions {
            device: device.clone(),
            dtype: cfg.train.compute_dtype()?,
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
        if let Some(size) = cfg.model.image_size {
            let stored = model.tower.cfg.image_size;
            if size != stored {
                // a table resized at load is a constant: it would not train, and the checkpoint
                // (stored table, stored config) would not remember the size it was trained at
                return Err(format!(
                    "model.image_size = {size} differs from the checkpoint's {stored}: training needs the \
                     position table stored at that size (griffon resize-tower --model {} --image-size {size} --out DIR, \
                     then model.init = DIR)",
                    source_dir.display()
                ));
            }
        }
        if vars.is_empty() {
            return Err(format!("no trainable tensors for modules {modules:?} in {}", source_dir.display()));
        }
        if modules.contains(&Module::Vision) && model.tower.run_size() != model.tower.cfg.image_size {
            return Err("training the vision tower at an interpolated resolution is not supported; resize the checkpoint's position table first".into());
        }
        let template = model.template;
        let lens = VisualLens::of(&model);
        let mut encoded = Vec::new();
        for s in samples {
            match encode_sample(&model.tokenizer, template, &s, lens) {
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
        let data = match &cfg.data.synth {
            Some(sy) => {
                let mix = vec![
                    (TaskKind::Det, sy.mix.det),
                    (TaskKind::Vg, sy.mix.vg),
                    (TaskKind::Reg, sy.mix.reg),
                    (TaskKind::Visj, sy.mix.visj),
                ];
                let stream = SynthStream::new(sy.seed, sy.size, sy.max_objects, mix, bopts.clone())?
                    .with_object_scale(sy.object_scale)?
                    .with_visj_random(sy.visj_random)?
                    .with_region_naming(sy.region_naming)?
                    .with_rec_not_largest(sy.rec_not_largest)?
                    .with_rec_turns(sy.rec_turns)?
                    .with_det_subsets(sy.det_subsets)?;
                Data::Synth { stream, len: sy.samples }
            }
            None => Data::Files(encoded),
        };
        if data.is_empty() {
            // why, from the first few skipped samples (an empty task list skips none)
            let why: Vec<String> = skipped.iter().take(3).map(|k| format!("{}: {}", k.source, k.reason)).collect();
            let more = skipped.len().saturating_sub(why.len());
            return Err(match (why.is_empty(), more) {
                (true, _) => "no training samples: the task list's sources hold no records".to_string(),
                (false, 0) => format!("no usable training samples, all {} skipped: {}", skipped.len(), why.join("; ")),
                (false, m) => format!(
                    "no usable training samples, all {} skipped: {}; and {m} more",
                    skipped.len(),
                    why.join("; ")
                ),
            });
        }
        let dense = if cfg.train.stage == 0 || cfg.train.dense_weight > 0.0 {
            let c = model.tower.cfg.hidden_size;
            let head = match DenseHead::load(&source_dir, c, model.dtype, device)? {
                Some(h) => h,
                None => DenseHead::init(c, cfg.train.seed, model.dtype, device).map_err(|e| e.to_string())?,
            };
            Some(head)
        } else {
            None
        };
        let ground = if cfg.train.ground_weight > 0.0 {
            let t = &cfg.train;
            let spec = GroundSpec::new(&model, t.ground_layer, t.ground_head, t.ground_box_weight, t.ground_keys)?;
            Some(spec.with_positions(t.ground_positions).with_name_weight(t.ground_name_weight)?)
        } else {
            None
        };
        let mut vars = vars;
        if let Some(h) = &dense {
            vars.push((HEAD_WEIGHT.to_string(), h.weight.clone()));
            vars.push((HEAD_BIAS.to_string(), h.bias.clone()));
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
        let ema = if cfg.train.ema_decay > 0.0 {
            Some(Ema::new(cfg.train.ema_decay, &opt.params).map_err(|e| e.to_string())?)
        } else {
            None
        };
        let per_epoch = data.len().div_ceil(cfg.train.grad_accum * cfg.train.batch_size);
        let total_steps = if cfg.train.max_steps > 0 { cfg.train.max_steps } else { per_epoch * cfg.train.epochs };
        let mut t = Self {
            cfg,
            model,
            template,
            opt,
            source_dir: source_dir.clone(),
            data: Arc::new(data),
            skipped,
            total_steps,
            group_lrs: groups,
            prefetch: None,
            data_wait: std::time::Duration::ZERO,
            phases: Phases::default(),
            elapsed_before: 0.0,
            segment_start: None,
            dense,
            ground,
            ema,
        };
        if let Some((dir, state)) = resume {
            t.restore(&dir, state)?;
        }
        Ok(t)
    }

    fn restore(&mut self, dir: &Path, state: TrainerState) -> Result<(), Error> {
        state.check_resume(&self.state_at(state.step, 0.0), dir)?;
        let opt_file = dir.join(OPT_FILE);
        let opt = candle_core::safetensors::load(&opt_file, &self.model.device)
            .map_err(|e| format!("{}: cannot read the optimizer state to resume from: {e}", opt_file.display()))?;
        self.opt.load_state(&opt, state.step).map_err(|e| format!("{}: {e}", opt_file.display()))?;
        if let Some(ema) = &mut self.ema {
            ema.load_state(&opt, &self.opt.params).map_err(|e| format!("{}: {e}", opt_file.display()))?;
        }
        self.elapsed_before = state.elapsed_s;
        Ok(())
    }

    /// This run's [`TrainerState`] at optimizer step `step`.
    fn state_at(&self, step: usize, elapsed_s: f64) -> TrainerState {
        TrainerState {
            step,
            total_steps: self.total_steps,
            samples: self.data.len(),
            seed: self.cfg.train.seed,
            elapsed_s,
            ema_decay: Some(self.cfg.train.ema_decay),
            settings: Some(resume_settings(&self.cfg)),
        }
    }

    /// Samples per epoch.
    pub fn num_samples(&self) -> usize {
        self.data.len()
    }

    /// The loaded samples of global micro-batch `mb` (prefetched in order from the first one
    /// asked for; a jump restarts the loader).
    fn micro_batch(&mut self, mb: usize) -> Result<Vec<Result<Loaded, Skipped>>, Error> {
        if self.prefetch.as_ref().is_none_or(|(next, _)| *next != mb) {
            self.prefetch = None;
            let loader = Loader {
                data: self.data.clone(),
                tok: self.model.tokenizer.clone(),
                template: self.template,
                lens: VisualLens::of(&self.model),
                image_size: self.model.image_size(),
                region_size: self.model.region_size(),
                max_len: self.cfg.data.max_len,
                seed: self.cfg.train.seed,
                dense_grid: self.dense.as_ref().map(|_| crate::dense::patch_grid(&self.model)),
                tiles: self.model.tiles,
                slots_per_epoch: (self.cfg.train.max_steps == 0).then(|| {
                    let per_step = self.cfg.train.grad_accum * self.cfg.train.batch_size;
                    self.data.len().div_ceil(per_step) * per_step
                }),
            };
            let workers = match self.cfg.train.workers {
                0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
                w => w,
            };
            self.prefetch = Some((mb, Prefetch::start(loader, mb, self.cfg.train.batch_size, workers)));
        }
        let (next, p) = self.prefetch.as_mut().expect("started above");
        let waited = Instant::now();
        let out = p.next()?;
        self.data_wait += waited.elapsed();
        *next += 1;
        Ok(out)
    }

    /// Seconds of training so far, earlier segments included.
    pub fn elapsed_s(&self) -> f64 {
        self.elapsed_before + self.segment_start.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0)
    }

    /// The schedule's factor on the base rates at `step`.
    fn schedule_at(&self, step: usize) -> f64 {
        match self.cfg.train.schedule {
            Schedule::Steps => {
                let warm = warmup_steps(self.total_steps, self.cfg.train.warmup_ratio);
                cosine_with_warmup(step, warm, self.total_steps)
            }
            Schedule::Time => {
                cosine_with_warmup_frac(self.elapsed_s() / self.cfg.train.max_time_s, self.cfg.train.warmup_ratio)
            }
            Schedule::Constant => {
                constant_with_warmup(step, warmup_steps(self.total_steps, self.cfg.train.warmup_ratio))
            }
        }
    }

    /// Summed (averaged over the accumulation's micro-batches that trained) gradients of one
    /// optimizer step, its mean loss
    /// and supervised token count (patches in stage 0), and the mean unweighted dense and
    /// grounding losses when they are trained. Samples whose images fail are reported in `skipped`.
    pub fn step_gradients(&mut self, step: usize) -> Result<StepGradients, Error> {
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
        // micro-batches that gave a gradient
        let mut trained = 0usize;
        let mut dense_sum: Option<f64> = None;
        // the grounding loss, its masses (on the referred object, on the others) and its box
        // readout, over the micro-batches that gave each
        let (mut g_loss, mut g_own, mut g_other, mut g_box, mut g_name) =
            (Mean::default(), Mean::default(), Mean::default(), Mean::default(), Mean::default());
        let answers = self.cfg.train.stage != 0;
        let dense_weight = if answers { self.cfg.train.dense_weight } else { 1.0 };
        // an epoch's last step may hold fewer samples by design (slots past the epoch's end)
        let mut short = false;
        for j in 0..accum {
            let mut batch = Vec::new();
            let results = self.micro_batch(step * accum + j)?;
            short |= results.len() < self.cfg.train.batch_size;
            for r in results {
                match r {
                    Ok(l) => batch.push(l),
                    Err(s) => self.skipped.push(s),
                }
            }
            if batch.is_empty() {
                continue;
            }
            let obj = Objective {
                answers,
                dense: self.dense.as_ref().map(|h| (h, dense_weight)),
                ground: self.ground.as_ref().map(|g| (g, self.cfg.train.ground_weight)),
                choice: self.cfg.train.choice_weight,
            };
            let t_fwd = Instant::now();
            let BatchLoss { loss, tokens: n, dense, ground, parts } = match batch_objective(&self.model, &batch, obj) {
                Ok(x) => x,
                Err(reason) => {
                    let source = batch.iter().map(|l| l.sample.source.as_str()).collect::<Vec<_>>().join(", ");
                    self.skipped.push(Skipped { source, reason });
                    continue;
                }
            };
            // (under GRIFFON_TRAIN_SYNC=1 batch_objective's last part already waited for the device)
            let t_bwd = Instant::now();
            self.phases.forward += t_bwd - t_fwd;
            self.phases.parts += parts;
            let l = (loss / accum as f64).map_err(|e| e.to_string())?;
            let gs = l.backward().map_err(|e| e.to_string())?;
            loss_sum += l.to_scalar::<f32>().map_err(|e| e.to_string())? as f64;
            tokens += n;
            if let Some(d) = dense {
                *dense_sum.get_or_insert(0.0) += d.to_scalar::<f32>().map_err(|e| e.to_string())? as f64 / accum as f64;
            }
            if let Some(g) = ground {
                g_loss.add(&g.loss)?;
                if let Some((own, other)) = &g.masses {
                    g_own.add(own)?;
                    g_other.add(other)?;
                }
                if let Some(b) = &g.box_l1 {
                    g_box.add(b)?;
                }
                if let Some(nl) = &g.name {
                    g_name.add(nl)?;
                }
            }
            for (g, p) in grads.iter_mut().zip(&self.opt.params) {
                if let Some(pg) = gs.get(p.var.as_tensor()) {
                    // detached: a gradient's op records reach back into this step's graph
                    *g = (&*g + pg.detach().to_dtype(DType::F32).map_err(|e| e.to_string())?)
                        .map_err(|e| e.to_string())?;
                }
            }
            self.phases.backward += t_bwd.elapsed();
            trained += 1;
        }
        if trained > 0 && trained < accum {
            // micro-batches were skipped: the mean over those trained, not a fraction of it (which
            // would shrink the step and clip differently)
            let scale = accum as f64 / trained as f64;
            for g in grads.iter_mut() {
                *g = (&*g * scale).map_err(|e| e.to_string())?;
            }
            loss_sum *= scale;
            if let Some(d) = dense_sum.as_mut() {
                *d *= scale;
            }
        }
        if tokens == 0 && short {
            // the few samples of an epoch's short last step all failed: a step without an
            // update (the caller sees no tokens), not the end of the run
            return Ok(StepGradients { grads, loss: 0.0, tokens: 0, ..Default::default() });
        }
        if tokens == 0 {
            // every micro-batch was skipped: report why instead of taking an empty step
            let last = self.skipped.last().map(|s| format!(" (last: {}: {})", s.source, s.reason)).unwrap_or_default();
            return Err(format!("step {}: no micro-batch could be trained{last}", step + 1));
        }
        Ok(StepGradients {
            grads,
            loss: loss_sum,
            tokens,
            dense: dense_sum,
            ground: g_loss.get(),
            ground_masses: g_own.get().zip(g_other.get()).map(|(o, x)| [o, x]),
            ground_box: g_box.get(),
            ground_name: g_name.get(),
        })
    }

    /// Trains to the end (or `stop_after` more steps, for tests of interruption), logging to
    /// `out/metrics.jsonl` and saving checkpoints.
    pub fn run(&mut self, stop_after: Option<usize>, progress: bool) -> Result<TrainReport, Error> {
        let out = self.cfg.train.out.clone();
        std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        let metrics = out.join("metrics.jsonl");
        let dropped = trim_metrics(&metrics, self.opt.step)?;
        if dropped > 0 {
            eprintln!(
                "{}: dropped {dropped} rows past step {} (a segment interrupted after its last checkpoint; those steps run again)",
                metrics.display(),
                self.opt.step
            );
        }
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics)
            .map_err(|e| format!("{}: {e}", metrics.display()))?;
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
        self.segment_start = Some(start);
        let mut losses = Vec::new();
        let mut done = 0;
        let mut checkpoint = self.source_dir.clone();
        while self.opt.step < self.total_steps {
            if stop_after.is_some_and(|n| done >= n) {
                break;
            }
            if self.cfg.train.max_time_s > 0.0 && self.elapsed_s() >= self.cfg.train.max_time_s {
                break; // a resumed run whose budget is already spent
            }
            let step = self.opt.step;
            let t0 = Instant::now();
            self.data_wait = std::time::Duration::ZERO;
            self.phases = Phases::default();
            let profiled = profile_step() == Some(done + 1);
            if profiled {
                griffon_model::bench::profiler_range(&self.model.device, true).map_err(|e| e.to_string())?;
            }
            let StepGradients { mut grads, loss, tokens, dense, ground, ground_masses, ground_box, ground_name } =
                self.step_gradients(step)?;
            if tokens == 0 {
                // an epoch's short last step whose samples all failed (listed in `skipped`):
                // the step passes without an update or a metrics row (and may still save)
                self.opt.step += 1;
            } else {
                let t_opt = Instant::now();
                let grad_norm = clip_grad_norm(&mut grads, self.cfg.train.max_grad_norm).map_err(|e| e.to_string())?;
                // (once: the time schedule reads the clock)
                let factor = self.schedule_at(step);
                let lrs: Vec<f64> = self.group_lrs.iter().map(|lr| lr * factor).collect();
                self.opt.step(&grads, &lrs).map_err(|e| e.to_string())?;
                if let Some(ema) = &mut self.ema {
                    ema.update(&self.opt.params, self.opt.step).map_err(|e| e.to_string())?;
                }
                if profiled {
                    griffon_model::bench::profiler_range(&self.model.device, false).map_err(|e| e.to_string())?;
                    eprintln!(
                        "train: step {} (the segment's step {}) inside the profiler's capture range",
                        step + 1,
                        done + 1
                    );
                }
                let optim_s = t_opt.elapsed().as_secs_f64();
                losses.push(loss);
                let entry = StepLog {
                    step: self.opt.step,
                    epoch: match self.cfg.train.max_steps {
                        // whole epochs, each ending with a short step
                        0 => self.opt.step as f64 / self.total_steps as f64 * self.cfg.train.epochs as f64,
                        _ => {
                            (self.opt.step * self.cfg.train.grad_accum * self.cfg.train.batch_size) as f64
                                / self.data.len() as f64
                        }
                    },
                    loss,
                    // the main rate (`train.lr`): the groups' order follows the modules', so
                    // the first group may be the tower's or the region path's own rate
                    lr: self.cfg.train.lr * factor,
                    grad_norm,
                    tokens,
                    tokens_per_s: tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9),
                    elapsed_s: self.elapsed_s(),
                    data_wait_s: self.data_wait.as_secs_f64(),
                    forward_s: self.phases.forward.as_secs_f64(),
                    upload_s: self.phases.parts.upload.as_secs_f64(),
                    vision_s: self.phases.parts.vision.as_secs_f64(),
                    language_s: self.phases.parts.language.as_secs_f64(),
                    backward_s: self.phases.backward.as_secs_f64(),
                    optim_s,
                    dense,
                    ground,
                    ground_own: ground_masses.map(|m| m[0]),
                    ground_other: ground_masses.map(|m| m[1]),
                    ground_box,
                    ground_name,
                };
                writeln!(log, "{}", serde_json::to_string(&entry).expect("serializable")).map_err(|e| e.to_string())?;
                bar.set_position(self.opt.step as u64);
                bar.set_message(format!("loss {loss:.4} lr {:.2e} tok/s {:.0}", entry.lr, entry.tokens_per_s));
            }
            done += 1;
            let every = self.cfg.train.save_every;
            let out_of_time = self.cfg.train.max_time_s > 0.0 && self.elapsed_s() >= self.cfg.train.max_time_s;
            if self.opt.step == self.total_steps || (every > 0 && self.opt.step.is_multiple_of(every)) || out_of_time {
                checkpoint = self.save()?;
            }
            if out_of_time {
                break;
            }
        }
        self.prefetch = None;
        bar.finish();
        Ok(TrainReport {
            steps: self.opt.step,
            total_steps: self.total_steps,
            samples: self.data.len(),
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
        remove_leftovers(&out);
        std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        let io = |e: std::io::Error| e.to_string();
        // non-weight files (config, tokenizer, tower config folders) as they were
        copy_support_files(&self.source_dir, &tmp).map_err(io)?;
        if let Some(tiles) = self.cfg.model.tiles {
            // the checkpoint runs as it was trained: tiled input is a config key (`mm_tiles`)
            let path = tmp.join("config.json");
            let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            let obj = v.as_object_mut().ok_or_else(|| format!("{}: not a JSON object", path.display()))?;
            obj.insert("mm_tiles".into(), serde_json::Value::from(tiles));
            std::fs::write(&path, serde_json::to_string_pretty(&v).expect("json")).map_err(io)?;
        }
        // weights: trainable from the variables (stored dtype), frozen as stored
        let src = Checkpoint::open(&self.source_dir, &Device::Cpu, DType::F32).map_err(|e| e.to_string())?;
        // trained tensors from the optimizer's f32 masters (in mixed precision the variables
        // hold a rounded copy), or their moving average when there is one (the raw weights are
        // the masters in the optimizer state)
        let trained: HashMap<&str, &Tensor> = match &self.ema {
            Some(ema) => self.opt.params.iter().zip(&ema.shadow).map(|(p, s)| (p.name.as_str(), s)).collect(),
            None => self.opt.params.iter().map(|p| (p.name.as_str(), &p.master)).collect(),
        };
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for n in src.names() {
            let stored = src.get_stored(n).map_err(|e| e.to_string())?;
            let t = match trained.get(n) {
                Some(m) => {
                    m.to_dtype(stored.dtype()).and_then(|t| t.to_device(&Device::Cpu)).map_err(|e| e.to_string())?
                }
                None => stored,
            };
            tensors.insert(n.to_string(), t);
        }
        candle_core::safetensors::save(&tensors, tmp.join("model.safetensors")).map_err(|e| e.to_string())?;
        if self.dense.is_some() {
            let (w, b) = (trained.get(HEAD_WEIGHT), trained.get(HEAD_BIAS));
            let (Some(w), Some(b)) = (w, b) else { return Err("the dense head is missing from the optimizer".into()) };
            DenseHead::save(&tmp, w, b)?;
        }
        let mut state = self.opt.state_tensors();
        if let Some(ema) = &self.ema {
            state.extend(ema.state_tensors(&self.opt.params));
        }
        let opt: HashMap<String, Tensor> = state
            .into_iter()
            .map(|(k, v)| v.to_device(&Device::Cpu).map(|v| (k, v)))
            .collect::<candle_core::Result<_>>()
            .map_err(|e| e.to_string())?;
        candle_core::safetensors::save(&opt, tmp.join(OPT_FILE)).map_err(|e| e.to_string())?;
        let state = self.state_at(self.opt.step, self.elapsed_s());
        std::fs::write(tmp.join(STATE_FILE), serde_json::to_string_pretty(&state).expect("serializable"))
            .map_err(io)?;
        sync_dir(&tmp).map_err(io)?;
        let _ = std::fs::remove_dir_all(&final_dir);
        std::fs::rename(&tmp, &final_dir).map_err(io)?;
        let latest_tmp = out.join(format!(".{LATEST}.tmp"));
        std::fs::write(&latest_tmp, &name).map_err(io)?;
        std::fs::File::open(&latest_tmp).and_then(|f| f.sync_all()).map_err(io)?;
        std::fs::rename(&latest_tmp, out.join(LATEST)).map_err(io)?;
        // Later saves read frozen tensors and support files from the newest checkpoint (it holds
        // all of them): the one this run resumed from may be pruned next, and reading it after
        // that failed ("No such file or directory" at the second save after a resume with
        // keep_checkpoints, found by a CPU probe run).
        self.source_dir = final_dir.clone();
        if self.cfg.train.keep_checkpoints > 0 {
            prune_checkpoints(&out, self.cfg.train.keep_checkpoints, &name).map_err(io)?;
        }
        Ok(final_dir)
    }
}

/// Removes all but the newest `keep` `checkpoint-N` folders of `out` (never `current`).
fn prune_checkpoints(out: &Path, keep: usize, current: &str) -> std::io::Result<()> {
    let mut found: Vec<(usize, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(out)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(n) = name.strip_prefix("checkpoint-").and_then(|n| n.parse::<usize>().ok()) {
            if name != current && e.path().is_dir() {
                found.push((n, e.path()));
            }
        }
    }
    found.sort();
    let excess = (found.len() + 1).saturating_sub(keep);
    for (n, p) in found.into_iter().take(excess) {
        // renamed out of the checkpoint names first: a kill while deleting leaves a `.del-`
        // folder (removed by a later save), not a half-deleted checkpoint-N that looks whole
        let doomed = out.join(format!(".del-checkpoint-{n}-{}", std::process::id()));
        std::fs::rename(&p, &doomed)?;
        std::fs::remove_dir_all(doomed)?;
    }
    Ok(())
}

/// Removes what killed runs left in `out`: `.tmp-checkpoint-N-PID` (a save cut short, weights
/// and optimizer state, full size) and `.del-checkpoint-N-PID` (a prune cut short) of processes
/// that are gone (no /proc/PID; this process's own are its to handle). Failures are ignored:
/// the folders are not needed, and never read.
fn remove_leftovers(out: &Path) {
    let Ok(entries) = std::fs::read_dir(out) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(".tmp-checkpoint-").or_else(|| name.strip_prefix(".del-checkpoint-")) else {
            continue;
        };
        let Some(pid) = rest.rsplit_once('-').and_then(|(_, pid)| pid.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() && e.path().is_dir() {
            let _ = std::fs::remove_dir_all(e.path());
        }
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

#[cfg(test)]
mod tests {
    use super::changed_settings;
    use serde_json::json;

    /// Changed settings are named by their config keys, a table's values one by one; a key the
    /// stored settings lack (added later) is not compared.
    #[test]
    fn changed_settings_are_named_by_key() {
        let stored = json!({"lr": 1e-3, "data.max_len": 100,
                            "data.synth": {"seed": 1, "mix": {"det": 0.25, "vg": 0.35}}});
        let now = json!({"lr": 1e-3, "data.max_len": 100, "model.tiles": 2,
                         "data.synth": {"seed": 2, "mix": {"det": 0.25, "vg": 0.3}}});
        assert_eq!(changed_settings(&stored, &now), ["data.synth.mix.vg 0.35 -> 0.3", "data.synth.seed 1 -> 2"]);
        let none = json!({"data.synth": null});
        assert_eq!(changed_settings(&none, &json!({"data.synth": {"seed": 1}})), ["data.synth null -> {\"seed\":1}"]);
        assert!(changed_settings(&now, &now).is_empty());
        // a key added later: compared with what every run before it had
        let old = json!({"data.synth": {"seed": 1}});
        assert_eq!(
            changed_settings(&old, &json!({"data.synth": {"seed": 1, "det_subsets": 0.4}})),
            ["data.synth.det_subsets 0.0 -> 0.4"]
        );
        assert!(changed_settings(&old, &json!({"data.synth": {"seed": 1, "det_subsets": 0.0}})).is_empty());
        // the input size or tiles left out are the checkpoint's own: not a change
        let sized = json!({"model.image_size": 448, "model.tiles": 2});
        assert!(changed_settings(&sized, &json!({"model.image_size": null, "model.tiles": null})).is_empty());
        assert_eq!(changed_settings(&sized, &json!({"model.image_size": 224, "model.tiles": 2})).len(), 1);
    }
}

//! Grounding loss: one attention head of the LLM is told where to look while it writes a REC box.
//!
//! Every model of docs/SYNTH.md (sessions 12-15) boxes other objects as often as the referred
//! one: it names an object at a place (88% of its detection labels are right) but does not find
//! a place from a name, although a fixed linear query over its image tokens would (93% of the
//! names, `tools/synth/token_lookup.py`). A lookup head needs its query (from the expression)
//! and its key (from the image tokens) to change together before either helps the answer loss,
//! which may be why the answer loss alone does not grow one. This loss supervises one head
//! directly, as supervised attention does in grounding and alignment work: at every position of
//! a REC answer whose next token lies inside the box (`[` up to the token before `]`), the
//! head's attention (its own scores, scale and soft-capping) should fall on the tokens of the
//! referred object. The loss is the mean of `-log(sum of that attention on the object's
//! tokens)`, the attention taken over the head's whole causal row (`ground_keys = "all"`, what
//! the head really reads: text keys included) or renormalised over the image tokens alone
//! (`"image"`: the head may then still look at text and pass little of the image on). With `ground_box_weight` > 0
//! the head must also carry where it looked: the first four channels of its image tokens'
//! values, averaged under its attention renormalised over the image tokens (what it reads from
//! the image; the text's values, which hold the coordinates already written, are left out),
//! regress the referred box (mean L1), a readout fixed in the value space (no new parameters;
//! the output projection and later layers may use it or not).
//!
//! An image token belongs to the box when its receptive field's centre lies inside it: token
//! (r, c) of the stride-2 3x3 `conv_reduce` projector is centred on tower patch (2r, 2c) (padding
//! 1; (2r + 1, 2c + 1) without padding), the other projectors keep one token per patch. An
//! object too small to hold a centre is given the token nearest its box's centre. Boxes are the
//! answer's normalised coordinates; the preprocessing squashes every image to the model's square
//! input (`resample::preprocess`), so they map to the token grid directly. Off unless
//! `train.ground_weight` > 0; only REC (`VG`) samples carry it; not part of the reference recipe.
//!
//! The name lens (`train.ground_name_weight` > 0, on top of the grounding loss): at each box's
//! choosing position (the one predicting x1's first decimal), the residual stream the supervised
//! layer reads, put through the LLM's own output head, should predict the tokens of the
//! object's name (the expression's last two words). Without it the name reached that position
//! only in low-variance directions and no head learned to look the object up by name
//! (docs/SYNTH.md, sessions 18-19); with it the supervised head and then the answers do.

use crate::config::{GroundKeys, GroundPositions};
use crate::data::{Sample, TaskKind};
use crate::trainer::{choosing_token, Encoded, VisualLens, CHOICE_BYTE};
use candle_core::{DType, IndexOp, Tensor, D};
use griffon_core::answer::parse_answer;
use griffon_core::boxes::iou_xyxy;
use griffon_core::Piece;
use griffon_model::config::ProjectorType;
use griffon_model::griffon::Griffon;
use griffon_model::llm::Llm;
use griffon_model::tokenize::PromptTokenizer;

/// What the grounding loss supervises, fixed for a model.
pub struct GroundSpec {
    /// Decoder layer (0-based) and query head whose attention is supervised.
    pub layer: usize,
    pub head: usize,
    /// Weight of the box readout term (0 = off): the first four channels of the head's values
    /// of the image tokens, averaged under its attention renormalised over them (what it reads
    /// from the image, whichever attention the loss takes), should be the referred box.
    pub box_weight: f64,
    /// Whether the attention is the head's whole causal row (text keys included: what the head
    /// really reads) or renormalised over the image tokens alone.
    pub keys: GroundKeys,
    /// [`GroundPositions::Choice`]: supervise only the positions up to the one that predicts the
    /// first decimal of `x1` (the token that chooses the object, docs/SYNTH.md sessions 17-18),
    /// instead of every position predicting the box's tokens: once `x1` is written, the head can
    /// find the object by that coordinate rather than by the expression.
    pub positions: GroundPositions,
    /// Weight of the name lens ([`Self::name_loss`]; 0 = off).
    pub name_weight: f64,
    /// Key/value head of `head`.
    kv_head: usize,
    /// The tapped layer's sliding window, when it has one.
    window: Option<usize>,
    scale: f64,
    softcap: Option<f64>,
    /// Normalised (x, y) of each image token's receptive-field centre, row-major.
    centres: Vec<(f64, f64)>,
}

/// One box of a REC answer: the positions (in the sample's sequence) that predict its tokens,
/// the image tokens (0-based, row-major) the box holds, and those of the scene's other objects
/// (not in `targets`; empty when the objects are not known): for the diagnostics only.
#[derive(Debug, Clone, PartialEq)]
pub struct GroundQuery {
    pub positions: Vec<usize>,
    pub targets: Vec<usize>,
    pub others: Vec<usize>,
    /// The answer's normalised box.
    pub bbox: [f64; 4],
    /// The position that predicts x1's first decimal (the token that chooses the object).
    pub choice: usize,
    /// The token ids that spell the object's name (the expression's last two words before the
    /// box, `colour shape` in the synthetic benchmark), for the name lens: the tokens
    /// overlapping them; empty when the expression has fewer than two words.
    pub name: Vec<u32>,
}

/// The grounding loss of a batch, and the supervised head's mean attention on the referred
/// object's tokens and on the other objects' tokens (detached; over the positions whose scene
/// has other objects, when there are any).
pub struct GroundLoss {
    pub loss: Tensor,
    /// The box readout's mean L1 (unweighted) when `box_weight` > 0.
    pub box_l1: Option<Tensor>,
    pub masses: Option<(Tensor, Tensor)>,
    /// The name lens's loss (unweighted) when `name_weight` > 0, set by the trainer.
    pub name: Option<Tensor>,
}

/// A sample's grounding queries and where its image tokens start.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleGround {
    pub image_start: usize,
    pub queries: Vec<GroundQuery>,
}

/// The normalised centres of a model's image tokens (one tile, no CLS token).
pub fn token_centres(m: &Griffon) -> Result<Vec<(f64, f64)>, String> {
    if m.config.mm.tiles != 1 {
        return Err(format!(
            "the grounding loss needs one tile per image, the model cuts it into {0}x{0}",
            m.config.mm.tiles
        ));
    }
    if m.config.mm.keep_cls {
        return Err("the grounding loss needs patch tokens only, the model keeps the CLS token".into());
    }
    let patches = m.tower.run_size() / m.tower.cfg.patch_size;
    let (grid, at): (usize, Box<dyn Fn(usize) -> usize>) = match m.config.mm.projector {
        ProjectorType::ConvReduce { pad } => {
            if pad > 1 {
                return Err(format!("conv_reduce with padding {pad} is not supported by the grounding loss"));
            }
            let Some(span) = (patches + 2 * pad).checked_sub(3) else {
                return Err(format!("the grounding loss needs a patch grid of 3 or more, the tower gives {patches}"));
            };
            (span / 2 + 1, Box::new(move |o| 2 * o + 1 - pad))
        }
        ProjectorType::Linear | ProjectorType::Mlp(_) | ProjectorType::Identity => (patches, Box::new(|o| o)),
    };
    if grid * grid != m.image_tokens() {
        return Err(format!(
            "the grounding loss expected a {grid}x{grid} token grid, the model gives {} image tokens",
            m.image_tokens()
        ));
    }
    let mut out = Vec::with_capacity(grid * grid);
    for r in 0..grid {
        for c in 0..grid {
            out.push(((at(c) as f64 + 0.5) / patches as f64, (at(r) as f64 + 0.5) / patches as f64));
        }
    }
    Ok(out)
}

impl GroundSpec {
    pub fn new(m: &Griffon, layer: usize, head: usize, box_weight: f64, keys: GroundKeys) -> Result<Self, String> {
        let layers = m.llm.num_layers();
        let (heads, kv_heads, head_dim) = m.llm.heads();
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(format!("{heads} attention heads are not a multiple of {kv_heads} key/value heads"));
        }
        if box_weight > 0.0 && head_dim < 4 {
            return Err(format!("the grounding loss's box readout needs 4 value channels, the heads have {head_dim}"));
        }
        if layer >= layers {
            return Err(format!("train.ground_layer = {layer}, the LLM has {layers} layers (0-based)"));
        }
        if head >= heads {
            return Err(format!("train.ground_head = {head}, the LLM has {heads} attention heads (0-based)"));
        }
        let spec = m.llm.attn_spec();
        Ok(Self {
            layer,
            head,
            box_weight,
            keys,
            positions: GroundPositions::Box,
            name_weight: 0.0,
            kv_head: head / (heads / kv_heads),
            window: m.llm.layer_window(layer),
            scale: spec.scale,
            softcap: spec.softcap,
            centres: token_centres(m)?,
        })
    }

    /// [`Self::positions`] set to `positions`.
    pub fn with_positions(mut self, positions: GroundPositions) -> Self {
        self.positions = positions;
        self
    }

    /// [`Self::name_weight`] set to `w` (the name lens reads the layer's input: layer 0 reads
    /// the embeddings alone, refused).
    pub fn with_name_weight(mut self, w: f64) -> Result<Self, String> {
        if w > 0.0 && self.layer == 0 {
            return Err("the name lens needs a grounding layer >= 1: layer 0 reads the embeddings alone".into());
        }
        self.name_weight = w;
        Ok(self)
    }

    /// The image tokens a normalised box holds (the nearest to its centre when it holds none).
    pub fn targets(&self, b: [f64; 4]) -> Vec<usize> {
        let inside: Vec<usize> = (0..self.centres.len())
            .filter(|&i| {
                let (x, y) = self.centres[i];
                b[0] <= x && x < b[2] && b[1] <= y && y < b[3]
            })
            .collect();
        if !inside.is_empty() {
            return inside;
        }
        let (cx, cy) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
        let d = |i: usize| (self.centres[i].0 - cx).powi(2) + (self.centres[i].1 - cy).powi(2);
        vec![(0..self.centres.len()).min_by(|&a, &b| d(a).total_cmp(&d(b))).expect("at least one token")]
    }

    /// The grounding queries of a REC sample (`None` for other tasks): the k-th `[ ... ]` group
    /// of its supervised text is the k-th box of its answers (`objects`: the scene's normalised
    /// boxes when known, for [`GroundQuery::others`]). The queries are the positions
    /// whose next token overlaps the group after its `[` (the coordinates and the `]`), found
    /// from the tokens' text spans, so a tokenizer that merges `-[` or `[0` finds them too.
    pub fn sample(
        &self,
        tok: &PromptTokenizer,
        s: &Sample,
        enc: &Encoded,
        lens: VisualLens,
        objects: &[[f64; 4]],
    ) -> Result<Option<SampleGround>, String> {
        if s.task != TaskKind::Vg {
            return Ok(None);
        }
        let mut boxes = Vec::new();
        for (_, answer) in &s.turns {
            let parsed = parse_answer(answer);
            if let Some(d) = parsed.dropped.first() {
                return Err(format!("grounding loss: answer {answer:?}: {} ({:?})", d.reason, d.text));
            }
            boxes.extend(parsed.instances.iter().map(|i| [i.norm.x1, i.norm.y1, i.norm.x2, i.norm.y2]));
        }
        let image_start = enc.image_start(lens).map_err(|e| format!("grounding loss: {e}"))?;
        // the runs of supervised tokens (position, id)
        let mut runs: Vec<Vec<(usize, u32)>> = vec![Vec::new()];
        let mut pos = 0usize;
        for (p, &sup) in enc.pieces.iter().zip(&enc.supervised) {
            match p {
                Piece::Token(t) if sup => runs.last_mut().expect("non-empty").push((pos, *t)),
                _ => {
                    if !runs.last().expect("non-empty").is_empty() {
                        runs.push(Vec::new());
                    }
                }
            }
            pos += lens.of_piece(p);
        }
        let mut groups: Vec<(Vec<usize>, usize, Vec<u32>)> = Vec::new();
        for run in runs.iter().filter(|r| !r.is_empty()) {
            if run[0].0 < image_start + lens.image {
                return Err(format!("grounding loss: an answer starts before the image ends in {:?}", s.turns));
            }
            let ids: Vec<u32> = run.iter().map(|x| x.1).collect();
            let (text, spans) = tok.decode_spans(&ids).map_err(|e| format!("grounding loss: {e}"))?;
            let mut from = 0;
            while let Some(o) = text[from..].find('[').map(|k| from + k) {
                let Some(c) = text[o..].find(']').map(|k| o + k) else {
                    return Err(format!("grounding loss: unclosed '[' in the answer text {text:?}"));
                };
                if text[o + 1..c].contains('[') {
                    return Err(format!("grounding loss: nested '[' in the answer text {text:?}"));
                }
                // tokens overlapping bytes o+1 ..= c (with `GroundPositions::Choice`, o+1 ..= o+3: `0.d` of
                // x1), each predicted by the position before it
                let last = if self.positions == GroundPositions::Choice { c.min(o + CHOICE_BYTE) } else { c };
                let positions: Vec<usize> = spans
                    .iter()
                    .zip(run)
                    .filter(|((a, b), _)| a < b && *a <= last && *b > o + 1)
                    .map(|(_, (p, _))| *p - 1) // p > 0: the answer comes after the image (checked above)
                    .collect();
                if positions.is_empty() {
                    return Err(format!("grounding loss: no token spans the box in {text:?}"));
                }
                // the position predicting x1's first decimal (`[0.d`: byte o + CHOICE_BYTE)
                let Some(choice) = choosing_token(&spans, o).map(|j| run[j].0 - 1) else {
                    return Err(format!("grounding loss: no token holds x1's first decimal in {text:?}"));
                };
                // the name: the last two words before `-[` (or `[`), the tokens overlapping them
                // (a BPE may merge a word's end with `-[`: that token still spells the name)
                let head = text[from..o].trim_end_matches('-').trim_end();
                let words: Vec<(usize, &str)> =
                    head.split_whitespace().map(|w| (w.as_ptr() as usize - text.as_ptr() as usize, w)).collect();
                let name = match words.len() {
                    n if n >= 2 => {
                        let (ns, ne) = (words[n - 2].0, words[n - 1].0 + words[n - 1].1.len());
                        spans
                            .iter()
                            .zip(run)
                            .filter(|((a, b), _)| a < b && *a < ne && *b > ns)
                            .map(|(_, (_, id))| *id)
                            .collect()
                    }
                    _ => Vec::new(),
                };
                groups.push((positions, choice, name));
                from = c + 1;
            }
        }
        if groups.len() != boxes.len() {
            return Err(format!(
                "grounding loss: {} boxes parsed from the answers but {} '[ ... ]' groups in their tokens ({:?})",
                boxes.len(),
                groups.len(),
                s.turns
            ));
        }
        let queries = groups
            .into_iter()
            .zip(boxes)
            .map(|((positions, choice, name), b)| {
                let targets = self.targets(b);
                // the referred object: the one the answer's (rounded) box overlaps most
                let referred = (0..objects.len())
                    .map(|i| (i, iou_xyxy(objects[i], b)))
                    .filter(|x| x.1 >= 0.5)
                    .max_by(|x, y| x.1.total_cmp(&y.1))
                    .map(|x| x.0);
                let mut others: Vec<usize> = (0..objects.len())
                    .filter(|&i| Some(i) != referred)
                    .flat_map(|i| self.targets(objects[i]))
                    .filter(|t| !targets.contains(t))
                    .collect();
                others.sort_unstable();
                others.dedup();
                GroundQuery { positions, targets, others, bbox: b, choice, name }
            })
            .collect();
        Ok(Some(SampleGround { image_start, queries }))
    }

    /// The mean grounding loss over every query position of the batch (`None` when no sample has
    /// a query), from the tapped layer's queries [B, heads, T, d], keys and values [B, kv heads,
    /// T, d].
    pub fn loss(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        samples: &[Option<SampleGround>],
    ) -> Result<Option<GroundLoss>, String> {
        let e = |x: candle_core::Error| format!("grounding loss: {x}");
        let n_img = self.centres.len();
        let t_all = k.dim(2).map_err(e)?;
        // the columns of a row: the image tokens alone, or every key of the sequence (the head's
        // own causal row, later positions masked), and where the image starts among them
        let cols = if self.keys == GroundKeys::All { t_all } else { n_img };
        let mut causal: Vec<f32> = Vec::new();
        let mut scores = Vec::new();
        // per sample with queries: its rows' first index, count and image start among the columns
        let mut blocks: Vec<(usize, usize, usize)> = Vec::new();
        // per such sample: its image tokens' first four value channels (box readout)
        let mut values = Vec::new();
        let mut boxes: Vec<f32> = Vec::new();
        let mut mask: Vec<f32> = Vec::new();
        let mut other: Vec<f32> = Vec::new();
        // 1 for the rows whose scene has other objects
        let mut with_others: Vec<f32> = Vec::new();
        for (b, sg) in samples.iter().enumerate() {
            let Some(sg) = sg else { continue };
            if sg.queries.is_empty() {
                continue;
            }
            let img_end = sg.image_start + n_img;
            if img_end > t_all {
                return Err(format!(
                    "grounding loss: sample {b}'s image ends at position {img_end}, past the {t_all} tapped"
                ));
            }
            for g in &sg.queries {
                if let Some(p) = g.positions.iter().find(|&&p| p < img_end || p >= t_all) {
                    return Err(format!("grounding loss: sample {b}: query position {p} is not between the image's end ({img_end}) and {t_all}"));
                }
                if let Some(t) = g.targets.iter().chain(&g.others).find(|&&t| t >= n_img) {
                    return Err(format!("grounding loss: sample {b}: image token {t} of {n_img}"));
                }
                if let (Some(w), Some(&p)) = (self.window, g.positions.iter().max()) {
                    if p - sg.image_start >= w {
                        return Err(format!(
                            "grounding loss: position {p} of sample {b} sees only the last {w} keys of the tapped layer, not all its image tokens"
                        ));
                    }
                }
            }
            let (first, at) = if self.keys == GroundKeys::All { (0, sg.image_start) } else { (sg.image_start, 0) };
            // scores in f32 from the start (bf16 / f16 models)
            let keys =
                k.i((b, self.kv_head)).and_then(|x| x.narrow(0, first, cols)?.to_dtype(DType::F32)).map_err(e)?;
            let rows: Vec<u32> = sg.queries.iter().flat_map(|g| g.positions.iter().map(|&p| p as u32)).collect();
            let idx = Tensor::new(rows, q.device()).map_err(e)?;
            let qs = q.i((b, self.head)).and_then(|x| x.index_select(&idx, 0)?.to_dtype(DType::F32)).map_err(e)?;
            let s = qs.matmul(&keys.t().map_err(e)?).map_err(e)?;
            blocks.push((mask.len() / cols, s.dim(0).map_err(e)?, at));
            scores.push(s);
            if self.box_weight > 0.0 {
                let vals = v.i((b, self.kv_head)).and_then(|x| x.narrow(0, sg.image_start, n_img)?.narrow(1, 0, 4));
                values.push(vals.and_then(|x| x.to_dtype(DType::F32)).map_err(e)?);
            }
            for g in &sg.queries {
                for _ in &g.positions {
                    boxes.extend(g.bbox.iter().map(|&x| x as f32));
                }
                let mut row = vec![0f32; cols];
                for &t in &g.targets {
                    row[at + t] = 1.0;
                }
                let mut orow = vec![0f32; cols];
                for &t in &g.others {
                    orow[at + t] = 1.0;
                }
                for &p in &g.positions {
                    if self.keys == GroundKeys::All {
                        // causal, and within the layer's sliding window when it has one
                        let seen = |c: usize| c <= p && self.window.is_none_or(|w| p - c < w);
                        causal.extend((0..cols).map(|c| if seen(c) { 0.0 } else { f32::NEG_INFINITY }));
                    }
                    mask.extend_from_slice(&row);
                    other.extend_from_slice(&orow);
                    with_others.push(if g.others.is_empty() { 0.0 } else { 1.0 });
                }
            }
        }
        if scores.is_empty() {
            return Ok(None);
        }
        let mut s = (Tensor::cat(&scores, 0).map_err(e)? * self.scale).map_err(e)?;
        if let Some(cap) = self.softcap {
            s = griffon_model::nn::softcap(&s, cap).map_err(|x| format!("grounding loss: {x}"))?;
        }
        let rows = s.dim(0).map_err(e)?;
        let dev = s.device().clone();
        let capped = s.clone();
        if self.keys == GroundKeys::All {
            s = (s + Tensor::from_vec(causal, (rows, cols), &dev).map_err(e)?).map_err(e)?;
        }
        let mask = Tensor::from_vec(mask, (rows, cols), &dev).map_err(e)?;
        let probs = candle_nn::ops::log_softmax(&s, D::Minus1).and_then(|l| l.exp()).map_err(e)?;
        let p = (&probs * &mask).and_then(|x| x.sum(1)).map_err(e)?;
        let loss = (&p + 1e-12).and_then(|p| p.log()).and_then(|l| l.mean_all()).and_then(|l| l.neg()).map_err(e)?;
        let box_l1 = if self.box_weight > 0.0 {
            // each sample's rows read their own image's values, under the attention renormalised
            // over its image tokens (the text's values, which hold the coordinates already
            // written, are not part of the readout)
            let mut read = Vec::with_capacity(values.len());
            for (vals, &(row0, r, at)) in values.iter().zip(&blocks) {
                let img = capped.narrow(0, row0, r).and_then(|x| x.narrow(1, at, n_img)).map_err(e)?;
                let p_img = candle_nn::ops::log_softmax(&img, D::Minus1).and_then(|l| l.exp()).map_err(e)?;
                read.push(p_img.matmul(vals).map_err(e)?);
            }
            let pred = Tensor::cat(&read, 0).map_err(e)?;
            let want = Tensor::from_vec(boxes, (rows, 4), &dev).map_err(e)?;
            Some((pred - want).and_then(|d| d.abs()?.mean_all()).map_err(e)?)
        } else {
            None
        };
        let n_with = with_others.iter().filter(|&&w| w > 0.0).count();
        let masses = if n_with == 0 {
            None
        } else {
            let w = Tensor::from_vec(with_others, rows, &dev).map_err(e)?;
            let other = Tensor::from_vec(other, (rows, cols), &dev).map_err(e)?;
            let probs = probs.detach();
            let mean = |m: &Tensor| -> candle_core::Result<Tensor> {
                (probs.mul(m)?.sum(1)? * &w)?.sum_all()? / n_with as f64
            };
            Some((mean(&mask).map_err(e)?, mean(&other).map_err(e)?))
        };
        Ok(Some(GroundLoss { loss, box_l1, masses, name: None }))
    }

    /// The name lens (`train.ground_name_weight`): the residual stream the supervised layer
    /// reads (`input`, [B, T, H]), at each query's choosing position, read through the LLM's
    /// own output head (final norm, tied embeddings, soft-cap) as the next-token logits would
    /// be, should spell the referred object's name: the mean over the batch's (query, name
    /// token) pairs of `-log p(token)`. docs/SYNTH.md session 19: the image tokens' keys hold
    /// the name (a query made from the name finds the object), but the choosing position holds
    /// it only in low-variance directions, so a head there has nothing loud to match; this
    /// loss asks the layers below to bring it there. `None` when no sample has a query.
    pub fn name_loss(
        &self,
        llm: &Llm,
        input: &Tensor,
        samples: &[Option<SampleGround>],
    ) -> Result<Option<Tensor>, String> {
        let e = |x: candle_core::Error| format!("name lens: {x}");
        let (b, t, h) = input.dims3().map_err(e)?;
        let (mut rows, mut ids) = (Vec::new(), Vec::new());
        for (i, sg) in samples.iter().enumerate() {
            let Some(sg) = sg else { continue };
            for g in &sg.queries {
                if g.name.is_empty() {
                    return Err(format!("name lens: sample {i}: no token spells the name before its box"));
                }
                if g.choice >= t {
                    return Err(format!("name lens: sample {i}: choosing position {} past the {t} tapped", g.choice));
                }
                for &id in &g.name {
                    rows.push((i * t + g.choice) as u32);
                    ids.push(id);
                }
            }
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let dev = input.device();
        let idx = Tensor::new(rows, dev).map_err(e)?;
        let picked = input.reshape((b * t, h)).and_then(|x| x.index_select(&idx, 0)).map_err(e)?;
        let logits = llm.head(&picked).map_err(|x| format!("name lens: {x}"))?;
        let logits = logits.to_dtype(DType::F32).map_err(e)?;
        let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1).map_err(e)?;
        let ids = Tensor::new(ids, dev).and_then(|t| t.unsqueeze(1)).map_err(e)?;
        let nll = lsm.gather(&ids, 1).and_then(|x| x.neg()).and_then(|x| x.mean_all()).map_err(e)?;
        Ok(Some(nll))
    }
}

//! Dense perception pre-training of the vision tower on synthetic scenes ("stage 0").
//!
//! Griffon starts from a CLIP tower pre-trained on 400M image-text pairs; a tower trained from
//! scratch on our synthetic scenes has no such start, and learning where objects are only
//! through the few coordinate tokens of an answer is slow: a from-scratch CPU run of 21,680
//! samples stayed image-blind (docs/SYNTH.md). Stage 0 gives every patch a target instead, as
//! dense detectors (FCOS, Tian et al. 2019) do: the shape and the colour of the object covering
//! the patch centre (or background) and that object's normalized xyxy box. A linear head on the
//! features the projector reads (select layer, patch tokens) is trained with balanced
//! cross-entropy (mean over covered patches + mean over background ones) on shape and colour plus `BOX_WEIGHT` x L1 on the box of covered patches (DETR's 5:1 weighting).
//! The head is kept beside the checkpoint (`dense_head.safetensors`) for resuming and is not
//! part of the model. Used as `stage = 0`, or as an auxiliary loss (`dense_weight`) in other
//! stages on synthetic data.

use crate::synth::{Object, COLOURS, SHAPES};
use candle_core::{DType, Device, Tensor, Var, D};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;

/// Shape classes: background + the generator's shapes.
pub const SHAPE_CLASSES: usize = SHAPES.len() + 1;
/// Colour classes: background + the generator's colours.
pub const COLOUR_CLASSES: usize = COLOURS.len() + 1;
/// Head outputs: shape logits, colour logits, box (x1, y1, x2, y2).
pub const OUTPUTS: usize = SHAPE_CLASSES + COLOUR_CLASSES + 4;
/// Weight of the L1 box term against the two cross-entropies.
pub const BOX_WEIGHT: f64 = 5.0;
/// File of the head in a checkpoint folder.
pub const HEAD_FILE: &str = "dense_head.safetensors";
/// Tensor names of the head (also its optimizer parameter names).
pub const HEAD_WEIGHT: &str = "dense_head.weight";
pub const HEAD_BIAS: &str = "dense_head.bias";

/// An object's shape, colour and box (scene or tile pixels) for [`DenseTargets`].
struct Owned {
    shape: usize,
    colour: usize,
    bbox: [f64; 4],
}

/// Per-patch targets of one scene on a `grid` x `grid` patch grid, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseTargets {
    pub grid: usize,
    /// 0 = background, 1 + shape index.
    pub shape: Vec<u32>,
    /// 0 = background, 1 + colour index.
    pub colour: Vec<u32>,
    /// Normalized xyxy of the covering object (zeros on background).
    pub boxes: Vec<[f32; 4]>,
}

impl DenseTargets {
    /// Objects of a `size` px scene on a `grid`-patch grid. A patch belongs to the smallest
    /// object whose box holds its centre; every object also owns the patch holding its own
    /// centre (smaller objects win ties), so objects under a patch in size are not lost.
    pub fn new(objs: &[Object], size: u32, grid: usize) -> Result<Self, String> {
        let boxes: Vec<Owned> =
            objs.iter().map(|o| Owned { shape: o.shape, colour: o.colour, bbox: o.bbox.map(|v| v as f64) }).collect();
        Self::of_boxes(&boxes, size as f64, grid)
    }

    /// The targets of each tile when the scene is cut into `tiles` x `tiles` squares (the tiled
    /// input of [`griffon_model::griffon::Griffon::encode_image`], row-major): each tile's own
    /// grid, the objects clipped to the tile and their boxes normalized to it. One tile: [`Self::new`].
    pub fn tiled(objs: &[Object], size: u32, grid: usize, tiles: usize) -> Result<Vec<Self>, String> {
        if tiles == 0 {
            return Err("dense targets need at least one tile".into());
        }
        let ts = size as f64 / tiles as f64;
        let mut out = Vec::with_capacity(tiles * tiles);
        for ty in 0..tiles {
            for tx in 0..tiles {
                let (x0, y0) = (tx as f64 * ts, ty as f64 * ts);
                let clipped: Vec<Owned> = objs
                    .iter()
                    .filter_map(|o| {
                        let b = o.bbox.map(|v| v as f64);
                        let c = [
                            (b[0] - x0).clamp(0.0, ts),
                            (b[1] - y0).clamp(0.0, ts),
                            (b[2] - x0).clamp(0.0, ts),
                            (b[3] - y0).clamp(0.0, ts),
                        ];
                        (c[2] > c[0] && c[3] > c[1]).then_some(Owned { shape: o.shape, colour: o.colour, bbox: c })
                    })
                    .collect();
                out.push(Self::of_boxes(&clipped, ts, grid)?);
            }
        }
        Ok(out)
    }

    fn of_boxes(objs: &[Owned], size: f64, grid: usize) -> Result<Self, String> {
        if grid == 0 || size <= 0.0 {
            return Err(format!("dense targets need a non-empty grid and scene (grid {grid}, size {size})"));
        }
        let n = grid * grid;
        let mut owner: Vec<Option<usize>> = vec![None; n];
        let mut order: Vec<usize> = (0..objs.len()).collect();
        let area = |o: &Owned| (o.bbox[2] - o.bbox[0]) * (o.bbox[3] - o.bbox[1]);
        // largest first, so smaller objects overwrite (stable: equal areas keep their order)
        order.sort_by(|&i, &j| area(&objs[j]).total_cmp(&area(&objs[i])));
        let cell = size / grid as f64;
        for &i in &order {
            let b = objs[i].bbox;
            for gy in 0..grid {
                let cy = (gy as f64 + 0.5) * cell;
                if cy < b[1] || cy >= b[3] {
                    continue;
                }
                for gx in 0..grid {
                    let cx = (gx as f64 + 0.5) * cell;
                    if cx >= b[0] && cx < b[2] {
                        owner[gy * grid + gx] = Some(i);
                    }
                }
            }
        }
        for &i in &order {
            let b = objs[i].bbox;
            let at = |lo: f64, hi: f64| ((((lo + hi) / 2.0) / cell) as usize).min(grid - 1);
            owner[at(b[1], b[3]) * grid + at(b[0], b[2])] = Some(i);
        }
        let mut t = Self { grid, shape: vec![0; n], colour: vec![0; n], boxes: vec![[0.0; 4]; n] };
        for (p, o) in owner.iter().enumerate() {
            if let Some(i) = *o {
                let ob = &objs[i];
                t.shape[p] = 1 + ob.shape as u32;
                t.colour[p] = 1 + ob.colour as u32;
                t.boxes[p] = ob.bbox.map(|v| (v / size).clamp(0.0, 1.0) as f32);
            }
        }
        Ok(t)
    }

    /// Patches covered by an object.
    pub fn foreground(&self) -> usize {
        self.shape.iter().filter(|&&c| c != 0).count()
    }
}

/// [`DenseHead::score`]: what the head reads from the features.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DenseScore {
    pub patches: usize,
    pub foreground: usize,
    pub background: usize,
    /// Arg-max shape class right, over covered patches.
    pub shape_accuracy: f64,
    /// Arg-max colour class right, over covered patches.
    pub colour_accuracy: f64,
    /// Background patches predicted as background.
    pub background_recall: f64,
    /// Covered patches whose shape is predicted as background.
    pub foreground_missed: f64,
    /// Mean |predicted - true| normalized box coordinate, over covered patches.
    pub box_l1: f64,
}

/// Patches per side of the grid `m`'s main tower gives (the grid of [`DenseTargets`]).
pub fn patch_grid(m: &griffon_model::griffon::Griffon) -> usize {
    m.tower.run_size() / m.tower.cfg.patch_size
}

/// Patches per image of `feats` [B, N, C] when there is one target per image on that grid.
fn check_targets(what: &str, feats: &Tensor, targets: &[&DenseTargets]) -> Result<usize, String> {
    let (b, n, _) = feats.dims3().map_err(|e| format!("{what}: {e}"))?;
    if targets.len() != b {
        return Err(format!("{what}: {} targets for a batch of {b}", targets.len()));
    }
    if let Some(t) = targets.iter().find(|t| t.grid * t.grid != n) {
        return Err(format!("{what}: targets on a {g}x{g} grid, the tower gives {n} patches", g = t.grid));
    }
    Ok(n)
}

/// The linear head (weight [OUTPUTS, C], bias [OUTPUTS]).
pub struct DenseHead {
    pub weight: Var,
    pub bias: Var,
}

impl DenseHead {
    /// PyTorch `nn.Linear`'s initialization (uniform in +-1/sqrt(C), zero bias here), seeded.
    pub fn init(channels: usize, seed: u64, dtype: DType, dev: &Device) -> candle_core::Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xD3A5_E0FF);
        let bound = 1.0 / (channels as f32).sqrt();
        let w: Vec<f32> = (0..OUTPUTS * channels).map(|_| rng.random_range(-bound..bound)).collect();
        let weight = Var::from_tensor(&Tensor::from_vec(w, (OUTPUTS, channels), dev)?.to_dtype(dtype)?)?;
        let bias = Var::from_tensor(&Tensor::zeros(OUTPUTS, dtype, dev)?)?;
        Ok(Self { weight, bias })
    }

    /// The head saved in `dir` ([`HEAD_FILE`]), or None when the folder has none.
    pub fn load(dir: &Path, channels: usize, dtype: DType, dev: &Device) -> Result<Option<Self>, String> {
        let p = dir.join(HEAD_FILE);
        if !p.is_file() {
            return Ok(None);
        }
        let e = |x: candle_core::Error| format!("{}: {x}", p.display());
        let mut ts = candle_core::safetensors::load(&p, dev).map_err(e)?;
        let mut take = |name: &str, shape: &[usize]| -> Result<Var, String> {
            let t = ts.remove(name).ok_or_else(|| format!("{}: no tensor {name}", p.display()))?;
            if t.dims() != shape {
                return Err(format!("{}: {name} has shape {:?}, expected {shape:?}", p.display(), t.dims()));
            }
            Var::from_tensor(&t.to_dtype(dtype).map_err(e)?).map_err(e)
        };
        let weight = take(HEAD_WEIGHT, &[OUTPUTS, channels])?;
        let bias = take(HEAD_BIAS, &[OUTPUTS])?;
        Ok(Some(Self { weight, bias }))
    }

    /// Writes the head's weight and bias ([`HEAD_FILE`]) to `dir`.
    pub fn save(dir: &Path, weight: &Tensor, bias: &Tensor) -> Result<(), String> {
        let mut m = HashMap::new();
        m.insert(HEAD_WEIGHT.to_string(), weight.to_device(&Device::Cpu).map_err(|e| e.to_string())?);
        m.insert(HEAD_BIAS.to_string(), bias.to_device(&Device::Cpu).map_err(|e| e.to_string())?);
        candle_core::safetensors::save(&m, dir.join(HEAD_FILE)).map_err(|e| e.to_string())
    }

    /// Head outputs [B * N, OUTPUTS] (f32) for features [B, N, C].
    pub fn outputs(&self, feats: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n, c) = feats.dims3()?;
        feats
            .reshape((b * n, c))?
            .matmul(&self.weight.as_tensor().t()?)?
            .broadcast_add(self.bias.as_tensor())?
            .to_dtype(DType::F32)
    }

    /// How well the head reads `feats` [B, N, C] against `targets`: accuracies of the arg-max
    /// shape and colour on covered patches, background recall, mean L1 of covered boxes.
    pub fn score(&self, feats: &Tensor, targets: &[&DenseTargets]) -> Result<DenseScore, String> {
        let e = |x: candle_core::Error| x.to_string();
        let n = check_targets("dense score", feats, targets)?;
        let out: Vec<Vec<f32>> = self.outputs(feats).and_then(|o| o.to_vec2()).map_err(e)?;
        let argmax =
            |v: &[f32]| v.iter().enumerate().fold(0, |best, (i, x)| if *x > v[best] { i } else { best }) as u32;
        let mut s = DenseScore::default();
        let (mut shape_ok, mut colour_ok, mut bg_ok, mut missed, mut l1) = (0usize, 0usize, 0usize, 0usize, 0f64);
        for (i, t) in targets.iter().enumerate() {
            for p in 0..n {
                let o = &out[i * n + p];
                let shape = argmax(&o[..SHAPE_CLASSES]);
                s.patches += 1;
                if t.shape[p] == 0 {
                    s.background += 1;
                    bg_ok += (shape == 0) as usize;
                    continue;
                }
                s.foreground += 1;
                shape_ok += (shape == t.shape[p]) as usize;
                missed += (shape == 0) as usize;
                colour_ok += (argmax(&o[SHAPE_CLASSES..SHAPE_CLASSES + COLOUR_CLASSES]) == t.colour[p]) as usize;
                let b = &o[SHAPE_CLASSES + COLOUR_CLASSES..];
                l1 += (0..4).map(|k| (b[k] - t.boxes[p][k]).abs() as f64).sum::<f64>() / 4.0;
            }
        }
        let fg = s.foreground.max(1) as f64;
        s.shape_accuracy = shape_ok as f64 / fg;
        s.colour_accuracy = colour_ok as f64 / fg;
        s.box_l1 = l1 / fg;
        s.foreground_missed = missed as f64 / fg;
        s.background_recall = bg_ok as f64 / s.background.max(1) as f64;
        Ok(s)
    }

    /// Loss of `feats` [B, N, C] (graph kept) against one target per image: balanced CE(shape)
    /// + balanced CE(colour) + BOX_WEIGHT x mean L1 over the four coordinates of covered patches.
    pub fn loss(&self, feats: &Tensor, targets: &[&DenseTargets]) -> Result<Tensor, String> {
        let e = |x: candle_core::Error| x.to_string();
        let n = check_targets("dense loss", feats, targets)?;
        let b = targets.len();
        let dev = feats.device();
        let out = self.outputs(feats).map_err(e)?;
        // balanced cross-entropy: the mean over covered patches plus the mean over background
        // ones (background is ~90% of the patches of a scene; a plain mean taught the colour but
        // left the shape at chance on covered patches after 800 steps of the CPU probe). Written
        // as a weighted sum (1/|covered| on covered patches, 1/|background| on the others), not
        // as means of row selections: the backward of candle's index_select (index_add) runs
        // on one GPU block looping over every selected row, 44 ms of a 1022 px step's 122 ms of
        // kernels on the H100 (session 14's profile, docs/PERFORMANCE.md)
        let labels = |k: fn(&DenseTargets) -> &Vec<u32>| targets.iter().flat_map(|t| k(t).iter().copied()).collect();
        let shapes: Vec<u32> = labels(|t| &t.shape);
        if shapes.is_empty() {
            return Err("dense loss: no patches".to_string());
        }
        let fg = shapes.iter().filter(|&&s| s != 0).count();
        let bg = shapes.len() - fg;
        let weights: Vec<f32> =
            shapes.iter().map(|&s| if s != 0 { 1.0 / fg as f32 } else { 1.0 / bg as f32 }).collect();
        let weights = Tensor::from_vec(weights, (b * n, 1), dev).map_err(e)?;
        let ce = |from: usize, len: usize, labels: &[u32]| -> Result<Tensor, String> {
            let logits = out.narrow(1, from, len).map_err(e)?;
            let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1).map_err(e)?;
            let y = Tensor::new(labels, dev).and_then(|y| y.reshape((b * n, 1))).map_err(e)?;
            let nll = lsm.gather(&y, 1).and_then(|v| v.neg()).map_err(e)?;
            (nll * &weights).and_then(|v| v.sum_all()).map_err(e)
        };
        let shape = ce(0, SHAPE_CLASSES, &shapes)?;
        let colour = ce(SHAPE_CLASSES, COLOUR_CLASSES, &labels(|t| &t.colour))?;
        let mut loss = (shape + colour).map_err(e)?;
        if fg > 0 {
            // mean L1 over the four coordinates of covered patches: background rows weigh 0
            let want: Vec<f32> = targets
                .iter()
                .flat_map(|t| t.shape.iter().zip(&t.boxes).flat_map(|(&s, b)| if s != 0 { *b } else { [0.0; 4] }))
                .collect();
            let want = Tensor::from_vec(want, (b * n, 4), dev).map_err(e)?;
            let mask: Vec<f32> = shapes.iter().map(|&s| if s != 0 { 1.0 / (4 * fg) as f32 } else { 0.0 }).collect();
            let mask = Tensor::from_vec(mask, (b * n, 1), dev).map_err(e)?;
            let got = out.narrow(1, SHAPE_CLASSES + COLOUR_CLASSES, 4).map_err(e)?;
            let l1 = (got - want)
                .and_then(|d| d.abs())
                .and_then(|d| d.broadcast_mul(&mask))
                .and_then(|d| d.sum_all())
                .map_err(e)?;
            loss = (loss + (l1 * BOX_WEIGHT).map_err(e)?).map_err(e)?;
        }
        Ok(loss)
    }
}

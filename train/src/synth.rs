//! `griffon synth`: a procedural high-resolution perception benchmark. Scenes (default 1022 px)
//! hold 1-20 objects of six shapes and eight colours at three size classes — many of them small
//! (16 px and less at 1022 px) — on textured, cluttered backgrounds. Every scene is written with
//! annotations for detection (COCO json and the released DET jsonl), referring expressions with
//! attributes and spatial relations (VG jsonl, Shikra-style REC jsonl), region descriptions (REG),
//! phrase grounding (Flickr30K Entities Sentences/Annotations) and exemplar counting (VISJ jsonl and
//! an image/exemplar/count jsonl), split into train / val / test. Deterministic from the seed: scene
//! k depends only on (seed, k).

use crate::data::{
    record_samples, write_det_jsonl, write_reg_jsonl, write_vg_jsonl, BuildOptions, DetObject, DetRecord, GroundRecord,
    RecordRef, Sample, TaskKind,
};
use griffon_core::request::{reg_region_prompt, Exemplar};
use griffon_core::PixelBox;
use image::{Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const SHAPES: [&str; 6] = ["circle", "square", "triangle", "diamond", "ring", "cross"];
pub const COLOURS: [(&str, [u8; 3]); 8] = [
    ("red", [220, 40, 40]),
    ("green", [40, 170, 60]),
    ("blue", [40, 70, 220]),
    ("yellow", [235, 210, 40]),
    ("purple", [150, 60, 190]),
    ("orange", [245, 140, 30]),
    ("white", [250, 250, 250]),
    ("black", [15, 15, 15]),
];

#[derive(Debug, Clone)]
pub struct SynthOptions {
    pub out: PathBuf,
    pub n: usize,
    pub seed: u64,
    pub size: u32,
    pub max_objects: usize,
    /// Multiplies every object's side (1.0: the benchmark's sizes; see [`scene`]).
    pub object_scale: f64,
    /// Write only this split (`train`, `val` or `test`); scene indices and contents are those of
    /// the full benchmark.
    pub only_split: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub shape: usize,
    pub colour: usize,
    /// Pixel xyxy.
    pub bbox: [u32; 4],
}

/// The object of a scene rendered at `size` px whose box overlaps the normalised box `b` most
/// (IoU; the first of equals): which object an answer's box names. `None` for no objects.
pub fn best_match(objs: &[Object], size: u32, b: [f64; 4]) -> Option<usize> {
    let norm = |o: &Object| o.bbox.map(|v| v as f64 / size as f64);
    (0..objs.len()).max_by(|&x, &y| {
        griffon_core::boxes::iou_xyxy(norm(&objs[x]), b).total_cmp(&griffon_core::boxes::iou_xyxy(norm(&objs[y]), b))
    })
}

impl Object {
    pub fn name(&self) -> String {
        format!("{} {}", COLOURS[self.colour].0, SHAPES[self.shape])
    }
    fn side(&self) -> u32 {
        self.bbox[2] - self.bbox[0]
    }
    fn size_word(&self, image: u32) -> &'static str {
        let s = self.side() as f64 * 1022.0 / image as f64;
        if s <= 16.0 {
            "tiny"
        } else if s <= 64.0 {
            "small"
        } else {
            "large"
        }
    }
    fn fbox(&self) -> [f64; 4] {
        self.bbox.map(|v| v as f64)
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SplitSummary {
    pub images: usize,
    pub objects: usize,
    /// Objects of 16 px or less (at 1022 px).
    pub tiny_objects: usize,
}

fn inside(shape: usize, u: f64, v: f64) -> bool {
    match shape {
        0 => u * u + v * v <= 1.0,
        1 => true,
        2 => u.abs() <= (v + 1.0) / 2.0,
        3 => u.abs() + v.abs() <= 1.0,
        4 => {
            let r = u * u + v * v;
            (0.3..=1.0).contains(&r)
        }
        _ => u.abs() <= 0.34 || v.abs() <= 0.34,
    }
}

/// Textured, cluttered background: smooth value noise, pixel noise, and muted strokes/blobs.
fn background(rng: &mut StdRng, size: u32) -> RgbImage {
    let cells = (size / 96).max(2) as usize + 2;
    let tint: [f64; 3] = [rng.random_range(0.85..1.15), rng.random_range(0.85..1.15), rng.random_range(0.85..1.15)];
    let grid: Vec<f64> = (0..cells * cells).map(|_| rng.random_range(80.0..180.0)).collect();
    let mut img = RgbImage::new(size, size);
    let scale = (cells - 1) as f64 / size as f64;
    for y in 0..size {
        let fy = y as f64 * scale;
        let (y0, ty) = (fy.floor() as usize, fy.fract());
        for x in 0..size {
            let fx = x as f64 * scale;
            let (x0, tx) = (fx.floor() as usize, fx.fract());
            let g = |i: usize, j: usize| grid[j.min(cells - 1) * cells + i.min(cells - 1)];
            let v = g(x0, y0) * (1.0 - tx) * (1.0 - ty)
                + g(x0 + 1, y0) * tx * (1.0 - ty)
                + g(x0, y0 + 1) * (1.0 - tx) * ty
                + g(x0 + 1, y0 + 1) * tx * ty;
            let n: f64 = rng.random_range(-12.0..12.0);
            let px = [0, 1, 2].map(|c| (v * tint[c] + n).clamp(0.0, 255.0) as u8);
            img.put_pixel(x, y, Rgb(px));
        }
    }
    // clutter: muted strokes and blobs (greyish, never a palette colour)
    for _ in 0..rng.random_range(20..60) {
        // between 50 and 200: never as dark as "black" (15) or as bright as "white" (250)
        let base: f64 = rng.random_range(70.0..180.0);
        let c = [0, 1, 2].map(|_| (base + rng.random_range(-20.0..20.0)).clamp(50.0, 200.0) as u8);
        if rng.random_bool(0.5) {
            let (mut x, mut y) = (rng.random_range(0..size) as f64, rng.random_range(0..size) as f64);
            let a: f64 = rng.random_range(0.0..std::f64::consts::TAU);
            let len = rng.random_range(10..(size / 3).max(11));
            for _ in 0..len {
                if x >= 0.0 && y >= 0.0 && (x as u32) < size && (y as u32) < size {
                    img.put_pixel(x as u32, y as u32, Rgb(c));
                }
                x += a.cos();
                y += a.sin();
            }
        } else {
            let r = rng.random_range(2..(size / 40).max(3)) as i64;
            let (cx, cy) = (rng.random_range(0..size) as i64, rng.random_range(0..size) as i64);
            for dy in -r..=r {
                for dx in -r..=r {
                    let (x, y) = (cx + dx, cy + dy);
                    if dx * dx + dy * dy <= r * r && x >= 0 && y >= 0 && (x as u32) < size && (y as u32) < size {
                        img.put_pixel(x as u32, y as u32, Rgb(c));
                    }
                }
            }
        }
    }
    img
}

/// One scene: image and objects, from (seed, index) only.
pub fn scene(seed: u64, index: usize, size: u32, max_objects: usize) -> (RgbImage, Vec<Object>) {
    scene_scaled(seed, index, size, max_objects, 1.0)
}

/// [`scene`] with every object side multiplied by `object_scale` (capped below the image side):
/// an easier distribution of larger objects (the CPU learnability probe of docs/SYNTH.md). With
/// 1.0 it is [`scene`] exactly.
pub fn scene_scaled(
    seed: u64,
    index: usize,
    size: u32,
    max_objects: usize,
    object_scale: f64,
) -> (RgbImage, Vec<Object>) {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(index as u64));
    let mut img = background(&mut rng, size);
    let k = rng.random_range(1..=max_objects.max(1));
    let px = |s: f64| ((s * object_scale * size as f64 / 1022.0).round() as u32).max(3);
    // Half of the scenes with room for it hold a crowd: 3 to 12 objects of one colour and shape
    // (sizes still vary), so exemplar counting has more than ones and twos to count.
    let crowd = if k >= 3 && rng.random_bool(0.5) {
        let n = rng.random_range(3..=k.min(12));
        Some((rng.random_range(0..SHAPES.len()), rng.random_range(0..COLOURS.len()), n))
    } else {
        None
    };
    let mut objs: Vec<Object> = Vec::new();
    for i in 0..k {
        let side = match rng.random_range(0..10) {
            0..=3 => px(rng.random_range(8.0..=16.0)),
            4..=7 => px(rng.random_range(17.0..=64.0)),
            _ => px(rng.random_range(65.0..=180.0)),
        }
        .min(size - 1);
        for _try in 0..50 {
            let x1 = rng.random_range(0..=size - side);
            let y1 = rng.random_range(0..=size - side);
            let b = [x1, y1, x1 + side, y1 + side];
            let clear = objs.iter().all(|o| {
                b[2] + 2 <= o.bbox[0] || o.bbox[2] + 2 <= b[0] || b[3] + 2 <= o.bbox[1] || o.bbox[3] + 2 <= b[1]
            });
            if clear {
                let (shape, colour) = match crowd {
                    Some((shape, colour, n)) if i < n => (shape, colour),
                    _ => (rng.random_range(0..SHAPES.len()), rng.random_range(0..COLOURS.len())),
                };
                objs.push(Object { shape, colour, bbox: b });
                break;
            }
        }
    }
    for o in &objs {
        let c = Rgb(COLOURS[o.colour].1);
        let s = o.side() as f64;
        for y in o.bbox[1]..o.bbox[3] {
            for x in o.bbox[0]..o.bbox[2] {
                let u = ((x - o.bbox[0]) as f64 + 0.5) / s * 2.0 - 1.0;
                let v = ((y - o.bbox[1]) as f64 + 0.5) / s * 2.0 - 1.0;
                if inside(o.shape, u, v) {
                    img.put_pixel(x, y, c);
                }
            }
        }
    }
    (img, objs)
}

/// A referring expression that picks out object `i` alone: by colour + shape, then size, then a
/// spatial extreme (leftmost / rightmost / topmost / bottommost) among its look-alikes; None when
/// none of these is unique (an object in the middle of a crowd).
pub fn refer(objs: &[Object], i: usize, image: u32) -> Option<String> {
    let o = &objs[i];
    let others: Vec<&Object> = objs
        .iter()
        .enumerate()
        .filter(|(j, p)| *j != i && p.shape == o.shape && p.colour == o.colour)
        .map(|(_, p)| p)
        .collect();
    if others.is_empty() {
        return Some(format!("the {}", o.name()));
    }
    if others.iter().all(|p| p.size_word(image) != o.size_word(image)) {
        return Some(format!("the {} {}", o.size_word(image), o.name()));
    }
    // centres (doubled, to stay in integers)
    let cx = |p: &Object| p.bbox[0] + p.bbox[2];
    let cy = |p: &Object| p.bbox[1] + p.bbox[3];
    // (word, does object p lie beyond o in that direction)
    let beyond = |word: &str, p: &Object| match word {
        "leftmost" => cx(p) > cx(o),
        "rightmost" => cx(p) < cx(o),
        "topmost" => cy(p) > cy(o),
        _ => cy(p) < cy(o),
    };
    ["leftmost", "rightmost", "topmost", "bottommost"]
        .into_iter()
        .find(|w| others.iter().all(|p| beyond(w, p)))
        .map(|w| format!("the {w} {}", o.name()))
}

fn split_of(k: usize, n: usize) -> &'static str {
    let (n_val, n_test) = if n >= 10 {
        (n / 10, n / 10)
    } else if n >= 3 {
        (1, 1)
    } else {
        (0, 0)
    };
    if k < n - n_val - n_test {
        "train"
    } else if k < n - n_test {
        "val"
    } else {
        "test"
    }
}

fn io(p: &Path) -> impl FnOnce(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", p.display())
}

/// The training / evaluation records of one scene.
pub struct SceneAnnotations {
    /// Detection: one object entry per shape (the COCO categories).
    pub det: DetRecord,
    /// Exemplar counting: one object entry per colour + shape.
    pub visj: DetRecord,
    /// Exemplar counting of the most frequent colour + shape alone (ties: the first name).
    pub visj_most: DetRecord,
    /// An instance of the most frequent colour + shape: the counting benchmark's exemplar
    /// (None for a scene without objects).
    pub count_exemplar: Option<usize>,
    /// Up to three referred objects (indices into the scene's objects, among those a unique
    /// expression names), in a seeded order.
    pub referred: Vec<usize>,
    /// REC / grounding record of each referred object (its unique referring expression).
    pub vg: Vec<GroundRecord>,
    /// Region description of each referred object ("a small red circle").
    pub reg: Vec<GroundRecord>,
    /// Boxes per colour + shape name.
    pub by_name: BTreeMap<String, Vec<[f64; 4]>>,
}

/// Annotations of scene `k` (objects from [`scene`]); `file` is the image path written into the
/// records. Deterministic from (seed, k).
pub fn scene_annotations(seed: u64, k: usize, objs: &[Object], size: u32, file: &str) -> SceneAnnotations {
    let mut rng = StdRng::seed_from_u64(seed ^ (k as u64).wrapping_mul(31) ^ 0xA5A5);
    let mut by_shape: BTreeMap<&str, Vec<[f64; 4]>> = BTreeMap::new();
    let mut by_name: BTreeMap<String, Vec<[f64; 4]>> = BTreeMap::new();
    for p in objs {
        by_shape.entry(SHAPES[p.shape]).or_default().push(p.fbox());
        by_name.entry(p.name()).or_default().push(p.fbox());
    }
    let det = DetRecord::new(file, size, size, by_shape.iter().map(|(n, b)| DetObject::new(*n, b.clone())).collect());
    let visj =
        DetRecord::new(file, size, size, by_name.iter().map(|(n, b)| DetObject::new(n.clone(), b.clone())).collect());
    // the most frequent class; ties go to the first name (objects exist: scenes hold at least one)
    let mut most: Option<(&String, &Vec<[f64; 4]>)> = None;
    for (n, b) in &by_name {
        if most.is_none_or(|(_, mb)| b.len() > mb.len()) {
            most = Some((n, b));
        }
    }
    let (most, most_boxes) = most.map(|(n, b)| (n.clone(), b.clone())).unwrap_or_default();
    let visj_most = DetRecord::new(file, size, size, vec![DetObject::new(most.clone(), most_boxes)]);
    let mut order: Vec<usize> = (0..objs.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    // up to three objects that a unique expression can name
    let named: Vec<(usize, String)> =
        order.iter().filter_map(|&i| refer(objs, i, size).map(|e| (i, e))).take(3).collect();
    let order: Vec<usize> = named.iter().map(|(i, _)| *i).collect();
    let mut vg = Vec::new();
    let mut reg = Vec::new();
    for (i, expr) in named {
        let p = &objs[i];
        vg.push(GroundRecord::new(file, size, size, expr, vec![p.fbox()]));
        reg.push(GroundRecord::new(file, size, size, format!("a {} {}", p.size_word(size), p.name()), vec![p.fbox()]));
    }
    // the counting exemplar: a random instance of the most frequent class (rng drawn last, so the
    // referred objects above do not depend on it)
    let members: Vec<usize> = (0..objs.len()).filter(|&i| objs[i].name() == most).collect();
    let count_exemplar = (!members.is_empty()).then(|| members[rng.random_range(0..members.len())]);
    SceneAnnotations { det, visj, visj_most, count_exemplar, referred: order, vg, reg, by_name }
}

/// Training samples generated on the fly: sample `k` is scene `k` of `seed` (rendered in memory,
/// never written) with one task drawn by the weights in `mix`, built by the same builders as the
/// files `griffon synth` writes. Use a seed other than the evaluation benchmark's.
#[derive(Debug, Clone)]
pub struct SynthStream {
    pub seed: u64,
    pub size: u32,
    pub max_objects: usize,
    /// See [`scene_scaled`]; 1.0 unless set with [`SynthStream::with_object_scale`].
    pub object_scale: f64,
    /// Share of exemplar-counting samples that count a random class of the scene (the others
    /// count its most frequent class); 0.5, as the reference's VISJ builder, unless set with
    /// [`SynthStream::with_visj_random`].
    pub visj_random: f64,
    /// Share of the samples that name an object given as a visual prompt
    /// ([`SynthStream::with_region_naming`]); 0 unless set.
    pub region_naming: f64,
    /// Share of REC samples whose referred object is drawn among those other than the scene's
    /// largest ([`SynthStream::with_rec_not_largest`]); 0 unless set.
    pub rec_not_largest: f64,
    /// Most REC turns in one REC sample ([`SynthStream::with_rec_turns`]); 1 unless set.
    pub rec_turns: usize,
    /// Share of detection samples asking for fewer than all the shapes
    /// ([`SynthStream::with_det_subsets`]); 0 unless set.
    pub det_subsets: f64,
    /// (task, weight): DET, VG (REC), REG and VISJ (exemplar counting).
    pub mix: Vec<(TaskKind, f64)>,
    pub opts: BuildOptions,
    /// The detection vocabulary (the shape names), built once.
    vocab: Vec<String>,
}

impl SynthStream {
    pub fn new(
        seed: u64,
        size: u32,
        max_objects: usize,
        mix: Vec<(TaskKind, f64)>,
        opts: BuildOptions,
    ) -> Result<Self, String> {
        check_scene_shape(size, max_objects, usize::MAX).map_err(|e| format!("synthetic scenes: {e}"))?;
        if mix.is_empty() || mix.iter().any(|(_, w)| !w.is_finite() || *w < 0.0) || mix.iter().all(|(_, w)| *w == 0.0) {
            return Err(format!("synthetic task weights must be finite, non-negative and not all zero: {mix:?}"));
        }
        if let Some((k, _)) = mix.iter().find(|(k, _)| *k == TaskKind::Lazy) {
            return Err(format!("synthetic scenes have no {} (caption) task", k.tag()));
        }
        Ok(Self {
            seed,
            size,
            max_objects,
            object_scale: 1.0,
            visj_random: 0.5,
            region_naming: 0.0,
            rec_not_largest: 0.0,
            rec_turns: 1,
            det_subsets: 0.0,
            mix,
            opts,
            vocab: SHAPES.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// Objects `scale` times the benchmark's size (see [`scene_scaled`]).
    pub fn with_object_scale(mut self, scale: f64) -> Result<Self, String> {
        check_object_scale(scale)?;
        self.object_scale = scale;
        Ok(self)
    }

    /// A share `p` (0..=1) of the exemplar-counting samples counts a random class of the scene
    /// instead of the most frequent one: 1 makes every such sample depend on the exemplar.
    pub fn with_visj_random(mut self, p: f64) -> Result<Self, String> {
        check_visj_random(p)?;
        self.visj_random = p;
        Ok(self)
    }

    /// A share `p` (0..1) of the samples names one object of the scene given as a visual prompt:
    /// the REG prompt with `<region>` in place of the box (the object's crop goes through the
    /// region encoder), answered `the <colour> <shape>`. Not in the reference's mix (its region
    /// encoder is a pretrained CLIP): a from-scratch region path next to a trained LLM otherwise
    /// learns nothing from exemplar counting (docs/SYNTH.md, session 12). Drawn from its own
    /// random stream, so the other samples stay those of the stream without it.
    pub fn with_region_naming(mut self, p: f64) -> Result<Self, String> {
        check_region_naming(p)?;
        self.region_naming = p;
        Ok(self)
    }

    /// A share `p` (0..=1) of the REC samples refers to an object other than the scene's largest
    /// (by box area, the first of equal ones: an object as large as it counts as another; when
    /// one of the referable objects is another). With the referred object
    /// drawn uniformly, boxing the largest object whatever the expression answers 41% of the
    /// REC questions in scenes of two or three objects right (the 224 px model's training
    /// distribution; 14% in the benchmark's scenes of up to 20), and the models learn that
    /// shortcut (docs/SYNTH.md, session 14: 71-79% of their REC boxes that hit an object in such
    /// scenes hit the largest); this share makes it wrong. Drawn from its own random stream, so the
    /// other samples stay those of the stream without it.
    pub fn with_rec_not_largest(mut self, p: f64) -> Result<Self, String> {
        check_rec_not_largest(p)?;
        self.rec_not_largest = p;
        Ok(self)
    }

    /// A REC sample asks for up to `n` (>= 1) of the scene's referable objects (at most 3), one
    /// turn each: the referred object of the one-turn sample first, then the others in the
    /// scene's drawn order. In one turn a model can answer every expression of a scene with the
    /// same box (its largest object) and lose only that turn; with several turns on one image,
    /// each answer is trained against the others in the same sequence. Phrase grounding asks in
    /// the same form (`griffon_core::request`, one turn per phrase). The samples' random draws
    /// are unchanged, so at 1 the stream is the stream without it.
    pub fn with_rec_turns(mut self, n: usize) -> Result<Self, String> {
        check_rec_turns(n)?;
        self.rec_turns = n;
        Ok(self)
    }

    /// A share `p` (0..=1) of the detection samples asks for a random number of categories,
    /// 1 to one fewer than the shapes (or than `max_categories` when that is smaller), instead of
    /// `max_categories`: the builder's own rule then
    /// lists every present class padded with absent ones when they fit, else one random chunk of
    /// the present classes (answered with that chunk's boxes alone), as the reference's DET
    /// builder does for images with more classes than `max_categories`. With six shapes and
    /// `max_categories` >= 6 every detection prompt lists all six, and a model trained on that
    /// alone answers a request for two of them with junk (docs/SYNTH.md, session 29). Drawn from
    /// its own random stream, so the other samples stay those of the stream without it.
    pub fn with_det_subsets(mut self, p: f64) -> Result<Self, String> {
        check_det_subsets(p)?;
        self.det_subsets = p;
        Ok(self)
    }

    /// The build options of scene `k`'s detection sample: under
    /// [`SynthStream::with_det_subsets`], for its share of the samples, a random number of
    /// categories below the vocabulary's size and `max_categories`.
    fn det_options(&self, k: usize) -> BuildOptions {
        let mut o = self.opts.clone();
        let most = self.vocab.len().min(o.max_categories);
        if self.det_subsets <= 0.0 || most < 2 {
            return o;
        }
        let mut r =
            StdRng::seed_from_u64(self.seed.wrapping_mul(0x4F1B_BCDC_BFA5_3E0B) ^ (k as u64).wrapping_add(0xDE75));
        if r.random_bool(self.det_subsets) {
            o.max_categories = r.random_range(1..most);
        }
        o
    }

    /// Under [`SynthStream::with_rec_not_largest`], the index (into `ann.vg`) of a referred
    /// object other than the largest of scene `k`, for its share of the samples.
    fn away_from_largest(&self, k: usize, objs: &[Object], ann: &SceneAnnotations) -> Option<usize> {
        if self.rec_not_largest <= 0.0 {
            return None;
        }
        let mut r =
            StdRng::seed_from_u64(self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (k as u64).wrapping_add(0x1A7E));
        if !r.random_bool(self.rec_not_largest) {
            return None;
        }
        let area = |o: &Object| (o.bbox[2] - o.bbox[0]) as u64 * (o.bbox[3] - o.bbox[1]) as u64;
        // the largest object (the first of equal ones)
        let largest = (0..objs.len()).rev().max_by_key(|&i| area(&objs[i]))?;
        let others: Vec<usize> = (0..ann.referred.len()).filter(|&t| ann.referred[t] != largest).collect();
        (!others.is_empty()).then(|| others[r.random_range(0..others.len())])
    }

    /// Sample `k`, its image and the scene's objects.
    pub fn sample(&self, k: usize) -> Result<(Sample, RgbImage, Vec<Object>), String> {
        let (img, objs) = scene_scaled(self.seed, k, self.size, self.max_objects, self.object_scale);
        let file = format!("{k:08}.png");
        let images = PathBuf::from(format!("synth:{}", self.seed));
        let source = format!("synth:{}/{k}", self.seed);
        if self.region_naming > 0.0 {
            let mut r =
                StdRng::seed_from_u64(self.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ (k as u64).wrapping_add(0x9A3F));
            if r.random_bool(self.region_naming) {
                let p = &objs[r.random_range(0..objs.len())];
                let b = p.fbox();
                let s = Sample {
                    image: images.join(&file),
                    regions: vec![Exemplar::BoxOnImage(PixelBox::new(b[0], b[1], b[2], b[3]))],
                    turns: vec![(reg_region_prompt(), format!("the {}", p.name()))],
                    task: TaskKind::Reg,
                    source,
                    size: Some(img.dimensions()),
                };
                return Ok((s, img, objs));
            }
        }
        let ann = scene_annotations(self.seed, k, &objs, self.size, &file);
        let mut rng =
            StdRng::seed_from_u64(self.seed.wrapping_mul(0xD134_2543_DE82_EF95) ^ (k as u64).wrapping_add(0x5157));
        let total: f64 = self.mix.iter().map(|(_, w)| w).sum();
        let mut x = rng.random_range(0.0..total);
        let mut kind = self.mix.last().expect("non-empty mix").0;
        for (t, w) in &self.mix {
            if x < *w {
                kind = *t;
                break;
            }
            x -= w;
        }
        let vocab = &self.vocab;
        let samples = match kind {
            // by default half the counting samples count the most frequent class (the crowd when
            // there is one), half a random class, as the reference's VISJ builder picks (at 0.5
            // the draw is the one made before the share was configurable; at 0 or 1 rand makes
            // no draw, which shifts the sample's later draws)
            TaskKind::Visj => {
                let rec = if rng.random_bool(1.0 - self.visj_random) { &ann.visj_most } else { &ann.visj };
                record_samples(kind, RecordRef::Det(rec), &images, vocab, &self.opts, &source, &mut rng)?
            }
            TaskKind::Vg | TaskKind::Reg if !ann.vg.is_empty() => {
                let recs = if kind == TaskKind::Vg { &ann.vg } else { &ann.reg };
                let mut pick = rng.random_range(0..recs.len());
                if kind == TaskKind::Vg {
                    pick = self.away_from_largest(k, &objs, &ann).unwrap_or(pick);
                }
                let r = &recs[pick];
                let mut first =
                    record_samples(kind, RecordRef::Ground(r), &images, vocab, &self.opts, &source, &mut rng)?;
                if kind == TaskKind::Vg && self.rec_turns > 1 {
                    // the scene's other referable objects as later turns (VG builds one sample
                    // per record and draws nothing from rng)
                    let s = first.first_mut().ok_or_else(|| format!("{source}: no REC sample built"))?;
                    for r in (0..recs.len()).filter(|&i| i != pick).take(self.rec_turns - 1).map(|i| &recs[i]) {
                        let more =
                            record_samples(kind, RecordRef::Ground(r), &images, vocab, &self.opts, &source, &mut rng)?;
                        s.turns.extend(more.into_iter().flat_map(|m| m.turns));
                    }
                }
                first
            }
            // detection, or a scene none of whose objects has a unique expression: a detection
            // sample instead
            TaskKind::Det | TaskKind::Vg | TaskKind::Reg => {
                let opts = self.det_options(k);
                record_samples(TaskKind::Det, RecordRef::Det(&ann.det), &images, vocab, &opts, &source, &mut rng)?
            }
            TaskKind::Lazy => unreachable!("refused in new"),
        };
        if samples.is_empty() {
            return Err(format!("{source}: no sample built"));
        }
        let n = samples.len();
        let s = samples.into_iter().nth(rng.random_range(0..n)).expect("index below the length");
        Ok((s, img, objs))
    }
}

/// [`SynthStream::with_visj_random`]'s range (the config checks it by the same function).
pub fn check_visj_random(p: f64) -> Result<(), String> {
    if !(0.0..=1.0).contains(&p) {
        return Err(format!("visj_random {p} is outside 0..=1"));
    }
    Ok(())
}

/// [`SynthStream::with_rec_turns`]'s range.
pub fn check_rec_turns(n: usize) -> Result<(), String> {
    if n == 0 {
        return Err("rec_turns must be at least 1".into());
    }
    Ok(())
}

/// [`SynthStream::with_det_subsets`]'s range.
pub fn check_det_subsets(p: f64) -> Result<(), String> {
    if !(0.0..=1.0).contains(&p) {
        return Err(format!("det_subsets {p} is outside 0..=1"));
    }
    Ok(())
}

/// [`SynthStream::with_rec_not_largest`]'s range.
pub fn check_rec_not_largest(p: f64) -> Result<(), String> {
    if !(0.0..=1.0).contains(&p) {
        return Err(format!("rec_not_largest {p} is outside 0..=1"));
    }
    Ok(())
}

/// [`SynthStream::with_region_naming`]'s range: below 1, so the mix's tasks still occur.
pub fn check_region_naming(p: f64) -> Result<(), String> {
    if !(0.0..1.0).contains(&p) {
        return Err(format!("region_naming {p} is outside 0..1"));
    }
    Ok(())
}

fn check_object_scale(scale: f64) -> Result<(), String> {
    if !(scale.is_finite() && (0.25..=20.0).contains(&scale)) {
        return Err(format!("object scale {scale} is outside 0.25..=20"));
    }
    Ok(())
}

/// Largest scene side: the engine's largest input (a scene is held in memory as RGB).
pub const MAX_SCENE_SIZE: u32 = griffon_model::griffon::MAX_INPUT_SIZE as u32;
/// Most objects per written scene: COCO annotation ids are `scene * 100 + object + 1` (the
/// training stream writes no ids and has no such bound).
pub const MAX_OBJECTS: usize = 100;

fn check_scene_shape(size: u32, max_objects: usize, most: usize) -> Result<(), String> {
    if !(32..=MAX_SCENE_SIZE).contains(&size) {
        return Err(format!("size {size} is outside 32..={MAX_SCENE_SIZE} px"));
    }
    if !(1..=most).contains(&max_objects) {
        return Err(format!("max objects {max_objects} is outside 1..={most}"));
    }
    Ok(())
}

/// The file in a written benchmark's folder that records the options it was written with.
pub const MANIFEST: &str = "synth.json";

fn manifest(o: &SynthOptions) -> serde_json::Value {
    serde_json::json!({"generator": "griffon synth", "n": o.n, "seed": o.seed, "size": o.size,
        "max_objects": o.max_objects, "object_scale": o.object_scale})
}

/// A benchmark is written into an empty (or new) folder, or into one holding a benchmark written
/// with the same options (another split of it, or the same split again: identical files). Writing
/// other options over a benchmark left the earlier scenes' images beside the new annotations.
fn check_out_folder(o: &SynthOptions) -> Result<(), String> {
    let want = manifest(o);
    let f = o.out.join(MANIFEST);
    match std::fs::read_to_string(&f) {
        Ok(text) => {
            let have: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("{}: not a benchmark manifest: {e}", f.display()))?;
            if have != want {
                return Err(format!(
                    "{} holds a benchmark written with other options ({}; now {}): write into a new folder",
                    o.out.display(),
                    have,
                    want
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let non_empty = match std::fs::read_dir(&o.out) {
                Ok(mut entries) => entries.next().is_some(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => return Err(io(&o.out)(e)),
            };
            if non_empty && !written_with(o)? {
                return Err(format!(
                    "{} is not empty and holds no {MANIFEST}, and its images are not those of these options: \
                     write the benchmark into a new or empty folder",
                    o.out.display()
                ));
            }
            std::fs::create_dir_all(&o.out).map_err(io(&o.out))?;
            std::fs::write(&f, format!("{want}\n")).map_err(io(&f))?;
        }
        Err(e) => return Err(io(&f)(e)),
    }
    Ok(())
}

/// Whether a folder without a manifest (written before [`MANIFEST`] existed) holds a benchmark
/// of these options: each split's images are exactly that split's scene indices, and the first
/// one is the scene these options render.
fn written_with(o: &SynthOptions) -> Result<bool, String> {
    let mut rendered = false;
    for split in ["train", "val", "test"] {
        let dir = o.out.join("images").join(split);
        if !dir.is_dir() {
            continue;
        }
        let mut have = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let name = e.map_err(io(&dir))?.file_name().to_string_lossy().to_string();
            match name.strip_suffix(".png").and_then(|k| k.parse::<usize>().ok()) {
                Some(k) => have.push(k),
                None => return Ok(false),
            }
        }
        have.sort_unstable();
        let want: Vec<usize> = (0..o.n).filter(|&k| split_of(k, o.n) == split).collect();
        if have != want {
            return Ok(false);
        }
        if let (false, Some(&k)) = (rendered, have.first()) {
            let f = dir.join(format!("{k:06}.png"));
            let written = image::open(&f).map_err(|e| format!("{}: {e}", f.display()))?.to_rgb8();
            let (img, _) = scene_scaled(o.seed, k, o.size, o.max_objects, o.object_scale);
            if img.as_raw() != written.as_raw() {
                return Ok(false);
            }
            rendered = true;
        }
    }
    Ok(rendered)
}

/// Writes the benchmark; returns a summary per split.
pub fn generate(o: &SynthOptions) -> Result<BTreeMap<String, SplitSummary>, String> {
    check_object_scale(o.object_scale).map_err(|e| format!("--object-scale: {e}"))?;
    check_scene_shape(o.size, o.max_objects, MAX_OBJECTS).map_err(|e| format!("--size / --max-objects: {e}"))?;
    if o.n == 0 {
        return Err("--n must be at least 1".into());
    }
    if let Some(s) = o.only_split.as_deref() {
        if !["train", "val", "test"].contains(&s) {
            return Err(format!("--split must be train, val or test, got {s:?}"));
        }
    }
    check_out_folder(o)?;
    let mut per: BTreeMap<&str, Vec<(usize, Vec<Object>)>> = BTreeMap::new();
    for k in 0..o.n {
        let split = split_of(k, o.n);
        if o.only_split.as_deref().is_some_and(|s| s != split) {
            continue;
        }
        let dir = o.out.join("images").join(split);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let (img, objs) = scene_scaled(o.seed, k, o.size, o.max_objects, o.object_scale);
        let f = dir.join(format!("{k:06}.png"));
        img.save(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        per.entry(split).or_default().push((k, objs));
    }
    let mut summary = BTreeMap::new();
    for (split, scenes) in per {
        let d = o.out.join(split);
        std::fs::create_dir_all(d.join("Sentences")).map_err(io(&d))?;
        std::fs::create_dir_all(d.join("Annotations")).map_err(io(&d))?;
        let (mut det, mut vg, mut reg, mut visj) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut rec_eval, mut reg_eval, mut count_eval, mut count_any, mut ids) =
            (String::new(), String::new(), String::new(), String::new(), String::new());
        let mut coco_images = Vec::new();
        let mut coco_anns = Vec::new();
        let mut s = SplitSummary::default();
        let size = o.size;
        for (k, objs) in &scenes {
            let file = format!("{k:06}.png");
            s.images += 1;
            s.objects += objs.len();
            s.tiny_objects += objs.iter().filter(|p| p.size_word(size) == "tiny").count();
            coco_images.push(serde_json::json!({"id": k, "file_name": file, "width": size, "height": size}));
            for (j, p) in objs.iter().enumerate() {
                let w = p.side() as f64;
                coco_anns.push(serde_json::json!({"id": k * 100 + j + 1, "image_id": k, "category_id": p.shape + 1,
                    "bbox": [p.bbox[0], p.bbox[1], w, w], "area": w * w, "iscrowd": 0}));
            }
            let ann = scene_annotations(o.seed, *k, objs, size, &file);
            let by_name = &ann.by_name;
            det.push(ann.det);
            visj.push(ann.visj);
            for (j, &i) in ann.referred.iter().enumerate() {
                let p = &objs[i];
                let (g, r) = (&ann.vg[j], &ann.reg[j]);
                rec_eval += &format!(
                    "{}\n",
                    serde_json::json!({"id": format!("{k}_{i}"), "img_path": file, "expression": g.expression, "bbox": p.fbox()})
                );
                reg_eval += &format!(
                    "{}\n",
                    serde_json::json!({"id": format!("{k}_{i}"), "img_path": file, "bbox": p.fbox(),
                    "expressions": [r.expression, format!("the {}", p.name())]})
                );
            }
            vg.extend(ann.vg);
            reg.extend(ann.reg);
            if let Some(i) = ann.count_exemplar {
                let p = &objs[i];
                let n = objs.iter().filter(|q| q.shape == p.shape && q.colour == p.colour).count();
                count_eval += &format!("{}\n", serde_json::json!({"image": file, "exemplar": p.fbox(), "count": n}));
            }
            // exemplar counting of every class present, its first instance the exemplar, with the
            // class's boxes: scores whether the answer follows the exemplar (count.jsonl's class is
            // the most frequent one, which a model ignoring the exemplar could count as well)
            for (i, p) in objs.iter().enumerate() {
                if objs[..i].iter().any(|q| q.shape == p.shape && q.colour == p.colour) {
                    continue;
                }
                let boxes: Vec<[f64; 4]> =
                    objs.iter().filter(|q| q.shape == p.shape && q.colour == p.colour).map(|q| q.fbox()).collect();
                count_any += &format!(
                    "{}\n",
                    serde_json::json!({"image": file, "exemplar": p.fbox(), "count": boxes.len(), "boxes": boxes})
                );
            }
            // phrase grounding: one sentence naming up to three kinds of object
            let kinds: Vec<(&String, &Vec<[f64; 4]>)> = by_name.iter().take(3).collect();
            let article = |n: &str| if n.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
            let phrases: Vec<String> = kinds
                .iter()
                .enumerate()
                .map(|(e, (n, _))| format!("[/EN#{}/other {} {n}]", e + 1, article(n)))
                .collect();
            let mut xml = String::from("<annotation>");
            for (e, (_, boxes)) in kinds.iter().enumerate() {
                for b in boxes.iter() {
                    xml += &format!("<object><name>{}</name><bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax></bndbox></object>", e + 1, b[0], b[1], b[2], b[3]);
                }
            }
            xml += "</annotation>";
            std::fs::write(
                d.join(format!("Sentences/{k:06}.txt")),
                format!("In this picture there is {} .\n", phrases.join(" and ")),
            )
            .map_err(io(&d))?;
            std::fs::write(d.join(format!("Annotations/{k:06}.xml")), xml).map_err(io(&d))?;
            ids += &format!("{k:06}\n");
        }
        let coco = serde_json::json!({"images": coco_images, "annotations": coco_anns,
            "categories": SHAPES.iter().enumerate().map(|(i, n)| serde_json::json!({"id": i + 1, "name": n})).collect::<Vec<_>>()});
        let write = |name: &str, text: String| -> Result<(), String> {
            let f = d.join(name);
            std::fs::File::create(&f)
                .and_then(|mut h| h.write_all(text.as_bytes()))
                .map_err(|e| format!("{}: {e}", f.display()))
        };
        write("instances.json", coco.to_string())?;
        write("refcoco.jsonl", rec_eval)?;
        write("reg_eval.jsonl", reg_eval)?;
        write("count.jsonl", count_eval)?;
        write("count_any.jsonl", count_any)?;
        write("ids.txt", ids)?;
        let e = |x: crate::data::DataError| x.to_string();
        write_det_jsonl(&d.join("det.jsonl"), &det).map_err(e)?;
        write_det_jsonl(&d.join("visj.jsonl"), &visj).map_err(e)?;
        write_vg_jsonl(&d.join("vg.jsonl"), &vg).map_err(e)?;
        write_reg_jsonl(&d.join("reg.jsonl"), &reg).map_err(e)?;
        // the released task-list format, paths relative to this folder
        write(
            "tasks.txt",
            ["DET & det.jsonl", "VG & vg.jsonl", "REG & reg.jsonl", "VISJ & visj.jsonl"]
                .iter()
                .map(|l| format!("{l} & ../images/{split}\n"))
                .collect(),
        )?;
        summary.insert(split.to_string(), s);
    }
    Ok(summary)
}

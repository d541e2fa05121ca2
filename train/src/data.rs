//! Data builders: the released Griffon training-data layout (shared/GRIFFON_FORMAT.md, "Released
//! training-data layout") read into training conversations ([`Sample`]), plus writers so data moves
//! both ways with the Python trainer.
//!
//! What each source kind becomes (the reference loaders are in jefferyZhan/Griffon
//! `griffon/datasets/*.py`; they were read, not copied):
//!
//! * **DET** (`det.py` `DETDataset`): one jsonl line per image
//!   `{"image_path","height","width","dataset_name","objects":[{"category_name","bboxes":[[x1,y1,x2,y2],..]}]}`
//!   -> user = [`detect_prompt`] over a category set + [`DET_FORMAT_SUFFIX`] (with probability
//!   `det_format_prob`, 1 by default); the category set is the
//!   image's classes plus random other classes of the vocabulary up to `max_categories`, shuffled;
//!   assistant = [`format_instances`] (normalized, sorted by x1). Objects listed with an empty
//!   `bboxes` are classes known to be absent (the reference `RANDDETDataset` uses them as negatives);
//!   they go into the category set first. When an image has more classes than `max_categories`
//!   (the reference crashes in `random.sample`), the classes are split over several samples and each
//!   answer holds only the listed classes. `none_prob` adds non-existence samples (answer `None`).
//! * **REG** (`reg.py`): `{"image_path","height","width","expression","bboxes"}` -> user =
//!   [`reg_prompt`] of the box; with several boxes the reference writes all of them joined by `&`
//!   in the region slot, and so do we. `expression` may be a list (the reference then takes
//!   `expression[0]` with `bboxes[0]`); `bboxes` may be one flat box.
//! * **VG** (`vg.py`): same fields (`discrete_ids` ignored; `bbox` accepted as the reference's
//!   `lengths` does) -> user = [`rec_prompt`]; the reference formats the answer with the
//!   *expression as the name* of every box, in record order (`vg.py` calls the box formatter with
//!   `[expr]*len(bbox)`, no reordering): `expr-[..]&expr-[..]`; no box -> `None` (a valid
//!   no-target sample, as in gRefCOCO).
//! * **VISJ** (`mix.py` maps VISJ to `vvn.py` `VisualDetDataset_JSONL_v2`): the released counting
//!   files are DET-layout jsonl; one category of the image is chosen at random, one of its boxes
//!   is the exemplar, the answer is all its boxes in the counting form ([`format_boxes`]). Also read:
//!   COCO-style json (`vvn.py` `VisualDetDataset`: `images`, `annotations` with `bbox` x,y,w,h),
//!   with the FSCD-147 / FSCD-LVIS exemplar file found by replacing `instances` with `count` in the
//!   file name (`annotations[].boxes`, x,y,w,h, per image). Raw FSC-147 (points only, no per-object
//!   boxes) cannot give box answers and is refused with a clear error.
//! * **LAZY** (`base_class.py` `LazySupervisedDataset`): LLaVA conversations (a json list or jsonl);
//!   the `<image>` marker is removed from the first human turn and the text stripped (the reference
//!   `preprocess_multimodal` moves it to a `<image>\n` prefix, which our prompt step adds).
//!   Text-only records (no `image`) are skipped and reported: [`Sample`] always has a main image.
//!
//! Validation: a bad record never stops a build; it is skipped and reported as a [`Skipped`] with
//! `source` = `file:line` (`file:[i]` for an element of a json list, `file:image_id=N` for COCO
//! images) and a reason `category: detail` ([`skip_summary`] counts them by category). Only an
//! unreadable or malformed file as a whole is a [`DataError`].
//!
//! Instruction wording follows this project's fixed prompts (`griffon_core::request`); the
//! reference samples paraphrases from `griffon/datasets/templates/*.json`.

use griffon_core::answer::NONE_ANSWER;
use griffon_core::request::{detect_prompt, rec_prompt, reg_prompt, COUNT_PROMPT, REG_PROMPT};
use griffon_core::{format_boxes, format_instances, Exemplar, NormBox, PixelBox};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Appended to the detection instruction in training (`det.py` `transform2conv`).
pub const DET_FORMAT_SUFFIX: &str = "\nAnswer in the format: class name-[x1, y1, x2, y2], and concatenate them with &.";

/// How far (pixels) a box may reach beyond the image border before it counts as outside; boxes
/// within the tolerance are clamped to the image.
pub const BORDER_TOLERANCE_PX: f64 = 1.0;

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/// One training sample: a main image, optional region exemplars (in the order of the `<region>`
/// markers in the user texts), and one or more (user, assistant) turns. User texts do NOT include
/// the `<image>\n` prefix (the prompt step adds it) but DO include `<region>` markers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub image: PathBuf,
    pub regions: Vec<Exemplar>,
    pub turns: Vec<(String, String)>,
    pub task: TaskKind,
    /// Where it came from: `file:line` (see the module docs for json lists and COCO files).
    pub source: String,
    /// The image's width and height as its record declares them (the boxes were normalised by
    /// them): checked against the decoded image when the sample is loaded. None: not declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<(u32, u32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskKind {
    Det,
    Reg,
    Vg,
    Visj,
    Lazy,
}

impl TaskKind {
    pub const ALL: [TaskKind; 5] = [TaskKind::Lazy, TaskKind::Det, TaskKind::Reg, TaskKind::Vg, TaskKind::Visj];

    /// The task-list tag: `DET`, `REG`, `VG`, `VISJ`, `LAZY`.
    pub fn tag(self) -> &'static str {
        match self {
            TaskKind::Det => "DET",
            TaskKind::Reg => "REG",
            TaskKind::Vg => "VG",
            TaskKind::Visj => "VISJ",
            TaskKind::Lazy => "LAZY",
        }
    }

    /// Parses a tag without its `_k` suffix. `RANDDET` (the reference's detection with listed
    /// absent classes, `det.py` `RANDDETDataset`, used in the released `sft.txt`) reads as DET: the
    /// DET builder treats objects with empty `bboxes` as listed absent classes.
    pub fn from_tag(tag: &str) -> Option<TaskKind> {
        match tag {
            "DET" | "RANDDET" => Some(TaskKind::Det),
            "REG" => Some(TaskKind::Reg),
            "VG" => Some(TaskKind::Vg),
            "VISJ" => Some(TaskKind::Visj),
            "LAZY" => Some(TaskKind::Lazy),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSource {
    pub kind: TaskKind,
    pub annotations: PathBuf,
    pub images: PathBuf,
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Size of the detection category set (80 in the reference).
    pub max_categories: usize,
    pub seed: u64,
    /// Verify that image files exist (records whose image is missing are skipped).
    pub check_images: bool,
    /// Probability of adding a non-existence sample per DET image.
    pub none_prob: f64,
    /// Probability that a DET instruction carries [`DET_FORMAT_SUFFIX`] (drawn once per record).
    /// 1.0, the default, is the reference's training data; the evaluation template has no suffix,
    /// so a model trained from scratch only on suffixed prompts may answer the evaluation's
    /// prompt in another task's form (a bare box): below 1.0 it sees both.
    pub det_format_prob: f64,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self { max_categories: 80, seed: 0, check_images: true, none_prob: 0.0, det_format_prob: 1.0 }
    }
}

/// A record that was not turned into a sample, and why (`category: detail`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skipped {
    pub source: String,
    pub reason: String,
}

impl Skipped {
    /// The kind of reason (its text before the first ':'), by which [`skip_summary`] counts.
    pub fn category(&self) -> &str {
        self.reason.split(':').next().unwrap_or("").trim()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    TaskList { path: PathBuf, line: usize, message: String },
    #[error("{}: {message}", path.display())]
    Malformed { path: PathBuf, message: String },
    #[error("invalid build options: {0}")]
    Options(String),
    #[error("cannot write {}: {message}", path.display())]
    Write { path: PathBuf, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io { path: path.to_path_buf(), source }
}

fn malformed(path: &Path, message: impl Into<String>) -> DataError {
    DataError::Malformed { path: path.to_path_buf(), message: message.into() }
}

// ---------------------------------------------------------------------------------------------
// Records (shared by readers and writers)
// ---------------------------------------------------------------------------------------------

/// One object class of a DET line with its boxes (pixel xyxy). Unknown keys are kept in `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetObject {
    pub category_name: String,
    pub bboxes: Vec<[f64; 4]>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One line of a DET jsonl (also the released VISJ counting layout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetRecord {
    pub image_path: String,
    #[serde(deserialize_with = "de_pixels")]
    pub height: u32,
    #[serde(deserialize_with = "de_pixels")]
    pub width: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_name: Option<String>,
    pub objects: Vec<DetObject>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl DetObject {
    pub fn new(category_name: impl Into<String>, bboxes: Vec<[f64; 4]>) -> Self {
        Self { category_name: category_name.into(), bboxes, extra: Map::new() }
    }
}

impl DetRecord {
    pub fn new(image_path: impl Into<String>, width: u32, height: u32, objects: Vec<DetObject>) -> Self {
        Self { image_path: image_path.into(), height, width, dataset_name: None, objects, extra: Map::new() }
    }
}

/// One line of a REG or VG jsonl. Reading also accepts the reference's looser forms (a list
/// `expression` with matching list `bboxes`, a flat single box, `bbox` for `bboxes`) and
/// normalizes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawGround")]
pub struct GroundRecord {
    pub image_path: String,
    pub height: u32,
    pub width: u32,
    pub expression: String,
    pub bboxes: Vec<[f64; 4]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discrete_ids: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl GroundRecord {
    pub fn new(
        image_path: impl Into<String>,
        width: u32,
        height: u32,
        expression: impl Into<String>,
        bboxes: Vec<[f64; 4]>,
    ) -> Self {
        Self {
            image_path: image_path.into(),
            height,
            width,
            expression: expression.into(),
            bboxes,
            discrete_ids: None,
            extra: Map::new(),
        }
    }
}

#[derive(Deserialize)]
struct RawGround {
    image_path: String,
    #[serde(deserialize_with = "de_pixels")]
    height: u32,
    #[serde(deserialize_with = "de_pixels")]
    width: u32,
    expression: Value,
    #[serde(alias = "bbox")]
    bboxes: Value,
    #[serde(default)]
    discrete_ids: Option<Value>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

impl TryFrom<RawGround> for GroundRecord {
    type Error = String;
    fn try_from(r: RawGround) -> Result<Self, String> {
        let (expression, bboxes) = match r.expression {
            Value::String(s) => (s, boxes_from_value(&r.bboxes)?),
            // reg.py: `if isinstance(expr, list): expr = expr[0]; bboxes = item["bboxes"][0]`
            Value::Array(list) => {
                let first = match list.first() {
                    Some(Value::String(s)) => s.clone(),
                    Some(_) => return Err("expression list must hold strings".into()),
                    None => String::new(),
                };
                let boxes = match &r.bboxes {
                    Value::Array(b) if !b.is_empty() && b[0].is_array() => boxes_from_value(&b[0])?,
                    Value::Array(b) if b.is_empty() => vec![],
                    _ => return Err("with a list expression, bboxes must be a list of box lists".into()),
                };
                (first, boxes)
            }
            other => return Err(format!("expression must be a string or a list of strings, got {}", kind_of(&other))),
        };
        Ok(GroundRecord {
            image_path: r.image_path,
            height: r.height,
            width: r.width,
            expression,
            bboxes,
            discrete_ids: r.discrete_ids,
            extra: r.extra,
        })
    }
}

/// One LLaVA conversation turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LazyTurn {
    pub from: String,
    pub value: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One LLaVA record (`id` and other keys are kept in `extra`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LazyRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    pub conversations: Vec<LazyTurn>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl LazyRecord {
    pub fn new(image: Option<String>, turns: &[(&str, &str)]) -> Self {
        Self {
            image,
            conversations: turns
                .iter()
                .map(|(f, v)| LazyTurn { from: f.to_string(), value: v.to_string(), extra: Map::new() })
                .collect(),
            extra: Map::new(),
        }
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Image sizes: whole non-negative numbers (`480` or `480.0`).
fn pixels_from_value(v: &Value) -> Result<u32, String> {
    if let Value::Number(n) = v {
        if let Some(u) = n.as_u64() {
            return u32::try_from(u).map_err(|_| format!("image size {u} is too large"));
        }
        if let Some(f) = n.as_f64() {
            if f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f <= u32::MAX as f64 {
                return Ok(f as u32);
            }
        }
        return Err(format!("image size must be a whole number of pixels, got {n}"));
    }
    Err(format!("image size must be a number, got {}", kind_of(v)))
}

fn de_pixels<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = Value::deserialize(d)?;
    pixels_from_value(&v).map_err(serde::de::Error::custom)
}

fn box_from_value(v: &Value) -> Result<[f64; 4], String> {
    let a = v.as_array().ok_or_else(|| format!("a box must be a list of 4 numbers, got {}", kind_of(v)))?;
    if a.len() != 4 {
        return Err(format!("a box must have 4 numbers, got {}", a.len()));
    }
    let mut out = [0.0; 4];
    for (o, x) in out.iter_mut().zip(a) {
        *o = x.as_f64().ok_or_else(|| format!("box coordinate {x} is not a number"))?;
    }
    Ok(out)
}

/// `[]`, one flat box `[x1,y1,x2,y2]`, or a list of boxes.
fn boxes_from_value(v: &Value) -> Result<Vec<[f64; 4]>, String> {
    match v {
        Value::Array(a) if a.is_empty() => Ok(vec![]),
        Value::Array(a) if a[0].is_number() => Ok(vec![box_from_value(v)?]),
        Value::Array(a) => a.iter().map(box_from_value).collect(),
        other => Err(format!("bboxes must be a list, got {}", kind_of(other))),
    }
}

// ---------------------------------------------------------------------------------------------
// Task list
// ---------------------------------------------------------------------------------------------

/// The released task-list file: one line per source `TASK_k & annotations & image_folder` (TASK one
/// of LAZY, DET, REG, VG, VISJ, plus RANDDET read as DET; `_k` optional). Relative paths resolve
/// against the list file's folder. Blank lines and `#` lines are ignored. A bad line, or a tag used
/// twice (the reference `mix.py` keys its sources by tag, so a repeated tag silently drops the
/// earlier source), is an error naming the line.
pub fn read_task_list(path: &Path) -> Result<Vec<TaskSource>, DataError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let base = path.parent().unwrap_or(Path::new(""));
    let mut out = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim_start_matches('\u{feff}').trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |message: String| DataError::TaskList { path: path.to_path_buf(), line: line_no, message };
        let fields: Vec<&str> = line.split('&').map(str::trim).collect();
        if fields.len() != 3 {
            return Err(bad(format!(
                "expected `TASK & annotations & image_folder` (3 fields separated by &), found {} field(s)",
                fields.len()
            )));
        }
        let tag = fields[0];
        let (name, suffix) = match tag.split_once('_') {
            Some((n, s)) => (n, Some(s)),
            None => (tag, None),
        };
        if suffix.is_some_and(str::is_empty) {
            return Err(bad(format!("task tag {tag:?} has an empty suffix after `_`")));
        }
        let kind = TaskKind::from_tag(name).ok_or_else(|| {
            bad(format!(
                "unknown task {name:?} in tag {tag:?}; expected one of LAZY, DET, REG, VG, VISJ (RANDDET reads as DET)"
            ))
        })?;
        if let Some(first) = seen.insert(tag.to_string(), line_no) {
            return Err(bad(format!(
                "task tag {tag:?} is already used on line {first}; number repeated tasks (DET_0, DET_1, ...)"
            )));
        }
        if fields[1].is_empty() {
            return Err(bad("empty annotation path".into()));
        }
        if fields[2].is_empty() {
            return Err(bad("empty image folder".into()));
        }
        out.push(TaskSource { kind, annotations: base.join(fields[1]), images: base.join(fields[2]) });
    }
    Ok(out)
}

/// Writes a task list that [`read_task_list`] (and the reference `mix.py`) reads back: tags are
/// numbered per kind (`DET_0`, `DET_1`, ...); paths under the list's folder are written relative
/// to it, others absolute.
pub fn write_task_list(path: &Path, sources: &[TaskSource]) -> Result<(), DataError> {
    let werr = |message: String| DataError::Write { path: path.to_path_buf(), message };
    let abs = |p: &Path| std::path::absolute(p).map_err(|e| werr(format!("cannot resolve {}: {e}", p.display())));
    let base = abs(path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))?;
    let mut counters: HashMap<TaskKind, usize> = HashMap::new();
    let mut text =
        String::from("# TASK_k & annotations & image_folder (relative paths resolve against this file's folder)\n");
    for s in sources {
        let k = counters.entry(s.kind).or_insert(0);
        let mut fields = vec![format!("{}_{}", s.kind.tag(), k)];
        *k += 1;
        for p in [&s.annotations, &s.images] {
            let a = abs(p)?;
            let rel = match a.strip_prefix(&base) {
                Ok(r) if r.as_os_str().is_empty() => PathBuf::from("."),
                Ok(r) => r.to_path_buf(),
                Err(_) => a.clone(),
            };
            let t = rel.to_str().ok_or_else(|| werr(format!("path {} is not valid UTF-8", rel.display())))?;
            if t.contains(['&', '\n', '\r']) || t.trim() != t || t.starts_with('#') {
                return Err(werr(format!(
                    "path {t:?} cannot be written in a task list (contains & or a newline, or leading/trailing space)"
                )));
            }
            fields.push(t.to_string());
        }
        text.push_str(&fields.join(" & "));
        text.push('\n');
    }
    std::fs::write(path, text).map_err(io_err(path))
}

// ---------------------------------------------------------------------------------------------
// Reading files
// ---------------------------------------------------------------------------------------------

/// Calls `f(line_number, line)` for every non-blank line (1-based numbers); a line that is not
/// UTF-8 is reported as an error string.
fn for_each_line(path: &Path, mut f: impl FnMut(usize, Result<&str, String>)) -> Result<(), DataError> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let mut line_no = 0;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(io_err(path))?;
        if n == 0 {
            return Ok(());
        }
        line_no += 1;
        match std::str::from_utf8(&buf) {
            Ok(s) => {
                let s = if line_no == 1 { s.trim_start_matches('\u{feff}') } else { s };
                let s = s.trim_end_matches(['\n', '\r']);
                if !s.trim().is_empty() {
                    f(line_no, Ok(s));
                }
            }
            Err(e) => f(line_no, Err(format!("not UTF-8: {e}"))),
        }
    }
}

/// How a json file is laid out.
enum Layout {
    /// One JSON value per line.
    Lines,
    /// One JSON document.
    Whole(Value),
}

/// jsonl, or one JSON document (a list, a pretty-printed or single-line COCO / FSC-147 file)? A
/// first line that is a complete object other than a COCO or FSC-147 document means jsonl. Otherwise the whole file is
/// parsed; if that fails too, it is read as jsonl (and its bad lines reported).
fn sniff(path: &Path) -> Result<Layout, DataError> {
    let mut first: Option<String> = None;
    {
        let file = File::open(path).map_err(io_err(path))?;
        let mut reader = BufReader::new(file);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf).map_err(io_err(path))? == 0 {
                break;
            }
            let s = String::from_utf8_lossy(&buf);
            let s = s.trim_start_matches('\u{feff}').trim();
            if !s.is_empty() {
                first = Some(s.to_string());
                break;
            }
        }
    }
    let Some(first) = first else { return Ok(Layout::Lines) };
    if !first.starts_with('[') {
        if let Ok(v) = serde_json::from_str::<Value>(&first) {
            if v.is_object() && v.get("images").is_none() && !looks_like_fsc147(&v) {
                return Ok(Layout::Lines);
            }
        }
    }
    let mut text = String::new();
    File::open(path).map_err(io_err(path))?.read_to_string(&mut text).map_err(io_err(path))?;
    match serde_json::from_str::<Value>(text.trim_start_matches('\u{feff}')) {
        Ok(v) => Ok(Layout::Whole(v)),
        Err(e) if first.starts_with('[') => Err(malformed(path, format!("not a valid JSON list: {e}"))),
        Err(_) => Ok(Layout::Lines),
    }
}

/// A serde_json error as a skip reason: `not JSON: ...` or `bad record: ...`.
fn json_reason(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => format!("bad record: {e}"),
        _ => format!("not JSON: {e}"),
    }
}

fn parse_value_record<T: for<'de> Deserialize<'de>>(v: Value) -> Result<T, String> {
    serde_json::from_value(v).map_err(|e| json_reason(&e))
}

/// Reads a jsonl file of records: good ones with their `file:line`, bad ones skipped.
/// Records with their sources, and the records that were skipped.
type Sourced<T> = (Vec<(String, T)>, Vec<Skipped>);

fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path, what: &str) -> Result<Sourced<T>, DataError> {
    match sniff(path)? {
        Layout::Lines => {}
        Layout::Whole(v) => {
            let hint = if v.get("images").is_some() {
                " (this looks like a COCO json; convert it with coco_to_det_jsonl)"
            } else {
                ""
            };
            return Err(malformed(
                path,
                format!("expected {what} jsonl (one JSON object per line), found one JSON document{hint}"),
            ));
        }
    }
    let mut good = Vec::new();
    let mut bad = Vec::new();
    let name = path.display().to_string();
    for_each_line(path, |n, line| {
        let source = format!("{name}:{n}");
        match line.and_then(|l| serde_json::from_str::<T>(l).map_err(|e| json_reason(&e))) {
            Ok(r) => good.push((source, r)),
            Err(reason) => bad.push(Skipped { source, reason }),
        }
    })?;
    Ok((good, bad))
}

/// Reads a DET jsonl (also the released VISJ layout). Lines that do not parse are reported.
pub fn read_det_jsonl(path: &Path) -> Result<(Vec<DetRecord>, Vec<Skipped>), DataError> {
    let (good, bad) = read_jsonl::<DetRecord>(path, "DET")?;
    Ok((good.into_iter().map(|(_, r)| r).collect(), bad))
}

/// Reads a REG or VG jsonl. Lines that do not parse are reported.
pub fn read_ground_jsonl(path: &Path) -> Result<(Vec<GroundRecord>, Vec<Skipped>), DataError> {
    let (good, bad) = read_jsonl::<GroundRecord>(path, "REG/VG")?;
    Ok((good.into_iter().map(|(_, r)| r).collect(), bad))
}

/// Reads LLaVA records from a json list or jsonl, each with its source (`file:[i]` / `file:line`).
fn read_lazy(path: &Path) -> Result<Sourced<LazyRecord>, DataError> {
    match sniff(path)? {
        Layout::Lines => read_jsonl::<LazyRecord>(path, "LAZY"),
        Layout::Whole(Value::Array(items)) => {
            let name = path.display().to_string();
            let mut good = Vec::new();
            let mut bad = Vec::new();
            for (i, v) in items.into_iter().enumerate() {
                let source = format!("{name}:[{i}]");
                match parse_value_record::<LazyRecord>(v) {
                    Ok(r) => good.push((source, r)),
                    Err(reason) => bad.push(Skipped { source, reason }),
                }
            }
            Ok((good, bad))
        }
        Layout::Whole(v) => {
            Err(malformed(path, format!("expected LLaVA conversations as a JSON list or jsonl, found {}", kind_of(&v))))
        }
    }
}

/// Reads LLaVA records (json list or jsonl). Records that do not parse are reported.
pub fn read_lazy_records(path: &Path) -> Result<(Vec<LazyRecord>, Vec<Skipped>), DataError> {
    let (good, bad) = read_lazy(path)?;
    Ok((good.into_iter().map(|(_, r)| r).collect(), bad))
}

// ---------------------------------------------------------------------------------------------
// Writers
// ---------------------------------------------------------------------------------------------

fn write_lines<T: Serialize>(path: &Path, records: &[T]) -> Result<(), DataError> {
    let werr = |message: String| DataError::Write { path: path.to_path_buf(), message };
    let file = File::create(path).map_err(io_err(path))?;
    let mut w = BufWriter::new(file);
    for (i, r) in records.iter().enumerate() {
        let line = serde_json::to_string(r).map_err(|e| werr(format!("record {i}: {e}")))?;
        w.write_all(line.as_bytes()).map_err(io_err(path))?;
        w.write_all(b"\n").map_err(io_err(path))?;
    }
    w.flush().map_err(io_err(path))
}

/// Refuses coordinates JSON cannot hold (serde_json would write NaN / infinity as `null`).
fn check_finite_boxes<'a>(path: &Path, boxes: impl Iterator<Item = (usize, &'a [f64; 4])>) -> Result<(), DataError> {
    for (i, b) in boxes {
        if b.iter().any(|v| !v.is_finite()) {
            return Err(DataError::Write {
                path: path.to_path_buf(),
                message: format!("record {i}: box {b:?} has a non-finite coordinate"),
            });
        }
    }
    Ok(())
}

pub fn write_det_jsonl(path: &Path, records: &[DetRecord]) -> Result<(), DataError> {
    check_finite_boxes(
        path,
        records
            .iter()
            .enumerate()
            .flat_map(|(i, r)| r.objects.iter().flat_map(move |o| o.bboxes.iter().map(move |b| (i, b)))),
    )?;
    write_lines(path, records)
}

pub fn write_vg_jsonl(path: &Path, records: &[GroundRecord]) -> Result<(), DataError> {
    check_finite_boxes(path, records.iter().enumerate().flat_map(|(i, r)| r.bboxes.iter().map(move |b| (i, b))))?;
    write_lines(path, records)
}

/// Same line layout as VG (`reg.py` reads `image_path`, `height`, `width`, `expression`, `bboxes`).
pub fn write_reg_jsonl(path: &Path, records: &[GroundRecord]) -> Result<(), DataError> {
    write_vg_jsonl(path, records)
}

/// Writes LLaVA records as a JSON list (what the reference `LazySupervisedDataset` `json.load`s).
pub fn write_lazy_json(path: &Path, records: &[LazyRecord]) -> Result<(), DataError> {
    let text = serde_json::to_string(records)
        .map_err(|e| DataError::Write { path: path.to_path_buf(), message: e.to_string() })?;
    std::fs::write(path, text).map_err(io_err(path))
}

// ---------------------------------------------------------------------------------------------
// COCO
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct CocoFile {
    images: Vec<Value>,
    #[serde(default)]
    annotations: Vec<Value>,
    #[serde(default)]
    categories: Vec<Value>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: u64,
    file_name: String,
    #[serde(deserialize_with = "de_pixels")]
    height: u32,
    #[serde(deserialize_with = "de_pixels")]
    width: u32,
}

#[derive(Deserialize)]
struct CocoAnn {
    image_id: u64,
    #[serde(default)]
    category_id: Option<u64>,
    bbox: Value,
    #[serde(default)]
    iscrowd: Option<Value>,
}

#[derive(Deserialize)]
struct CocoCategory {
    id: u64,
    name: String,
}

/// FSCD-147 / FSCD-LVIS exemplar annotations (`count_*.json`).
#[derive(Deserialize)]
struct CountAnn {
    image_id: u64,
    boxes: Vec<Value>,
}

fn is_crowd(v: &Option<Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|x| x != 0.0),
        _ => false,
    }
}

fn xywh_to_xyxy(b: [f64; 4]) -> [f64; 4] {
    [b[0], b[1], b[0] + b[2], b[1] + b[3]]
}

fn read_coco_file(path: &Path) -> Result<CocoFile, DataError> {
    let file = File::open(path).map_err(io_err(path))?;
    serde_json::from_reader(BufReader::new(file)).map_err(|e| malformed(path, format!("not a COCO json: {e}")))
}

fn coco_categories(path: &Path, cats: Vec<Value>) -> Result<HashMap<u64, String>, DataError> {
    let mut out = HashMap::new();
    for (i, v) in cats.into_iter().enumerate() {
        let c: CocoCategory =
            serde_json::from_value(v).map_err(|e| malformed(path, format!("categories[{i}]: {e}")))?;
        out.insert(c.id, c.name);
    }
    Ok(out)
}

/// COCO instances json -> DET records (one per image with at least one non-crowd annotation;
/// crowd boxes skipped; `bbox` x,y,w,h -> x1,y1,x2,y2; objects grouped by category in order of
/// first appearance). Boxes are converted as they are; the builders validate them. A malformed
/// entry (missing field, unknown image or category id, a bbox that is not 4 numbers) is an error
/// naming the entry.
pub fn coco_to_det_records(instances: &Path) -> Result<Vec<DetRecord>, DataError> {
    let coco = read_coco_file(instances)?;
    let cats = coco_categories(instances, coco.categories)?;
    let mut images = Vec::with_capacity(coco.images.len());
    let mut index: HashMap<u64, usize> = HashMap::new();
    for (i, v) in coco.images.into_iter().enumerate() {
        let im: CocoImage = serde_json::from_value(v).map_err(|e| malformed(instances, format!("images[{i}]: {e}")))?;
        if index.insert(im.id, images.len()).is_some() {
            return Err(malformed(instances, format!("images[{i}]: duplicate image id {}", im.id)));
        }
        images.push((im, Vec::<DetObject>::new()));
    }
    for (i, v) in coco.annotations.into_iter().enumerate() {
        let a: CocoAnn =
            serde_json::from_value(v).map_err(|e| malformed(instances, format!("annotations[{i}]: {e}")))?;
        if is_crowd(&a.iscrowd) {
            continue;
        }
        let &slot = index
            .get(&a.image_id)
            .ok_or_else(|| malformed(instances, format!("annotations[{i}]: unknown image_id {}", a.image_id)))?;
        let cid = a.category_id.ok_or_else(|| malformed(instances, format!("annotations[{i}]: no category_id")))?;
        let name = cats
            .get(&cid)
            .ok_or_else(|| malformed(instances, format!("annotations[{i}]: unknown category_id {cid}")))?;
        let b = box_from_value(&a.bbox).map_err(|e| malformed(instances, format!("annotations[{i}]: bbox: {e}")))?;
        let objects = &mut images[slot].1;
        let xyxy = xywh_to_xyxy(b);
        match objects.iter_mut().find(|o| &o.category_name == name) {
            Some(o) => o.bboxes.push(xyxy),
            None => objects.push(DetObject::new(name.clone(), vec![xyxy])),
        }
    }
    Ok(images
        .into_iter()
        .filter(|(_, objs)| !objs.is_empty())
        .map(|(im, objects)| DetRecord {
            image_path: im.file_name,
            height: im.height,
            width: im.width,
            dataset_name: Some("COCO".into()),
            objects,
            extra: Map::new(),
        })
        .collect())
}

/// COCO instances json -> DET jsonl lines (one per image with annotations; crowd boxes skipped).
/// Returns the number of lines written.
pub fn coco_to_det_jsonl(instances: &Path, out: &Path) -> Result<usize, DataError> {
    let records = coco_to_det_records(instances)?;
    write_det_jsonl(out, &records)?;
    Ok(records.len())
}

// ---------------------------------------------------------------------------------------------
// Validation helpers
// ---------------------------------------------------------------------------------------------

/// Checks a pixel xyxy box against a `width` x `height` image: finite, positive area, inside the
/// image up to [`BORDER_TOLERANCE_PX`] (then clamped), and still a box at the answer's 3-decimal
/// precision. Returns the clamped box.
pub fn validate_box(b: [f64; 4], width: u32, height: u32) -> Result<PixelBox, String> {
    if b.iter().any(|v| !v.is_finite()) {
        return Err(format!("box {b:?} has a non-finite coordinate"));
    }
    if b[2] <= b[0] || b[3] <= b[1] {
        return Err(format!("box {b:?} has zero or negative area (need x1 < x2 and y1 < y2)"));
    }
    let (w, h) = (width as f64, height as f64);
    let t = BORDER_TOLERANCE_PX;
    if b[0] < -t || b[1] < -t || b[2] > w + t || b[3] > h + t || b[0] >= w || b[1] >= h || b[2] <= 0.0 || b[3] <= 0.0 {
        return Err(format!("box {b:?} lies outside the {width}x{height} image (more than {t} px beyond the border)"));
    }
    // + 0.0: a -0.0 (Python's round(-1e-5, 2)) would be written `-0.000` in the sample's text
    let c = PixelBox::new(b[0].clamp(0.0, w) + 0.0, b[1].clamp(0.0, h) + 0.0, b[2].clamp(0.0, w), b[3].clamp(0.0, h));
    c.validate(width, height)?;
    let n = c.to_norm(width, height);
    if format!("{:.3}", n.x1) == format!("{:.3}", n.x2) || format!("{:.3}", n.y1) == format!("{:.3}", n.y2) {
        return Err(format!("box {b:?} collapses to zero width or height at 3 decimals on a {width}x{height} image"));
    }
    Ok(c)
}

/// Names and expressions that go into an answer must not contain what the answer grammar reserves.
fn check_answer_text(s: &str, what: &str) -> Result<(), String> {
    if s.contains(['&', '[', ']']) || s.contains("<image>") || s.contains("<region>") {
        return Err(format!(
            "reserved text: {what} {s:?} contains &, [, ] or a placeholder, which the answer grammar reserves"
        ));
    }
    Ok(())
}

fn check_size(width: u32, height: u32) -> Result<(), String> {
    if width == 0 || height == 0 {
        return Err(format!("bad size: width/height is 0 ({width}x{height})"));
    }
    Ok(())
}

/// Counts skipped records by reason category (the text before the first `:`), largest first.
pub fn skip_summary(skipped: &[Skipped]) -> Vec<(String, usize)> {
    let mut m: BTreeMap<String, usize> = BTreeMap::new();
    for s in skipped {
        *m.entry(s.category().to_string()).or_default() += 1;
    }
    let mut v: Vec<(String, usize)> = m.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

// ---------------------------------------------------------------------------------------------
// Builders
// ---------------------------------------------------------------------------------------------

struct Builder<'a> {
    src: &'a TaskSource,
    opts: &'a BuildOptions,
}

impl Builder<'_> {
    /// The image file of a record, checked when `check_images`.
    fn image(&self, rel: &str) -> Result<PathBuf, String> {
        if rel.trim().is_empty() {
            return Err("bad record: empty image path".into());
        }
        let p = self.src.images.join(rel);
        if self.opts.check_images && !p.is_file() {
            return Err(format!("missing image: {}", p.display()));
        }
        Ok(p)
    }
}

/// A deduplicated vocabulary with a name index.
struct Vocab<'a> {
    names: Vec<&'a str>,
}

impl<'a> Vocab<'a> {
    fn new(v: &'a [String]) -> Self {
        let mut seen = HashSet::new();
        let names = v.iter().map(|s| s.as_str()).filter(|s| !s.trim().is_empty() && seen.insert(*s)).collect();
        Self { names }
    }

    /// Up to `k` distinct names not in `exclude`, uniformly at random.
    fn sample<R: Rng + ?Sized>(&self, rng: &mut R, exclude: &HashSet<&str>, k: usize) -> Vec<String> {
        let n = self.names.len();
        let available = self.names.iter().filter(|s| !exclude.contains(*s)).count();
        let k = k.min(available);
        if k == 0 {
            return vec![];
        }
        if n <= 1024 || available * 2 < n {
            let pool: Vec<&str> = self.names.iter().copied().filter(|s| !exclude.contains(s)).collect();
            return pool.choose_multiple(rng, k).map(|s| s.to_string()).collect();
        }
        // Large vocabulary, few exclusions: rejection sampling avoids building the pool per image.
        let mut chosen: HashSet<usize> = HashSet::new();
        let mut out = Vec::with_capacity(k);
        while out.len() < k {
            let i = rng.random_range(0..n);
            if !exclude.contains(self.names[i]) && chosen.insert(i) {
                out.push(self.names[i].to_string());
            }
        }
        out
    }
}

/// Validated instances of a DET-layout record: (class, clamped pixel box) in record order, the
/// classes with boxes (first-appearance order) and the listed classes without boxes.
struct DetInstances {
    instances: Vec<(String, PixelBox)>,
    present: Vec<String>,
    listed_absent: Vec<String>,
}

fn det_instances(rec: &DetRecord) -> Result<DetInstances, String> {
    check_size(rec.width, rec.height)?;
    if rec.objects.is_empty() {
        return Err("no objects: the record lists no objects".into());
    }
    let mut instances = Vec::new();
    let mut present: Vec<String> = Vec::new();
    let mut listed: Vec<String> = Vec::new();
    for (oi, o) in rec.objects.iter().enumerate() {
        let name = o.category_name.trim();
        if name.is_empty() {
            return Err(format!("bad record: object {oi} has an empty category_name"));
        }
        check_answer_text(name, "category name")?;
        for (bi, b) in o.bboxes.iter().enumerate() {
            let pb = validate_box(*b, rec.width, rec.height)
                .map_err(|e| format!("bad box: object {name:?} box {bi}: {e}"))?;
            instances.push((name.to_string(), pb));
        }
        if !o.bboxes.is_empty() && !present.iter().any(|p| p == name) {
            present.push(name.to_string());
        }
        if o.bboxes.is_empty() && !listed.iter().any(|p| p == name) {
            listed.push(name.to_string());
        }
    }
    let listed_absent = listed.into_iter().filter(|n| !present.contains(n)).collect();
    Ok(DetInstances { instances, present, listed_absent })
}

/// `det.py` `transform2conv`: image_path, with the Objects365 special case (keep the last two
/// path components when `dataset_name == "OBJ365"`).
fn det_image_rel(rec: &DetRecord) -> String {
    if rec.dataset_name.as_deref() == Some("OBJ365") {
        last_two_components(&rec.image_path)
    } else {
        rec.image_path.clone()
    }
}

fn last_two_components(p: &str) -> String {
    let parts: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
    match parts.len() {
        0 => p.to_string(),
        1 => parts[0].to_string(),
        n => format!("{}/{}", parts[n - 2], parts[n - 1]),
    }
}

fn det_samples<R: Rng + ?Sized>(
    b: &Builder,
    rec: &DetRecord,
    source: &str,
    vocab: &Vocab,
    rng: &mut R,
) -> Result<Vec<Sample>, String> {
    let det = det_instances(rec)?;
    let image = b.image(&det_image_rel(rec))?;
    let max = b.opts.max_categories;
    let (w, h) = (rec.width, rec.height);
    // no draw at 1.0: the reference's data stay exactly reproducible from the seed
    let p = b.opts.det_format_prob;
    let suffix = if p >= 1.0 || rng.random_bool(p) { DET_FORMAT_SUFFIX } else { "" };
    let sample = |set: Vec<String>, answer: String| Sample {
        image: image.clone(),
        regions: vec![],
        turns: vec![(detect_prompt(&set) + suffix, answer)],
        task: TaskKind::Det,
        source: source.to_string(),
        size: Some((w, h)),
    };

    // Classes per sample: all present classes, split when there are more than max_categories.
    let mut chunks: Vec<Vec<String>> = if det.present.len() > max {
        let mut p = det.present.clone();
        p.shuffle(rng);
        p.chunks(max).map(|c| c.to_vec()).collect()
    } else {
        vec![det.present.clone()]
    };
    let present_set: HashSet<&str> = det.present.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    for chunk in chunks.drain(..) {
        let chunk_set: HashSet<&str> = chunk.iter().map(String::as_str).collect();
        let mut set = chunk.clone();
        // Listed absent classes first (RANDDET negatives), then random vocabulary classes.
        let room = max.saturating_sub(set.len());
        let mut listed = det.listed_absent.clone();
        listed.shuffle(rng);
        set.extend(listed.into_iter().take(room));
        let room = max.saturating_sub(set.len());
        let mut exclude: HashSet<&str> = present_set.clone();
        exclude.extend(set.iter().map(String::as_str));
        let extra = vocab.sample(rng, &exclude, room);
        set.extend(extra);
        set.shuffle(rng);
        let items: Vec<(String, NormBox)> = det
            .instances
            .iter()
            .filter(|(n, _)| chunk_set.contains(n.as_str()))
            .map(|(n, pb)| (n.clone(), pb.to_norm(w, h)))
            .collect();
        if set.is_empty() {
            return Err("no classes: the record has no classes and the vocabulary offers none".into());
        }
        out.push(sample(set, format_instances(&items)));
    }

    // Non-existence judging: a category set of classes absent from the image -> "None".
    if b.opts.none_prob > 0.0 && rng.random_bool(b.opts.none_prob) {
        let mut pool: Vec<String> = det.listed_absent.clone();
        let mut exclude: HashSet<&str> = present_set.clone();
        exclude.extend(pool.iter().map(String::as_str));
        let from_vocab = vocab.sample(rng, &exclude, max);
        pool.extend(from_vocab);
        if !pool.is_empty() {
            let n = rng.random_range(1..=pool.len().min(max));
            pool.shuffle(rng);
            pool.truncate(n);
            out.push(sample(pool, NONE_ANSWER.to_string()));
        }
    }
    Ok(out)
}

fn reg_sample(b: &Builder, rec: &GroundRecord, source: &str) -> Result<Sample, String> {
    check_size(rec.width, rec.height)?;
    let expr = rec.expression.trim();
    if expr.is_empty() {
        return Err("empty expression: the REG answer would be empty".into());
    }
    if rec.bboxes.is_empty() {
        return Err("no box: a REG record needs the region box".into());
    }
    let boxes = rec
        .bboxes
        .iter()
        .enumerate()
        .map(|(i, bx)| validate_box(*bx, rec.width, rec.height).map_err(|e| format!("bad box: box {i}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let image = b.image(&rec.image_path)?;
    let norm: Vec<NormBox> = boxes.iter().map(|p| p.to_norm(rec.width, rec.height)).collect();
    // reg.py formats every box of the record into the region slot, joined by `&`.
    let user = if norm.len() == 1 {
        reg_prompt(norm[0])
    } else {
        REG_PROMPT.replace("{box}", &norm.iter().map(|n| n.format()).collect::<Vec<_>>().join("&"))
    };
    Ok(Sample {
        image,
        regions: vec![],
        turns: vec![(user, expr.to_string())],
        task: TaskKind::Reg,
        source: source.to_string(),
        size: Some((rec.width, rec.height)),
    })
}

fn vg_sample(b: &Builder, rec: &GroundRecord, source: &str) -> Result<Sample, String> {
    check_size(rec.width, rec.height)?;
    let expr = rec.expression.trim();
    if expr.is_empty() {
        return Err("empty expression: nothing to ground".into());
    }
    check_answer_text(expr, "expression")?;
    let boxes = rec
        .bboxes
        .iter()
        .enumerate()
        .map(|(i, bx)| validate_box(*bx, rec.width, rec.height).map_err(|e| format!("bad box: box {i}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let image = b.image(&rec.image_path)?;
    // vg.py: the expression names every box, record order; no box -> "None".
    let answer = if boxes.is_empty() {
        NONE_ANSWER.to_string()
    } else {
        boxes
            .iter()
            .map(|p| format!("{expr}-{}", p.to_norm(rec.width, rec.height).format()))
            .collect::<Vec<_>>()
            .join("&")
    };
    Ok(Sample {
        image,
        regions: vec![],
        turns: vec![(rec_prompt(expr), answer)],
        task: TaskKind::Vg,
        source: source.to_string(),
        size: Some((rec.width, rec.height)),
    })
}

fn count_sample(image: PathBuf, exemplar: PixelBox, boxes: &[PixelBox], w: u32, h: u32, source: &str) -> Sample {
    let norm: Vec<NormBox> = boxes.iter().map(|p| p.to_norm(w, h)).collect();
    Sample {
        image,
        regions: vec![Exemplar::BoxOnImage(exemplar)],
        turns: vec![(COUNT_PROMPT.to_string(), format_boxes(&norm))],
        task: TaskKind::Visj,
        source: source.to_string(),
        size: Some((w, h)),
    }
}

/// `vvn.py` `VisualDetDataset_JSONL_v2`: one random category, one random exemplar among its boxes.
fn visj_line_sample<R: Rng + ?Sized>(
    b: &Builder,
    rec: &DetRecord,
    source: &str,
    rng: &mut R,
) -> Result<Sample, String> {
    let det = det_instances(rec)?;
    if det.present.is_empty() {
        return Err("no boxes: no object of the record has a box".into());
    }
    let image = b.image(&rec.image_path)?;
    let cat = &det.present[rng.random_range(0..det.present.len())];
    let boxes: Vec<PixelBox> = det.instances.iter().filter(|(n, _)| n == cat).map(|(_, p)| *p).collect();
    let exemplar = *boxes.choose(rng).expect("a present class has a box");
    Ok(count_sample(image, exemplar, &boxes, rec.width, rec.height, source))
}

fn lazy_sample(b: &Builder, rec: &LazyRecord, source: &str) -> Result<Sample, String> {
    let rel = match rec.image.as_deref() {
        Some(s) if !s.trim().is_empty() => s,
        _ => return Err("no image: text-only conversations cannot be a Sample (it needs a main image)".into()),
    };
    #[derive(PartialEq, Clone, Copy)]
    enum Role {
        Human,
        Gpt,
    }
    let mut turns: Vec<(Role, &str)> = Vec::new();
    for (i, t) in rec.conversations.iter().enumerate() {
        let role = match t.from.to_ascii_lowercase().as_str() {
            "human" | "user" => Role::Human,
            "gpt" | "assistant" => Role::Gpt,
            other => return Err(format!("bad record: unknown speaker {other:?} in turn {i}")),
        };
        turns.push((role, t.value.as_str()));
    }
    // base_class.py preprocess_*: "Skip the first one if it is not from human".
    if turns.first().is_some_and(|t| t.0 == Role::Gpt) {
        turns.remove(0);
    }
    if turns.is_empty() {
        return Err("empty conversation: no human/gpt turns".into());
    }
    if turns.len() % 2 == 1 {
        return Err("bad record: the last human turn has no answer".into());
    }
    let mut out = Vec::new();
    for (k, pair) in turns.chunks(2).enumerate() {
        if pair[0].0 != Role::Human || pair[1].0 != Role::Gpt {
            return Err(format!("bad record: turns do not alternate human/gpt at exchange {k}"));
        }
        let (mut user, answer) = (pair[0].1.to_string(), pair[1].1.to_string());
        if k == 0 {
            // preprocess_multimodal: drop the marker, strip, the prefix comes from the prompt step.
            user = user.replace("<image>", "").trim().to_string();
        } else if user.contains("<image>") {
            return Err(format!("bad record: <image> marker outside the first human turn (exchange {k})"));
        }
        if answer.contains("<image>") {
            return Err(format!("bad record: <image> marker in an answer (exchange {k})"));
        }
        if user.contains("<region>") || answer.contains("<region>") {
            return Err(format!(
                "bad record: <region> marker without an exemplar (exchange {k}); LLaVA records carry no regions"
            ));
        }
        if k > 0 && user.trim().is_empty() {
            return Err(format!("empty user text: exchange {k}"));
        }
        if answer.trim().is_empty() {
            return Err(format!("empty answer: exchange {k}"));
        }
        out.push((user, answer));
    }
    let image = b.image(rel)?;
    Ok(Sample { image, regions: vec![], turns: out, task: TaskKind::Lazy, source: source.to_string(), size: None })
}

type Boxes = Vec<[f64; 4]>;
/// (category id, xyxy box) of one COCO annotation.
type CatBox = (Option<u64>, [f64; 4]);

/// Builds from a COCO-style counting json (`vvn.py` `VisualDetDataset`).
fn visj_coco<R: Rng + ?Sized>(
    b: &Builder,
    path: &Path,
    doc: Value,
    rng: &mut R,
    samples: &mut Vec<Sample>,
    skipped: &mut Vec<Skipped>,
) -> Result<(), DataError> {
    let coco: CocoFile = serde_json::from_value(doc).map_err(|e| malformed(path, format!("not a COCO json: {e}")))?;
    let name = path.display().to_string();
    let cats = coco_categories(path, coco.categories)?;
    // The FSCD exemplar file: `instances` -> `count` in the file name (vvn.py replaces it in the
    // whole path; we only touch the file name).
    let count_path = path
        .file_name()
        .and_then(|f| f.to_str())
        .filter(|f| f.contains("instances"))
        .map(|f| path.with_file_name(f.replace("instances", "count")))
        .filter(|p| p.is_file());
    let exemplars: Option<HashMap<u64, Result<Boxes, String>>> = match &count_path {
        None => None,
        Some(cp) => {
            let cf = read_coco_file(cp)?;
            let mut m = HashMap::new();
            for (i, v) in cf.annotations.into_iter().enumerate() {
                let a: CountAnn =
                    serde_json::from_value(v).map_err(|e| malformed(cp, format!("annotations[{i}]: {e}")))?;
                // vvn.py uses the first exemplar annotation of an image.
                m.entry(a.image_id)
                    .or_insert_with(|| a.boxes.iter().map(|bv| box_from_value(bv).map(xywh_to_xyxy)).collect());
            }
            Some(m)
        }
    };
    // Annotations per image; a malformed annotation spoils its image.
    let mut per_image: HashMap<u64, Result<Vec<CatBox>, String>> = HashMap::new();
    for (i, v) in coco.annotations.into_iter().enumerate() {
        let image_id = v.get("image_id").and_then(Value::as_u64);
        let parsed = parse_value_record::<CocoAnn>(v).and_then(|a| {
            let bx = box_from_value(&a.bbox).map_err(|e| format!("bad record: annotations[{i}] bbox: {e}"))?;
            Ok((a, bx))
        });
        match (parsed, image_id) {
            (Ok((a, bx)), _) => {
                if is_crowd(&a.iscrowd) {
                    continue;
                }
                if let Some(cid) = a.category_id {
                    if !cats.is_empty() && !cats.contains_key(&cid) {
                        per_image.insert(
                            a.image_id,
                            Err(format!("bad record: annotations[{i}] has unknown category_id {cid}")),
                        );
                        continue;
                    }
                }
                if let Ok(list) = per_image.entry(a.image_id).or_insert_with(|| Ok(vec![])) {
                    list.push((a.category_id, xywh_to_xyxy(bx)));
                }
            }
            (Err(reason), Some(id)) => {
                per_image.insert(id, Err(format!("{reason} (annotations[{i}])")));
            }
            (Err(reason), None) => skipped.push(Skipped { source: format!("{name}:annotations[{i}]"), reason }),
        }
    }
    let mut listed: HashMap<u64, usize> = HashMap::new();
    for (i, v) in coco.images.into_iter().enumerate() {
        // the id is noted before the rest is read: the annotations of an image whose entry is
        // broken are reported with it, not again as annotations of an unlisted image
        let id = v.get("id").and_then(Value::as_u64);
        let first = id.and_then(|id| listed.get(&id).copied());
        if let (Some(id), None) = (id, first) {
            listed.insert(id, i);
        }
        let im: CocoImage = match parse_value_record(v) {
            Ok(im) => im,
            Err(reason) => {
                skipped.push(Skipped { source: format!("{name}:images[{i}]"), reason });
                continue;
            }
        };
        let source = format!("{name}:image_id={}", im.id);
        if let Some(first) = first {
            // its annotations went to the first entry: a second would train on them again
            let reason = format!("bad record: images[{i}] repeats the id of images[{first}]");
            skipped.push(Skipped { source, reason });
            continue;
        }
        let result = (|| -> Result<Sample, String> {
            check_size(im.width, im.height)?;
            let anns = match per_image.get(&im.id) {
                None => return Err("no annotations: the image has no (non-crowd) annotation".into()),
                Some(Err(e)) => return Err(e.clone()),
                Some(Ok(a)) if a.is_empty() => {
                    return Err("no annotations: the image has no (non-crowd) annotation".into())
                }
                Some(Ok(a)) => a,
            };
            let mut boxes = Vec::with_capacity(anns.len());
            for (k, (_, bx)) in anns.iter().enumerate() {
                boxes
                    .push(validate_box(*bx, im.width, im.height).map_err(|e| format!("bad box: annotation {k}: {e}"))?);
            }
            // vvn.py: file names containing "patch" keep their last two components.
            let rel =
                if im.file_name.contains("patch") { last_two_components(&im.file_name) } else { im.file_name.clone() };
            let image = b.image(&rel)?;
            match &exemplars {
                Some(ex) => {
                    let list = match ex.get(&im.id) {
                        None => {
                            return Err(format!(
                                "no exemplar: the count file has no exemplar boxes for image {}",
                                im.id
                            ))
                        }
                        Some(Err(e)) => return Err(format!("bad box: exemplar: {e}")),
                        Some(Ok(l)) if l.is_empty() => {
                            return Err(format!(
                                "no exemplar: the count file has no exemplar boxes for image {}",
                                im.id
                            ))
                        }
                        Some(Ok(l)) => l,
                    };
                    let checked = list
                        .iter()
                        .enumerate()
                        .map(|(k, bx)| {
                            validate_box(*bx, im.width, im.height).map_err(|e| format!("bad box: exemplar {k}: {e}"))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    let exemplar = *checked.choose(rng).expect("non-empty");
                    Ok(count_sample(image, exemplar, &boxes, im.width, im.height, &source))
                }
                None => {
                    let mut order: Vec<Option<u64>> = Vec::new();
                    for (c, _) in anns {
                        if !order.contains(c) {
                            order.push(*c);
                        }
                    }
                    let cat = order[rng.random_range(0..order.len())];
                    let chosen: Vec<PixelBox> =
                        anns.iter().zip(&boxes).filter(|((c, _), _)| *c == cat).map(|(_, p)| *p).collect();
                    let exemplar = *chosen.choose(rng).expect("a chosen category has a box");
                    Ok(count_sample(image, exemplar, &chosen, im.width, im.height, &source))
                }
            }
        })();
        match result {
            Ok(s) => samples.push(s),
            Err(reason) => skipped.push(Skipped { source, reason }),
        }
    }
    // annotations of images the file does not list: reported, not lost silently
    let mut orphans: Vec<u64> = per_image.keys().filter(|id| !listed.contains_key(id)).copied().collect();
    orphans.sort_unstable();
    for id in orphans {
        skipped.push(Skipped {
            source: format!("{name}:image_id={id}"),
            reason: format!("no image: annotations for image_id {id}, which `images` does not list"),
        });
    }
    Ok(())
}

fn looks_like_fsc147(v: &Value) -> bool {
    v.as_object().is_some_and(|m| {
        !m.is_empty()
            && m.values().take(3).all(|x| x.get("box_examples_coordinates").is_some() || x.get("points").is_some())
    })
}

fn check_options(opts: &BuildOptions) -> Result<(), DataError> {
    opts.check().map_err(DataError::Options)
}

impl BuildOptions {
    /// The options' own consistency (also what `[data]` of a training config is checked against).
    pub fn check(&self) -> Result<(), String> {
        if self.max_categories == 0 {
            return Err("max_categories must be at least 1".into());
        }
        for (name, p) in [("none_prob", self.none_prob), ("det_format_prob", self.det_format_prob)] {
            if !(p.is_finite() && (0.0..=1.0).contains(&p)) {
                return Err(format!("{name} must be within [0, 1], got {p}"));
            }
        }
        Ok(())
    }
}

/// Reads one source and builds samples; bad records are skipped and reported (never fatal), only
/// an unreadable or malformed file as a whole (or invalid options) is an error. `vocabulary` is
/// where DET category sets draw their other classes from.
pub fn build_source(
    src: &TaskSource,
    vocabulary: &[String],
    opts: &BuildOptions,
    rng: &mut impl rand::Rng,
) -> Result<(Vec<Sample>, Vec<Skipped>), DataError> {
    check_options(opts)?;
    let b = Builder { src, opts };
    let path = src.annotations.as_path();
    let mut samples = Vec::new();
    let mut skipped = Vec::new();
    let keep =
        |r: Result<Sample, String>, source: String, samples: &mut Vec<Sample>, skipped: &mut Vec<Skipped>| match r {
            Ok(s) => samples.push(s),
            Err(reason) => skipped.push(Skipped { source, reason }),
        };
    match src.kind {
        TaskKind::Det => {
            let vocab = Vocab::new(vocabulary);
            let (records, bad) = read_jsonl::<DetRecord>(path, "DET")?;
            skipped.extend(bad);
            for (source, rec) in records {
                match det_samples(&b, &rec, &source, &vocab, rng) {
                    Ok(s) => samples.extend(s),
                    Err(reason) => skipped.push(Skipped { source, reason }),
                }
            }
        }
        TaskKind::Reg | TaskKind::Vg => {
            let (records, bad) = read_jsonl::<GroundRecord>(path, src.kind.tag())?;
            skipped.extend(bad);
            for (source, rec) in records {
                let r = if src.kind == TaskKind::Reg {
                    reg_sample(&b, &rec, &source)
                } else {
                    vg_sample(&b, &rec, &source)
                };
                keep(r, source, &mut samples, &mut skipped);
            }
        }
        TaskKind::Visj => match sniff(path)? {
            Layout::Lines => {
                let (records, bad) = read_jsonl::<DetRecord>(path, "VISJ")?;
                skipped.extend(bad);
                for (source, rec) in records {
                    let r = visj_line_sample(&b, &rec, &source, rng);
                    keep(r, source, &mut samples, &mut skipped);
                }
            }
            Layout::Whole(v) if v.get("images").is_some() => visj_coco(&b, path, v, rng, &mut samples, &mut skipped)?,
            Layout::Whole(v) if looks_like_fsc147(&v) => {
                return Err(malformed(
                    path,
                    "raw FSC-147 annotations give points, not a box per object, so no box answer can be built; \
                     use the FSCD-147 COCO files (instances_*.json with count_*.json) or DET-layout jsonl",
                ))
            }
            Layout::Whole(v) => {
                return Err(malformed(
                    path,
                    format!(
                        "expected VISJ data as DET-layout jsonl or a COCO json with `images`, found {}",
                        kind_of(&v)
                    ),
                ))
            }
        },
        TaskKind::Lazy => {
            let (records, bad) = read_lazy(path)?;
            skipped.extend(bad);
            for (source, rec) in records {
                let r = lazy_sample(&b, &rec, &source);
                keep(r, source, &mut samples, &mut skipped);
            }
        }
    }
    Ok((samples, skipped))
}

/// One annotation record held in memory (the streaming synthetic data builds its samples from
/// these without writing files).
#[derive(Debug, Clone, Copy)]
pub enum RecordRef<'a> {
    /// DET-layout record: detection (`TaskKind::Det`) or exemplar counting (`TaskKind::Visj`).
    Det(&'a DetRecord),
    /// REG / VG record.
    Ground(&'a GroundRecord),
}

/// Builds the samples of one in-memory record exactly as [`build_source`] builds a line of a
/// file of that kind; `images` is the folder the record's image path is relative to (the
/// image's presence is not checked). `vocabulary` as in [`build_source`].
pub fn record_samples(
    kind: TaskKind,
    record: RecordRef,
    images: &Path,
    vocabulary: &[String],
    opts: &BuildOptions,
    source: &str,
    rng: &mut impl rand::Rng,
) -> Result<Vec<Sample>, String> {
    check_options(opts).map_err(|e| e.to_string())?;
    let src = TaskSource { kind, annotations: PathBuf::new(), images: images.to_path_buf() };
    let opts = BuildOptions { check_images: false, ..opts.clone() };
    let b = Builder { src: &src, opts: &opts };
    match (kind, record) {
        (TaskKind::Det, RecordRef::Det(r)) => det_samples(&b, r, source, &Vocab::new(vocabulary), rng),
        (TaskKind::Visj, RecordRef::Det(r)) => visj_line_sample(&b, r, source, rng).map(|s| vec![s]),
        (TaskKind::Reg, RecordRef::Ground(r)) => reg_sample(&b, r, source).map(|s| vec![s]),
        (TaskKind::Vg, RecordRef::Ground(r)) => vg_sample(&b, r, source).map(|s| vec![s]),
        (k, _) => Err(format!("a {} sample cannot be built from this record kind", k.tag())),
    }
}

/// The category names of a DET jsonl (trimmed, non-empty, usable in answers); unreadable lines
/// are left to the builder to report.
pub fn det_categories(path: &Path) -> Result<BTreeSet<String>, DataError> {
    #[derive(Deserialize)]
    struct Name {
        category_name: String,
    }
    #[derive(Deserialize)]
    struct Names {
        objects: Vec<Name>,
    }
    let mut out = BTreeSet::new();
    if let Layout::Whole(_) = sniff(path)? {
        return Err(malformed(path, "expected DET jsonl (one JSON object per line), found one JSON document"));
    }
    for_each_line(path, |_, line| {
        if let Ok(n) = line.and_then(|l| serde_json::from_str::<Names>(l).map_err(|e| e.to_string())) {
            for o in n.objects {
                let t = o.category_name.trim();
                if !t.is_empty() && check_answer_text(t, "").is_ok() {
                    out.insert(t.to_string());
                }
            }
        }
    })?;
    Ok(out)
}

/// Builds every source. The vocabulary is every category name seen across the DET sources,
/// sorted; source `i` draws from its own generator seeded from `opts.seed` and `i`, so the result
/// is deterministic and one source's content does not shift another's randomness.
pub fn build_all(sources: &[TaskSource], opts: &BuildOptions) -> Result<(Vec<Sample>, Vec<Skipped>), DataError> {
    check_options(opts)?;
    let mut vocab = BTreeSet::new();
    for s in sources.iter().filter(|s| s.kind == TaskKind::Det) {
        vocab.extend(det_categories(&s.annotations)?);
    }
    let vocab: Vec<String> = vocab.into_iter().collect();
    let mut samples = Vec::new();
    let mut skipped = Vec::new();
    for (i, s) in sources.iter().enumerate() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let (a, b) = build_source(s, &vocab, opts, &mut rng)?;
        samples.extend(a);
        skipped.extend(b);
    }
    Ok((samples, skipped))
}

//! End-to-end evaluation runs: the model over a dataset ([`crate::datasets`]) with a progress bar,
//! a per-sample JSONL (prompts, raw answer, parsed boxes and scores, ground truth), resume from a
//! partial run, `--shard i/N` splitting with a merge step, and the metrics at the end.

use crate::datasets::{coco_scoring_info, Item, Truth};
use crate::EvalError;
use griffon_core::answer::Dropped;
use griffon_core::request::{Exemplar, Task};
use griffon_model::griffon::Griffon;
use griffon_model::tasks::RunOptions;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One parsed box in a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordBox {
    pub label: Option<String>,
    #[serde(rename = "box")]
    pub box_px: [f64; 4],
    pub box_norm: [f64; 4],
    pub score: f64,
    /// For phrase grounding: the phrase (turn) the box answers; absent in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phrase: Option<usize>,
}

impl RecordBox {
    /// The box in pixels of an image of `size` (`[width, height]`, the data's), as the reference
    /// scales the answer's normalized box; the decoded image's pixels without one.
    pub fn in_frame(&self, size: Option<[u32; 2]>) -> [f64; 4] {
        match size {
            Some([w, h]) => {
                let [x1, y1, x2, y2] = self.box_norm;
                griffon_core::NormBox::new(x1, y1, x2, y2).to_pixels(w, h).as_array()
            }
            None => self.box_px,
        }
    }

    /// [`RecordBox::in_frame`] as eval_rec.py scales a REC box: in float32
    /// ([`crate::grounding::rec_pixels_f32`]).
    pub fn in_rec_frame(&self, size: Option<[u32; 2]>) -> [f64; 4] {
        match size {
            Some([w, h]) => crate::grounding::rec_pixels_f32(self.box_norm, w, h),
            None => self.box_px,
        }
    }
}

impl From<griffon_model::tasks::Detection> for RecordBox {
    fn from(d: griffon_model::tasks::Detection) -> Self {
        RecordBox { label: d.label, box_px: d.box_px, box_norm: d.box_norm, score: d.score, phrase: d.phrase }
    }
}

/// A box the answer repeated ([`griffon_model::tasks::Repeat`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordRepeat {
    #[serde(flatten)]
    pub repeat: RecordBox,
    /// How many of the record's `detections` come before it in the answer.
    pub after: usize,
}

/// One line of the per-sample JSONL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub image: PathBuf,
    pub prompts: Vec<String>,
    /// The model's raw text (turns joined by newlines).
    pub answer: String,
    pub detections: Vec<RecordBox>,
    pub dropped: Vec<Dropped>,
    pub truth: Truth,
    /// Set when the sample could not be run (e.g. an unreadable image); it counts as a miss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The answer was cut before its end token (see `dropped`); scored as it is, counted in the
    /// summary's `truncated_samples`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// For an answer cut by `max_new_tokens`, the limit it ran with: a rerun with a higher limit
    /// runs it again (not set for an answer cut by the model's positions or the grammar, which a
    /// higher limit would cut at the same place).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_new_tokens: Option<usize>,
    /// The model that answered ([`RunnerOptions::model`]): a resume with another model is
    /// refused instead of mixing two models' answers. Absent in records of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// How it decoded ([`RunnerOptions::decoding`]); absent in records written before it was
    /// stored, which then resume with their model whatever the decoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoding: Option<String>,
    /// A counting item's exemplar (it is not in the prompt, which says `<region>`): compared on
    /// resume. Absent for other tasks and in records written before it was stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exemplar: Option<Exemplar>,
    /// The boxes the answer repeated, which `detections` leaves out (each also in `dropped`):
    /// COCO detection scores them as the reference does, a count counts them. Absent in records
    /// written before they were stored (their repeats are counted from `dropped`, and COCO
    /// reports them as `repeats_unscored`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeats: Option<Vec<RecordRepeat>>,
    /// The decoded image's width and height: COCO detection and REC, which scale boxes by the
    /// data's image size where it gives one, as the reference does, report images whose size
    /// differs from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<[u32; 2]>,
}

impl Record {
    /// Every box the answer wrote, repeats included, in answer order (as the reference's parser
    /// lists them), and the number of repeats a record written before they were stored lacks.
    pub fn answer_boxes(&self) -> (Vec<&RecordBox>, usize) {
        let Some(repeats) = &self.repeats else {
            return (self.detections.iter().collect(), self.dropped.iter().filter(|d| d.is_duplicate()).count());
        };
        let mut all = Vec::with_capacity(self.detections.len() + repeats.len());
        let mut rest = repeats.iter().peekable();
        for (i, d) in self.detections.iter().enumerate() {
            while let Some(r) = rest.next_if(|r| r.after <= i) {
                all.push(&r.repeat);
            }
            all.push(d);
        }
        all.extend(rest.map(|r| &r.repeat));
        (all, 0)
    }

    /// Whether the data gives an image size (`size`) other than the one the image decoded to.
    fn of_another_size(&self, size: Option<[u32; 2]>) -> bool {
        size.zip(self.image_size).is_some_and(|(a, b)| a != b)
    }

    /// Whether a rerun with `max_new_tokens` keeps this record (it ran, and was not cut at a
    /// lower limit).
    fn settled(&self, max_new_tokens: usize) -> bool {
        self.error.is_none() && !(self.truncated && self.max_new_tokens.is_some_and(|m| m < max_new_tokens))
    }
}

/// Checks a dataset before a model is loaded: ids must be unique (records are keyed by id when
/// resuming and merging: two items with one id would score as one) and the detection chunk at
/// least 1.
pub fn check_items(items: &[Item], opts: &RunnerOptions) -> Result<Checked, EvalError> {
    if opts.run.chunk == 0 {
        return Err(EvalError::Invalid("chunk (categories per detection turn) must be at least 1".into()));
    }
    let mut first_at: HashMap<&str, usize> = HashMap::new();
    for (k, it) in items.iter().enumerate() {
        if let Some(j) = first_at.insert(it.id.as_str(), k) {
            return Err(EvalError::Invalid(format!(
                "the dataset holds id {:?} twice (item {}, image {}, and item {}, image {}): ids must be unique",
                it.id,
                j + 1,
                items[j].request.image.display(),
                k + 1,
                it.request.image.display()
            )));
        }
    }
    Ok(Checked { stored: check_out_folder(items, opts)? })
}

/// A dataset checked against `--out` by [`check_items`] (before the model loads), with this
/// shard's stored records, which [`run`] resumes from.
pub struct Checked {
    stored: Vec<Record>,
}

/// The records already in `--out` (checked before a model is loaded): the folder's shards must be
/// of this run's split, and this shard's records of this evaluation ([`check_stored`]). Returns
/// this shard's records.
fn check_out_folder(items: &[Item], opts: &RunnerOptions) -> Result<Vec<Record>, EvalError> {
    if !opts.out.is_dir() {
        return Ok(Vec::new());
    }
    for f in shard_files(&opts.out)? {
        let (_, n) = shard_of(&f)?;
        if n != opts.shard.1 {
            return Err(EvalError::Invalid(format!(
                "{}: holds shards of a {n}-way split and this run is {}-way: use one --shard split per --out",
                opts.out.display(),
                opts.shard.1
            )));
        }
    }
    let file = shard_file(&opts.out, opts.shard);
    let stored = read_shard(&file, true)?;
    check_stored(&file, &stored, items, opts)?;
    Ok(stored)
}

#[derive(Debug, Clone)]
pub struct RunnerOptions {
    pub out: PathBuf,
    /// This process's shard `index` of `count` (items with position % count == index).
    pub shard: (usize, usize),
    pub limit: Option<usize>,
    pub run: RunOptions,
    pub progress: bool,
    /// Names the model and how it was loaded (folder, input size, dtype ...), stored in each
    /// record and compared on resume; None: not recorded, not checked.
    pub model: Option<String>,
    /// The name of the model's own template: records that name it (written before session 29,
    /// which stores `auto` for it) resume as `auto`.
    pub own_template: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub shard_file: PathBuf,
    pub items_in_shard: usize,
    pub already_done: usize,
    pub ran: usize,
    pub errors: usize,
    /// The id and error of the first sample that failed in this run.
    pub first_error: Option<(String, String)>,
}

pub fn shard_file(out: &Path, shard: (usize, usize)) -> PathBuf {
    out.join(format!("predictions.shard-{}-of-{}.jsonl", shard.0, shard.1))
}

/// Written when a shard's run has gone through all its items (removed when a run of it starts):
/// `eval merge` refuses a shard without it, one that stopped or is still running.
pub fn done_file(out: &Path, shard: (usize, usize)) -> PathBuf {
    out.join(format!("done.shard-{}-of-{}.json", shard.0, shard.1))
}

/// Reads a shard file. A torn last line (a kill mid-write: no newline at its end) is left out,
/// and with `repair` (a run about to append) cut off the file; `eval merge` reads without
/// repairing, so a shard still being written is not cut under its writer. A complete line that
/// does not parse is an error naming it, the last one too.
fn read_shard(path: &Path, repair: bool) -> Result<Vec<Record>, EvalError> {
    if !path.exists() {
        return Ok(vec![]);
    }
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io { path: path.into(), source })?;
    let mut out = Vec::new();
    let mut good_len = 0;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str::<Record>(line.trim_end()) {
            Ok(r) if line.ends_with('\n') => {
                out.push(r);
                good_len += line.len();
            }
            _ if i == lines.len() - 1 && !line.ends_with('\n') => {
                // torn tail: keep the valid prefix
                if !repair {
                    break;
                }
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|source| EvalError::Io { path: path.into(), source })?;
                f.set_len(good_len as u64).map_err(|source| EvalError::Io { path: path.into(), source })?;
            }
            Err(e) => {
                return Err(EvalError::Format { path: path.into(), message: format!("line {}: {e}", i + 1) });
            }
            Ok(_) => unreachable!("a line without newline is the last one"),
        }
    }
    Ok(out)
}

/// Refuses to resume from records that another evaluation wrote: every stored record must come
/// from this run's model (when both name one) and be one of this dataset's ids, made from the
/// same image and scored against the same truth (a folder reused for another dataset or an
/// edited annotation would otherwise mix old answers and old truths into the new scores).
fn check_stored(file: &Path, stored: &[Record], items: &[Item], opts: &RunnerOptions) -> Result<(), EvalError> {
    // each compared where both the record and this run name it (records written before the
    // decoding was stored resume with their model, whatever the decoding)
    let differs =
        |theirs: &Option<String>, mine: &Option<String>| matches!((theirs, mine), (Some(a), Some(b)) if a != b);
    let other_model = |theirs: &Option<String>, mine: &Option<String>| match (theirs, mine) {
        (Some(a), Some(b)) => !same_model(a, b),
        _ => false,
    };
    let decoding = Some(decoding_of(&opts.run));
    let own = opts.own_template.as_deref();
    let other = stored.iter().find(|r| {
        let same_form = |d: &Option<String>| d.as_deref().map(|d| comparable_decoding(d, &r.truth, own));
        other_model(&r.model, &opts.model) || differs(&same_form(&r.decoding), &same_form(&decoding))
    });
    if let Some(r) = other {
        let show = |m: &Option<String>, d: &Option<String>| {
            format!("{}; {}", m.as_deref().unwrap_or("?"), d.as_deref().unwrap_or("decoding not recorded"))
        };
        return Err(EvalError::Invalid(format!(
            "{}: the record for id {:?} was answered by another model or decoding ({}; this run: {}): use a new --out",
            file.display(),
            r.id,
            show(&r.model, &r.decoding),
            show(&opts.model, &decoding)
        )));
    }
    let by_id: HashMap<&str, &Item> = items.iter().map(|it| (it.id.as_str(), it)).collect();
    // the item's truth as it reads back from a record (serde_json may parse a written decimal
    // one ulp off: comparing the item's own value would refuse a valid resume)
    let as_stored = |t: &Truth| serde_json::to_string(t).ok().and_then(|j| serde_json::from_str::<Truth>(&j).ok());
    // what the item asks the model now (the expression, categories, region): the
    // prompts a record stores must be these (None when they cannot be made here, e.g. the image
    // is unreadable now: then the run reports that)
    let asks = |it: &Item| -> Option<Vec<String>> {
        let (w, h) = image::image_dimensions(&it.request.image).ok()?;
        let turns = it.request.turns(w, h, opts.run.chunk).ok()?;
        Some(turns.into_iter().map(|t| t.user_text).collect())
    };
    for r in stored {
        let problem = match by_id.get(r.id.as_str()) {
            None => "this dataset has no such id",
            Some(it) if !same_file(&it.request.image, &r.image) => "its image differs from this dataset's",
            Some(it) if !same_truth(as_stored(&it.truth), &r.truth) => "its ground truth differs from this dataset's",
            Some(it) if r.exemplar.as_ref().is_some_and(|e| !same_exemplar(e, exemplar_of(it).as_ref())) => {
                "its counting exemplar differs from this dataset's"
            }
            Some(it) if r.error.is_none() && asks(it).is_some_and(|p| p != r.prompts) => {
                "it asked the model something else: its prompts differ from this dataset's (an expression, \
                 category list or region changed, or --chunk)"
            }
            Some(_) => continue,
        };
        return Err(EvalError::Invalid(format!(
            "{}: holds a record for id {:?} that another evaluation wrote ({problem}): use a new --out",
            file.display(),
            r.id
        )));
    }
    Ok(())
}

/// The exemplar a counting item shows the model (stored in its record: the prompt only says
/// `<region>`).
fn exemplar_of(it: &Item) -> Option<Exemplar> {
    match &it.request.task {
        Task::Count { exemplar } => Some(exemplar.clone()),
        _ => None,
    }
}

/// Whether a stored exemplar is the item's now: its box as it reads back from a record (a
/// written decimal may parse one ulp off), its image the same file.
fn same_exemplar(stored: &Exemplar, now: Option<&Exemplar>) -> bool {
    let Some(now) = now.and_then(|e| serde_json::from_str::<Exemplar>(&serde_json::to_string(e).ok()?).ok()) else {
        return false;
    };
    match (stored, &now) {
        (Exemplar::Image(a), Exemplar::Image(b)) => same_file(a, b),
        (Exemplar::BoxOnOther { image: a, region: r }, Exemplar::BoxOnOther { image: b, region: q }) => {
            same_file(a, b) && r == q
        }
        (a, b) => a == b,
    }
}

/// Whether two paths name one file (as written, or once resolved: `--images ./imgs` and `imgs`).
fn same_file(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

/// The records of this evaluation's items (the first `limit` of `items`), in id order: a run
/// with a smaller `--limit` than an earlier one into the same folder scores its own items only.
pub fn select(records: Vec<Record>, items: &[Item], limit: Option<usize>) -> Vec<Record> {
    let wanted: HashSet<&str> = items.iter().take(limit.unwrap_or(usize::MAX)).map(|it| it.id.as_str()).collect();
    records.into_iter().filter(|r| wanted.contains(r.id.as_str())).collect()
}

/// The decoding settings that change an answer, stored in each record and compared on resume:
/// greedy or the sampling's temperature, top-k, top-p and seed, the template (`auto`: the model's), the
/// detection chunk and the constraint. Not `max_new_tokens`: a rerun with a higher limit is how
/// cut answers run again.
pub fn decoding_of(run: &RunOptions) -> String {
    let s = &run.sampling;
    let pick = match s.temperature > 0.0 {
        true => format!("temperature {}, top-k {}, top-p {}, seed {}", s.temperature, s.top_k, s.top_p, s.seed),
        false => "greedy".to_string(),
    };
    let template = run.template.map_or("auto", |t| t.name());
    let constrained = if run.constrained { "constrained" } else { "unconstrained" };
    format!("decoding {pick}, template {template}, chunk {}, {constrained}", run.chunk)
}

/// A stored decoding ([`decoding_of`]) without what cannot change this record's answers: the
/// detection chunk for an evaluation without categories, the constraint for region
/// descriptions (both refused there since session 29, recorded before), and the model's own
/// template named (`own`) for `auto`.
fn comparable_decoding(decoding: &str, truth: &Truth, own: Option<&str>) -> String {
    let detection = matches!(truth, Truth::Coco { .. });
    let description = matches!(truth, Truth::Reg { .. });
    let parts = decoding.split(", ").filter(|p| detection || !p.starts_with("chunk "));
    let parts = parts.filter(|p| !(description && matches!(*p, "constrained" | "unconstrained")));
    parts.map(|p| template_as_auto(p, own)).collect::<Vec<_>>().join(", ")
}

/// Whether a stored record's truth is the item's (`item`, as it reads back from a record): a
/// REC record written before the image size was stored matches the item's truth without it.
fn same_truth(item: Option<Truth>, stored: &Truth) -> bool {
    match (item, stored) {
        (Some(Truth::Rec { gt_box, size: Some(_) }), Truth::Rec { size: None, .. }) => {
            Truth::Rec { gt_box, size: None } == *stored
        }
        (item, stored) => item.as_ref() == Some(stored),
    }
}

/// One part of a decoding: the model's own template (`own`), named explicitly in records written
/// before session 29, as `auto`.
fn template_as_auto<'a>(part: &'a str, own: Option<&str>) -> &'a str {
    match own.is_some_and(|t| part.strip_prefix("template ") == Some(t)) {
        true => "template auto",
        false => part,
    }
}

/// A decoding ([`decoding_of`]) with the model's own template as `auto` ([`comparable_decoding`]'s
/// template rule alone).
pub fn own_template_as_auto(decoding: &str, own: Option<&str>) -> String {
    decoding.split(", ").map(|p| template_as_auto(p, own)).collect::<Vec<_>>().join(", ")
}

/// Runs the model over this shard's items (checked by [`check_items`]), appending to the shard
/// file and skipping ids it already holds.
pub fn run(model: &Griffon, items: &[Item], opts: &RunnerOptions, checked: Checked) -> Result<RunSummary, EvalError> {
    let (index, count) = opts.shard;
    if count == 0 || index >= count {
        return Err(EvalError::Invalid(format!("shard {index}/{count}: need 0 <= i < N")));
    }
    std::fs::create_dir_all(&opts.out).map_err(|source| EvalError::Io { path: opts.out.clone(), source })?;
    let file = shard_file(&opts.out, opts.shard);
    // a sample that failed (e.g. its image was missing) or was cut at a lower max_new_tokens runs
    // again; merge prefers the new record
    let max_new = opts.run.sampling.max_new_tokens;
    let decoding = Some(decoding_of(&opts.run)); // stored in each record
    let done: HashSet<String> = checked.stored.into_iter().filter(|r| r.settled(max_new)).map(|r| r.id).collect();
    let mine: Vec<&Item> = items
        .iter()
        .take(opts.limit.unwrap_or(usize::MAX))
        .enumerate()
        .filter(|(k, _)| k % count == index)
        .map(|(_, it)| it)
        .collect();
    let todo: Vec<&Item> = mine.iter().copied().filter(|it| !done.contains(&it.id)).collect();
    let done_marker = done_file(&opts.out, opts.shard);
    if done_marker.exists() {
        std::fs::remove_file(&done_marker).map_err(|source| EvalError::Io { path: done_marker.clone(), source })?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .map_err(|source| EvalError::Io { path: file.clone(), source })?;
    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new(mine.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {per_sec} ETA {eta} {msg}")
                .expect("valid template"),
        );
        b.set_position((mine.len() - todo.len()) as u64);
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut errors = 0;
    let mut first_error = None;
    for it in &todo {
        let rec = match model.run(&it.request, &opts.run) {
            Ok(out) => Record {
                id: it.id.clone(),
                image: it.request.image.clone(),
                prompts: out.prompts,
                answer: out.text,
                detections: out.detections.into_iter().map(RecordBox::from).collect(),
                repeats: Some(
                    out.repeats
                        .into_iter()
                        .map(|r| RecordRepeat { repeat: r.detection.into(), after: r.after })
                        .collect(),
                ),
                image_size: Some([out.image.width, out.image.height]),
                dropped: out.dropped,
                truth: it.truth.clone(),
                error: None,
                truncated: out.truncated,
                max_new_tokens: out.token_limited.then_some(max_new),
                model: opts.model.clone(),
                decoding: decoding.clone(),
                exemplar: exemplar_of(it),
            },
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| (it.id.clone(), e.to_string()));
                Record {
                    id: it.id.clone(),
                    image: it.request.image.clone(),
                    prompts: vec![],
                    answer: String::new(),
                    detections: vec![],
                    repeats: Some(vec![]),
                    image_size: None,
                    dropped: vec![],
                    truth: it.truth.clone(),
                    error: Some(e.to_string()),
                    truncated: false,
                    max_new_tokens: None,
                    model: opts.model.clone(),
                    decoding: decoding.clone(),
                    exemplar: exemplar_of(it),
                }
            }
        };
        let line = serde_json::to_string(&rec).expect("serializable");
        writeln!(f, "{line}").and_then(|_| f.flush()).map_err(|source| EvalError::Io { path: file.clone(), source })?;
        bar.inc(1);
        if errors > 0 {
            bar.set_message(format!("{errors} failed"));
        }
    }
    bar.finish();
    let marker =
        serde_json::json!({"items": mine.len(), "limit": opts.limit, "model": opts.model, "decoding": decoding});
    std::fs::write(&done_marker, marker.to_string()).map_err(|source| EvalError::Io { path: done_marker, source })?;
    Ok(RunSummary {
        shard_file: file,
        items_in_shard: mine.len(),
        already_done: mine.len() - todo.len(),
        ran: todo.len(),
        errors,
        first_error,
    })
}

/// The `predictions.shard-*` files of a folder, sorted.
fn shard_files(out: &Path) -> Result<Vec<PathBuf>, EvalError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(out)
        .map_err(|source| EvalError::Io { path: out.into(), source })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("predictions.shard-")))
        .collect();
    files.sort();
    Ok(files)
}

/// (I, N) of a shard file `predictions.shard-I-of-N.jsonl` (I < N).
fn shard_of(f: &Path) -> Result<(usize, usize), EvalError> {
    let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    name.strip_prefix("predictions.shard-")
        .and_then(|r| r.strip_suffix(".jsonl"))
        .and_then(|r| r.split_once("-of-"))
        .and_then(|(i, n)| Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?)))
        .filter(|(i, n)| i < n)
        .ok_or_else(|| {
            EvalError::Invalid(format!(
                "{}: not a shard file name (predictions.shard-I-of-N.jsonl with I < N)",
                f.display()
            ))
        })
}

/// The shard files `predictions.shard-I-of-N.jsonl` of one folder must all be of one split N
/// and every I in 0..N present: a missing shard would score a part of the dataset as the whole.
fn check_shards_complete(out: &Path, files: &[PathBuf]) -> Result<(), EvalError> {
    let mut of: Option<usize> = None;
    let mut have = HashSet::new();
    for f in files {
        let (i, n) = shard_of(f)?;
        match of {
            Some(m) if m != n => {
                return Err(EvalError::Invalid(format!(
                    "{}: holds shards of a {m}-way and a {n}-way split: use one --shard split per --out",
                    out.display()
                )))
            }
            _ => of = Some(n),
        }
        have.insert(i);
    }
    let n = of.unwrap_or(0);
    let missing: Vec<String> = (0..n).filter(|i| !have.contains(i)).map(|i| format!("{i}/{n}")).collect();
    if !missing.is_empty() {
        return Err(EvalError::Invalid(format!(
            "{}: shard(s) {} not run yet (run griffon eval ... --shard I/N for each, then merge)",
            out.display(),
            missing.join(", ")
        )));
    }
    let unfinished: Vec<String> =
        (0..n).filter(|&i| !done_file(out, (i, n)).is_file()).map(|i| format!("{i}/{n}")).collect();
    if !unfinished.is_empty() {
        return Err(EvalError::Invalid(format!(
            "{}: shard(s) {} not finished (no done.shard-I-of-N.json: the run stopped, or is still \
             running; run the same command again, which resumes, then merge)",
            out.display(),
            unfinished.join(", ")
        )));
    }
    Ok(())
}

/// A done marker's item count and --limit ([`run`] writes them).
fn read_done_marker(path: &Path) -> Result<(usize, Option<usize>), EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io { path: path.into(), source })?;
    let bad = |message: String| EvalError::Format { path: path.into(), message };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let items = v["items"].as_u64().ok_or_else(|| bad("no whole-number \"items\"".into()))?;
    let limit = match &v["limit"] {
        serde_json::Value::Null => None,
        l => Some(l.as_u64().ok_or_else(|| bad(format!("\"limit\" is {l}, not a whole number or null")))?),
    };
    Ok((items as usize, limit.map(|l| l as usize)))
}

/// Whether a stored model identity (`folder (weights F, options...)`, see `griffon`'s
/// `ModelArgs::identity`) names the model `mine` names. One written before the weights'
/// fingerprint was part of it (`folder (options...)`) matches on the folder and options.
pub fn same_model(theirs: &str, mine: &str) -> bool {
    if theirs == mine {
        return true;
    }
    if theirs.contains(" (weights ") {
        return false;
    }
    // mine without its "weights F, " part
    let parts = mine.split_once(" (weights ").and_then(|(dir, rest)| Some((dir, rest.split_once(", ")?.1)));
    parts.is_some_and(|(dir, options)| theirs == format!("{dir} ({options}"))
}

/// A model identity without its folder: the weights' fingerprint and the load options, which
/// shards run on two machines (the model at two paths) share.
fn model_key(identity: &str) -> &str {
    identity.rfind(" (").map_or(identity, |i| &identity[i..])
}

/// One model and one decoding answered every record that names them: shards run with different
/// models or settings into one folder are refused, not scored together. Models are compared by
/// weights and load options, not by folder (shards may run on several machines).
fn check_one_run(out: &Path, records: &[Record], own_template: Option<&str>) -> Result<(), EvalError> {
    let model = |r: &Record| r.model.as_deref().map(|m| model_key(m).to_string());
    let decoding = |r: &Record| r.decoding.as_deref().map(|d| comparable_decoding(d, &r.truth, own_template));
    let getters: [(&str, &dyn Fn(&Record) -> Option<String>); 2] = [("model", &model), ("decoding", &decoding)];
    for (what, get) in getters {
        let mut first: Option<(String, &str)> = None;
        for r in records {
            let Some(v) = get(r) else { continue };
            match &first {
                None => first = Some((v, &r.id)),
                Some((f, id)) if *f != v => {
                    return Err(EvalError::Invalid(format!(
                        "{}: records of two runs: item {id} has {what} {f:?}, item {} has {v:?}",
                        out.display(),
                        r.id
                    )))
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// Every record of every shard in `out`, deduplicated by id, in id order: a later record (a
/// rerun, appended) replaces a failed or cut one unless it failed itself. `eval merge` has no
/// data set to pick the records of: each shard's records must be of the samples its last run
/// went over (its done marker says how many), and every shard run with one --limit.
pub fn merge(out: &Path) -> Result<Vec<Record>, EvalError> {
    merge_shards(out, true, None)
}

/// [`merge`] for a run that knows its items: the records of `items` (the first `limit`), as
/// [`select`] picks them, so records of an earlier run over more samples stay in the folder.
/// `own_template`: the model's own template ([`RunnerOptions::own_template`]).
pub fn merge_selected(
    out: &Path,
    items: &[Item],
    limit: Option<usize>,
    own_template: Option<&str>,
) -> Result<Vec<Record>, EvalError> {
    Ok(select(merge_shards(out, false, own_template)?, items, limit))
}

fn merge_shards(out: &Path, strict: bool, own_template: Option<&str>) -> Result<Vec<Record>, EvalError> {
    let files = shard_files(out)?;
    if files.is_empty() {
        return Err(EvalError::Invalid(format!("{}: no predictions.shard-*.jsonl files", out.display())));
    }
    check_shards_complete(out, &files)?;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut all: Vec<Record> = Vec::new();
    let mut limits: Vec<(PathBuf, Option<usize>)> = Vec::new();
    for f in files {
        let records = read_shard(&f, false)?;
        let (items, limit) = read_done_marker(&done_file(out, shard_of(&f)?))?;
        let ids = records.iter().map(|r| r.id.as_str()).collect::<HashSet<_>>().len();
        if ids < items || (strict && ids > items) {
            return Err(EvalError::Invalid(format!(
                "{}: holds records of {ids} sample(s), and its last run was over {items}{}: {}",
                f.display(),
                limit.map(|l| format!(" (--limit {l})")).unwrap_or_default(),
                if ids < items {
                    "records are missing (the file was edited or cut): run that shard again, which resumes"
                } else {
                    "it also holds records of an earlier run over more samples (another --limit): \
                     run that shard again with that run's --limit, or run into a new --out"
                }
            )));
        }
        limits.push((f.clone(), limit));
        for r in records {
            match seen.get(&r.id) {
                None => {
                    seen.insert(r.id.clone(), all.len());
                    all.push(r);
                }
                Some(&k) if (all[k].error.is_some() || all[k].truncated) && r.error.is_none() => all[k] = r,
                Some(_) => {}
            }
        }
    }
    if let Some(((f1, l1), (f2, l2))) = limits.iter().zip(limits.iter().skip(1)).find(|((_, a), (_, b))| a != b) {
        let show = |l: &Option<usize>| l.map_or("no --limit".to_string(), |l| format!("--limit {l}"));
        return Err(EvalError::Invalid(format!(
            "{}: its shards ran over different parts of the data set ({} with {}, {} with {}): run \
             every shard with one --limit",
            out.display(),
            f1.display(),
            show(l1),
            f2.display(),
            show(l2)
        )));
    }
    all.sort_by(|a, b| a.id.cmp(&b.id));
    check_one_run(out, &all, own_template)?;
    Ok(all)
}

/// Scores merged records; writes any intermediate files (COCO results, CIDEr inputs) into `out`.
/// `annotations` is the COCO instances file for detection.
pub fn score(records: &[Record], annotations: Option<&Path>, out: &Path) -> Result<serde_json::Value, EvalError> {
    let Some(first) = records.first() else {
        return Err(EvalError::Invalid("no records to score".into()));
    };
    let errors = records.iter().filter(|r| r.error.is_some()).count();
    let metrics = match &first.truth {
        Truth::Coco { .. } => {
            let ann = annotations.ok_or_else(|| EvalError::Invalid("COCO scoring needs --annotations".into()))?;
            let info = coco_scoring_info(ann)?;
            let mut dets = Vec::new();
            let (mut unknown, mut unscored, mut resized) = (0usize, 0usize, 0usize);
            // the images that ran (with or without detections, failed ones too): only these are
            // scored, so a run over part of the data set is not charged for the images it skipped
            let mut images = Vec::new();
            for r in records {
                let Truth::Coco { image_id } = r.truth else { continue };
                images.push(image_id);
                // boxes in the annotation's frame, as the reference scales them (its width and
                // height); an image whose decoded size differs is reported
                let size = info.sizes.get(&image_id).copied();
                resized += usize::from(r.of_another_size(size));
                // every box the answer wrote, as the reference's parser keeps them: a repeat is a
                // false positive for pycocotools
                let (boxes, missing) = r.answer_boxes();
                unscored += missing;
                for d in boxes {
                    let b = d.in_frame(size);
                    match d.label.as_ref().and_then(|l| info.category_ids.get(l)) {
                        Some(&category_id) => dets.push(crate::coco::CocoDetection {
                            image_id,
                            category_id,
                            bbox: [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                            score: d.score,
                        }),
                        None => unknown += 1,
                    }
                }
            }
            let results: Vec<serde_json::Value> = dets
                .iter()
                .map(|d| serde_json::json!({"image_id": d.image_id, "category_id": d.category_id, "bbox": d.bbox, "score": d.score}))
                .collect();
            let rf = out.join("coco_results.json");
            std::fs::write(&rf, serde_json::to_string(&results).expect("serializable"))
                .map_err(|source| EvalError::Io { path: rf.clone(), source })?;
            let mut m = if dets.is_empty() {
                // pycocotools cannot load an empty results list: report that instead of a number
                serde_json::json!({"task": "coco", "stats": null, "images": images.len(), "detections": 0, "unknown_labels_dropped": unknown,
                                   "note": "the model produced no detection with a known category: there is nothing to score (pycocotools cannot load an empty results list)"})
            } else {
                let stats = crate::coco::coco_detections_stats_on(ann, &dets, &images)?;
                serde_json::json!({"task": "coco", "stats": stats, "names": crate::coco::COCO_STAT_NAMES,
                                   "images": images.len(), "detections": dets.len(), "unknown_labels_dropped": unknown,
                                   "results_file": rf})
            };
            // (reported only when there are any, so that older summaries compare unchanged)
            if unscored > 0 {
                m["repeats_unscored"] = unscored.into();
            }
            if resized > 0 {
                m["images_of_another_size"] = resized.into();
            }
            m
        }
        Truth::Rec { .. } => {
            // boxes in the frame of the data's image size where it gives one, as the reference
            // scales them; images whose decoded size differs are reported
            let mut resized = 0usize;
            let boxes: Vec<(Option<Vec<[f64; 4]>>, [f64; 4])> = records
                .iter()
                .filter_map(|r| match r.truth {
                    Truth::Rec { gt_box, size } => {
                        resized += usize::from(r.of_another_size(size));
                        let pred: Vec<[f64; 4]> = r.detections.iter().map(|d| d.in_rec_frame(size)).collect();
                        Some(((!pred.is_empty()).then_some(pred), gt_box))
                    }
                    _ => None,
                })
                .collect();
            let samples: Vec<(Option<&[[f64; 4]]>, [f64; 4])> = boxes.iter().map(|(p, g)| (p.as_deref(), *g)).collect();
            let acc = crate::grounding::rec_accuracy(&samples)?;
            let mut m = serde_json::json!({"task": "rec", "acc@0.5": acc.value, "hits": acc.hits, "total": acc.total});
            if resized > 0 {
                m["images_of_another_size"] = resized.into();
            }
            // a folder resumed across session 31: records without the data's size are scored in
            // the decoded image's pixels, the others in the data's frame
            let sizes = records.iter().filter(|r| matches!(r.truth, Truth::Rec { size: Some(_), .. })).count();
            if sizes > 0 && sizes < records.len() {
                m["records_without_size"] = (records.len() - sizes).into();
            }
            m
        }
        Truth::Phrases { .. } => {
            let mut tops = Vec::new();
            for r in records {
                if let Truth::Phrases { phrases } = &r.truth {
                    // each phrase is one turn whose box carries the phrase as label and the turn's
                    // index. Records written before the index was stored: a phrase text that occurs
                    // twice in a sentence takes the k-th box with that label (were the first turn
                    // of the two boxless, the second's box would count for the first)
                    let indexed = r.detections.iter().any(|d| d.phrase.is_some());
                    let mut seen: HashMap<&str, usize> = HashMap::new();
                    for (i, p) in phrases.iter().enumerate() {
                        let nth = seen.entry(p.phrase.as_str()).or_default();
                        let mut labelled =
                            r.detections.iter().filter(|d| d.label.as_deref() == Some(p.phrase.as_str()));
                        let top = match indexed {
                            true => labelled.find(|d| d.phrase == Some(i)),
                            false => labelled.nth(*nth),
                        }
                        .map(|d| d.box_px);
                        *nth += 1;
                        tops.push((top, p.boxes.clone()));
                    }
                }
            }
            let ps: Vec<crate::grounding::PhraseSample> =
                tops.iter().map(|(t, g)| crate::grounding::PhraseSample { top1: *t, gt_boxes: g }).collect();
            let r = crate::grounding::flickr30k_recall_at_1(&ps)?;
            serde_json::json!({"task": "flickr", "any_box_r@1": r.any_box.value, "merged_box_r@1": r.merged_box.value, "phrases": r.any_box.total})
        }
        Truth::Reg { .. } => {
            let mut refs = serde_json::Map::new();
            let mut hyps = serde_json::Map::new();
            for r in records {
                if let Truth::Reg { refs: rr } = &r.truth {
                    refs.insert(r.id.clone(), serde_json::json!(rr));
                    hyps.insert(r.id.clone(), serde_json::json!(r.answer));
                }
            }
            let (rf, hf) = (out.join("reg_refs.json"), out.join("reg_hyps.json"));
            for (f, v) in [(&rf, refs), (&hf, hyps)] {
                std::fs::write(f, serde_json::to_string(&v).expect("serializable"))
                    .map_err(|source| EvalError::Io { path: f.clone(), source })?;
            }
            let c = crate::cider::cider_from_files(&rf, &hf)?;
            serde_json::json!({"task": "reg", "cider": c.score, "images": c.per_image.len()})
        }
        Truth::Count { .. } => {
            let samples: Vec<(f64, f64)> = records
                .iter()
                .filter_map(|r| match r.truth {
                    // every box the answer wrote: a box written twice counts twice, as a count of
                    // the answer's boxes does (the parser removes repeats from the detections)
                    Truth::Count { count, .. } => {
                        let (boxes, missing) = r.answer_boxes();
                        Some(((boxes.len() + missing) as f64, count))
                    }
                    _ => None,
                })
                .collect();
            let e = crate::counting::counting_errors(&samples)?;
            let mut m = serde_json::json!({"task": "count", "mae": e.mae, "rmse": e.rmse, "nae": e.nae, "images": e.n});
            // boxes of the exemplar's class given for every sample: how the answer's boxes match them
            let boxed: Vec<(Vec<[f64; 4]>, Vec<[f64; 4]>)> = records
                .iter()
                .filter_map(|r| match &r.truth {
                    Truth::Count { boxes: Some(b), .. } => {
                        Some((r.answer_boxes().0.iter().map(|d| d.box_px).collect(), b.clone()))
                    }
                    _ => None,
                })
                .collect();
            if !boxed.is_empty() {
                if boxed.len() != records.len() {
                    return Err(EvalError::Invalid(format!(
                        "{} of {} counting samples carry true boxes: give them for all or none",
                        boxed.len(),
                        records.len()
                    )));
                }
                let b = crate::counting::box_match(&boxed, 0.5)?;
                m["box_precision@0.5"] = serde_json::json!(b.precision);
                m["box_recall@0.5"] = serde_json::json!(b.recall);
                m["box_f1@0.5"] = serde_json::json!(b.f1);
            }
            m
        }
    };
    let mut m = metrics;
    m["samples"] = serde_json::json!(records.len());
    m["failed_samples"] = serde_json::json!(errors);
    m["truncated_samples"] = serde_json::json!(records.iter().filter(|r| r.truncated).count());
    Ok(m)
}

/// Groups records by the kind of truth (a merge of runs of different tasks is an error).
pub fn check_single_task(records: &[Record]) -> Result<(), EvalError> {
    let kinds: HashMap<std::mem::Discriminant<Truth>, usize> = records.iter().fold(HashMap::new(), |mut m, r| {
        *m.entry(std::mem::discriminant(&r.truth)).or_default() += 1;
        m
    });
    if kinds.len() > 1 {
        return Err(EvalError::Invalid("the output folder mixes records of different tasks".into()));
    }
    Ok(())
}

#[cfg(test)]
mod shard_tests {
    use super::*;

    /// A REC record written before the image size was stored resumes against an item that has
    /// one; another box, or a stored size that differs, does not.
    #[test]
    fn rec_records_without_a_size_resume() {
        let rec = |x: f64, size: Option<[u32; 2]>| Truth::Rec { gt_box: [x, 0.0, 5.0, 5.0], size };
        assert!(same_truth(Some(rec(1.0, Some([9, 9]))), &rec(1.0, None)));
        assert!(same_truth(Some(rec(1.0, Some([9, 9]))), &rec(1.0, Some([9, 9]))));
        assert!(!same_truth(Some(rec(1.0, Some([9, 9]))), &rec(2.0, None)));
        assert!(!same_truth(Some(rec(1.0, Some([9, 9]))), &rec(1.0, Some([8, 9]))));
        assert!(!same_truth(Some(rec(1.0, None)), &rec(1.0, Some([9, 9]))));
    }

    fn line(id: &str) -> String {
        line_of(id, None)
    }

    fn line_of(id: &str, model: Option<&str>) -> String {
        let r = Record {
            id: id.into(),
            image: "a.png".into(),
            prompts: vec![],
            answer: "None".into(),
            detections: vec![],
            dropped: vec![],
            truth: Truth::Coco { image_id: 1 },
            error: None,
            truncated: false,
            max_new_tokens: None,
            model: model.map(str::to_string),
            decoding: None,
            exemplar: None,
            repeats: Some(vec![]),
            image_size: None,
        };
        serde_json::to_string(&r).unwrap() + "\n"
    }

    fn item(id: &str) -> Item {
        let request =
            griffon_core::request::Request { image: "a.png".into(), task: Task::Detect { categories: vec![] } };
        Item { id: id.into(), request, truth: Truth::Coco { image_id: 1 } }
    }

    /// merge refuses a shard that has not finished (no done marker) and records of two models.
    #[test]
    fn merge_needs_finished_shards_of_one_run() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        std::fs::write(shard_file(out, (0, 2)), line_of("1", Some("m"))).unwrap();
        std::fs::write(shard_file(out, (1, 2)), line_of("2", Some("m"))).unwrap();
        let one = r#"{"items": 1, "limit": null}"#;
        std::fs::write(done_file(out, (0, 2)), one).unwrap();
        let e = merge(out).unwrap_err().to_string();
        assert!(e.contains("shard(s) 1/2 not finished"), "{e}");
        // the marker says how many samples its run went over, and with which --limit
        std::fs::write(done_file(out, (1, 2)), r#"{"items": 2, "limit": null}"#).unwrap();
        let e = merge(out).unwrap_err().to_string();
        assert!(e.contains("records of 1 sample(s), and its last run was over 2: records are missing"), "{e}");
        std::fs::write(done_file(out, (1, 2)), r#"{"items": 1, "limit": 3}"#).unwrap();
        let e = merge(out).unwrap_err().to_string();
        assert!(e.contains("with no --limit") && e.contains("with --limit 3"), "{e}");
        std::fs::write(done_file(out, (1, 2)), "{}").unwrap();
        let e = merge(out).unwrap_err().to_string();
        assert!(e.contains("done.shard-1-of-2.json") && e.contains("no whole-number \"items\""), "{e}");
        std::fs::write(done_file(out, (1, 2)), one).unwrap();
        assert_eq!(merge(out).unwrap().len(), 2);
        // records of an earlier run over more samples: `eval merge` cannot tell them apart and
        // refuses; a run that knows its items picks its own
        std::fs::write(shard_file(out, (1, 2)), line_of("2", Some("m")) + &line_of("4", Some("m"))).unwrap();
        let e = merge(out).unwrap_err().to_string();
        assert!(e.contains("records of an earlier run over more samples"), "{e}");
        let items: Vec<Item> = ["1", "2", "3", "4"].iter().map(|id| item(id)).collect();
        let got: Vec<String> = merge_selected(out, &items, Some(2), None).unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(got, ["1", "2"]);
        std::fs::write(shard_file(out, (1, 2)), line_of("2", Some("other"))).unwrap();
        let e = merge(out).unwrap_err().to_string();
        assert!(e.contains("records of two runs: item 1 has model \"m\", item 2 has \"other\""), "{e}");
        // the same weights and options at two paths (two machines) are one model
        let id = |dir: &str, fp: &str| format!("{dir} (weights {fp}, image size stored, dtype f32)");
        std::fs::write(shard_file(out, (0, 2)), line_of("1", Some(&id("/a/m", "00ff")))).unwrap();
        std::fs::write(shard_file(out, (1, 2)), line_of("2", Some(&id("/b/m", "00ff")))).unwrap();
        assert_eq!(merge(out).unwrap().len(), 2);
        std::fs::write(shard_file(out, (1, 2)), line_of("2", Some(&id("/a/m", "11ee")))).unwrap();
        assert!(merge(out).unwrap_err().to_string().contains("records of two runs"));
    }

    /// A stored identity matches this run's when equal; one written before the fingerprint
    /// existed matches on the folder and options alone.
    #[test]
    fn stored_model_identities() {
        let mine = "/m (weights 00ff, image size stored, dtype f32)";
        assert!(same_model(mine, mine));
        assert!(same_model("/m (image size stored, dtype f32)", mine));
        assert!(!same_model("/m (image size 56, dtype f32)", mine));
        assert!(!same_model("/other (image size stored, dtype f32)", mine));
        assert!(!same_model("/m (weights 11ee, image size stored, dtype f32)", mine));
    }

    /// A torn tail is left out, and cut off the file only when repairing; a complete last line
    /// that does not parse is an error naming it, not a torn tail.
    #[test]
    fn torn_tails_and_broken_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("predictions.shard-0-of-1.jsonl");
        let torn = format!("{}{}{{\"id\": \"3\", \"ima", line("1"), line("2"));
        std::fs::write(&f, &torn).unwrap();
        assert_eq!(read_shard(&f, false).unwrap().len(), 2);
        assert_eq!(std::fs::read_to_string(&f).unwrap(), torn, "merge's read changed the file");
        assert_eq!(read_shard(&f, true).unwrap().len(), 2);
        assert_eq!(std::fs::read_to_string(&f).unwrap(), line("1") + &line("2"));
        let broken = line("1") + "{\"id\": \"2\"}\n";
        std::fs::write(&f, &broken).unwrap();
        for repair in [false, true] {
            let e = read_shard(&f, repair).unwrap_err().to_string();
            assert!(e.contains("line 2"), "{e}");
        }
        assert_eq!(std::fs::read_to_string(&f).unwrap(), broken, "a broken complete line was cut");
    }
}

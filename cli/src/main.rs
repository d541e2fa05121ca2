//! The `griffon` command-line tool: a thin layer over the griffon-core / griffon-model libraries.

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::{Args, Parser, Subcommand, ValueEnum};
use griffon_core::answer::parse_answer;
use griffon_core::{Exemplar, PixelBox, Request, Task, Template};
use griffon_model::generate::SamplingOptions;
use griffon_model::griffon::{Griffon, LoadOptions};
use griffon_model::resample::Interp;
use griffon_model::tasks::{Detection, ImageInfo, Repeat, RunOptions, TaskOutput};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `eprintln!` without its panic when stderr is closed (`griffon ... 2>&1 | head` would exit 101
/// mid-run): a message that cannot be shown is dropped.
macro_rules! say {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

#[derive(Parser)]
#[command(name = "griffon", version, about = "Griffon v2 / Griffon-G fine-grained perception in Rust")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer a free prompt about an image (prints only the generated text).
    Generate(GenerateArgs),
    /// Find every object of the given categories.
    Detect(DetectArgs),
    /// Referring-expression grounding (one expression -> best box), or phrase grounding (--phrase ...).
    Ground(GroundArgs),
    /// Describe the region inside a box (REG).
    Describe(DescribeArgs),
    /// Find and count objects like an exemplar (a crop, or a box on this or another image).
    Count(CountArgs),
    /// A free prompt with <region> exemplars; boxes in the answer are parsed.
    Chat(ChatArgs),
    /// Parse model text from stdin into the detection JSON (for post-processing logs).
    Parse(ParseArgs),
    /// Train one stage from a TOML config (see train/src/config.rs and examples/tiny/).
    Train(TrainArgs),
    /// Time the released shapes with random weights (vision, projector, prefill, decode, memory).
    Bench(BenchArgs),
    /// Metrics (COCO mAP, CIDEr) and dataset runs (coco, refcoco, flickr, reg, count, merge).
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Build a Griffon checkpoint from public parts (an HF LLM + a vision tower + a fresh projector).
    Assemble(AssembleArgs),
    /// Copy a Griffon checkpoint with its main tower resized to run natively at another input size
    /// (position table resized and stored, trainable): e.g. a 224 px model as a 1022 px start.
    ResizeTower(ResizeTowerArgs),
    /// Check the engine against the golden fixtures on a device / dtype (for machines without cargo).
    Selfcheck(SelfcheckArgs),
    /// Generate the synthetic high-resolution perception benchmark (images + every annotation format).
    Synth(SynthArgs),
    /// Serve every task over HTTP (POST /v1/tasks, JSON) and a web page (GET /) with one model.
    Serve(ServeArgs),
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on (port 0: a free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Largest request body accepted, in MiB (images travel base64-encoded in the JSON).
    #[arg(long, default_value_t = 64, value_parser = at_least_one)]
    max_body_mb: usize,
    /// Most new tokens one request may ask for (a longer request is refused, 400): one request
    /// cannot hold the model for an unbounded decode.
    #[arg(long, default_value_t = griffon_server::DEFAULT_MAX_NEW_TOKENS_LIMIT, value_parser = at_least_one)]
    max_new_tokens_limit: usize,
}

#[derive(Args)]
struct SynthArgs {
    #[arg(long)]
    out: PathBuf,
    /// Number of scenes (80% train, 10% val, 10% test).
    #[arg(long)]
    n: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Square image size in pixels.
    #[arg(long, default_value_t = 1022)]
    size: u32,
    /// Objects per scene at most (1..=N).
    #[arg(long, default_value_t = 20)]
    max_objects: usize,
    /// Multiply every object's side (1.0: the benchmark; larger objects make an easier set).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    object_scale: f64,
    /// Write only this split (train, val or test) of the N-scene benchmark, e.g. the 200 test
    /// scenes of `--n 2000` without the 1800 others (2.4 MB per 1022 px image).
    #[arg(long)]
    split: Option<String>,
}

#[derive(Args)]
struct SelfcheckArgs {
    /// Folder of fixture cases (model/tests/fixtures/parity).
    #[arg(long, default_value = "model/tests/fixtures/parity")]
    fixtures: PathBuf,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DtypeArg,
    /// Run the GPU's half-precision attention arithmetic (scores, soft-capping and mask in the
    /// model dtype) on the CPU too, to check its numerics here.
    #[arg(long)]
    low_precision_attention: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct AssembleArgs {
    /// HF folder of the LLM (Llama-2 or Gemma-2): config.json, safetensors, tokenizer files.
    #[arg(long)]
    llm: PathBuf,
    /// Folder of the vision tower: config.json + safetensors (timm / EVA-CLIP / HF CLIP names).
    #[arg(long)]
    vision: PathBuf,
    /// Output checkpoint folder.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "conv_reduce")]
    projector: String,
    /// Store the tower's position table resized to this square size (the paper: 1022).
    #[arg(long)]
    image_size: Option<usize>,
    /// Interpolation of the stored table: bilinear (the paper), bicubic-aa (timm / Griffon's tool), ...
    #[arg(long, default_value = "bilinear")]
    pos_interp: String,
    /// Seed of the projector's random initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
struct ResizeTowerArgs {
    /// The Griffon checkpoint folder to copy.
    #[arg(long)]
    model: PathBuf,
    /// The new square input size of the main tower (a multiple of its patch size).
    #[arg(long)]
    image_size: usize,
    /// Output folder (new, or empty).
    #[arg(long)]
    out: PathBuf,
    /// Interpolation of the position table: bilinear (the paper), bilinear-aa, bicubic, bicubic-aa (Griffon's tool).
    #[arg(long, default_value = "bilinear")]
    pos_interp: String,
}

#[derive(Subcommand)]
enum EvalCommand {
    /// The 12 COCO bbox stats of a results file (pycocotools semantics).
    CocoResults {
        #[arg(long)]
        annotations: PathBuf,
        #[arg(long)]
        results: PathBuf,
        /// Print {"stats": [12 numbers], "unknown_category_detections": N}.
        #[arg(long)]
        json: bool,
    },
    /// CIDEr-D of hypotheses against references (pycocoevalcap semantics).
    Cider {
        #[arg(long)]
        refs: PathBuf,
        #[arg(long)]
        hyps: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// COCO detection mAP over a COCO instances file.
    Coco {
        #[command(flatten)]
        run: EvalRunArgs,
        #[arg(long)]
        annotations: PathBuf,
    },
    /// REC Acc@0.5 over a Shikra-style RefCOCO/+/g jsonl.
    Refcoco {
        #[command(flatten)]
        run: EvalRunArgs,
        #[arg(long)]
        data: PathBuf,
    },
    /// Flickr30K Entities ANY-BOX / MERGED-BOX R@1.
    Flickr {
        #[command(flatten)]
        run: EvalRunArgs,
        /// The Sentences/ folder.
        #[arg(long)]
        sentences: PathBuf,
        /// The Annotations/ folder.
        #[arg(long)]
        annotations: PathBuf,
        /// A file of image ids (e.g. test.txt); default: every sentence file.
        #[arg(long)]
        ids: Option<PathBuf>,
    },
    /// REG CIDEr over a jsonl of boxes with reference expressions.
    Reg {
        #[command(flatten)]
        run: EvalRunArgs,
        #[arg(long)]
        data: PathBuf,
    },
    /// Counting MAE / RMSE / NAE (FSC-147 annotation json, or a jsonl of image/exemplar/count).
    Count {
        #[command(flatten)]
        run: EvalRunArgs,
        #[arg(long)]
        data: PathBuf,
        /// Split file (Train_Test_Val_FSC_147.json) and --split name.
        #[arg(long, requires = "split")]
        split_file: Option<PathBuf>,
        #[arg(long)]
        split: Option<String>,
    },
    /// The synthetic benchmark (griffon synth): detection mAP / AP50 / APsmall, REC Acc@0.5,
    /// counting MAE, REG CIDEr on one split; where the split has count_any.jsonl, also exemplar
    /// counting of every class (MAE, and the F1@0.5 of the answer's boxes against the class's).
    Synth {
        #[command(flatten)]
        run: EvalRunArgs,
        /// The folder `griffon synth --out` wrote (its images/ are used; --images is not needed).
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "test")]
        split: String,
        /// Which evaluations to run (comma-separated): detection, rec, count, count_any, reg.
        /// Default: all (count_any skipped, with a note, on a split written before it existed;
        /// named here, its absence is an error). With this option the summary adds to the
        /// synth_metrics.json of an earlier run into the same --out.
        #[arg(long, value_delimiter = ',')]
        tasks: Option<Vec<SynthTask>>,
    },
    /// Merge the shards in an output folder and print the metrics.
    Merge {
        #[arg(long)]
        out: PathBuf,
        /// COCO instances file (for a COCO run).
        #[arg(long)]
        annotations: Option<PathBuf>,
    },
}

#[derive(Args)]
struct EvalRunArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    /// Image folder of the dataset (required, except by eval synth, which reads its own).
    #[arg(long)]
    images: Option<PathBuf>,
    /// Output folder: predictions.shard-i-of-N.jsonl, metrics.json.
    #[arg(long)]
    out: PathBuf,
    /// Run shard i of N (0-based), e.g. 0/4; merge the shards with `griffon eval merge`.
    #[arg(long, default_value = "0/1")]
    shard: String,
    /// Only the first N samples.
    #[arg(long, value_parser = at_least_one)]
    limit: Option<usize>,
    /// Categories per detection call (eval coco and eval synth; default 80).
    #[arg(long, value_parser = at_least_one)]
    chunk: Option<usize>,
    /// Constrain answers to the answer grammar (not for eval reg: descriptions are free text).
    #[arg(long)]
    constrained: bool,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// gemma2-9b, llama2-13b, eva02-llama2-13b (the paper's EVA02 tower), tiny or tiny-eva02 (the shapes of
    /// shared/bench/torch_reference_bench.py; the EVA02 ones are ours).
    #[arg(long)]
    config: String,
    /// Use random weights (required: the benchmark measures shapes, not a checkpoint).
    #[arg(long)]
    random_weights: bool,
    /// cpu, or cuda / cuda:N (a build with the cuda feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DtypeArg,
    /// Tokens for the decode rate.
    #[arg(long, default_value_t = 256)]
    decode_tokens: usize,
    /// Measure one part alone: vision, projector, prefill or decode (e.g. under a profiler).
    #[arg(long)]
    only: Option<String>,
    /// One warm-up and one timed run per measure (for a profiler; the times are single runs).
    #[arg(long)]
    quick: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TrainArgs {
    /// The run configuration.
    #[arg(long)]
    config: PathBuf,
    /// Override a config entry, e.g. `--set train.max_time_s=300 --set model.init=runs/x`
    /// (repeatable; relative paths are relative to the working directory; `--set KEY=` removes
    /// the entry, so its default applies).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
    /// cpu, or cuda / cuda:N (a build with the cuda feature).
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum DtypeArg {
    F32,
    Bf16,
    F16,
}

impl DtypeArg {
    fn dtype(self) -> DType {
        match self {
            DtypeArg::F32 => DType::F32,
            DtypeArg::Bf16 => DType::BF16,
            DtypeArg::F16 => DType::F16,
        }
    }
}

#[derive(Args)]
struct ModelArgs {
    /// Checkpoint folder (config.json, safetensors, tokenizer.json); default: $GRIFFON_MODEL (when
    /// set and not empty), else the bundled default model (models/default of the source tree,
    /// docs/SYNTH.md).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Run the vision tower at this square size instead of the checkpoint's (multiple of the patch size).
    #[arg(long)]
    image_size: Option<usize>,
    /// Position-table interpolation when --image-size differs from the stored grid:
    /// bilinear (paper), bilinear-aa, bicubic (HF interpolate_pos_encoding), bicubic-aa (Griffon's resize tool).
    #[arg(long, default_value = "bilinear")]
    pos_interp: String,
    /// Vision tower config (config.json or its folder) when the checkpoint's mm_vision_tower cannot be found.
    #[arg(long)]
    vision_config: Option<PathBuf>,
    /// Region-encoder tower config (config.json or its folder).
    #[arg(long)]
    region_config: Option<PathBuf>,
    /// Compute dtype (f32 on CPU by default; bf16 is the usual choice on a GPU).
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DtypeArg,
    /// cpu, or cuda / cuda:N (a build with the cuda feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Cut the image into N x N tiles encoded separately (the tiling baseline; default: the
    /// checkpoint's mm_tiles, 1 = direct high-resolution input).
    #[arg(long)]
    tiles: Option<usize>,
}

fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        _ => {
            let ord = match s.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest.trim_start_matches(':').parse::<usize>().map_err(|_| anyhow!("bad device {s:?}"))?,
                None => bail!("unknown device {s:?} (cpu, cuda, cuda:N)"),
            };
            Device::new_cuda(ord)
                .with_context(|| format!("--device {s} (this binary needs the cuda feature and a GPU)"))
        }
    }
}

/// The bundled default model: `models/default` of the source tree this binary was built from.
fn default_model() -> PathBuf {
    let cli = Path::new(env!("CARGO_MANIFEST_DIR"));
    cli.parent().unwrap_or(cli).join("models").join("default")
}

impl ModelArgs {
    /// The checkpoint folder: --model / $GRIFFON_MODEL, else the bundled default.
    fn dir(&self) -> Result<PathBuf> {
        if let Some(m) = &self.model {
            return Ok(m.clone());
        }
        // read here rather than by clap's `env`: clap takes a variable set to "" as an empty
        // --model ("a value is required for --model"); empty means unset, as in `${VAR:-default}`
        if let Some(m) = std::env::var_os("GRIFFON_MODEL").filter(|v| !v.is_empty()) {
            let m = PathBuf::from(m);
            if !m.is_dir() {
                bail!(
                    "$GRIFFON_MODEL names {}, which is not a folder (give --model, or set it to a model folder)",
                    m.display()
                );
            }
            return Ok(m);
        }
        let d = default_model();
        if d.join("config.json").is_file() {
            return Ok(d);
        }
        bail!("no model: give --model (or set $GRIFFON_MODEL); the bundled default model {} is not there", d.display())
    }

    /// The model folder (canonical path), a fingerprint of its weights (a folder rewritten with
    /// other weights is another model) and the load options that change its answers: what an
    /// evaluation's records are checked against on resume.
    fn identity(&self) -> Result<String> {
        let dir = self.dir()?;
        let dir = dir.canonicalize().with_context(|| format!("model folder {}", dir.display()))?;
        let weights = griffon_model::loader::weights_fingerprint(&dir)?;
        Ok(format!(
            "{} (weights {weights}, image size {}, tiles {}, position interpolation {}, dtype {})",
            dir.display(),
            self.image_size.map_or("stored".to_string(), |s| s.to_string()),
            self.tiles.map_or("stored".to_string(), |t| t.to_string()),
            self.pos_interp,
            self.dtype.dtype().as_str()
        ))
    }

    fn load(&self) -> Result<Griffon> {
        let dir = self.dir()?;
        let pos_interp: Interp = self.pos_interp.parse().map_err(|e: String| anyhow!(e))?;
        let dtype = self.dtype.dtype();
        let opts = LoadOptions {
            device: parse_device(&self.device)?,
            dtype,
            image_size: self.image_size,
            pos_interp,
            vision_config: self.vision_config.clone(),
            region_config: self.region_config.clone(),
            tiles: self.tiles,
        };
        Griffon::load(&dir, &opts).with_context(|| format!("loading model {}", dir.display()))
    }
}

#[derive(Args)]
struct DecodeArgs {
    #[arg(long, default_value_t = 512)]
    max_new_tokens: usize,
    /// auto (from the checkpoint's model_type), gemma_instruct, llava_llama_2 or qwen2.
    #[arg(long, default_value = "auto")]
    template: String,
    /// 0 = greedy (default, deterministic).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f64,
    /// Sampling keeps the k most likely tokens (0: all); 50 as HF generate's default.
    #[arg(long, default_value_t = griffon_model::generate::DEFAULT_TOP_K)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    top_p: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl DecodeArgs {
    fn template(&self) -> Result<Option<Template>> {
        match self.template.as_str() {
            "auto" => Ok(None),
            t => Ok(Some(t.parse::<Template>().map_err(|e| anyhow!(e))?)),
        }
    }
    fn sampling(&self) -> Result<SamplingOptions> {
        let s = SamplingOptions {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
        };
        match s.problem() {
            Some((name, what)) => bail!("--{} {what}", name.replace('_', "-")),
            None => Ok(s),
        }
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum BoxFormat {
    /// {label, box: [x1,y1,x2,y2] pixels, box_norm, score}
    Xyxy,
    /// {category, bbox: [x,y,w,h] pixels, score} (COCO results style)
    Coco,
}

#[derive(Args)]
struct OutputArgs {
    /// Print JSON: {image:{width,height}, detections:[...], text, dropped}.
    #[arg(long)]
    json: bool,
    /// Shape of each detection in the JSON (with --json; the text lines are always pixels xyxy).
    #[arg(long, value_enum, default_value = "xyxy", requires = "json")]
    format: BoxFormat,
    /// Draw boxes, labels and scores on the image and save it (PNG/JPEG by extension).
    #[arg(long)]
    save: Option<PathBuf>,
}

#[derive(Args)]
struct TaskArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    #[command(flatten)]
    output: OutputArgs,
    /// The image to look at.
    #[arg(long)]
    image: PathBuf,
    /// Constrain detection-style answers so that every answer parses (boxes in [0,1], x1<=x2, y1<=y2, or None).
    #[arg(long)]
    constrained: bool,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    /// The main image.
    #[arg(long)]
    image: PathBuf,
    /// Region / exemplar images, in the order of the prompt's <region> markers.
    #[arg(long)]
    region: Vec<PathBuf>,
    /// The user text; `<image>\n` is prepended when it has no <image>.
    #[arg(long, allow_hyphen_values = true)]
    prompt: String,
    /// Print the answer as it is generated.
    #[arg(long)]
    stream: bool,
}

#[derive(Args)]
struct DetectArgs {
    #[command(flatten)]
    task: TaskArgs,
    /// Categories, comma separated (repeatable).
    #[arg(long, required = true, value_delimiter = ',')]
    categories: Vec<String>,
    /// Categories per model call; longer lists are split and the answers merged.
    #[arg(long, default_value_t = 80, value_parser = at_least_one)]
    chunk: usize,
}

#[derive(Args)]
struct GroundArgs {
    #[command(flatten)]
    task: TaskArgs,
    /// The referring expression (REC: the best box).
    #[arg(long, conflicts_with = "phrase", allow_hyphen_values = true)]
    expression: Option<String>,
    /// Phrases to ground (repeatable): boxes per phrase.
    #[arg(long, allow_hyphen_values = true)]
    phrase: Vec<String>,
}

#[derive(Args)]
struct DescribeArgs {
    #[command(flatten)]
    task: TaskArgs,
    /// The region, pixels: x1,y1,x2,y2.
    #[arg(long = "box", allow_hyphen_values = true)]
    region: String,
}

#[derive(Args)]
struct ExemplarArgs {
    /// An exemplar crop or screenshot (used whole).
    #[arg(long, conflicts_with = "exemplar_box")]
    exemplar: Option<PathBuf>,
    /// The exemplar as a box x1,y1,x2,y2 (pixels) on the main image, or on --exemplar-image.
    #[arg(long, allow_hyphen_values = true)]
    exemplar_box: Option<String>,
    /// The image --exemplar-box refers to (cross-image co-referring).
    #[arg(long, requires = "exemplar_box")]
    exemplar_image: Option<PathBuf>,
}

impl ExemplarArgs {
    fn exemplar(&self) -> Result<Exemplar> {
        match (&self.exemplar, &self.exemplar_box, &self.exemplar_image) {
            (Some(p), None, None) => Ok(Exemplar::Image(p.clone())),
            (None, Some(b), None) => Ok(Exemplar::BoxOnImage(parse_box(b)?)),
            (None, Some(b), Some(img)) => Ok(Exemplar::BoxOnOther { image: img.clone(), region: parse_box(b)? }),
            _ => bail!("give an exemplar: --exemplar IMG, or --exemplar-box x1,y1,x2,y2 [--exemplar-image IMG]"),
        }
    }
}

#[derive(Args)]
struct CountArgs {
    #[command(flatten)]
    task: TaskArgs,
    #[command(flatten)]
    exemplar: ExemplarArgs,
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    task: TaskArgs,
    /// The prompt; each <region> takes the next --region image.
    #[arg(long, allow_hyphen_values = true)]
    prompt: String,
    /// Region / exemplar images, in the order of the prompt's <region> markers.
    #[arg(long)]
    region: Vec<PathBuf>,
}

#[derive(Args)]
struct ParseArgs {
    /// Width of the image the answer refers to (pixels).
    #[arg(long)]
    width: u32,
    /// Height of the image the answer refers to (pixels).
    #[arg(long)]
    height: u32,
    #[arg(long, value_enum, default_value = "xyxy")]
    format: BoxFormat,
}

fn parse_box(s: &str) -> Result<PixelBox> {
    let v: Vec<f64> = s
        .split(',')
        .map(|p| p.trim().parse::<f64>().map_err(|_| anyhow!("box {s:?}: {p:?} is not a number")))
        .collect::<Result<_>>()?;
    if v.len() != 4 {
        bail!("box {s:?} must have 4 numbers x1,y1,x2,y2, got {}", v.len());
    }
    Ok(PixelBox::new(v[0], v[1], v[2], v[3]))
}

fn detection_json(d: &Detection, format: BoxFormat) -> serde_json::Value {
    match format {
        BoxFormat::Xyxy => serde_json::to_value(d).expect("serializable"),
        BoxFormat::Coco => {
            let b = PixelBox::new(d.box_px[0], d.box_px[1], d.box_px[2], d.box_px[3]).to_xywh();
            let mut j = serde_json::json!({"category": d.label, "bbox": b, "score": d.score});
            // phrase grounding: which phrase (two identical phrases are told apart by it)
            if let Some(p) = d.phrase {
                j["phrase"] = p.into();
            }
            j
        }
    }
}

fn output_json(out: &TaskOutput, format: BoxFormat) -> serde_json::Value {
    let mut v = serde_json::to_value(out).expect("serializable");
    v["detections"] = out.detections.iter().map(|d| detection_json(d, format)).collect();
    if !out.repeats.is_empty() {
        v["repeats"] = out
            .repeats
            .iter()
            .map(|r| {
                let mut j = detection_json(&r.detection, format);
                j["after"] = r.after.into();
                j
            })
            .collect();
    }
    v
}

fn print_output(out: &TaskOutput, o: &OutputArgs, image: &std::path::Path) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    if o.json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&output_json(out, o.format))?)?;
    } else {
        for d in &out.detections {
            let b = d.box_px;
            writeln!(
                stdout,
                "{}\t{:.3}\t[{:.1}, {:.1}, {:.1}, {:.1}]",
                d.label.as_deref().unwrap_or("object"),
                d.score,
                b[0],
                b[1],
                b[2],
                b[3]
            )?;
        }
        if let Some(c) = out.count {
            writeln!(stdout, "count: {c}")?;
        }
        writeln!(stdout, "text: {}", out.text)?;
        for d in &out.dropped {
            writeln!(stdout, "dropped: {:?} ({})", d.text, d.reason)?;
        }
    }
    if let Some(path) = &o.save {
        let mut img = griffon_model::resample::load_rgb(image)?;
        let dets: Vec<(Option<String>, [f64; 4], f64)> =
            out.detections.iter().map(|d| (d.label.clone(), d.box_px, d.score)).collect();
        griffon_model::draw::draw_detections(&mut img, &dets);
        img.save(path).with_context(|| format!("saving {}", path.display()))?;
        if !o.json {
            writeln!(stdout, "saved: {}", path.display())?;
        }
    }
    Ok(())
}

/// clap value parser for counts that must be positive.
fn at_least_one(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

impl OutputArgs {
    /// Checks --save before the model runs: a format the image encoder writes, in a folder that
    /// exists (a bad path used to fail after the whole model run).
    fn check(&self) -> Result<()> {
        match &self.save {
            Some(path) => griffon_model::draw::check_save_path(path).map_err(|e| anyhow!("--save {e}")),
            None => Ok(()),
        }
    }
}

/// The image files a request reads: the main image and any exemplar / region image.
fn input_images(image: &std::path::Path, task: &Task) -> Vec<PathBuf> {
    let of = |e: &Exemplar| match e {
        Exemplar::Image(p) | Exemplar::BoxOnOther { image: p, .. } => Some(p.clone()),
        Exemplar::BoxOnImage(_) => None,
    };
    let mut v = vec![image.to_path_buf()];
    match task {
        Task::Count { exemplar } => v.extend(of(exemplar)),
        Task::Chat { regions, .. } => v.extend(regions.iter().filter_map(of)),
        _ => {}
    }
    v
}

fn run_task(a: &TaskArgs, task: Task, chunk: usize) -> Result<()> {
    a.output.check()?;
    if let Some(save) = a.output.save.as_ref().and_then(|p| p.canonicalize().ok()) {
        // an existing file only: a new path cannot be an input
        if let Some(input) =
            input_images(&a.image, &task).iter().find(|p| p.canonicalize().ok().as_ref() == Some(&save))
        {
            bail!(
                "--save {} is an input image of this request ({}): give another path",
                save.display(),
                input.display()
            );
        }
    }
    if a.constrained && matches!(task, Task::Describe { .. } | Task::Chat { .. }) {
        bail!(
            "--constrained is for detection-style answers (detect, ground, count); describe and chat answer free text"
        );
    }
    let opts = RunOptions {
        sampling: a.decode.sampling()?,
        template: a.decode.template()?,
        chunk,
        constrained: a.constrained,
    };
    let m = a.model.load()?;
    let req = Request { image: a.image.clone(), task };
    let out = m.run(&req, &opts)?;
    print_output(&out, &a.output, &a.image)
}

fn serve_cmd(a: &ServeArgs) -> Result<()> {
    let description = a.model.identity()?;
    let listener = griffon_server::Listener::bind(&a.addr).map_err(|e| anyhow!(e))?;
    let m = a.model.load()?;
    let service = griffon_server::Service::new(m, description.clone())
        .body_limit(a.max_body_mb.saturating_mul(1 << 20))
        .max_new_tokens_limit(a.max_new_tokens_limit);
    // stdout, flushed: scripts and tests read the address (port 0 picks one)
    println!("serving {description} on http://{}/ (POST /v1/tasks, GET /v1/model)", listener.addr());
    std::io::stdout().flush()?;
    listener.serve(&service);
    Ok(())
}

fn generate_cmd(a: &GenerateArgs) -> Result<()> {
    if a.prompt.trim().is_empty() {
        bail!("--prompt is empty: give the user text (`<image>\\n` is prepended when it has none)");
    }
    let sampling = a.decode.sampling()?;
    let template = a.decode.template()?;
    let m = a.model.load()?;
    let template = template.unwrap_or(m.template);
    let image = m.image_pixels(&a.image)?;
    let regions = a.region.iter().map(|r| m.region_pixels(r)).collect::<Result<Vec<_>, _>>()?;
    let prompt = m.render_prompt(&a.prompt, Some(template));
    let prepared = m.prepare(&prompt, &[image], &regions)?;
    let stop = m.stop_ids(template);
    if a.stream {
        let mut out = std::io::stdout();
        let mut io_err = None;
        let ans = m.answer_streaming(&prepared, &stop, &sampling, |piece| {
            if io_err.is_none() {
                io_err = out.write_all(piece.as_bytes()).and_then(|_| out.flush()).err();
            }
        })?;
        if let Some(e) = io_err {
            return Err(e.into());
        }
        writeln!(out)?;
        warn_if_cut(&ans.generation, sampling.max_new_tokens);
    } else {
        let ans = m.answer(&prepared, &stop, &sampling)?;
        writeln!(std::io::stdout().lock(), "{}", ans.text)?;
        warn_if_cut(&ans.generation, sampling.max_new_tokens);
    }
    Ok(())
}

/// `generate` prints the raw text: a cut answer is said so on stderr.
fn warn_if_cut(g: &griffon_model::generate::Generation, max_new_tokens: usize) {
    if let Some(reason) = griffon_model::tasks::cut_reason(g.stop, max_new_tokens) {
        say!("warning: {reason}");
    }
}

fn parse_cmd(a: &ParseArgs) -> Result<()> {
    if a.width == 0 || a.height == 0 {
        bail!("--width and --height must be positive");
    }
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).context("reading model text from stdin")?;
    let text = text.trim().to_string();
    let p = parse_answer(&text);
    let detection = |i: &griffon_core::Instance| Detection {
        label: i.label.clone(),
        box_px: i.norm.to_pixels(a.width, a.height).as_array(),
        box_norm: i.norm.as_array(),
        score: f64::NAN, // replaced by null below
        phrase: None,
    };
    let after = griffon_model::tasks::repeat_places(&p, 0, p.instances.len());
    let out = TaskOutput {
        image: ImageInfo { width: a.width, height: a.height },
        detections: p.instances.iter().map(detection).collect(),
        text,
        repeats: p.repeats.iter().zip(after).map(|(r, after)| Repeat { detection: detection(r), after }).collect(),
        dropped: p.dropped,
        count: None,
        text_score: None,
        prompts: vec![],
        truncated: false,
        token_limited: false,
    };
    let mut v = output_json(&out, a.format);
    // a log carries no decoding probabilities: the boxes have no model confidence
    for k in ["detections", "repeats"] {
        for d in v.get_mut(k).and_then(|l| l.as_array_mut()).into_iter().flatten() {
            d["score"] = serde_json::Value::Null;
        }
    }
    writeln!(std::io::stdout().lock(), "{}", serde_json::to_string_pretty(&v)?)?;
    Ok(())
}

fn train_cmd(a: &TrainArgs) -> Result<()> {
    let cfg = griffon_train::config::TrainConfig::from_file_with(&a.config, &a.set).map_err(|e| anyhow!(e))?;
    let mut t = griffon_train::trainer::Trainer::new(cfg, &parse_device(&a.device)?).map_err(|e| anyhow!(e))?;
    say!(
        "training {} samples, {} optimizer steps ({} tensors trainable, {} already done)",
        t.num_samples(),
        t.total_steps,
        t.opt.params.len(),
        t.opt.step
    );
    // records refused while the data was built, said before the run (a source whose images are
    // elsewhere used to show only at the end), with the first of each kind
    for (reason, n) in griffon_train::data::skip_summary(&t.skipped) {
        let first = t.skipped.iter().find(|k| k.category() == reason);
        let example = first.map(|k| format!(" (first: {}: {})", k.source, k.reason)).unwrap_or_default();
        say!("skipped {n} records before training: {reason}{example}");
    }
    let r = t.run(None, !a.quiet).map_err(|e| anyhow!(e))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "steps: {}/{}", r.steps, r.total_steps)?;
    if let Some(l) = r.losses.last() {
        writeln!(out, "final loss: {l:.4}")?;
    }
    writeln!(out, "checkpoint: {}", r.checkpoint.display())?;
    for (reason, n) in griffon_train::data::skip_summary(&r.skipped) {
        writeln!(out, "skipped {n}: {reason}")?;
    }
    Ok(())
}

fn bench_cmd(a: &BenchArgs) -> Result<()> {
    use griffon_model::bench;
    if !a.random_weights {
        bail!("griffon bench measures the released shapes with random weights: pass --random-weights");
    }
    let cfg = bench::preset(&a.config)
        .ok_or_else(|| anyhow!("unknown bench config `{}` (known: {})", a.config, bench::PRESETS.join(", ")))?;
    let device = parse_device(&a.device)?;
    let dtype = a.dtype.dtype();
    let only = match &a.only {
        None => None,
        Some(p) => Some(
            bench::BenchPart::parse(p)
                .ok_or_else(|| anyhow!("--only {p:?}: expected one of {}", bench::BenchPart::NAMES.join(", ")))?,
        ),
    };
    let opts = bench::BenchOptions { decode_tokens: a.decode_tokens, seed: 0, only, quick: a.quick };
    let r = bench::run(&cfg, &device, dtype, &opts)?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(());
    }
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2} ms"));
    writeln!(out, "config {} on {} ({}), image {} px", r.config, r.device, r.dtype, r.image_size)?;
    writeln!(out, "vision encoder   {:>12}", ms(r.vision_ms))?;
    writeln!(out, "projector        {:>12}", ms(r.projector_ms))?;
    writeln!(
        out,
        "prefill {:5} tok {:>12} (projector + logits at every position, the reference's scope)",
        r.prefill_tokens,
        ms(r.prefill_ms)
    )?;
    writeln!(out, "prefill for generation {} (projector + last position's logits)", ms(r.prefill_last_ms))?;
    if let Some(t) = r.decode_tok_per_s {
        writeln!(out, "decode           {t:10.1} tok/s over {} tokens", r.decode_tokens)?;
    }
    if let (Some(t), Some(i)) = (r.decode_step_ms, r.decode_step_issue_ms) {
        writeln!(out, "one decode step  {t:10.2} ms, issued by the host in {i:.2} ms")?;
    }
    if let Some(m) = r.peak_rss_mib {
        writeln!(out, "peak memory      {m:10.0} MiB")?;
    }
    Ok(())
}

fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let (i, n) = s.split_once('/').ok_or_else(|| anyhow!("--shard {s:?}: expected i/N"))?;
    let num = |x: &str| x.trim().parse::<usize>().map_err(|_| anyhow!("--shard {s:?}: {x:?} is not a whole number"));
    let (i, n) = (num(i)?, num(n)?);
    if n == 0 || i >= n {
        bail!("--shard {s:?}: need 0 <= i < N");
    }
    Ok((i, n))
}

fn eval_run(
    a: &EvalRunArgs,
    data: &std::path::Path,
    items: Vec<griffon_eval::datasets::Item>,
    annotations: Option<&std::path::Path>,
) -> Result<()> {
    if let Some(s) = eval_run_metrics(a, &EvalModel::of(a)?, &a.out, data, items, annotations)? {
        writeln!(std::io::stdout().lock(), "{}", serde_json::to_string_pretty(&s.metrics)?)?;
        if let Some(e) = s.all_failed {
            bail!(e);
        }
    }
    Ok(())
}

/// A scored evaluation: its metrics, and a message when every sample failed.
struct Scored {
    metrics: serde_json::Value,
    all_failed: Option<String>,
}

/// Every sample failing is a setup error (a wrong --images, say), not a score of zero: the
/// message for it, naming the first failure.
fn all_failed(records: &[griffon_eval::runners::Record], out: &std::path::Path) -> Option<String> {
    let first = records.first().filter(|_| records.iter().all(|r| r.error.is_some()))?;
    Some(format!(
        "{}: all {} samples failed (first, id {}: {}); the zero scores are in its metrics.json",
        out.display(),
        records.len(),
        first.id,
        first.error.as_deref().unwrap_or_default()
    ))
}

/// Runs a dataset into `out`; returns the metrics when the run is not sharded.
/// How an evaluation decodes.
fn eval_run_options(a: &EvalRunArgs, model: &EvalModel) -> Result<RunOptions> {
    // the model's own template named explicitly is `auto` (one decoding, stored and compared on
    // resume as one)
    let template = a.decode.template()?.filter(|t| *t != model.own_template);
    Ok(RunOptions {
        sampling: a.decode.sampling()?,
        template,
        chunk: a.chunk.unwrap_or(RunOptions::default().chunk),
        constrained: a.constrained,
    })
}

/// What an evaluation records of its model, read once per command (the identity reads the
/// weights' fingerprint).
struct EvalModel {
    /// [`ModelArgs::identity`].
    identity: String,
    /// The template the model uses when none is given (from its config.json).
    own_template: Template,
}

impl EvalModel {
    fn of(a: &EvalRunArgs) -> Result<Self> {
        let dir = a.model.dir()?;
        griffon_model::griffon::check_model_dir(&dir)?;
        let config = dir.join("config.json");
        let own_template = griffon_model::config::GriffonConfig::from_file(&config)
            .with_context(|| format!("reading {}", config.display()))?
            .default_template();
        Ok(Self { identity: a.model.identity()?, own_template })
    }
}

/// One evaluation into `out` of the samples read from `data` (named in errors).
fn eval_run_metrics(
    a: &EvalRunArgs,
    model: &EvalModel,
    out: &std::path::Path,
    data: &std::path::Path,
    items: Vec<griffon_eval::datasets::Item>,
    annotations: Option<&std::path::Path>,
) -> Result<Option<Scored>> {
    use griffon_eval::runners;
    let shard = parse_shard(&a.shard)?;
    let opts = runners::RunnerOptions {
        out: out.to_path_buf(),
        shard,
        limit: a.limit,
        run: eval_run_options(a, model)?,
        progress: !a.quiet,
        model: Some(model.identity.clone()),
        own_template: Some(model.own_template.name().to_string()),
    };
    if items.is_empty() {
        bail!("{}: the dataset has no samples", data.display());
    }
    let checked = runners::check_items(&items, &opts)?;
    let m = a.model.load()?;
    let summary = runners::run(&m, &items, &opts, checked)?;
    say!(
        "shard {}/{}: {} samples, {} already done, {} run, {} failed -> {}",
        shard.0,
        shard.1,
        summary.items_in_shard,
        summary.already_done,
        summary.ran,
        summary.errors,
        summary.shard_file.display()
    );
    if shard.1 == 1 {
        let records = runners::merge_selected(out, &items, a.limit, opts.own_template.as_deref())?;
        let metrics = score_records(&records, out, annotations)?;
        Ok(Some(Scored { metrics, all_failed: all_failed(&records, out) }))
    } else if let Some((id, e)) = summary.first_error.filter(|_| summary.errors == summary.items_in_shard) {
        // a setup error (a wrong --images, say) fails the shard's command, as it fails an
        // unsharded run's, rather than surfacing only at `eval merge` (every sample of the
        // shard: a rerun that retries one failed sample of many is not such an error)
        bail!(
            "{}: all {} samples of the shard failed (first, id {id}: {e}); a rerun of the shard runs them again",
            summary.shard_file.display(),
            summary.items_in_shard
        )
    } else {
        say!("when every shard is done: griffon eval merge --out {}", out.display());
        Ok(None)
    }
}

/// Scores `records` (one task) and writes `out/metrics.json`.
fn score_records(
    records: &[griffon_eval::runners::Record],
    out: &std::path::Path,
    annotations: Option<&std::path::Path>,
) -> Result<serde_json::Value> {
    use griffon_eval::runners;
    runners::check_single_task(records)?;
    let metrics = runners::score(records, annotations, out)?;
    // counts the metrics report only when there are any, each with what it means
    let warnings = [
        (
            "repeats_unscored",
            "repeated boxes of records written before repeats were stored are not scored (the reference \
             scores them as false positives): run into a new --out to score them",
        ),
        (
            "records_without_size",
            "records, written before the data's image size was stored, are scored in the decoded image's \
             pixels, the others in the data's frame: run into a new --out to score all alike",
        ),
        (
            "images_of_another_size",
            "images decode to another size than their annotation gives: boxes are scaled by the annotation's \
             size, as the reference does (right for a resized copy, wrong for a rotated or other image)",
        ),
    ];
    for (key, what) in warnings {
        if let Some(n) = metrics.get(key).and_then(|v| v.as_u64()).filter(|&n| n > 0) {
            say!("warning: {n} {what}");
        }
    }
    let f = out.join("metrics.json");
    std::fs::write(&f, serde_json::to_string_pretty(&metrics)?).with_context(|| format!("writing {}", f.display()))?;
    Ok(metrics)
}

fn eval_merge(out: &std::path::Path, annotations: Option<&std::path::Path>) -> Result<()> {
    let records = griffon_eval::runners::merge(out)?;
    let metrics = score_records(&records, out, annotations)?;
    writeln!(std::io::stdout().lock(), "{}", serde_json::to_string_pretty(&metrics)?)?;
    if let Some(e) = all_failed(&records, out) {
        bail!(e);
    }
    Ok(())
}

/// A dataset reader's answer (built only for the evaluations that run).
type ItemsResult = std::result::Result<Vec<griffon_eval::datasets::Item>, griffon_eval::EvalError>;

impl EvalRunArgs {
    /// --images, which every dataset but synth's needs.
    fn images(&self) -> Result<&std::path::Path> {
        self.images.as_deref().ok_or_else(|| anyhow!("give --images: the folder of the dataset's images"))
    }
}

/// One evaluation of `griffon eval synth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
enum SynthTask {
    Detection,
    Rec,
    Count,
    CountAny,
    Reg,
}

/// The synthetic-benchmark evaluations on one split (all by default), one JSON summary.
fn eval_synth(a: &EvalRunArgs, data: &std::path::Path, split: &str, tasks: Option<&[SynthTask]>) -> Result<()> {
    use griffon_eval::datasets;
    if parse_shard(&a.shard)?.1 > 1 {
        // its summary needs every evaluation's score, which a shard does not have
        bail!("--shard {}: eval synth runs in one process (its summary scores each evaluation whole)", a.shard);
    }
    let d = data.join(split);
    let img = data.join("images").join(split);
    if !d.join("instances.json").is_file() {
        bail!("{}: no instances.json (run griffon synth --out {} first)", d.display(), data.display());
    }
    let on = |t: SynthTask| tasks.is_none_or(|ts| ts.contains(&t));
    if a.constrained && tasks.is_some_and(|ts| ts.iter().all(|t| *t == SynthTask::Reg)) {
        bail!(
            "eval synth --tasks reg: --constrained is for detection-style answers; region descriptions are free text"
        );
    }
    // every class of each scene with its own exemplar (splits written before it existed lack it):
    // asked for by name, its absence is an error before anything runs
    let any = d.join("count_any.jsonl");
    if tasks.is_some() && on(SynthTask::CountAny) && !any.is_file() {
        bail!("{}: absent (a split written before it existed)", any.display());
    }
    // a run of some tasks adds to the summary of earlier runs into the same --out (whose
    // per-task folders it resumes anyway), when they were of this model and decoding (a summary
    // written before they were stored is added to as before)
    let f = a.out.join("synth_metrics.json");
    let model = EvalModel::of(a)?;
    // the split's folder and --limit too: a run of other tasks on another split or folder, or
    // on another number of samples, would otherwise add its metrics to these without a word
    let data_id = std::fs::canonicalize(&d).unwrap_or_else(|_| d.clone()).display().to_string();
    let who = serde_json::json!({
        "model": model.identity,
        "decoding": griffon_eval::runners::decoding_of(&eval_run_options(a, &model)?),
        "data": data_id,
        "limit": a.limit,
    });
    let mut summary = match (tasks.is_some(), f.is_file()) {
        (true, true) => {
            let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            match serde_json::from_str::<serde_json::Value>(&text)
                .with_context(|| format!("reading {}", f.display()))?
            {
                serde_json::Value::Object(m) => {
                    // (a summary written before session 29 may name the model's own template)
                    let own = Some(model.own_template.name());
                    let same = |k: &str, v: &serde_json::Value| match (k, v.as_str()) {
                        ("decoding", Some(d)) => {
                            serde_json::Value::from(griffon_eval::runners::own_template_as_auto(d, own)) == who[k]
                        }
                        _ => *v == who[k],
                    };
                    // (keys a summary written before they were stored lacks are not compared)
                    for k in ["model", "decoding", "data", "limit"] {
                        if let Some(theirs) = m.get(k).filter(|v| !same(k, v)) {
                            bail!(
                                "{}: holds results of another {k} ({theirs}; this run: {}): use a new --out",
                                f.display(),
                                who[k]
                            );
                        }
                    }
                    m
                }
                _ => bail!("{}: not a JSON object", f.display()),
            }
        }
        _ => serde_json::Map::new(),
    };
    summary.extend(who.as_object().expect("built as an object").clone());
    let ann = d.join("instances.json");
    // per evaluation: samples, and those that failed or whose answers were cut (kept beside an
    // earlier summary's entries for evaluations this call does not rerun, as the metrics are)
    let runs = std::cell::RefCell::new(match summary.remove("samples") {
        Some(serde_json::Value::Object(o)) => o,
        _ => serde_json::Map::new(),
    });
    // evaluations whose every sample failed: reported after the summary is written
    let failed_all = std::cell::RefCell::new(Vec::new());
    let run = |t: SynthTask, dir: &str, items: &dyn Fn() -> ItemsResult, ann: Option<&std::path::Path>| match on(t) {
        true => {
            let scored = eval_run_metrics(a, &model, &a.out.join(dir), &d, items()?, ann)?;
            let m = scored.map(|s| {
                failed_all.borrow_mut().extend(s.all_failed);
                s.metrics
            });
            if let Some(m) = &m {
                let n = |k: &str| m[k].as_u64().unwrap_or(0);
                let (failed, cut) = (n("failed_samples"), n("truncated_samples"));
                if failed > 0 || cut > 0 {
                    say!(
                        "{dir}: {failed} samples failed to run (scored as misses), {cut} answers were cut \
                         (--max-new-tokens or the model's positions; scored as they are): see the `error` / `truncated` records in {}",
                        a.out.join(dir).display()
                    );
                }
                let mut entry = serde_json::json!({"samples": m["samples"], "failed": failed, "truncated": cut});
                // detection: boxes whose label is not a category of the benchmark (not scored)
                if let Some(unknown) = m.get("unknown_labels_dropped").and_then(|v| v.as_u64()) {
                    entry["unknown_labels"] = unknown.into();
                    if unknown > 0 {
                        say!(
                            "{dir}: {unknown} boxes have a label that is not a category of the benchmark \
                             (not scored): see the records in {}",
                            a.out.join(dir).display()
                        );
                    }
                }
                runs.borrow_mut().insert(dir.to_string(), entry);
            }
            anyhow::Ok(m)
        }
        false => Ok(None),
    };
    let detection = run(SynthTask::Detection, "detection", &|| datasets::coco(&ann, &img), Some(&ann))?;
    if let Some(m) = detection {
        let stats = m["stats"].as_array().cloned();
        // no detection at all: every AP is 0 by definition (pycocotools itself cannot load an
        // empty results list, so metrics.json carries null stats and a note); not when samples
        // failed to run (then the APs stay null: nothing was measured)
        let none = m["detections"].as_u64() == Some(0)
            && m["samples"].as_u64().is_some_and(|n| n > 0)
            && m["failed_samples"].as_u64() == Some(0);
        let stat = |i: usize| match stats.as_ref().and_then(|s| s.get(i).cloned()) {
            Some(v) => v,
            None if none => serde_json::json!(0.0),
            None => serde_json::Value::Null,
        };
        summary.insert("detection_mAP".into(), stat(0));
        summary.insert("detection_AP50".into(), stat(1));
        summary.insert("detection_APsmall".into(), stat(3));
        summary.insert("detection_APmedium".into(), stat(4));
        summary.insert("detection_APlarge".into(), stat(5));
    }
    let rec = run(SynthTask::Rec, "rec", &|| datasets::refcoco(&d.join("refcoco.jsonl"), &img), None)?;
    if let Some(m) = rec {
        summary.insert("rec_acc@0.5".into(), m["acc@0.5"].clone());
    }
    let count = run(SynthTask::Count, "count", &|| datasets::count(&d.join("count.jsonl"), &img, None), None)?;
    if let Some(m) = count {
        summary.insert("count_mae".into(), m["mae"].clone());
    }
    let count_any = match (on(SynthTask::CountAny), any.is_file()) {
        (true, true) => run(SynthTask::CountAny, "count_any", &|| datasets::count(&any, &img, None), None)?,
        (true, false) => {
            say!(
                "{}: absent (a split written before it existed): exemplar counting of every class skipped",
                any.display()
            );
            None
        }
        (false, _) => None,
    };
    if let Some(m) = count_any {
        summary.insert("exemplar_count_mae".into(), m["mae"].clone());
        summary.insert("exemplar_box_f1@0.5".into(), m["box_f1@0.5"].clone());
    }
    let reg = run(SynthTask::Reg, "reg", &|| datasets::reg(&d.join("reg_eval.jsonl"), &img), None)?;
    if let Some(m) = reg {
        summary.insert("reg_cider".into(), m["cider"].clone());
    }
    summary.insert("samples".into(), serde_json::Value::Object(runs.into_inner()));
    let v = serde_json::Value::Object(summary);
    std::fs::write(&f, serde_json::to_string_pretty(&v)?).with_context(|| format!("writing {}", f.display()))?;
    writeln!(std::io::stdout().lock(), "{}", serde_json::to_string_pretty(&v)?)?;
    let failed_all = failed_all.into_inner();
    if !failed_all.is_empty() {
        bail!(failed_all.join("\n"));
    }
    Ok(())
}

/// --chunk splits a detection category list; the other evaluations have none, and a chunk given
/// to them would be ignored (and stored in the records' decoding).
fn refuse_chunk(run: &EvalRunArgs, eval: &str) -> Result<()> {
    match run.chunk {
        Some(_) => {
            bail!("eval {eval}: --chunk is for detection category lists (eval coco, eval synth); {eval} has none")
        }
        None => Ok(()),
    }
}

fn eval_cmd(c: &EvalCommand) -> Result<()> {
    use griffon_eval::datasets;
    let mut out = std::io::stdout().lock();
    match c {
        EvalCommand::CocoResults { annotations, results, json } => {
            let report = griffon_eval::coco_results_report(annotations, results)?;
            let stats = report.stats;
            if let Some(id) = report.first_unknown_category {
                let all = if report.unknown_categories == report.detections {
                    " (all of them: every score is 0 or -1; a wrong category id mapping?)"
                } else {
                    ""
                };
                say!(
                    "warning: {} of {} detections in {} have a category_id the ground truth's categories lack \
                     (the first: {id}); they are not scored, as in pycocotools{all}",
                    report.unknown_categories,
                    report.detections,
                    results.display()
                );
            }
            if *json {
                let unknown = report.unknown_categories;
                writeln!(out, "{}", serde_json::json!({ "stats": stats, "unknown_category_detections": unknown }))?;
            } else {
                writeln!(out, "{}", griffon_eval::coco::format_coco_stats(&stats))?;
            }
        }
        EvalCommand::Cider { refs, hyps, json } => {
            let r = griffon_eval::cider_from_files(refs, hyps)?;
            if *json {
                let per: serde_json::Map<String, serde_json::Value> =
                    r.per_image.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect();
                writeln!(out, "{}", serde_json::json!({ "cider": r.score, "per_image": per }))?;
            } else {
                writeln!(out, "CIDEr-D: {:.6} over {} images", r.score, r.per_image.len())?;
            }
        }
        EvalCommand::Coco { run, annotations } => {
            drop(out);
            return eval_run(run, annotations, datasets::coco(annotations, run.images()?)?, Some(annotations));
        }
        EvalCommand::Refcoco { run, data } => {
            drop(out);
            refuse_chunk(run, "refcoco")?;
            return eval_run(run, data, datasets::refcoco(data, run.images()?)?, None);
        }
        EvalCommand::Flickr { run, sentences, annotations, ids } => {
            drop(out);
            refuse_chunk(run, "flickr")?;
            let items = datasets::flickr(sentences, annotations, run.images()?, ids.as_deref())?;
            return eval_run(run, sentences, items, None);
        }
        EvalCommand::Reg { run, data } => {
            drop(out);
            refuse_chunk(run, "reg")?;
            if run.constrained {
                bail!("eval reg: --constrained is for detection-style answers; region descriptions are free text");
            }
            return eval_run(run, data, datasets::reg(data, run.images()?)?, None);
        }
        EvalCommand::Count { run, data, split_file, split } => {
            drop(out);
            refuse_chunk(run, "count")?;
            let split = match (split_file, split) {
                (Some(f), Some(s)) => Some((f.as_path(), s.as_str())),
                (None, None) => None,
                _ => bail!("give both --split-file and --split"),
            };
            return eval_run(run, data, datasets::count(data, run.images()?, split)?, None);
        }
        EvalCommand::Synth { run, data, split, tasks } => {
            drop(out);
            return eval_synth(run, data, split, tasks.as_deref());
        }
        EvalCommand::Merge { out: dir, annotations } => {
            drop(out);
            return eval_merge(dir, annotations.as_deref());
        }
    }
    Ok(())
}

fn assemble_cmd(a: &AssembleArgs) -> Result<()> {
    let opts = griffon_model::assemble::AssembleOptions {
        llm: a.llm.clone(),
        vision: a.vision.clone(),
        out: a.out.clone(),
        projector: a.projector.clone(),
        image_size: a.image_size,
        pos_interp: a.pos_interp.parse().map_err(|e: String| anyhow!(e))?,
        seed: a.seed,
    };
    let out = griffon_model::assemble::assemble(&opts)?;
    writeln!(std::io::stdout().lock(), "wrote {}", out.display())?;
    Ok(())
}

fn resize_tower_cmd(a: &ResizeTowerArgs) -> Result<()> {
    let interp = a.pos_interp.parse().map_err(|e: String| anyhow!(e))?;
    let r = griffon_model::assemble::resize_main_tower(&a.model, &a.out, a.image_size, interp)?;
    writeln!(
        std::io::stdout().lock(),
        "wrote {}: {} resized from {g0}x{g0} to {g1}x{g1} patches ({}), tower config {}",
        r.out.display(),
        r.table,
        a.pos_interp,
        r.tower_folder.display(),
        g0 = r.grid_from,
        g1 = r.grid_to
    )?;
    Ok(())
}

fn selfcheck_cmd(a: &SelfcheckArgs) -> Result<()> {
    griffon_model::nn::set_low_precision_attention_on_cpu(a.low_precision_attention);
    let dtype = a.dtype.dtype();
    let device = parse_device(&a.device)?;
    // the GPU's own kernels against the composed forms they replace (random inputs)
    let probe = Tensor::zeros((1, 1, 1, 64), DType::BF16, &device)?;
    let mut kernel_checks: Vec<(&str, String, f64, f64, bool)> = Vec::new();
    if griffon_model::flash::applies(&probe) {
        for c in griffon_model::flash::check_against_composed(&device)? {
            kernel_checks.push(("flash attention", c.case.clone(), c.rel_err, c.tolerance, c.passed()));
        }
    }
    if griffon_model::fused::applies(&probe) {
        for c in griffon_model::fused::check_against_composed(&device)? {
            kernel_checks.push(("fused kernel", c.case.clone(), c.rel_err, c.tolerance, c.passed()));
        }
    }
    if device.is_cuda() {
        // training's attention op (its forward is the kernel above in bf16) against autograd
        for c in griffon_model::attn_grad::check_against_composed(&device)? {
            kernel_checks.push(("attention grad", c.case.clone(), c.rel_err, c.tolerance, c.passed()));
        }
    }
    // the greedy pick's ties go to the lowest id, as torch's argmax (candle's CUDA argmax alone does not)
    let ties = griffon_model::generate::check_greedy_ties(&device)?;
    kernel_checks.push(("greedy pick", "a bf16 row tied at ids 1 and 1024 picks 1".into(), 0.0, 0.0, ties));
    if griffon_model::fused::applies(&probe) {
        // last: the newest kernel (a fault there would spoil the device for the checks above)
        for c in griffon_model::fused::check_norm_matmul(&device) {
            kernel_checks.push(("fused kernel", c.case.clone(), c.rel_err, c.tolerance, c.passed()));
        }
    }
    for (kind, case, rel, tol, passed) in &kernel_checks {
        let line =
            format!("{kind}: {case:70} rel {rel:.2e} (tol {tol:.0e})  {}", if *passed { "PASS" } else { "FAIL" });
        // JSON mode keeps stdout to the fixture report
        if a.json {
            say!("{line}");
        } else {
            writeln!(std::io::stdout().lock(), "{line}")?;
        }
    }
    let kernels_failed = kernel_checks.iter().filter(|c| !c.4).count();
    let reports = griffon_model::selfcheck::check_all(&a.fixtures, &device, dtype)?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&reports)?)?;
    } else {
        for r in &reports {
            writeln!(
                out,
                "{:24} projector {:.2e}  logits {:.2e}  greedy {}/{}  input_ids {}  {}",
                r.case,
                r.projector_rel_err,
                r.logits_rel_err,
                r.greedy_prefix_match,
                r.greedy_len,
                if r.input_ids_equal { "equal" } else { "DIFFER" },
                if r.pass { "PASS" } else { "FAIL" }
            )?;
        }
    }
    if kernels_failed > 0 {
        bail!("{kernels_failed} GPU kernel checks failed (a kernel disagrees with the composed form it replaces)");
    }
    let failed = reports.iter().filter(|r| !r.pass).count();
    if failed > 0 {
        bail!(
            "{failed} of {} fixture cases failed (tolerance {:e})",
            reports.len(),
            griffon_model::selfcheck::tolerance(dtype)
        );
    }
    Ok(())
}

fn synth_cmd(a: &SynthArgs) -> Result<()> {
    let opts = griffon_train::synth::SynthOptions {
        out: a.out.clone(),
        n: a.n,
        seed: a.seed,
        size: a.size,
        max_objects: a.max_objects,
        object_scale: a.object_scale,
        only_split: a.split.clone(),
    };
    let summary = griffon_train::synth::generate(&opts).map_err(|e| anyhow!(e))?;
    writeln!(std::io::stdout().lock(), "{}", serde_json::to_string_pretty(&summary)?)?;
    Ok(())
}

fn main() -> ExitCode {
    griffon_model::pin_cpu_thread_count();
    let cli = Cli::parse();
    let r = match &cli.command {
        Command::Generate(a) => generate_cmd(a),
        Command::Detect(a) => run_task(&a.task, Task::Detect { categories: a.categories.clone() }, a.chunk),
        Command::Ground(a) => {
            let task = match (&a.expression, a.phrase.is_empty()) {
                (Some(e), true) => Ok(Task::Ground { expression: e.clone() }),
                (None, false) => Ok(Task::Phrases { phrases: a.phrase.clone() }),
                _ => Err(anyhow!("give --expression TEXT, or one or more --phrase TEXT")),
            };
            task.and_then(|t| run_task(&a.task, t, 80))
        }
        Command::Describe(a) => parse_box(&a.region).and_then(|b| run_task(&a.task, Task::Describe { region: b }, 80)),
        Command::Count(a) => a.exemplar.exemplar().and_then(|e| run_task(&a.task, Task::Count { exemplar: e }, 80)),
        Command::Chat(a) => {
            let regions = a.region.iter().map(|p| Exemplar::Image(p.clone())).collect();
            run_task(&a.task, Task::Chat { prompt: a.prompt.clone(), regions }, 80)
        }
        Command::Parse(a) => parse_cmd(a),
        Command::Train(a) => train_cmd(a),
        Command::Bench(a) => bench_cmd(a),
        Command::Eval(c) => eval_cmd(c),
        Command::Assemble(a) => assemble_cmd(a),
        Command::ResizeTower(a) => resize_tower_cmd(a),
        Command::Selfcheck(a) => selfcheck_cmd(a),
        Command::Synth(a) => synth_cmd(a),
        Command::Serve(a) => serve_cmd(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say!("error: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by ": ", each cause left out when the text so far already
/// holds it: most of our errors write their cause into their own message (a path and then the
/// OS's reason), and anyhow's `{:#}` would print it two or three times.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn argument_definitions_are_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    /// An unreadable image is reported once (path, what failed, the OS's reason), and a context
    /// added without the cause keeps it.
    #[test]
    fn error_causes_are_printed_once() {
        let e = griffon_model::resample::load_rgb(std::path::Path::new("/nonexistent/x.png")).unwrap_err();
        let e = anyhow::Error::from(griffon_model::error::Error::from(e));
        let text = super::error_text(&e);
        assert_eq!(text.matches("/nonexistent/x.png").count(), 1, "{text}");
        assert_eq!(text.matches("No such file").count(), 1, "{text}");
        let io = std::io::Error::new(std::io::ErrorKind::Other, "disk on fire");
        let text = super::error_text(&anyhow::Error::from(io).context("writing out.json"));
        assert_eq!(text, "writing out.json: disk on fire");
    }
}

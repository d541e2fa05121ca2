//! `griffon bench`: timings of the released shapes with random weights — vision encoder at the
//! config's resolution, projector, prefill of the image tokens + 60 text tokens (projector
//! included, logits at every position as the reference; and as generation runs it), greedy decode
//! tokens/s over N tokens, peak memory. The shapes and protocol follow
//! shared/bench/torch_reference_bench.py (median of repeated runs after warm-up; decode rate =
//! (N - 1) / (time(N tokens) - time(1 token))), so the two can be compared on one machine.

use crate::clip::{ClipVision, ClipVisionConfig};
use crate::config::{Gemma2Config, LlamaConfig, LlmConfig, ProjectorType};
use crate::error::{invalid, Result};
use crate::eva02::{Eva02Config, Eva02Vision};
use crate::generate::{generate, SamplingOptions};
use crate::griffon::VisionTower;
use crate::layout::{clip_layout, eva02_layout, llm_layout, projector_layout, random_tensors};
use crate::llm::Llm;
use crate::loader::Checkpoint;
use crate::nn::Act;
use crate::projector::Projector;
use crate::resample::Interp;
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use std::time::Instant;

pub struct BenchConfig {
    pub name: &'static str,
    pub tower: BenchTower,
    pub llm: LlmConfig,
}

/// The vision tower of a benchmark configuration.
pub enum BenchTower {
    Clip(ClipVisionConfig),
    /// EVA02-CLIP with its stored geometry, run at `run_size` (position table resized).
    Eva02 {
        cfg: Eva02Config,
        run_size: usize,
    },
}

impl BenchTower {
    fn hidden(&self) -> usize {
        match self {
            BenchTower::Clip(c) => c.hidden_size,
            BenchTower::Eva02 { cfg, .. } => cfg.hidden_size,
        }
    }
    fn run_size(&self) -> usize {
        match self {
            BenchTower::Clip(c) => c.image_size,
            BenchTower::Eva02 { run_size, .. } => *run_size,
        }
    }
}

fn clip(hidden: usize, inter: usize, layers: usize, heads: usize, image: usize) -> ClipVisionConfig {
    ClipVisionConfig {
        hidden_size: hidden,
        intermediate_size: inter,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        image_size: image,
        patch_size: 14,
        layer_norm_eps: 1e-5,
        hidden_act: Act::QuickGelu,
    }
}

fn llama(vocab: usize, hidden: usize, inter: usize, layers: usize, heads: usize, eps: f64) -> LlmConfig {
    LlmConfig::Llama(LlamaConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: inter,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: heads,
        head_dim: hidden / heads,
        rms_norm_eps: eps,
        rope_theta: 10000.0,
        hidden_act: Act::Silu,
        attention_bias: false,
        mlp_bias: false,
        tie_word_embeddings: false,
        qkv_bias: false,
    })
}

/// The benchmark shapes: `gemma2-9b` (Griffon-G), `llama2-13b` (the paper), `tiny` (the
/// reference script's `--tiny`: CLIP 64-wide at 224 px, a 2-layer 128-wide Llama).
pub fn preset(name: &str) -> Option<BenchConfig> {
    Some(match name {
        "gemma2-9b" => BenchConfig {
            name: "gemma2-9b",
            tower: BenchTower::Clip(clip(1024, 4096, 24, 16, 1022)),
            llm: LlmConfig::Gemma2(Gemma2Config {
                vocab_size: 256000,
                hidden_size: 3584,
                intermediate_size: 14336,
                num_hidden_layers: 42,
                num_attention_heads: 16,
                num_key_value_heads: 8,
                head_dim: 256,
                rms_norm_eps: 1e-6,
                rope_theta: 10000.0,
                query_pre_attn_scalar: 256.0,
                attn_logit_softcapping: Some(50.0),
                final_logit_softcapping: Some(30.0),
                sliding_window: Some(4096),
                sliding_layers: (0..42).map(|i| i % 2 == 0).collect(),
                hidden_act: Act::GeluTanh,
                tie_word_embeddings: true,
            }),
        },
        "llama2-13b" => BenchConfig {
            name: "llama2-13b",
            tower: BenchTower::Clip(clip(1024, 4096, 24, 16, 1022)),
            llm: llama(32000, 5120, 13824, 40, 40, 1e-5),
        },
        // the Griffon v2 paper configuration: EVA02-CLIP-L/14-336 run at 1022 px + Llama-2-13B
        "eva02-llama2-13b" => BenchConfig {
            name: "eva02-llama2-13b",
            tower: BenchTower::Eva02 { cfg: Eva02Config::large_patch14_336(), run_size: 1022 },
            llm: llama(32000, 5120, 13824, 40, 40, 1e-5),
        },
        "tiny" => BenchConfig {
            name: "tiny",
            tower: BenchTower::Clip(clip(64, 128, 2, 4, 224)),
            llm: llama(1000, 128, 256, 2, 4, 1e-6),
        },
        "tiny-eva02" => BenchConfig {
            name: "tiny-eva02",
            tower: BenchTower::Eva02 {
                cfg: Eva02Config {
                    hidden_size: 64,
                    intermediate_size: 170,
                    num_hidden_layers: 2,
                    num_attention_heads: 4,
                    image_size: 224,
                    patch_size: 14,
                    layer_norm_eps: 1e-6,
                    rope_ref_grid: Some(16),
                    rope_temperature: 10000.0,
                },
                run_size: 224,
            },
            llm: llama(1000, 128, 256, 2, 4, 1e-6),
        },
        _ => return None,
    })
}

pub const PRESETS: [&str; 5] = ["gemma2-9b", "llama2-13b", "eva02-llama2-13b", "tiny", "tiny-eva02"];

/// What one benchmark run measures and how often.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Tokens for the decode rate (at least 2).
    pub decode_tokens: usize,
    /// Seed of the random weights.
    pub seed: u64,
    /// Measure one part alone (the others are reported as null): for a profiler, which should
    /// see that part's kernels only.
    pub only: Option<BenchPart>,
    /// One warm-up and one timed run per measure instead of the reference's protocol (for a
    /// profiler, which slows every kernel down; the times are then single runs).
    pub quick: bool,
}

/// A part of [`run`]'s measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchPart {
    Vision,
    Projector,
    Prefill,
    Decode,
}

impl BenchPart {
    pub const NAMES: [&'static str; 4] = ["vision", "projector", "prefill", "decode"];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "vision" => BenchPart::Vision,
            "projector" => BenchPart::Projector,
            "prefill" => BenchPart::Prefill,
            "decode" => BenchPart::Decode,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub config: String,
    pub device: String,
    pub dtype: String,
    pub image_size: usize,
    pub vision_ms: Option<f64>,
    pub projector_ms: Option<f64>,
    pub prefill_tokens: usize,
    /// Projector + prompt embeddings + LLM forward with logits at every position: the scope of
    /// the reference's prefill (HF `model(inputs_embeds=...)`).
    pub prefill_ms: Option<f64>,
    /// The same with the last position's logits only, as generation runs it.
    pub prefill_last_ms: Option<f64>,
    pub decode_tokens: usize,
    pub decode_tok_per_s: Option<f64>,
    /// One decode step (the LLM forward of one token after the prefill, last logits), median of
    /// 16: until the device has finished it ...
    pub decode_step_ms: Option<f64>,
    /// ... and until the host has issued its kernels, before waiting for the device. When the
    /// two are close, the step is bound by issuing kernels, not by the device.
    pub decode_step_issue_ms: Option<f64>,
    /// Peak resident memory of the process (VmHWM), MiB; CPU only.
    pub peak_rss_mib: Option<f64>,
}

fn median(mut ts: Vec<f64>) -> f64 {
    ts.sort_by(|a, b| a.total_cmp(b));
    ts[ts.len() / 2]
}

fn median_ms(warm: usize, rep: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..warm {
        f()?;
    }
    let mut ts = Vec::with_capacity(rep);
    for _ in 0..rep {
        let t = Instant::now();
        f()?;
        ts.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(ts))
}

/// The part `GRIFFON_PROFILE_PART` (vision, prefill or decode) names: that part runs once more
/// between `cuProfilerStart` / `cuProfilerStop`, so `ncu --profile-from-start off` sees exactly
/// one vision forward, one prefill (last-position logits) or one decode step and nothing of the
/// weights' making or the timing runs. CUDA builds only; elsewhere the variable is ignored.
fn profile_part() -> Option<BenchPart> {
    static PART: crate::fused::EnvSwitch =
        crate::fused::EnvSwitch::new("GRIFFON_PROFILE_PART", &["vision", "projector", "prefill", "decode"]);
    BenchPart::parse(PART.get()?)
}

/// Runs `f` once inside the profiler's capture range when `part` is the one to profile.
fn profiled(part: BenchPart, device: &Device, f: &mut dyn FnMut() -> Result<()>) -> Result<()> {
    if profile_part() != Some(part) || !device.is_cuda() {
        return Ok(());
    }
    profiler_range(device, true)?;
    let r = f();
    profiler_range(device, false)?;
    eprintln!("bench: one {part:?} run inside the profiler's capture range");
    r
}

/// Opens (`start`) or closes the profiler's capture range (`cuProfilerStart` / `cuProfilerStop`)
/// after waiting for the device, so the range holds exactly the work issued in between. A no-op
/// off CUDA devices (and in builds without the `cuda` feature).
pub fn profiler_range(device: &Device, start: bool) -> Result<()> {
    if !device.is_cuda() {
        return Ok(());
    }
    sync(device)?;
    #[cfg(not(feature = "cuda"))]
    let _ = start;
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::{profiler_start, profiler_stop};
        let r = if start { profiler_start() } else { profiler_stop() };
        r.map_err(|e| {
            crate::error::Error::Invalid(format!("cuProfiler{}: {e}", if start { "Start" } else { "Stop" }))
        })?;
    }
    Ok(())
}

fn sync(device: &Device) -> Result<()> {
    device.synchronize()?;
    Ok(())
}

pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Runs the benchmark on random weights.
pub fn run(cfg: &BenchConfig, device: &Device, dtype: DType, opts: &BenchOptions) -> Result<BenchResult> {
    let (decode_tokens, seed) = (opts.decode_tokens, opts.seed);
    let wants = |p: BenchPart| opts.only.is_none_or(|o| o == p);
    // (warm-up, timed) runs: the reference's protocol, or one of each for a profiler
    let reps = |warm: usize, rep: usize| if opts.quick { (1, 1) } else { (warm, rep) };
    // the median time of `f` when `part` is measured
    let timed = |part: BenchPart, warm: usize, rep: usize, f: &mut dyn FnMut() -> Result<()>| -> Result<Option<f64>> {
        if !wants(part) {
            return Ok(None);
        }
        let (w, r) = reps(warm, rep);
        Ok(Some(median_ms(w, r, f)?))
    };
    if decode_tokens < 2 {
        return invalid("decode tokens must be at least 2");
    }
    let h = match &cfg.llm {
        LlmConfig::Gemma2(g) => g.hidden_size,
        LlmConfig::Llama(l) => l.hidden_size,
    };
    let gemma = matches!(cfg.llm, LlmConfig::Gemma2(_));
    let proj_kind = ProjectorType::ConvReduce { pad: 1 };
    let (vision_prefix, mut layout) = match &cfg.tower {
        BenchTower::Clip(c) => {
            let p = "model.vision_tower.vision_tower.vision_model";
            (p, clip_layout(p, c))
        }
        BenchTower::Eva02 { cfg: c, .. } => {
            let p = "model.vision_tower.vision_tower";
            (p, eva02_layout(p, c))
        }
    };
    layout.extend(projector_layout(&proj_kind, cfg.tower.hidden(), h));
    layout.extend(llm_layout(&cfg.llm));
    let t0 = Instant::now();
    let tensors = random_tensors(&layout, gemma, dtype, device, seed)?;
    let ck = Checkpoint::from_tensors(tensors, device, dtype)?;
    let run_size = cfg.tower.run_size();
    let tower = match &cfg.tower {
        BenchTower::Clip(c) => {
            // hidden_states[-2]: the last layer is never run
            VisionTower::Clip(ClipVision::load_upto(
                &ck.scope(vision_prefix),
                c,
                run_size,
                Interp::Bilinear,
                c.num_hidden_layers - 1,
            )?)
        }
        BenchTower::Eva02 { cfg: c, .. } => VisionTower::Eva02(Eva02Vision::load_upto(
            &ck.scope(vision_prefix),
            c,
            run_size,
            Interp::Bilinear,
            c.num_hidden_layers - 1,
        )?),
    };
    let projector = Projector::load(&ck.scope("model.mm_projector"), &proj_kind, cfg.tower.hidden(), h)?;
    let llm = Llm::load(&ck, &cfg.llm)?;
    drop(ck);
    sync(device)?;
    eprintln!("bench {}: random weights made and loaded in {:.1} s", cfg.name, t0.elapsed().as_secs_f64());

    let s = run_size;
    let pixels = Tensor::randn(0f32, 1.0, (1, 3, s, s), device)?.to_dtype(dtype)?;
    let name = cfg.name;
    let vision_ms = timed(BenchPart::Vision, 2, 5, &mut || {
        tower.patch_features(&pixels, -2, false)?;
        sync(device)
    })?;
    if let Some(ms) = vision_ms {
        eprintln!("bench {name}: vision encoder {ms:.2} ms");
    }
    profiled(BenchPart::Vision, device, &mut || {
        tower.patch_features(&pixels, -2, false)?;
        Ok(())
    })?;
    let feats = tower.patch_features(&pixels, -2, false)?;
    let projector_ms = timed(BenchPart::Projector, 2, 5, &mut || {
        projector.forward(&feats)?;
        sync(device)
    })?;
    if let Some(ms) = projector_ms {
        eprintln!("bench {name}: projector {ms:.2} ms");
    }
    let vocab = llm.vocab_size() as u32;
    let prompt: Vec<u32> = (0..60u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let prompt = Tensor::new(prompt.as_slice(), device)?;
    let embeds_of = |feats: &Tensor| -> Result<Tensor> {
        let text = llm.embed_tokens(&prompt)?.unsqueeze(0)?;
        Ok(Tensor::cat(&[&projector.forward(feats)?, &text], 1)?)
    };
    let embeds = embeds_of(&feats)?;
    let prefill_tokens = embeds.dim(1)?;
    // the reference's scope (all_logits): projector, embeddings and a forward with logits at every
    // position; what generation runs: the same with the last position's logits only
    let prefill = |all_logits: bool| -> Result<()> {
        let mut cache = llm.new_cache();
        llm.forward_embeds(&embeds_of(&feats)?, &mut cache, all_logits)?;
        sync(device)
    };
    let prefill_ms = timed(BenchPart::Prefill, 1, 3, &mut || prefill(true))?;
    let prefill_last_ms = timed(BenchPart::Prefill, 1, 3, &mut || prefill(false))?;
    if let (Some(all), Some(last)) = (prefill_ms, prefill_last_ms) {
        eprintln!("bench {name}: prefill {prefill_tokens} tokens {all:.2} ms, last position only {last:.2} ms");
    }
    profiled(BenchPart::Prefill, device, &mut || prefill(false))?;
    let (mut decode_tok_per_s, mut decode_step_ms, mut decode_step_issue_ms) = (None, None, None);
    if wants(BenchPart::Decode) {
        let gen_ms = |n: usize| -> Result<f64> {
            let sampling = SamplingOptions { max_new_tokens: n, ..Default::default() };
            let (w, r) = reps(1, 2);
            median_ms(w, r, || {
                generate(&llm, &embeds, &[], &sampling, |_| {})?;
                sync(device)
            })
        };
        let t_n = gen_ms(decode_tokens)?;
        eprintln!("bench {name}: {decode_tokens} tokens generated in {t_n:.1} ms");
        let t_1 = gen_ms(1)?;
        decode_tok_per_s = Some((decode_tokens - 1) as f64 / ((t_n - t_1) / 1e3).max(1e-9));
        // one step at a time after the prefill: issued, then finished
        let mut cache = llm.new_cache();
        llm.forward_embeds(&embeds, &mut cache, false)?;
        let token = llm.embed_tokens(&Tensor::new(&[7u32 % vocab], device)?)?.unsqueeze(0)?;
        sync(device)?;
        let steps = if opts.quick { 2 } else { 16 };
        let (mut issue, mut total) = (Vec::with_capacity(steps), Vec::with_capacity(steps));
        for _ in 0..steps {
            let t = Instant::now();
            llm.forward_embeds(&token, &mut cache, false)?;
            issue.push(t.elapsed().as_secs_f64() * 1e3);
            sync(device)?;
            total.push(t.elapsed().as_secs_f64() * 1e3);
        }
        profiled(BenchPart::Decode, device, &mut || {
            llm.forward_embeds(&token, &mut cache, false)?;
            Ok(())
        })?;
        let (i, t) = (median(issue), median(total));
        eprintln!("bench {name}: one decode step {t:.2} ms, issued in {i:.2} ms");
        (decode_step_ms, decode_step_issue_ms) = (Some(t), Some(i));
    }
    Ok(BenchResult {
        config: cfg.name.to_string(),
        device: format!("{device:?}"),
        dtype: format!("{dtype:?}").to_lowercase(),
        image_size: s,
        vision_ms,
        projector_ms,
        prefill_tokens,
        prefill_ms,
        prefill_last_ms,
        decode_tokens,
        decode_tok_per_s,
        decode_step_ms,
        decode_step_issue_ms,
        peak_rss_mib: if device.is_cpu() { peak_rss_mib() } else { None },
    })
}

//! Autoregressive decoding with the KV cache: greedy by default, temperature / top-k / top-p
//! sampling on request (HF's order and defaults: top-k 50, top-p 1); stops at an end-of-sequence id, the template's end-of-turn, the token budget, or
//! the model's last position (`max_position_embeddings`).
//! Each generated token's probability (softmax of the step's logits) is recorded, for the
//! reference's confidence score.

use crate::error::{invalid, Error, Result};
use crate::llm::Llm;
use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone)]
pub struct SamplingOptions {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    /// Sampling keeps the `top_k` most likely tokens (0: all); HF generate's default is 50.
    pub top_k: usize,
    pub top_p: f64,
    pub seed: u64,
}

/// HF `GenerationConfig`'s `top_k` when none is given.
pub const DEFAULT_TOP_K: usize = 50;

impl Default for SamplingOptions {
    fn default() -> Self {
        Self { max_new_tokens: 512, temperature: 0.0, top_k: DEFAULT_TOP_K, top_p: 1.0, seed: 0 }
    }
}

impl SamplingOptions {
    /// The first setting out of range, as its name and what is wrong with it, e.g.
    /// `("temperature", "must be >= 0, got -1")`; the CLI and the server word the name their way.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.max_new_tokens == 0 {
            return Some(("max_new_tokens", "must be at least 1".to_string()));
        }
        if self.temperature < 0.0 || !self.temperature.is_finite() {
            return Some(("temperature", format!("must be >= 0, got {}", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Some(("top_p", format!("must be in (0, 1], got {}", self.top_p)));
        }
        // greedy decoding reads neither: accepting them would pass off a greedy answer as sampled
        let sampling_only = [
            ("top_k", self.top_k != DEFAULT_TOP_K, self.top_k.to_string()),
            ("top_p", self.top_p != 1.0, self.top_p.to_string()),
            ("seed", self.seed != 0, self.seed.to_string()),
        ];
        match sampling_only.into_iter().find(|(_, set, _)| self.temperature == 0.0 && *set) {
            Some((name, _, got)) => {
                Some((name, format!("applies when sampling only: give a temperature > 0 too (0 is greedy), got {got}")))
            }
            None => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// An id from the stop set was generated (it is the last token).
    StopToken,
    MaxTokens,
    /// A decoding constraint rejected every token.
    NoAllowedToken,
    /// The sequence filled the model's positions (`max_position_embeddings`, this many, prompt
    /// included): the last token was chosen but there is no position to read it at.
    MaxPositions(usize),
}

#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated ids, including the stop token when there was one.
    pub tokens: Vec<u32>,
    /// Probability of each generated token under the model (unprocessed logits).
    pub probs: Vec<f32>,
    pub stop: StopReason,
}

fn pick(logits: &[f32], opts: &SamplingOptions, rng: &mut StdRng) -> u32 {
    if opts.temperature <= 0.0 {
        // First maximum, as torch.argmax.
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    // scaled in f64: a temperature below f32's range (1e-50) would be 0 in f32 and make NaNs
    let t = opts.temperature;
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(usize, f32)> =
        logits.iter().enumerate().map(|(i, &l)| (i, (((l - max) as f64) / t).exp() as f32)).collect();
    let z: f32 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= z);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    if opts.top_k > 0 && opts.top_k < probs.len() {
        // HF TopKLogitsWarper (before top-p, which then reads the kept tokens' renormalized
        // mass): it removes the tokens below the k-th, so those tied with it stay
        let kth = probs[opts.top_k - 1].1;
        let keep = opts.top_k + probs[opts.top_k..].iter().take_while(|p| p.1 >= kth).count();
        probs.truncate(keep);
        let kept: f32 = probs.iter().map(|p| p.1).sum();
        probs.iter_mut().for_each(|p| p.1 /= kept);
    }
    if opts.top_p < 1.0 {
        // HF TopPLogitsWarper: keep the smallest prefix whose mass reaches top_p (at least one).
        let mut acc = 0.0;
        let mut keep = 0;
        for p in &probs {
            keep += 1;
            acc += p.1;
            if acc >= opts.top_p as f32 {
                break;
            }
        }
        probs.truncate(keep.max(1));
    }
    let mass: f32 = probs.iter().map(|p| p.1).sum();
    let mut r = rng.random::<f32>() * mass;
    for p in &probs {
        r -= p.1;
        if r <= 0.0 {
            return p.0 as u32;
        }
    }
    probs.last().map(|p| p.0 as u32).unwrap_or(0)
}

/// The token chosen from logits [1, 1, V] on the host (the whole row comes back) and its
/// probability (f64 softmax), or None when `allow` refuses every token.
fn choose_on_host(
    logits: &Tensor,
    tokens: &[u32],
    opts: &SamplingOptions,
    rng: &mut StdRng,
    allow: &mut impl FnMut(&[u32], u32) -> bool,
) -> Result<Option<(u32, f32)>> {
    let mut row: Vec<f32> = logits.squeeze(0)?.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?;
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let z: f64 = row.iter().map(|&l| ((l - max) as f64).exp()).sum();
    check_finite(z, tokens.len())?;
    let raw = row.clone();
    let prob_of = |t: u32| (((raw[t as usize] - max) as f64).exp() / z) as f32;
    let first = pick(&row, opts, rng);
    if allow(tokens, first) {
        return Ok(Some((first, prob_of(first))));
    }
    let chosen = if opts.temperature <= 0.0 {
        // next most likely tokens, ties in index order as argmax
        let mut order: Vec<u32> = (0..row.len() as u32).collect();
        order.sort_by(|a, b| row[*b as usize].total_cmp(&row[*a as usize]));
        order.into_iter().skip(1).find(|&t| allow(tokens, t))
    } else {
        row[first as usize] = f32::NEG_INFINITY;
        let mut found = None;
        for _ in 1..row.len() {
            let t = pick(&row, opts, rng);
            if row[t as usize] == f32::NEG_INFINITY {
                break; // everything left is masked
            }
            if allow(tokens, t) {
                found = Some(t);
                break;
            }
            row[t as usize] = f32::NEG_INFINITY;
        }
        found
    };
    Ok(chosen.map(|t| (t, prob_of(t))))
}

/// The most likely token of logits [1, 1, V] and its probability, computed where the logits are:
/// the argmax of the f32 logits (as the reference's greedy `argmax`) and its softmax
/// probability `1 / sum(exp(l - max))`, brought to the host together (one copy, one wait). Ties go
/// to the lowest id, as torch's argmax: candle's CUDA argmax keeps the tied id of the lowest
/// thread (`id mod 1024`), and bf16 logits tie at the top in practice (Gemma's capped logits are
/// 0.125 apart), so the ties at the maximum are counted with it and, when there are several, the
/// row is scanned on the host for its first maximum. Not candle's
/// fused softmax: it gives one warp to a row, and a 256k-wide vocabulary row took it about 4 ms
/// per token on the H100 (docs/PERFORMANCE.md), a third of a Gemma-2-9B decode step.
/// `generated` counts the tokens generated before (named by the non-finite-logits error).
pub fn greedy_on_device(logits: &Tensor, generated: usize) -> Result<(u32, f32)> {
    let row = logits.flatten_all()?.to_dtype(DType::F32)?;
    let vocab = row.dim(0)?;
    if vocab == 0 || vocab > 1 << 24 {
        return invalid(format!("greedy pick over {vocab} logits (1 to 2^24: ids travel as f32)"));
    }
    let max = row.max_keepdim(0)?;
    let z = row.broadcast_sub(&max)?.exp()?.sum_keepdim(0)?;
    let tok = row.argmax_keepdim(0)?.to_dtype(DType::F32)?;
    let ties = row.broadcast_eq(&max)?.to_dtype(DType::F32)?.sum_keepdim(0)?;
    let v = Tensor::cat(&[&tok, &z, &ties], 0)?.to_vec1::<f32>()?;
    check_finite(v[1] as f64, generated)?;
    let tok = if v[2] > 1.0 {
        // a tie at the top (rare): the row to the host, its first maximum
        let host = row.to_vec1::<f32>()?;
        let top = host.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        host.iter().position(|&l| l == top).unwrap_or(0) as u32
    } else {
        v[0] as u32
    };
    Ok((tok, 1.0 / v[1]))
}

/// [`greedy_on_device`] on `device` over a 4096-wide row whose maximum is tied at ids 1 and 1024
/// (candle's CUDA argmax alone returns 1024: thread 0 scans ids 0, 1024, ..., thread 1 ids 1,
/// 1025, ..., and the reduction keeps the lower thread): whether it picks 1, as torch's argmax.
/// For `griffon selfcheck` on the GPU machine.
pub fn check_greedy_ties(device: &candle_core::Device) -> Result<bool> {
    let mut row: Vec<f32> = (0..4096).map(|i| ((i * 37) % 101) as f32 / 101.0).collect();
    row[1] = 2.0;
    row[1024] = 2.0;
    let t = Tensor::from_vec(row, (1, 1, 4096), device)?.to_dtype(DType::BF16)?;
    Ok(greedy_on_device(&t, 0)?.0 == 1)
}

/// `z`, the softmax normaliser `sum(exp(l - max))` of a step's logits, is finite and >= 1 unless
/// a logit is NaN or +inf (or every one is -inf): then no token can be chosen, and the decode
/// stops with an error instead of an argmax over NaNs (token 0, or an empty answer that reads as
/// "nothing found"). `generated` counts the tokens generated before.
fn check_finite(z: f64, generated: usize) -> Result<()> {
    if z.is_finite() && z >= 1.0 {
        return Ok(());
    }
    invalid(format!(
        "the model's logits are not finite (NaN or +inf) at generated token {}: broken weights or config (norm \
         epsilon, soft-capping, attention scale)",
        generated + 1
    ))
}

/// Decodes after the prompt embeddings `prefix` [1, T, H]. `on_token` is called with each
/// generated id as soon as it is chosen (it streams; see [`crate::tokenize::TextStream`]).
pub fn generate(
    llm: &Llm,
    prefix: &Tensor,
    stop_ids: &[u32],
    opts: &SamplingOptions,
    on_token: impl FnMut(u32),
) -> Result<Generation> {
    generate_streaming(llm, prefix, stop_ids, opts, |_, _| true, on_token)
}

/// As [`generate`], with a constraint: `allow(ids_so_far, candidate)` must accept a token for it
/// to be chosen. Greedy takes the most likely allowed token; sampling redraws until allowed.
/// When nothing is allowed the decode stops ([`StopReason::NoAllowedToken`]).
pub fn generate_with(
    llm: &Llm,
    prefix: &Tensor,
    stop_ids: &[u32],
    opts: &SamplingOptions,
    allow: impl FnMut(&[u32], u32) -> bool,
) -> Result<Generation> {
    generate_streaming(llm, prefix, stop_ids, opts, allow, |_| {})
}

/// [`generate_with`] that also calls `on_token` with each id as soon as it is chosen.
pub fn generate_streaming(
    llm: &Llm,
    prefix: &Tensor,
    stop_ids: &[u32],
    opts: &SamplingOptions,
    mut allow: impl FnMut(&[u32], u32) -> bool,
    mut on_token: impl FnMut(u32),
) -> Result<Generation> {
    if prefix.dim(0)? != 1 {
        return invalid(format!("generate expects one sequence, got a batch of {}", prefix.dim(0)?));
    }
    if !(opts.top_p > 0.0 && opts.top_p <= 1.0) {
        return Err(Error::Request(format!("top-p must be in (0, 1], got {}", opts.top_p)));
    }
    let prompt_len = prefix.dim(1)?;
    if prompt_len == 0 {
        // nothing to predict the first token from
        return Err(Error::Request("generate needs a prompt of at least one position, got none".into()));
    }
    if let Some(max) = llm.max_positions().filter(|&m| prompt_len > m) {
        return Err(Error::Request(format!(
            "the prompt takes {prompt_len} positions, more than the model's max_position_embeddings {max}"
        )));
    }
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut cache = llm.new_cache();
    let mut logits = llm.forward_embeds(prefix, &mut cache, false)?;
    let mut tokens = Vec::new();
    let mut probs = Vec::new();
    // On a GPU, greedy decoding picks on the device and brings back two numbers per token
    // instead of the whole vocabulary row (1 MB for Gemma's 256k) and a host softmax over it;
    // the row comes back only when the constraint refuses the argmax.
    let on_device = !prefix.device().is_cpu() && opts.temperature <= 0.0;
    for _ in 0..opts.max_new_tokens {
        let device_pick = match on_device {
            true => Some(greedy_on_device(&logits, tokens.len())?).filter(|(t, _)| allow(&tokens, *t)),
            false => None,
        };
        let choice = match device_pick {
            Some(c) => Some(c),
            None => choose_on_host(&logits, &tokens, opts, &mut rng, &mut allow)?,
        };
        let Some((tok, prob)) = choice else {
            return Ok(Generation { tokens, probs, stop: StopReason::NoAllowedToken });
        };
        probs.push(prob);
        tokens.push(tok);
        on_token(tok);
        if stop_ids.contains(&tok) {
            return Ok(Generation { tokens, probs, stop: StopReason::StopToken });
        }
        // the new token would be read at position prompt_len + tokens.len() - 1
        if let Some(max) = llm.max_positions().filter(|&m| prompt_len + tokens.len() > m) {
            return Ok(Generation { tokens, probs, stop: StopReason::MaxPositions(max) });
        }
        let ids = Tensor::new(&[tok], prefix.device())?;
        let emb = llm.embed_tokens(&ids)?.unsqueeze(0)?.to_dtype(prefix.dtype())?;
        logits = llm.forward_embeds(&emb, &mut cache, false)?;
    }
    Ok(Generation { tokens, probs, stop: StopReason::MaxTokens })
}

#[cfg(test)]
mod device_greedy_tests {
    use super::*;
    use candle_core::Device;

    /// The on-device greedy pick equals the host path's (argmax, ties to the lowest id) and its
    /// probability agrees with the f64 host softmax within 1e-6 relative.
    #[test]
    fn greedy_on_device_matches_the_host_pick() {
        for seed in 0..20u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut row: Vec<f32> = (0..1000).map(|_| rng.random_range(-8.0f32..8.0)).collect();
            if seed % 4 == 0 {
                row[17] = 9.0; // a tie at the maximum: the lowest id wins
                row[400] = 9.0;
            }
            if seed % 4 == 1 {
                row[999] = 9.0; // the tie path's host scan: its first maximum
                row[1] = 9.0;
            }
            let t = Tensor::from_vec(row.clone(), (1, 1, 1000), &Device::Cpu).unwrap();
            let (tok, p) = greedy_on_device(&t, 0).unwrap();
            let host = pick(&row, &SamplingOptions::default(), &mut rng);
            assert_eq!(tok, host, "seed {seed}");
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let z: f64 = row.iter().map(|&l| ((l - max) as f64).exp()).sum();
            let want = (((row[tok as usize] - max) as f64).exp() / z) as f32;
            assert!((p - want).abs() <= 1e-6 * want, "seed {seed}: {p} vs {want}");
        }
    }

    #[test]
    fn greedy_tie_check_passes_on_the_cpu() {
        assert!(check_greedy_ties(&Device::Cpu).unwrap());
    }

    /// Top-k keeps the k most likely tokens (HF's TopKLogitsWarper, before top-p, which reads the
    /// kept tokens' renormalized mass); greedy refuses a top-k other than the default.
    #[test]
    fn top_k_keeps_the_most_likely_tokens() {
        let row = [0.0f32, 3.0, 2.9, 1.0, 2.8];
        let opts = |top_k: usize, top_p: f64| SamplingOptions { temperature: 50.0, top_k, top_p, ..Default::default() };
        let drawn = |o: SamplingOptions| {
            let mut rng = StdRng::seed_from_u64(3);
            (0..400).map(|_| pick(&row, &o, &mut rng)).collect::<std::collections::BTreeSet<u32>>()
        };
        assert_eq!(drawn(opts(0, 1.0)).len(), 5, "at a high temperature every token is drawn");
        assert_eq!(drawn(opts(2, 1.0)), [1, 2].into());
        assert_eq!(drawn(opts(1, 1.0)), [1].into());
        // among the 3 kept (about a third each) top-p 0.5 keeps two: over all five it would keep three
        assert_eq!(drawn(opts(3, 0.5)), [1, 2].into());
        assert_eq!(drawn(opts(0, 0.5)), [1, 2, 4].into());
        // a token tied with the k-th stays, as HF's warper removes only those below it
        let tied = [1.0f32, 1.0, 0.0];
        let mut rng = StdRng::seed_from_u64(5);
        let got: std::collections::BTreeSet<u32> = (0..200).map(|_| pick(&tied, &opts(1, 1.0), &mut rng)).collect();
        assert_eq!(got, [0, 1].into());
        let greedy = SamplingOptions { top_k: 5, ..Default::default() };
        assert!(greedy.problem().is_some_and(|(n, m)| n == "top_k" && m.contains("applies when sampling only")));
    }

    /// A NaN or +inf logit is an error on both pick paths, not token 0 or an empty answer;
    /// -inf (a masked token) is not.
    #[test]
    fn non_finite_logits_are_an_error() {
        let mut rng = StdRng::seed_from_u64(0);
        for bad in [f32::NAN, f32::INFINITY] {
            let mut row = vec![0.5f32; 10];
            row[3] = bad;
            let t = Tensor::from_vec(row, (1, 1, 10), &Device::Cpu).unwrap();
            let e = greedy_on_device(&t, 4).unwrap_err().to_string();
            assert!(e.contains("not finite (NaN or +inf) at generated token 5"), "{e}");
            let e = choose_on_host(&t, &[1, 2], &SamplingOptions::default(), &mut rng, &mut |_, _| true)
                .unwrap_err()
                .to_string();
            assert!(e.contains("not finite (NaN or +inf) at generated token 3"), "{e}");
        }
        let mut row = vec![0.5f32; 10];
        row[3] = f32::NEG_INFINITY;
        row[7] = 2.0;
        let t = Tensor::from_vec(row, (1, 1, 10), &Device::Cpu).unwrap();
        assert_eq!(greedy_on_device(&t, 0).unwrap().0, 7);
        let got = choose_on_host(&t, &[], &SamplingOptions::default(), &mut rng, &mut |_, _| true).unwrap();
        assert_eq!(got.map(|c| c.0), Some(7));
    }
}

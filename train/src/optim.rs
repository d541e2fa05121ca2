//! AdamW with f32 master weights and moments, the cosine schedule with linear warmup
//! (transformers `get_cosine_schedule_with_warmup`), and global-norm gradient clipping
//! (`torch.nn.utils.clip_grad_norm_`).

use candle_core::{DType, Result, Tensor, Var};
use std::collections::HashMap;

/// One trainable tensor with its optimizer state.
pub struct Param {
    pub name: String,
    pub var: Var,
    /// f32 copy the updates are applied to (the Var may hold bf16 on GPU).
    pub master: Tensor,
    pub m: Tensor,
    pub v: Tensor,
    /// Index into the learning-rate groups.
    pub group: usize,
    /// Whether weight decay applies ([`decays`]).
    pub decays: bool,
}

/// Whether a parameter is decayed: transformers' Trainer leaves out biases and normalisation
/// weights (`get_decay_parameter_names`: LayerNorm modules and the name patterns bias,
/// layernorm, rmsnorm, norm, _norm). By name here: a lowercased name holding `bias` or `norm`
/// (CLIP's `layer_norm1`, `pre_layrnorm`, `post_layernorm`; Gemma / Llama `*_layernorm`,
/// `model.norm`; EVA02 `norm1`) is not decayed.
pub fn decays(name: &str) -> bool {
    let n = name.to_lowercase();
    !(n.contains("bias") || n.contains("norm"))
}

pub struct AdamW {
    pub params: Vec<Param>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Steps taken so far.
    pub step: usize,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var, usize)>, weight_decay: f64) -> Result<Self> {
        let params = vars
            .into_iter()
            .map(|(name, var, group)| {
                // detached: optimizer state must never carry an autograd graph (see `step`)
                let master = var.as_tensor().detach().to_dtype(DType::F32)?.copy()?.detach();
                let m = master.zeros_like()?;
                let v = master.zeros_like()?;
                let decays = decays(&name);
                Ok(Param { name, var, master, m, v, group, decays })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { params, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay, step: 0 })
    }

    /// One update with the summed gradients `grads` (by parameter index) and a learning rate
    /// per group. torch.optim.AdamW order: decay, moments, bias-corrected step.
    pub fn step(&mut self, grads: &[Tensor], lrs: &[f64]) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        for (p, g) in self.params.iter_mut().zip(grads) {
            let lr = lrs[p.group];
            // Gradients computed by backward ops that involve variables carry op records that
            // reach back into the step's forward graph; state built from them would keep every
            // step's graph alive (a leak of about 100 MB per step measured at 252 px).
            let g = g.detach().to_dtype(DType::F32)?;
            if self.weight_decay != 0.0 && p.decays {
                p.master = (&p.master * (1.0 - lr * self.weight_decay))?;
            }
            p.m = ((&p.m * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
            p.v = ((&p.v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let denom = ((p.v.clone() / bc2)?.sqrt()? + self.eps)?;
            let update = ((&p.m / bc1)? / denom)?;
            p.master = (&p.master - (update * lr)?)?.detach();
            p.m = p.m.detach();
            p.v = p.v.detach();
            p.var.set(&p.master.to_dtype(p.var.dtype())?)?;
        }
        Ok(())
    }

    /// Optimizer state as named tensors (for checkpoints).
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for p in &self.params {
            out.insert(format!("{}::master", p.name), p.master.clone());
            out.insert(format!("{}::m", p.name), p.m.clone());
            out.insert(format!("{}::v", p.name), p.v.clone());
        }
        out
    }

    /// Restores state saved by [`AdamW::state_tensors`]; every parameter must be present.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, step: usize) -> std::result::Result<(), String> {
        for p in &mut self.params {
            let get = |k: &str| {
                state
                    .get(&format!("{}::{k}", p.name))
                    .cloned()
                    .ok_or_else(|| format!("optimizer state has no {k} for {}", p.name))
            };
            let (master, m, v) = (get("master")?, get("m")?, get("v")?);
            if master.dims() != p.master.dims() {
                return Err(format!(
                    "optimizer state for {} has shape {:?}, expected {:?}",
                    p.name,
                    master.dims(),
                    p.master.dims()
                ));
            }
            p.var.set(&master.to_dtype(p.var.dtype()).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
            p.master = master;
            p.m = m;
            p.v = v;
        }
        self.step = step;
        Ok(())
    }
}

/// An exponential moving average of the optimizer's f32 master weights (Polyak averaging), one
/// shadow tensor per [`Param`] in the optimizer's order. Its rate follows TensorFlow's
/// `tf.train.ExponentialMovingAverage(decay, num_updates=n)`: update `n` (1-based) uses
/// `min(decay, (1 + n) / (10 + n))`, so the first updates track the weights instead of holding the
/// starting point for about `1 / (1 - decay)` steps. docs/SYNTH.md "Session 22": averaged weights
/// of one lineage beat each of its checkpoints on detection and REC.
pub struct Ema {
    pub decay: f64,
    pub shadow: Vec<Tensor>,
}

impl Ema {
    /// Starts at the current master weights.
    pub fn new(decay: f64, params: &[Param]) -> Result<Self> {
        let shadow = params.iter().map(|p| p.master.copy().map(|t| t.detach())).collect::<Result<Vec<_>>>()?;
        Ok(Self { decay, shadow })
    }

    /// The rate of update `n` (1-based).
    pub fn rate(&self, n: usize) -> f64 {
        self.decay.min((1.0 + n as f64) / (10.0 + n as f64))
    }

    /// Update `n` (1-based, the optimizer's step count after its step): shadow = r * shadow +
    /// (1 - r) * master.
    pub fn update(&mut self, params: &[Param], n: usize) -> Result<()> {
        let r = self.rate(n);
        for (s, p) in self.shadow.iter_mut().zip(params) {
            *s = ((&*s * r)? + (&p.master * (1.0 - r))?)?.detach();
        }
        Ok(())
    }

    /// The shadows as named tensors (`NAME::ema`, beside [`AdamW::state_tensors`]).
    pub fn state_tensors(&self, params: &[Param]) -> HashMap<String, Tensor> {
        params.iter().zip(&self.shadow).map(|(p, s)| (format!("{}::ema", p.name), s.clone())).collect()
    }

    /// Restores the shadows saved by [`Self::state_tensors`]; every parameter must be present.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, params: &[Param]) -> std::result::Result<(), String> {
        for (s, p) in self.shadow.iter_mut().zip(params) {
            let k = format!("{}::ema", p.name);
            let t = state.get(&k).ok_or_else(|| {
                format!(
                    "the checkpoint's optimizer state has no moving average for {} (written without \
                     train.ema_decay: resume it with the settings it was started with)",
                    p.name
                )
            })?;
            if t.dims() != s.dims() {
                return Err(format!("moving average of {} has shape {:?}, expected {:?}", p.name, t.dims(), s.dims()));
            }
            *s = t.to_dtype(DType::F32).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// transformers `get_cosine_schedule_with_warmup` multiplier at `step` (0-based), num_cycles 0.5.
pub fn cosine_with_warmup(step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
}

/// The same schedule over a fraction `p` in [0, 1] of a wall-clock budget, warming up over the
/// first `warmup` fraction (`train.schedule = "time"`).
pub fn cosine_with_warmup_frac(p: f64, warmup: f64) -> f64 {
    let p = p.clamp(0.0, 1.0);
    if p < warmup {
        return p / warmup;
    }
    let progress = (p - warmup) / (1.0 - warmup).max(1e-12);
    (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
}

/// transformers `get_constant_schedule_with_warmup` multiplier at `step` (0-based): linear from 0
/// over `warmup` steps, then 1.
pub fn constant_with_warmup(step: usize, warmup: usize) -> f64 {
    if step < warmup {
        return step as f64 / warmup.max(1) as f64;
    }
    1.0
}

/// Warmup steps for a ratio, as transformers' `get_warmup_steps`: ceil(total * ratio).
pub fn warmup_steps(total: usize, ratio: f64) -> usize {
    (total as f64 * ratio).ceil() as usize
}

/// Scales gradients in place so that their global L2 norm is at most `max_norm`; returns the
/// norm before clipping (`clip_grad_norm_`: coefficient max_norm / (norm + 1e-6), capped at 1).
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    if grads.is_empty() {
        return Ok(0.0);
    }
    // one transfer for all the per-tensor sums (not one device sync per tensor), summed in f64
    let sums =
        grads.iter().map(|g| g.to_dtype(DType::F32)?.sqr()?.sum_all()?.reshape(1)).collect::<Result<Vec<_>>>()?;
    let sq: f64 = Tensor::cat(&sums, 0)?.to_vec1::<f32>()?.iter().map(|x| *x as f64).sum();
    let norm = sq.sqrt();
    if max_norm > 0.0 {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut() {
                *g = (&*g * coef)?;
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn time_schedule() {
        let f = super::cosine_with_warmup_frac;
        assert_eq!(f(0.0, 0.1), 0.0);
        assert!((f(0.05, 0.1) - 0.5).abs() < 1e-12);
        assert!((f(0.1, 0.1) - 1.0).abs() < 1e-12);
        assert!((f(0.55, 0.1) - 0.5).abs() < 1e-12);
        assert!(f(1.0, 0.1).abs() < 1e-12 && f(1.5, 0.1).abs() < 1e-12);
        assert!((f(0.5, 0.0) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn schedule_matches_transformers() {
        // warmup 3 of 10: 0, 1/3, 2/3, then cosine from 1 down
        assert_eq!(cosine_with_warmup(0, 3, 10), 0.0);
        assert!((cosine_with_warmup(2, 3, 10) - 2.0 / 3.0).abs() < 1e-12);
        assert!((cosine_with_warmup(3, 3, 10) - 1.0).abs() < 1e-12);
        assert!((cosine_with_warmup(10, 3, 10)).abs() < 1e-12);
        // transformers' get_constant_schedule_with_warmup(num_warmup_steps=3): 0, 1/3, 2/3, 1, 1, ...
        assert_eq!(super::constant_with_warmup(0, 3), 0.0);
        assert!((super::constant_with_warmup(2, 3) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(super::constant_with_warmup(3, 3), 1.0);
        assert_eq!(super::constant_with_warmup(1000, 3), 1.0);
        assert_eq!(super::constant_with_warmup(0, 0), 1.0);
        assert_eq!(warmup_steps(100, 0.03), 3);
    }

    #[test]
    fn adamw_first_step_is_lr_times_sign() {
        // with bias correction the first Adam step is lr * g / (|g| + eps)
        let var = Var::from_tensor(&Tensor::new(&[1.0f32, -2.0, 0.5], &Device::Cpu).unwrap()).unwrap();
        let mut opt = AdamW::new(vec![("w".into(), var.clone(), 0)], 0.0).unwrap();
        let g = Tensor::new(&[0.5f32, -3.0, 0.0], &Device::Cpu).unwrap();
        opt.step(&[g], &[0.1]).unwrap();
        let w: Vec<f32> = var.as_tensor().to_vec1().unwrap();
        assert!((w[0] - 0.9).abs() < 1e-6 && (w[1] + 1.9).abs() < 1e-6 && (w[2] - 0.5).abs() < 1e-6, "{w:?}");
    }

    /// Weight decay skips biases and normalisation weights, as transformers' Trainer.
    #[test]
    fn decay_skips_biases_and_norms() {
        for (name, want) in [
            ("model.layers.0.self_attn.q_proj.weight", true),
            ("model.embed_tokens.weight", true),
            ("model.mm_projector.conv.bias", false),
            ("model.layers.0.input_layernorm.weight", false),
            ("model.norm.weight", false),
            ("model.vision_tower.vision_tower.vision_model.pre_layrnorm.weight", false),
            ("vision_model.encoder.layers.0.layer_norm1.weight", false),
            ("blocks.0.norm1.weight", false),
        ] {
            assert_eq!(super::decays(name), want, "{name}");
        }
        let w = Var::from_tensor(&Tensor::new(&[1.0f32], &Device::Cpu).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::new(&[1.0f32], &Device::Cpu).unwrap()).unwrap();
        let mut opt =
            AdamW::new(vec![("l.weight".into(), w.clone(), 0), ("l.bias".into(), b.clone(), 0)], 0.5).unwrap();
        let zero = Tensor::new(&[0.0f32], &Device::Cpu).unwrap();
        opt.step(&[zero.clone(), zero], &[0.1]).unwrap();
        let (w, b): (Vec<f32>, Vec<f32>) = (w.as_tensor().to_vec1().unwrap(), b.as_tensor().to_vec1().unwrap());
        assert!((w[0] - 0.95).abs() < 1e-6 && b[0] == 1.0, "{w:?} {b:?}");
    }

    #[test]
    fn ema_follows_tensorflow_rates() {
        // decay 0.9: update 1 uses min(0.9, 2/11), update 10 min(0.9, 11/20), update 100 0.9
        let var = Var::from_tensor(&Tensor::new(&[0.0f32, 1.0], &Device::Cpu).unwrap()).unwrap();
        let mut opt = AdamW::new(vec![("w".into(), var, 0)], 0.0).unwrap();
        let mut ema = Ema::new(0.9, &opt.params).unwrap();
        assert!((ema.rate(1) - 2.0 / 11.0).abs() < 1e-12 && (ema.rate(10) - 0.55).abs() < 1e-12);
        assert_eq!(ema.rate(100), 0.9);
        let mut want = [0.0f64, 1.0];
        for n in 1..=3 {
            opt.params[0].master = Tensor::new(&[n as f32, -(n as f32)], &Device::Cpu).unwrap();
            ema.update(&opt.params, n).unwrap();
            let r = ema.rate(n);
            want = [r * want[0] + (1.0 - r) * n as f64, r * want[1] - (1.0 - r) * n as f64];
        }
        let got: Vec<f32> = ema.shadow[0].to_vec1().unwrap();
        assert!(got.iter().zip(&want).all(|(g, w)| (*g as f64 - w).abs() < 1e-6), "{got:?} vs {want:?}");
        // saved and restored by name; a state without it is refused naming the setting
        let state = ema.state_tensors(&opt.params);
        let mut other = Ema::new(0.9, &opt.params).unwrap();
        other.load_state(&state, &opt.params).unwrap();
        assert_eq!(other.shadow[0].to_vec1::<f32>().unwrap(), got);
        let err = other.load_state(&HashMap::new(), &opt.params).err().unwrap();
        assert!(err.contains("train.ema_decay") && err.contains("for w ("), "{err}");
    }

    #[test]
    fn clipping() {
        let mut g = vec![Tensor::new(&[3.0f32, 4.0], &Device::Cpu).unwrap()];
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-6);
        let v: Vec<f32> = g[0].to_vec1().unwrap();
        assert!((v[0] - 0.6).abs() < 1e-5 && (v[1] - 0.8).abs() < 1e-5);
    }
}

//! The region / visual-prompt encoder (config `unshared_visual_encoder`; source: jefferyZhan/Griffon
//! `griffon_arch.py` `encoder_prompts`): a second CLIP at its own size (224 for ViT-L/14), whose
//! last-layer CLS (`hidden_states[-1][:, 0]`, no post_layernorm) goes through
//! Linear -> ReLU -> Linear to give ONE LLM token per region image.

use crate::clip::{ClipVision, ClipVisionConfig};
use crate::error::Result;
use crate::loader::Scope;
use crate::nn::{Act, Linear};
use crate::resample::Interp;
use candle_core::Tensor;

pub struct RegionEncoder {
    pub tower: ClipVision,
    fc1: Linear,
    fc2: Linear,
}

impl RegionEncoder {
    /// `tower` points at `model.prompt_visual_encoder.vision_model`, `proj` at `model.prompt_projector`.
    pub fn load(tower: &Scope, proj: &Scope, cfg: &ClipVisionConfig, llm_hidden: usize) -> Result<Self> {
        Ok(Self {
            tower: ClipVision::load(tower, cfg, cfg.image_size, Interp::Bicubic)?,
            fc1: Linear::load(&proj.pp(0), cfg.hidden_size, llm_hidden, true)?,
            fc2: Linear::load(&proj.pp(2), llm_hidden, llm_hidden, true)?,
        })
    }

    /// Square size the region crops are resized to.
    pub fn image_size(&self) -> usize {
        self.tower.run_size
    }

    /// pixels [B, 3, S, S] -> one token per image, [B, H].
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let cls = self.tower.cls_feature(pixels, -1)?;
        self.fc2.forward(&Act::Relu.apply(&self.fc1.forward(&cls)?)?)
    }
}

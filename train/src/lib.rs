//! The Griffon v2 training pipeline (paper: arXiv 2403.09333, section "Training"; recipe in
//! shared/GRIFFON_FORMAT.md): (I) high-resolution alignment of the projector, (II) co-referring
//! pre-training, (III) intent-enhanced instruction tuning.
//!
//! * [`data`]: data builders from standard annotations into training conversations, and the
//!   released Griffon jsonl formats / task list (read and write).
//! * [`config`]: the TOML run configuration and the stage presets (which modules train).
//! * [`dense`]: stage 0, dense perception pre-training of the vision tower on synthetic scenes.
//! * [`ground`]: an optional loss that supervises one attention head towards the referred object
//!   while a REC box is written.
//! * [`optim`]: AdamW with f32 master weights, cosine schedule with warmup, clipping.
//! * [`trainer`]: the loop, the loss on answer tokens, checkpoints and resume.

pub mod config;
pub mod data;
pub mod dense;
pub mod ground;
pub mod optim;
pub mod synth;
pub mod trainer;

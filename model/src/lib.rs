//! Candle implementation of Griffon v2 / Griffon-G.
//!
//! One file per architecture piece: [`clip`] (high-resolution CLIP tower and the region
//! encoder's tower), [`projector`], [`region`], [`gemma2`], [`llama`]; plus the checkpoint
//! [`loader`], [`config`] resolution, image [`resample`]/preprocessing, [`tokenize`]
//! (prompt assembly) and [`generate`] (KV cache, samplers, stop rules). [`griffon`] ties them.

pub mod assemble;
pub mod bench;
pub mod clip;
pub mod config;
pub mod draw;
pub mod error;
pub mod eva02;
pub mod gemma2;
pub mod generate;
pub mod griffon;
pub mod layout;
pub mod llama;
pub mod llm;
pub mod loader;
pub mod nn;
pub mod projector;
pub mod region;
pub mod resample;
pub mod selfcheck;
pub mod tasks;
pub mod tokenize;

pub use error::{Error, Result};

//! What a stage-0 head reads from a checkpoint's vision features on fresh synthetic scenes
//! (docs/SYNTH.md): `cargo run --release -p griffon-train --example dense_score -- CKPT [N] [SEED]
//! [SIZE] [OBJECT_SCALE] [MAX_OBJECTS]`; prints a JSON [`DenseScore`].

use candle_core::{Device, Tensor};
use griffon_model::griffon::{Griffon, LoadOptions};
use griffon_model::resample::preprocess;
use griffon_train::dense::{patch_grid, DenseHead, DenseTargets};
use griffon_train::synth::scene_scaled;
use std::path::PathBuf;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first().map(PathBuf::from) else {
        return Err("usage: dense_score CKPT [N=64] [SEED=0] [SIZE=224] [OBJECT_SCALE=4] [MAX_OBJECTS=3]".into());
    };
    let num = |i: usize, d: f64| -> Result<f64, String> {
        args.get(i).map(|s| s.parse::<f64>().map_err(|e| format!("argument {i} `{s}`: {e}"))).unwrap_or(Ok(d))
    };
    let (n, seed, size, scale, max_objects) =
        (num(1, 64.0)? as usize, num(2, 0.0)? as u64, num(3, 224.0)? as u32, num(4, 4.0)?, num(5, 3.0)? as usize);
    let m = Griffon::load(&dir, &LoadOptions::default()).map_err(|e| e.to_string())?;
    let head = DenseHead::load(&dir, m.tower.cfg.hidden_size, m.dtype, &m.device)?
        .ok_or_else(|| format!("{} has no dense head (a stage-0 checkpoint has)", dir.display()))?;
    let grid = patch_grid(&m);
    let mut px = Vec::new();
    let mut targets = Vec::new();
    for k in 0..n {
        let (img, objs) = scene_scaled(seed, k, size, max_objects, scale);
        px.push(preprocess(&img, m.image_size(), &Device::Cpu).map_err(|e| e.to_string())?);
        targets.push(DenseTargets::new(&objs, size, grid)?);
    }
    let px = Tensor::stack(&px, 0).map_err(|e| e.to_string())?;
    let feats =
        m.tower.patch_features(&px, m.config.mm.select_layer, m.config.mm.keep_cls).map_err(|e| e.to_string())?;
    let score = head.score(&feats, &targets.iter().collect::<Vec<_>>())?;
    println!("{}", serde_json::to_string_pretty(&score).map_err(|e| e.to_string())?);
    Ok(())
}

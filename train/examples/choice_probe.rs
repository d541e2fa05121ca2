//! Is the referred object's position in the residual stream where a REC answer chooses it?
//! (docs/SYNTH.md, session 18.) Teacher-forced REC samples of fresh synthetic scenes; for each
//! sample the residual stream at the position that predicts the first decimal of `x1` (where
//! `box_tokens` found the object is chosen), after every decoder layer (0 = the input
//! embeddings), and, for the first `IMAGE_SAMPLES` samples, every image token's residual after
//! every layer. The layers are read by loading the checkpoint truncated to `l` decoder layers
//! (a copy of its config with `num_hidden_layers = l`, the other files linked), whose last hidden
//! state is the full model's after layer `l`. `tools/synth/choice_probe.py` fits the linear
//! probes.
//!
//! `cargo run --release -p griffon-train --example choice_probe -- CKPT OUT [N=1200] [SEED=99]
//! [IMAGE_SAMPLES=150] [SIZE=224] [OBJECT_SCALE=4] [MAX_OBJECTS=3]`: writes `OUT/choice.f32`
//! ([N, layers + 1, hidden], little-endian), `OUT/image.f32` ([IMAGE_SAMPLES, layers + 1, image
//! tokens, hidden]) and `OUT/meta.json` (shapes, and per sample its objects, the referred one,
//! the model's probabilities of the ten digits there, the choosing position `at`, the image's
//! first position and the grounding rule's image tokens of the referred object and of the others).

use candle_core::{DType, Device, Tensor, D};
use griffon_model::griffon::{Griffon, LoadOptions};
use griffon_train::config::GroundKeys;
use griffon_train::data::{BuildOptions, TaskKind};
use griffon_train::ground::GroundSpec;
use griffon_train::synth::{best_match, SynthStream};
use griffon_train::trainer::{choosing_token, digit_tokens, embed_sample, VisualLens};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A copy of checkpoint `dir` whose config keeps the first `l` decoder layers.
fn truncated(dir: &Path, l: usize, out: &Path) -> Result<PathBuf, String> {
    let to = out.join(format!("truncated-{l}"));
    std::fs::create_dir_all(&to).map_err(|e| format!("{}: {e}", to.display()))?;
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name();
        if name == "config.json" || name == "optimizer.safetensors" {
            continue;
        }
        let link = to.join(&name);
        if link.symlink_metadata().is_err() {
            let target = std::fs::canonicalize(entry.path()).map_err(|e| e.to_string())?;
            std::os::unix::fs::symlink(&target, &link).map_err(|e| format!("{}: {e}", link.display()))?;
        }
    }
    let text = std::fs::read_to_string(dir.join("config.json")).map_err(|e| format!("config.json: {e}"))?;
    let mut cfg: Value = serde_json::from_str(&text).map_err(|e| format!("config.json: {e}"))?;
    cfg["num_hidden_layers"] = json!(l);
    if let Some(Value::Array(types)) = cfg.get_mut("layer_types") {
        types.truncate(l);
    }
    std::fs::write(to.join("config.json"), cfg.to_string()).map_err(|e| e.to_string())?;
    Ok(to)
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(dir), Some(out)) = (args.first().map(PathBuf::from), args.get(1).map(PathBuf::from)) else {
        return Err("usage: choice_probe CKPT OUT [N=1200] [SEED=99] [IMAGE_SAMPLES=150] [SIZE=224] \
                    [OBJECT_SCALE=4] [MAX_OBJECTS=3]"
            .into());
    };
    let num = |i: usize, d: f64| -> Result<f64, String> {
        args.get(i).map(|s| s.parse::<f64>().map_err(|e| format!("argument {i} `{s}`: {e}"))).unwrap_or(Ok(d))
    };
    let (n, seed, n_image, size, scale, max_objects) = (
        num(2, 1200.0)? as usize,
        num(3, 99.0)? as u64,
        num(4, 150.0)? as usize,
        num(5, 224.0)? as u32,
        num(6, 4.0)?,
        num(7, 3.0)? as usize,
    );
    let e = |x: candle_core::Error| x.to_string();
    let ge = |x: griffon_model::error::Error| x.to_string();
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let full = Griffon::load(&dir, &LoadOptions::default()).map_err(ge)?;
    let layers = full.llm.num_layers();
    let mut models = Vec::new();
    for l in 1..layers {
        models.push(Griffon::load(&truncated(&dir, l, &out)?, &LoadOptions::default()).map_err(ge)?);
    }
    let lens = VisualLens::of(&full);
    let (heads, kv_heads, _) = full.llm.heads();
    // each head's image tokens of a box (the grounding loss's rule) and its scores' scale
    let specs: Vec<Vec<GroundSpec>> = (0..layers)
        .map(|l| (0..heads).map(|h| GroundSpec::new(&full, l, h, 0.0, GroundKeys::All)).collect::<Result<Vec<_>, _>>())
        .collect::<Result<_, _>>()?;
    let attn = full.llm.attn_spec();
    let (att_scale, softcap) = (attn.scale, attn.softcap);
    let stream = SynthStream::new(seed, size, max_objects, vec![(TaskKind::Vg, 1.0)], BuildOptions::default())?
        .with_object_scale(scale)?;
    let digit = digit_tokens(&full.tokenizer, full.llm.vocab_size())?;
    let mut choice_out =
        std::io::BufWriter::new(std::fs::File::create(out.join("choice.f32")).map_err(|e| format!("choice.f32: {e}"))?);
    let mut image_out =
        std::io::BufWriter::new(std::fs::File::create(out.join("image.f32")).map_err(|e| format!("image.f32: {e}"))?);
    let write = |w: &mut std::io::BufWriter<std::fs::File>, t: &Tensor| -> Result<(), String> {
        let v = t.to_dtype(DType::F32).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<f32>()).map_err(e)?;
        let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
        w.write_all(&bytes).map_err(|e| e.to_string())
    };
    let mut samples = Vec::new();
    let mut skipped = Vec::new();
    let mut hidden = 0;
    for k in 0..n {
        let (s, img, objs) = stream.sample(k)?;
        let (enc, x) = embed_sample(&full, &s, Some(img))?;
        let image_start = enc.image_start(lens).map_err(|e| format!("sample {k}: {e}"))?;
        // the token that starts x1's first decimal
        let answer = enc.answer_tokens(lens);
        let ids: Vec<u32> = answer.iter().map(|a| a.1).collect();
        let (text, spans) = full.tokenizer.decode_spans(&ids).map_err(ge)?;
        let Some(open) = text.find("-[") else {
            skipped.push(format!("sample {k}: no box in {text:?}"));
            continue;
        };
        let Some(j) = choosing_token(&spans, open + 1) else {
            skipped.push(format!("sample {k}: no token holds x1's first decimal in {text:?}"));
            continue;
        };
        let at = answer[j].0 - 1; // the position whose output predicts that token
        let inner = &text[open + 2..];
        let coords: Vec<f64> =
            inner.split(']').next().unwrap_or("").split(',').filter_map(|c| c.parse().ok()).collect();
        if coords.len() != 4 {
            skipped.push(format!("sample {k}: not one box of four coordinates in {text:?}"));
            continue;
        }
        let boxn = [coords[0], coords[1], coords[2], coords[3]];
        let norm = |o: &[u32; 4]| o.map(|v| v as f64 / size as f64);
        let referred = best_match(&objs, size, boxn).ok_or(format!("sample {k}: a scene without objects"))?;
        // the residual after each layer: the input embeddings (Gemma-2's constant scale left
        // out: the probes standardise), then each truncated model's last hidden state
        let mut per_layer = vec![x.clone()];
        for m in &models {
            per_layer.push(m.llm.hidden(&x, &mut m.llm.new_cache()).map_err(ge)?);
        }
        // the full pass tapped at layer 0: its output is the last layer's, its q / k layer 0's
        let (h, tap0) = full.llm.hidden_tapped(&x, &mut full.llm.new_cache(), Some(0)).map_err(ge)?;
        let mut tap0 = Some(tap0);
        let logits = full.llm.head(&h.narrow(1, at, 1).map_err(e)?).map_err(ge)?;
        let probs =
            candle_nn::ops::softmax(&logits.to_dtype(DType::F32).map_err(e)?.flatten_all().map_err(e)?, D::Minus1)
                .and_then(|t| t.to_device(&Device::Cpu))
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(e)?;
        per_layer.push(h);
        // every head's attention at that position: the share on the referred object's image
        // tokens and on the other objects' (tokens of both count for the referred one)
        let own = specs[0][0].targets(norm(&objs[referred].bbox));
        let mut others: Vec<usize> = objs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != referred)
            .flat_map(|(_, o)| specs[0][0].targets(norm(&o.bbox)))
            .filter(|t| !own.contains(t))
            .collect();
        others.sort_unstable();
        others.dedup();
        let mut attention = Vec::new();
        for l in 0..layers {
            if full.llm.layer_window(l).is_some_and(|w| w <= at) {
                return Err(format!("layer {l}'s sliding window does not reach the image"));
            }
            let tapped = match tap0.take() {
                Some(t) => t,
                None => full.llm.hidden_tapped(&x, &mut full.llm.new_cache(), Some(l)).map_err(ge)?.1,
            };
            let tap = tapped.ok_or("no tapped layer")?;
            let q = tap.q.to_dtype(DType::F32).and_then(|t| t.to_device(&Device::Cpu)).map_err(e)?;
            let k = tap.k.to_dtype(DType::F32).and_then(|t| t.to_device(&Device::Cpu)).map_err(e)?;
            let mut row = Vec::new();
            for hd in 0..heads {
                let qv = q.get(0).and_then(|t| t.get(hd)).and_then(|t| t.get(at)).map_err(e)?;
                let kv = k
                    .get(0)
                    .and_then(|t| t.get(hd / (heads / kv_heads)))
                    .and_then(|t| t.narrow(0, 0, at + 1))
                    .map_err(e)?;
                let sc = kv
                    .matmul(&qv.unsqueeze(1).map_err(e)?)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(e)?;
                let sc: Vec<f64> = sc
                    .iter()
                    .map(|&v| {
                        let v = v as f64 * att_scale;
                        softcap.map_or(v, |c| (v / c).tanh() * c)
                    })
                    .collect();
                let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|v| (v - mx).exp()).sum();
                let p = |ts: &[usize]| ts.iter().map(|&t| (sc[image_start + t] - mx).exp()).sum::<f64>() / z;
                row.push([p(&own), p(&others)]);
            }
            attention.push(row);
        }
        hidden = per_layer[0].dim(2).map_err(e)?;
        let rows: Vec<Tensor> = per_layer.iter().map(|t| t.narrow(1, at, 1)).collect::<Result<_, _>>().map_err(e)?;
        write(&mut choice_out, &Tensor::cat(&rows, 1).map_err(e)?)?;
        if samples.len() < n_image {
            let img_rows: Vec<Tensor> =
                per_layer.iter().map(|t| t.narrow(1, image_start, lens.image)).collect::<Result<_, _>>().map_err(e)?;
            write(&mut image_out, &Tensor::cat(&img_rows, 0).map_err(e)?)?;
        }
        samples.push(json!({
            "k": k,
            "expression": text[..open].to_string(),
            "answer": text,
            "objects": objs.iter().map(|o| json!({"box": norm(&o.bbox), "shape": o.shape, "colour": o.colour})).collect::<Vec<_>>(),
            "referred": referred,
            "image_start": image_start,
            "at": at,
            "own_tokens": own,
            "other_tokens": others,
            "attention": attention,
            "digit_probs": digit.iter().map(|&d| probs[d as usize]).collect::<Vec<_>>(),
        }));
    }
    choice_out.flush().map_err(|e| e.to_string())?;
    image_out.flush().map_err(|e| e.to_string())?;
    let grid = (lens.image as f64).sqrt().round() as usize;
    let meta = json!({
        "checkpoint": dir.display().to_string(),
        "seed": seed,
        "layers": layers,
        "hidden": hidden,
        "image_tokens": lens.image,
        "image_grid": grid,
        "image_samples": samples.len().min(n_image),
        "samples": samples,
        "skipped": skipped,
    });
    std::fs::write(out.join("meta.json"), serde_json::to_string(&meta).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    for l in 1..layers {
        let _ = std::fs::remove_dir_all(out.join(format!("truncated-{l}")));
    }
    eprintln!("{} samples, {} skipped, {layers} layers of {hidden}", samples.len(), skipped.len());
    Ok(())
}

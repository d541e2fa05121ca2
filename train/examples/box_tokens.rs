//! Where a checkpoint's REC answers choose the object (docs/SYNTH.md, session 17): the
//! teacher-forced loss of each answer token on fresh synthetic REC scenes, by the token's place
//! in the answer (the expression, the box's opening, each coordinate's characters `0 . d d d`,
//! the closing), and, at the first decimal of `x1` and of `y1`, where the probability goes: to
//! the referred object's digit or to a digit only another object of the scene has there. Under
//! teacher forcing the object is chosen where its first coordinate starts; the later ones can be
//! read off the object already chosen.
//!
//! `cargo run --release -p griffon-train --example box_tokens -- CKPT [N=400] [SEED=99] [SIZE=224]
//! [OBJECT_SCALE=4] [MAX_OBJECTS=3]`; prints JSON.

use candle_core::{DType, Device, D};
use griffon_model::griffon::{Griffon, LoadOptions};
use griffon_train::data::{BuildOptions, TaskKind};
use griffon_train::synth::{best_match, SynthStream};
use griffon_train::trainer::{digit_tokens, embed_sample, VisualLens};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;

const COORDS: [&str; 4] = ["x1", "y1", "x2", "y2"];

/// Where probability goes at a coordinate's first decimal in scenes with other objects.
#[derive(Default)]
struct Choice {
    /// Answers whose other objects have a different digit there than the referred one.
    questions: usize,
    p_referred: f64,
    p_others: f64,
    argmax_referred: usize,
    argmax_other: usize,
}

impl Choice {
    fn report(&self) -> serde_json::Value {
        let n = self.questions.max(1) as f64;
        json!({
            "questions": self.questions,
            "mean_p_referred_digit": self.p_referred / n,
            "mean_p_other_objects_digits": self.p_others / n,
            "argmax_on_referred": self.argmax_referred,
            "argmax_on_an_other_object": self.argmax_other,
        })
    }
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first().map(PathBuf::from) else {
        return Err("usage: box_tokens CKPT [N=400] [SEED=99] [SIZE=224] [OBJECT_SCALE=4] [MAX_OBJECTS=3]".into());
    };
    let num = |i: usize, d: f64| -> Result<f64, String> {
        args.get(i).map(|s| s.parse::<f64>().map_err(|e| format!("argument {i} `{s}`: {e}"))).unwrap_or(Ok(d))
    };
    let (n, seed, size, scale, max_objects) =
        (num(1, 400.0)? as usize, num(2, 99.0)? as u64, num(3, 224.0)? as u32, num(4, 4.0)?, num(5, 3.0)? as usize);
    let e = |x: candle_core::Error| x.to_string();
    let ge = |x: griffon_model::error::Error| x.to_string();
    let m = Griffon::load(&dir, &LoadOptions::default()).map_err(ge)?;
    let lens = VisualLens::of(&m);
    let stream = SynthStream::new(seed, size, max_objects, vec![(TaskKind::Vg, 1.0)], BuildOptions::default())?
        .with_object_scale(scale)?;
    // the id of each single-digit token
    let digit = digit_tokens(&m.tokenizer, m.llm.vocab_size())?;
    let mut nll: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let mut choice = [Choice::default(), Choice::default()];
    let mut skipped: Vec<String> = Vec::new();
    for k in 0..n {
        let (s, img, objs) = stream.sample(k)?;
        let (enc, x) = embed_sample(&m, &s, Some(img))?;
        let (h, _) = m.llm.hidden_tapped(&x, &mut m.llm.new_cache(), None).map_err(ge)?;
        let logits = m.llm.head(&h.squeeze(0).map_err(e)?).map_err(ge)?;
        let lsm = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32).map_err(e)?, D::Minus1)
            .and_then(|t| t.to_device(&Device::Cpu))
            .and_then(|t| t.to_vec2::<f32>())
            .map_err(e)?;
        // the answer's tokens and their positions (one REC turn)
        let answer = enc.answer_tokens(lens);
        let ids: Vec<u32> = answer.iter().map(|a| a.1).collect();
        let (text, spans) = m.tokenizer.decode_spans(&ids).map_err(ge)?;
        let (Some(open), Some(close)) = (text.find("-["), text.find(']')) else {
            skipped.push(format!("sample {k}: no box in {text:?}"));
            continue;
        };
        let open = open + 1;
        let inner = &text[open + 1..close];
        let coords: Vec<f64> = inner.split(',').filter_map(|c| c.parse().ok()).collect();
        if coords.len() != 4 || inner.split(',').any(|c| c.len() != 5) {
            skipped.push(format!("sample {k}: not one box of four 0.ddd coordinates in {text:?}"));
            continue;
        }
        let boxn = [coords[0], coords[1], coords[2], coords[3]];
        let norm = |o: &[u32; 4]| o.map(|v| v as f64 / size as f64);
        let referred = best_match(&objs, size, boxn).ok_or(format!("sample {k}: a scene without objects"))?;
        for (j, &(a, b)) in spans.iter().enumerate() {
            if a >= b {
                continue;
            }
            let label = if b <= open {
                "expression".to_string()
            } else if a <= open {
                "box opening".to_string()
            } else if a > close {
                "after the box".to_string()
            } else if a == close {
                "]".to_string()
            } else {
                let within = a - (open + 1);
                let c = inner[..within].matches(',').count();
                let start = inner[..within].rfind(',').map_or(0, |q| q + 1);
                match within - start {
                    5 => format!("comma after {}", COORDS[c]),
                    i => format!("{} char {i}", COORDS[c]),
                }
            };
            let (p, tok) = answer[j];
            let lp = lsm[p - 1][tok as usize] as f64; // p > 0: the answer follows the prompt
            let entry = nll.entry(label.clone()).or_default();
            entry.0 -= lp;
            entry.1 += 1;
            // the first decimal of x1 / y1: whose digit gets the probability
            for (ci, coord) in [(0usize, "x1 char 2"), (1, "y1 char 2")] {
                if label != coord || objs.len() < 2 {
                    continue;
                }
                let dig = |o: &[u32; 4]| {
                    let v = format!("{:.3}", norm(o)[ci]);
                    (v.as_bytes()[2] - b'0') as usize
                };
                let own = (inner.as_bytes()[ci * 6 + 2] - b'0') as usize;
                if dig(&objs[referred].bbox) != own {
                    skipped.push(format!("sample {k}: the referred object's {coord} digit differs from the answer's"));
                    continue;
                }
                let mut others: Vec<usize> =
                    objs.iter().enumerate().filter(|(i, _)| *i != referred).map(|(_, o)| dig(&o.bbox)).collect();
                others.retain(|&d| d != own);
                others.sort_unstable();
                others.dedup();
                if others.is_empty() {
                    continue;
                }
                let row = &lsm[p - 1];
                let c = &mut choice[ci];
                c.questions += 1;
                c.p_referred += (row[digit[own] as usize] as f64).exp();
                c.p_others += others.iter().map(|&d| (row[digit[d] as usize] as f64).exp()).sum::<f64>();
                let best =
                    (0..10).max_by(|&a, &b| row[digit[a] as usize].total_cmp(&row[digit[b] as usize])).unwrap_or(0);
                c.argmax_referred += (best == own) as usize;
                c.argmax_other += others.contains(&best) as usize;
            }
        }
    }
    let by_place: BTreeMap<&String, serde_json::Value> =
        nll.iter().map(|(k, (s, c))| (k, json!({"mean_nll": s / *c as f64, "tokens": c}))).collect();
    let out = json!({
        "checkpoint": dir.display().to_string(),
        "samples": n,
        "seed": seed,
        "nll_by_place": by_place,
        "x1_first_decimal": choice[0].report(),
        "y1_first_decimal": choice[1].report(),
        "skipped": skipped,
    });
    println!("{}", serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?);
    Ok(())
}

//! Tokenize stdin, one caption per line, and print the Java-tokenizer-equivalent lines
//! (`ptb_tokenize_raw`). Used by `tools/reference/make_cider_vectors.py --check-rust` to
//! compare this tokenizer with Stanford's on large generated inputs.
//!
//! `cargo build -p griffon-eval --example ptb_lines`

use std::io::{Read, Write};

fn main() -> std::io::Result<()> {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s)?;
    let lines: Vec<&str> = s.split('\n').collect();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for l in griffon_eval::ptb_tokenize_raw(&lines) {
        writeln!(out, "{l}")?;
    }
    Ok(())
}

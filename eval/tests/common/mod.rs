//! Shared helpers for the integration tests (included with `mod common;`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// `<repo>/../shared/data/<rel>`; panics naming the path when it is absent (these parity tests
/// must never be skipped silently).
pub fn shared(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..").join("shared").join("data").join(rel);
    assert!(p.exists(), "shared parity data missing: {} (expected at <repo>/../shared/data/{rel})", p.display());
    p
}

/// `eval/tests/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join(rel);
    assert!(p.exists(), "fixture missing: {}", p.display());
    p
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON in {}: {e}", path.display()))
}

pub fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

/// A scratch file under the target's temporary directory.
pub fn scratch(name: &str, contents: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("griffon-eval-tests");
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    let p = dir.join(name);
    std::fs::write(&p, contents).expect("write scratch file");
    p
}

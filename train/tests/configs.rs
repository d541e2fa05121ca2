//! Every training config shipped in configs/ reads and validates (a typo in a key or a value
//! would otherwise surface only on the GPU machine, after its start), and the staged recipe's
//! files say the stage their names say.

use griffon_train::config::TrainConfig;
use std::path::PathBuf;

#[test]
fn shipped_configs_read_and_validate() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/synth");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let cfg = TrainConfig::from_file(&p).unwrap_or_else(|e| panic!("{e}"));
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        if let Some(s) = name.strip_prefix("stage") {
            assert_eq!(s.parse::<u8>().ok(), Some(cfg.train.stage), "{name}: train.stage {}", cfg.train.stage);
        }
        n += 1;
    }
    assert!(n >= 9, "only {n} configs in {}", dir.display());
}

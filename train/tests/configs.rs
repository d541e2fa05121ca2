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

/// The region path's own learning rate and the share of counting samples on a random class:
/// read, applied to the right modules, and checked.
#[test]
fn region_lr_and_visj_random() {
    use griffon_train::config::Module;
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/synth/region224.toml");
    let set = |o: &[&str]| TrainConfig::from_file_with(&p, &o.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let cfg = set(&["train.region_lr=1e-3", "data.synth.visj_random=1.0"]).unwrap();
    assert_eq!(cfg.lr_of(Module::Region), 1e-3);
    assert_eq!(cfg.lr_of(Module::RegionProjector), 1e-3);
    assert_eq!(cfg.lr_of(Module::Llm), cfg.train.lr);
    assert_eq!(cfg.data.synth.as_ref().unwrap().visj_random, 1.0);
    // an empty value removes the entry: region224.toml's own region_lr gives way to the main rate
    assert_eq!(set(&[]).unwrap().lr_of(Module::Region), 5e-4);
    let unset = set(&["train.region_lr="]).unwrap();
    assert_eq!(unset.train.region_lr, None);
    assert_eq!(unset.lr_of(Module::Region), unset.train.lr);
    // removing an entry the file does not have is an error naming it (a typo would pass silently)
    for absent in ["train.regoin_lr=", "data.synth.mix.absent=", "nothing.here="] {
        let e = set(&[absent]).unwrap_err();
        assert!(e.contains("no entry") && e.contains(absent.trim_end_matches('=')), "{absent}: {e}");
    }
    let e = set(&["train.region_lr=-1"]).unwrap_err();
    assert!(e.contains("region_lr must be positive"), "{e}");
    let e = set(&["train.region_lr=1e-3", "train.trainable=[\"llm\"]"]).unwrap_err();
    assert!(e.contains("region_lr is set but neither"), "{e}");
    // the same for the tower's own rate with a trainable list that leaves the tower out
    let e = set(&["train.vision_lr=1e-5"]).unwrap_err();
    assert!(e.contains("vision_lr is set but train.trainable does not list `vision`"), "{e}");
    let ok = set(&["train.vision_lr=1e-5", "train.trainable=[\"llm\", \"vision\", \"region\"]"]).unwrap();
    assert_eq!(ok.lr_of(Module::Vision), 1e-5);
    // a data-thread count past the trainer's limit (each would load its share of a round first)
    let e = set(&["train.workers=100000"]).unwrap_err();
    assert!(e.contains("train.workers = 100000") && e.contains("at most 256"), "{e}");
    set(&["train.workers=256"]).unwrap();
    let e = set(&["data.synth.visj_random=1.5"]).unwrap_err();
    assert!(e.contains("visj_random"), "{e}");
    for bad in ["1.0", "-0.1"] {
        let e = set(&[&format!("data.synth.region_naming={bad}")]).unwrap_err();
        assert!(e.contains("data.synth.region_naming") && e.contains("outside 0..1"), "{e}");
    }
    let e = set(&["data.synth.rec_not_largest=2"]).unwrap_err();
    assert!(e.contains("data.synth.rec_not_largest") && e.contains("outside 0..=1"), "{e}");
    let e = set(&["data.synth.rec_turns=0"]).unwrap_err();
    assert!(e.contains("data.synth.rec_turns") && e.contains("at least 1"), "{e}");
    let e = set(&["data.synth.det_subsets=2"]).unwrap_err();
    assert!(e.contains("data.synth.det_subsets") && e.contains("outside 0..=1"), "{e}");
}

/// Optimizer settings that would silently ruin a run (a NaN decay writes NaN weights; a NaN or
/// negative clip turns clipping off) are rejected by name.
#[test]
fn optimizer_settings_are_checked() {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/synth/region224.toml");
    let set = |o: &[&str]| TrainConfig::from_file_with(&p, &o.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    for bad in ["nan", "-0.1", "inf"] {
        let e = set(&[&format!("train.weight_decay={bad}")]).unwrap_err();
        assert!(e.contains("train.weight_decay must be"), "{e}");
        let e = set(&[&format!("train.max_grad_norm={bad}")]).unwrap_err();
        assert!(e.contains("train.max_grad_norm must be"), "{e}");
    }
    assert!(set(&["train.weight_decay=0.05", "train.max_grad_norm=0"]).is_ok());
    // a decay of 1 would never move the average, NaN would write NaN weights
    for bad in ["nan", "-0.1", "1.0", "1.5"] {
        let e = set(&[&format!("train.ema_decay={bad}")]).unwrap_err();
        assert!(e.contains("train.ema_decay must be in [0, 1)"), "{e}");
    }
    assert!(set(&["train.ema_decay=0.99"]).is_ok());
    // an error of the overrides names them beside the file
    let e = set(&["trian.lr=3"]).unwrap_err();
    assert!(e.contains("with --set trian.lr") && e.contains("trian"), "{e}");
    let e = set(&["train.lr=abc"]).unwrap_err();
    assert!(e.contains("with --set train.lr"), "{e}");
}

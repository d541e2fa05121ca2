//! The bundled default model (models/default, docs/SYNTH.md) and the README's main command: without
//! --model or $GRIFFON_MODEL `griffon detect` runs the default model, and on the bundled sample
//! scene it finds an object of the scene (same label, IoU >= 0.5 with the generator's own
//! annotation). The sample scene is checked to be the one `griffon synth` writes, so the
//! annotation comes from the generator, not from the repo.

use griffon_core::iou_xyxy;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const SCENE: &str = "001801"; // the first test scene with two objects or more (docs/SYNTH.md)
const CATEGORIES: &str = "circle,cross,diamond,ring,square,triangle";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn griffon() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_griffon"));
    c.env_remove("GRIFFON_MODEL");
    c
}

/// The scene's objects as (label, xyxy pixels), from the COCO file `griffon synth` writes.
fn ground_truth(dir: &Path) -> Vec<(String, [f64; 4])> {
    let coco: Value = serde_json::from_slice(&std::fs::read(dir.join("test/instances.json")).unwrap()).unwrap();
    let file = format!("{SCENE}.png");
    let id = coco["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["file_name"] == file.as_str())
        .expect("scene in the split")["id"]
        .clone();
    let name = |cid: &Value| {
        coco["categories"].as_array().unwrap().iter().find(|c| &c["id"] == cid).unwrap()["name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    coco["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["image_id"] == id)
        .map(|a| {
            let b: Vec<f64> = a["bbox"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            (name(&a["category_id"]), [b[0], b[1], b[0] + b[2], b[1] + b[3]])
        })
        .collect()
}

/// The probe's test split written by `griffon synth` into a temporary folder (docs/SYNTH.md),
/// after checking that the bundled scene is the generator's (so annotations come from it).
fn generated_split(scene: &Path) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let out = griffon()
        .args(["synth", "--out", tmp.path().to_str().unwrap(), "--n", "2000", "--seed", "0", "--split", "test"])
        .args(["--size", "224", "--object-scale", "4", "--max-objects", "3"])
        .output()
        .expect("run griffon synth");
    assert!(out.status.success(), "griffon synth: {}", String::from_utf8_lossy(&out.stderr));
    let generated = std::fs::read(tmp.path().join(format!("images/test/{SCENE}.png"))).unwrap();
    assert!(generated == std::fs::read(scene).unwrap(), "{} is not the scene griffon synth writes", scene.display());
    tmp
}

#[test]
fn default_model_finds_an_object_of_the_bundled_scene() {
    let root = root();
    let model = root.join("models/default/config.json");
    assert!(
        model.is_file(),
        "the bundled default model {} is missing (tools/synth/bundle_default.sh)",
        model.display()
    );
    let scene = root.join(format!("examples/synth/{SCENE}.png"));
    assert!(scene.is_file(), "the bundled sample scene {} is missing", scene.display());

    // the sample scene is the generator's: the probe's test split (docs/SYNTH.md)
    let tmp = generated_split(&scene);
    let truth = ground_truth(tmp.path());
    assert!(truth.len() >= 2, "{truth:?}");

    // the README's main command, with --json instead of --save
    let out = griffon()
        .args(["detect", "--image", scene.to_str().unwrap(), "--categories", CATEGORIES, "--json"])
        .output()
        .expect("run griffon detect");
    assert!(out.status.success(), "griffon detect: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let found: Vec<(String, [f64; 4])> = v["detections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let b: Vec<f64> = d["box"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            (d["label"].as_str().unwrap_or("").to_string(), [b[0], b[1], b[2], b[3]])
        })
        .collect();
    let hit = found.iter().any(|(l, b)| truth.iter().any(|(tl, tb)| l == tl && iou_xyxy(*b, *tb) >= 0.5));
    assert!(
        hit,
        "no detection matches an object of the scene (label and IoU >= 0.5): found {found:?}, truth {truth:?}"
    );
}

/// `griffon resize-tower` stores the table the engine's `--image-size` makes at load: the bundled
/// model resized to 448 px answers exactly as the bundled model run with `--image-size 448`.
#[test]
fn resized_copy_answers_as_the_load_time_resize() {
    let root = root();
    let scene = root.join(format!("examples/synth/{SCENE}.png"));
    let tmp = tempfile::tempdir().unwrap();
    let resized = tmp.path().join("default-448");
    let out = griffon()
        .args(["resize-tower", "--model", root.join("models/default").to_str().unwrap()])
        .args(["--image-size", "448", "--pos-interp", "bicubic", "--out", resized.to_str().unwrap()])
        .output()
        .expect("run griffon resize-tower");
    assert!(out.status.success(), "griffon resize-tower: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("from 16x16 to 32x32 patches"));
    assert!(!resized.join("README.md").exists(), "the source's model card describes the source, not the copy");
    let detect = |extra: &[&str]| {
        let out = griffon()
            .args(["detect", "--image", scene.to_str().unwrap(), "--categories", CATEGORIES, "--json"])
            .args(extra)
            .output()
            .expect("run griffon detect");
        assert!(out.status.success(), "griffon detect {extra:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let native = detect(&["--model", resized.to_str().unwrap()]);
    let at_load = detect(&["--image-size", "448", "--pos-interp", "bicubic"]);
    assert_eq!(native, at_load);
    // its answer is not the 224 px one (the size took effect)
    assert_ne!(native, detect(&[]));
}

/// The bundled model's region path is trained (docs/SYNTH.md, session 12): asked to describe an
/// exemplar crop given as a visual prompt (the REG prompt with `<region>`), it names the colour of
/// each object of the bundled scene, and the two answers differ. The model bundled before, whose
/// region encoder was never trained, answered "a large white circle" for both.
#[test]
fn default_model_names_the_colour_of_an_exemplar() {
    let root = root();
    let scene = root.join(format!("examples/synth/{SCENE}.png"));
    let tmp = generated_split(&scene);
    // the scene's objects with their colour + shape names, from the generator's VISJ records
    let visj = std::fs::read_to_string(tmp.path().join("test/visj.jsonl")).unwrap();
    let rec: Value = visj
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["image_path"] == format!("{SCENE}.png").as_str())
        .expect("the scene's VISJ record");
    let img = image::open(&scene).unwrap().to_rgb8();
    let prompt = griffon_core::request::reg_region_prompt();
    let mut answers = Vec::new();
    for (k, o) in rec["objects"].as_array().unwrap().iter().enumerate() {
        let name = o["category_name"].as_str().unwrap();
        let b: Vec<u32> = o["bboxes"][0].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as u32).collect();
        let crop = image::imageops::crop_imm(&img, b[0], b[1], b[2] - b[0], b[3] - b[1]).to_image();
        let path = tmp.path().join(format!("exemplar{k}.png"));
        crop.save(&path).unwrap();
        let out = griffon()
            .args(["chat", "--image", scene.to_str().unwrap(), "--prompt", &prompt])
            .args(["--region", path.to_str().unwrap(), "--max-new-tokens", "12", "--json"])
            .output()
            .expect("run griffon chat");
        assert!(out.status.success(), "griffon chat: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
        let text = v["text"].as_str().unwrap().to_string();
        let colour = name.split(' ').next().unwrap();
        assert!(text.split(' ').any(|w| w == colour), "exemplar {name}: answered {text:?}");
        answers.push(text);
    }
    assert!(answers.len() >= 2 && answers[0] != answers[1], "{answers:?}");
}

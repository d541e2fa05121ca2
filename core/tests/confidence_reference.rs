//! The confidence port matches the reference `accum_probs` on recorded decodes
//! (fixtures from tools/reference/make_confidence_fixtures.py). Tolerance: relative 1e-6
//! (both multiply float32 values; torch may reduce in another order).

use griffon_core::confidence::reference_accum_probs;

#[test]
fn matches_reference_accum_probs() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/confidence.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run tools/reference/make_confidence_fixtures.py)", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    let mut non_empty = 0;
    for c in cases {
        let ids: Vec<u32> = c["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let probs: Vec<f32> = c["probs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        let want: Vec<f64> = c["expected"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let got =
            reference_accum_probs(&ids, &probs, c["start"].as_u64().unwrap() as u32, c["end"].as_u64().unwrap() as u32);
        assert_eq!(got.len(), want.len(), "{}", c["source"]);
        for (g, w) in got.iter().zip(&want) {
            let rel = ((*g as f64) - w).abs() / w.abs().max(1e-30);
            assert!(rel <= 1e-6, "{}: got {g}, reference {w}", c["source"]);
        }
        non_empty += usize::from(!want.is_empty());
    }
    assert!(non_empty >= 6, "too few informative cases");
}

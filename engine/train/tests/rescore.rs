//! Exploration aid (ignored): re-scores the candidates `tessera eval` dumped
//! (`TESSERA_EVAL_DUMP`) with another model folder's recognizer, so recognizers can be compared
//! on the same draws without sampling again. `DUMP=… MODEL=… OUT=… cargo test --release -p
//! tessera-train --test rescore -- --ignored`.

use std::io::Write;

use tessera_engine::loader::{LoadOptions, ModelSource};

#[test]
#[ignore]
fn rescore() {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("set {k}"));
    let (dump, model, out) = (var("DUMP"), var("MODEL"), var("OUT"));
    let source = ModelSource::open(&model).unwrap();
    let rec = source
        .load_recognizer(&LoadOptions::default())
        .unwrap()
        .expect("the model has a recognizer");
    let mut w = std::fs::File::create(&out).unwrap();
    for line in std::fs::read_to_string(&dump).unwrap().lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let (Some(x0), Some(region), Some(concept)) = (
            v.get("x0").cloned(),
            v.get("region").cloned(),
            v.get("concept").and_then(|c| c.as_u64()),
        ) {
            let grids: Vec<Vec<u32>> = serde_json::from_value(x0).unwrap();
            let region: Vec<bool> = serde_json::from_value(region).unwrap();
            let p = rec
                .probabilities(&grids, &region, concept as usize)
                .unwrap();
            v["rec"] = serde_json::json!(p);
            v.as_object_mut().unwrap().remove("x0");
            v.as_object_mut().unwrap().remove("region");
        }
        writeln!(w, "{v}").unwrap();
    }
}

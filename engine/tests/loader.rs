//! Loading official releases and Tessera folders, and the errors bad files get.

mod common;

use candle_core::{DType, Device};
use common::{copy_tree, golden, golden_cases};
use tessera_engine::Error;
use tessera_engine::loader::card::{Condition, Conditioning};
use tessera_engine::loader::import::{ImportOptions, import};
use tessera_engine::loader::pth::Checkpoint;
use tessera_engine::loader::{LoadOptions, ModelSource};
use tessera_engine::reference;

#[test]
fn golden_cases_reproduce_official_outputs() {
    for case in golden_cases() {
        let source = ModelSource::open(&case).unwrap();
        assert!(source.warnings().is_empty(), "{:?}", source.warnings());
        let model = source.load(&LoadOptions::default()).unwrap();
        let report = reference::check(&model, &case.join("expected.safetensors")).unwrap();
        for row in &report.rows {
            assert!(
                row.passed(),
                "{}: {} {:?}",
                case.display(),
                row.name,
                row.measure
            );
        }
        // Full forward and cached path for every stage, the VQGAN and the schedule.
        assert!(report.rows.len() >= 8 + 2 * model.card.levels());
    }
}

#[test]
fn imported_copy_matches_and_f16_is_close() {
    let case = golden().join("uncond_geometric");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model");
    let card = import(
        &case.join("sampling.yaml"),
        &out,
        &ImportOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(card.levels(), 3);
    let model = ModelSource::open(&out)
        .unwrap()
        .load(&LoadOptions::default())
        .unwrap();
    let report = reference::check(&model, &case.join("expected.safetensors")).unwrap();
    assert!(report.passed(), "{report:?}");

    // A second import into the same folder is refused unless asked for.
    let again = import(
        &case.join("sampling.yaml"),
        &out,
        &ImportOptions::default(),
        &mut |_| {},
    );
    assert!(matches!(again, Err(Error::Input(_))));

    let half = dir.path().join("half");
    let opts = ImportOptions {
        dtype: DType::F16,
        ..ImportOptions::default()
    };
    let card = import(&case.join("sampling.yaml"), &half, &opts, &mut |_| {}).unwrap();
    assert_eq!(card.dtype, "f16");
    let f32_size = std::fs::metadata(out.join("stage1.safetensors"))
        .unwrap()
        .len();
    let f16_size = std::fs::metadata(half.join("stage1.safetensors"))
        .unwrap()
        .len();
    assert!(f16_size * 10 < f32_size * 6, "{f16_size} vs {f32_size}");
    let model = ModelSource::open(&half)
        .unwrap()
        .load(&LoadOptions::default())
        .unwrap();
    let report = reference::check(&model, &case.join("expected.safetensors")).unwrap();
    // f16 weights cannot match to 1e-4, but the logits must stay close.
    for row in report.rows.iter().filter(|r| r.name.contains("logits")) {
        match row.measure {
            reference::Measure::MaxAbs(e) => assert!(e < 0.05, "{}: {e}", row.name),
            ref m => panic!("{}: {m:?}", row.name),
        }
    }
}

#[test]
fn official_card_describes_release() {
    let source = ModelSource::open(golden().join("class_custom/sampling.yaml")).unwrap();
    let card = source.card();
    assert_eq!(card.levels(), 2);
    assert_eq!(card.n_tokens, 40);
    assert_eq!(card.prefix_len(), 2);
    assert!(matches!(
        card.conditioning,
        Conditioning::Class { n_classes: 100, .. }
    ));
    assert_eq!(card.schedule.alphacum, vec![1.0, 0.7, 0.0]);
    // The prefix is [t, class] with the raw class id, for every stage.
    assert_eq!(card.prefix(2, &Condition::Class(7)), Ok(vec![2, 7]));
    assert_eq!(card.prefix(1, &Condition::Class(99)), Ok(vec![1, 99]));
    assert!(card.prefix(1, &Condition::Class(100)).is_err());
    assert!(card.prefix(3, &Condition::Class(1)).is_err());
    assert!(card.prefix(1, &Condition::None).is_err());
    assert!(card.prefix(1, &Condition::Text(vec![1])).is_err());
    let uncond = ModelSource::open(golden().join("uncond_geometric")).unwrap();
    assert_eq!(uncond.card().prefix(3, &Condition::None), Ok(vec![3]));
    assert!(uncond.card().prefix(1, &Condition::Class(0)).is_err());
}

#[test]
fn text_prefix_pads_truncates_and_offsets() {
    let source = ModelSource::open(golden().join("uncond_geometric")).unwrap();
    let mut card = source.card().clone();
    card.conditioning = Conditioning::Text {
        tokenizer: "tokenizer.json".into(),
        context_len: 4,
        token_offset: 40,
        pad_id: 0,
        class_names: vec![],
    };
    assert_eq!(card.prefix_len(), 5);
    assert_eq!(
        card.prefix(2, &Condition::Text(vec![5, 6])),
        Ok(vec![2, 45, 46, 40, 40])
    );
    assert_eq!(
        card.prefix(1, &Condition::Text(vec![1, 2, 3, 4, 5, 6])),
        Ok(vec![1, 41, 42, 43, 44])
    );
    assert_eq!(
        card.prefix(1, &Condition::None),
        Ok(vec![1, 40, 40, 40, 40])
    );
}

#[test]
fn checkpoint_reads_lazily_and_skips_non_tensors() {
    let ckpt = Checkpoint::open(golden().join("uncond_geometric/models/scale1.ckpt")).unwrap();
    assert!(ckpt.contains("transformer_ema.encodernormweight"));
    assert!(ckpt.contains("first_stage_model.quantize.used"));
    let (shape, dtype) = ckpt.info("first_stage_model.quantize.used").unwrap();
    assert_eq!((shape, dtype), (&[40usize][..], DType::I64));
    let used = ckpt.get("first_stage_model.quantize.used").unwrap();
    let used = used.to_vec1::<i64>().unwrap();
    assert!(
        used.windows(2).all(|w| w[0] < w[1]),
        "remap table is sorted"
    );
    assert!(matches!(ckpt.get("nope"), Err(Error::MissingKey { .. })));
}

#[test]
fn truncated_checkpoint_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&golden().join("uncond_geometric"), dir.path());
    let ckpt = dir.path().join("models/scale1.ckpt");
    let bytes = std::fs::read(&ckpt).unwrap();
    std::fs::write(&ckpt, &bytes[..bytes.len() / 2]).unwrap();
    let err = ModelSource::open(dir.path()).unwrap_err();
    assert!(
        matches!(&err, Error::BadFile { path, .. } if path.ends_with("scale1.ckpt")),
        "{err}"
    );
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn truncated_stage_data_is_a_clear_error() {
    // Stage 2 is only opened when loaded: the tensor table is fine, the data is cut.
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&golden().join("uncond_geometric"), dir.path());
    let ckpt = dir.path().join("models/scale3.ckpt");
    let bytes = std::fs::read(&ckpt).unwrap();
    // Zero a stretch in the middle: the archive still opens, the data is corrupt.
    let mut cut = bytes.clone();
    let n = cut.len();
    cut[n / 3..n / 3 + 4096].fill(0);
    std::fs::write(&ckpt, &cut).unwrap();
    let source = ModelSource::open(dir.path()).unwrap();
    let result = source.load_stage(3, &LoadOptions::default());
    // Either the zip detects it or the values are read; it must never panic. When zip
    // reports it, the message names the file.
    if let Err(e) = result {
        assert!(e.to_string().contains("scale3.ckpt"), "{e}");
    }
}

#[test]
fn not_a_checkpoint_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&golden().join("uncond_geometric"), dir.path());
    std::fs::write(
        dir.path().join("models/scale1.ckpt"),
        b"this is not a checkpoint",
    )
    .unwrap();
    let err = ModelSource::open(dir.path()).unwrap_err();
    assert!(matches!(err, Error::BadFile { .. }), "{err}");
    assert!(
        err.to_string().contains("not a PyTorch zip checkpoint"),
        "{err}"
    );
}

#[test]
fn manifest_naming_missing_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&golden().join("class_custom"), dir.path());
    std::fs::remove_file(dir.path().join("models/scale2.ckpt")).unwrap();
    let err = ModelSource::open(dir.path().join("sampling.yaml")).unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
    assert!(err.to_string().contains("models/scale2.ckpt"), "{err}");
}

#[test]
fn wrong_config_names_key_and_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&golden().join("uncond_geometric"), dir.path());
    let cfg = dir.path().join("configs/uncond_geometric-scale2.yaml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("dim: 48", "dim: 32");
    std::fs::write(&cfg, text).unwrap();
    let source = ModelSource::open(dir.path()).unwrap();
    let err = match source.load_stage(2, &LoadOptions::default()) {
        Ok(_) => panic!("a wrong width must not load"),
        Err(e) => e,
    };
    match &err {
        Error::ShapeMismatch {
            path,
            key,
            expected,
            found,
        } => {
            assert!(path.ends_with("scale2.ckpt"));
            assert!(key.starts_with("transformer_ema."), "{key}");
            assert!(
                expected.contains(&32) && found.contains(&48),
                "{expected:?} {found:?}"
            );
        }
        other => panic!("expected a shape mismatch, got {other}"),
    }
}

#[test]
fn missing_tensor_in_tessera_folder_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    import(
        &golden().join("class_custom/sampling.yaml"),
        &out,
        &ImportOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    let file = out.join("stage2.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    tensors.remove("ln_f.weight").unwrap();
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let source = ModelSource::open(&out).unwrap();
    assert!(source.load_stage(1, &LoadOptions::default()).is_ok());
    let err = match source.load_stage(2, &LoadOptions::default()) {
        Ok(_) => panic!("a missing tensor must not load"),
        Err(e) => e,
    };
    assert!(
        matches!(&err, Error::MissingKey { key, .. } if key == "ln_f.weight"),
        "{err}"
    );
}

#[test]
fn corrupt_card_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.json"), "{ not json").unwrap();
    let err = ModelSource::open(dir.path()).unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
    let err = ModelSource::open(dir.path().join("nowhere")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
}

#[test]
fn lazy_model_loads_one_stage_at_a_time_and_samples_the_same() {
    use tessera_engine::pipeline::{ChainRequest, Observer, Progress, run_chain};
    struct Watch<'a> {
        model: &'a tessera_engine::loader::Model,
        most_resident: usize,
    }
    impl Observer for Watch<'_> {
        fn progress(&mut self, _: Progress<'_>) {
            self.most_resident = self.most_resident.max(self.model.resident_stages().len());
        }
        fn cancelled(&self) -> bool {
            false
        }
    }
    let source = ModelSource::open(golden().join("uncond_geometric")).unwrap();
    let eager = source.load(&LoadOptions::default()).unwrap();
    let lazy_opts = LoadOptions {
        lazy: true,
        ..LoadOptions::default()
    };
    let lazy = source.load(&lazy_opts).unwrap();
    assert!(lazy.is_lazy() && lazy.resident_stages().is_empty());
    assert_eq!(eager.resident_stages(), vec![1, 2, 3]);
    let mut req = ChainRequest::new(&eager.card);
    req.seed = 11;
    req.candidates = 2;
    let mut w = Watch {
        model: &eager,
        most_resident: 0,
    };
    let a = run_chain(&eager, &req, &mut w).unwrap();
    let mut w = Watch {
        model: &lazy,
        most_resident: 0,
    };
    let b = run_chain(&lazy, &req, &mut w).unwrap();
    assert_eq!(a, b);
    assert_eq!(w.most_resident, 1, "only the running stage is resident");
    assert!(lazy.resident_stages().is_empty());
    // The reference check works on a lazy model as well.
    let report = reference::check(
        &lazy,
        &golden().join("uncond_geometric/expected.safetensors"),
    );
    assert!(report.unwrap().passed());
}

#[test]
fn card_sampling_recommendation_is_the_request_default_and_checked() {
    use tessera_engine::pipeline::ChainRequest;
    use tessera_engine::sampler::LevelParams;
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("model");
    let case = golden().join("uncond_geometric");
    let card = import(
        &case.join("sampling.yaml"),
        &folder,
        &ImportOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    // Official releases carry no recommendation: their own distribution at every level.
    assert_eq!(card.sampling, None);
    let req = ChainRequest::new(&card);
    assert!(req.levels.iter().all(|l| *l == LevelParams::default()));

    let card_path = folder.join("model.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&card_path).unwrap()).unwrap();
    assert!(
        json.get("sampling").is_none(),
        "no recommendation, nothing written"
    );
    json["sampling"] = serde_json::json!({"temperature": 0.9, "top_k": null, "top_p": 0.8});
    std::fs::write(&card_path, json.to_string()).unwrap();
    let card = ModelSource::open(&folder).unwrap().card().clone();
    let want = LevelParams {
        temperature: 0.9,
        top_k: None,
        top_p: Some(0.8),
    };
    assert_eq!(card.sampling, Some(want));
    assert_eq!(ChainRequest::new(&card).levels, vec![want; card.levels()]);

    // A recommendation outside the valid ranges is refused with the reason.
    json["sampling"]["top_p"] = serde_json::json!(1.5);
    std::fs::write(&card_path, json.to_string()).unwrap();
    let err = ModelSource::open(&folder).unwrap_err().to_string();
    assert!(err.contains("sampling") && err.contains("top-p"), "{err}");
}

#[test]
fn class_custom_configs_read_to_their_checkpoint_buffers_bit_for_bit() {
    use tessera_engine::loader::official::read_stage_config;
    use tessera_engine::schedule::Schedule;
    let case = golden().join("class_custom");
    let source = ModelSource::open(&case).unwrap();
    assert!(source.warnings().is_empty(), "{:?}", source.warnings());
    let buffers = &source.card().schedule;
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for t in 1..=2 {
        let config = case.join(format!("configs/class_custom-scale{t}.yaml"));
        let c = read_stage_config(&config).unwrap();
        let text = c
            .redraw_prob
            .expect("class_custom configs give redraw_prob");
        assert!(text.starts_with("alphacum:"), "{text}");
        let parsed = Schedule::from_redraw_prob(&text, c.levels).unwrap();
        assert_eq!(bits(&parsed.alphats), bits(&buffers.alphats), "{text}");
        assert_eq!(bits(&parsed.alphacum), bits(&buffers.alphacum), "{text}");
    }
}

/// A copy of `class_custom` whose stage configs say `redraw_prob: <value>` instead.
fn class_custom_with(dir: &std::path::Path, redraw_probs: [&str; 2]) {
    copy_tree(&golden().join("class_custom"), dir);
    for (t, r) in (1..=2).zip(redraw_probs) {
        let path = dir.join(format!("configs/class_custom-scale{t}.yaml"));
        let text = std::fs::read_to_string(&path).unwrap();
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("redraw_prob:"))
            .unwrap();
        let indent = &line[..line.len() - line.trim_start().len()];
        std::fs::write(
            &path,
            text.replace(line, &format!("{indent}redraw_prob: {r}")),
        )
        .unwrap();
    }
}

#[test]
fn a_config_schedule_that_disagrees_with_the_checkpoint_is_reported_and_the_buffers_used() {
    let dir = tempfile::tempdir().unwrap();
    // Both stages in the old spelling: one warning for both, with the corrected string.
    let old = dir.path().join("old");
    class_custom_with(&old, ["alphacum:0.7,0.0", "alphacum:0.7,0.0"]);
    let source = ModelSource::open(&old).unwrap();
    let w = source.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("the configs of stages 1–2"), "{}", w[0]);
    assert!(w[0].contains("`alphacum:1,0.7,0.0`"), "{}", w[0]);
    assert!(w[0].contains("ᾱ = [1, 0.7, 0]"), "{}", w[0]);
    assert!(w[0].contains("Tessera uses"), "{}", w[0]);
    assert_eq!(source.card().schedule.alphacum, vec![1.0, 0.7, 0.0]);

    // One stage parses to another schedule, the other agrees: only that stage is named.
    let other = dir.path().join("other");
    class_custom_with(&other, ["alphacum:1.0,0.7,0.0", "geometric"]);
    let source = ModelSource::open(&other).unwrap();
    let w = source.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("class_custom-scale2.yaml (stage 2)"),
        "{}",
        w[0]
    );
    assert!(w[0].contains("ᾱ = [1, 0.5, 0]"), "{}", w[0]);
    assert!(w[0].contains("ᾱ = [1, 0.7, 0]"), "{}", w[0]);
    // The buffers are what runs: the official outputs are still reproduced.
    let model = source.load(&LoadOptions::default()).unwrap();
    let report = reference::check(&model, &other.join("expected.safetensors")).unwrap();
    assert!(report.passed(), "{:?}", report.rows);
}

/// Logits of every stage of `model` on the golden inputs of `case`.
fn golden_stage_logits(
    model: &tessera_engine::loader::Model,
    case: &std::path::Path,
) -> Vec<candle_core::Tensor> {
    use tessera_engine::loader::Stage;
    let expected =
        candle_core::safetensors::load(case.join("expected.safetensors"), &Device::Cpu).unwrap();
    (1..=model.card.levels())
        .map(|t| match &*model.stage(t).unwrap() {
            Stage::EncDec(n) => n
                .forward(
                    &expected[&format!("stage{t}.src")],
                    &expected[&format!("stage{t}.tgt")],
                )
                .unwrap(),
            Stage::Gpt(n) => n.forward(&expected[&format!("stage{t}.idx")]).unwrap(),
        })
        .collect()
}

#[test]
fn quantized_import_stores_gguf_blocks_that_load_exactly() {
    use candle_core::quantized::GgmlDType;
    use tessera_engine::loader::gguf::GgufWeights;
    let case = golden().join("class_custom");
    let dir = tempfile::tempdir().unwrap();
    let official = ModelSource::open(&case).unwrap();
    for (name, q) in [("q8_0", GgmlDType::Q8_0), ("q4k", GgmlDType::Q4K)] {
        let out = dir.path().join(name);
        let opts = ImportOptions {
            quantize: Some(q),
            ..ImportOptions::default()
        };
        let card = import(&case.join("sampling.yaml"), &out, &opts, &mut |_| {}).unwrap();
        assert_eq!(card.dtype, name);
        for t in 1..=2 {
            let stage = &card.stages[t - 1];
            assert_eq!(stage.weights, format!("stage{t}.gguf"));
            let w = GgufWeights::open(out.join(&stage.weights)).unwrap();
            let quantized = w.quantized_names();
            assert!(!quantized.is_empty(), "{name} stage {t}");
            // Every stored tensor of the stage, quantized or not, counts as a parameter.
            assert!(stage.parameters > 0);
        }
        // The feed-forward's output layer reads 256 inputs: a whole q4k super-block. The
        // attention layers read 64 (dim), so a k-quant falls back to q8_0 there.
        let w = GgufWeights::open(out.join("stage1.gguf")).unwrap();
        let fc_out = "encoder.attn_layers.layers.1.1.net.2.weight";
        let to_q = "encoder.attn_layers.layers.0.1.to_q.weight";
        assert_eq!(w.dtype(fc_out), Some(q), "{:?}", w.quantized_names());
        assert_eq!(w.dtype(to_q), Some(GgmlDType::Q8_0));
        assert!(!w.is_quantized("encoder.attn_layers.layers.0.0.weight"));

        // Loaded from the file, the stages compute exactly what the f32 release quantized in
        // memory computes: the blocks are stored, not re-derived.
        let stored = ModelSource::open(&out)
            .unwrap()
            .load(&LoadOptions::default())
            .unwrap();
        let in_memory = official
            .load(&LoadOptions {
                quantize: Some(q),
                ..LoadOptions::default()
            })
            .unwrap();
        let (a, b) = (
            golden_stage_logits(&stored, &case),
            golden_stage_logits(&in_memory, &case),
        );
        for (t, (a, b)) in a.iter().zip(&b).enumerate() {
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(
                diff.to_scalar::<f32>().unwrap(),
                0.0,
                "{name} stage {}",
                t + 1
            );
        }
        // A stored-quantized stage takes no second quantization or other weight type.
        let source = ModelSource::open(&out).unwrap();
        for opts in [
            LoadOptions {
                quantize: Some(GgmlDType::Q8_0),
                ..LoadOptions::default()
            },
            LoadOptions {
                dtype: DType::F16,
                ..LoadOptions::default()
            },
        ] {
            let e = source.load_stage(1, &opts).err().expect("refused");
            assert!(
                matches!(e, Error::Input(_)) && e.to_string().contains(name),
                "{e}"
            );
        }
    }
    // Quantized stages with half-precision other tensors are refused before any work.
    let opts = ImportOptions {
        dtype: DType::F16,
        quantize: Some(GgmlDType::Q8_0),
        ..ImportOptions::default()
    };
    let e = import(
        &case.join("sampling.yaml"),
        &dir.path().join("x"),
        &opts,
        &mut |_| {},
    );
    assert!(matches!(e, Err(Error::Input(_))));
    assert!(!dir.path().join("x").exists());
}

#[test]
fn broken_gguf_stages_are_clear_errors() {
    use candle_core::quantized::GgmlDType;
    let case = golden().join("class_custom");
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    let opts = ImportOptions {
        quantize: Some(GgmlDType::Q8_0),
        ..ImportOptions::default()
    };
    import(&case.join("sampling.yaml"), &good, &opts, &mut |_| {}).unwrap();
    let bytes = std::fs::read(good.join("stage1.gguf")).unwrap();

    // Truncated (in the tensor data, then in the header): the file is named.
    for keep in [bytes.len() - 100, 40] {
        let bad = dir.path().join(format!("cut{keep}"));
        copy_tree(&good, &bad);
        std::fs::write(bad.join("stage1.gguf"), &bytes[..keep]).unwrap();
        let e = ModelSource::open(&bad)
            .unwrap()
            .load_stage(1, &LoadOptions::default())
            .err()
            .expect("a truncated stage must not load");
        match &e {
            Error::BadFile { path, .. } => assert!(path.ends_with("stage1.gguf"), "{e}"),
            other => panic!("{other}"),
        }
    }

    // Another stage's file in its place: the first weight it lacks is named with the file.
    let swapped = dir.path().join("swapped");
    copy_tree(&good, &swapped);
    std::fs::copy(good.join("stage2.gguf"), swapped.join("stage1.gguf")).unwrap();
    let e = ModelSource::open(&swapped)
        .unwrap()
        .load_stage(1, &LoadOptions::default())
        .err()
        .expect("the wrong stage must not load");
    assert!(
        matches!(&e, Error::MissingKey { path, .. } | Error::ShapeMismatch { path, .. }
            if path.ends_with("stage1.gguf")),
        "{e}"
    );
}

#[test]
fn a_model_that_does_not_fit_in_memory_is_refused_up_front() {
    use tessera_engine::loader::{check_memory, resident_bytes};
    let source = ModelSource::open(golden().join("class_custom/sampling.yaml")).unwrap();
    let card = source.card();
    let params: u64 = card.stages.iter().map(|s| s.parameters as u64).sum();
    let f32 = LoadOptions::default();
    assert_eq!(resident_bytes(card, &f32), 4 * params);
    let lazy = LoadOptions {
        lazy: true,
        ..LoadOptions::default()
    };
    let largest = card
        .stages
        .iter()
        .map(|s| s.parameters as u64)
        .max()
        .unwrap();
    assert_eq!(resident_bytes(card, &lazy), 4 * largest);
    let q8 = LoadOptions {
        quantize: Some(candle_core::quantized::GgmlDType::Q8_0),
        ..LoadOptions::default()
    };
    assert!(resident_bytes(card, &q8) < resident_bytes(card, &f32) / 3);
    assert!(check_memory(card, &f32, 4 * params).is_ok());
    let e = check_memory(card, &f32, 1000).unwrap_err().to_string();
    assert!(
        e.contains("needs about 0.0 GB") && e.contains("only 0.0 GB") && e.contains("q8_0"),
        "{e}"
    );
}

//! `tessera train` and `tessera eval` as a user runs them: the smoke recipe on the emoji
//! fixture (a few seconds of training), resumed, loaded and measured.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/train/tests/fixtures/emoji")
}

fn tessera(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .output()
        .expect("run tessera");
    common::outcome(out)
}

/// `tessera train` of the smoke recipe on the fixture, into `work` and `out`.
fn train_smoke(work: &Path, out: &Path, extra: &[&str]) -> (bool, String) {
    train_recipe("smoke", work, out, extra)
}

/// `tessera train --recipe RECIPE` on the fixture, into `work` and `out`.
fn train_recipe(recipe: &str, work: &Path, out: &Path, extra: &[&str]) -> (bool, String) {
    let data = fixture();
    let mut args = vec![
        "train",
        "--recipe",
        recipe,
        "--fixture",
        "--data",
        data.to_str().unwrap(),
        "--work",
        work.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    tessera(&args)
}

#[test]
fn smoke_training_writes_a_model_that_samples_resumes_and_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let out = dir.path().join("model");
    let run = |force: bool| {
        let extra: &[&str] = if force { &["--force"] } else { &[] };
        train_smoke(&work, &out, extra)
    };

    let (ok, text) = run(false);
    assert!(ok, "{text}");
    for f in [
        "model.json",
        "vqgan.safetensors",
        "stage1.safetensors",
        "stage2.safetensors",
        "tokenizer.json",
        "recognizer.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f} missing after training:\n{text}");
    }
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model.json")).unwrap()).unwrap();
    assert_eq!(card["stages"].as_array().unwrap().len(), 2);
    // The concept recognizer trained beside the stages, one concept per class.
    assert_eq!(
        card["recognizer"]["concepts"].as_array().unwrap().len(),
        card["conditioning"]["class_names"]
            .as_array()
            .unwrap()
            .len(),
        "{card}"
    );
    assert!(text.contains("held-out top-1"), "{text}");
    assert!(
        work.join("stage2/metrics.jsonl").is_file(),
        "no metrics log:\n{text}"
    );
    // The model carries the VQGAN with the fine-tuned decoder, not the one the pool came from.
    assert!(work.join("decoder/metrics.jsonl").is_file(), "{text}");
    let shipped = std::fs::read(out.join("vqgan.safetensors")).unwrap();
    assert_eq!(
        shipped,
        std::fs::read(work.join("vqgan-tuned.safetensors")).unwrap()
    );
    assert_ne!(
        shipped,
        std::fs::read(work.join("vqgan.safetensors")).unwrap()
    );
    // The smoke recipe's decoder is deeper than its encoder; the card says so.
    let (enc, dec) = (
        &card["vqgan"]["ddconfig"]["num_res_blocks"],
        &card["vqgan"]["decoder_ddconfig"]["num_res_blocks"],
    );
    assert_eq!((enc.as_u64(), dec.as_u64()), (Some(1), Some(2)), "{card}");

    // The model folder is never replaced without --force.
    let (ok, text) = run(false);
    assert!(!ok && text.contains("--force"), "{text}");
    // A rerun finds the finished phases in the work folder instead of training again.
    let (ok, text) = run(true);
    assert!(ok, "{text}");
    assert!(text.contains("vqgan: found in the work folder"), "{text}");
    assert!(text.contains("pool: found in the work folder"), "{text}");
    assert!(text.contains("decoder: found in the work folder"), "{text}");
    assert!(
        text.contains("recognizer: found in the work folder"),
        "{text}"
    );

    // The trained model samples through the ordinary command line, with a prompt.
    let png = dir.path().join("sample.png");
    let (ok, text) = tessera(&[
        "sample",
        "--model",
        out.to_str().unwrap(),
        "--prompt",
        "red apple",
        "--guidance",
        "2",
        "-o",
        png.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (32, 32));

    // What only goes into the card may change after training (a guidance measured best): the
    // rerun exports the card anew from the finished phases; anything that trains may not.
    let (ok, printed) = tessera(&["train", "--recipe", "smoke", "--print-recipe"]);
    assert!(ok, "{printed}");
    let mut recipe: serde_json::Value = serde_json::from_str(&printed).unwrap();
    recipe["guidance_scale"] = 2.5.into();
    let recipe_path = dir.path().join("smoke-guided.json");
    std::fs::write(&recipe_path, recipe.to_string()).unwrap();
    let stage1 = std::fs::read(out.join("stage1.safetensors")).unwrap();
    let retrain = |path: &Path| train_recipe(path.to_str().unwrap(), &work, &out, &["--force"]);
    let (ok, text) = retrain(&recipe_path);
    assert!(ok, "{text}");
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model.json")).unwrap()).unwrap();
    assert_eq!(card["guidance_scale"], 2.5, "{card}");
    // The recipe's recommended chain counts reach the card.
    assert_eq!(card["chains"], serde_json::json!([1, 1]), "{card}");
    assert_eq!(
        std::fs::read(out.join("stage1.safetensors")).unwrap(),
        stage1
    );
    recipe["stage_steps"] = serde_json::json!([5, 5]);
    std::fs::write(&recipe_path, recipe.to_string()).unwrap();
    let (ok, text) = retrain(&recipe_path);
    assert!(!ok && text.contains("another recipe"), "{text}");

    // The work folder's VQGAN is measured on its own (before any stage would be trained).
    let vq_json = dir.path().join("vq.json");
    let (ok, text) = tessera(&[
        "eval",
        "--vqgan-of",
        work.to_str().unwrap(),
        "--fixture",
        "--data",
        fixture().to_str().unwrap(),
        "--n",
        "4",
        "--json",
        vq_json.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("fine-tuned VQGAN of"), "{text}");
    let vq: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&vq_json).unwrap()).unwrap();
    assert!(
        vq["psnr_db"]
            .as_f64()
            .is_some_and(|p| p.is_finite() && p > 0.0),
        "{vq}"
    );
    assert_eq!(vq["fine_tuned"], true);
    let empty = dir.path().join("empty-work");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(work.join("recipe.json"), empty.join("recipe.json")).unwrap();
    let (ok, text) = tessera(&["eval", "--vqgan-of", empty.to_str().unwrap()]);
    assert!(!ok && text.contains("has no VQGAN yet"), "{text}");

    // Evaluation runs end to end and reports sane numbers.
    let json = dir.path().join("eval.json");
    let sheet = dir.path().join("sheet.png");
    let (ok, text) = tessera(&[
        "eval",
        "--model",
        out.to_str().unwrap(),
        "--recipe",
        "smoke",
        "--fixture",
        "--data",
        fixture().to_str().unwrap(),
        "--classifier",
        dir.path().join("cls").to_str().unwrap(),
        "--classifier-steps",
        "3",
        "--n",
        "4",
        "--json",
        json.to_str().unwrap(),
        "--sheet",
        sheet.to_str().unwrap(),
        "--sheet-rows",
        "2",
    ]);
    assert!(ok, "{text}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let psnr = report["psnr_db"].as_f64().unwrap();
    assert!(psnr.is_finite() && psnr > 0.0, "{report}");
    let nll = report["nll_bits"].as_array().unwrap();
    assert_eq!(nll.len(), 2);
    for v in nll {
        // Can't beat 0 bits, and a model can't be much worse than uniform over 64 codes.
        let v = v.as_f64().unwrap();
        assert!(v > 0.0 && v < 8.0, "{report}");
    }
    let uncond = report["nll_bits_uncond"].as_array().unwrap();
    assert_eq!(uncond.len(), 2, "{report}");
    assert!(
        uncond
            .iter()
            .all(|v| v.as_f64().is_some_and(|v| v > 0.0 && v < 8.0)),
        "{report}"
    );
    assert_eq!(
        report["against_reference"],
        serde_json::json!([]),
        "{report}"
    );
    // Quantized, each level's logits are also measured against the model as stored.
    let qjson = dir.path().join("eval-q8.json");
    let (ok, qtext) = tessera(&[
        "eval",
        "--model",
        out.to_str().unwrap(),
        "--recipe",
        "smoke",
        "--fixture",
        "--data",
        fixture().to_str().unwrap(),
        "--classifier",
        dir.path().join("cls").to_str().unwrap(),
        "--n",
        "4",
        "--fid",
        "0",
        "--quantize",
        "q8_0",
        "--json",
        qjson.to_str().unwrap(),
    ]);
    assert!(ok, "{qtext}");
    assert!(qtext.contains("q8_0"), "{qtext}");
    let q: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&qjson).unwrap()).unwrap();
    let levels = q["against_reference"].as_array().unwrap();
    assert_eq!(levels.len(), 2, "{q}");
    for l in levels {
        let (kl, top1) = (l["kl_bits"].as_f64().unwrap(), l["top1"].as_f64().unwrap());
        // 8-bit weights move a distribution a little, never to another one. (The smoke
        // model's logits are nearly flat after a few steps, so near-ties may flip: the top-1
        // share is only checked to be one.)
        assert!((-1e-6..0.05).contains(&kl), "{q}");
        assert!((0.0..=1.0).contains(&top1), "{q}");
    }
    assert!(qtext.contains("against the reference: KL"), "{qtext}");
    // The guidance ceiling is scored on the same scenes: a share of them.
    let g = &report["guidance"];
    let n = g["n"].as_f64().unwrap();
    let hits = g["ceiling_acc"].as_f64().unwrap() * n;
    assert!(
        n >= 1.0 && hits >= 0.0 && hits <= n && (hits - hits.round()).abs() < 1e-9,
        "{report}"
    );
    assert!(text.contains("(the ceiling)"), "{text}");
    // Requests go round the concepts in turn, and each concept's hits are reported.
    let per_class = g["per_class"].as_array().unwrap();
    assert_eq!(per_class.len(), 40, "{report}");
    assert_eq!(per_class[0]["name"], "red heart");
    let counted: u64 = per_class.iter().map(|c| c["n"].as_u64().unwrap()).sum();
    assert_eq!(counted as f64, n, "{report}");
    assert!(
        per_class.iter().take(n as usize).all(|c| c["n"] == 1),
        "{report}"
    );
    assert!(text.contains("per requested class"), "{text}");
    assert!(
        text.contains("sampling: guidance 2.5, temperature 1, top-k off, top-p off"),
        "the card recommends guidance 2.5 (the recipe above) and no sampling, so the \
         network's own distribution: {text}"
    );
    let sheet = image::open(&sheet).unwrap();
    assert!(sheet.width() > sheet.height(), "4 columns, 2 rows");
    // Each row says what it asked for; the two rows ask for different concepts.
    let rows: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("sheet row "))
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(rows.iter().all(|r| r.contains(": prompt \"")), "{text}");
    let class_of = |r: &str| r.split(", class ").nth(1).map(str::to_string);
    assert_ne!(class_of(rows[0]), class_of(rows[1]), "{text}");
}

#[test]
fn train_scenes_shows_what_a_recipe_trains_on() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("scenes.png");
    let (ok, text) = tessera(&[
        "train",
        "--fixture",
        "--data",
        fixture().to_str().unwrap(),
        "--scenes",
        png.to_str().unwrap(),
        "--work",
        dir.path().join("work").to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    assert!(!dir.path().join("work").exists(), "nothing is trained");
    // The default recipe: 24 scenes of 128 px, 6 to a row with 4 px gaps.
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (6 * 132 + 4, 4 * 132 + 4));
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("[class ")).collect();
    assert_eq!(lines.len(), 24, "{text}");
    // Each line: row,col: caption [class id: concept name].
    assert!(lines[0].starts_with("0,0: "), "{text}");
    for l in &lines {
        let (_, class) = l.rsplit_once("[class ").unwrap();
        let (id, name) = class.trim_end_matches(']').split_once(": ").unwrap();
        let id: usize = id.parse().unwrap();
        assert_eq!(tessera_train::data::CONCEPTS[id].name, name, "{l}");
    }
}

#[test]
fn train_without_data_says_how_to_fetch_it() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = tessera(&[
        "train",
        "--data",
        dir.path().join("nothing").to_str().unwrap(),
        "--work",
        dir.path().join("w").to_str().unwrap(),
        "--out",
        dir.path().join("m").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(text.contains("scripts/fetch-data.sh"), "{text}");
}

#[test]
fn a_bad_recipe_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.json");
    std::fs::write(&path, "{\"levels\": 1}").unwrap();
    let (ok, text) = tessera(&[
        "train",
        "--recipe",
        path.to_str().unwrap(),
        "--fixture",
        "--data",
        fixture().to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(text.contains("at least 2 levels"), "{text}");
}

#[test]
fn eval_refuses_bad_sampling_settings_before_any_work() {
    for args in [
        &["eval", "--guidance-scale=-1"][..],
        &["eval", "--top-p", "1.5"][..],
        &["eval", "--temperature", "0"][..],
    ] {
        let (ok, text) = tessera(args);
        assert!(!ok, "{args:?} must fail: {text}");
        assert!(
            text.contains("guidance-scale")
                || text.contains("top-p")
                || text.contains("temperature"),
            "{args:?}: {text}"
        );
    }
}

#[test]
fn stages_trained_side_by_side_equal_stages_trained_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let train = |jobs: &str, name: &str| {
        let out = dir.path().join(name);
        let work = dir.path().join(format!("work-{name}"));
        let (ok, text) = train_smoke(&work, &out, &["--jobs", jobs]);
        assert!(ok, "--jobs {jobs}: {text}");
        (out, text)
    };
    let (one, _) = train("1", "one");
    let (two, text) = train("2", "two");
    assert!(text.contains("stages (2 at a time)"), "{text}");
    assert!(
        text.contains("stage 1:") && text.contains("stage 2:"),
        "each stage reports its time: {text}"
    );
    // Each stage depends only on its own seed and data, not on what trains beside it.
    for f in ["stage1.safetensors", "stage2.safetensors", "model.json"] {
        let (a, b) = (
            std::fs::read(one.join(f)).unwrap(),
            std::fs::read(two.join(f)).unwrap(),
        );
        assert!(a == b, "{f} differs between --jobs 1 and --jobs 2");
    }
}

#[test]
fn every_recipe_in_docs_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/recipes");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let recipe: tessera_train::recipe::Recipe =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Err(e) = recipe.validate() {
            panic!("{}: {e}", path.display());
        }
        n += 1;
    }
    assert!(n >= 5, "{n} recipes in {}", dir.display());
}

#[test]
fn a_recipe_in_the_old_alphacum_spelling_is_refused_with_the_correction() {
    let (ok, text) = tessera(&["train", "--recipe", "smoke", "--print-recipe"]);
    assert!(ok, "{text}");
    let mut recipe: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        recipe["levels"], 2,
        "the smoke recipe changed; adapt the schedule below"
    );
    recipe["schedule"] = "alphacum:0.75,0".into();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.json");
    std::fs::write(&path, recipe.to_string()).unwrap();
    let (ok, text) = tessera(&[
        "train",
        "--recipe",
        path.to_str().unwrap(),
        "--fixture",
        "--data",
        fixture().to_str().unwrap(),
        "--work",
        dir.path().join("work").to_str().unwrap(),
        "--out",
        dir.path().join("out").to_str().unwrap(),
    ]);
    assert!(!ok, "{text}");
    assert!(text.contains("`alphacum:1,0.75,0`"), "{text}");
    assert!(
        !dir.path().join("work").exists(),
        "nothing is written for a bad recipe"
    );
}

#[test]
fn recipes_without_an_object_grid_keep_free_placement() {
    use tessera_train::recipe::Recipe;
    let default = serde_json::to_value(Recipe::default()).unwrap();
    assert_eq!(
        default["object_grid"], 0,
        "the shipped recipe places objects freely"
    );
    // A recipe file written before the field: its scenes stay unsnapped.
    let mut old = default.clone();
    old.as_object_mut().unwrap().remove("object_grid");
    let old: Recipe = serde_json::from_value(old).unwrap();
    assert_eq!(old.object_grid, 0);
    // The experiment's recipe differs from the default in the grid alone.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/recipes");
    let grid: Recipe =
        serde_json::from_str(&std::fs::read_to_string(dir.join("concepts-grid8.json")).unwrap())
            .unwrap();
    assert_eq!(grid.object_grid, 8);
    grid.validate().unwrap();
    let training = |r: &Recipe| Recipe {
        name: String::new(),
        description: String::new(),
        object_grid: 0,
        ..r.clone()
    };
    assert_eq!(training(&grid), training(&Recipe::default()));
    let too_wide = Recipe {
        object_grid: 80,
        ..Recipe::default()
    };
    let e = too_wide.validate().unwrap_err().to_string();
    assert!(e.contains("object_grid 80"), "{e}");
}

/// The longer decoder fine-tune's recipe (docs/recipes) is the default but its step count.
#[test]
fn longer_decoder_recipe_differs_in_its_steps_alone() {
    use tessera_train::recipe::Recipe;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/recipes");
    let dec: Recipe =
        serde_json::from_str(&std::fs::read_to_string(dir.join("concepts-dec1600.json")).unwrap())
            .unwrap();
    dec.validate().unwrap();
    assert_eq!(dec.decoder.steps, 1600);
    let mut same = Recipe::default();
    same.decoder.steps = 1600;
    assert_eq!(
        Recipe {
            name: String::new(),
            description: String::new(),
            ..dec
        },
        Recipe {
            name: String::new(),
            description: String::new(),
            ..same
        }
    );
}

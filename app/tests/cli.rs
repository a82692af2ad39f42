//! The command line as a user runs it.
//!
//! One test file per module under test (each is its own test binary, and each binary links the
//! whole crate: splitting would cost CI disk and link time, not help a reader).

use std::path::Path;
use std::process::Command;

use candle_core::{Device, Tensor};

mod common;
use common::{class_custom_with_redraw_prob, copy_tree, golden};

fn tessera(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .output()
        .expect("run tessera");
    common::outcome(out)
}

/// `tessera sample --model M --class C --seed S -o OUT EXTRA…`.
fn sample_class(
    model: &Path,
    class: &str,
    seed: &str,
    out: &Path,
    extra: &[&str],
) -> (bool, String) {
    let mut args = vec![
        "sample",
        "--model",
        model.to_str().unwrap(),
        "--class",
        class,
        "--seed",
        seed,
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    tessera(&args)
}

#[test]
fn check_reference_passes_on_every_golden_case() {
    let mut n = 0;
    for entry in std::fs::read_dir(golden()).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("expected.safetensors").is_file() {
            continue;
        }
        let (ok, text) = tessera(&["check-reference", dir.to_str().unwrap()]);
        assert!(ok, "{}:\n{text}", dir.display());
        assert!(text.contains("imported (Tessera format)"), "{text}");
        assert!(text.contains("PASS"), "{text}");
        n += 1;
    }
    assert!(n >= 2);
}

#[test]
fn check_reference_fails_when_outputs_differ() {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&golden().join("uncond_geometric"), dir.path());
    let path = dir.path().join("expected.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    // Shift one logit by 1e-3: well above the 1e-4 tolerance.
    let logits = &tensors["stage2.logits"];
    let mut v = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v[17] += 1e-3;
    let shifted = Tensor::from_vec(v, logits.dims(), &Device::Cpu).unwrap();
    tensors.insert("stage2.logits".into(), shifted);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let (ok, text) = tessera(&["check-reference", dir.path().to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(text.contains("FAIL"), "{text}");
}

#[test]
fn import_then_info() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("imported");
    let manifest = golden().join("class_custom/sampling.yaml");
    let (ok, text) = tessera(&[
        "import",
        manifest.to_str().unwrap(),
        out.to_str().unwrap(),
        "--dtype",
        "f16",
    ]);
    assert!(ok, "{text}");
    assert!(out.join("model.json").is_file());
    let (ok, text) = tessera(&["info", out.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(text.contains("class (100 classes)"), "{text}");
    assert!(text.contains("f16"), "{text}");
    // Importing over an existing folder is refused without --force.
    let (ok, text) = tessera(&["import", manifest.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(!ok && text.contains("already exists"), "{text}");
}

#[test]
fn bad_paths_give_one_line_errors() {
    let (ok, text) = tessera(&["info", "/nonexistent/model"]);
    assert!(!ok);
    assert!(
        text.starts_with("error:") && text.contains("/nonexistent/model"),
        "{text}"
    );
    let (ok, text) = tessera(&["import", "/nonexistent.yaml", "/tmp/x", "--dtype", "f8"]);
    assert!(!ok && text.contains("f8"), "{text}");
}

fn write_png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)))
        .save(path)
        .unwrap();
}

#[test]
fn inpaint_writes_result_and_levels() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.png");
    let mask = dir.path().join("mask.png");
    write_png(&input, 90, 60, |x, y| [(x * 3) as u8, (y * 4) as u8, 100]);
    write_png(&mask, 90, 60, |x, y| {
        if (30..50).contains(&x) && (20..35).contains(&y) {
            [255; 3]
        } else {
            [0; 3]
        }
    });
    let out = dir.path().join("out.png");
    let levels = dir.path().join("levels");
    let model = golden().join("uncond_geometric");
    let args = [
        "inpaint",
        "--model",
        model.to_str().unwrap(),
        "--image",
        input.to_str().unwrap(),
        "--mask",
        mask.to_str().unwrap(),
        "--seed",
        "4",
        "--candidates",
        "2",
        "--levels-dir",
        levels.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    let (ok, text) = tessera(&args);
    assert!(ok, "{text}");
    for i in 0..2 {
        let result = image::open(dir.path().join(format!("out-{i}.png")))
            .unwrap()
            .to_rgb8();
        assert_eq!(result.dimensions(), (90, 60));
        // Far from the mask nothing changed.
        assert_eq!(result.get_pixel(2, 2).0, [6, 8, 100]);
        for t in 1..=3 {
            assert!(levels.join(format!("level{t}-candidate{i}.png")).is_file());
        }
    }
    // Outputs are never overwritten without --force.
    let (ok, text) = tessera(&args);
    assert!(!ok && text.contains("--force"), "{text}");
}

#[test]
fn inpaint_with_quantized_stages() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.png");
    write_png(&input, 64, 64, |x, y| [(x * 4) as u8, (y * 4) as u8, 90]);
    let run = |quantize: &str, out: &Path| {
        tessera(&[
            "inpaint",
            "--image",
            input.to_str().unwrap(),
            "--mask-preset",
            "centre-window",
            "--quantize",
            quantize,
            "--seed",
            "3",
            "-o",
            out.to_str().unwrap(),
        ])
    };
    // The shipped model, every linear layer in Q8_0 (its widths are multiples of 32).
    let out = dir.path().join("q8.png");
    let (ok, text) = run("q8_0", &out);
    assert!(ok, "{text}");
    let img = image::open(&out).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (64, 64));
    assert_eq!(
        img.get_pixel(1, 1).0,
        [4, 4, 90],
        "outside the mask nothing changes"
    );
    let (ok, text) = run("q3", &dir.path().join("q3.png"));
    assert!(!ok && text.contains("q8_0 or q4k"), "{text}");
    assert!(!dir.path().join("q3.png").exists());
}

#[test]
fn inpaint_on_a_quantized_import() {
    let dir = tempfile::tempdir().unwrap();
    let release = golden().join("class_custom");
    let q8 = dir.path().join("q8");
    let (ok, text) = tessera(&[
        "import",
        release.to_str().unwrap(),
        q8.to_str().unwrap(),
        "--dtype",
        "q8_0",
    ]);
    assert!(ok, "{text}");
    assert!(q8.join("stage1.gguf").is_file() && q8.join("stage2.gguf").is_file());
    let (ok, text) = tessera(&["info", q8.to_str().unwrap()]);
    assert!(ok && text.contains("(q8_0)"), "{text}");

    let input = dir.path().join("in.png");
    write_png(&input, 32, 32, |x, y| [(x * 8) as u8, (y * 8) as u8, 90]);
    let run = |model: &Path, extra: &[&str], out: &Path| {
        let mut args = vec![
            "inpaint",
            "--model",
            model.to_str().unwrap(),
            "--class",
            "7",
            "--image",
            input.to_str().unwrap(),
            "--mask-preset",
            "centre-window",
            "--seed",
            "5",
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        tessera(&args)
    };
    // The imported blocks are the ones `--quantize q8_0` makes from the release in memory, so
    // the same seed paints the same picture.
    let from_import = dir.path().join("import.png");
    let (ok, text) = run(&q8, &[], &from_import);
    assert!(ok, "{text}");
    let in_memory = dir.path().join("memory.png");
    let (ok, text) = run(&release, &["--quantize", "q8_0"], &in_memory);
    assert!(ok, "{text}");
    let (a, b) = (
        image::open(&from_import).unwrap(),
        image::open(&in_memory).unwrap(),
    );
    assert_eq!(a.to_rgb8().as_raw(), b.to_rgb8().as_raw());
    let original = image::open(&input).unwrap().to_rgb8();
    assert_ne!(
        a.to_rgb8().as_raw(),
        original.as_raw(),
        "the window was repainted"
    );
    // A stored-quantized model is not quantized again.
    let (ok, text) = run(&q8, &["--quantize", "q4k"], &dir.path().join("x.png"));
    assert!(!ok && text.contains("stored quantized (q8_0)"), "{text}");
    let (ok, text) = tessera(&[
        "import",
        release.to_str().unwrap(),
        dir.path().join("bad").to_str().unwrap(),
        "--dtype",
        "q5",
    ]);
    assert!(!ok && text.contains("q8_0 or q4k"), "{text}");
}

#[test]
fn confidence_map_and_repaint_below_touch_only_unsure_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let model = golden().join("class_custom");
    let input = dir.path().join("in.png");
    write_png(&input, 48, 48, |x, y| [(x * 5) as u8, (y * 5) as u8, 120]);
    let run = |extra: &[&str], out: &Path| {
        let mut args = vec![
            "inpaint",
            "--model",
            model.to_str().unwrap(),
            "--class",
            "3",
            "--image",
            input.to_str().unwrap(),
            "--mask-preset",
            "upper-half",
            "--feather",
            "0",
            "--seed",
            "4",
            "--json",
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        tessera(&args)
    };
    let first = dir.path().join("first.png");
    let map = dir.path().join("map.png");
    let (ok, text) = run(&["--confidence-map", map.to_str().unwrap()], &first);
    assert!(ok, "{text}");
    // The last level's per-token probabilities and where its tokens lie.
    let last = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .rfind(|e| e["event"] == "level" && e["level"] == 1)
        .expect("a level-1 event");
    let probs: Vec<Option<f64>> = last["confidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64())
        .collect();
    let (wx, wy, ws) = (
        last["window"]["x"].as_i64().unwrap(),
        last["window"]["y"].as_i64().unwrap(),
        last["window"]["size"].as_i64().unwrap(),
    );
    let grid = (probs.len() as f64).sqrt() as i64;
    let mut sampled: Vec<f64> = probs.iter().flatten().copied().collect();
    assert!(!sampled.is_empty(), "{text}");
    sampled.sort_by(f64::total_cmp);
    let threshold = sampled[sampled.len() / 2];
    let cell = |x: i64, y: i64| -> Option<usize> {
        let (c, r) = ((x - wx) * grid / ws, (y - wy) * grid / ws);
        ((0..grid).contains(&c) && (0..grid).contains(&r)).then_some((r * grid + c) as usize)
    };
    // The heat map is transparent exactly where nothing was sampled.
    let heat = image::open(&map).unwrap().to_rgba8();
    assert_eq!(heat.dimensions(), (48, 48));
    for (x, y, px) in heat.enumerate_pixels() {
        let was_sampled = cell(x.into(), y.into()).is_some_and(|i| probs[i].is_some());
        assert_eq!(px.0[3] == 255, was_sampled, "({x}, {y})");
    }

    let second = dir.path().join("second.png");
    let t = format!("{threshold}");
    let (ok, text) = run(&["--repaint-below", &t], &second);
    assert!(ok, "{text}");
    assert!(text.contains("\"pass\":2"), "a second pass ran: {text}");
    // The second pass draws on the first pass's token grid: the same window, and exactly the
    // unsure tokens sampled.
    let second_last = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .rfind(|e| e["event"] == "level" && e["level"] == 1 && e["pass"] == 2)
        .expect("a level-1 event of the second pass");
    assert_eq!(second_last["window"], last["window"], "{text}");
    let resampled: Vec<bool> = second_last["confidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| !v.is_null())
        .collect();
    let unsure: Vec<bool> = probs
        .iter()
        .map(|p| p.is_some_and(|p| p < threshold))
        .collect();
    assert_eq!(resampled, unsure, "{text}");
    let (a, b) = (
        image::open(&first).unwrap().to_rgb8(),
        image::open(&second).unwrap().to_rgb8(),
    );
    let mut changed = 0;
    for (x, y, pa) in a.enumerate_pixels() {
        if pa != b.get_pixel(x, y) {
            changed += 1;
            let i = cell(x.into(), y.into()).expect("a changed pixel lies in the grid");
            let p = probs[i].expect("a changed pixel lies in a sampled cell");
            assert!(
                p < threshold,
                "({x}, {y}) changed but its token had {p} ≥ {threshold}"
            );
        }
    }
    assert!(changed > 0, "the unsure tokens were repainted");
    let (ok, text) = run(&["--repaint-below", "1.5"], &dir.path().join("x.png"));
    assert!(!ok && text.contains("--repaint-below"), "{text}");
}

#[test]
fn inpaint_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.png");
    write_png(&input, 40, 40, |_, _| [50, 60, 70]);
    let small = dir.path().join("small.png");
    write_png(&small, 20, 40, |_, _| [255; 3]);
    let empty = dir.path().join("empty.png");
    write_png(&empty, 40, 40, |_, _| [0; 3]);
    let corrupt = dir.path().join("corrupt.png");
    std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let model = golden().join("uncond_geometric");
    let run = |mask: &Path, image: &Path| {
        tessera(&[
            "inpaint",
            "--model",
            model.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--mask",
            mask.to_str().unwrap(),
            "-o",
            dir.path().join("o.png").to_str().unwrap(),
        ])
    };
    let (ok, text) = run(&small, &input);
    assert!(
        !ok && text.contains("20×40") && text.contains("40×40"),
        "{text}"
    );
    let (ok, text) = run(&empty, &input);
    assert!(ok && text.contains("nothing to do"), "{text}");
    assert!(!dir.path().join("o.png").exists());
    let (ok, text) = run(&empty, &corrupt);
    assert!(!ok && text.contains("corrupt.png"), "{text}");
    let preset = |option: &str, out: &Path| {
        tessera(&[
            "inpaint",
            "--model",
            model.to_str().unwrap(),
            "--image",
            input.to_str().unwrap(),
            "--mask-preset",
            "upper-half",
            option,
            "-o",
            out.to_str().unwrap(),
        ])
    };
    let (ok, text) = preset("--class=3", &dir.path().join("o.png"));
    assert!(!ok && text.contains("not class-conditional"), "{text}");
    // Out-of-range options are refused by name, not clamped or ignored.
    for (flag, value, says) in [
        ("--top-p", "1.5", "--top-p must lie in (0, 1], got 1.5"),
        ("--top-p", "NaN", "--top-p must lie in (0, 1], got NaN"),
        ("--top-p", "0", "--top-p must lie in (0, 1], got 0"),
        ("--threshold", "2", "--threshold must be a fraction in 0..1"),
        ("--padding", "-1", "--padding must be a finite fraction ≥ 0"),
        (
            "--temperature",
            "0",
            "temperature must be a finite number > 0",
        ),
    ] {
        let out = dir.path().join("range.png");
        let option = format!("{flag}={value}");
        let (ok, text) = preset(&option, &out);
        assert!(!ok && text.contains(says), "{option}: {text}");
        assert!(!out.exists(), "{option} wrote an output");
    }
    // Without --model the shipped default model (assets/model, 128×128 scenes) is used.
    let s = dir.path().join("s.png");
    let (ok, text) = tessera(&["sample", "--seed", "1", "-o", s.to_str().unwrap()]);
    assert!(ok, "{text}");
    let img = image::open(&s).unwrap();
    assert_eq!((img.width(), img.height()), (128, 128));
}

#[test]
fn sample_class_by_name_and_json_progress() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s.png");
    let model = golden().join("class_custom");
    let (ok, text) = tessera(&[
        "sample",
        "--model",
        model.to_str().unwrap(),
        "--class",
        "12",
        "--json",
        "--top-k",
        "5",
        "--temperature",
        "0.9",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let img = image::open(&out).unwrap();
    assert_eq!((img.width(), img.height()), (32, 32));
    let events: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.first().unwrap()["event"], "started");
    assert_eq!(events.last().unwrap()["event"], "finished");
    assert!(events.iter().any(|e| e["event"] == "level"));
    let (ok, text) = tessera(&[
        "sample",
        "--model",
        model.to_str().unwrap(),
        "--class",
        "400",
        "-o",
        dir.path().join("t.png").to_str().unwrap(),
    ]);
    assert!(!ok && text.contains("0..100"), "{text}");
}

#[test]
fn inpaint_colour_match_changes_only_the_fill() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.png");
    let mask = dir.path().join("mask.png");
    write_png(&input, 64, 64, |x, y| [(x * 3) as u8, (y * 4) as u8, 100]);
    write_png(&mask, 64, 64, |x, y| {
        if (24..40).contains(&x) && (24..40).contains(&y) {
            [255; 3]
        } else {
            [0; 3]
        }
    });
    let model = golden().join("uncond_geometric");
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut args = vec![
            "inpaint",
            "--model",
            model.to_str().unwrap(),
            "--image",
            input.to_str().unwrap(),
            "--mask",
            mask.to_str().unwrap(),
            "--seed",
            "7",
            "--candidates",
            "1",
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let (ok, text) = tessera(&args);
        assert!(ok, "{text}");
        image::open(&out).unwrap().to_rgb8()
    };
    let plain = run("plain.png", &[]);
    let matched = run("matched.png", &["--colour-match"]);
    assert_ne!(plain, matched, "--colour-match reaches the job");
    // Far from the mask nothing changed either way.
    for (x, y) in [(2, 2), (60, 5), (5, 60)] {
        assert_eq!(plain.get_pixel(x, y), matched.get_pixel(x, y));
    }
}

#[test]
fn negative_class_and_strength_options() {
    let dir = tempfile::tempdir().unwrap();
    let model = golden().join("class_custom");
    let sample = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let (ok, text) = sample_class(&model, "12", "3", &out, extra);
        (ok.then(|| image::open(&out).unwrap().to_rgb8()), text)
    };
    // The model has no null class: guidance needs a negative class.
    let (img, text) = sample("a.png", &["--guidance", "3"]);
    assert!(img.is_none(), "{text}");
    let (a, text) = sample("b.png", &["--guidance", "3", "--negative-class", "5"]);
    let a = a.unwrap_or_else(|| panic!("{text}"));
    let (b, text) = sample("c.png", &["--guidance", "3", "--negative-class", "6"]);
    assert_ne!(Some(a), b, "{text}");
    // A negative without guidance is an error, not silently ignored.
    let (img, text) = sample("d.png", &["--negative-class", "5"]);
    assert!(img.is_none() && text.contains("--guidance"), "{text}");
    let (img, text) = sample("e.png", &["--guidance", "2", "--negative-prompt", "a cat"]);
    assert!(
        img.is_none() && text.contains("--negative-prompt"),
        "{text}"
    );

    // --strength K runs only levels K..1.
    let input = dir.path().join("in.png");
    let mask = dir.path().join("mask.png");
    write_png(&input, 64, 64, |x, y| [(x * 3) as u8, (y * 4) as u8, 100]);
    write_png(&mask, 64, 64, |x, y| {
        if (16..48).contains(&x) && (16..48).contains(&y) {
            [255; 3]
        } else {
            [0; 3]
        }
    });
    let model = golden().join("uncond_geometric");
    let out = dir.path().join("s.png");
    let (ok, text) = tessera(&[
        "inpaint",
        "--model",
        model.to_str().unwrap(),
        "--image",
        input.to_str().unwrap(),
        "--mask",
        mask.to_str().unwrap(),
        "--strength",
        "2",
        "--json",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let started: serde_json::Value = text
        .lines()
        .find(|l| l.contains("\"started\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap();
    assert_eq!(started["levels"], serde_json::json!([2, 1]));
}

#[test]
fn info_and_import_say_when_config_and_checkpoint_schedules_disagree() {
    // The golden configs use `alphacum:` and agree with their buffers: no warning.
    let (ok, text) = tessera(&["info", golden().join("class_custom").to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(!text.contains("warning"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("release");
    class_custom_with_redraw_prob(&release, "alphacum:1.0,0.5,0.0");
    let (ok, text) = tessera(&["info", release.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert_eq!(text.matches("warning:").count(), 1, "{text}");
    assert!(
        text.contains(
            "warning: schedule in the configs of stages 1–2: redraw_prob `alphacum:1.0,0.5,0.0` \
             gives ᾱ = [1, 0.5, 0], but the checkpoint's `alphats`/`alphacum` buffers hold \
             ᾱ = [1, 0.7, 0]; Tessera uses the buffers"
        ),
        "{text}"
    );
    assert!(text.contains("schedule ᾱ:   [1.0, 0.7, 0.0]"), "{text}");
    // The buffers run, so the official outputs are still reproduced; the warning is shown.
    let (ok, text) = tessera(&["check-reference", release.to_str().unwrap()]);
    assert!(ok && text.contains("PASS"), "{text}");
    assert_eq!(text.matches("warning: schedule in").count(), 1, "{text}");

    let out = dir.path().join("imported");
    let (ok, text) = tessera(&["import", release.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert_eq!(text.matches("warning: schedule in").count(), 1, "{text}");
    // The imported folder carries the buffers the release ran with.
    let (ok, text) = tessera(&["info", out.to_str().unwrap()]);
    assert!(ok && !text.contains("warning"), "{text}");
    assert!(text.contains("schedule ᾱ:   [1.0, 0.7, 0.0]"), "{text}");
}

#[test]
fn the_cards_recommended_guidance_is_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/model"),
        &model,
    );
    let card_path = model.join("model.json");
    let mut card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&card_path).unwrap()).unwrap();
    card["guidance_scale"] = 3.0.into();
    std::fs::write(&card_path, card.to_string()).unwrap();
    let sample = |extra: &[&str], name: &str| {
        let out = dir.path().join(name);
        let (ok, text) = sample_class(&model, "0", "5", &out, extra);
        assert!(ok, "{text}");
        std::fs::read(&out).unwrap()
    };
    let default = sample(&[], "default.png");
    assert_eq!(default, sample(&["--guidance", "3"], "three.png"));
    assert_ne!(default, sample(&["--guidance", "1"], "one.png"));
    // A card recommending nonsense is refused by name.
    card["guidance_scale"] = (-2.0).into();
    std::fs::write(&card_path, card.to_string()).unwrap();
    let (ok, text) = tessera(&[
        "sample",
        "--model",
        model.to_str().unwrap(),
        "-o",
        dir.path().join("bad.png").to_str().unwrap(),
    ]);
    assert!(!ok && text.contains("guidance_scale"), "{text}");
}

#[test]
fn classes_lists_what_a_prompt_names() {
    let (ok, text) = tessera(&["classes", "a red fox in the snow", "-n", "3"]);
    assert!(ok, "{text}");
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("warning")).collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0], "277 red fox, Vulpes vulpes");
    let (ok, text) = tessera(&["classes", "qwertyuiop"]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("`qwertyuiop`") && text.contains("names no ImageNet class"),
        "{text}"
    );
}

#[test]
fn a_prompt_picks_the_class_of_a_class_model() {
    // The golden class model with the first 100 ImageNet names as its class names.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("named");
    let manifest = golden().join("class_custom/sampling.yaml");
    let (ok, text) = tessera(&[
        "import",
        manifest.to_str().unwrap(),
        model.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let card_path = model.join("model.json");
    let mut card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&card_path).unwrap()).unwrap();
    let names: Vec<String> = tessera_engine::imagenet::class_names()[..100].to_vec();
    assert_eq!(card["conditioning"]["kind"], "class", "{card}");
    card["conditioning"]["class_names"] = serde_json::json!(names);
    std::fs::write(&card_path, card.to_string()).unwrap();
    let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
    let (ok, text) = tessera(&[
        "sample",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "a great white shark",
        "--seed",
        "4",
        "-o",
        a.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("→ class 2 great white shark"), "{text}");
    let (ok, text) = sample_class(&model, "2", "4", &b, &[]);
    assert!(ok, "{text}");
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let (ok, text) = tessera(&[
        "sample",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "qwertyuiop",
        "-o",
        dir.path().join("c.png").to_str().unwrap(),
    ]);
    assert!(
        !ok && text.contains("names none of the model's classes"),
        "{text}"
    );
}

#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    // `tessera classes … | head -1`: the reader is gone before the writer starts.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["classes", "a red fox in the snow", "-n", "50"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run tessera");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{err}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(13), "ended by SIGPIPE: {err}");
    }
}

//! The command line as a user runs it.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden")
}

fn tessera(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .output()
        .expect("run tessera");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &to);
        } else {
            std::fs::write(&to, std::fs::read(entry.path()).unwrap()).unwrap();
        }
    }
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

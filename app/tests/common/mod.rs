//! Helpers shared by the app's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A finished `tessera` run: whether it succeeded, and its stdout then stderr as one text.
pub fn outcome(out: std::process::Output) -> (bool, String) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `../shared/golden` beside the checkout (CI has it too).
pub fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden")
}

/// Copies a folder tree (small files) into `dst`; the copies are writable.
pub fn copy_tree(src: &Path, dst: &Path) {
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

/// A copy of the golden `class_custom` release in `dir` whose two stage configs say
/// `redraw_prob: <r>` (the checkpoints' schedule buffers stay ᾱ = [1, 0.7, 0]).
pub fn class_custom_with_redraw_prob(dir: &Path, r: &str) {
    copy_tree(&golden().join("class_custom"), dir);
    for t in 1..=2 {
        let path = dir.join(format!("configs/class_custom-scale{t}.yaml"));
        let text = std::fs::read_to_string(&path).unwrap();
        let old = text
            .lines()
            .find(|l| l.trim_start().starts_with("redraw_prob:"))
            .unwrap()
            .trim_start();
        std::fs::write(&path, text.replace(old, &format!("redraw_prob: {r}"))).unwrap();
    }
}

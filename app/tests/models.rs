//! `tessera models` as a user runs it, against a loopback server serving a golden case as an
//! official release: get (with a dropped connection on the way), list, inpaint by name,
//! import from disk, remove; error answers and a quota.

use std::path::Path;
use std::process::Command;

mod common;
#[path = "../../engine/store/tests/common/release.rs"]
mod release;
#[path = "../../engine/store/tests/common/server.rs"]
mod server;

use release::{release_zip, serve_release};
use server::Server;

/// Runs `tessera` with the models folder and catalogue of the test.
fn tessera(models: &Path, catalogue: &Path, args: &[&str]) -> (bool, String) {
    tessera_env(models, catalogue, &[], args)
}

fn tessera_env(
    models: &Path,
    catalogue: &Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .env("TESSERA_MODELS", models)
        .env("TESSERA_CATALOGUE", catalogue)
        .env_remove("TESSERA_MODELS_QUOTA")
        .envs(env.iter().copied())
        .output()
        .expect("run tessera");
    common::outcome(out)
}

/// A server with the golden release, and a catalogue file naming it.
fn setup(dir: &Path) -> (Server, Vec<u8>, std::path::PathBuf) {
    serve_release(dir, "class_custom", "golden_cin")
}

#[test]
fn get_list_inpaint_by_name_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let (server, zip, catalogue) = setup(dir.path());
    // The connection drops at a byte picked from the clock; the download resumes from there.
    let cut = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        % zip.len() as u64;
    server.with(|b| b.drops.push_back(cut));
    let (ok, text) = tessera(
        &models,
        &catalogue,
        &["models", "get", "golden_cin", "--keep-zip"],
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("installed golden_cin") && text.contains("sha256"),
        "{text}"
    );
    let kept = models.join(".downloads/golden_cin.zip");
    assert_eq!(std::fs::read(&kept).unwrap(), zip, "cut at byte {cut}");
    let ranges: Vec<Option<u64>> = server.with(|b| b.seen.iter().map(|s| s.1).collect());
    assert_eq!(
        ranges.last().copied().flatten(),
        (cut > 0).then_some(cut),
        "{ranges:?}"
    );

    let (ok, text) = tessera(&models, &catalogue, &["models", "list"]);
    assert!(ok, "{text}");
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("golden_cin"))
        .unwrap();
    assert!(line.contains("downloaded from http://127.0.0.1"), "{text}");
    assert!(
        text.contains("cin_4_scales_geometric") && text.contains("[installed]"),
        "{text}"
    );

    let (ok, text) = tessera(&models, &catalogue, &["models", "path", "golden_cin"]);
    assert!(
        ok && text.trim() == models.join("golden_cin").to_str().unwrap(),
        "{text}"
    );

    let input = dir.path().join("in.png");
    image::RgbImage::from_fn(48, 48, |x, y| {
        image::Rgb([(x * 5) as u8, (y * 5) as u8, 90])
    })
    .save(&input)
    .unwrap();
    let out = dir.path().join("out.png");
    let (ok, text) = tessera(
        &models,
        &catalogue,
        &[
            "inpaint",
            "--model",
            "golden_cin",
            "--class",
            "3",
            "--image",
            input.to_str().unwrap(),
            "--mask-preset",
            "upper-half",
            "--seed",
            "1",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert!(ok, "{text}");
    assert_eq!(image::open(&out).unwrap().width(), 48);

    // Installing again needs --replace; the kept zip is imported from disk.
    let (ok, text) = tessera(&models, &catalogue, &["models", "get", "golden_cin"]);
    assert!(!ok && text.contains("already installed"), "{text}");
    let copy = dir.path().join("mine.zip");
    std::fs::copy(&kept, &copy).unwrap();
    let (ok, text) = tessera(
        &models,
        &catalogue,
        &[
            "models",
            "import",
            copy.to_str().unwrap(),
            "--replace",
            "--dtype",
            "q8_0",
        ],
    );
    assert!(ok, "{text}");
    let (_, text) = tessera(&models, &catalogue, &["models", "list"]);
    assert!(
        text.contains("imported from") && text.contains("q8_0"),
        "{text}"
    );

    let (ok, text) = tessera(&models, &catalogue, &["models", "remove", "golden_cin"]);
    assert!(ok && text.contains("removed golden_cin"), "{text}");
    assert!(!models.join("golden_cin").exists());
    let (ok, text) = tessera(&models, &catalogue, &["models", "remove", "golden_cin"]);
    assert!(
        !ok && text.contains("no installed model called `golden_cin`"),
        "{text}"
    );
}

#[test]
fn a_get_cut_short_resumes_on_the_next_run_with_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let (server, zip, catalogue) = setup(dir.path());
    let cut = 1 + std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        % (zip.len() as u64 - 1);
    server.with(|b| b.drops.push_back(cut));
    let get = [
        "models",
        "get",
        "golden_cin",
        "--keep-zip",
        "--retries",
        "0",
    ];
    let (ok, text) = tessera(&models, &catalogue, &get);
    assert!(
        !ok && text.contains(&format!("{cut} bytes are kept")),
        "cut {cut}: {text}"
    );
    assert!(!models.join("golden_cin").exists());
    let (ok, text) = tessera(&models, &catalogue, &get);
    assert!(ok && text.contains("resuming from"), "{text}");
    let ranges: Vec<Option<u64>> = server.with(|b| b.seen.iter().map(|s| s.1).collect());
    assert_eq!(ranges, [None, Some(cut)]);
    let kept = models.join(".downloads/golden_cin.zip");
    assert_eq!(std::fs::read(&kept).unwrap(), zip, "cut at byte {cut}");
}

#[test]
fn server_errors_unknown_names_and_a_full_quota_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let (server, _, catalogue) = setup(dir.path());

    let (ok, text) = tessera(&models, &catalogue, &["models", "get", "golden"]);
    assert!(!ok && text.contains("no release called `golden`"), "{text}");
    assert!(text.contains("golden_cin"), "{text}");

    server.with(|b| b.files.clear());
    let (ok, text) = tessera(&models, &catalogue, &["models", "get", "golden_cin"]);
    assert!(!ok && text.contains("404"), "{text}");

    let zip = release_zip("class_custom", "golden_cin");
    server.with(|b| {
        b.files.insert("/golden_cin.zip".into(), zip);
    });
    let (ok, text) = tessera_env(
        &models,
        &catalogue,
        &[("TESSERA_MODELS_QUOTA", "1MB")],
        &["models", "get", "golden_cin"],
    );
    assert!(!ok && text.contains("not enough disk space"), "{text}");
    assert!(!models.join("golden_cin").exists());
    let (ok, text) = tessera_env(
        &models,
        &catalogue,
        &[("TESSERA_MODELS_QUOTA", "lots")],
        &["models", "list"],
    );
    assert!(
        !ok && text.contains("TESSERA_MODELS_QUOTA=lots is not a size"),
        "{text}"
    );
}

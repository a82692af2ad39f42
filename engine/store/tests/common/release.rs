//! A golden case (`../shared/golden/class_custom`) packaged as an official release would be:
//! a zip holding `<name>/scale{t}.ckpt`, and a catalogue entry with its manifest and configs.
//! Shared with the CLI tests (`#[path]`).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;

/// The golden cases' folder beside the checkout.
pub fn golden(case: &str) -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = crate_dir
        .ancestors()
        .find(|a| a.join("Cargo.lock").is_file())
        .unwrap_or(crate_dir);
    workspace.join("../shared/golden").join(case)
}

/// The zip's bytes (entries stored, as the checkpoints are already compressed zips).
pub fn release_zip(case: &str, name: &str) -> Vec<u8> {
    let dir = golden(case).join("models");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "ckpt"))
        .collect();
    entries.sort();
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for p in entries {
        let file = p.file_name().unwrap().to_string_lossy();
        zip.start_file(format!("{name}/{file}"), opts).unwrap();
        zip.write_all(&std::fs::read(&p).unwrap()).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// Writes a catalogue file at `path` with the one release `name`: the golden case served at `url`.
pub fn write_catalogue(path: &Path, case: &str, name: &str, url: &str) {
    let json = release_json(case, name, url);
    std::fs::write(path, serde_json::to_vec(&[json]).unwrap()).unwrap();
}

/// The golden case `case` zipped as release `name`, served by a loopback server, and a
/// catalogue file in `dir` naming it: (server, the zip's bytes, the catalogue file).
pub fn serve_release(
    dir: &Path,
    case: &str,
    name: &str,
) -> (super::server::Server, Vec<u8>, PathBuf) {
    let zip = release_zip(case, name);
    let path = format!("/{name}.zip");
    let server = super::server::Server::start(std::collections::HashMap::from([(
        path.clone(),
        zip.clone(),
    )]));
    let catalogue = dir.join("catalogue.json");
    write_catalogue(&catalogue, case, name, &server.url(&path));
    (server, zip, catalogue)
}

/// The catalogue entry (JSON) for the golden case served at `url`.
fn release_json(case: &str, name: &str, url: &str) -> serde_json::Value {
    let dir = golden(case);
    let manifest = std::fs::read_to_string(dir.join("sampling.yaml")).unwrap();
    let mut configs = BTreeMap::new();
    let mut lines = Vec::new();
    for line in manifest.lines() {
        let l = line.trim();
        if let Some(p) = l.strip_prefix("- ") {
            let p = p.trim().trim_matches('"');
            if p.starts_with("configs/") {
                configs.insert(p.to_string(), std::fs::read_to_string(dir.join(p)).unwrap());
                lines.push(format!("  - {p}"));
            } else {
                let file = Path::new(p).file_name().unwrap().to_string_lossy();
                lines.push(format!("  - models/{name}/{file}"));
            }
        } else {
            lines.push(l.to_string());
        }
    }
    json!({
        "name": name,
        "title": "Golden test release",
        "dataset": "random weights",
        "resolution": 32,
        "levels": 2,
        "schedule": "custom",
        "conditioning": "class-conditional (100 classes)",
        "description": "Tiny random release made by the official code.",
        "zip": format!("{name}.zip"),
        "url": url,
        "manifest": lines.join("\n") + "\n",
        "configs": configs,
    })
}

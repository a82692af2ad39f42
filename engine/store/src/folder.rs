//! The models folder: one Tessera model folder per installed model (named after its release),
//! each with an `origin.json` saying where it came from; `.downloads/` for partial and complete
//! zips; `downloads.json` with the size and SHA-256 of every zip downloaded so far.
//!
//! It is the platform's data directory (`~/.local/share/tessera/models`,
//! `~/Library/Application Support/Tessera/models`, `%APPDATA%\Tessera\data\models`) unless
//! `TESSERA_MODELS` names another.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tessera_engine::loader::card::{CARD_FILE, ModelCard};
use tessera_engine::loader::tessera::Folder;
use tessera_engine::{Error, Result};

use crate::catalogue::valid_name;

/// Environment variable naming the models folder.
pub const MODELS_ENV: &str = "TESSERA_MODELS";
/// Environment variable limiting the models folder's size (`500MB`, `20GB`, bytes).
pub const QUOTA_ENV: &str = "TESSERA_MODELS_QUOTA";
/// Where an installed model says it came from.
pub const ORIGIN_FILE: &str = "origin.json";
const RECORDS_FILE: &str = "downloads.json";
const DOWNLOADS: &str = ".downloads";

/// Where an installed model came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Origin {
    /// The catalogue release it was made from.
    pub release: String,
    /// The URL it was downloaded from, or `None` when imported from a file on disk.
    pub url: Option<String>,
    /// The zip or checkpoint files it was imported from (for a download, the zip's name).
    pub source: String,
    /// Size of the zip in bytes (none for checkpoints imported one by one).
    pub zip_bytes: Option<u64>,
    /// SHA-256 of the zip (hex).
    pub sha256: Option<String>,
    /// Storage type of the transformer weights (`f16`, `q8_0`, …).
    pub dtype: String,
    /// When it was installed (seconds since 1970).
    pub installed_unix: u64,
}

/// What a download recorded about a zip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256 (hex).
    pub sha256: String,
}

/// One installed model.
#[derive(Debug, Clone)]
pub struct Installed {
    /// Folder name (the name `--model` takes).
    pub name: String,
    /// The model folder.
    pub path: PathBuf,
    /// Bytes on disk.
    pub bytes: u64,
    /// Its card.
    pub card: ModelCard,
    /// Where it came from (absent for a folder copied in by hand).
    pub origin: Option<Origin>,
}

/// The models folder.
#[derive(Debug, Clone)]
pub struct ModelsFolder {
    root: PathBuf,
    quota: Option<u64>,
}

impl ModelsFolder {
    /// The folder at `root` (created when something is installed).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            quota: None,
        }
    }

    /// The same folder, allowed to hold at most `bytes` in all.
    pub fn with_quota(mut self, bytes: Option<u64>) -> Self {
        self.quota = bytes;
        self
    }

    /// Its quota, if any.
    pub fn quota(&self) -> Option<u64> {
        self.quota
    }

    /// Bytes the quota still allows (none without a quota).
    pub fn room(&self) -> Option<u64> {
        self.quota.map(|q| q.saturating_sub(disk_bytes(&self.root)))
    }

    /// `TESSERA_MODELS` (or the platform's data directory), with `TESSERA_MODELS_QUOTA`.
    pub fn standard() -> Result<Self> {
        let quota = match std::env::var(QUOTA_ENV)
            .ok()
            .filter(|q| !q.trim().is_empty())
        {
            Some(q) => Some(parse_bytes(&q).ok_or_else(|| {
                Error::Input(format!(
                    "{QUOTA_ENV}={q} is not a size (e.g. 500MB, 20GB or a number of bytes)"
                ))
            })?),
            None => None,
        };
        if let Some(dir) = std::env::var_os(MODELS_ENV).filter(|d| !d.is_empty()) {
            return Ok(Self::at(PathBuf::from(dir)).with_quota(quota));
        }
        let dirs = directories::ProjectDirs::from("", "", "Tessera").ok_or_else(|| {
            Error::Input(format!(
                "no home directory to keep models in; set {MODELS_ENV} to a folder"
            ))
        })?;
        Ok(Self::at(dirs.data_dir().join("models")).with_quota(quota))
    }

    /// The folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the model called `name` is (or would be) installed.
    pub fn model_path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The installed model called `name`, if there is one.
    pub fn find(&self, name: &str) -> Option<PathBuf> {
        let p = self.model_path(name);
        (valid_name(name) && p.join(CARD_FILE).is_file()).then_some(p)
    }

    /// Where downloads and unpacking happen.
    pub fn downloads(&self) -> PathBuf {
        self.root.join(DOWNLOADS)
    }

    /// Creates the folder and its downloads folder.
    pub fn create(&self) -> Result<()> {
        let d = self.downloads();
        std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))
    }

    /// Every installed model, by name. Folders without a readable card are skipped.
    pub fn installed(&self) -> Result<Vec<Installed>> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&self.root, e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if !valid_name(&name) || !path.join(CARD_FILE).is_file() {
                continue;
            }
            let Ok(Folder { card, .. }) = Folder::open(&path) else {
                continue;
            };
            let origin = std::fs::read(path.join(ORIGIN_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            out.push(Installed {
                bytes: disk_bytes(&path),
                name,
                path,
                card,
                origin,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes the installed model `name`; returns the bytes freed. Only a folder holding a
    /// Tessera model is removed.
    pub fn remove(&self, name: &str) -> Result<u64> {
        let path = self.find(name).ok_or_else(|| {
            Error::Input(format!(
                "no installed model called `{name}` in {}",
                self.root.display()
            ))
        })?;
        let bytes = disk_bytes(&path);
        // Renamed first, so a removal cut short never leaves a half model under the name.
        let trash = self.downloads().join(format!("{name}.removing"));
        self.create()?;
        let _ = std::fs::remove_dir_all(&trash);
        std::fs::rename(&path, &trash).map_err(|e| Error::io(&path, e))?;
        std::fs::remove_dir_all(&trash).map_err(|e| Error::io(&trash, e))?;
        Ok(bytes)
    }

    /// What earlier downloads recorded, by URL.
    pub fn records(&self) -> BTreeMap<String, Record> {
        std::fs::read(self.root.join(RECORDS_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Records a completed download (size and SHA-256) under its URL.
    pub fn record(&self, url: &str, record: Record) -> Result<()> {
        let mut all = self.records();
        all.insert(url.to_string(), record);
        let path = self.root.join(RECORDS_FILE);
        let text = serde_json::to_vec_pretty(&all).map_err(|e| Error::config(&path, e))?;
        write_atomic(&path, &text)
    }
}

/// `500MB`, `20 GB`, `1.5GB`, `4096` → bytes (decimal units, as download sizes are shown).
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "tb" | "t" => 1e12,
        _ => return None,
    };
    (n.is_finite() && n >= 0.0).then_some((n * scale) as u64)
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Total size of the files under `path`.
pub fn disk_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| disk_bytes(&e.path())).sum())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("500MB"), Some(500_000_000));
        assert_eq!(parse_bytes("1.5 GB"), Some(1_500_000_000));
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("5 parsecs"), None);
    }
}

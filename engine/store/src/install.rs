//! Installing a release: the zip downloaded (or found on disk), verified (size, SHA-256 where
//! known or recorded, every entry's CRC while unpacking), the stage checkpoints unpacked beside
//! the release's manifest and configs, then imported into a Tessera model folder (f16 by
//! default) named after the release. Unpacked files are always removed afterwards; the zip
//! too unless the user keeps it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use candle_core::DType;
use candle_core::quantized::GgmlDType;
use tessera_engine::loader::ModelSource;
use tessera_engine::loader::import::{ImportOptions, import_source};
use tessera_engine::{Error, Result};

use crate::catalogue::{Catalogue, Release};
use crate::download::{
    DownloadEvent, DownloadOptions, check_space, download, free_space, sha256_file,
};
use crate::folder::{Installed, ModelsFolder, ORIGIN_FILE, Origin, Record, write_atomic};

/// How a release is installed.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Storage type of the transformer weights (f16 by default; the VQGAN stays f32).
    pub dtype: DType,
    /// Store the stages' linear layers in this block format instead (`dtype` must be f32).
    pub quantize: Option<GgmlDType>,
    /// Keep the zip in the downloads folder afterwards.
    pub keep_zip: bool,
    /// Replace a model already installed under the release's name.
    pub replace: bool,
    /// How the download behaves (and the cancel flag, checked between steps too).
    pub download: DownloadOptions,
}

impl Default for InstallOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F16,
            quantize: None,
            keep_zip: false,
            replace: false,
            download: DownloadOptions::default(),
        }
    }
}

/// A storage type by name (`f16`, `f32`, `bf16`, or the block formats `q8_0` / `q4k`, which
/// keep the other stage tensors f32): the dtype of the transformer weights and the format of
/// the linear layers.
pub fn weight_format(name: &str) -> Result<(DType, Option<GgmlDType>)> {
    use tessera_engine::loader::{parse_dtype, parse_quantization};
    Ok(match name {
        "q8_0" | "q4k" => (DType::F32, Some(parse_quantization(name)?)),
        "f32" | "f16" | "bf16" => (parse_dtype(name)?, None),
        other => {
            return Err(Error::Input(format!(
                "unknown weight type `{other}` (use f32, f16, bf16, q8_0 or q4k)"
            )));
        }
    })
}

/// What an installation reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum InstallEvent {
    /// From the download.
    Download(DownloadEvent),
    /// The zip is complete: its size and SHA-256.
    Verified {
        /// Size in bytes.
        bytes: u64,
        /// SHA-256 (hex).
        sha256: String,
    },
    /// Unpacking checkpoint `index` (from 1) of `of`.
    Unpacking {
        /// Entry name in the zip.
        entry: String,
        /// Which one, from 1.
        index: usize,
        /// How many.
        of: usize,
    },
    /// A step of the import into Tessera's format.
    Importing(String),
}

/// Downloads (or resumes) `release` into `folder` and installs it.
pub fn get(
    folder: &ModelsFolder,
    release: &Release,
    opts: &InstallOptions,
    on: &mut dyn FnMut(&InstallEvent),
) -> Result<Installed> {
    refuse_installed(folder, &release.name, opts)?;
    folder.create()?;
    let zip = folder.downloads().join(&release.zip);
    let recorded = folder.records().get(&release.url).cloned();
    let expected = release.size.or(recorded.as_ref().map(|r| r.bytes));
    let (bytes, sha256) = if zip.is_file() {
        // Complete from an earlier run (kept, or cut short after the download).
        let bytes = std::fs::metadata(&zip)
            .map_err(|e| Error::io(&zip, e))?
            .len();
        (bytes, sha256_file(&zip)?)
    } else {
        let mut dl = opts.download.clone();
        dl.space_limit = dl.space_limit.or(folder.room());
        let d = download(&release.url, &zip, expected, &dl, &mut |e| {
            on(&InstallEvent::Download(e.clone()))
        })?;
        (d.bytes, d.sha256)
    };
    let known = release
        .sha256
        .clone()
        .map(|s| (s, "the catalogue's"))
        .or(recorded.map(|r| (r.sha256, "the one recorded at the first download")));
    if let Some((want, whose)) = known
        && !want.eq_ignore_ascii_case(&sha256)
    {
        let _ = std::fs::remove_file(&zip);
        return Err(Error::Input(format!(
            "{} has SHA-256 {sha256}, not {whose} ({want}): the file changed or was damaged \
             on the way; it was deleted",
            release.zip
        )));
    }
    if expected.is_some_and(|e| e != bytes) {
        let _ = std::fs::remove_file(&zip);
        return Err(Error::Input(format!(
            "{} is {bytes} bytes, expected {}; it was deleted",
            release.zip,
            expected.unwrap_or(0)
        )));
    }
    folder.record(
        &release.url,
        Record {
            bytes,
            sha256: sha256.clone(),
        },
    )?;
    on(&InstallEvent::Verified {
        bytes,
        sha256: sha256.clone(),
    });
    let origin = Origin {
        release: release.name.clone(),
        url: Some(release.url.clone()),
        source: release.zip.clone(),
        zip_bytes: Some(bytes),
        sha256: Some(sha256),
        dtype: String::new(),
        installed_unix: 0,
    };
    let result = install_zip(folder, release, &zip, origin, opts, on);
    match &result {
        Err(Error::Cancelled) => {}
        Err(e) if is_damaged(e) => {
            let _ = std::fs::remove_file(&zip);
        }
        _ if !opts.keep_zip => {
            let _ = std::fs::remove_file(&zip);
        }
        _ => {}
    }
    result
}

/// Errors that say the zip itself is bad (so a fresh download is the remedy).
fn is_damaged(e: &Error) -> bool {
    e.to_string().contains(DAMAGED)
}

/// What every error about a bad zip says (and what [`is_damaged`] looks for).
const DAMAGED: &str = "damaged zip";

/// An error about the zip itself.
fn damaged(zip: &Path, detail: impl std::fmt::Display) -> Error {
    Error::bad_file(zip, format!("{DAMAGED}: {detail}"))
}

fn refuse_installed(folder: &ModelsFolder, name: &str, opts: &InstallOptions) -> Result<()> {
    if !opts.replace && folder.find(name).is_some() {
        return Err(Error::Input(format!(
            "`{name}` is already installed in {}; remove it first or ask to replace it",
            folder.root().display()
        )));
    }
    Ok(())
}

/// Installs from files on disk: one release zip, or the stage checkpoints
/// (`scale1.ckpt` … `scaleT.ckpt`; those not given are looked for beside the first). `release` names the release when the files do not tell
/// (a zip is recognised by its name or its entries, checkpoints by their folder's name).
pub fn import_files(
    folder: &ModelsFolder,
    catalogue: &Catalogue,
    files: &[PathBuf],
    release: Option<&str>,
    opts: &InstallOptions,
    on: &mut dyn FnMut(&InstallEvent),
) -> Result<Installed> {
    let named = release.map(|r| catalogue.require(r)).transpose()?;
    let first = files
        .first()
        .ok_or_else(|| Error::Input("no file to import".into()))?;
    for f in files {
        if !f.is_file() {
            return Err(Error::Input(format!("{} is not a file", f.display())));
        }
    }
    let is_zip = |p: &Path| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("zip"));
    if is_zip(first) {
        if files.len() > 1 {
            return Err(Error::Input(
                "import one release zip at a time (each zip is one release)".into(),
            ));
        }
        let release = match named {
            Some(r) => r,
            None => identify_zip(catalogue, first)?,
        };
        refuse_installed(folder, &release.name, opts)?;
        folder.create()?;
        let bytes = std::fs::metadata(first)
            .map_err(|e| Error::io(first, e))?
            .len();
        let sha256 = sha256_file(first)?;
        on(&InstallEvent::Verified {
            bytes,
            sha256: sha256.clone(),
        });
        let origin = Origin {
            release: release.name.clone(),
            url: None,
            source: first.display().to_string(),
            zip_bytes: Some(bytes),
            sha256: Some(sha256),
            dtype: String::new(),
            installed_unix: 0,
        };
        return install_zip(folder, release, first, origin, opts, on);
    }
    let release = match named {
        Some(r) => r,
        None => {
            let parent = first
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            catalogue.get(&parent).ok_or_else(|| {
                Error::Input(format!(
                    "cannot tell which release {} belongs to (its folder is not a release \
                     name); name the release",
                    first.display()
                ))
            })?
        }
    };
    refuse_installed(folder, &release.name, opts)?;
    folder.create()?;
    let wanted = release.checkpoints()?;
    let mut chosen = Vec::with_capacity(wanted.len());
    for w in &wanted {
        let file_name = Path::new(w).file_name().unwrap_or_default();
        // A stage not given is looked for beside the first (one picked file finds the rest).
        let beside = first.with_file_name(file_name);
        let found = files
            .iter()
            .find(|f| f.file_name() == Some(file_name))
            .or(beside.is_file().then_some(&beside))
            .ok_or_else(|| {
                Error::Input(format!(
                    "{} needs {} stage checkpoints; {} is missing",
                    release.name,
                    wanted.len(),
                    file_name.to_string_lossy()
                ))
            })?;
        chosen.push(std::path::absolute(found).map_err(|e| Error::io(found, e))?);
    }
    let staging = Staging::new(folder, &release.name)?;
    staging.write_release(release, &chosen)?;
    let origin = Origin {
        release: release.name.clone(),
        url: None,
        source: files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        zip_bytes: None,
        sha256: None,
        dtype: String::new(),
        installed_unix: 0,
    };
    finish(folder, release, &staging, origin, opts, on)
}

/// The release whose zip this is: by file name, else by the checkpoints inside.
fn identify_zip<'a>(catalogue: &'a Catalogue, zip: &Path) -> Result<&'a Release> {
    let name = zip.file_name().unwrap_or_default().to_string_lossy();
    if let Some(r) = catalogue.by_zip(&name) {
        return Ok(r);
    }
    let archive = open_zip(zip)?;
    let entries = entry_names(zip, &archive)?;
    catalogue
        .releases()
        .iter()
        .find(|r| {
            r.checkpoints()
                .is_ok_and(|c| c.iter().all(|c| find_entry(&entries, c).is_some()))
        })
        .ok_or_else(|| {
            Error::Input(format!(
                "{} holds no release the catalogue knows; name the release",
                zip.display()
            ))
        })
}

fn open_zip(zip: &Path) -> Result<zip::ZipArchive<std::fs::File>> {
    let f = std::fs::File::open(zip).map_err(|e| Error::io(zip, e))?;
    zip::ZipArchive::new(f).map_err(|e| damaged(zip, format!("not a complete zip archive ({e})")))
}

fn entry_names(zip: &Path, archive: &zip::ZipArchive<std::fs::File>) -> Result<Vec<String>> {
    archive
        .file_names()
        .map(|n| n.map(|n| n.into_owned()).map_err(|e| damaged(zip, e)))
        .collect()
}

/// The zip entry holding the manifest's checkpoint `path` (`models/<name>/scale1.ckpt`): the
/// official zips hold `<name>/scale1.ckpt`, to be unpacked into `models/`.
fn find_entry(entries: &[String], path: &str) -> Option<usize> {
    let inside = path.strip_prefix("models/").unwrap_or(path);
    entries
        .iter()
        .position(|e| e == path || e == inside || e.ends_with(&format!("/{inside}")))
}

/// The folder where a release is unpacked, removed when dropped.
struct Staging {
    dir: PathBuf,
}

impl Staging {
    fn new(folder: &ModelsFolder, name: &str) -> Result<Self> {
        let dir = folder.downloads().join(format!("{name}.unpack"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Self { dir })
    }

    fn manifest(&self) -> PathBuf {
        self.dir.join("sampling.yaml")
    }

    /// The configs, and a manifest listing `checkpoints` (absolute or under the staging dir).
    fn write_release(&self, release: &Release, checkpoints: &[PathBuf]) -> Result<()> {
        for (path, text) in &release.configs {
            if Path::new(path)
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(Error::Input(format!(
                    "release {}: config path `{path}` must stay inside the release",
                    release.name
                )));
            }
            let p = self.dir.join(path);
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
            }
            std::fs::write(&p, text).map_err(|e| Error::io(&p, e))?;
        }
        #[derive(serde::Deserialize)]
        struct Manifest {
            configs: Vec<String>,
        }
        let m: Manifest = serde_yaml::from_str(&release.manifest).map_err(|e| {
            Error::Input(format!(
                "release {}: unreadable manifest: {e}",
                release.name
            ))
        })?;
        let list = |items: Vec<String>| {
            items
                .into_iter()
                .map(|i| format!("  - {}\n", serde_json::Value::String(i)))
                .collect::<String>()
        };
        let text = format!(
            "checkpoints:\n{}configs:\n{}",
            list(
                checkpoints
                    .iter()
                    .map(|c| c.display().to_string())
                    .collect()
            ),
            list(m.configs)
        );
        std::fs::write(self.manifest(), text).map_err(|e| Error::io(self.manifest(), e))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn install_zip(
    folder: &ModelsFolder,
    release: &Release,
    zip: &Path,
    origin: Origin,
    opts: &InstallOptions,
    on: &mut dyn FnMut(&InstallEvent),
) -> Result<Installed> {
    let mut archive = open_zip(zip)?;
    let entries = entry_names(zip, &archive)?;
    let wanted = release.checkpoints()?;
    let mut picks = Vec::with_capacity(wanted.len());
    let mut unpacked = 0u64;
    for w in &wanted {
        let i = find_entry(&entries, w).ok_or_else(|| {
            let shown: Vec<&str> = entries.iter().take(6).map(String::as_str).collect();
            let more = entries.len().saturating_sub(shown.len());
            damaged(
                zip,
                format!(
                    "not the {} zip, or incomplete: it has no `{}` (it holds {}{})",
                    release.name,
                    w.strip_prefix("models/").unwrap_or(w),
                    shown.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                ),
            )
        })?;
        let name = &entries[i];
        let entry = archive
            .by_name(name)
            .map_err(|e| damaged(zip, format!("{name}: {e}")))?;
        unpacked += entry.size();
        picks.push(name.clone());
    }
    let staging = Staging::new(folder, &release.name)?;
    // Unpacked checkpoints, then the imported model (at most as large again).
    let needed = unpacked.saturating_add(unpacked / 2);
    let free = free_space(&staging.dir, opts.download.space_limit.or(folder.room()))?;
    check_space(&staging.dir, needed, free)?;
    let mut paths = Vec::with_capacity(picks.len());
    for (k, (name, w)) in picks.iter().zip(&wanted).enumerate() {
        if opts.download.cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        on(&InstallEvent::Unpacking {
            entry: name.clone(),
            index: k + 1,
            of: picks.len(),
        });
        let out = staging.dir.join(w);
        if let Some(d) = out.parent() {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        let mut entry = archive
            .by_name(name)
            .map_err(|e| damaged(zip, format!("{name}: {e}")))?;
        let mut file = std::fs::File::create(&out).map_err(|e| Error::io(&out, e))?;
        copy(&mut entry, &mut file, &opts.download.cancel).map_err(|e| match e {
            CopyError::Read(e) => damaged(zip, format!("cannot read {name}: {e}")),
            CopyError::Write(e) => Error::io(&out, e),
            CopyError::Cancelled => Error::Cancelled,
        })?;
        paths.push(out);
    }
    staging.write_release(release, &paths)?;
    finish(folder, release, &staging, origin, opts, on)
}

enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
    Cancelled,
}

/// Copies to the end (where the zip reader checks the entry's CRC), checking `cancel`.
fn copy(
    from: &mut impl Read,
    to: &mut impl std::io::Write,
    cancel: &std::sync::atomic::AtomicBool,
) -> std::result::Result<(), CopyError> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(CopyError::Cancelled);
        }
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        to.write_all(&buf[..n]).map_err(CopyError::Write)?;
    }
}

/// Imports the unpacked release and writes its origin.
fn finish(
    folder: &ModelsFolder,
    release: &Release,
    staging: &Staging,
    mut origin: Origin,
    opts: &InstallOptions,
    on: &mut dyn FnMut(&InstallEvent),
) -> Result<Installed> {
    if opts.download.cancel.load(Ordering::Relaxed) {
        return Err(Error::Cancelled);
    }
    let source = ModelSource::open(staging.manifest())?;
    let out = folder.model_path(&release.name);
    let import = ImportOptions {
        dtype: opts.dtype,
        quantize: opts.quantize,
        overwrite: opts.replace,
    };
    let card = import_source(&source, &out, &import, &mut |step| {
        on(&InstallEvent::Importing(step.to_string()))
    })?;
    // The card names the release, not the unpacking folder it was imported from.
    let card_path = out.join(tessera_engine::loader::card::CARD_FILE);
    let mut card = card;
    card.name = release.title.clone();
    card.description = release.description.clone();
    card.provenance = match &origin.url {
        Some(url) => format!("official release {} downloaded from {url}", release.name),
        None => format!(
            "official release {} imported from {}",
            release.name, origin.source
        ),
    };
    let text = serde_json::to_vec_pretty(&card).map_err(|e| Error::Input(e.to_string()))?;
    write_atomic(&card_path, &text)?;
    origin.dtype = card.dtype.clone();
    origin.installed_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let text = serde_json::to_vec_pretty(&origin).map_err(|e| Error::Input(e.to_string()))?;
    write_atomic(&out.join(ORIGIN_FILE), &text)?;
    Ok(Installed {
        name: release.name.clone(),
        bytes: crate::folder::disk_bytes(&out),
        path: out,
        card,
        origin: Some(origin),
    })
}

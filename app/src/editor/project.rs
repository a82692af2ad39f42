//! Project files (`.tessera`: a zip of `image.png`, `mask.png` and `history.json`) and the
//! autosave that keeps a recovery project in the user's data folder, so that a crash loses at
//! most a few seconds of work.

use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};
use image::{GrayImage, RgbaImage};
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::app::{Confirm, Done, EditorApp};
use super::document::{Document, MaskEdit, PixelRect};
use super::files::{self, Purpose};
use super::history::Change;
use super::settings::GenSettings;

/// File name of the autosave recovery project inside the data folder.
pub const RECOVERY_FILE: &str = "recovery.tessera";

/// One accepted generation, as the history list shows it and "run again" restores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenRecord {
    /// Model name.
    pub model: String,
    /// The settings of the run (with the seed that was used).
    pub settings: GenSettings,
    /// Class name, for class-conditional models.
    #[serde(default)]
    pub class_name: Option<String>,
    /// Negative class name, for class-conditional models run with guidance ≠ 1 and a
    /// negative class.
    #[serde(default)]
    pub negative_class_name: Option<String>,
    /// Which candidate was accepted.
    pub candidate: usize,
    /// Wall time of the run in seconds.
    pub secs: f64,
}

impl GenRecord {
    /// A one-line summary.
    pub fn summary(&self) -> String {
        let what = match (&self.class_name, self.settings.prompt.trim()) {
            (Some(c), _) => format!("class “{c}”"),
            (None, "") => "unconditional".to_string(),
            (None, p) => format!("“{p}”"),
        };
        let mut extra = String::new();
        if self.settings.guidance_scale != 1.0 {
            extra.push_str(&format!(", guidance {}", self.settings.guidance_scale));
            match (
                &self.negative_class_name,
                self.settings.negative_prompt.trim(),
            ) {
                (Some(c), _) => extra.push_str(&format!(", negative class “{c}”")),
                (None, "") => {}
                (None, p) => extra.push_str(&format!(", negative “{p}”")),
            }
        }
        if let Some(k) = self.settings.strength {
            extra.push_str(&format!(
                ", redo {k} of {} levels",
                self.settings.levels.len()
            ));
        }
        format!(
            "{what}, seed {}, candidate {}{extra}",
            self.settings.seed, self.candidate
        )
    }
}

/// What a project stores besides the pixels.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProjectMeta {
    /// File the image came from.
    pub source: Option<PathBuf>,
    /// Model folder or manifest in use.
    pub model: Option<PathBuf>,
    /// Current generation settings.
    pub settings: GenSettings,
    /// Accepted generations, oldest first.
    pub generations: Vec<GenRecord>,
}

/// A project in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    /// The image.
    pub image: RgbaImage,
    /// The mask (same size).
    pub mask: GrayImage,
    /// Settings and history.
    pub meta: ProjectMeta,
    /// The mask of the last generation (*Reuse last mask*), stored as `last_mask.png` when
    /// present; projects without it load with `None`.
    pub last_mask: Option<GrayImage>,
}

/// Encodes a project as zip bytes (stored entries; the PNGs are compressed already).
pub fn encode_project(p: &Project) -> Result<Vec<u8>, String> {
    let image = files::encode_png(
        p.image.width(),
        p.image.height(),
        png::ColorType::Rgba,
        p.image.as_raw(),
        &[],
    )?;
    let mask = files::encode_png(
        p.mask.width(),
        p.mask.height(),
        png::ColorType::Grayscale,
        p.mask.as_raw(),
        &[],
    )?;
    let history = serde_json::to_vec_pretty(&p.meta).map_err(|e| e.to_string())?;
    let last_mask = match &p.last_mask {
        Some(m) => Some(files::encode_png(
            m.width(),
            m.height(),
            png::ColorType::Grayscale,
            m.as_raw(),
            &[],
        )?),
        None => None,
    };
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(image.len() > u32::MAX as usize / 2);
    let entries = [
        ("image.png", Some(&image)),
        ("mask.png", Some(&mask)),
        ("history.json", Some(&history)),
        ("last_mask.png", last_mask.as_ref()),
    ];
    for (name, bytes) in entries.into_iter().filter_map(|(n, b)| Some((n, b?))) {
        zip.start_file(name, opts).map_err(|e| e.to_string())?;
        zip.write_all(bytes).map_err(|e| e.to_string())?;
    }
    Ok(zip.finish().map_err(|e| e.to_string())?.into_inner())
}

/// Decodes project zip bytes.
pub fn decode_project(bytes: &[u8]) -> Result<Project, String> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| format!("not a Tessera project: {e}"))?;
    let mut read = |name: &str| -> Result<Vec<u8>, String> {
        let mut f = zip
            .by_name(name)
            .map_err(|_| format!("the project has no {name}"))?;
        let mut out = Vec::new();
        f.read_to_end(&mut out)
            .map_err(|e| format!("cannot read {name}: {e}"))?;
        Ok(out)
    };
    let image = files::decode_image(&read("image.png")?)?;
    let mask_rgba = files::decode_image(&read("mask.png")?)?;
    let meta: ProjectMeta =
        serde_json::from_slice(&read("history.json")?).map_err(|e| format!("history.json: {e}"))?;
    if mask_rgba.dimensions() != image.dimensions() {
        return Err("the project's mask and image sizes differ".into());
    }
    let gray = |m: &RgbaImage| {
        GrayImage::from_fn(m.width(), m.height(), |x, y| {
            image::Luma([m.get_pixel(x, y).0[0]])
        })
    };
    let mask = gray(&mask_rgba);
    // Optional (older projects have none); one that does not fit the image is dropped.
    let last_mask = read("last_mask.png")
        .ok()
        .and_then(|b| files::decode_image(&b).ok())
        .filter(|m| m.dimensions() == image.dimensions())
        .map(|m| gray(&m));
    Ok(Project {
        image,
        mask,
        meta,
        last_mask,
    })
}

/// Saves a project atomically.
pub fn save_project(path: &Path, p: &Project) -> Result<(), String> {
    files::write_atomic(path, &encode_project(p)?)
}

/// Loads a project file.
pub fn load_project(path: &Path) -> Result<Project, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    decode_project(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Whether a path names a project file.
pub fn is_project(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("tessera"))
}

/// Writes a recovery project every `interval` when the document changed, on a helper thread.
pub struct Autosave {
    path: PathBuf,
    interval: Duration,
    last_saved_rev: Option<u64>,
    last_try: Instant,
    writing: bool,
    tx: Sender<Result<u64, String>>,
    rx: Receiver<Result<u64, String>>,
}

impl Autosave {
    /// Autosave into `dir/recovery.tessera`.
    pub fn new(dir: &Path, interval: Duration) -> Self {
        let (tx, rx) = unbounded();
        Self {
            path: dir.join(RECOVERY_FILE),
            interval,
            last_saved_rev: None,
            last_try: Instant::now(),
            writing: false,
            tx,
            rx,
        }
    }

    /// The recovery file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Marks revision `rev` as saved (a project was just opened or saved explicitly).
    pub fn mark_saved(&mut self, rev: u64) {
        self.last_saved_rev = Some(rev);
    }

    /// Whether the document at `rev` should be written now.
    pub fn due(&self, rev: u64) -> bool {
        !self.writing
            && self.last_saved_rev != Some(rev)
            && self.last_try.elapsed() >= self.interval
    }

    /// Starts writing `project` (taken at revision `rev`) on a helper thread.
    pub fn start(&mut self, rev: u64, project: Project, wake: impl Fn() + Send + 'static) {
        self.writing = true;
        self.last_try = Instant::now();
        let tx = self.tx.clone();
        let path = self.path.clone();
        let spawned = std::thread::Builder::new()
            .name("tessera-autosave".into())
            .spawn(move || {
                tx.send(save_project(&path, &project).map(|()| rev)).ok();
                wake();
            });
        if spawned.is_err() {
            self.writing = false;
        }
    }

    /// A finished write: `Some(Ok(rev))` or the error.
    pub fn poll(&mut self) -> Option<Result<u64, String>> {
        let r = self.rx.try_recv().ok()?;
        self.writing = false;
        if let Ok(rev) = &r {
            self.last_saved_rev = Some(*rev);
        }
        Some(r)
    }

    /// The revision last written (or marked saved).
    pub fn saved_rev(&self) -> Option<u64> {
        self.last_saved_rev
    }

    /// Whether a write is in progress.
    pub fn is_writing(&self) -> bool {
        self.writing
    }

    /// Deletes the recovery file (clean exit, or the user declined to restore).
    pub fn discard(&self) {
        std::fs::remove_file(&self.path).ok();
    }
}

/// Documents, files and dialogs.
impl EditorApp {
    /// Opens an image or project file in the background.
    pub fn open_path(&mut self, path: &Path) {
        let p = path.to_path_buf();
        if is_project(path) {
            self.spawn("open", move || {
                let r = load_project(&p).map(Box::new);
                Done::Project(p, r, false)
            });
        } else {
            self.spawn("open", move || {
                let r = files::load_image(&p);
                Done::Image(p, r)
            });
        }
    }

    /// Restores a recovery project (autosave of a session that did not close cleanly).
    pub fn restore(&mut self, path: PathBuf) {
        self.spawn("restore", move || {
            let r = load_project(&path).map(Box::new);
            Done::Project(path, r, true)
        });
    }

    /// Replaces the document (cancels a running job, clears history and results).
    pub fn set_document(&mut self, image: RgbaImage, source: Option<PathBuf>) {
        self.jobs.cancel();
        self.jobs.running = None;
        self.jobs.results = None;
        self.jobs.forget();
        self.history.clear();
        self.doc = Some(Document::new(image));
        self.source = source;
        self.project_path = None;
        self.saved_rev = Some(0);
        self.grid_rev = None;
        self.canvas.fit();
    }

    pub(crate) fn open_done(&mut self, done: Done) {
        match done {
            Done::Image(path, Ok(img)) => {
                self.set_document(img, Some(path.clone()));
                self.remember(&path);
                self.info(format!("opened {}", path.display()));
            }
            Done::Project(path, Ok(p), recovered) => {
                self.set_document(p.image, p.meta.source.clone());
                if let Some(doc) = &mut self.doc
                    && p.mask.dimensions() == doc.size()
                {
                    doc.mask = p.mask;
                    doc.dirty.mask = PixelRect::full(doc.size().0, doc.size().1);
                }
                self.jobs.last_mask = p.last_mask.map(std::sync::Arc::new);
                if let Some(card) = &self.model.card {
                    let mut s = p.meta.settings.clone();
                    s.fit_card(card);
                    self.settings = s;
                } else {
                    self.settings = p.meta.settings.clone();
                }
                self.generations = p.meta.generations;
                if recovered {
                    self.saved_rev = None;
                    self.info("restored the unsaved work of the last session");
                } else {
                    self.project_path = Some(path.clone());
                    self.remember(&path);
                    self.info(format!("opened project {}", path.display()));
                }
                if let Some(a) = &mut self.autosave
                    && !recovered
                {
                    a.mark_saved(0);
                }
            }
            Done::Image(path, Err(e)) | Done::Project(path, Err(e), _) => {
                self.error(format!("cannot open {}: {e}", path.display()));
            }
            Done::Mask(path, r) => match (r, &mut self.doc) {
                (Ok(mask), Some(doc)) if mask.dimensions() == doc.size() => {
                    let rect = PixelRect::full(doc.size().0, doc.size().1);
                    let before = doc.mask_rect(rect);
                    doc.set_mask_rect(rect, mask.as_raw());
                    self.history.push(Change::Mask(MaskEdit {
                        rect,
                        before,
                        after: mask.into_raw(),
                        label: "load mask",
                    }));
                    self.info(format!("loaded mask {}", path.display()));
                }
                (Ok(_), _) => self.error("the mask does not fit the open image"),
                (Err(e), _) => self.error(format!("cannot load the mask: {e}")),
            },
            Done::Saved(what, path, r, rev) => match r {
                Ok(()) => {
                    if let Some(rev) = rev {
                        self.saved_rev = Some(rev);
                    }
                    self.remember(&path);
                    self.info(format!("saved {what} to {}", path.display()));
                }
                Err(e) => self.error(format!("cannot save {what}: {e}")),
            },
            Done::Imported(out, r) => {
                self.model.importing = None;
                match r {
                    Ok(()) => {
                        self.info(format!("imported to {}", out.display()));
                        self.load_model(&out);
                    }
                    Err(e) => self.error(format!("import failed: {e}")),
                }
            }
            Done::Grid(rev, grid) => {
                self.grid_busy = false;
                if let Some(doc) = &mut self.doc
                    && self.grid_rev.as_ref().is_some_and(|(r, _)| *r == rev)
                {
                    doc.token_grid = grid;
                }
            }
        }
    }

    pub(crate) fn remember(&mut self, path: &Path) {
        let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        self.config.add_recent(&abs);
        self.save_config();
    }

    pub(crate) fn save_config(&mut self) {
        if let Some(dir) = &self.config_dir
            && let Err(e) = self.config.save(dir)
        {
            self.info(format!("cannot save preferences: {e}"));
        }
    }

    /// A snapshot of the document as a project.
    pub fn project(&self) -> Option<Project> {
        let doc = self.doc.as_ref()?;
        Some(Project {
            image: doc.image.clone(),
            mask: doc.mask.clone(),
            meta: ProjectMeta {
                source: self.source.clone(),
                model: self.model.path.clone(),
                settings: self.settings.clone(),
                generations: self.generations.clone(),
            },
            last_mask: self.jobs.last_mask.as_deref().cloned(),
        })
    }

    /// Asks for a path (file dialog off the UI thread).
    pub fn ask(&mut self, purpose: Purpose) {
        let suggested = match &purpose {
            Purpose::SaveImage => self.source.as_ref().map(|s| s.with_extension("png")),
            Purpose::SaveProject => self
                .project_path
                .clone()
                .or_else(|| self.source.as_ref().map(|s| s.with_extension("tessera"))),
            Purpose::SaveMask => self.source.as_ref().map(|s| {
                let stem = s.file_stem().unwrap_or_default().to_string_lossy();
                s.with_file_name(format!("{stem}-mask.png"))
            }),
            _ => None,
        };
        let ctx = self.ctx.clone();
        if !self
            .dialogs
            .request(purpose, suggested, move || ctx.request_repaint())
        {
            self.info("a file dialog is already open");
        }
    }

    pub(crate) fn dialog_done(&mut self, purpose: Purpose, path: PathBuf) {
        if purpose.is_save() && path.exists() {
            self.confirm = Some(Confirm::Overwrite(purpose, path));
            return;
        }
        self.act(purpose, path);
    }

    /// Does what a dialog was for, with the chosen path (overwrite already confirmed).
    pub fn act(&mut self, purpose: Purpose, path: PathBuf) {
        match purpose {
            Purpose::OpenImage => self.open_path(&path),
            Purpose::OpenMask => {
                let Some(size) = self.doc.as_ref().map(Document::size) else {
                    return self.error("open an image first");
                };
                self.spawn("mask", move || {
                    let r = files::load_mask(&path, size);
                    Done::Mask(path, r)
                });
            }
            Purpose::OpenModelFolder | Purpose::OpenManifest => self.load_model(&path),
            Purpose::OpenSegmentWeights => self.select.load(&path),
            Purpose::ImportTo(_) => {
                // The picker returns an existing folder; import into a new one inside it.
                let name: String = self
                    .model
                    .card
                    .as_ref()
                    .map(|c| c.name.as_str())
                    .unwrap_or("model")
                    .chars()
                    .map(|c| {
                        if c.is_alphanumeric() || c == '-' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                self.import_model(path.join(format!("{name}-tessera")));
            }
            Purpose::SaveImage => {
                let Some(doc) = &self.doc else { return };
                let img = doc.image.clone();
                let rev = doc.revision;
                let text = self.png_text();
                self.spawn("save", move || {
                    let r = files::save_image(&img, &path, &text);
                    Done::Saved("the image".into(), path, r, Some(rev))
                });
            }
            Purpose::SaveMask => {
                let Some(doc) = &self.doc else { return };
                let mask = doc.mask.clone();
                self.spawn("save", move || {
                    let r = files::save_mask(&mask, &path);
                    Done::Saved("the mask".into(), path, r, None)
                });
            }
            Purpose::SaveProject => {
                let Some(p) = self.project() else { return };
                let rev = self.doc.as_ref().map(|d| d.revision);
                self.project_path = Some(path.clone());
                self.spawn("save", move || {
                    let r = save_project(&path, &p);
                    Done::Saved("the project".into(), path, r, rev)
                });
            }
        }
    }

    /// Generation parameters for PNG tEXt chunks.
    pub(crate) fn png_text(&self) -> Vec<(String, String)> {
        let mut text = vec![("Software".to_string(), "Tessera".to_string())];
        if let Ok(json) = serde_json::to_string(&self.generations) {
            text.push(("tessera:generations".into(), json));
        }
        if let Some(last) = self.generations.last() {
            text.push(("tessera:last".into(), last.summary()));
        }
        text
    }

    pub(crate) fn input_files(&mut self, ctx: &egui::Context) {
        let (dropped, pasted) = ctx.input(|i| {
            let pasted: Vec<Arc<egui::ColorImage>> = i
                .events
                .iter()
                .filter_map(|e| match e {
                    egui::Event::PasteImage(img) => Some(img.clone()),
                    _ => None,
                })
                .collect();
            (i.raw.dropped_files.clone(), pasted)
        });
        for f in dropped {
            let path = f.path().to_path_buf();
            if is_project(&path) || path.is_file() {
                self.open_path(&path);
            } else {
                // Native drops are files on disk; anything else is read through the trait.
                self.spawn("open", move || {
                    let r = f.bytes().and_then(|b| files::decode_image(&b));
                    Done::Image(path, r)
                });
            }
        }
        for img in pasted {
            let [w, h] = img.size;
            if w as u32 > files::MAX_SIDE || h as u32 > files::MAX_SIDE || w == 0 || h == 0 {
                self.error(format!("the pasted image is {w}×{h}; too large or empty"));
                continue;
            }
            let raw: Vec<u8> = img
                .pixels
                .iter()
                .flat_map(|c| c.to_srgba_unmultiplied())
                .collect();
            if let Some(rgba) = RgbaImage::from_raw(w as u32, h as u32, raw) {
                self.set_document(rgba, None);
                self.info("pasted an image from the clipboard");
            }
        }
    }
}

/// The recovery project left by an earlier session, if any.
pub fn find_recovery(dir: &Path) -> Option<PathBuf> {
    let p = dir.join(RECOVERY_FILE);
    p.is_file().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_round_trips() {
        let p = Project {
            image: RgbaImage::from_fn(7, 5, |x, y| image::Rgba([x as u8, y as u8, 1, 128])),
            mask: GrayImage::from_fn(7, 5, |x, _| image::Luma([if x > 3 { 255 } else { 0 }])),
            meta: ProjectMeta {
                source: Some("/a/b.png".into()),
                ..ProjectMeta::default()
            },
            last_mask: Some(GrayImage::from_fn(7, 5, |_, y| {
                image::Luma([if y > 2 { 255 } else { 0 }])
            })),
        };
        let bytes = encode_project(&p).unwrap();
        assert_eq!(decode_project(&bytes).unwrap(), p);
        assert!(decode_project(&bytes[..bytes.len() / 2]).is_err());
        // Without a last mask there is no last_mask.png, and it loads as None.
        let p = Project {
            last_mask: None,
            ..p
        };
        assert_eq!(decode_project(&encode_project(&p).unwrap()).unwrap(), p);
    }
}

//! Opening, saving and recovering documents and projects: the editor's side of the project
//! file ([`crate::editor::project`]) and of the file dialogs. Loads and saves run on other
//! threads and come back as [`Done`] messages.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbaImage;

use super::{Confirm, Done, EditorApp};
use crate::editor::document::{Document, MaskEdit, PixelRect};
use crate::editor::files::{self, Purpose};
use crate::editor::history::Change;
use crate::editor::jobs::Results;
use crate::editor::project::*;
use crate::editor::saved::{SAVED_HISTORY_BYTES, SavedResults};
use tessera_engine::worker::JobId;

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

    /// Shows the candidates a recovery project kept, as a finished generation.
    fn restore_results(&mut self, r: SavedResults) {
        let n = r.finals.len();
        let mut res = Results::new(JobId(u64::MAX), n, r.record, r.sample);
        res.finals = r.finals.into_iter().map(|f| f.map(Arc::new)).collect();
        res.selected = r.selected.min(n.saturating_sub(1));
        res.picked = true;
        res.source = r.source.map(Arc::new);
        res.finished = true;
        self.jobs.results = Some(res);
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
                    if let Some(h) = p.history {
                        self.history.restore(h);
                    }
                    if let Some(r) = p.results {
                        self.restore_results(r);
                    }
                    let what = self.doc.as_ref().map_or(String::new(), |d| {
                        let masked = d.mask.pixels().filter(|p| p.0[0] >= 128).count();
                        let candidates = self
                            .jobs
                            .results
                            .as_ref()
                            .map_or(0, |r| r.finals.iter().filter(|f| f.is_some()).count());
                        format!(
                            " ({}×{} image, {masked} masked pixels, {} generations, {} undo \
                             steps, {candidates} candidates)",
                            d.size().0,
                            d.size().1,
                            self.generations.len(),
                            self.history.len()
                        )
                    });
                    self.info(format!(
                        "restored the unsaved work of the last session{what}"
                    ));
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
    pub fn project(&self, for_recovery: bool) -> Option<Project> {
        let doc = self.doc.as_ref()?;
        // A recovery project also keeps what a crash would otherwise lose: the undo history
        // and candidates not accepted yet.
        let results = self
            .jobs
            .results
            .as_ref()
            .filter(|r| for_recovery && r.finals.iter().any(Option::is_some))
            .map(|r| SavedResults {
                record: r.record.clone(),
                selected: r.selected,
                sample: r.sample,
                finals: r.finals.iter().map(|f| f.as_deref().cloned()).collect(),
                source: r.source.as_deref().cloned(),
            });
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
            history: for_recovery.then(|| self.history.saved(SAVED_HISTORY_BYTES)),
            results,
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
            Purpose::ImportRelease => {
                let ctx = self.ctx.clone();
                if let Err(e) = self.library.import(&path, move || ctx.request_repaint()) {
                    self.error(e);
                }
            }
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
                let Some(p) = self.project(false) else { return };
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

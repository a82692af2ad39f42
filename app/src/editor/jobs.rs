//! The running job and its results, fed by the engine's events. The UI thread never waits:
//! events are drained once per frame and only update this state and the document's overlay.

use std::sync::Arc;
use std::time::Instant;

use image::RgbImage;
use tessera_engine::worker::{Event, JobHandle, JobId};

use std::path::{Path, PathBuf};
use std::time::Duration;

use tessera_engine::inpaint::plan_window;
use tessera_engine::loader::LoadOptions;
use tessera_engine::loader::card::{Conditioning, ModelCard};
use tessera_engine::text::PromptTokenizer;
use tessera_engine::worker::{Job, JobKind};

use super::app::{Done, EditorApp};
use super::document::{Document, Overlay};
use super::history::{self, Change};
use super::project::GenRecord;
use super::settings::level_name;

/// Largest side of the previews the engine sends while a job runs: enough for a sharp
/// view of the window on a large screen; bigger windows (on large images) would cost
/// frames to convert and upload. Final images keep their full size.
pub const PREVIEW_MAX_SIDE: u32 = 1024;

/// One level's decoded preview of one candidate.
#[derive(Debug, Clone)]
pub struct LevelPreview {
    /// The level that produced it (its output is x_{level−1}).
    pub level: usize,
    /// The preview and where it goes.
    pub overlay: Overlay,
}

/// A job that is running.
#[derive(Debug)]
pub struct Running {
    /// Handle (cancel).
    pub handle: JobHandle,
    /// Levels that will run, in order; empty until `Started`.
    pub levels: Vec<usize>,
    /// Number of levels of the model.
    pub model_levels: usize,
    /// Tokens per candidate over the job.
    pub total: usize,
    /// Tokens written so far.
    pub done: usize,
    /// Level being written.
    pub level: Option<usize>,
    /// The engine's estimate, from earlier jobs.
    pub estimate_secs: Option<f64>,
    /// When it was submitted.
    pub started: Instant,
    /// Origin of partial previews (the context window ∩ image).
    pub origin: (u32, u32),
    /// Whether cancel was asked for.
    pub cancelling: bool,
}

impl Running {
    /// Fraction done, 0..1.
    pub fn fraction(&self) -> f32 {
        if self.total == 0 {
            0.0
        } else {
            (self.done as f32 / self.total as f32).clamp(0.0, 1.0)
        }
    }

    /// Seconds left: from the engine's estimate, else from the rate so far.
    pub fn eta_secs(&self) -> Option<f64> {
        let elapsed = self.started.elapsed().as_secs_f64();
        if self.done > 0 && self.total > 0 {
            let rate = elapsed / self.done as f64;
            return Some(rate * (self.total - self.done.min(self.total)) as f64);
        }
        self.estimate_secs.map(|e| (e - elapsed).max(0.0))
    }

    /// "level 3 of 3 — coarse".
    pub fn level_label(&self) -> String {
        match self.level.or(self.levels.first().copied()) {
            Some(l) => format!(
                "level {l} of {} — {}",
                self.model_levels,
                level_name(l, self.model_levels)
            ),
            None => "starting…".into(),
        }
    }
}

/// The candidates of the last job, until accepted or discarded.
#[derive(Debug)]
pub struct Results {
    /// The job.
    pub job: JobId,
    /// Per candidate, every level preview in arrival order (coarse first).
    pub levels: Vec<Vec<LevelPreview>>,
    /// Per candidate, the final full-size image once it arrived.
    pub finals: Vec<Option<Arc<RgbImage>>>,
    /// Candidate shown on the canvas.
    pub selected: usize,
    /// Level shown (`None` = the newest / final).
    pub view_level: Option<usize>,
    /// What produced them.
    pub record: GenRecord,
    /// Whether the job ended.
    pub finished: bool,
    /// Whether this was a whole-image sample (the result opens as a new document).
    pub sample: bool,
}

impl Results {
    /// Empty results for `n` candidates.
    pub fn new(job: JobId, n: usize, record: GenRecord, sample: bool) -> Self {
        Self {
            job,
            levels: vec![Vec::new(); n],
            finals: vec![None; n],
            selected: 0,
            view_level: None,
            record,
            finished: false,
            sample,
        }
    }

    /// Total number of level previews received.
    pub fn level_count(&self) -> usize {
        self.levels.iter().map(Vec::len).sum()
    }

    /// The overlay for the selected candidate at the viewed level.
    pub fn overlay(&self) -> Option<Overlay> {
        let levels = self.levels.get(self.selected)?;
        match self.view_level {
            Some(l) => levels
                .iter()
                .find(|p| p.level == l)
                .map(|p| p.overlay.clone()),
            None => {
                let last = levels.last().map(|p| p.overlay.clone());
                match (self.finals.get(self.selected).cloned().flatten(), &last) {
                    // The final image, cropped to the window the previews covered.
                    (Some(img), Some(prev)) => Some(crop_overlay(&img, prev)),
                    (Some(img), None) => Some(Overlay::at(img, (0, 0))),
                    (None, _) => last,
                }
            }
        }
    }

    /// Whether candidate `i` can be accepted.
    pub fn ready(&self, i: usize) -> bool {
        self.finals.get(i).is_some_and(Option::is_some)
    }
}

/// The final image at full resolution over the area a (possibly shrunk) preview covered.
fn crop_overlay(full: &Arc<RgbImage>, like: &Overlay) -> Overlay {
    let (x, y) = like.origin;
    let (w, h) = like.extent;
    if x == 0 && y == 0 && full.dimensions() == (w, h) {
        return Overlay::at(full.clone(), (0, 0));
    }
    let w = w.min(full.width().saturating_sub(x));
    let h = h.min(full.height().saturating_sub(y));
    Overlay::at(
        Arc::new(image::imageops::crop_imm(&**full, x, y, w, h).to_image()),
        (x, y),
    )
}

/// What happened to a job, for the app to report.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Still running, or the event changed only progress.
    None,
    /// Finished after `secs`.
    Finished(f64),
    /// Nothing to do.
    NoOp(String),
    /// Cancelled.
    Cancelled,
    /// Failed.
    Failed(String),
}

/// The running job and the current results.
#[derive(Debug, Default)]
pub struct Jobs {
    /// The job in progress.
    pub running: Option<Running>,
    /// Results of the current or last job.
    pub results: Option<Results>,
    /// Seconds per token (per candidate) measured on the last finished job.
    pub secs_per_token: Option<f64>,
}

impl Jobs {
    /// Whether a job is running.
    pub fn busy(&self) -> bool {
        self.running.is_some()
    }

    /// Asks the running job to stop.
    pub fn cancel(&mut self) {
        if let Some(r) = &mut self.running {
            r.handle.cancel();
            r.cancelling = true;
        }
    }

    /// Applies a job event; updates `doc.overlay` with previews.
    pub fn handle(&mut self, event: Event, doc: Option<&mut Document>) -> Outcome {
        let Some(id) = job_of(&event) else {
            return Outcome::None;
        };
        let ours = self.running.as_ref().is_some_and(|r| r.handle.id == id);
        let results_ours = self.results.as_ref().is_some_and(|r| r.job == id);
        if !ours && !results_ours {
            return Outcome::None; // a stale event of an older job
        }
        let mut outcome = Outcome::None;
        let mut refresh = false;
        match event {
            Event::Started {
                levels,
                tokens,
                estimate_secs,
                ..
            } => {
                if let Some(r) = &mut self.running {
                    r.levels = levels;
                    r.total = tokens;
                    r.estimate_secs = estimate_secs;
                }
            }
            Event::Progress {
                level,
                done,
                total,
                partial,
                extent,
                ..
            } => {
                if let Some(r) = &mut self.running {
                    r.level = Some(level);
                    r.done = done;
                    r.total = total;
                    if let (Some(p), Some(doc)) = (partial, doc) {
                        let selected0 = self
                            .results
                            .as_ref()
                            .is_none_or(|res| res.selected == 0 && res.view_level.is_none());
                        if selected0 {
                            doc.overlay = Some(Overlay {
                                pixels: p,
                                origin: r.origin,
                                extent,
                            });
                        }
                    }
                    return Outcome::None;
                }
            }
            Event::Level {
                level,
                candidate,
                preview,
                origin,
                extent,
                ..
            } => {
                if let Some(res) = &mut self.results
                    && let Some(list) = res.levels.get_mut(candidate)
                {
                    list.push(LevelPreview {
                        level,
                        overlay: Overlay {
                            pixels: preview,
                            origin,
                            extent,
                        },
                    });
                    refresh = candidate == res.selected;
                }
                if let Some(r) = &mut self.running {
                    r.origin = origin;
                }
            }
            Event::Candidate { index, image, .. } => {
                if let Some(res) = &mut self.results
                    && let Some(slot) = res.finals.get_mut(index)
                {
                    *slot = Some(image);
                    refresh = index == res.selected;
                }
            }
            Event::NoOp { reason, .. } => {
                self.running = None;
                self.results = None;
                outcome = Outcome::NoOp(reason);
            }
            Event::Finished { secs, .. } => {
                if let Some(r) = self.running.take()
                    && r.total > 0
                {
                    self.secs_per_token = Some(secs / r.total as f64);
                }
                if let Some(res) = &mut self.results {
                    res.finished = true;
                    res.record.secs = secs;
                }
                refresh = true;
                outcome = Outcome::Finished(secs);
            }
            Event::Cancelled { .. } => {
                self.running = None;
                // Keep whatever levels arrived: they can still be viewed, not accepted.
                if let Some(res) = &mut self.results {
                    res.finished = true;
                    if res.level_count() == 0 {
                        self.results = None;
                    }
                }
                refresh = true;
                outcome = Outcome::Cancelled;
            }
            Event::Failed { error, .. } => {
                self.running = None;
                self.results = None;
                refresh = true;
                outcome = Outcome::Failed(error);
            }
            Event::ModelLoaded { .. } | Event::ModelFailed { .. } => {}
        }
        if refresh && let Some(doc) = doc {
            doc.overlay = self.results.as_ref().and_then(Results::overlay);
        }
        outcome
    }
}

/// Model loading and generation.
impl EditorApp {
    /// Loads a model folder or manifest in the background.
    pub fn load_model(&mut self, path: &Path) {
        self.model.loading = Some(path.to_path_buf());
        self.model.error = None;
        if !self.engine.load_model(path, LoadOptions::default()) {
            self.model.loading = None;
            self.error("the engine thread is not running");
        }
    }

    pub(crate) fn model_loaded(&mut self, card: ModelCard, warnings: Vec<String>) {
        let path = self.model.loading.take();
        let dir = path.as_deref().map(|p| {
            if p.is_dir() {
                p.to_path_buf()
            } else {
                p.parent().map(Path::to_path_buf).unwrap_or_default()
            }
        });
        self.model.tokenizer = None;
        if let Some(dir) = &dir {
            match PromptTokenizer::for_model(dir, &card) {
                Ok(t) => self.model.tokenizer = t,
                Err(e) => self.error(format!("prompt tokenizer: {e}")),
            }
        }
        self.settings.fit_card(&card);
        self.info(format!("model “{}” loaded", card.name));
        self.model.card = Some(card);
        self.model.warnings = warnings;
        self.model.path = path.clone();
        self.prompt_check = None;
        self.grid_rev = None;
        if let Some(p) = path {
            self.config.last_model = Some(p);
            self.save_config();
        }
    }

    /// Imports the current official model into a Tessera folder, then loads it.
    pub fn import_model(&mut self, out: PathBuf) {
        let Some(manifest) = self.model.path.clone() else {
            return;
        };
        self.model.importing = Some(out.clone());
        self.spawn("import", move || {
            let r = tessera_engine::loader::import::import(
                &manifest,
                &out,
                &tessera_engine::loader::import::ImportOptions::default(),
                &mut |_| {},
            )
            .map(|_| ())
            .map_err(|e| e.to_string());
            Done::Imported(out, r)
        });
    }

    /// Builds a job from the document and settings and submits it (a sample job when no
    /// document is open).
    pub fn generate(&mut self) {
        if self.jobs.busy() {
            return self.info("a job is already running");
        }
        let Some(card) = self.model.card.clone() else {
            return self
                .error("No model — open a model folder or an official release manifest first");
        };
        let seed_before = self.settings.seed;
        let seed = self.settings.take_seed();
        let chain = match self
            .settings
            .chain_request(&card, self.model.tokenizer.as_ref(), seed)
        {
            Ok(c) => c,
            Err(e) => {
                self.settings.seed = seed_before;
                return self.error(format!("cannot generate: {e}"));
            }
        };
        let mut origin = (0, 0);
        let (kind, sample) = match &mut self.doc {
            Some(doc) => {
                if !doc.has_mask() {
                    self.settings.seed = seed_before;
                    return self.error("paint a mask over the part to regenerate first");
                }
                let window = self.settings.window_options();
                let (w, h) = doc.size();
                if let Ok(Some(win)) = plan_window(w, h, &doc.mask, &window)
                    && let Some((x, y, _, _)) = win.clip_to(w, h)
                {
                    origin = (x, y);
                }
                let rgb = image::DynamicImage::ImageRgba8(doc.image.clone()).to_rgb8();
                doc.overlay = None;
                (
                    JobKind::Inpaint {
                        image: Arc::new(rgb),
                        mask: Arc::new(doc.mask.clone()),
                        window,
                    },
                    false,
                )
            }
            None => (JobKind::Sample, true),
        };
        let mut used = self.settings.clone();
        used.seed = seed;
        let class_name = match (&card.conditioning, used.class) {
            (Conditioning::Class { class_names, .. }, Some(c)) => {
                Some(class_names.get(c).cloned().unwrap_or_else(|| c.to_string()))
            }
            _ => None,
        };
        let record = GenRecord {
            model: card.name.clone(),
            settings: used,
            class_name,
            candidate: 0,
            secs: 0.0,
        };
        let candidates = chain.candidates;
        let handle = self.engine.submit(Job {
            kind,
            chain,
            partial_every: Some(Duration::from_millis(250)),
            preview_max_side: Some(PREVIEW_MAX_SIDE),
        });
        self.jobs.results = Some(Results::new(handle.id, candidates, record, sample));
        self.jobs.running = Some(Running {
            handle,
            levels: Vec::new(),
            model_levels: card.levels(),
            total: 0,
            done: 0,
            level: None,
            estimate_secs: None,
            started: Instant::now(),
            origin,
            cancelling: false,
        });
        self.thumbs.clear();
    }

    /// Cancels the running job.
    pub fn cancel(&mut self) {
        self.jobs.cancel();
    }

    /// Tokens the current mask would regenerate × passes × candidates (the preflight).
    pub fn preflight(&self) -> Option<(usize, usize)> {
        let grid = self.doc.as_ref()?.token_grid.as_ref()?;
        let masked = grid.touched.iter().filter(|&&t| t).count();
        Some((
            masked,
            masked * self.settings.passes() * self.settings.candidates,
        ))
    }

    /// Accepts candidate `i`: it becomes the image (one undoable edit).
    pub fn accept(&mut self, i: usize) {
        let Some(res) = &self.jobs.results else {
            return;
        };
        let Some(Some(img)) = res.finals.get(i).cloned() else {
            return self.info("that candidate is not finished");
        };
        let mut record = res.record.clone();
        record.candidate = i;
        let sample = res.sample;
        self.jobs.results = None;
        self.thumbs.clear();
        if sample || self.doc.is_none() {
            let rgba = image::DynamicImage::ImageRgb8((*img).clone()).to_rgba8();
            self.set_document(rgba, None);
            self.generations.push(record);
            return;
        }
        let Some(doc) = &mut self.doc else { return };
        doc.overlay = None;
        match history::diff_image(doc, &img, format!("accept candidate {i}")) {
            Some(edit) => {
                history::apply_image_edit(doc, &edit, true);
                self.history.push(Change::Image(edit));
                self.info(format!("accepted: {}", record.summary()));
                self.generations.push(record);
            }
            None => self.info("the candidate equals the image; nothing changed"),
        }
    }

    /// Drops the results.
    pub fn discard(&mut self) {
        if self.jobs.busy() {
            self.cancel();
        }
        self.jobs.results = None;
        self.thumbs.clear();
        if let Some(doc) = &mut self.doc {
            doc.overlay = None;
        }
    }

    /// Restores the settings of an accepted generation (same seed) and runs it again.
    pub fn run_again(&mut self, i: usize) {
        let Some(r) = self.generations.get(i) else {
            return;
        };
        let mut s = r.settings.clone();
        s.seed_mode = super::settings::SeedMode::Fixed;
        if let Some(card) = &self.model.card {
            s.fit_card(card);
        }
        self.settings = s;
        self.generate();
    }

    /// Shows candidate `i` on the canvas.
    pub fn select_candidate(&mut self, i: usize) {
        if let Some(res) = &mut self.jobs.results {
            res.selected = i.min(res.levels.len().saturating_sub(1));
            if let Some(doc) = &mut self.doc {
                doc.overlay = res.overlay();
            }
        }
    }

    /// Shows level `level` (`None` = newest/final) of the selected candidate.
    pub fn view_level(&mut self, level: Option<usize>) {
        if let Some(res) = &mut self.jobs.results {
            res.view_level = level;
            if let Some(doc) = &mut self.doc {
                doc.overlay = res.overlay();
            }
        }
    }
}

/// The job an event is about (`None` for model events).
pub fn job_of(e: &Event) -> Option<JobId> {
    match e {
        Event::Started { job, .. }
        | Event::Progress { job, .. }
        | Event::Level { job, .. }
        | Event::Candidate { job, .. }
        | Event::NoOp { job, .. }
        | Event::Finished { job, .. }
        | Event::Cancelled { job }
        | Event::Failed { job, .. } => Some(*job),
        Event::ModelLoaded { .. } | Event::ModelFailed { .. } => None,
    }
}

/// "3 s", "2 min 5 s".
pub fn format_secs(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s >= 60 {
        format!("{} min {} s", s / 60, s % 60)
    } else {
        format!("{s} s")
    }
}

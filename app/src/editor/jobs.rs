//! The running job and its results, fed by the engine's events. The UI thread never waits:
//! events are drained once per frame and only update this state and the document's overlay.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use image::{GrayImage, RgbImage};
use tessera_engine::worker::{Event, JobHandle, JobId};

use std::path::{Path, PathBuf};
use std::time::Duration;

use tessera_engine::inpaint::{Window, plan_window};
use tessera_engine::loader::LoadOptions;
use tessera_engine::loader::card::{Conditioning, ModelCard};
use tessera_engine::text::PromptTokenizer;
use tessera_engine::worker::{Job, JobKind};

use super::app::{Done, EditorApp};
use super::document::{ConfidenceOverlay, Document, Overlay};
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
    /// How sure the sampler was of each of its tokens.
    pub confidence: ConfidenceOverlay,
}

/// Shows `res` (the selected candidate at the viewed level) on `doc`, or nothing.
pub fn show_results(doc: &mut Document, res: Option<&Results>) {
    doc.overlay = res.and_then(Results::overlay);
    doc.confidence = res.and_then(Results::confidence);
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
    /// The image the job started from (inpainting), so that accepting a candidate changes only
    /// the pixels the job changed — other accepted results since then stay.
    pub source: Option<Arc<RgbImage>>,
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
            source: None,
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

    /// Confidence of the selected candidate at the viewed level (the newest when none is).
    pub fn confidence(&self) -> Option<ConfidenceOverlay> {
        let levels = self.levels.get(self.selected)?;
        let shown = match self.view_level {
            Some(l) => levels.iter().find(|p| p.level == l),
            None => levels.last(),
        };
        shown.map(|p| p.confidence.clone())
    }

    /// Confidence of candidate `i`'s output (its last level), once it is final.
    pub fn final_confidence(&self, i: usize) -> Option<ConfidenceOverlay> {
        if !self.ready(i) {
            return None;
        }
        self.levels
            .get(i)?
            .last()
            .filter(|p| p.level == 1)
            .map(|p| p.confidence.clone())
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

/// A generation request captured when Generate was pressed: the job (with copies of the image
/// and mask) and what the results need, so later edits do not change it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The engine job.
    pub job: Job,
    /// What produced it (settings with the seed used).
    pub record: GenRecord,
    /// Number of candidates.
    pub candidates: usize,
    /// Whether it is a whole-image sample.
    pub sample: bool,
    /// Origin of partial previews (the context window ∩ image).
    pub origin: (u32, u32),
    /// Number of levels of the model.
    pub model_levels: usize,
    /// The mask it regenerates (inpainting).
    pub mask: Option<Arc<GrayImage>>,
    /// The image it starts from (inpainting).
    pub source: Option<Arc<RgbImage>>,
}

/// The running job, the queue behind it and the results.
///
/// Queued jobs start one after another. A job started from the queue shows its candidates at
/// once unless the results panel still holds finished candidates that were neither accepted
/// nor discarded; then its results wait in [`Jobs::waiting`] and appear, in order, as the
/// earlier ones are accepted or discarded.
#[derive(Debug, Default)]
pub struct Jobs {
    /// The job in progress.
    pub running: Option<Running>,
    /// Results shown in the panel: of the current or last job.
    pub results: Option<Results>,
    /// Results of later jobs (finished or running) waiting for the shown ones to be accepted or
    /// discarded.
    pub waiting: VecDeque<Results>,
    /// Requests waiting for the running job to end, oldest first.
    pub queue: VecDeque<Request>,
    /// The mask of the last job started (for *Reuse last mask*).
    pub last_mask: Option<Arc<GrayImage>>,
    /// Seconds per token (per candidate) measured on the last finished job.
    pub secs_per_token: Option<f64>,
    /// The context window the next request must use (set by *Repaint unsure*, so its token
    /// grid is the one the unsure tokens were drawn on); taken by that request.
    pub fixed_window: Option<Window>,
}

impl Jobs {
    /// Whether a job is running.
    pub fn busy(&self) -> bool {
        self.running.is_some()
    }

    /// Forgets the queue, the waiting results and the last mask (a new document).
    pub fn forget(&mut self) {
        self.queue.clear();
        self.waiting.clear();
        self.last_mask = None;
    }

    /// The results of job `id`, shown or waiting.
    fn results_of(&mut self, id: JobId) -> Option<&mut Results> {
        if self.results.as_ref().is_some_and(|r| r.job == id) {
            return self.results.as_mut();
        }
        self.waiting.iter_mut().find(|r| r.job == id)
    }

    /// Drops the results of job `id`; when they were shown, the next waiting ones are shown.
    fn drop_results(&mut self, id: JobId) {
        if self.results.as_ref().is_some_and(|r| r.job == id) {
            self.results = self.waiting.pop_front();
        } else {
            self.waiting.retain(|r| r.job != id);
        }
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
        let shown = self.results.as_ref().is_some_and(|r| r.job == id);
        if !ours && self.results_of(id).is_none() {
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
                        let selected0 = match &self.results {
                            Some(res) => shown && res.selected == 0 && res.view_level.is_none(),
                            None => self.waiting.is_empty(),
                        };
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
                confidence,
                window,
                ..
            } => {
                if let Some(res) = self.results_of(id)
                    && let Some(list) = res.levels.get_mut(candidate)
                {
                    let grid = confidence.prob.len().isqrt();
                    list.push(LevelPreview {
                        level,
                        overlay: Overlay {
                            pixels: preview,
                            origin,
                            extent,
                        },
                        confidence: ConfidenceOverlay {
                            window,
                            grid,
                            confidence: Arc::new(confidence),
                        },
                    });
                    refresh = shown && candidate == res.selected;
                }
                if let Some(r) = &mut self.running {
                    r.origin = origin;
                }
            }
            Event::Candidate { index, image, .. } => {
                if let Some(res) = self.results_of(id)
                    && let Some(slot) = res.finals.get_mut(index)
                {
                    *slot = Some(image);
                    refresh = shown && index == res.selected;
                }
            }
            Event::NoOp { reason, .. } => {
                if ours {
                    self.running = None;
                }
                self.drop_results(id);
                refresh = shown;
                outcome = Outcome::NoOp(reason);
            }
            Event::Finished { secs, .. } => {
                if ours
                    && let Some(r) = self.running.take()
                    && r.total > 0
                {
                    self.secs_per_token = Some(secs / r.total as f64);
                }
                if let Some(res) = self.results_of(id) {
                    res.finished = true;
                    res.record.secs = secs;
                }
                refresh = shown;
                outcome = Outcome::Finished(secs);
            }
            Event::Cancelled { .. } => {
                if ours {
                    self.running = None;
                }
                // Keep whatever levels arrived: they can still be viewed, not accepted.
                let empty = self.results_of(id).is_some_and(|res| {
                    res.finished = true;
                    res.level_count() == 0
                });
                if empty {
                    self.drop_results(id);
                }
                refresh = shown;
                outcome = Outcome::Cancelled;
            }
            Event::Failed { error, .. } => {
                if ours {
                    self.running = None;
                }
                self.drop_results(id);
                refresh = shown;
                outcome = Outcome::Failed(error);
            }
            Event::ModelLoaded { .. } | Event::ModelFailed { .. } => {}
        }
        if refresh && let Some(doc) = doc {
            show_results(doc, self.results.as_ref());
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
        let opts = LoadOptions {
            lazy: self.config.low_memory,
            quantize: self.config.load_weights.quantization(),
            keep_stored_quantization: true,
            ..LoadOptions::default()
        };
        if !self.engine.load_model(path, opts) {
            self.model.loading = None;
            self.error("the engine thread is not running");
        }
    }

    pub(crate) fn model_loaded(&mut self, card: ModelCard, warnings: Vec<String>, weights: String) {
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
        // Another model: its recommended guidance (a reload of the same one keeps the user's).
        if self.model.card.as_ref().is_none_or(|c| c.name != card.name) {
            self.settings.guidance_scale = card.guidance_scale.unwrap_or(1.0);
        }
        self.info(format!("model “{}” loaded", card.name));
        self.model.card = Some(card);
        self.model.warnings = warnings;
        self.model.weights = Some(weights);
        self.model.path = path.clone();
        self.prompt_check = None;
        self.negative_check = None;
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
        let opts = self.model.import_weights.options();
        self.spawn("import", move || {
            let r = tessera_engine::loader::import::import(&manifest, &out, &opts, &mut |_| {})
                .map(|_| ())
                .map_err(|e| e.to_string());
            Done::Imported(out, r)
        });
    }

    /// Builds a job from the document and settings and submits it (a sample job when no
    /// document is open). While a job runs, the request (settings, image and mask as they are
    /// now) joins the queue instead and starts when the jobs before it end.
    pub fn generate(&mut self) {
        let Some(request) = self.request() else {
            return;
        };
        if self.jobs.busy() {
            self.jobs.queue.push_back(request);
            let n = self.jobs.queue.len();
            return self.info(format!(
                "queued: {n} job{} waiting",
                if n == 1 { "" } else { "s" }
            ));
        }
        self.start(request, true);
    }

    /// Snapshots the settings, image and mask into a request; reports why not and returns
    /// `None` when it cannot generate.
    fn request(&mut self) -> Option<Request> {
        let Some(card) = self.model.card.clone() else {
            self.error("No model — open a model folder or an official release manifest first");
            return None;
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
                self.error(format!("cannot generate: {e}"));
                return None;
            }
        };
        let mut origin = (0, 0);
        let (mut mask, mut source) = (None, None);
        let (kind, sample) = match &self.doc {
            Some(doc) => {
                if !doc.has_mask() {
                    self.settings.seed = seed_before;
                    self.error("paint a mask over the part to regenerate first");
                    return None;
                }
                let mut window = self.settings.window_options();
                window.fixed = self.jobs.fixed_window.take();
                let (w, h) = doc.size();
                if let Ok(Some(win)) = plan_window(w, h, &doc.mask, &window)
                    && let Some((x, y, _, _)) = win.clip_to(w, h)
                {
                    origin = (x, y);
                }
                let rgb = Arc::new(image::DynamicImage::ImageRgba8(doc.image.clone()).to_rgb8());
                let m = Arc::new(doc.mask.clone());
                mask = Some(m.clone());
                source = Some(rgb.clone());
                (
                    JobKind::Inpaint {
                        image: rgb,
                        mask: m,
                        window,
                        start_level: self.settings.start_level(card.levels()),
                    },
                    false,
                )
            }
            None => (JobKind::Sample, true),
        };
        let mut used = self.settings.clone();
        used.seed = seed;
        // What the run used: strength only when inpainting, and only below T.
        used.strength = if sample {
            None
        } else {
            used.start_level(card.levels())
        };
        let class_name_of = |class: Option<usize>| match (&card.conditioning, class) {
            (Conditioning::Class { class_names, .. }, Some(c)) => {
                Some(class_names.get(c).cloned().unwrap_or_else(|| c.to_string()))
            }
            _ => None,
        };
        let class_name = class_name_of(used.class);
        let negative_class_name = if used.guidance_scale != 1.0 {
            class_name_of(used.negative_class)
        } else {
            None
        };
        let record = GenRecord {
            model: card.name.clone(),
            settings: used,
            class_name,
            negative_class_name,
            candidate: 0,
            secs: 0.0,
        };
        let candidates = chain.candidates;
        Some(Request {
            job: Job {
                kind,
                chain,
                partial_every: Some(Duration::from_millis(250)),
                preview_max_side: Some(PREVIEW_MAX_SIDE),
            },
            record,
            candidates,
            sample,
            origin,
            model_levels: card.levels(),
            mask,
            source,
        })
    }

    /// Submits `request`. Its results replace the shown ones when `replace` is set or when
    /// the shown ones have nothing left to review; otherwise they wait their turn.
    fn start(&mut self, request: Request, replace: bool) {
        let handle = self.engine.submit(request.job);
        let mut results = Results::new(
            handle.id,
            request.candidates,
            request.record,
            request.sample,
        );
        results.source = request.source;
        let pending = self
            .jobs
            .results
            .as_ref()
            .is_some_and(|r| r.finished && r.finals.iter().any(Option::is_some));
        if replace || !pending {
            self.jobs.results = Some(results);
            self.thumbs.clear();
            if let Some(doc) = &mut self.doc {
                show_results(doc, None);
            }
        } else {
            self.jobs.waiting.push_back(results);
        }
        if request.mask.is_some() {
            self.jobs.last_mask = request.mask;
        }
        self.jobs.running = Some(Running {
            handle,
            levels: Vec::new(),
            model_levels: request.model_levels,
            total: 0,
            done: 0,
            level: None,
            estimate_secs: None,
            started: Instant::now(),
            origin: request.origin,
            cancelling: false,
        });
    }

    /// Starts the next queued request when no job runs (called after each job ends).
    pub(crate) fn start_next(&mut self) {
        if self.jobs.busy() {
            return;
        }
        if let Some(request) = self.jobs.queue.pop_front() {
            self.start(request, false);
        }
    }

    /// Cancels the running job; the next queued one then starts.
    pub fn cancel(&mut self) {
        self.jobs.cancel();
    }

    /// Empties the queue and cancels the running job.
    pub fn cancel_all(&mut self) {
        self.jobs.queue.clear();
        self.jobs.cancel();
    }

    /// Removes queued request `i` (0 = the next to start).
    pub fn remove_queued(&mut self, i: usize) {
        self.jobs.queue.remove(i);
    }

    /// Restores the mask of the last job started, as one undoable edit (e.g. after accepting a
    /// result, to run again on the same area).
    pub fn reuse_last_mask(&mut self) {
        let Some(mask) = self.jobs.last_mask.clone() else {
            return self.info("no generation has run on this image yet");
        };
        let Some(doc) = &mut self.doc else { return };
        if mask.dimensions() != doc.size() {
            return self.info("the last mask does not fit this image");
        }
        match super::mask_ops::restore_mask(doc, &mask) {
            Some(edit) => self.history.push(Change::Mask(edit)),
            None => self.info("the mask already is the last mask"),
        }
    }

    /// Shows the next waiting results (after the shown ones were accepted or discarded).
    fn show_next_results(&mut self) {
        self.jobs.results = self.jobs.waiting.pop_front();
        self.thumbs.clear();
        if let Some(doc) = &mut self.doc {
            show_results(doc, self.jobs.results.as_ref());
        }
    }

    /// Tokens the current mask would regenerate × passes × candidates (the preflight); the
    /// passes of the levels the strength redoes only.
    pub fn preflight(&self) -> Option<(usize, usize)> {
        let grid = self.doc.as_ref()?.token_grid.as_ref()?;
        let masked = grid.touched.iter().filter(|&&t| t).count();
        Some((
            masked,
            masked * self.settings.inpaint_passes() * self.settings.candidates,
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
        let source = res.source.clone();
        self.jobs.results = None;
        self.show_next_results();
        if sample || self.doc.is_none() {
            let rgba = image::DynamicImage::ImageRgb8((*img).clone()).to_rgba8();
            self.set_document(rgba, None);
            self.generations.push(record);
            return;
        }
        let Some(doc) = &mut self.doc else { return };
        let img = match source {
            Some(src) => merge_changes(doc, &src, &img),
            None => img,
        };
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

    /// "Repaint unsure": accepts candidate `i`, masks the cells of its tokens drawn with a
    /// probability below `threshold` (one undoable mask edit) and generates them again; the
    /// rest of the accepted picture is kept.
    pub fn repaint_unsure(&mut self, i: usize, threshold: f32) {
        let Some(conf) = self
            .jobs
            .results
            .as_ref()
            .and_then(|r| r.final_confidence(i))
        else {
            return self.info("that candidate is not finished");
        };
        let count = conf.below(threshold).iter().filter(|b| **b).count();
        if count == 0 {
            return self.info(format!(
                "no token of candidate {i} is below {threshold:.2}; nothing to repaint"
            ));
        }
        self.accept(i);
        let Some(doc) = &mut self.doc else { return };
        let (w, h) = doc.size();
        let mask = conf.mask_below(threshold, w, h);
        if let Some(edit) = super::mask_ops::restore_mask(doc, &mask) {
            self.history.push(Change::Mask(edit));
        }
        self.info(format!(
            "repainting {count} unsure tokens (below {threshold:.2})"
        ));
        // The same window, so that the new token grid is the one the unsure tokens lie on.
        self.jobs.fixed_window = Some(conf.window);
        self.generate();
        // Taken by the request; dropped as well if the request was refused before that.
        self.jobs.fixed_window = None;
    }

    /// Drops the shown results (cancelling their job if it still runs); the next waiting
    /// results, if any, are shown.
    pub fn discard(&mut self) {
        let shown = self.jobs.results.as_ref().map(|r| r.job);
        if self.jobs.running.as_ref().map(|r| r.handle.id) == shown || shown.is_none() {
            self.cancel();
        }
        self.jobs.results = None;
        self.show_next_results();
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
                show_results(doc, Some(res));
            }
        }
    }

    /// Shows level `level` (`None` = newest/final) of the selected candidate.
    pub fn view_level(&mut self, level: Option<usize>) {
        if let Some(res) = &mut self.jobs.results {
            res.view_level = level;
            if let Some(doc) = &mut self.doc {
                show_results(doc, Some(res));
            }
        }
    }
}

/// `candidate` (made from `source`) applied to the document's current image: only the pixels
/// where the candidate differs from its source change, so results accepted since the job
/// started stay. `candidate` itself when the sizes differ.
fn merge_changes(doc: &Document, source: &RgbImage, candidate: &Arc<RgbImage>) -> Arc<RgbImage> {
    if source.dimensions() != candidate.dimensions() || doc.size() != candidate.dimensions() {
        return candidate.clone();
    }
    let mut out = image::DynamicImage::ImageRgba8(doc.image.clone()).to_rgb8();
    if out.as_raw() == source.as_raw() {
        return candidate.clone();
    }
    for ((o, s), c) in out
        .pixels_mut()
        .zip(source.pixels())
        .zip(candidate.pixels())
    {
        if s != c {
            *o = *c;
        }
    }
    Arc::new(out)
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

//! The commands that start and settle jobs: load or import a model, generate (queueing behind
//! a running job), cancel, accept a candidate (one undoable edit), repaint the unsure tokens,
//! discard, run again, and pick what the results show. They only send requests to the engine
//! and update the editor's state; the engine's answers arrive through [`super::jobs::Jobs`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::RgbImage;
use tessera_engine::inpaint::plan_window;
use tessera_engine::loader::LoadOptions;
use tessera_engine::loader::card::{Conditioning, ModelCard};
use tessera_engine::text::PromptTokenizer;
use tessera_engine::worker::{Job, JobKind};

use super::{Done, EditorApp};
use crate::editor::document::Document;
use crate::editor::history::{self, Change};
use crate::editor::jobs::{PREVIEW_MAX_SIDE, Request, Results, Running, show_results};
use crate::editor::project::GenRecord;

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
        s.seed_mode = crate::editor::settings::SeedMode::Fixed;
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
            res.picked = true;
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

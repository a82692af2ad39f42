//! The running job and its results, fed by the engine's events. The UI thread never waits:
//! events are drained once per frame and only update this state and the document's overlay.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use image::{GrayImage, RgbImage};
use tessera_engine::worker::{Event, Job, JobHandle, JobId};

use tessera_engine::inpaint::Window;

use super::document::{ConfidenceOverlay, Document, Overlay};
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
    /// Per candidate, how well it shows what was asked for by the model's own judgement
    /// (`tessera_engine::fit`), once it arrived; `None` when not ranked.
    pub fit: Vec<Option<f32>>,
    /// Whether the user picked a candidate; until then the best-fitting one is shown.
    pub picked: bool,
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
            fit: vec![None; n],
            picked: false,
            view_level: None,
            record,
            finished: false,
            sample,
            source: None,
        }
    }

    /// Shows the best-fitting candidate among those arrived, unless the user picked one.
    pub fn select_best_fit(&mut self) {
        if self.picked {
            return;
        }
        let best = (0..self.fit.len())
            .filter(|&i| self.finals[i].is_some())
            .filter_map(|i| self.fit[i].map(|f| (i, f)))
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
        if let Some((i, _)) = best {
            self.selected = i;
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
            Event::Candidate {
                index, image, fit, ..
            } => {
                if let Some(res) = self.results_of(id)
                    && let Some(slot) = res.finals.get_mut(index)
                {
                    *slot = Some(image);
                    res.fit[index] = fit;
                    let before = res.selected;
                    res.select_best_fit();
                    refresh = shown && (index == res.selected || before != res.selected);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn results(n: usize) -> Results {
        let record = GenRecord {
            model: String::new(),
            settings: super::super::settings::GenSettings::default(),
            class_name: None,
            negative_class_name: None,
            candidate: 0,
            secs: 0.0,
        };
        Results::new(JobId(1), n, record, false)
    }

    #[test]
    fn the_best_fitting_arrived_candidate_is_shown_until_the_user_picks() {
        let mut res = results(3);
        let img = Arc::new(RgbImage::new(1, 1));
        // Fits count once their candidate arrived.
        res.fit = vec![Some(0.2), Some(0.9), Some(0.5)];
        res.finals[0] = Some(img.clone());
        res.select_best_fit();
        assert_eq!(res.selected, 0);
        res.finals[2] = Some(img.clone());
        res.select_best_fit();
        assert_eq!(res.selected, 2);
        res.finals[1] = Some(img.clone());
        res.select_best_fit();
        assert_eq!(res.selected, 1);
        // A choice of the user's stands.
        res.picked = true;
        res.selected = 0;
        res.select_best_fit();
        assert_eq!(res.selected, 0);
        // Without fits (nothing ranked) the first stays.
        let mut plain = results(2);
        plain.finals = vec![Some(img.clone()), Some(img)];
        plain.select_best_fit();
        assert_eq!(plain.selected, 0);
    }
}

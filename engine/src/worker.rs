//! The job API the editor and the command line drive: a worker thread owns the loaded model;
//! callers send requests and receive [`Event`]s over a channel, and never wait on the engine.
//! Cancelling sets a flag that the sampler checks at every token step.
//!
//! One file (≈ 670 lines) because a job's path is read top to bottom here: the request, the
//! window and token planning, the chain with its observer, and the events it sends.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use candle_core::Tensor;
use crossbeam_channel::{Receiver, Sender, unbounded};
use image::{GrayImage, RgbImage};

use crate::inpaint::{self, Window, WindowOptions};
use crate::loader::card::ModelCard;
use crate::loader::{LoadOptions, Model, ModelSource};
use crate::pipeline::{self, ChainRequest, Confidence, Observer, Progress};
use crate::{Error, Result};

pub mod memory;

/// Identifies a job in every event about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

/// What to generate.
#[derive(Debug, Clone)]
pub enum JobKind {
    /// Regenerate the masked part of an image (mask: ≥ 128 = regenerate).
    Inpaint {
        /// The image, any size.
        image: Arc<RgbImage>,
        /// Same size as the image.
        mask: Arc<GrayImage>,
        /// Context window, feather and token threshold.
        window: WindowOptions,
        /// Strength: `Some(k)` redoes only the last k levels (1..=T) — the chain starts at
        /// level k from x_k ~ q(x_k | x_0) of the encoded context window
        /// ([`pipeline::strength_start`], seeded from `chain.seed`), so the masked area keeps
        /// its coarse structure; 1 changes only fine detail. `None` or T = the full chain (new
        /// content). Not allowed together with `chain.start`.
        start_level: Option<usize>,
    },
    /// Sample whole images (unconditional, class or text, as `chain.condition` says).
    Sample,
}

/// A job: what to generate and how to sample. For inpainting, `chain.known` is filled in by
/// the worker from the mask.
#[derive(Debug, Clone)]
pub struct Job {
    /// What.
    pub kind: JobKind,
    /// How.
    pub chain: ChainRequest,
    /// Send a partial preview (tokens so far, the rest from the level before) at most this
    /// often while a level is written; `None` sends none.
    pub partial_every: Option<Duration>,
    /// Previews (levels and partials) wider or taller than this are downscaled on the worker,
    /// so that a display gets images it can upload at once; `extent` in their events says
    /// the area of the image they cover. Final images always keep the input's size.
    pub preview_max_side: Option<u32>,
}

/// Something the worker reports.
#[derive(Debug, Clone)]
pub enum Event {
    /// A model finished loading.
    ModelLoaded {
        /// Its card.
        card: Box<ModelCard>,
        /// Non-fatal findings.
        warnings: Vec<String>,
        /// How the transformer weights are held ([`LoadOptions::describe_weights`]).
        weights: String,
    },
    /// A model failed to load; the previous one (if any) stays loaded.
    ModelFailed {
        /// Why.
        error: String,
    },
    /// A job started.
    Started {
        /// The job.
        job: JobId,
        /// Levels that will run, in order (T first, or the branching level).
        levels: Vec<usize>,
        /// Tokens to sample per candidate, over all levels and chain passes.
        tokens: usize,
        /// Estimated duration, from earlier jobs on this model (none for the first).
        estimate_secs: Option<f64>,
    },
    /// Tokens are being written (throttled by the caller's `partial_every`).
    Progress {
        /// The job.
        job: JobId,
        /// Level being written.
        level: usize,
        /// Tokens sampled so far in this job, per candidate.
        done: usize,
        /// Tokens to sample in this job, per candidate.
        total: usize,
        /// Approximate preview of candidate 0 (per-code mean colours), in the context window.
        partial: Option<Arc<RgbImage>>,
        /// Width and height in image pixels that `partial` covers (its own size unless the
        /// job's `preview_max_side` shrank it).
        extent: (u32, u32),
    },
    /// A level finished: its tokens and its decoded preview, per candidate.
    Level {
        /// The job.
        job: JobId,
        /// The stage that ran (its output is x_{level−1}).
        level: usize,
        /// Candidate index.
        candidate: usize,
        /// The token grid x_{level−1}.
        tokens: Vec<u32>,
        /// How sure the sampler was of each of those tokens.
        confidence: Confidence,
        /// Where the token grid lies in image pixels (the context window when inpainting, the
        /// whole generated image when sampling); see [`crate::confidence::cell_rect`].
        window: Window,
        /// Decoded preview, composited into the context window (inpainting) or the whole
        /// generated image (sampling).
        preview: Arc<RgbImage>,
        /// Top-left of the preview in image coordinates.
        origin: (u32, u32),
        /// Width and height in image pixels that `preview` covers (its own size unless the
        /// job's `preview_max_side` shrank it).
        extent: (u32, u32),
    },
    /// A candidate's final full-size image.
    Candidate {
        /// The job.
        job: JobId,
        /// Candidate index.
        index: usize,
        /// The result at the input's size (inpainting) or the model's resolution (sampling).
        image: Arc<RgbImage>,
        /// How well it shows the request's condition by the model's own judgement,
        /// p(condition | result) among the request's contrast set ([`crate::fit`]); `None`
        /// with a single candidate or nothing to rank. The editor shows the best one first.
        fit: Option<f32>,
    },
    /// Nothing to do (e.g. an empty mask); the image is unchanged.
    NoOp {
        /// The job.
        job: JobId,
        /// Why.
        reason: String,
    },
    /// The job ended normally.
    Finished {
        /// The job.
        job: JobId,
        /// Wall time.
        secs: f64,
    },
    /// The job was cancelled.
    Cancelled {
        /// The job.
        job: JobId,
    },
    /// The job failed; the engine is ready for the next.
    Failed {
        /// The job.
        job: JobId,
        /// What happened.
        error: String,
    },
}

enum Request {
    Load(PathBuf, LoadOptions),
    Run(JobId, Box<Job>, Arc<AtomicBool>),
}

/// Handle of a submitted job.
#[derive(Debug, Clone)]
pub struct JobHandle {
    /// Its id.
    pub id: JobId,
    cancel: Arc<AtomicBool>,
}

impl JobHandle {
    /// Asks the job to stop; it stops within one token step and reports `Cancelled`.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// The engine: a worker thread and its channels. Dropping it stops the worker after the job
/// in progress is cancelled.
pub struct Engine {
    requests: Option<Sender<Request>>,
    events: Receiver<Event>,
    next_id: AtomicU64,
    running: Vec<JobHandle>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Engine {
    /// Starts the worker. `waker` is called after every event (e.g. to request a UI repaint).
    pub fn spawn(waker: impl Fn() + Send + 'static) -> Self {
        let (req_tx, req_rx) = unbounded::<Request>();
        let (ev_tx, ev_rx) = unbounded::<Event>();
        let thread = std::thread::Builder::new()
            .name("tessera-engine".into())
            .spawn(move || {
                let mut worker = Worker {
                    model: None,
                    events: ev_tx,
                    waker: Box::new(waker),
                    secs_per_token: None,
                };
                for req in req_rx.iter() {
                    worker.handle(req);
                    if req_rx.is_empty() {
                        crate::heap::release_kept_memory();
                    }
                }
            })
            .ok();
        Self {
            requests: Some(req_tx),
            events: ev_rx,
            next_id: AtomicU64::new(1),
            running: Vec::new(),
            thread,
        }
    }

    fn send(&self, req: Request) -> bool {
        self.requests
            .as_ref()
            .is_some_and(|tx| tx.send(req).is_ok())
    }

    /// Loads a model (folder or official manifest) in the background.
    pub fn load_model(&self, path: impl Into<PathBuf>, opts: LoadOptions) -> bool {
        self.send(Request::Load(path.into(), opts))
    }

    /// Queues a job; events about it carry the returned id.
    pub fn submit(&mut self, job: Job) -> JobHandle {
        let id = JobId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let cancel = Arc::new(AtomicBool::new(false));
        let handle = JobHandle {
            id,
            cancel: cancel.clone(),
        };
        self.running.retain(|h| !h.cancel.load(Ordering::Relaxed));
        self.running.push(handle.clone());
        self.send(Request::Run(id, Box::new(job), cancel));
        handle
    }

    /// The next event, if one is waiting.
    pub fn try_recv(&self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// The event channel, for blocking receivers (the command line).
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        for h in &self.running {
            h.cancel();
        }
        self.requests = None;
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
    }
}

struct Worker {
    model: Option<Arc<Model>>,
    events: Sender<Event>,
    waker: Box<dyn Fn() + Send>,
    /// Seconds per sampled token per candidate, measured on the last job.
    secs_per_token: Option<f64>,
}

impl Worker {
    fn emit(&self, e: Event) {
        if self.events.send(e).is_ok() {
            (self.waker)();
        }
    }

    fn handle(&mut self, req: Request) {
        match req {
            Request::Load(path, opts) => {
                let loaded = guarded(|| {
                    ModelSource::open(&path).and_then(|s| {
                        let warnings = s.warnings().to_vec();
                        s.load(&opts).map(|m| (m, warnings))
                    })
                });
                match loaded {
                    Ok((model, warnings)) => {
                        let card = Box::new(model.card.clone());
                        let weights = opts.describe_weights(&card);
                        self.model = Some(Arc::new(model));
                        self.secs_per_token = None;
                        self.emit(Event::ModelLoaded {
                            card,
                            warnings,
                            weights,
                        });
                    }
                    Err(e) => self.emit(Event::ModelFailed {
                        error: e.to_string(),
                    }),
                }
            }
            Request::Run(id, job, cancel) => {
                if cancel.load(Ordering::Relaxed) {
                    self.emit(Event::Cancelled { job: id });
                    return;
                }
                let start = Instant::now();
                match guarded(|| self.run(id, &job, &cancel)) {
                    Ok(true) => self.emit(Event::Finished {
                        job: id,
                        secs: start.elapsed().as_secs_f64(),
                    }),
                    Ok(false) => {}
                    Err(Error::Cancelled) => self.emit(Event::Cancelled { job: id }),
                    Err(e) => self.emit(Event::Failed {
                        job: id,
                        error: e.to_string(),
                    }),
                }
            }
        }
    }

    /// Runs a job; `Ok(false)` when it turned out to be a no-op (already reported).
    fn run(&mut self, id: JobId, job: &Job, cancel: &Arc<AtomicBool>) -> Result<bool> {
        let model = self
            .model
            .clone()
            .ok_or_else(|| Error::Input("no model is loaded".into()))?;
        let card = &model.card;
        let res = card.resolution() as u32;
        let grid = card.grid_side();
        let mut chain = job.chain.clone();
        let mut context: Option<Context> = None;
        if let JobKind::Inpaint {
            image,
            mask,
            window,
            start_level,
        } = &job.kind
        {
            if start_level.is_some() && chain.start.is_some() {
                return Err(Error::Input(
                    "strength (start level) and an explicit chain start exclude each other".into(),
                ));
            }
            if let Some(k) = *start_level
                && !(1..=card.levels()).contains(&k)
            {
                return Err(Error::Input(format!(
                    "strength: levels to redo must be in 1..={}, got {k}",
                    card.levels()
                )));
            }
            let Some(win) = inpaint::plan_window(image.width(), image.height(), mask, window)
                .map_err(Error::Input)?
            else {
                self.emit(Event::NoOp {
                    job: id,
                    reason: "the mask is empty: nothing to regenerate".into(),
                });
                return Ok(false);
            };
            let regenerate = inpaint::token_mask(mask, &win, grid, window.token_threshold);
            if !regenerate.iter().any(|&r| r) {
                self.emit(Event::NoOp {
                    job: id,
                    reason: "the mask covers no token at this threshold: nothing to regenerate"
                        .into(),
                });
                return Ok(false);
            }
            let crop =
                inpaint::to_tensor(&inpaint::crop_to_model(image, &win, res), &model.device)?;
            let x0 = model.vqgan.encode_tokens(&crop)?;
            let x0: Vec<u32> = x0.flatten_all()?.to_vec1::<u32>()?;
            let known = inpaint::known_tokens(&x0, &regenerate);
            if let Some(k) = *start_level {
                chain.start =
                    pipeline::strength_start(card, &x0, &known, k, chain.candidates, chain.seed)?;
            }
            chain.known = Some(known);
            context = Some(Context {
                image: image.clone(),
                mask: mask.clone(),
                window: win,
                feather: window.feather_px,
                colour_match: window.colour_match,
            });
        }
        chain.validate(card)?;
        let picture = context.as_ref().map_or_else(
            || {
                let side = card.resolution() as u32;
                (side, side)
            },
            |c| c.image.dimensions(),
        );
        if let Some(available) = crate::loader::available_memory() {
            memory::check_job_memory(card, chain.candidates, picture, available)?;
        }

        let levels: Vec<usize> = match &chain.start {
            Some(s) => (1..=s.level).rev().collect(),
            None => (1..=card.levels()).rev().collect(),
        };
        let unknown = chain.known.as_ref().map_or(card.n_positions(), |k| {
            k.iter().filter(|t| t.is_none()).count()
        });
        let tokens: usize = levels.iter().map(|t| unknown * chain.chains[t - 1]).sum();
        self.emit(Event::Started {
            job: id,
            levels: levels.clone(),
            tokens,
            estimate_secs: self.secs_per_token.map(|s| s * tokens as f64),
        });
        let started = Instant::now();
        let mut obs = JobObserver {
            worker: self,
            id,
            cancel: cancel.clone(),
            model: &model,
            context: context.as_ref(),
            done: 0,
            total: tokens,
            partial_every: job.partial_every,
            preview_max_side: job.preview_max_side,
            last_partial: Instant::now(),
            colours: None,
            error: None,
        };
        let result = pipeline::run_chain(&model, &chain, &mut obs);
        if let Some(e) = obs.error.take() {
            return Err(e);
        }
        let grids = result?;
        let last = grids
            .last()
            .ok_or_else(|| Error::Input("the chain ran no level".into()))?;
        // Ranking needs more than one candidate; its cost (a scoring pass per candidate and
        // contrast condition) is skipped otherwise. Cancelling stops it like the chain.
        let fits = match chain.candidates {
            1 => None,
            _ => {
                crate::fit::score_until(&model, &chain, &grids, &|| cancel.load(Ordering::Relaxed))?
            }
        };
        let images = decode(&model, last)?;
        for (index, generated) in images.into_iter().enumerate() {
            let image = match &context {
                Some(c) => {
                    let generated = c.matched(generated);
                    inpaint::composite(&c.image, &c.mask, &c.window, &generated, c.feather)
                }
                None => generated,
            };
            self.emit(Event::Candidate {
                job: id,
                index,
                image: Arc::new(image),
                fit: fits.as_ref().and_then(|f| f.get(index).copied()),
            });
        }
        if tokens > 0 {
            self.secs_per_token = Some(started.elapsed().as_secs_f64() / tokens as f64);
        }
        Ok(true)
    }
}

struct Context {
    image: Arc<RgbImage>,
    mask: Arc<GrayImage>,
    window: Window,
    feather: u32,
    colour_match: bool,
}

impl Context {
    /// `generated`, colour-matched to the surroundings when the job asked for it.
    fn matched(&self, generated: RgbImage) -> RgbImage {
        if !self.colour_match {
            return generated;
        }
        let ring = inpaint::colour_match_ring_px(self.feather);
        inpaint::match_colours(&self.image, &self.mask, &self.window, &generated, ring)
    }
}

/// Runs `f`, turning a panic into an error for that one job or load: the engine thread lives
/// on and takes the next request (a panic is a bug, but it must not cost the user the session).
pub fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let what = crate::panic::message(payload.as_ref());
            Err(Error::Input(format!(
                "internal error in the engine ({what}); this job was stopped, the next one runs"
            )))
        }
    }
}

fn decode(model: &Model, grids: &[Vec<u32>]) -> Result<Vec<RgbImage>> {
    let n = model.card.n_positions();
    let mut out = Vec::with_capacity(grids.len());
    // The decoder's activations grow with the batch (hundreds of MB per 256² image for the
    // released decoders): a few candidates at a time bound them at the same total cost.
    for chunk in grids.chunks(memory::DECODE_BATCH) {
        let flat: Vec<u32> = chunk.iter().flatten().copied().collect();
        let t = Tensor::from_vec(flat, (chunk.len(), n), &model.device)?;
        let img = model.vqgan.decode_tokens(&t)?;
        out.extend(inpaint::from_tensor(&img)?);
    }
    Ok(out)
}

struct JobObserver<'a> {
    worker: &'a Worker,
    id: JobId,
    cancel: Arc<AtomicBool>,
    model: &'a Model,
    context: Option<&'a Context>,
    done: usize,
    total: usize,
    partial_every: Option<Duration>,
    preview_max_side: Option<u32>,
    last_partial: Instant,
    /// Mean colour of each code, for cheap partial previews (computed on first use).
    colours: Option<Vec<[u8; 3]>>,
    error: Option<Error>,
}

impl JobObserver<'_> {
    /// Where the token grid lies in image pixels.
    fn window(&self) -> Window {
        match self.context {
            Some(c) => c.window,
            None => Window {
                x: 0,
                y: 0,
                size: self.model.card.resolution() as u32,
            },
        }
    }

    /// The preview composited into the context window, shrunk to `preview_max_side`; with its
    /// origin and extent in image pixels.
    fn preview(&self, generated: RgbImage) -> (RgbImage, (u32, u32), (u32, u32)) {
        let (img, origin) = match self.context {
            Some(c) => {
                let generated = c.matched(generated);
                inpaint::composite_window(&c.image, &c.mask, &c.window, &generated, c.feather)
            }
            None => (generated, (0, 0)),
        };
        let extent = img.dimensions();
        (shrink(img, self.preview_max_side), origin, extent)
    }

    fn partial(&mut self, grid: &[u32]) -> Result<(Arc<RgbImage>, (u32, u32))> {
        if self.colours.is_none() {
            self.colours = Some(code_colours(self.model)?);
        }
        let colours = self.colours.as_deref().unwrap_or(&[]);
        let res = self.model.card.resolution() as u32;
        let side = self.model.card.grid_side() as u32;
        let patch = (res / side).max(1);
        let img = RgbImage::from_fn(res, res, |x, y| {
            let i = ((y / patch).min(side - 1) * side + (x / patch).min(side - 1)) as usize;
            let c = grid
                .get(i)
                .and_then(|&t| colours.get(t as usize))
                .copied()
                .unwrap_or([0, 0, 0]);
            image::Rgb(c)
        });
        let (img, _, extent) = self.preview(img);
        Ok((Arc::new(img), extent))
    }
}

/// `img` fitted into `max_side`² (aspect kept), or unchanged when it fits.
fn shrink(img: RgbImage, max_side: Option<u32>) -> RgbImage {
    let (w, h) = img.dimensions();
    match max_side {
        Some(m) if m > 0 && w.max(h) > m => {
            let s = f64::from(m) / f64::from(w.max(h));
            let nw = ((f64::from(w) * s).round() as u32).clamp(1, m);
            let nh = ((f64::from(h) * s).round() as u32).clamp(1, m);
            image::imageops::resize(&img, nw, nh, image::imageops::FilterType::Triangle)
        }
        _ => img,
    }
}

impl Observer for JobObserver<'_> {
    fn progress(&mut self, p: Progress<'_>) {
        if self.error.is_some() {
            return;
        }
        match p {
            Progress::Token { level, partial, .. } => {
                self.done += 1;
                let want = self
                    .partial_every
                    .is_some_and(|every| self.last_partial.elapsed() >= every);
                if !want && self.done != self.total && !self.done.is_multiple_of(16) {
                    return;
                }
                let (preview, extent) = if want {
                    self.last_partial = Instant::now();
                    match partial.first().map(|g| self.partial(g)) {
                        Some(Ok((img, extent))) => (Some(img), extent),
                        Some(Err(e)) => {
                            self.error = Some(e);
                            return;
                        }
                        None => (None, (0, 0)),
                    }
                } else {
                    (None, (0, 0))
                };
                self.worker.emit(Event::Progress {
                    job: self.id,
                    level,
                    done: self.done.min(self.total),
                    total: self.total,
                    partial: preview,
                    extent,
                });
            }
            Progress::Level {
                level,
                grids,
                confidence,
            } => match decode(self.model, grids) {
                Ok(images) => {
                    for (candidate, ((img, tokens), confidence)) in
                        images.into_iter().zip(grids).zip(confidence).enumerate()
                    {
                        let (preview, origin, extent) = self.preview(img);
                        self.worker.emit(Event::Level {
                            job: self.id,
                            level,
                            candidate,
                            tokens: tokens.clone(),
                            confidence: confidence.clone(),
                            window: self.window(),
                            preview: Arc::new(preview),
                            origin,
                            extent,
                        });
                    }
                }
                Err(e) => self.error = Some(e),
            },
        }
    }

    fn cancelled(&self) -> bool {
        self.error.is_some() || self.cancel.load(Ordering::Relaxed)
    }
}

/// The mean colour of every code, from decoding grids that hold each code once (neighbours
/// bleed a little into each patch; good enough for a preview that lasts a fraction of a level).
pub fn code_colours(model: &Model) -> Result<Vec<[u8; 3]>> {
    let k = model.card.n_tokens;
    let n = model.card.n_positions();
    let side = model.card.grid_side();
    let res = model.card.resolution();
    let patch = res / side;
    let mut colours = vec![[0u8; 3]; k];
    let grids: Vec<Vec<u32>> = (0..k.div_ceil(n))
        .map(|g| (0..n).map(|i| ((g * n + i) % k) as u32).collect())
        .collect();
    for (g, images) in grids.chunks(4).enumerate() {
        for (j, img) in decode(model, images)?.into_iter().enumerate() {
            for i in 0..n {
                let code = (g * 4 + j) * n + i;
                if code >= k {
                    break;
                }
                let (px, py) = ((i % side) * patch, (i / side) * patch);
                let mut sum = [0u64; 3];
                for y in py..py + patch {
                    for x in px..px + patch {
                        let p = img.get_pixel(x as u32, y as u32).0;
                        for c in 0..3 {
                            sum[c] += u64::from(p[c]);
                        }
                    }
                }
                let count = (patch * patch).max(1) as u64;
                colours[code] = sum.map(|s| (s / count) as u8);
            }
        }
    }
    Ok(colours)
}

//! Following a job's events in the terminal, and `--repaint-below`: a second inpainting pass
//! over just the tokens the first pass was unsure of.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::{Result, bail};
use image::{RgbImage, RgbaImage};
use indicatif::{ProgressBar, ProgressStyle};
use tessera_engine::confidence::{self, Confidence};
use tessera_engine::inpaint::{Window, WindowOptions};
use tessera_engine::pipeline::ChainRequest;
use tessera_engine::worker::{Engine, Event, Job, JobKind};

use super::{SamplingArgs, event_json, save_image};

/// One candidate's result.
pub(super) struct Candidate {
    /// The picture (input size when inpainting, the model's resolution when sampling).
    pub image: Arc<RgbImage>,
    /// Per pass: how sure its last level was of each token, and where the tokens lie.
    pub passes: Vec<(Confidence, Window)>,
    /// How well it shows the request's condition, by the model's own judgement (first pass;
    /// `None` with one candidate or nothing to rank).
    pub fit: Option<f32>,
}

impl Candidate {
    /// Heat map at the picture's size: the first pass, each later pass's cells over it.
    pub fn heat_map(&self, grid: usize) -> RgbaImage {
        let (w, h) = self.image.dimensions();
        let mut map = RgbaImage::new(w, h);
        for (conf, window) in &self.passes {
            let layer = confidence::heat_map(window, grid, conf, w, h);
            for (dst, src) in map.pixels_mut().zip(layer.pixels()) {
                if src.0[3] > 0 {
                    *dst = *src;
                }
            }
        }
        map
    }
}

/// What a followed job produced.
pub(super) struct Followed {
    /// Per candidate.
    pub candidates: Vec<Candidate>,
    /// The job's duration.
    pub secs: f64,
}

/// Submits `kind` with `chain` and follows its events until it ends: a progress bar (or JSON
/// lines with `--json`), and level pictures in `--levels-dir` (composited over `base`, named by
/// `pass`). `None` when the engine had nothing to do.
pub(super) fn follow(
    engine: &mut Engine,
    args: &SamplingArgs,
    chain: ChainRequest,
    kind: JobKind,
    base: Option<Arc<RgbImage>>,
    pass: usize,
) -> Result<Option<Followed>> {
    let n = chain.candidates;
    let handle = engine.submit(Job {
        kind,
        chain,
        partial_every: None,
        preview_max_side: None,
    });
    let bar = (!args.json && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(1);
        bar.set_style(
            ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} tokens, ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    let finish = || {
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
    };
    let mut images: Vec<Option<Arc<RgbImage>>> = vec![None; n];
    let mut fits: Vec<Option<f32>> = vec![None; n];
    let mut last: Vec<Option<(Confidence, Window)>> = vec![None; n];
    let mut cancelled = false;
    loop {
        let Some(event) = super::next_event(engine)? else {
            if !cancelled {
                handle.cancel();
                cancelled = true;
            }
            continue;
        };
        if args.json {
            use std::io::Write;
            let mut line = event_json(&event);
            line["pass"] = pass.into();
            // A closed pipe (`| head`) ends the output, not the job's files.
            writeln!(std::io::stdout().lock(), "{line}").ok();
        }
        match event {
            Event::Started { tokens, .. } => {
                if let Some(b) = &bar {
                    b.set_length(tokens as u64);
                }
            }
            Event::Progress { level, done, .. } => {
                if let Some(b) = &bar {
                    b.set_message(format!("level {level}"));
                    b.set_position(done as u64);
                }
            }
            Event::Level {
                level,
                candidate,
                confidence,
                window,
                preview,
                origin,
                ..
            } => {
                if let Some(dir) = &args.levels_dir
                    && !cancelled
                {
                    let full = match &base {
                        Some(image) => {
                            let mut full = (**image).clone();
                            image::imageops::replace(
                                &mut full,
                                &*preview,
                                i64::from(origin.0),
                                i64::from(origin.1),
                            );
                            full
                        }
                        None => (*preview).clone(),
                    };
                    let prefix = if pass > 1 {
                        format!("pass{pass}-")
                    } else {
                        String::new()
                    };
                    save_image(
                        &full,
                        &dir.join(format!("{prefix}level{level}-candidate{candidate}.png")),
                    )?;
                }
                // Levels arrive from the top down: the last one is the output's.
                if let Some(slot) = last.get_mut(candidate) {
                    *slot = Some((confidence, window));
                }
            }
            Event::Candidate {
                index, image, fit, ..
            } => {
                if let Some(slot) = images.get_mut(index) {
                    *slot = Some(image);
                    fits[index] = fit;
                }
            }
            Event::NoOp { reason, .. } => {
                finish();
                eprintln!("nothing to do: {reason}");
                return Ok(None);
            }
            Event::Finished { secs, .. } => {
                finish();
                let candidates = images
                    .into_iter()
                    .zip(last)
                    .zip(fits)
                    .filter_map(|((image, last), fit)| {
                        Some(Candidate {
                            image: image?,
                            passes: last.into_iter().collect(),
                            fit,
                        })
                    })
                    .collect::<Vec<_>>();
                if candidates.len() != n {
                    bail!("the engine returned {} of {n} pictures", candidates.len());
                }
                return Ok(Some(Followed { candidates, secs }));
            }
            Event::Cancelled { .. } if super::interrupted() => {
                finish();
                return Err(super::interrupted_error());
            }
            Event::Cancelled { .. } => bail!("cancelled"),
            Event::Failed { error, .. } => bail!("{error}"),
            Event::ModelLoaded { .. } | Event::ModelFailed { .. } => {}
        }
    }
}

/// `--repaint-below P`: for every candidate, inpaints the cells of the tokens its last pass
/// drew with probability below `p` (the rest of the picture is kept), with `chain` (one
/// candidate; its seed moved on so the pass draws anew) and the first pass's window options,
/// in the first pass's window (so the token grids coincide and only the unsure tokens are
/// masked).
/// Returns the seconds spent.
#[allow(clippy::too_many_arguments)]
pub(super) fn repaint_below(
    engine: &mut Engine,
    args: &SamplingArgs,
    chain: &ChainRequest,
    window: &WindowOptions,
    grid: usize,
    p: f32,
    results: &mut Followed,
) -> Result<f64> {
    let mut secs = 0.0;
    for (i, c) in results.candidates.iter_mut().enumerate() {
        let Some((conf, win)) = c.passes.last().cloned() else {
            continue;
        };
        let unsure = conf.below(p);
        let count = unsure.iter().filter(|u| **u).count();
        if !args.json {
            eprintln!("candidate {i}: {count} tokens below {p} to repaint");
        }
        if count == 0 {
            continue;
        }
        let (w, h) = c.image.dimensions();
        let mask = confidence::cell_mask(&win, grid, &unsure, w, h);
        let mut req = chain.clone();
        req.candidates = 1;
        req.seed = chain.seed.wrapping_add(1 + i as u64);
        req.start = None;
        let kind = JobKind::Inpaint {
            image: c.image.clone(),
            mask: Arc::new(mask),
            window: WindowOptions {
                fixed: Some(win),
                ..window.clone()
            },
            start_level: None,
        };
        if let Some(f) = follow(engine, args, req, kind, Some(c.image.clone()), 2)? {
            secs += f.secs;
            if let Some(second) = f.candidates.into_iter().next() {
                c.image = second.image;
                c.passes.extend(second.passes);
            }
        }
    }
    Ok(secs)
}

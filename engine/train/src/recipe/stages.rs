//! Phase 3 of a recipe: the stages of every level, trained side by side.
//!
//! The levels of the chain are trained independently (each only needs the x_0 pool and the
//! schedule), and a stage step on a CPU scales poorly past one thread: much of it is
//! single-threaded element-wise work between the matmuls. So with `jobs` > 1 several stages
//! train at once, each on its own rayon pool of `threads / jobs` threads, which keeps every
//! core busy. A stage's result depends only on its own seed and data, not on which stages run
//! beside it, so resuming with another `jobs` gives the same model.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use tessera_engine::loader::card::Condition;
use tessera_engine::schedule::Schedule;
use tessera_engine::{Error, Result};

use super::{Pool, TrainEvent};
use crate::stage::{StageBatch, StageProgress, StageTrainConfig, TrainedStage, train_stage};

/// What every stage trains on: the pool and, per scene, the full condition, the class word
/// alone and the caption alone.
pub(super) struct StageData<'a> {
    pub pool: &'a Pool,
    pub conds: &'a [[Condition; 3]],
    /// Probability of keeping only the class word, and again of keeping only the caption.
    pub part_drop: f32,
}

impl StageData<'_> {
    /// The batch of step `step` of a stage seeded with `seed`: a function of both only, so a
    /// resumed run equals an uninterrupted one.
    fn batch(&self, seed: u64, batch: usize, step: usize) -> StageBatch {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(step as u64);
        let mut b = StageBatch::default();
        for _ in 0..batch {
            let i = rng.random_range(0..self.pool.tokens.len());
            b.x0.push(self.pool.tokens[i].clone());
            // Some rows keep only the class word or only the caption, so that either guides
            // on its own (dropping both is the trainer's `cond_drop`).
            let u: f32 = rng.random();
            let which = if u < self.part_drop {
                1
            } else if u < 2.0 * self.part_drop {
                2
            } else {
                0
            };
            b.conds.push(self.conds[i][which].clone());
        }
        b
    }
}

/// Other work of the recipe that may run beside the stages (the recognizer): it gets an event
/// sink that returns `false` when it should stop.
pub(super) type Beside<'a> = &'a (dyn Fn(&mut dyn FnMut(TrainEvent) -> bool) -> Result<()> + Sync);

/// Trains (or resumes) the stage of every level in `cfgs` (level t at index t − 1), in
/// folders `work/stage{t}`, at most `jobs` at a time, and runs `beside` on the first job slot
/// the stages leave idle (after them with one job): the stages of unequal levels finish apart,
/// and a core would otherwise wait. Events reach `events` on the calling thread; when it
/// returns `false` everything stops after writing its checkpoint and the result is
/// [`Error::Cancelled`].
pub(super) fn train_stages(
    cfgs: &[StageTrainConfig],
    schedule: &Schedule,
    data: &StageData<'_>,
    work: &Path,
    jobs: usize,
    beside: Option<Beside<'_>>,
    events: &mut dyn FnMut(TrainEvent) -> bool,
) -> Result<Vec<TrainedStage>> {
    let jobs = jobs.clamp(1, cfgs.len().max(1));
    if jobs == 1 {
        // In order, on the global pool, one phase each: the plain progress display.
        let mut out = Vec::with_capacity(cfgs.len());
        for cfg in cfgs {
            events(TrainEvent::Phase {
                name: format!("stage {}", cfg.level),
                done: false,
            });
            let trained = train_one(cfg, schedule, data, work, &mut |p| {
                events(TrainEvent::Stage {
                    level: cfg.level,
                    progress: *p,
                })
            })?;
            if trained.step < cfg.steps {
                return Err(Error::Cancelled);
            }
            out.push(trained);
        }
        if let Some(beside) = beside {
            beside(events)?;
        }
        return Ok(out);
    }

    events(TrainEvent::Phase {
        name: format!("stages ({jobs} at a time)"),
        done: false,
    });
    let threads = rayon::current_num_threads().max(jobs);
    let per_job = (threads / jobs).max(1);
    // Longest first: the GPT stage (level T) steps faster than the encoder–decoders.
    let mut order: Vec<usize> = (0..cfgs.len()).collect();
    order.sort_by_key(|&i| {
        let c = &cfgs[i];
        std::cmp::Reverse(c.steps * if c.level == c.levels { 2 } else { 3 })
    });
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let results: Mutex<Vec<Option<Result<TrainedStage>>>> =
        Mutex::new((0..cfgs.len()).map(|_| None).collect());
    let beside_taken = AtomicBool::new(beside.is_none());
    let beside_result: Mutex<Option<Result<()>>> = Mutex::new(None);
    let (tx, rx) = mpsc::channel::<TrainEvent>();

    let pools = (0..jobs)
        .map(|_| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(per_job)
                .build()
                .map_err(|e| Error::Input(format!("cannot start a training thread pool: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;

    std::thread::scope(|s| {
        for pool in &pools {
            let tx = tx.clone();
            let (next, stop, results, order) = (&next, &stop, &results, &order);
            let (beside_taken, beside_result) = (&beside_taken, &beside_result);
            s.spawn(move || {
                loop {
                    let k = next.fetch_add(1, Ordering::SeqCst);
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if k >= order.len() {
                        // No stage left to start: this slot takes the work beside them.
                        if let (Some(beside), false) =
                            (beside, beside_taken.swap(true, Ordering::SeqCst))
                        {
                            let result = pool.install(|| {
                                beside(&mut |e| tx.send(e).is_ok() && !stop.load(Ordering::SeqCst))
                            });
                            if result.is_err() {
                                stop.store(true, Ordering::SeqCst);
                            }
                            *beside_result.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
                        }
                        break;
                    }
                    let i = order[k];
                    let cfg = &cfgs[i];
                    let result = pool.install(|| {
                        train_one(cfg, schedule, data, work, &mut |p| {
                            // A closed channel means the caller is gone: stop too.
                            let sent = tx
                                .send(TrainEvent::Stage {
                                    level: cfg.level,
                                    progress: *p,
                                })
                                .is_ok();
                            sent && !stop.load(Ordering::SeqCst)
                        })
                    });
                    let failed = !matches!(&result, Ok(t) if t.step >= cfg.steps);
                    if failed {
                        // One stage failing or stopping stops the others at their next step.
                        stop.store(true, Ordering::SeqCst);
                    }
                    results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(result);
                }
            });
        }
        drop(tx);
        // Events are handed on here, on the caller's thread, until every worker is done.
        for e in rx {
            if !events(e) {
                stop.store(true, Ordering::SeqCst);
            }
        }
    });

    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut out = Vec::with_capacity(cfgs.len());
    let mut cancelled = false;
    match beside_result
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
    {
        Some(Err(e)) if !matches!(e, Error::Cancelled) => return Err(e),
        Some(Err(_)) => cancelled = true,
        // Not started: a stage failed or stopped first (reported below).
        None if beside.is_some() => cancelled = true,
        _ => {}
    }
    for (cfg, r) in cfgs.iter().zip(results) {
        match r {
            Some(Ok(t)) if t.step >= cfg.steps => out.push(t),
            // A real error wins over the cancellations it caused.
            Some(Err(e)) if !matches!(e, Error::Cancelled) => return Err(e),
            _ => cancelled = true,
        }
    }
    if cancelled {
        return Err(Error::Cancelled);
    }
    Ok(out)
}

/// Trains (or resumes) one stage in `work/stage{t}` on the pool's batches.
fn train_one(
    cfg: &StageTrainConfig,
    schedule: &Schedule,
    data: &StageData<'_>,
    work: &Path,
    report: &mut dyn FnMut(&StageProgress) -> bool,
) -> Result<TrainedStage> {
    let mut batches =
        |step: usize| -> Result<StageBatch> { Ok(data.batch(cfg.seed, cfg.batch, step)) };
    let dir = work.join(format!("stage{}", cfg.level));
    train_stage(cfg, schedule, &mut batches, &dir, report)
}

//! The job API as the editor and the command line use it: a worker thread, events over a
//! channel, cancellation, errors that leave the engine ready.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::{GrayImage, Luma, Rgb, RgbImage};
use tessera_engine::inpaint::WindowOptions;
use tessera_engine::loader::LoadOptions;
use tessera_engine::loader::card::ModelCard;
use tessera_engine::pipeline::{ChainRequest, default_chains};
use tessera_engine::worker::{Engine, Event, Job, JobId, JobKind};

fn golden(case: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/golden")).join(case)
}

fn next(engine: &Engine) -> Event {
    engine
        .events()
        .recv_timeout(Duration::from_secs(120))
        .expect("the worker answers")
}

fn loaded(case: &str) -> (Engine, ModelCard) {
    let engine = Engine::spawn(|| {});
    engine.load_model(golden(case), LoadOptions::default());
    match next(&engine) {
        Event::ModelLoaded { card, .. } => (engine, *card),
        other => panic!("{other:?}"),
    }
}

fn picture(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x * 5 % 256) as u8,
            (y * 7 % 256) as u8,
            ((x ^ y) % 256) as u8,
        ])
    })
}

fn rect_mask(w: u32, h: u32, x0: u32, y0: u32, x1: u32, y1: u32) -> GrayImage {
    GrayImage::from_fn(w, h, |x, y| {
        Luma([if (x0..x1).contains(&x) && (y0..y1).contains(&y) {
            255
        } else {
            0
        }])
    })
}

fn inpaint_job(card: &ModelCard, image: &RgbImage, mask: &GrayImage, seed: u64, n: usize) -> Job {
    let mut chain = ChainRequest::new(card);
    chain.seed = seed;
    chain.candidates = n;
    chain.chains = default_chains(card);
    Job {
        kind: JobKind::Inpaint {
            image: Arc::new(image.clone()),
            mask: Arc::new(mask.clone()),
            window: WindowOptions::default(),
            start_level: None,
        },
        chain,
        partial_every: Some(Duration::ZERO),
        preview_max_side: None,
    }
}

/// Level previews with their origin and extent, and the final images, of a finished job.
type Streamed = (
    Vec<(Arc<RgbImage>, (u32, u32), (u32, u32))>,
    Vec<Arc<RgbImage>>,
);

fn streamed(events: Vec<Event>) -> Streamed {
    let (mut levels, mut finals) = (Vec::new(), Vec::new());
    for e in events {
        match e {
            Event::Level {
                preview,
                origin,
                extent,
                ..
            } => levels.push((preview, origin, extent)),
            Event::Candidate { image, .. } => finals.push(image),
            _ => {}
        }
    }
    (levels, finals)
}

/// Collects a job's events up to its end.
fn run_to_end(engine: &Engine, id: JobId) -> Vec<Event> {
    let mut events = Vec::new();
    loop {
        let e = next(engine);
        let end = matches!(
            &e,
            Event::Finished { job, .. } | Event::Cancelled { job } | Event::Failed { job, .. }
                | Event::NoOp { job, .. } if *job == id
        );
        events.push(e);
        if end {
            return events;
        }
    }
}

#[test]
fn inpaint_streams_levels_and_keeps_unmasked_pixels() {
    let (mut engine, card) = loaded("uncond_geometric");
    let image = picture(120, 80);
    let mask = rect_mask(120, 80, 40, 20, 70, 45);
    let handle = engine.submit(inpaint_job(&card, &image, &mask, 5, 2));
    let events = run_to_end(&engine, handle.id);
    assert!(matches!(events[0], Event::Started { ref levels, .. } if *levels == vec![3, 2, 1]));
    let levels: Vec<(usize, usize)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Level {
                level, candidate, ..
            } => Some((*level, *candidate)),
            _ => None,
        })
        .collect();
    assert_eq!(levels, vec![(3, 0), (3, 1), (2, 0), (2, 1), (1, 0), (1, 1)]);
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Progress {
            partial: Some(_),
            ..
        }
    )));
    let results: Vec<&RgbImage> = events
        .iter()
        .filter_map(|e| match e {
            Event::Candidate { image, .. } => Some(&**image),
            _ => None,
        })
        .collect();
    assert_eq!(results.len(), 2);
    assert!(matches!(events.last(), Some(Event::Finished { .. })));
    let feather = WindowOptions::default().feather_px;
    for result in &results {
        assert_eq!(result.dimensions(), image.dimensions());
        for (x, y, p) in result.enumerate_pixels() {
            let far = x + feather + 2 < 40
                || x >= 70 + feather + 2
                || y + feather + 2 < 20
                || y >= 45 + feather + 2;
            if far {
                assert_eq!(
                    p,
                    image.get_pixel(x, y),
                    "pixel ({x},{y}) outside the mask changed"
                );
            }
        }
    }
    // Something inside the mask was regenerated.
    assert!(
        (40..70).any(|x| (20..45).any(|y| results[0].get_pixel(x, y) != image.get_pixel(x, y)))
    );

    // Same seed: identical; another seed: different.
    let again = engine.submit(inpaint_job(&card, &image, &mask, 5, 1));
    let first = run_to_end(&engine, again.id)
        .into_iter()
        .find_map(|e| match e {
            Event::Candidate { image, .. } => Some(image),
            _ => None,
        });
    assert_eq!(first.as_deref(), Some(results[0]));
    let other = engine.submit(inpaint_job(&card, &image, &mask, 6, 1));
    let other = run_to_end(&engine, other.id)
        .into_iter()
        .find_map(|e| match e {
            Event::Candidate { image, .. } => Some(image),
            _ => None,
        });
    assert_ne!(other.as_deref(), Some(results[0]));
}

#[test]
fn cancel_is_prompt_and_the_next_job_runs() {
    let (mut engine, card) = loaded("uncond_geometric");
    let image = picture(64, 64);
    let mask = rect_mask(64, 64, 0, 0, 64, 64);
    let mut job = inpaint_job(&card, &image, &mask, 1, 4);
    job.chain.chains = vec![20; card.levels()];
    let handle = engine.submit(job);
    // Wait until tokens are being written, then cancel.
    loop {
        if let Event::Progress { .. } = next(&engine) {
            break;
        }
    }
    let t = Instant::now();
    handle.cancel();
    let events = run_to_end(&engine, handle.id);
    assert!(
        matches!(events.last(), Some(Event::Cancelled { .. })),
        "{:?}",
        events.last()
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "cancel took {:?}",
        t.elapsed()
    );
    let next_job = engine.submit(inpaint_job(
        &card,
        &image,
        &rect_mask(64, 64, 8, 8, 20, 20),
        2,
        1,
    ));
    assert!(matches!(
        run_to_end(&engine, next_job.id).last(),
        Some(Event::Finished { .. })
    ));
}

/// Cancel at 100 moments spread over a job's life (before it starts, while levels stream,
/// around the end): every job ends with exactly one terminal event, none fails, none hangs
/// (each wait is bounded), and afterwards the engine runs a job to the end.
#[test]
fn cancel_at_a_hundred_random_moments_never_sticks() {
    use rand::{Rng, SeedableRng};
    let (mut engine, card) = loaded("uncond_geometric");
    let image = picture(64, 64);
    let mask = rect_mask(64, 64, 24, 24, 40, 40);
    // One pass per level and a small mask keep the hundred jobs short.
    let job = |seed| {
        let mut j = inpaint_job(&card, &image, &mask, seed, 1);
        j.chain.chains = vec![1; card.levels()];
        j
    };
    // How long a whole job takes here, so the moments cover all of it.
    let t = Instant::now();
    let h = engine.submit(job(0));
    assert!(matches!(
        run_to_end(&engine, h.id).last(),
        Some(Event::Finished { .. })
    ));
    let whole = t.elapsed().as_micros().max(1) as u64;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(19);
    let (mut cancelled, mut finished, mut mid_job) = (0, 0, 0);
    for i in 0..100u64 {
        let handle = engine.submit(job(i));
        std::thread::sleep(Duration::from_micros(rng.random_range(0..whole * 6 / 5)));
        handle.cancel();
        let events = run_to_end(&engine, handle.id);
        let progressed = events
            .iter()
            .any(|e| matches!(e, Event::Progress { job, .. } if *job == handle.id));
        match events.last() {
            Some(Event::Cancelled { .. }) => {
                cancelled += 1;
                mid_job += usize::from(progressed);
            }
            Some(Event::Finished { .. }) => finished += 1,
            other => panic!("cancel {i}: the job ended with {other:?}"),
        }
    }
    // Nothing of a cancelled job arrives later.
    std::thread::sleep(Duration::from_millis(200));
    while let Ok(e) = engine.events().try_recv() {
        assert!(
            !matches!(
                e,
                Event::Finished { .. } | Event::Cancelled { .. } | Event::Failed { .. }
            ),
            "a terminal event after its job had ended: {e:?}"
        );
    }
    eprintln!(
        "100 cancels over a {whole} µs job: {cancelled} cancelled ({mid_job} mid-job), \
         {finished} finished first"
    );
    assert!(mid_job > 0, "no cancel landed while a job was running");
    let last = engine.submit(job(7));
    assert!(matches!(
        run_to_end(&engine, last.id).last(),
        Some(Event::Finished { .. })
    ));
}

#[test]
fn bad_requests_fail_cleanly() {
    let (mut engine, card) = loaded("uncond_geometric");
    let image = picture(50, 40);
    // Empty mask: a no-op with a message.
    let h = engine.submit(inpaint_job(&card, &image, &GrayImage::new(50, 40), 0, 1));
    assert!(matches!(
        run_to_end(&engine, h.id).last(),
        Some(Event::NoOp { .. })
    ));
    // Mask of another size: a clear error naming both sizes.
    let h = engine.submit(inpaint_job(
        &card,
        &image,
        &rect_mask(40, 40, 0, 0, 5, 5),
        0,
        1,
    ));
    match run_to_end(&engine, h.id).last() {
        Some(Event::Failed { error, .. }) => {
            assert!(error.contains("40") && error.contains("50"), "{error}")
        }
        other => panic!("{other:?}"),
    }
    // A class on an unconditional model.
    let mut job = inpaint_job(&card, &image, &rect_mask(50, 40, 0, 0, 5, 5), 0, 1);
    job.chain.condition = tessera_engine::loader::card::Condition::Class(1);
    let h = engine.submit(job);
    assert!(matches!(
        run_to_end(&engine, h.id).last(),
        Some(Event::Failed { .. })
    ));
    // A model that does not load leaves the loaded one in place.
    engine.load_model("/nonexistent/model", LoadOptions::default());
    assert!(matches!(next(&engine), Event::ModelFailed { .. }));
    let h = engine.submit(inpaint_job(
        &card,
        &image,
        &rect_mask(50, 40, 10, 10, 20, 20),
        0,
        1,
    ));
    assert!(matches!(
        run_to_end(&engine, h.id).last(),
        Some(Event::Finished { .. })
    ));
}

#[test]
fn no_model_is_an_error_not_a_hang() {
    let mut engine = Engine::spawn(|| {});
    let (_, card) = loaded("class_custom");
    let h = engine.submit(Job {
        kind: JobKind::Sample,
        chain: ChainRequest::new(&card),
        partial_every: None,
        preview_max_side: None,
    });
    match run_to_end(&engine, h.id).last() {
        Some(Event::Failed { error, .. }) => assert!(error.contains("no model"), "{error}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn class_conditional_sampling() {
    let (mut engine, card) = loaded("class_custom");
    let mut chain = ChainRequest::new(&card);
    chain.condition = tessera_engine::loader::card::Condition::Class(3);
    chain.candidates = 3;
    let h = engine.submit(Job {
        kind: JobKind::Sample,
        chain,
        partial_every: None,
        preview_max_side: None,
    });
    let events = run_to_end(&engine, h.id);
    let n = events
        .iter()
        .filter(|e| matches!(e, Event::Candidate { .. }))
        .count();
    assert_eq!(n, 3);
    assert!(matches!(events.last(), Some(Event::Finished { .. })));
    // Nothing to rank against (no contrast, and this model has no null class): no fit.
    assert!(
        events
            .iter()
            .all(|e| !matches!(e, Event::Candidate { fit: Some(_), .. }))
    );

    // With a contrast set every candidate carries its fit, a probability; one candidate is
    // not ranked (the scoring pass is skipped).
    for (candidates, ranked) in [(3, true), (1, false)] {
        let mut chain = ChainRequest::new(&card);
        chain.condition = tessera_engine::loader::card::Condition::Class(3);
        chain.contrast = [1, 2, 3, 4]
            .map(tessera_engine::loader::card::Condition::Class)
            .to_vec();
        chain.candidates = candidates;
        let h = engine.submit(Job {
            kind: JobKind::Sample,
            chain,
            partial_every: None,
            preview_max_side: None,
        });
        let fits: Vec<Option<f32>> = run_to_end(&engine, h.id)
            .into_iter()
            .filter_map(|e| match e {
                Event::Candidate { fit, .. } => Some(fit),
                _ => None,
            })
            .collect();
        assert_eq!(fits.len(), candidates);
        for f in fits {
            match f {
                Some(f) => assert!(ranked && (0.0..=1.0).contains(&f), "{f}"),
                None => assert!(!ranked),
            }
        }
    }
}

/// Previews shrink to `preview_max_side` on the worker and say what they cover; the final
/// images and the sampled tokens stay the same.
#[test]
fn previews_shrink_for_display_and_finals_keep_full_size() {
    let (mut engine, card) = loaded("uncond_geometric");
    let image = picture(200, 160);
    let mask = rect_mask(200, 160, 30, 20, 170, 140);
    let full = engine.submit(inpaint_job(&card, &image, &mask, 3, 1));
    let (full_levels, full_finals) = streamed(run_to_end(&engine, full.id));
    let mut job = inpaint_job(&card, &image, &mask, 3, 1);
    job.preview_max_side = Some(40);
    let small = engine.submit(job);
    let events = run_to_end(&engine, small.id);
    for e in &events {
        if let Event::Progress {
            partial: Some(p),
            extent,
            ..
        } = e
        {
            assert!(
                p.width().max(p.height()) <= 40,
                "partial {:?}",
                p.dimensions()
            );
            assert!(extent.0 > 40 || extent.1 > 40, "extent {extent:?}");
        }
    }
    let (levels, finals) = streamed(events);
    assert_eq!(levels.len(), full_levels.len());
    for ((p, origin, extent), (fp, forigin, fextent)) in levels.iter().zip(&full_levels) {
        assert_eq!((origin, extent), (forigin, fextent));
        assert_eq!(
            *fextent,
            fp.dimensions(),
            "unshrunk previews cover their own size"
        );
        assert!(
            fp.width().max(fp.height()) > 40,
            "the window is larger than the cap"
        );
        assert!(
            p.width().max(p.height()) <= 40,
            "preview {:?}",
            p.dimensions()
        );
        let aspect = |(w, h): (u32, u32)| f64::from(w) / f64::from(h);
        assert!((aspect(p.dimensions()) - aspect(*extent)).abs() < 0.1);
    }
    assert_eq!(
        finals, full_finals,
        "the final images do not depend on the preview size"
    );
    assert_eq!(finals[0].dimensions(), image.dimensions());
}

#[test]
fn a_standing_quantize_preference_loads_stored_blocks_as_stored_and_says_how() {
    use candle_core::quantized::GgmlDType;
    use tessera_engine::loader::import::{ImportOptions, import};
    let load = |path: PathBuf, opts: LoadOptions| {
        let engine = Engine::spawn(|| {});
        engine.load_model(path, opts);
        next(&engine)
    };
    let q8 = LoadOptions {
        quantize: Some(GgmlDType::Q8_0),
        lazy: true,
        ..LoadOptions::default()
    };
    match load(golden("class_custom"), q8.clone()) {
        Event::ModelLoaded { weights, .. } => {
            assert_eq!(
                weights,
                "q8_0 (quantized at load from f32), one stage resident"
            )
        }
        other => panic!("{other:?}"),
    }
    match load(golden("class_custom"), LoadOptions::default()) {
        Event::ModelLoaded { weights, .. } => assert_eq!(weights, "f32"),
        other => panic!("{other:?}"),
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q4k");
    let opts = ImportOptions {
        quantize: Some(GgmlDType::Q4K),
        ..ImportOptions::default()
    };
    let case = golden("class_custom");
    import(&case.join("sampling.yaml"), &out, &opts, &mut |_| {}).unwrap();
    // An explicit quantization of a stored-quantized model is refused, naming why…
    let eager = LoadOptions {
        lazy: false,
        ..q8.clone()
    };
    match load(out.clone(), eager.clone()) {
        Event::ModelFailed { error } => assert!(error.contains("stored quantized"), "{error}"),
        other => panic!("{other:?}"),
    }
    // …a standing preference loads it as stored.
    let preference = LoadOptions {
        keep_stored_quantization: true,
        ..eager
    };
    match load(out, preference) {
        Event::ModelLoaded { weights, .. } => assert_eq!(weights, "q4k (stored)"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_panic_in_a_job_becomes_that_jobs_error() {
    use tessera_engine::worker::guarded;
    let r: tessera_engine::Result<u32> = guarded(|| panic!("index 7 out of range"));
    let e = r.unwrap_err().to_string();
    assert!(
        e.contains("index 7 out of range") && e.contains("the next one runs"),
        "{e}"
    );
    let r: tessera_engine::Result<u32> = guarded(|| panic!("{}", String::from("owned message")));
    assert!(r.unwrap_err().to_string().contains("owned message"));
    // The same thread goes on with the next request.
    assert_eq!(guarded(|| Ok(5)).unwrap(), 5);
}

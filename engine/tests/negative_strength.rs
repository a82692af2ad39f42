//! Negative conditions (classifier-free guidance against a chosen condition,
//! [`ChainRequest::negative`]) and inpainting strength (redo only the last k levels,
//! [`strength_start`] and `JobKind::Inpaint::start_level`) on the golden tiny models.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use candle_core::{Device, IndexOp, Tensor};
use image::{GrayImage, Luma, Rgb, RgbImage};
use tessera_engine::Error;
use tessera_engine::inpaint::WindowOptions;
use tessera_engine::loader::card::{Condition, Conditioning};
use tessera_engine::loader::{LoadOptions, Model, ModelSource, Stage};
use tessera_engine::pipeline::{
    ChainRequest, Observer, Progress, Silent, Start, run_chain, strength_start,
};
use tessera_engine::sampler::LevelParams;
use tessera_engine::worker::{Engine, Event, Job, JobId, JobKind};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/golden");

fn load(case: &str) -> Model {
    ModelSource::open(format!("{GOLDEN}/{case}"))
        .unwrap()
        .load(&LoadOptions::default())
        .unwrap()
}

/// A deterministic grid of tokens below `k`.
fn grid(seed: u64, p: usize, k: usize) -> Vec<u32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..p)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % k as u64) as u32
        })
        .collect()
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best as u32
}

fn tokens_tensor(ids: &[u32]) -> Tensor {
    Tensor::from_vec(ids.to_vec(), (1, ids.len()), &Device::Cpu).unwrap()
}

/// Logits rows `(L, K)` of a teacher-forced forward of stage `t` for one candidate.
fn teacher_forced(
    model: &Model,
    t: usize,
    cond: &Condition,
    x_t: &[u32],
    y: &[u32],
) -> Vec<Vec<f32>> {
    let prefix = model.card.prefix(t, cond).unwrap();
    match &*model.stage(t).unwrap() {
        Stage::EncDec(net) => {
            let src: Vec<u32> = prefix.iter().chain(x_t).copied().collect();
            let tgt: Vec<u32> = std::iter::once(0)
                .chain(y[..y.len() - 1].iter().copied())
                .collect();
            net.forward(&tokens_tensor(&src), &tokens_tensor(&tgt))
                .unwrap()
                .i(0)
                .unwrap()
                .to_vec2()
                .unwrap()
        }
        Stage::Gpt(net) => {
            let idx: Vec<u32> = prefix.iter().chain(&y[..y.len() - 1]).copied().collect();
            let logits = net.forward(&tokens_tensor(&idx)).unwrap().i(0).unwrap();
            logits
                .narrow(0, prefix.len() - 1, y.len())
                .unwrap()
                .to_vec2()
                .unwrap()
        }
    }
}

fn greedy(levels: usize) -> Vec<LevelParams> {
    vec![
        LevelParams {
            temperature: 1.0,
            top_k: Some(1),
            top_p: None,
        };
        levels
    ]
}

/// Greedy output of stage `t` on `x_t` equals the argmax of uncond + s·(cond − uncond) with
/// uncond computed on `negative`, at every position.
fn assert_guided_argmax(
    model: &Model,
    t: usize,
    cond: &Condition,
    negative: &Condition,
    s: f32,
    x_t: &[u32],
    y: &[u32],
) {
    let c = teacher_forced(model, t, cond, x_t, y);
    let u = teacher_forced(model, t, negative, x_t, y);
    let mut differs_from_cond = false;
    for j in 0..y.len() {
        let g: Vec<f32> = c[j]
            .iter()
            .zip(&u[j])
            .map(|(c, u)| u + s * (c - u))
            .collect();
        assert_eq!(argmax(&g), y[j], "stage {t}, position {j}");
        differs_from_cond |= argmax(&c[j]) != y[j];
    }
    assert!(
        differs_from_cond,
        "stage {t}: guidance against the negative changed no argmax"
    );
}

// ---------------------------------------------------------------------------------------------

#[test]
fn negative_none_is_plain_classifier_free_guidance() {
    let mut model = load("class_custom");
    let mut req = ChainRequest::new(&model.card);
    assert_eq!(req.negative, Condition::None);
    req.condition = Condition::Class(71);
    req.guidance_scale = 3.0;
    req.candidates = 2;
    req.seed = 9;
    // Without a null class, guidance against `None` is refused …
    assert!(matches!(
        run_chain(&model, &req, &mut Silent),
        Err(Error::Input(_))
    ));
    // … with one (pretend class 99 is it), `None` means that class: the same output as the
    // null class given explicitly.
    if let Conditioning::Class { null_class, .. } = &mut model.card.conditioning {
        *null_class = Some(99);
    }
    let plain = run_chain(&model, &req, &mut Silent).unwrap();
    req.negative = Condition::Class(99);
    assert_eq!(run_chain(&model, &req, &mut Silent).unwrap(), plain);
    // And greedy decoding is the argmax of the guided logits against the null class.
    req.negative = Condition::None;
    req.levels = greedy(2);
    req.candidates = 1;
    let out = run_chain(&model, &req, &mut Silent).unwrap();
    assert_guided_argmax(
        &model,
        2,
        &Condition::Class(71),
        &Condition::Class(99),
        3.0,
        &[],
        &out[0][0],
    );
}

#[test]
fn the_uncond_branch_runs_on_the_negative_at_every_stage() {
    // No null class needed: the negative class is what the uncond branch runs on.
    let model = load("class_custom");
    let cond = Condition::Class(71);
    let negative = Condition::Class(5);
    let s = 2.5f32;
    let mut req = ChainRequest::new(&model.card);
    req.condition = cond.clone();
    req.negative = negative.clone();
    req.guidance_scale = s;
    req.levels = greedy(2);
    // Stage T (GPT, KV cache of the prefix).
    let out = run_chain(&model, &req, &mut Silent).unwrap();
    assert_guided_argmax(&model, 2, &cond, &negative, s, &[], &out[0][0]);
    // Stage 1 (encoder–decoder: the encoder pass of the uncond rows).
    let x1 = grid(21, 64, 40);
    req.start = Some(Start {
        level: 1,
        grids: vec![x1.clone()],
    });
    let out = run_chain(&model, &req, &mut Silent).unwrap();
    assert_guided_argmax(&model, 1, &cond, &negative, s, &x1, &out[0][0]);
}

#[test]
fn another_negative_changes_the_output() {
    let model = load("class_custom");
    let mut req = ChainRequest::new(&model.card);
    req.condition = Condition::Class(71);
    req.guidance_scale = 3.0;
    req.candidates = 2;
    req.seed = 4;
    req.negative = Condition::Class(5);
    let a = run_chain(&model, &req, &mut Silent).unwrap();
    assert_eq!(run_chain(&model, &req, &mut Silent).unwrap(), a);
    req.negative = Condition::Class(6);
    let b = run_chain(&model, &req, &mut Silent).unwrap();
    assert_ne!(a, b);
    req.negative = Condition::None;
    req.guidance_scale = 1.0;
    assert_ne!(run_chain(&model, &req, &mut Silent).unwrap(), a);
}

#[test]
fn negative_equal_to_the_condition_is_the_conditional_model_at_any_scale() {
    let model = load("class_custom");
    let x0 = grid(3, 64, 40);
    let mut req = ChainRequest::new(&model.card);
    req.condition = Condition::Class(42);
    req.known = Some(
        x0.iter()
            .enumerate()
            .map(|(i, &t)| (i % 8 < 3).then_some(t))
            .collect(),
    );
    req.chains = vec![2, 1];
    req.candidates = 2;
    req.seed = 17;
    let conditional = run_chain(&model, &req, &mut Silent).unwrap();
    req.negative = req.condition.clone();
    for s in [0.0f32, 0.5, 2.0, 7.5] {
        req.guidance_scale = s;
        assert_eq!(
            run_chain(&model, &req, &mut Silent).unwrap(),
            conditional,
            "scale {s}"
        );
    }
    // (The sampler skips the uncond rows when their prefix equals the condition's; the
    // arithmetic u + s·(c − u) with u = c would give c bit for bit anyway.)
}

#[test]
fn bad_negatives_are_input_errors() {
    let class = load("class_custom");
    let uncond = load("uncond_geometric");
    let mut cases: Vec<(&Model, ChainRequest)> = Vec::new();
    let mut r = ChainRequest::new(&class.card);
    r.condition = Condition::Class(1);
    // A negative without guidance is not silently ignored.
    r.negative = Condition::Class(2);
    cases.push((&class, r.clone()));
    // Out of range, or the wrong kind for the model.
    r.guidance_scale = 2.0;
    r.negative = Condition::Class(100);
    cases.push((&class, r.clone()));
    r.negative = Condition::Text(vec![1, 2]);
    cases.push((&class, r.clone()));
    let mut r = ChainRequest::new(&uncond.card);
    r.guidance_scale = 2.0;
    r.negative = Condition::Class(0);
    cases.push((&uncond, r));
    for (i, (model, r)) in cases.iter().enumerate() {
        let err = r.validate(&model.card).unwrap_err();
        assert!(matches!(err, Error::Input(_)), "case {i}: {err}");
        assert!(
            matches!(run_chain(model, r, &mut Silent), Err(Error::Input(_))),
            "case {i}"
        );
    }
}

// ------------------------------------------------------------------------------ strength -----

#[test]
fn strength_start_noises_only_the_masked_positions() {
    let model = load("uncond_geometric");
    let card = &model.card;
    let x0 = grid(30, 64, 40);
    let known: Vec<Option<u32>> = x0
        .iter()
        .enumerate()
        .map(|(i, &t)| (i >= 32).then_some(t))
        .collect();
    for bad in [0, 4] {
        assert!(matches!(
            strength_start(card, &x0, &known, bad, 1, 0),
            Err(Error::Input(_))
        ));
    }
    // k = T is the full chain.
    assert_eq!(strength_start(card, &x0, &known, 3, 2, 0).unwrap(), None);
    let start = strength_start(card, &x0, &known, 2, 3, 7).unwrap().unwrap();
    assert_eq!(start.level, 2);
    assert_eq!(start.grids.len(), 3);
    for g in &start.grids {
        assert_eq!(&g[32..], &x0[32..], "known positions keep x_0");
        // ᾱ_2 = 1/3: some masked tokens survive, some are redrawn.
        assert!(g[..32].iter().zip(&x0).any(|(a, b)| a != b));
    }
    assert_ne!(
        start.grids[0], start.grids[1],
        "candidates draw their own noise"
    );
    // Seeded: the same seed gives the same grids.
    assert_eq!(
        strength_start(card, &x0, &known, 2, 3, 7).unwrap().unwrap(),
        start
    );
    // Level 1 keeps more of x_0 than level 2 on average (ᾱ_1 = 2/3 > ᾱ_2 = 1/3).
    let kept = |level: usize| -> usize {
        (0..40)
            .map(|seed| {
                let s = strength_start(card, &x0, &known, level, 1, seed)
                    .unwrap()
                    .unwrap();
                s.grids[0][..32]
                    .iter()
                    .zip(&x0)
                    .filter(|(a, b)| a == b)
                    .count()
            })
            .sum()
    };
    let (k1, k2) = (kept(1), kept(2));
    // Expected kept fraction ᾱ + (1 − ᾱ)/K: ≈ 0.675 and ≈ 0.35 of 1280.
    assert!(k1 > 780 && k1 < 940, "{k1}");
    assert!(k2 > 350 && k2 < 550, "{k2}");
}

/// Counts the stages a chain runs.
#[derive(Default)]
struct Levels(Vec<usize>, usize);

impl Observer for Levels {
    fn progress(&mut self, p: Progress<'_>) {
        match p {
            Progress::Level { level, .. } => self.0.push(level),
            Progress::Token { level, .. } => self.1 = self.1.max(level),
        }
    }
    fn cancelled(&self) -> bool {
        false
    }
}

#[test]
fn a_strength_start_runs_only_the_stages_below() {
    let model = load("uncond_geometric");
    let x0 = grid(31, 64, 40);
    let known: Vec<Option<u32>> = x0
        .iter()
        .enumerate()
        .map(|(i, &t)| (i % 8 >= 4).then_some(t))
        .collect();
    let mut req = ChainRequest::new(&model.card);
    req.known = Some(known.clone());
    req.candidates = 2;
    req.start = strength_start(&model.card, &x0, &known, 2, 2, req.seed).unwrap();
    let mut obs = Levels::default();
    let out = run_chain(&model, &req, &mut obs).unwrap();
    assert_eq!(obs.0, [2, 1]);
    assert_eq!(obs.1, 2, "no token of stage 3 was sampled");
    assert_eq!(out.len(), 2);
    for g in &out[1] {
        assert!(g.iter().zip(&known).all(|(t, k)| k.is_none_or(|k| k == *t)));
    }
}

// -------------------------------------------------------------------------- worker jobs -----

fn next(engine: &Engine) -> Event {
    engine
        .events()
        .recv_timeout(Duration::from_secs(120))
        .expect("the worker answers")
}

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
fn inpaint_with_strength_redoes_the_last_levels_inside_the_mask() {
    let engine_dir = PathBuf::from(GOLDEN).join("uncond_geometric");
    let mut engine = Engine::spawn(|| {});
    engine.load_model(engine_dir, LoadOptions::default());
    let card = match next(&engine) {
        Event::ModelLoaded { card, .. } => *card,
        other => panic!("{other:?}"),
    };
    let (w, h) = (96u32, 80u32);
    let image = RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x * 5 % 256) as u8,
            (y * 7 % 256) as u8,
            ((x ^ y) % 256) as u8,
        ])
    });
    let (mx0, my0, mx1, my1) = (30, 20, 60, 50);
    let mask = GrayImage::from_fn(w, h, |x, y| {
        Luma([if (mx0..mx1).contains(&x) && (my0..my1).contains(&y) {
            255
        } else {
            0
        }])
    });
    let job = |start_level: Option<usize>, seed: u64| {
        let mut chain = ChainRequest::new(&card);
        chain.seed = seed;
        chain.candidates = 2;
        chain.chains = vec![2, 1, 1];
        Job {
            kind: JobKind::Inpaint {
                image: Arc::new(image.clone()),
                mask: Arc::new(mask.clone()),
                window: WindowOptions::default(),
                start_level,
            },
            chain,
            partial_every: None,
            preview_max_side: None,
        }
    };
    let finals = |events: &[Event]| -> Vec<Arc<RgbImage>> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Candidate { image, .. } => Some(image.clone()),
                _ => None,
            })
            .collect()
    };

    // k = 1: only stage 1 runs, its tokens and passes are all the job counts.
    let h1 = engine.submit(job(Some(1), 5));
    let events = run_to_end(&engine, h1.id);
    let Event::Started { levels, tokens, .. } = &events[0] else {
        panic!("{:?}", events[0]);
    };
    assert_eq!(levels, &vec![1]);
    let full = engine.submit(job(None, 5));
    let full_events = run_to_end(&engine, full.id);
    let Event::Started {
        levels: full_levels,
        tokens: full_tokens,
        ..
    } = &full_events[0]
    else {
        panic!("{:?}", full_events[0]);
    };
    assert_eq!(full_levels, &vec![3, 2, 1]);
    // Stage 1 has 2 passes of the 4 in all.
    assert_eq!(tokens * 2, *full_tokens);
    let level_events: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            Event::Level { level, .. } => Some(*level),
            _ => None,
        })
        .collect();
    assert_eq!(level_events, [1, 1]);
    assert!(matches!(events.last(), Some(Event::Finished { .. })));
    let results = finals(&events);
    assert_eq!(results.len(), 2);
    let feather = WindowOptions::default().feather_px;
    for r in &results {
        for (x, y, p) in r.enumerate_pixels() {
            let far = x + feather + 2 < mx0
                || x >= mx1 + feather + 2
                || y + feather + 2 < my0
                || y >= my1 + feather + 2;
            if far {
                assert_eq!(p, image.get_pixel(x, y), "pixel ({x},{y}) changed");
            }
        }
    }
    assert_ne!(finals(&full_events)[0], results[0]);

    // k = T is the full chain: the same result for the same seed.
    let ht = engine.submit(job(Some(3), 5));
    let t_events = run_to_end(&engine, ht.id);
    assert!(matches!(&t_events[0], Event::Started { levels, .. } if *levels == vec![3, 2, 1]));
    assert_eq!(finals(&t_events), finals(&full_events));

    // Out of range: a failed job, the engine stays ready.
    let bad = engine.submit(job(Some(4), 5));
    let bad_events = run_to_end(&engine, bad.id);
    assert!(matches!(bad_events.last(), Some(Event::Failed { .. })));
    let again = engine.submit(job(Some(1), 5));
    assert_eq!(finals(&run_to_end(&engine, again.id)), results);
}

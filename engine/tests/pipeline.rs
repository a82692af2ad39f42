//! Tests of the reverse-chain sampler ([`tessera_engine::pipeline`]) on the golden tiny models
//! (8×8 = 64 tokens, K = 40): the inpainting guide, determinism, batching, greedy decoding
//! against the network's own argmax, cancellation, chains, branching, class conditioning,
//! classifier-free guidance, and the known-run prefill against a reference implementation
//! that recomputes every step the way the official sampler does.
//!
//! One test file per module under test (each is its own test binary, and each binary links the
//! whole crate: splitting would cost CI disk and link time, not help a reader).

use candle_core::{Device, IndexOp, Tensor};
use tessera_engine::Error;
use tessera_engine::loader::card::{Condition, Conditioning};
use tessera_engine::loader::{LoadOptions, Model, ModelSource, Stage};
use tessera_engine::pipeline::{
    ChainOptions, ChainRequest, Confidence, Observer, Progress, Silent, Start, candidate_rng,
    default_chains, entropy_bits, run_chain, run_chain_with,
};
use tessera_engine::sampler::{self, LevelParams};

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

/// Known where `keep(position)`, with the tokens of `x0`.
fn mask(x0: &[u32], keep: impl Fn(usize) -> bool) -> Vec<Option<u32>> {
    x0.iter()
        .enumerate()
        .map(|(i, &t)| keep(i).then_some(t))
        .collect()
}

/// Records every event; cancels after `cancel_after` tokens.
#[derive(Default)]
struct Recorder {
    levels: Vec<(usize, Vec<Vec<u32>>)>,
    /// Per level event, per candidate.
    confidence: Vec<Vec<Confidence>>,
    /// (level, pass, passes, done, total)
    tokens: Vec<(usize, usize, usize, usize, usize)>,
    partials_ok: bool,
    known: Option<Vec<Option<u32>>>,
    cancel_after: Option<usize>,
}

impl Recorder {
    fn with_known(known: &[Option<u32>]) -> Self {
        Self {
            known: Some(known.to_vec()),
            partials_ok: true,
            ..Self::default()
        }
    }

    fn keeps_known(&self, grids: &[Vec<u32>]) -> bool {
        let Some(known) = &self.known else {
            return true;
        };
        grids
            .iter()
            .all(|g| g.iter().zip(known).all(|(t, k)| k.is_none_or(|k| k == *t)))
    }
}

impl Observer for Recorder {
    fn progress(&mut self, p: Progress<'_>) {
        match p {
            Progress::Token {
                level,
                pass,
                passes,
                done,
                total,
                partial,
            } => {
                self.partials_ok &= self.keeps_known(partial);
                self.tokens.push((level, pass, passes, done, total));
            }
            Progress::Level {
                level,
                grids,
                confidence,
            } => {
                self.levels.push((level, grids.to_vec()));
                self.confidence.push(confidence.to_vec());
            }
        }
    }

    fn cancelled(&self) -> bool {
        self.cancel_after.is_some_and(|n| self.tokens.len() >= n)
    }
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

// ---------------------------------------------------------------------------------------------

#[test]
fn default_chains_follow_the_official_script_but_run_the_gpt_once() {
    // The official script: 3 per stage (geometric), 5 per encoder–decoder and 1 for the GPT
    // (custom); a GPT reads no x_t, so its further passes are dropped.
    assert_eq!(default_chains(&load("uncond_geometric").card), [3, 3, 1]);
    assert_eq!(default_chains(&load("class_custom").card), [5, 1]);
}

#[test]
fn a_cards_recommended_chains_are_the_default_and_are_checked() {
    let mut card = load("uncond_geometric").card;
    card.chains = Some(vec![2, 1, 1]);
    assert!(card.validate().is_ok());
    assert_eq!(default_chains(&card), [2, 1, 1]);
    for (chains, says) in [
        (vec![1, 1], "chains lists 2 levels but there are 3 stages"),
        (vec![0, 1, 1], "passes must be 1..=100, got 0"),
        (vec![1, 101, 1], "got 101"),
    ] {
        card.chains = Some(chains);
        let err = card.validate().unwrap_err();
        assert!(err.contains(says), "{err}");
    }
}

/// Why the GPT's passes can go: whatever the grid it is handed, the GPT level draws the same
/// x_{T−1} from the same random stream.
#[test]
fn the_gpt_level_does_not_read_its_input() {
    let model = load("uncond_geometric");
    let t = model.card.levels();
    let x0 = grid(3, 64, 40);
    let mut req = ChainRequest::new(&model.card);
    req.known = Some(mask(&x0, |i| i % 4 == 0));
    req.seed = 5;
    let draw = |start: Vec<u32>| {
        let mut r = req.clone();
        r.start = Some(Start {
            level: t,
            grids: vec![start],
        });
        run_chain(&model, &r, &mut Silent).unwrap()[0].clone()
    };
    let a = draw(grid(11, 64, 40));
    let b = draw(grid(12, 64, 40));
    assert_ne!(grid(11, 64, 40), grid(12, 64, 40));
    assert_eq!(a, b);
}

#[test]
fn plain_generation_reports_every_token_and_level() {
    let model = load("uncond_geometric");
    let req = ChainRequest::new(&model.card);
    let mut rec = Recorder::default();
    let out = run_chain(&model, &req, &mut rec).unwrap();
    assert_eq!(out.len(), 3);
    for grids in &out {
        assert_eq!(grids.len(), 1);
        assert_eq!(grids[0].len(), 64);
        assert!(grids[0].iter().all(|t| *t < 40));
    }
    assert_eq!(rec.tokens.len(), 3 * 64);
    assert_eq!(rec.tokens[0], (3, 0, 1, 1, 64));
    assert_eq!(rec.tokens[191], (1, 0, 1, 64, 64));
    let levels: Vec<usize> = rec.levels.iter().map(|l| l.0).collect();
    assert_eq!(levels, [3, 2, 1]);
    for (i, (_, grids)) in rec.levels.iter().enumerate() {
        assert_eq!(grids, &out[i]);
    }
}

#[test]
fn known_tokens_never_change() {
    let model = load("uncond_geometric");
    let x0 = grid(1, 64, 40);
    // Lower half known except column 0 (the official demo's mask), plus a lone known token.
    let known = mask(&x0, |i| (i >= 32 && i % 8 != 0) || i == 5);
    let mut req = ChainRequest::new(&model.card);
    req.known = Some(known.clone());
    req.candidates = 2;
    req.seed = 3;
    let mut rec = Recorder::with_known(&known);
    let out = run_chain(&model, &req, &mut rec).unwrap();
    assert_eq!(rec.levels.len(), 3);
    for (_, grids) in &rec.levels {
        assert!(rec.keeps_known(grids));
    }
    assert!(rec.partials_ok);
    let masked = known.iter().filter(|k| k.is_none()).count();
    assert_eq!(rec.tokens.len(), 3 * masked);
    assert!(rec.tokens.iter().all(|t| t.4 == masked));
    // Something was generated in the masked region.
    let x_0 = &out[2][0];
    assert!((0..64).any(|i| known[i].is_none() && x_0[i] != x0[i]));
}

#[test]
fn same_seed_same_result_other_seed_differs() {
    let model = load("uncond_geometric");
    let mut req = ChainRequest::new(&model.card);
    req.seed = 42;
    req.candidates = 2;
    let a = run_chain(&model, &req, &mut Silent).unwrap();
    let b = run_chain(&model, &req, &mut Silent).unwrap();
    assert_eq!(a, b);
    assert_ne!(a[2][0], a[2][1], "candidates should differ");
    req.seed = 43;
    let c = run_chain(&model, &req, &mut Silent).unwrap();
    assert_ne!(a, c);
}

#[test]
fn a_candidate_does_not_depend_on_the_batch_size() {
    let model = load("uncond_geometric");
    let x0 = grid(9, 64, 40);
    let mut req = ChainRequest::new(&model.card);
    req.seed = 7;
    req.known = Some(mask(&x0, |i| i % 3 == 0));
    req.chains = vec![2, 1, 2];
    let one = run_chain(&model, &req, &mut Silent).unwrap();
    req.candidates = 3;
    let three = run_chain(&model, &req, &mut Silent).unwrap();
    for (a, b) in one.iter().zip(&three) {
        assert_eq!(a[0], b[0]);
    }
}

#[test]
fn top_k_one_is_greedy_at_every_level() {
    for case in ["uncond_geometric", "class_custom"] {
        let model = load(case);
        let t_max = model.card.levels();
        let mut req = ChainRequest::new(&model.card);
        if case == "class_custom" {
            req.condition = Condition::Class(17);
        }
        req.levels = vec![
            LevelParams {
                temperature: 0.7,
                top_k: Some(1),
                top_p: None,
            };
            t_max
        ];
        let out = run_chain(&model, &req, &mut Silent).unwrap();
        // Stage T first, then T−1 … 1; the GPT ignores its input.
        let mut x_t = vec![0u32; 64];
        for (i, t) in (1..=t_max).rev().enumerate() {
            let y = &out[i][0];
            let rows = teacher_forced(&model, t, &req.condition, &x_t, y);
            let greedy: Vec<u32> = rows.iter().map(|r| argmax(r)).collect();
            assert_eq!(&greedy, y, "{case}: stage {t}");
            x_t = y.clone();
        }
        // Greedy output does not depend on the seed.
        req.seed = 99;
        assert_eq!(run_chain(&model, &req, &mut Silent).unwrap(), out);
    }
}

#[test]
fn cancel_returns_promptly_and_the_next_run_works() {
    let model = load("uncond_geometric");
    let mut req = ChainRequest::new(&model.card);
    req.candidates = 2;
    let mut rec = Recorder {
        cancel_after: Some(5),
        ..Recorder::default()
    };
    let err = run_chain(&model, &req, &mut rec).unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
    // The check happens before the next network step: no token after the fifth.
    assert_eq!(rec.tokens.len(), 5);
    assert!(rec.levels.is_empty());
    // Cancel in an encoder–decoder stage, during a chain pass.
    req.chains = vec![2, 2, 2];
    let mut rec = Recorder {
        cancel_after: Some(64 * 2 + 70),
        ..Recorder::default()
    };
    assert!(matches!(
        run_chain(&model, &req, &mut rec),
        Err(Error::Cancelled)
    ));
    assert_eq!(rec.tokens.len(), 64 * 2 + 70);
    assert_eq!(rec.levels.len(), 1);
    // The model is not left in a bad state.
    let out = run_chain(&model, &req, &mut Silent).unwrap();
    assert_eq!(out.len(), 3);
}

#[test]
fn chains_run_every_pass_and_keep_known_tokens() {
    let model = load("uncond_geometric");
    let x0 = grid(2, 64, 40);
    let known = mask(&x0, |i| !(24..=50).contains(&i));
    let masked = known.iter().filter(|k| k.is_none()).count();
    let mut req = ChainRequest::new(&model.card);
    req.known = Some(known.clone());
    // Every pass runs when asked for, the GPT's too.
    req.chains = vec![3; 3];
    req.candidates = 2;
    let mut rec = Recorder::with_known(&known);
    let out = run_chain(&model, &req, &mut rec).unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!(rec.tokens.len(), 3 * 3 * masked);
    for level in 1..=3 {
        for pass in 0..3 {
            let n = rec
                .tokens
                .iter()
                .filter(|t| t.0 == level && t.1 == pass && t.2 == 3)
                .count();
            assert_eq!(n, masked, "level {level} pass {pass}");
        }
    }
    assert!(rec.levels.iter().all(|(_, g)| rec.keeps_known(g)));
    assert!(rec.partials_ok);
    // Chains change the result.
    req.chains = vec![1; 3];
    assert_ne!(run_chain(&model, &req, &mut Silent).unwrap(), out);
}

#[test]
fn branching_runs_only_the_stages_below() {
    let model = load("uncond_geometric");
    let x2 = grid(5, 64, 40);
    let mut req = ChainRequest::new(&model.card);
    req.candidates = 2;
    req.start = Some(Start {
        level: 2,
        grids: vec![x2.clone()],
    });
    let mut rec = Recorder::default();
    let out = run_chain(&model, &req, &mut rec).unwrap();
    assert_eq!(out.len(), 2);
    let levels: Vec<usize> = rec.levels.iter().map(|l| l.0).collect();
    assert_eq!(levels, [2, 1]);
    assert!(rec.tokens.iter().all(|t| t.0 <= 2));
    assert_eq!(rec.tokens.len(), 2 * 64);
    // One grid per candidate gives the same as one shared grid when they are equal.
    req.start = Some(Start {
        level: 2,
        grids: vec![x2.clone(), x2.clone()],
    });
    assert_eq!(run_chain(&model, &req, &mut Silent).unwrap(), out);
    // Greedy from a given x_1 equals the network's argmax on it.
    req.levels[0].top_k = Some(1);
    req.start = Some(Start {
        level: 1,
        grids: vec![x2.clone()],
    });
    let out = run_chain(&model, &req, &mut Silent).unwrap();
    assert_eq!(out.len(), 1);
    let rows = teacher_forced(&model, 1, &Condition::None, &x2, &out[0][0]);
    let greedy: Vec<u32> = rows.iter().map(|r| argmax(r)).collect();
    assert_eq!(greedy, out[0][0]);
}

#[test]
fn class_conditional_model() {
    let mut model = load("class_custom");
    let mut req = ChainRequest::new(&model.card);
    // Unconditional sampling needs a null class this model does not have.
    assert!(matches!(
        run_chain(&model, &req, &mut Silent),
        Err(Error::Input(_))
    ));
    req.condition = Condition::Class(100);
    assert!(matches!(
        run_chain(&model, &req, &mut Silent),
        Err(Error::Input(_))
    ));
    req.condition = Condition::Class(3);
    req.chains = default_chains(&model.card);
    let x0 = grid(4, 64, 40);
    let known = mask(&x0, |i| i % 8 < 4);
    req.known = Some(known.clone());
    let mut rec = Recorder::with_known(&known);
    let a = run_chain(&model, &req, &mut rec).unwrap();
    assert_eq!(a.len(), 2);
    assert!(rec.levels.iter().all(|(_, g)| rec.keeps_known(g)));
    req.condition = Condition::Class(71);
    let b = run_chain(&model, &req, &mut Silent).unwrap();
    assert_ne!(a, b);

    // Classifier-free guidance: refused without a null class …
    req.guidance_scale = 3.0;
    let err = run_chain(&model, &req, &mut Silent).unwrap_err();
    assert!(matches!(err, Error::Input(_)), "{err}");
    // … and with one (pretend class 99 is it), the first GPT token under top-k 1 is the
    // argmax of uncond + s·(cond − uncond).
    if let Conditioning::Class { null_class, .. } = &mut model.card.conditioning {
        *null_class = Some(99);
    }
    req.known = None;
    req.levels = vec![
        LevelParams {
            temperature: 1.0,
            top_k: Some(1),
            top_p: None,
        };
        2
    ];
    req.candidates = 2;
    let out = run_chain(&model, &req, &mut Silent).unwrap();
    let y = &out[0][0];
    let s = 3.0f32;
    let c = teacher_forced(&model, 2, &Condition::Class(71), &[], y);
    let u = teacher_forced(&model, 2, &Condition::None, &[], y);
    for j in 0..64 {
        let g: Vec<f32> = c[j]
            .iter()
            .zip(&u[j])
            .map(|(c, u)| u + s * (c - u))
            .collect();
        assert_eq!(argmax(&g), y[j], "position {j}");
    }
    assert_eq!(out[0][0], out[0][1]);
    // Guidance changes the result.
    req.guidance_scale = 1.0;
    assert_ne!(run_chain(&model, &req, &mut Silent).unwrap(), out);
}

#[test]
fn fully_known_grid_is_returned_unchanged() {
    let model = load("uncond_geometric");
    let x0 = grid(8, 64, 40);
    let mut req = ChainRequest::new(&model.card);
    req.known = Some(mask(&x0, |_| true));
    req.chains = vec![3; 3];
    req.candidates = 2;
    let mut rec = Recorder::default();
    let out = run_chain(&model, &req, &mut rec).unwrap();
    assert!(rec.tokens.is_empty());
    assert_eq!(rec.levels.len(), 3);
    for grids in &out {
        assert_eq!(grids, &vec![x0.clone(); 2]);
    }
}

#[test]
fn prefill_equals_token_by_token_forcing() {
    for case in ["uncond_geometric", "class_custom"] {
        let model = load(case);
        let x0 = grid(11, 64, 40);
        // Known runs of various lengths, at the start, in the middle and at the end.
        let known = mask(&x0, |i| {
            i < 6 || (20..31).contains(&i) || i == 40 || i >= 58
        });
        let mut req = ChainRequest::new(&model.card);
        if case == "class_custom" {
            req.condition = Condition::Class(5);
        }
        req.known = Some(known);
        req.candidates = 2;
        req.seed = 1234;
        req.chains = vec![2; model.card.levels()];
        let fast = run_chain(&model, &req, &mut Silent).unwrap();
        let slow = run_chain_with(
            &model,
            &req,
            &mut Silent,
            &ChainOptions {
                prefill_known: false,
            },
        )
        .unwrap();
        assert_eq!(fast, slow, "{case}");
    }
}

/// The official algorithm for one stage, one candidate: recompute the whole network over the
/// prefix at every position (no cache), add the guide, post-process, draw.
fn reference_stage(
    model: &Model,
    req: &ChainRequest,
    t: usize,
    x_t: &[u32],
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Vec<u32> {
    let known = req.known.clone().unwrap_or_else(|| vec![None; 64]);
    let t_max = model.card.levels();
    let mut y: Vec<u32> = Vec::new();
    for j in 0..64 {
        // Logits row j from the sequence so far (the unused last token is a placeholder).
        let mut probe = y.clone();
        probe.push(0);
        let rows = teacher_forced(model, t, &req.condition, x_t, &probe);
        let apply_temperature = t == t_max || req.encdec_temperature;
        let probs =
            sampler::distribution_guided(&rows[j], &req.levels[t - 1], apply_temperature, known[j]);
        let tok = match known[j] {
            // The one-hot guide leaves no choice; the pipeline consumes no random number here.
            Some(k) => {
                assert_eq!(probs[k as usize], 1.0);
                k
            }
            None => sampler::draw(&probs, rng),
        };
        y.push(tok);
    }
    y
}

#[test]
fn matches_a_reference_implementation_of_the_official_sampler() {
    let model = load("uncond_geometric");
    let x0 = grid(12, 64, 40);
    let x_in = grid(13, 64, 40);
    let mut req = ChainRequest::new(&model.card);
    req.known = Some(mask(&x0, |i| (10..30).contains(&i) || i % 7 == 0));
    req.levels = vec![
        LevelParams {
            temperature: 0.8,
            top_k: Some(12),
            top_p: Some(0.9),
        };
        3
    ];
    req.encdec_temperature = false;
    req.seed = 77;
    req.candidates = 2;
    for level in [3, 1] {
        req.start = Some(Start {
            level,
            grids: vec![x_in.clone()],
        });
        req.chains = vec![1; 3];
        let out = run_chain(&model, &req, &mut Silent).unwrap();
        for (i, got) in out[0].iter().enumerate() {
            let mut rng = candidate_rng(req.seed, i);
            let expect = reference_stage(&model, &req, level, &x_in, &mut rng);
            assert_eq!(got, &expect, "stage {level}, candidate {i}");
        }
    }
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let model = load("uncond_geometric");
    let base = ChainRequest::new(&model.card);
    assert!(base.validate(&model.card).is_ok());
    let x = grid(1, 64, 40);
    let mut cases: Vec<ChainRequest> = Vec::new();
    let mut r = base.clone();
    r.candidates = 0;
    cases.push(r);
    let mut r = base.clone();
    r.levels.pop();
    cases.push(r);
    let mut r = base.clone();
    r.levels[1].top_k = Some(0);
    cases.push(r);
    let mut r = base.clone();
    r.levels[2].temperature = 0.0;
    cases.push(r);
    let mut r = base.clone();
    r.levels[0].top_p = Some(1.5);
    cases.push(r);
    let mut r = base.clone();
    r.chains = vec![1, 0, 1];
    cases.push(r);
    let mut r = base.clone();
    r.chains = vec![1, 1];
    cases.push(r);
    let mut r = base.clone();
    r.known = Some(vec![None; 63]);
    cases.push(r);
    let mut r = base.clone();
    r.known = Some(mask(&vec![40; 64], |i| i == 3));
    cases.push(r);
    let mut r = base.clone();
    r.condition = Condition::Class(1);
    cases.push(r);
    let mut r = base.clone();
    r.guidance_scale = f32::NAN;
    cases.push(r);
    let mut r = base.clone();
    r.start = Some(Start {
        level: 4,
        grids: vec![x.clone()],
    });
    cases.push(r);
    let mut r = base.clone();
    r.start = Some(Start {
        level: 2,
        grids: vec![x[..60].to_vec()],
    });
    cases.push(r);
    let mut r = base.clone();
    r.candidates = 3;
    r.start = Some(Start {
        level: 2,
        grids: vec![x.clone(), x.clone()],
    });
    cases.push(r);
    let mut r = base.clone();
    r.start = Some(Start {
        level: 2,
        grids: vec![vec![99; 64]],
    });
    cases.push(r);
    let mut r = base.clone();
    r.start = Some(Start {
        level: 0,
        grids: vec![x.clone()],
    });
    cases.push(r);
    for (i, r) in cases.iter().enumerate() {
        assert!(
            matches!(r.validate(&model.card), Err(Error::Input(_))),
            "case {i}"
        );
        assert!(
            matches!(run_chain(&model, r, &mut Silent), Err(Error::Input(_))),
            "case {i}"
        );
    }
    // Guidance on an unconditional model guides towards the same (empty) condition: a no-op.
    let mut r = base.clone();
    r.guidance_scale = 2.0;
    assert_eq!(
        run_chain(&model, &r, &mut Silent).unwrap(),
        run_chain(&model, &base, &mut Silent).unwrap()
    );
}

#[test]
fn a_model_from_networks_in_memory_samples_like_the_loaded_one() {
    let source = ModelSource::open(format!("{GOLDEN}/class_custom")).unwrap();
    let opts = LoadOptions::default();
    let loaded = source.load(&opts).unwrap();
    let stages: Vec<Stage> = (1..=2)
        .map(|t| source.load_stage(t, &opts).unwrap())
        .collect();
    let vqgan = source.load_vqgan(&opts).unwrap();
    let built = Model::from_networks(source.card().clone(), vqgan, stages, Device::Cpu).unwrap();
    let mut req = ChainRequest::new(&loaded.card);
    req.condition = Condition::Class(4);
    req.candidates = 3;
    req.seed = 11;
    let a = run_chain(&loaded, &req, &mut Silent).unwrap();
    let b = run_chain(&built, &req, &mut Silent).unwrap();
    assert_eq!(a, b);
    // A network per level, no more, no fewer.
    let one = vec![source.load_stage(1, &opts).unwrap()];
    let vqgan = source.load_vqgan(&opts).unwrap();
    let e = Model::from_networks(source.card().clone(), vqgan, one, Device::Cpu);
    assert!(matches!(e, Err(Error::Input(_))));
}

#[test]
fn recorded_confidence_is_the_distribution_each_token_was_drawn_from() {
    for case in ["uncond_geometric", "class_custom"] {
        let model = load(case);
        let t_max = model.card.levels();
        let mut req = ChainRequest::new(&model.card);
        if case == "class_custom" {
            req.condition = Condition::Class(17);
        }
        req.candidates = 2;
        req.seed = 5;
        let params = LevelParams {
            temperature: 0.8,
            top_k: Some(20),
            top_p: Some(0.9),
        };
        req.levels = vec![params; t_max];
        let x0 = grid(3, 64, model.card.n_tokens);
        let known = mask(&x0, |i| i < 24);
        req.known = Some(known.clone());
        let mut rec = Recorder::with_known(&known);
        run_chain(&model, &req, &mut rec).unwrap();
        assert_eq!(rec.confidence.len(), t_max);
        let mut inputs: Vec<Vec<u32>> = vec![vec![0; 64]; 2];
        let mut checked = 0;
        for (i, t) in (1..=t_max).rev().enumerate() {
            let (level, grids) = &rec.levels[i];
            assert_eq!(*level, t);
            for c in 0..2 {
                let (y, conf) = (&grids[c], &rec.confidence[i][c]);
                let rows = teacher_forced(&model, t, &req.condition, &inputs[c], y);
                for j in 0..64 {
                    if known[j].is_some() {
                        assert!(!conf.sampled[j] && conf.prob[j] == 1.0 && conf.entropy[j] == 0.0);
                        continue;
                    }
                    let probs = sampler::distribution(&rows[j], &params, true);
                    let want = probs[y[j] as usize];
                    assert!(conf.sampled[j]);
                    assert!(
                        (conf.prob[j] - want).abs() < 1e-4,
                        "{case} level {t} candidate {c} position {j}: {} vs {want}",
                        conf.prob[j]
                    );
                    assert!((conf.entropy[j] - entropy_bits(&probs)).abs() < 1e-3);
                    checked += 1;
                }
                let mean = conf.mean_prob().unwrap();
                assert!(mean > 0.0 && mean <= 1.0);
                let below = conf.below(mean);
                assert!(below.iter().zip(&known).all(|(b, k)| !(*b && k.is_some())));
                assert!(below.iter().any(|b| *b), "some token is below the mean");
            }
            inputs = grids.clone();
        }
        assert_eq!(checked, t_max * 2 * 40);
    }
}

#[test]
fn entropy_in_bits() {
    assert_eq!(entropy_bits(&[1.0, 0.0]), 0.0);
    assert!((entropy_bits(&[0.5, 0.5]) - 1.0).abs() < 1e-6);
    assert!((entropy_bits(&[0.25; 4]) - 2.0).abs() < 1e-6);
    let c = Confidence::certain(3);
    assert_eq!(c.mean_prob(), None);
    assert_eq!(c.below(2.0), vec![false; 3]);
}

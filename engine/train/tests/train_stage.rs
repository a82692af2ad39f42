//! Training ImageBART stages: the forward chain, the training forward against the inference
//! forward, learning, checkpoint/resume, and export into a model folder the pipeline samples.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tessera_engine::loader::card::{CARD_FILE, Condition, Conditioning, Network};
use tessera_engine::loader::import::{ImportOptions, import};
use tessera_engine::loader::{LoadOptions, Model, ModelSource, Stage, build_network};
use tessera_engine::pipeline::{ChainRequest, Silent, run_chain};
use tessera_engine::schedule::Schedule;
use tessera_train::stage::{
    NetworkSize, StageBatch, StageTrainConfig, forward_chain, input_vocab, stage_network,
    stage_nll, train_stage,
};

const TINY: NetworkSize = NetworkSize {
    dim: 32,
    heads: 2,
    dim_head: 16,
    enc_depth: 1,
    dec_depth: 1,
    gpt_layers: 2,
};

/// A tiny stage config for level t of T with K codes and P positions.
fn tiny(
    t: usize,
    levels: usize,
    k: usize,
    p: usize,
    conditioning: Conditioning,
) -> StageTrainConfig {
    let vocab = input_vocab(k, levels, &conditioning, 0);
    let prefix = 1 + conditioning.len();
    StageTrainConfig {
        level: t,
        levels,
        network: stage_network(t, levels, k, p, prefix, vocab, &TINY),
        conditioning,
        steps: 30,
        batch: 8,
        lr: 3e-3,
        warmup: 3,
        ckpt_every: 10,
        ema_decay: 0.99,
        ..StageTrainConfig::default()
    }
}

/// Learnable data: each grid is a shifted ramp `(i + shift) mod K` with one of 4 shifts, its
/// class the shift. Depends on the step only.
fn pattern(step: usize, batch: usize, k: usize, p: usize) -> StageBatch {
    let mut rng = ChaCha8Rng::seed_from_u64(1000 + step as u64);
    let mut x0 = Vec::new();
    let mut conds = Vec::new();
    for _ in 0..batch {
        let shift = rng.random_range(0..4usize);
        x0.push((0..p).map(|i| ((i + 3 * shift) % k) as u32).collect());
        conds.push(Condition::Class(shift));
    }
    StageBatch { x0, conds }
}

fn mean(v: &[f32]) -> f32 {
    v.iter().sum::<f32>() / v.len() as f32
}

fn train(
    cfg: &StageTrainConfig,
    schedule: &Schedule,
    dir: &std::path::Path,
    stop_at: Option<usize>,
    losses: &mut Vec<f32>,
) -> tessera_train::stage::TrainedStage {
    let (k, p, b) = (cfg.n_tokens(), positions(cfg), cfg.batch);
    let class = !matches!(cfg.conditioning, Conditioning::None);
    let mut data = |step: usize| {
        let mut batch = pattern(step, b, k, p);
        if !class {
            batch.conds.clear();
        }
        Ok(batch)
    };
    let mut progress = |pr: &tessera_train::stage::StageProgress| {
        losses.push(pr.loss);
        assert!(pr.tokens_per_s > 0.0 && pr.eta_s >= 0.0);
        stop_at != Some(pr.step)
    };
    train_stage(cfg, schedule, &mut data, dir, &mut progress).unwrap()
}

fn positions(cfg: &StageTrainConfig) -> usize {
    match &cfg.network {
        Network::XTransformer { config, .. } => config.dec_max_seq_len,
        Network::Gpt { config } => config.block_size + 1 - (1 + cfg.conditioning.len()),
    }
}

#[test]
fn chain_matches_the_marginal() {
    let (k, p, n) = (16u32, 64usize, 200usize);
    let s = Schedule::geometric(4);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let x0: Vec<Vec<u32>> = (0..n)
        .map(|_| (0..p).map(|_| rng.random_range(0..k)).collect())
        .collect();
    for t in 1..=4 {
        let (prev, xt) = forward_chain(&x0, t, &s, k, &mut rng);
        let total = (n * p) as f64;
        let same = |a: &[Vec<u32>]| {
            a.iter()
                .flatten()
                .zip(x0.iter().flatten())
                .filter(|(a, b)| a == b)
                .count() as f64
                / total
        };
        let want = |t: usize| {
            let ab = s.alphacum[t] as f64;
            ab + (1.0 - ab) / k as f64
        };
        for (frac, lvl) in [(same(&xt), t), (same(&prev), t - 1)] {
            let expect = want(lvl);
            let sigma = (expect * (1.0 - expect) / total).sqrt().max(1e-9);
            assert!(
                (frac - expect).abs() < 5.0 * sigma + 1e-12,
                "level {lvl}: unchanged fraction {frac}, expected {expect}"
            );
        }
    }
}

/// Random weights on a VarMap: the network built on it (tracking gradients) and the same
/// weights as plain tensors (the inference path).
fn twin(network: &Network) -> (VarMap, Stage, Stage) {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    build_network(network, vb, &[]).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut plain = HashMap::new();
    for (name, var) in vm.data().lock().unwrap().iter() {
        let v: Vec<f32> = (0..var.elem_count())
            .map(|_| rng.random_range(-0.3f32..0.3))
            .collect();
        let t = Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap();
        var.set(&t).unwrap();
        plain.insert(name.clone(), t);
    }
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let train = build_network(network, vb, &[]).unwrap();
    let vb = VarBuilder::from_tensors(plain, DType::F32, &Device::Cpu);
    (vm, train, build_network(network, vb, &[]).unwrap())
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn ids(rows: usize, len: usize, vocab: u32, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<u32> = (0..rows * len)
        .map(|_| rng.random_range(0..vocab))
        .collect();
    Tensor::from_vec(v, (rows, len), &Device::Cpu).unwrap()
}

#[test]
fn training_forward_equals_inference_forward() {
    let (k, p) = (24, 12);
    let cond = Conditioning::Class {
        n_classes: 30,
        class_names: vec![],
        null_class: Some(30),
    };
    let vocab = input_vocab(k, 3, &cond, 0);
    for t in [1, 3] {
        let net = stage_network(t, 3, k, p, 2, vocab, &TINY);
        let (_vm, train, infer) = twin(&net);
        match (&train, &infer) {
            (Stage::EncDec(a), Stage::EncDec(b)) => {
                let src = ids(3, 2 + p, vocab as u32, 1);
                let tgt = ids(3, p, k as u32, 2);
                let la = a.forward_train(&src, &tgt).unwrap();
                assert!(la.track_op(), "the training forward must track gradients");
                let lb = b.forward(&src, &tgt).unwrap();
                let d = max_diff(&la, &lb);
                assert!(d < 1e-4, "enc-dec logits differ by {d}");
            }
            (Stage::Gpt(a), Stage::Gpt(b)) => {
                let idx = ids(3, 2 + p - 1, vocab as u32, 3);
                let la = a.forward_train(&idx).unwrap();
                assert!(la.track_op());
                let d = max_diff(&la, &b.forward(&idx).unwrap());
                assert!(d < 1e-4, "gpt logits differ by {d}");
            }
            _ => panic!("network kinds differ"),
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    // Weights behind each custom kernel (LayerNorm, softmax, GELU) and the embeddings, for
    // both network kinds; the loss is a fixed random projection of the logits.
    let (k, p) = (10, 6);
    let vocab = input_vocab(k, 2, &Conditioning::None, 0);
    for t in [1, 2] {
        let net = stage_network(t, 2, k, p, 1, vocab, &TINY);
        let (vm, _, _) = twin(&net);
        let src = ids(2, 1 + p, k as u32, 4);
        let tgt = ids(2, p, k as u32, 5);
        let idx = ids(2, p, k as u32, 6);
        let proj = {
            let mut rng = ChaCha8Rng::seed_from_u64(8);
            let v: Vec<f32> = (0..2 * p * k)
                .map(|_| rng.random_range(-1f32..1.0))
                .collect();
            Tensor::from_vec(v, (2, p, k), &Device::Cpu).unwrap()
        };
        let loss = || {
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
            let logits = match build_network(&net, vb, &[]).unwrap() {
                Stage::EncDec(n) => n.forward_train(&src, &tgt).unwrap(),
                Stage::Gpt(n) => n.forward_train(&idx).unwrap(),
            };
            let soft = candle_nn::ops::softmax(&logits, candle_core::D::Minus1).unwrap();
            (soft * &proj).unwrap().sum_all().unwrap()
        };
        let grads = loss().backward().unwrap();
        let data = vm.data().lock().unwrap().clone();
        let mut names: Vec<&String> = data
            .keys()
            .filter(|n| {
                [
                    "norm", "ln", "to_q", "to_k", "to_v", "query", "key", "value", "net.0.0",
                    "mlp.0", "emb",
                ]
                .iter()
                .any(|w| n.contains(w))
            })
            .collect();
        names.sort();
        assert!(names.len() > 5);
        for name in names {
            let var = &data[name];
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let w0 = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            // The element with the largest gradient, so the difference is well above rounding.
            let (i, gi) = g.iter().copied().enumerate().fold((0, 0f32), |a, (i, v)| {
                if v.abs() > a.1.abs() { (i, v) } else { a }
            });
            let h = 1e-2f32;
            let at = |delta: f32| {
                let mut w = w0.clone();
                w[i] += delta;
                var.set(&Tensor::from_vec(w, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                loss().to_scalar::<f32>().unwrap()
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            var.set(&Tensor::from_vec(w0, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
            assert!(
                (fd - gi).abs() <= 0.03 * gi.abs().max(1e-2),
                "stage {t} {name}[{i}]: backprop {gi}, finite difference {fd}"
            );
        }
    }
}

#[test]
fn loss_decreases_on_a_learnable_pattern() {
    // Little noise at level 1, so that x_1 (the GPT's target) is learnable too.
    let s = Schedule::from_alphacum(&[1.0, 0.9, 0.0]).unwrap();
    for t in [1, 2] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = tiny(t, 2, 16, 16, Conditioning::None);
        let mut losses = Vec::new();
        let trained = train(&cfg, &s, dir.path(), None, &mut losses);
        assert_eq!(trained.step, 30);
        let (first, last) = (mean(&losses[..5]), mean(&losses[25..]));
        assert!(
            last < 0.8 * first,
            "stage {t}: loss {first} → {last} ({losses:?})"
        );
        assert!(dir.path().join("metrics.jsonl").is_file());
        // The held-out NLL of the EMA weights is well below uniform (4 bits).
        let held: Vec<StageBatch> = (0..2)
            .map(|i| {
                let mut b = pattern(10_000 + i, 8, 16, 16);
                b.conds.clear();
                b
            })
            .collect();
        let bits = stage_nll(&trained.network(true).unwrap(), &cfg, &s, &held, 1).unwrap();
        assert!(bits < 3.5, "stage {t}: {bits} bits per token");
    }
}

#[test]
fn resume_equals_an_uninterrupted_run() {
    let s = Schedule::geometric(2);
    let cfg = StageTrainConfig {
        steps: 6,
        ckpt_every: 4,
        alpha_mix: 0.5,
        ..tiny(1, 2, 12, 8, Conditioning::None)
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let whole = train(&cfg, &s, a.path(), None, &mut Vec::new());
    let mut first = Vec::new();
    let part = train(&cfg, &s, b.path(), Some(3), &mut first);
    assert_eq!(part.step, 3);
    let mut rest = Vec::new();
    let resumed = train(&cfg, &s, b.path(), None, &mut rest);
    assert_eq!(resumed.step, 6);
    assert_eq!(rest.len(), 3, "the resumed run continues at step 4");
    for ema in [false, true] {
        for ((n1, t1), (n2, t2)) in whole.tensors(ema).iter().zip(resumed.tensors(ema)) {
            assert_eq!(n1, n2);
            let (v1, v2) = (
                t1.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                t2.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert_eq!(v1, v2, "{n1} (ema {ema}) differs after resuming");
        }
    }
    let lines = std::fs::read_to_string(b.path().join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 6);
}

/// A 4-class model in `out/model`: the golden `class_custom` release's VQGAN and schedule with
/// tiny stages trained on [`pattern`], each level's config set by `adjust`.
fn class_model(out: &std::path::Path, adjust: impl Fn(&mut StageTrainConfig)) -> Model {
    let folder = out.join("model");
    let opts = ImportOptions {
        dtype: DType::F32,
        ..ImportOptions::default()
    };
    let mut card = import(
        &golden().join("class_custom/sampling.yaml"),
        &folder,
        &opts,
        &mut |_| {},
    )
    .unwrap();
    let (k, p, levels) = (card.n_tokens, card.n_positions(), card.levels());
    card.conditioning = Conditioning::Class {
        n_classes: 4,
        class_names: vec![],
        null_class: Some(4),
    };
    let schedule = card.schedule.clone();
    let mut stages = Vec::new();
    for t in 1..=levels {
        let mut cfg = tiny(t, levels, k, p, card.conditioning.clone());
        adjust(&mut cfg);
        let dir = out.join(format!("train{t}"));
        let trained = train(&cfg, &schedule, &dir, None, &mut Vec::new());
        stages.push(trained.export(&folder).unwrap());
    }
    card.stages = stages;
    std::fs::write(
        folder.join(CARD_FILE),
        serde_json::to_string_pretty(&card).unwrap(),
    )
    .unwrap();
    ModelSource::open(&folder)
        .unwrap()
        .load(&LoadOptions::default())
        .unwrap()
}

#[test]
fn exported_stages_load_and_sample_through_the_pipeline() {
    let out = tempfile::tempdir().unwrap();
    let model = class_model(out.path(), |cfg| {
        cfg.steps = 4;
        cfg.batch = 4;
        cfg.cond_drop = 0.5;
    });
    let (k, p) = (model.card.n_tokens, model.card.n_positions());
    let mut req = ChainRequest::new(&model.card);
    req.condition = Condition::Class(2);
    req.guidance_scale = 2.0;
    req.candidates = 2;
    let grids = run_chain(&model, &req, &mut Silent).unwrap();
    let x0 = grids.last().unwrap();
    assert_eq!(x0.len(), 2);
    assert!(
        x0.iter()
            .all(|g| g.len() == p && g.iter().all(|t| (*t as usize) < k))
    );
}

#[test]
fn bad_settings_are_errors() {
    let s = Schedule::geometric(2);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny(1, 2, 8, 8, Conditioning::None);
    cfg.level = 2; // an encoder–decoder at the last level
    let mut data = |_: usize| Ok(pattern(0, 2, 8, 8));
    assert!(train_stage(&cfg, &s, &mut data, dir.path(), &mut |_| true).is_err());
    let cfg = tiny(1, 2, 8, 8, Conditioning::None);
    let mut bad = |_: usize| {
        Ok(StageBatch {
            x0: vec![vec![9; 8]],
            conds: vec![],
        })
    };
    assert!(train_stage(&cfg, &s, &mut bad, dir.path(), &mut |_| true).is_err());
}

/// Training throughput of candidate default-model sizes (K = 512, 16×16 tokens, batch 16,
/// text prefix of 16 tokens). Run with
/// `cargo test --release --test train_stage -- --ignored --nocapture throughput`;
/// `TESSERA_BENCH_STEPS` sets the timed steps per config (default 3); `TESSERA_BENCH_K`,
/// `TESSERA_BENCH_LEVELS` and `TESSERA_BENCH_ALPHA` the codes, levels and loss mix (default
/// 512, 3, 0; the default model's are 1024, 2, 1).
#[test]
#[ignore]
fn throughput() {
    fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    }
    // As `tessera train` runs (app/src/main.rs).
    tessera_engine::heap::keep_freed_memory();
    let steps: usize = env("TESSERA_BENCH_STEPS", 3);
    let (k, levels, alpha_mix): (usize, usize, f32) = (
        env("TESSERA_BENCH_K", 512),
        env("TESSERA_BENCH_LEVELS", 3),
        env("TESSERA_BENCH_ALPHA", 0.0),
    );
    let (p, batch) = (256, 16);
    let cond = Conditioning::Text {
        tokenizer: "tokenizer.json".into(),
        context_len: 16,
        token_offset: k,
        pad_id: 0,
        class_names: vec![],
    };
    let vocab = input_vocab(k, levels, &cond, 1000);
    let s = Schedule::geometric(levels);
    // `TESSERA_BENCH_SIZE=dim,heads,enc,dec,gpt` measures one size only.
    let sizes: Vec<(usize, usize, usize, usize, usize)> = match std::env::var("TESSERA_BENCH_SIZE")
    {
        Ok(v) => {
            let n: Vec<usize> = v.split(',').filter_map(|x| x.trim().parse().ok()).collect();
            assert_eq!(n.len(), 5, "TESSERA_BENCH_SIZE=dim,heads,enc,dec,gpt");
            vec![(n[0], n[1], n[2], n[3], n[4])]
        }
        Err(_) => vec![(256, 8, 4, 4, 8), (192, 6, 3, 3, 6), (128, 4, 2, 2, 4)],
    };
    for (dim, heads, enc, dec, gpt) in sizes {
        let size = NetworkSize {
            dim,
            heads,
            dim_head: dim / heads,
            enc_depth: enc,
            dec_depth: dec,
            gpt_layers: gpt,
        };
        for t in [1, levels] {
            let cfg = StageTrainConfig {
                level: t,
                levels,
                network: stage_network(t, levels, k, p, 17, vocab, &size),
                conditioning: cond.clone(),
                steps: steps + 1,
                batch,
                ckpt_every: 1_000_000,
                alpha_mix,
                ..StageTrainConfig::default()
            };
            let dir = tempfile::tempdir().unwrap();
            let mut data = |step: usize| {
                let mut rng = ChaCha8Rng::seed_from_u64(step as u64);
                Ok(StageBatch {
                    x0: (0..batch)
                        .map(|_| (0..p).map(|_| rng.random_range(0..k as u32)).collect())
                        .collect(),
                    conds: (0..batch)
                        .map(|_| {
                            Condition::Text((0..8).map(|_| rng.random_range(2..1000)).collect())
                        })
                        .collect(),
                })
            };
            let mut times = Vec::new();
            let mut last = std::time::Instant::now();
            let trained = train_stage(&cfg, &s, &mut data, dir.path(), &mut |_| {
                times.push(last.elapsed().as_secs_f64());
                last = std::time::Instant::now();
                true
            })
            .unwrap();
            let per_step = times[1..].iter().sum::<f64>() / (times.len() - 1) as f64;
            println!(
                "dim {dim} heads {heads} enc/dec {enc}/{dec} gpt {gpt} | stage {} ({}): \
                 {:.2} M params, {:.2} s/step, {:.0} tokens/s (batch {batch}×{p})",
                t,
                if t == levels { "gpt" } else { "enc-dec" },
                trained.parameters() as f64 / 1e6,
                per_step,
                (batch * p) as f64 / per_step
            );
        }
    }
}

#[test]
fn trained_class_condition_steers_sampling() {
    // Each grid is a function of its class alone: a chain trained on it must draw the grid of
    // the requested class — the mechanism class guidance rests on. The context soon reveals
    // the class too, so the GPT level learns to read the class token late (measured with both
    // levels at 150 steps: 0 of 16 grids follow their class; at 600: 15 of 16).
    let out = tempfile::tempdir().unwrap();
    let model = class_model(out.path(), |cfg| {
        // Level 1 maps a 70%-clean ramp to the clean one, learnt sooner.
        cfg.steps = if cfg.level == cfg.levels { 600 } else { 400 };
        cfg.cond_drop = 0.2;
    });
    let (k, p) = (model.card.n_tokens, model.card.n_positions());
    for scale in [1.0f32, 3.0] {
        let mut hits = Vec::new();
        for c in 0..4 {
            let mut req = ChainRequest::new(&model.card);
            req.condition = Condition::Class(c);
            req.guidance_scale = scale;
            req.candidates = 4;
            req.seed = 7 + c as u64;
            let grids = run_chain(&model, &req, &mut Silent).unwrap();
            let want: Vec<u32> = (0..p).map(|i| ((i + 3 * c) % k) as u32).collect();
            for g in grids.last().unwrap() {
                hits.push(g.iter().zip(&want).filter(|(a, b)| a == b).count());
            }
        }
        // Chance is 4 of 16 (a ramp of another class matches almost nowhere).
        let whole = hits.iter().filter(|&&h| h * 10 >= p * 9).count();
        assert!(
            whole >= 12,
            "scale {scale}: {whole} of 16 grids follow their class ({hits:?} of {p} tokens)"
        );
    }
}

/// `../shared/golden` beside the checkout (CI has it too).
fn golden() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden")
}

//! Training one stage of the reverse chain with the official objective (imagebart.md §1.4).
//!
//! Stage t learns p(x_{t−1} | x_t, condition). For every batch the forward chain
//! x_0 → … → x_t is drawn afresh ([`forward_chain`]); the loss is
//! `α·KL(q(x_{t−1}|x_t,x_0) ‖ p) + (1 − α)·CE(p, x_{t−1})` averaged over tokens.
//! Sequences are laid out exactly as the pipeline runs them (§3.1, `tessera_engine::pipeline`):
//! - t < T (encoder–decoder): `src = prefix ++ x_t`, `tgt = [SOS = 0] ++ x_{t−1}[..P−1]`,
//!   logits row i predicts token i of x_{t−1};
//! - t = T (GPT): `idx = prefix ++ x_{T−1}[..P−1]`, logits rows `prefix_len−1 ..` predict
//!   x_{T−1} (x_T is never seen);
//!
//! with `prefix = [t, condition…]` from [`Conditioning::prefix`]. Each condition is replaced by
//! the empty one with probability `cond_drop`, so the model also learns the unconditional
//! distribution that classifier-free guidance needs.
//!
//! Weights live in a `candle_nn::VarMap`. The networks precompute fused and transposed copies
//! of their weights, so the network is rebuilt from the variables at every step (cheap; the
//! copies stay in the autograd graph). Checkpoints (weights, EMA, Adam moments, step) are
//! written atomically to `<dir>/checkpoint.safetensors` and picked up again by the next call;
//! the random numbers of step n depend on the seed and n only, so a resumed run equals an
//! uninterrupted one.

mod checkpoint;
mod diffusion;
mod network;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use diffusion::{RowTarget, SoftTargetLoss, forward_chain, target_rows, target_weights};
pub use network::{NetworkSize, input_vocab, stage_network};

use checkpoint::{resume, save, trim_metrics};

use tessera_engine::loader::card::{Condition, Conditioning, Network, StageCard};
use tessera_engine::loader::{Stage, build_network};
use tessera_engine::schedule::Schedule;
use tessera_engine::{Error, Result};

use super::optim::{self, AdamW, AdamWConfig, Ema};

/// Decoder start token of the encoder–decoder stages (`sos_token`).
const SOS: u32 = 0;
/// File name of the resumable checkpoint inside the training folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// File name of the metrics log (one JSON object per step) inside the training folder.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// Everything that defines a stage's training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StageTrainConfig {
    /// The level t this stage undoes (1..=levels).
    pub level: usize,
    /// T, the number of levels of the model.
    pub levels: usize,
    /// The network ([`stage_network`]); the GPT for t = T, a plain encoder–decoder otherwise.
    pub network: Network,
    /// What the prefix after the scale token holds (the model card's).
    pub conditioning: Conditioning,
    /// Optimiser steps in all (a resumed run continues to this count).
    pub steps: usize,
    /// Grids per step (the data source should deliver this many).
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the end of the cosine, as a fraction of `lr`.
    pub final_lr_frac: f64,
    /// Linear warm-up steps.
    pub warmup: usize,
    /// AdamW settings (betas 0.9, 0.95 as the official configs).
    pub adamw: AdamWConfig,
    /// Clip gradients to this global L2 norm (`None`: no clipping).
    pub grad_clip: Option<f64>,
    /// α of the loss: 0 = cross-entropy to x_{t−1} only (official for stage 1), 1 = KL to the
    /// posterior only (official for most later stages).
    pub alpha_mix: f32,
    /// Probability of replacing a batch row's condition by the empty one.
    pub cond_drop: f32,
    /// EMA decay (official 0.9999, with the warm-up `(1 + n)/(10 + n)`).
    pub ema_decay: f64,
    /// Write a checkpoint every this many steps (and at the end).
    pub ckpt_every: usize,
    /// Seed of the initial weights and of every step's chain and condition drop.
    pub seed: u64,
    /// Standard deviation of the initial weight matrices and embeddings (minGPT: 0.02).
    pub init_std: f64,
}

impl Default for StageTrainConfig {
    fn default() -> Self {
        let (levels, k, p) = (3, 512, 256);
        let conditioning = Conditioning::None;
        let vocab = input_vocab(k, levels, &conditioning, 0);
        Self {
            level: 1,
            levels,
            network: stage_network(1, levels, k, p, 1, vocab, &NetworkSize::default()),
            conditioning,
            steps: 1000,
            batch: 16,
            lr: 5e-4,
            final_lr_frac: 0.1,
            warmup: 100,
            adamw: AdamWConfig::default(),
            grad_clip: Some(1.0),
            alpha_mix: 0.0,
            cond_drop: 0.1,
            ema_decay: 0.9999,
            ckpt_every: 200,
            seed: 0,
            init_std: 0.02,
        }
    }
}

impl StageTrainConfig {
    /// K, the number of image codes the stage predicts.
    pub fn n_tokens(&self) -> usize {
        match &self.network {
            Network::XTransformer { config, .. } => config.dec_num_tokens,
            Network::Gpt { config } => config.vocab_size,
        }
    }

    /// Checks the settings against each other; the message says what is wrong.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Input(m));
        if self.level == 0 || self.level > self.levels {
            return bad(format!(
                "level {} is not in 1..={}",
                self.level, self.levels
            ));
        }
        match (&self.network, self.level == self.levels) {
            (Network::Gpt { .. }, true) => {}
            (
                Network::XTransformer {
                    residual_scaled, ..
                },
                false,
            ) => {
                if *residual_scaled {
                    return bad("training residual-scaled stages is not supported".into());
                }
            }
            (Network::Gpt { .. }, false) => {
                return bad(format!("level {} < T needs an encoder–decoder", self.level));
            }
            (Network::XTransformer { .. }, true) => {
                return bad("the last level T needs a GPT".into());
            }
        }
        if self.steps == 0 || self.batch == 0 {
            return bad("steps and batch must be positive".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("learning rate must be > 0, got {}", self.lr));
        }
        if !(0.0..=1.0).contains(&self.alpha_mix) || !(0.0..=1.0).contains(&self.cond_drop) {
            return bad("alpha_mix and cond_drop must lie in [0, 1]".into());
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad(format!(
                "ema_decay must lie in [0, 1), got {}",
                self.ema_decay
            ));
        }
        Ok(())
    }
}

/// One batch of training data: x_0 grids (raster order, tokens in `0..K`, all the same
/// length) and one condition per grid (empty = all [`Condition::None`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageBatch {
    /// x_0 per grid.
    pub x0: Vec<Vec<u32>>,
    /// The condition of each grid, or empty.
    pub conds: Vec<Condition>,
}

/// What the trainer reports after every step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StageProgress {
    /// Steps done (1-based).
    pub step: usize,
    /// Steps in all.
    pub steps: usize,
    /// Loss of this step (`α·KL + (1 − α)·CE`, nats per token).
    pub loss: f32,
    /// Cross-entropy part of this step, nats per token.
    pub ce: f32,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Predicted tokens per second over this run so far.
    pub tokens_per_s: f64,
    /// Estimated seconds left.
    pub eta_s: f64,
}

/// A trained stage: its settings, raw and EMA weights.
#[derive(Debug, Clone)]
pub struct TrainedStage {
    /// The settings it was trained with.
    pub config: StageTrainConfig,
    /// Steps done.
    pub step: usize,
    /// Loss of the last step.
    pub last_loss: f32,
    weights: Vec<(String, Tensor)>,
    ema: Vec<(String, Tensor)>,
}

impl TrainedStage {
    /// Number of parameters.
    pub fn parameters(&self) -> usize {
        self.weights.iter().map(|(_, t)| t.elem_count()).sum()
    }

    /// Named weights: the EMA (what is exported and sampled) or the raw ones.
    pub fn tensors(&self, ema: bool) -> &[(String, Tensor)] {
        if ema { &self.ema } else { &self.weights }
    }

    /// Builds the inference network from the EMA (`ema`) or raw weights.
    pub fn network(&self, ema: bool) -> Result<Stage> {
        let map: HashMap<String, Tensor> = self.tensors(ema).iter().cloned().collect();
        let vb = VarBuilder::from_tensors(map, DType::F32, &Device::Cpu);
        Ok(build_network(&self.config.network, vb, &[])?)
    }

    /// Writes the EMA weights to `<dir>/stage{t}.safetensors` under the names the loader
    /// reads (official dotted module paths) and returns the stage's card entry.
    pub fn export(&self, dir: &Path) -> Result<StageCard> {
        let t = self.config.level;
        let file = format!("stage{t}.safetensors");
        let path = dir.join(&file);
        let tmp = dir.join(format!("{file}.tmp"));
        let map: HashMap<String, Tensor> = self.ema.iter().cloned().collect();
        candle_core::safetensors::save(&map, &tmp)
            .map_err(|e| Error::io(&tmp, std::io::Error::other(e)))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        Ok(StageCard {
            level: t,
            network: self.config.network.clone(),
            weights: file,
            parameters: self.parameters(),
        })
    }
}

/// The random generator of step `step`: ChaCha8 keyed by the seed, one stream per step.
fn step_rng(seed: u64, step: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(step as u64 + 1);
    rng
}

/// Standard normal draw (Box–Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Sets the initial weights: LayerNorm weights 1, biases 0, matrices and embeddings
/// N(0, std²) — in name order from the seed's stream 0.
fn init_weights(varmap: &VarMap, seed: u64, std: f64) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (name, var) in optim::sorted_vars(varmap)? {
        let n = var.elem_count();
        let values: Vec<f32> = if var.rank() == 1 {
            let one = name.ends_with("weight");
            vec![if one { 1.0 } else { 0.0 }; n]
        } else {
            (0..n).map(|_| (normal(&mut rng) * std) as f32).collect()
        };
        var.set(&Tensor::from_vec(values, var.shape(), var.device())?)?;
    }
    Ok(())
}

/// Builds the network of `cfg` on the variables of `varmap` (creating them when missing).
fn build_on(varmap: &VarMap, network: &Network) -> Result<Stage> {
    let vb = VarBuilder::from_varmap(varmap, DType::F32, &Device::Cpu);
    Ok(build_network(network, vb, &[])?)
}

/// The prefix of every row: `[t, condition…]`.
fn prefixes(
    conditioning: &Conditioning,
    t: usize,
    levels: usize,
    conds: &[Condition],
    rows: usize,
) -> Result<Vec<Vec<u32>>> {
    (0..rows)
        .map(|r| {
            let c = conds.get(r).unwrap_or(&Condition::None);
            conditioning.prefix(t, levels, c).map_err(Error::Input)
        })
        .collect()
}

/// Teacher-forced logits `(B, P, K)` of the stage for targets `xprev` given `xt` (ignored by
/// the GPT) and the row prefixes. `train` selects the cache-free forward (needed for
/// gradients); otherwise the inference forward runs.
fn stage_logits(
    net: &Stage,
    prefixes: &[Vec<u32>],
    xprev: &[Vec<u32>],
    xt: &[Vec<u32>],
    train: bool,
) -> Result<Tensor> {
    let b = xprev.len();
    let p = xprev.first().map_or(0, Vec::len);
    let pl = prefixes.first().map_or(0, Vec::len);
    let dev = Device::Cpu;
    match net {
        Stage::EncDec(net) => {
            let src: Vec<u32> = (0..b)
                .flat_map(|r| prefixes[r].iter().chain(&xt[r]).copied())
                .collect();
            let tgt: Vec<u32> = (0..b)
                .flat_map(|r| std::iter::once(SOS).chain(xprev[r][..p - 1].iter().copied()))
                .collect();
            let src = Tensor::from_vec(src, (b, pl + p), &dev)?;
            let tgt = Tensor::from_vec(tgt, (b, p), &dev)?;
            Ok(if train {
                net.forward_train(&src, &tgt)?
            } else {
                net.forward(&src, &tgt)?
            })
        }
        Stage::Gpt(net) => {
            let idx: Vec<u32> = (0..b)
                .flat_map(|r| prefixes[r].iter().chain(&xprev[r][..p - 1]).copied())
                .collect();
            let idx = Tensor::from_vec(idx, (b, pl + p - 1), &dev)?;
            let logits = if train {
                net.forward_train(&idx)?
            } else {
                net.forward(&idx)?
            };
            Ok(logits.narrow(1, pl - 1, p)?.contiguous()?)
        }
    }
}

/// Checks a batch: rows of equal, non-zero length with tokens in `0..k`, conditions empty or
/// one per row.
fn check_batch(batch: &StageBatch, k: usize) -> Result<usize> {
    let p = batch.x0.first().map_or(0, Vec::len);
    if batch.x0.is_empty() || p < 2 {
        return Err(Error::Input(
            "a training batch needs at least one grid of at least 2 tokens".into(),
        ));
    }
    if batch.x0.iter().any(|g| g.len() != p) {
        return Err(Error::Input("grids of a batch differ in length".into()));
    }
    if let Some(tok) = batch.x0.iter().flatten().find(|t| **t as usize >= k) {
        return Err(Error::Input(format!("token {tok} is not in 0..{k}")));
    }
    if !batch.conds.is_empty() && batch.conds.len() != batch.x0.len() {
        return Err(Error::Input(format!(
            "{} conditions for {} grids",
            batch.conds.len(),
            batch.x0.len()
        )));
    }
    Ok(p)
}

/// One step's inputs and target: the chain, the dropped conditions, the loss weights.
struct StepData {
    prefixes: Vec<Vec<u32>>,
    xprev: Vec<Vec<u32>>,
    xt: Vec<Vec<u32>>,
    targets: Vec<RowTarget>,
    neg_entropy: f64,
}

impl StepData {
    /// The loss of this step's logits; `keep_grad` for a backward pass.
    fn loss(&self, keep_grad: bool) -> SoftTargetLoss {
        SoftTargetLoss::new(self.targets.clone(), self.xprev.concat(), keep_grad)
    }
}

/// Draws one step's chain and condition drop from `rng` and builds the loss weights.
fn step_data(
    cfg: &StageTrainConfig,
    schedule: &Schedule,
    batch: &StageBatch,
    rng: &mut ChaCha8Rng,
) -> Result<StepData> {
    let k = cfg.n_tokens();
    let (t, b) = (cfg.level, batch.x0.len());
    // Condition drop first, one draw per row, so the chain's draws do not depend on it.
    let conds: Vec<Condition> = (0..b)
        .map(|r| {
            let c = batch.conds.get(r).cloned().unwrap_or(Condition::None);
            let drop = rng.random::<f32>() < cfg.cond_drop;
            if drop { Condition::None } else { c }
        })
        .collect();
    let prefixes = prefixes(&cfg.conditioning, t, cfg.levels, &conds, b)?;
    let (xprev, xt) = forward_chain(&batch.x0, t, schedule, k as u32, rng);
    let flat = |g: &[Vec<u32>]| g.concat();
    let (x0f, xtf, xpf) = (flat(&batch.x0), flat(&xt), flat(&xprev));
    let (targets, neg_entropy) = target_rows(&x0f, &xtf, &xpf, t, schedule, k, cfg.alpha_mix);
    Ok(StepData {
        prefixes,
        xprev,
        xt,
        targets,
        neg_entropy,
    })
}

/// Trains stage `cfg.level` to `cfg.steps` steps.
///
/// - `data(step)` delivers the batch of step `step` (0-based); for a resumed run to equal an
///   uninterrupted one it must depend on `step` only.
/// - `dir` holds the checkpoint (resumed when present) and the metrics log; it is created.
/// - `progress` is called after every step; returning `false` stops the run after writing a
///   checkpoint (the result then holds the weights so far).
pub fn train_stage(
    cfg: &StageTrainConfig,
    schedule: &Schedule,
    data: &mut dyn FnMut(usize) -> Result<StageBatch>,
    dir: &Path,
    progress: &mut dyn FnMut(&StageProgress) -> bool,
) -> Result<TrainedStage> {
    cfg.validate()?;
    if schedule.levels() != cfg.levels {
        return Err(Error::Input(format!(
            "the schedule has {} levels, the settings {}",
            schedule.levels(),
            cfg.levels
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let ckpt = dir.join(CHECKPOINT_FILE);
    let metrics_path = dir.join(METRICS_FILE);
    let k = cfg.n_tokens();

    let varmap = VarMap::new();
    build_on(&varmap, &cfg.network)?;
    init_weights(&varmap, cfg.seed, cfg.init_std)?;
    let mut opt = AdamW::new(&varmap, cfg.adamw)?;
    let mut ema = Ema::new(&varmap, cfg.ema_decay)?;
    let start = resume(&ckpt, cfg, &varmap, &mut opt, &mut ema)?;
    trim_metrics(&metrics_path, start)?;
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| Error::io(&metrics_path, e))?;

    let began = Instant::now();
    let mut tokens = 0usize;
    let mut last_loss = f32::NAN;
    let mut step = start;
    while step < cfg.steps {
        let batch = data(step)?;
        let p = check_batch(&batch, k)?;
        let mut rng = step_rng(cfg.seed, step);
        let sd = step_data(cfg, schedule, &batch, &mut rng)?;
        let net = build_on(&varmap, &cfg.network)?;
        let logits = stage_logits(&net, &sd.prefixes, &sd.xprev, &sd.xt, true)?;
        let loss_op = sd.loss(true);
        let nll = logits.apply_op1(loss_op.clone())?;
        let ce = loss_op.ce() as f32;
        let grads = nll.backward()?;
        let loss = nll.to_scalar::<f32>()? + sd.neg_entropy as f32;
        let lr = optim::lr_at(step, cfg.lr, cfg.warmup, cfg.steps, cfg.final_lr_frac);
        let grad_norm = opt.step(&grads, lr, cfg.grad_clip)?;
        ema.update()?;
        step += 1;
        last_loss = loss;
        tokens += batch.x0.len() * p;
        let secs = began.elapsed().as_secs_f64().max(1e-9);
        let report = StageProgress {
            step,
            steps: cfg.steps,
            loss,
            ce,
            lr,
            grad_norm,
            tokens_per_s: tokens as f64 / secs,
            eta_s: secs / (step - start) as f64 * (cfg.steps - step) as f64,
        };
        let line = serde_json::json!({
            "step": step, "loss": loss, "ce": ce, "lr": lr, "grad_norm": grad_norm,
            "tokens_per_s": report.tokens_per_s, "elapsed_s": secs,
        });
        writeln!(metrics, "{line}").map_err(|e| Error::io(&metrics_path, e))?;
        let go_on = progress(&report);
        if step == cfg.steps || step.is_multiple_of(cfg.ckpt_every.max(1)) || !go_on {
            save(&ckpt, cfg, step, &varmap, &opt, &ema)?;
        }
        if !go_on {
            break;
        }
    }
    let weights = optim::sorted_vars(&varmap)?
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().detach()))
        .collect();
    Ok(TrainedStage {
        config: cfg.clone(),
        step,
        last_loss,
        weights,
        ema: ema.tensors()?,
    })
}

/// Held-out negative log-likelihood of a stage in bits per token: the cross-entropy of
/// p(x_{t−1} | x_t, condition) at the true x_{t−1}, with chains drawn from `seed` (batch i
/// uses stream i + 1) and the conditions as given (none dropped).
pub fn stage_nll(
    net: &Stage,
    cfg: &StageTrainConfig,
    schedule: &Schedule,
    batches: &[StageBatch],
    seed: u64,
) -> Result<f64> {
    let k = cfg.n_tokens();
    let eval = StageTrainConfig {
        cond_drop: 0.0,
        alpha_mix: 0.0,
        ..cfg.clone()
    };
    let (mut total, mut count) = (0f64, 0usize);
    for (i, batch) in batches.iter().enumerate() {
        let p = check_batch(batch, k)?;
        let mut rng = step_rng(seed, i);
        let sd = step_data(&eval, schedule, batch, &mut rng)?;
        let logits = stage_logits(net, &sd.prefixes, &sd.xprev, &sd.xt, false)?;
        let loss_op = sd.loss(false);
        logits.apply_op1_no_bwd(&loss_op)?;
        let n = batch.x0.len() * p;
        total += loss_op.ce() * n as f64;
        count += n;
    }
    if count == 0 {
        return Err(Error::Input("no held-out batches".into()));
    }
    Ok(total / count as f64 / std::f64::consts::LN_2)
}

/// How closely stage `net` follows `reference` (the same stage in another precision, such as
/// quantized against f32) on held-out chains: the mean KL(reference ‖ net) of the
/// distributions p(x_{t−1} | x_t, condition) in bits per token, and the fraction of tokens
/// whose most likely value agrees. Chains are drawn as in [`stage_nll`].
pub fn stage_agreement(
    net: &Stage,
    reference: &Stage,
    cfg: &StageTrainConfig,
    schedule: &Schedule,
    batches: &[StageBatch],
    seed: u64,
) -> Result<(f64, f64)> {
    let k = cfg.n_tokens();
    let eval = StageTrainConfig {
        cond_drop: 0.0,
        alpha_mix: 0.0,
        ..cfg.clone()
    };
    let (mut kl, mut same, mut count) = (0f64, 0f64, 0usize);
    for (i, batch) in batches.iter().enumerate() {
        check_batch(batch, k)?;
        let mut rng = step_rng(seed, i);
        let sd = step_data(&eval, schedule, batch, &mut rng)?;
        let rows = |net: &Stage| -> Result<Tensor> {
            let logits = stage_logits(net, &sd.prefixes, &sd.xprev, &sd.xt, false)?;
            let width = logits.dim(candle_core::D::Minus1)?;
            Ok(logits.to_dtype(DType::F32)?.reshape(((), width))?)
        };
        let (p, q) = (rows(reference)?, rows(net)?);
        let lp = candle_nn::ops::log_softmax(&p, 1)?;
        let lq = candle_nn::ops::log_softmax(&q, 1)?;
        let kl_sum = (lp.exp()? * (&lp - &lq)?)?.sum_all()?.to_scalar::<f32>()?;
        let same_sum = p
            .argmax(1)?
            .eq(&q.argmax(1)?)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()?;
        kl += kl_sum as f64;
        same += same_sum as f64;
        count += p.dim(0)?;
    }
    if count == 0 {
        return Err(Error::Input("no held-out batches".into()));
    }
    Ok((
        kl / count as f64 / std::f64::consts::LN_2,
        same / count as f64,
    ))
}

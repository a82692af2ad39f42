//! Trains the concept recognizer ([`tessera_engine::recognizer`]) on the pool's encoded
//! training scenes: each grid labelled with its largest object's concept, the positions
//! outside the object's token box (grown by the inference margin, each side jittered) replaced
//! by the "outside" token, as a request's region is at inference; some grids whole.
//!
//! Layout and kernels are the evaluation classifier's (`im2col` conv, fused BatchNorm + SiLU);
//! the BatchNorm is folded into the convolutions at export, so the engine runs conv + bias.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{D, DType, Device, Module, Tensor, Var};
use candle_nn::{Init, Linear, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use tessera_engine::recognizer::{Concept, MARGIN, RecognizerCard};
use tessera_engine::{Error, Result};

use crate::classifier::{bn_silu_eval, bn_silu_train, conv3x3};
use crate::optim::{AdamW, AdamWConfig, lr_at};

/// File name of the exported weights in a work or model folder.
pub const RECOGNIZER_FILE: &str = "recognizer.safetensors";

/// How the recognizer is built and trained (`steps` 0: no recognizer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecognizerTrainConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Grids per step.
    pub batch: usize,
    /// Peak learning rate (AdamW), after `warmup` steps; cosine decay to 5%.
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup: usize,
    /// Weight decay of the convolutions and the head.
    pub weight_decay: f64,
    /// Width of the token embedding.
    pub embed_dim: usize,
    /// Channels of each conv stage (2× average pool between stages).
    pub channels: Vec<usize>,
    /// Probability of showing a grid whole instead of its object's region.
    pub whole: f32,
    /// Each side of the region moves by up to this many tokens (inwards or outwards).
    pub jitter: usize,
    /// Probability of a negative: a grid whose region is cut into blocks of 2² or 4² tokens
    /// shuffled among themselves, trained towards "no concept in particular" (a uniform
    /// target) — the look of a concept's tokens without its shape, which is how a guided draw
    /// most often fails.
    pub shuffled: f32,
}

impl Default for RecognizerTrainConfig {
    fn default() -> Self {
        Self {
            steps: 2000,
            batch: 64,
            lr: 3e-3,
            warmup: 50,
            weight_decay: 1e-4,
            embed_dim: 32,
            channels: vec![64, 128, 128],
            whole: 0.15,
            jitter: 1,
            shuffled: 0.25,
        }
    }
}

/// A box of grid positions `(y0, x0, y1, x1)`, inclusive.
pub type TokenBox = (usize, usize, usize, usize);

/// One training grid: its tokens, concept and the object's token box `(y0, x0, y1, x1)`
/// (inclusive).
#[derive(Debug, Clone)]
pub struct LabelledGrid<'a> {
    /// Raster-order tokens, `side²`.
    pub tokens: &'a [u32],
    /// Concept (class id).
    pub class: usize,
    /// The largest object's token box.
    pub tokens_box: TokenBox,
}

/// The token box (inclusive) a pixel box `(x, y, size)` touches on a `side`² grid of a `res`²
/// image — the positions a mask over the box would regenerate.
pub fn token_box(x: i32, y: i32, size: u32, res: u32, side: usize) -> TokenBox {
    let f = f64::from(res) / side as f64;
    let clamp = |v: f64| v.clamp(0.0, f64::from(res));
    let (x0, y0) = (clamp(f64::from(x)), clamp(f64::from(y)));
    let (x1, y1) = (
        clamp(f64::from(x) + f64::from(size)),
        clamp(f64::from(y) + f64::from(size)),
    );
    let lo = |v: f64| ((v / f).floor() as usize).min(side - 1);
    let hi = |v: f64| (((v / f).ceil() as usize).max(1) - 1).min(side - 1);
    (lo(y0), lo(x0), hi(y1).max(lo(y0)), hi(x1).max(lo(x0)))
}

struct ConvStage {
    weight: Tensor,
    gamma: Tensor,
    beta: Tensor,
    running_mean: Var,
    running_var: Var,
}

/// A recognizer being trained.
pub struct TrainingRecognizer {
    cfg: RecognizerTrainConfig,
    n_tokens: usize,
    side: usize,
    varmap: VarMap,
    embed: Tensor,
    stages: Vec<ConvStage>,
    head: Linear,
    concepts: Vec<Concept>,
    device: Device,
}

impl TrainingRecognizer {
    /// Fresh weights (seeded) for `n_tokens` tokens on a `side`² grid and these concepts.
    pub fn new(
        cfg: &RecognizerTrainConfig,
        n_tokens: usize,
        side: usize,
        concepts: Vec<Concept>,
        seed: u64,
    ) -> Result<Self> {
        let card = RecognizerCard {
            weights: RECOGNIZER_FILE.into(),
            embed_dim: cfg.embed_dim,
            channels: cfg.channels.clone(),
            concepts: concepts.clone(),
        };
        card.validate(n_tokens, side).map_err(Error::Input)?;
        let device = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let zero = Init::Const(0.0);
        let embed = vb.get_with_hints((n_tokens + 1, cfg.embed_dim), "embed.weight", zero)?;
        let mut stages = Vec::new();
        let mut c_in = cfg.embed_dim;
        for (i, &c) in cfg.channels.iter().enumerate() {
            let vs = vb.pp(format!("stage{i}"));
            let weight = vs.get_with_hints((c, 9 * c_in), "conv.weight", zero)?;
            let gamma = vs.get_with_hints(c, "norm.weight", zero)?;
            let beta = vs.get_with_hints(c, "norm.bias", zero)?;
            let rm = Var::zeros(c, DType::F32, &device)?;
            let rv = Var::ones(c, DType::F32, &device)?;
            stages.push(ConvStage {
                weight,
                gamma,
                beta,
                running_mean: rm,
                running_var: rv,
            });
            c_in = c;
        }
        let k = concepts.len();
        let head = Linear::new(
            vb.get_with_hints((k, c_in), "head.weight", zero)?,
            Some(vb.get_with_hints(k, "head.bias", zero)?),
        );
        let me = Self {
            cfg: cfg.clone(),
            n_tokens,
            side,
            varmap,
            embed,
            stages,
            head,
            concepts,
            device,
        };
        me.init(seed)?;
        Ok(me)
    }

    fn init(&self, seed: u64) -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| Error::Input("recognizer weights are poisoned".into()))?;
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for name in names {
            let var = &data[name];
            let dims = var.dims().to_vec();
            let n: usize = dims.iter().product();
            let values: Vec<f32> = if name.ends_with("norm.weight") {
                vec![1.0; n]
            } else if name.ends_with("bias") {
                vec![0.0; n]
            } else if name.starts_with("embed") {
                (0..n).map(|_| rng.random_range(-1.0f32..=1.0)).collect()
            } else {
                let fan_in: usize = dims[1..].iter().product();
                let gain = if name.starts_with("head") { 1.0 } else { 6.0 };
                let bound = (gain / fan_in.max(1) as f64).sqrt() as f32;
                (0..n).map(|_| rng.random_range(-bound..=bound)).collect()
            };
            var.set(&Tensor::from_vec(values, dims, &self.device)?)?;
        }
        Ok(())
    }

    /// Logits `(B, concepts)` of `(B, side²)` ids; in training mode also the per-stage batch
    /// statistics.
    fn forward(&self, ids: &Tensor, train: bool) -> Result<(Tensor, Vec<(Tensor, Tensor)>)> {
        let (b, _) = ids.dims2()?;
        let e = self.cfg.embed_dim;
        // (C, B, H, W), the im2col layout.
        let mut x = self
            .embed
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, self.side, self.side, e))?
            .permute((3, 0, 1, 2))?
            .contiguous()?;
        let last = self.stages.len() - 1;
        let mut stats = Vec::new();
        for (i, st) in self.stages.iter().enumerate() {
            let y = conv3x3(&x, &st.weight)?;
            let (c, b, h, w) = y.dims4()?;
            let flat = y.reshape((c, b * h * w))?;
            let z = if train {
                let (z, mean, var) = bn_silu_train(&flat, &st.gamma, &st.beta)?;
                stats.push((mean, var));
                z
            } else {
                let (m, v) = (st.running_mean.as_tensor(), st.running_var.as_tensor());
                bn_silu_eval(&flat, &st.gamma, &st.beta, m, v)?
            };
            x = z.reshape((c, b, h, w))?;
            if i < last {
                x = x.avg_pool2d(2)?;
            }
        }
        let features = x.mean(D::Minus1)?.mean(D::Minus1)?.t()?.contiguous()?;
        Ok((self.head.forward(&features)?, stats))
    }

    /// Predicted concepts of `(B, side²)` ids (inference statistics).
    pub fn predict(&self, ids: &Tensor) -> Result<Vec<u32>> {
        Ok(self.forward(ids, false)?.0.argmax(D::Minus1)?.to_vec1()?)
    }

    /// The ids a grid is shown with: its region (the object's box grown by the margin and
    /// jittered, or the whole grid) kept, the rest "outside".
    fn shown(&self, g: &LabelledGrid, rng: &mut ChaCha8Rng) -> Vec<u32> {
        let side = self.side;
        if rng.random::<f32>() < self.cfg.whole {
            return g.tokens.to_vec();
        }
        let j = self.cfg.jitter as i64;
        let mut move_by = || {
            if j == 0 { 0 } else { rng.random_range(-j..=j) }
        };
        let (y0, x0, y1, x1) = g.tokens_box;
        let m = MARGIN as i64;
        let max = side as i64 - 1;
        let lo = |v: usize, d: i64| (v as i64 - m + d).clamp(0, max);
        let hi = |v: usize, d: i64| (v as i64 + m + d).clamp(0, max);
        let (ya, xa) = (lo(y0, move_by()), lo(x0, move_by()));
        let (yb, xb) = (hi(y1, move_by()).max(ya), hi(x1, move_by()).max(xa));
        g.tokens
            .iter()
            .enumerate()
            .map(|(p, &t)| {
                let (y, x) = ((p / side) as i64, (p % side) as i64);
                if (ya..=yb).contains(&y) && (xa..=xb).contains(&x) {
                    t
                } else {
                    self.n_tokens as u32
                }
            })
            .collect()
    }

    /// `ids` (as [`Self::shown`] made them) with the blocks of `b`² positions that lie inside
    /// the shown region permuted among themselves.
    fn block_shuffled(&self, ids: &[u32], b: usize, rng: &mut ChaCha8Rng) -> Vec<u32> {
        let side = self.side;
        let outside = self.n_tokens as u32;
        let inside = |by: usize, bx: usize| {
            (0..b).all(|dy| (0..b).all(|dx| ids[(by * b + dy) * side + bx * b + dx] != outside))
        };
        let blocks: Vec<(usize, usize)> = (0..side / b)
            .flat_map(|by| (0..side / b).map(move |bx| (by, bx)))
            .filter(|&(by, bx)| inside(by, bx))
            .collect();
        let mut order = blocks.clone();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let mut out = ids.to_vec();
        for (&(ty, tx), &(fy, fx)) in blocks.iter().zip(&order) {
            for dy in 0..b {
                for dx in 0..b {
                    out[(ty * b + dy) * side + tx * b + dx] =
                        ids[(fy * b + dy) * side + fx * b + dx];
                }
            }
        }
        out
    }

    /// Writes the weights (BatchNorm folded into the convolutions) to `path` and returns the
    /// card entry.
    pub fn export(&self, path: &Path) -> Result<RecognizerCard> {
        let mut map: HashMap<String, Tensor> = HashMap::new();
        map.insert("embed.weight".into(), self.embed.detach());
        let mut c_in = self.cfg.embed_dim;
        for (i, st) in self.stages.iter().enumerate() {
            let c = st.gamma.dim(0)?;
            let a = (st.running_var.as_tensor() + 1e-5)?
                .sqrt()?
                .recip()?
                .mul(&st.gamma)?;
            let b = (&st.beta - st.running_mean.as_tensor().mul(&a)?)?;
            let w = st
                .weight
                .broadcast_mul(&a.unsqueeze(1)?)?
                .reshape((c, c_in, 3, 3))?;
            map.insert(format!("conv{i}.weight"), w.detach());
            map.insert(format!("conv{i}.bias"), b.detach());
            c_in = c;
        }
        map.insert("head.weight".into(), self.head.weight().detach());
        if let Some(b) = self.head.bias() {
            map.insert("head.bias".into(), b.detach());
        }
        let tmp = path.with_extension("safetensors.tmp");
        candle_core::safetensors::save(&map, &tmp)
            .map_err(|e| Error::io(&tmp, std::io::Error::other(e)))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        Ok(RecognizerCard {
            weights: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| RECOGNIZER_FILE.into()),
            embed_dim: self.cfg.embed_dim,
            channels: self.cfg.channels.clone(),
            concepts: self.concepts.clone(),
        })
    }
}

/// Progress of [`train_recognizer`], after every step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecognizerProgress {
    /// Steps done (1-based).
    pub step: usize,
    /// Total steps.
    pub steps: usize,
    /// Cross-entropy of this step's batch.
    pub loss: f32,
    /// Top-1 accuracy on this step's batch (its concept rows), before the update.
    pub batch_accuracy: f32,
}

/// Trains a recognizer for `cfg.steps` steps on `grids` (batches and weights fixed by `seed`).
/// `progress` returning `false` stops with [`Error::Cancelled`].
pub fn train_recognizer(
    cfg: &RecognizerTrainConfig,
    grids: &[LabelledGrid],
    n_tokens: usize,
    side: usize,
    concepts: Vec<Concept>,
    seed: u64,
    progress: &mut dyn FnMut(&RecognizerProgress) -> bool,
) -> Result<TrainingRecognizer> {
    if grids.is_empty() || cfg.batch == 0 {
        return Err(Error::Input(
            "recognizer: no training grids or an empty batch".into(),
        ));
    }
    if let Some(g) = grids
        .iter()
        .find(|g| g.tokens.len() != side * side || g.class >= concepts.len())
    {
        return Err(Error::Input(format!(
            "recognizer: a training grid of {} tokens and class {} (grid {side}², {} concepts)",
            g.tokens.len(),
            g.class,
            concepts.len()
        )));
    }
    let model = TrainingRecognizer::new(cfg, n_tokens, side, concepts, seed)?;
    let mut opt = AdamW::with_decay(
        &model.varmap,
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: cfg.weight_decay,
        },
        |name, rank| rank >= 2 && !name.starts_with("embed"),
    )?;
    for step in 0..cfg.steps {
        let mut rng =
            ChaCha8Rng::seed_from_u64(seed ^ (step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let k = model.concepts.len();
        let mut ids = Vec::with_capacity(cfg.batch * side * side);
        let mut labels = Vec::with_capacity(cfg.batch);
        // Per row, the target distribution: the concept, or uniform for a negative.
        let mut target = vec![0f32; cfg.batch * k];
        for row in 0..cfg.batch {
            let g = &grids[rng.random_range(0..grids.len())];
            let shown = model.shown(g, &mut rng);
            if rng.random::<f32>() < cfg.shuffled {
                let b = if rng.random::<bool>() { 2 } else { 4 };
                ids.extend(model.block_shuffled(&shown, b, &mut rng));
                target[row * k..(row + 1) * k].fill(1.0 / k as f32);
                labels.push(u32::MAX);
            } else {
                ids.extend(shown);
                target[row * k + g.class] = 1.0;
                labels.push(g.class as u32);
            }
        }
        let x = Tensor::from_vec(ids, (cfg.batch, side * side), &model.device)?;
        let target = Tensor::from_vec(target, (cfg.batch, k), &model.device)?;
        let (logits, stats) = model.forward(&x, true)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let loss = (logp.mul(&target)?.sum_all()? / -(cfg.batch as f64))?;
        let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let positives = labels.iter().filter(|&&l| l != u32::MAX).count();
        let correct = pred.iter().zip(&labels).filter(|(p, l)| p == l).count();
        let lr = lr_at(step, cfg.lr, cfg.warmup, cfg.steps, 0.05);
        opt.step(&loss.backward()?, lr, None)?;
        for (st, (mean, var)) in model.stages.iter().zip(&stats) {
            st.running_mean
                .set(&((st.running_mean.as_tensor() * 0.9)? + (mean * 0.1)?)?)?;
            st.running_var
                .set(&((st.running_var.as_tensor() * 0.9)? + (var * 0.1)?)?)?;
        }
        let report = RecognizerProgress {
            step: step + 1,
            steps: cfg.steps,
            loss: loss.to_scalar::<f32>()?,
            batch_accuracy: correct as f32 / positives.max(1) as f32,
        };
        if !progress(&report) {
            return Err(Error::Cancelled);
        }
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_engine::recognizer::Recognizer;

    /// Two concepts on an 8² grid of 16 tokens: concept 0 draws its object from tokens 0..4,
    /// concept 1 from 4..8, both on a background of tokens 8..16 — only the box tells them apart.
    fn toy(n: usize, seed: u64) -> Vec<(Vec<u32>, usize, TokenBox)> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|i| {
                let class = i % 2;
                let (y0, x0) = (rng.random_range(0..4), rng.random_range(0..4));
                let (y1, x1) = (y0 + 3, x0 + 3);
                let tokens = (0..64)
                    .map(|p| {
                        let (y, x) = (p / 8, p % 8);
                        if (y0..=y1).contains(&y) && (x0..=x1).contains(&x) {
                            class as u32 * 4 + rng.random_range(0..4)
                        } else {
                            8 + rng.random_range(0..8)
                        }
                    })
                    .collect();
                (tokens, class, (y0, x0, y1, x1))
            })
            .collect()
    }

    fn concepts() -> Vec<Concept> {
        ["a", "b"]
            .iter()
            .map(|n| Concept {
                name: (*n).into(),
                words: vec![],
            })
            .collect()
    }

    #[test]
    fn learns_the_concepts_and_exports_what_it_computes() -> Result<()> {
        let cfg = RecognizerTrainConfig {
            steps: 60,
            batch: 16,
            lr: 1e-2,
            warmup: 5,
            embed_dim: 8,
            channels: vec![16, 16],
            ..RecognizerTrainConfig::default()
        };
        let data = toy(256, 1);
        let grids: Vec<LabelledGrid> = data
            .iter()
            .map(|(t, c, b)| LabelledGrid {
                tokens: t,
                class: *c,
                tokens_box: *b,
            })
            .collect();
        let trained = train_recognizer(&cfg, &grids, 16, 8, concepts(), 7, &mut |_| true)?;
        // Fresh grids, whole: learnt, not memorised.
        let test = toy(64, 2);
        let ids: Vec<u32> = test.iter().flat_map(|(t, ..)| t.clone()).collect();
        let x = Tensor::from_vec(ids, (64, 64), &Device::Cpu)?;
        let pred = trained.predict(&x)?;
        let hits = pred
            .iter()
            .zip(&test)
            .filter(|(p, t)| **p as usize == t.1)
            .count();
        assert!(hits >= 58, "{hits} of 64");
        // The exported network (BatchNorm folded, (c_out, c_in, 3, 3) kernels) computes what
        // the trained one does in inference mode.
        let dir = std::env::temp_dir().join(format!("tessera-rec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let path = dir.join(RECOGNIZER_FILE);
        let card = trained.export(&path)?;
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let engine = Recognizer::new(vb, &card, 16, 8)?;
        let a = trained.forward(&x, false)?.0;
        let b = engine.forward(&x)?;
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-3, "{diff}");
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }

    #[test]
    fn token_boxes_cover_what_a_mask_over_the_box_touches() {
        // 128 px, 16 tokens of 8 px: a box from 10 to 70 touches tokens 1..=8.
        assert_eq!(token_box(10, 10, 60, 128, 16), (1, 1, 8, 8));
        // Clipped at the edges.
        assert_eq!(token_box(-20, 100, 60, 128, 16), (12, 0, 15, 4));
        assert_eq!(token_box(0, 0, 8, 128, 16), (0, 0, 0, 0));
    }
}

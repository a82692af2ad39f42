//! Training the VQGAN first stage (taming-transformers' `VQModel` with
//! `VQLPIPSWithDiscriminator`, minus LPIPS) on the CPU, for Tessera's own default model.
//!
//! Objective per step: L1 reconstruction + codebook loss + β · commitment (straight-through
//! estimator), and after `disc_start` a PatchGAN hinge loss whose weight is adapted as in taming
//! (ratio of gradient norms, here measured at the decoder output). Unused codes are re-initialized
//! to random encoder outputs every `restart_every` steps. The result exports to the engine's
//! format: official key names plus `quantize.used`, the remap table of codes used on a sample of
//! the training data.
//!
//! The training network lives in `vqgan/model.rs` (candle ops with a cheap backward pass, see
//! `vqgan/ops.rs`); inference uses [`tessera_engine::vqgan::Vqgan`] unchanged.

mod disc;
mod fused;
mod model;
mod ops;
mod run;
mod tune;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use tessera_engine::vqgan::{DdConfig, Vqgan, VqganConfig};
use tessera_engine::{Error, Result};

use model::VqModel;
use run::Run;
pub use tune::{DecoderProgress, DecoderTuneConfig, tune_decoder};

const CKPT_FILE: &str = "ckpt.safetensors";
const CONFIG_FILE: &str = "config.json";
const METRICS_FILE: &str = "metrics.jsonl";

/// Hyper-parameters of a VQGAN training run. `Default` is the configuration Tessera ships.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VqganTrainConfig {
    /// Image side (square images).
    pub resolution: usize,
    /// Base channel count (`ch`); `ch · ch_mult[i]` must be a multiple of `norm_groups`.
    pub ch: usize,
    /// Channel multipliers; f = 2^(len − 1).
    pub ch_mult: Vec<usize>,
    /// Residual blocks per encoder level (decoder: one more).
    pub num_res_blocks: usize,
    /// Resolutions with attention after each res block (the middle always has one).
    pub attn_resolutions: Vec<usize>,
    /// Channels of the encoder output / decoder input.
    pub z_channels: usize,
    /// Groups of every GroupNorm (`ddconfig.norm_groups`); taming's 32 would make a
    /// GroupNorm over 32 channels an instance norm, which loses each image's mean colour.
    pub norm_groups: usize,
    /// Entries in the codebook.
    pub n_embed: usize,
    /// Width of a codebook entry.
    pub embed_dim: usize,
    /// Commitment weight β.
    pub beta: f64,
    /// Optimizer steps.
    pub steps: usize,
    /// Images per step (the data source decides; this is what it is asked for).
    pub batch: usize,
    /// Side of random crops trained on before `crop_until` (0: whole images). The network is
    /// convolutional, so crops cost (crop / resolution)² of a whole image; the steps after
    /// `crop_until` adapt it (GroupNorm statistics, the middle attention) to whole images.
    pub crop: usize,
    /// First step trained on whole images.
    pub crop_until: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the end of the cosine decay.
    pub lr_end: f64,
    /// Linear warm-up steps.
    pub warmup: usize,
    /// Adam β₁, β₂ of both optimizers (taming: 0.5, 0.9).
    pub betas: [f64; 2],
    /// AdamW weight decay (convolution kernels only).
    pub weight_decay: f64,
    /// First step with the adversarial loss.
    pub disc_start: usize,
    /// Weight of the adversarial loss relative to reconstruction (adaptive; 0 disables it).
    pub disc_weight: f64,
    /// Discriminator width.
    pub disc_ndf: usize,
    /// Strided layers of the discriminator.
    pub disc_layers: usize,
    /// Re-initialize codes unused for this many steps (0: never).
    pub restart_every: usize,
    /// Last step at which codes are restarted (later restarts would not be trained).
    pub restart_until: usize,
    /// Checkpoint interval in steps (0: only at the end).
    pub ckpt_every: usize,
    /// Metrics-log interval in steps.
    pub log_every: usize,
    /// Batches of training data encoded to build the remap table `quantize.used`.
    pub remap_batches: usize,
    /// Seed of initialization and restarts.
    pub seed: u64,
}

impl Default for VqganTrainConfig {
    /// The shipped configuration: 64×64 images, f = 4 (16×16 tokens), 1024 codes. `ch` = 32
    /// with GroupNorm(8); one res block per level only in the decoder (`num_res_blocks` = 0)
    /// and 32×32 crops for the first 4700 steps keep the run near 30 minutes on two CPU
    /// cores; the adversarial loss runs with the whole-image steps.
    fn default() -> Self {
        Self {
            resolution: 64,
            ch: 32,
            ch_mult: vec![1, 1, 2],
            num_res_blocks: 0,
            attn_resolutions: vec![],
            z_channels: 64,
            norm_groups: 8,
            // 1024 codes reconstruct 0.4 dB better than 512 (measured; README).
            n_embed: 1024,
            embed_dim: 32,
            beta: 0.25,
            steps: 5000,
            batch: 8,
            crop: 32,
            crop_until: 4700,
            lr: 4e-4,
            lr_end: 4e-5,
            warmup: 100,
            betas: [0.5, 0.9],
            weight_decay: 0.0,
            disc_start: 4700,
            disc_weight: 0.1,
            disc_ndf: 32,
            disc_layers: 2,
            restart_every: 100,
            restart_until: 4200,
            ckpt_every: 250,
            log_every: 10,
            remap_batches: 32,
            seed: 0,
        }
    }
}

impl VqganTrainConfig {
    /// The architecture as the engine's [`VqganConfig`].
    pub fn vqgan_config(&self) -> VqganConfig {
        VqganConfig {
            embed_dim: self.embed_dim,
            n_embed: self.n_embed,
            ddconfig: DdConfig {
                double_z: false,
                z_channels: self.z_channels,
                resolution: self.resolution,
                in_channels: 3,
                out_ch: 3,
                ch: self.ch,
                ch_mult: self.ch_mult.clone(),
                num_res_blocks: self.num_res_blocks,
                attn_resolutions: self.attn_resolutions.clone(),
                dropout: 0.0,
                norm_groups: self.norm_groups,
            },
            decoder_ddconfig: None,
        }
    }

    /// Learning rate at `step`: linear warm-up, then cosine decay to `lr_end`.
    pub fn lr_at(&self, step: usize) -> f64 {
        cosine_lr(step, self.warmup, self.steps, self.lr, self.lr_end)
    }
}

/// Linear warm-up to `lr` over `warmup` steps, then cosine decay to `lr_end` at `steps`.
fn cosine_lr(step: usize, warmup: usize, steps: usize, lr: f64, lr_end: f64) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let span = steps.saturating_sub(warmup).max(1);
    let p = ((step - warmup) as f64 / span as f64).min(1.0);
    lr_end + 0.5 * (lr - lr_end) * (1.0 + (std::f64::consts::PI * p).cos())
}

/// With a checkpoint in `dir` (`resume`), checks that it was trained with `cfg`; otherwise
/// records `cfg` there. Returns the metrics log, opened for appending.
fn start_run<C>(dir: &Path, cfg: &C, resume: bool) -> Result<std::fs::File>
where
    C: Serialize + serde::de::DeserializeOwned + PartialEq,
{
    let cfg_path = dir.join(CONFIG_FILE);
    if resume {
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let saved: C = serde_json::from_str(&text).map_err(|e| Error::config(&cfg_path, e))?;
        if &saved != cfg {
            return Err(Error::config(
                &cfg_path,
                "the checkpoint in this folder was trained with another configuration",
            ));
        }
    } else {
        let text = serde_json::to_string_pretty(cfg).map_err(|e| Error::config(&cfg_path, e))?;
        std::fs::write(&cfg_path, text).map_err(|e| Error::io(&cfg_path, e))?;
    }
    let log_path = dir.join(METRICS_FILE);
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Error::io(&log_path, e))
}

/// State reported after each step (also the lines of `metrics.jsonl`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VqganProgress {
    /// Steps done (1 after the first step).
    pub step: usize,
    /// Steps in the run.
    pub steps: usize,
    /// L1 reconstruction loss (per pixel, images in [-1, 1]).
    pub rec_loss: f64,
    /// Codebook + β · commitment loss.
    pub q_loss: f64,
    /// Generator adversarial loss −mean D(x̂) (0 before `disc_start`).
    pub g_loss: f64,
    /// Discriminator hinge loss (0 before `disc_start`).
    pub d_loss: f64,
    /// Adaptive weight of the adversarial term (0 before `disc_start`).
    pub d_weight: f64,
    /// PSNR (dB) of this batch's reconstructions.
    pub psnr: f64,
    /// Codebook perplexity in this batch.
    pub perplexity: f64,
    /// Codes used since the last restart check.
    pub used_codes: usize,
    /// Codes re-initialized at this step.
    pub restarted: usize,
    /// Learning rate of this step.
    pub lr: f64,
    /// Seconds of training in this process.
    pub elapsed_s: f64,
    /// Estimated seconds left.
    pub eta_s: f64,
}

/// A trained VQGAN: the weights and the remap table.
pub struct TrainedVqgan {
    cfg: VqganConfig,
    varmap: VarMap,
    model: VqModel,
    used: Vec<u32>,
    device: Device,
}

impl TrainedVqgan {
    /// The architecture.
    pub fn config(&self) -> &VqganConfig {
        &self.cfg
    }

    /// The remap table: full codes used on the sample of training data, ascending.
    pub fn used(&self) -> &[u32] {
        &self.used
    }

    /// Reconstructions (B, 3, H, W) through the training network (images in [-1, 1]).
    pub fn reconstruct(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self
            .model
            .forward(&x.to_device(&self.device)?)?
            .xrec
            .detach())
    }

    /// The weights under the engine's names, with `quantize.used` (int64).
    fn tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out: HashMap<String, Tensor> = lock(&self.varmap)?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect();
        let used: Vec<i64> = self.used.iter().map(|&c| c as i64).collect();
        let n = used.len();
        out.insert(
            "quantize.used".into(),
            Tensor::from_vec(used, n, &self.device)?,
        );
        Ok(out)
    }

    /// The engine's inference model built from these weights.
    pub fn to_vqgan(&self) -> Result<Vqgan> {
        let vb = VarBuilder::from_tensors(self.tensors()?, DType::F32, &self.device);
        Ok(Vqgan::new(vb, &self.cfg, self.used.len())?)
    }

    /// Writes `vqgan.safetensors` for a Tessera model folder (atomically: temp file, rename).
    /// Returns the card's `vqgan` field and `n_tokens` (K, the remap table's length).
    pub fn export(&self, path: &Path) -> Result<(VqganConfig, usize)> {
        save_atomic(&self.tensors()?, path)?;
        Ok((self.cfg.clone(), self.used.len()))
    }
}

/// PSNR in dB of images in [-1, 1] (clamped), over the whole tensors: 10 log10(2² / MSE).
pub fn psnr(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(DType::F32)?.clamp(-1f32, 1f32)?;
    let b = b.to_dtype(DType::F32)?.clamp(-1f32, 1f32)?;
    let mse = (a - b)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64;
    Ok(10.0 * (4.0 / mse.max(1e-12)).log10())
}

fn lock(varmap: &VarMap) -> Result<std::sync::MutexGuard<'_, HashMap<String, Var>>> {
    varmap
        .data()
        .lock()
        .map_err(|_| Error::Input("vqgan: the parameter map is poisoned".into()))
}

fn save_atomic(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    candle_core::safetensors::save(tensors, &tmp).map_err(|e| Error::bad_file(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Trains (or resumes) a VQGAN.
///
/// `data(step)` returns the batch for `step`: (B, 3, R, R) f32 in [-1, 1]; it is also called
/// with `steps..steps + remap_batches` for the sample that builds the remap table. `dir` holds
/// the checkpoint (`ckpt.safetensors`, written atomically every `ckpt_every` steps and at the
/// end), `config.json` and `metrics.jsonl`; a run found there is resumed (its config must match).
/// `progress` is called after every step.
pub fn train_vqgan(
    cfg: &VqganTrainConfig,
    data: &mut dyn FnMut(usize) -> Result<Tensor>,
    dir: &Path,
    progress: &mut dyn FnMut(&VqganProgress),
) -> Result<TrainedVqgan> {
    let dev = Device::Cpu;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut run = Run::new(cfg, &dev)?;
    let resume = dir.join(CKPT_FILE).is_file();
    let mut log = start_run(dir, cfg, resume)?;
    if resume {
        run.load(dir, &dev)?;
    }
    let log_path = dir.join(METRICS_FILE);
    let started = Instant::now();
    let first = run.step;
    while run.step < cfg.steps {
        let x = data(run.step)?.to_device(&dev)?.to_dtype(DType::F32)?;
        let x = run.crop(&x)?;
        let mut p = run.train_step(&x)?;
        let done = run.step - first;
        p.elapsed_s = started.elapsed().as_secs_f64();
        p.eta_s = p.elapsed_s / done as f64 * (cfg.steps - run.step) as f64;
        if run.step % cfg.log_every.max(1) == 0 || run.step == cfg.steps {
            let line = serde_json::to_string(&p).map_err(|e| Error::config(&log_path, e))?;
            writeln!(log, "{line}").map_err(|e| Error::io(&log_path, e))?;
        }
        if (cfg.ckpt_every > 0 && run.step % cfg.ckpt_every == 0) || run.step == cfg.steps {
            run.save(dir)?;
        }
        progress(&p);
    }
    // The remap table: every code chosen on a sample of training data.
    let mut seen = vec![false; cfg.n_embed];
    for i in 0..cfg.remap_batches.max(1) {
        let x = data(cfg.steps + i)?.to_device(&dev)?.to_dtype(DType::F32)?;
        for c in run.model.encode_codes(&x)? {
            seen[c as usize] = true;
        }
    }
    let used: Vec<u32> = (0..cfg.n_embed as u32)
        .filter(|&c| seen[c as usize])
        .collect();
    Ok(TrainedVqgan {
        cfg: cfg.vqgan_config(),
        varmap: run.g_vars,
        model: run.model,
        used,
        device: dev,
    })
}

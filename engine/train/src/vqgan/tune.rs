//! Decoder fine-tuning: the trained encoder and codebook stay frozen, so every token, the remap
//! table and everything trained on the tokens stay valid, while the decoder trains further on
//! whole images with a squared-error loss — what PSNR measures — instead of the main run's L1
//! on crops plus the adversarial term.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use tessera_engine::vqgan::{Vqgan, VqganConfig};
use tessera_engine::{Error, Result};

use super::model::VqModel;
use super::{
    CKPT_FILE, METRICS_FILE, VqganTrainConfig, cosine_lr, lock, psnr, save_atomic, start_run,
};
use crate::optim::{AdamW, AdamWConfig};

const USED: &str = "quantize.used";

/// Hyper-parameters of the decoder fine-tune. `Default` is what Tessera ships.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DecoderTuneConfig {
    /// Optimizer steps (0: no fine-tune).
    pub steps: usize,
    /// Images per step.
    pub batch: usize,
    /// Side of the square crops the decoder trains on (pixels, a multiple of f); 0 or the
    /// image side: whole images. The image is encoded whole and the crop cut from its codes,
    /// so the decoder learns from the codes the stages see; crops make a 128² step ≈ 4×
    /// cheaper (a key absent from a recipe reads as 0).
    #[serde(default)]
    pub crop: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the end of the cosine decay.
    pub lr_end: f64,
    /// Linear warm-up steps (the moments start from zero).
    pub warmup: usize,
    /// Checkpoint interval in steps (0: only at the end).
    pub ckpt_every: usize,
    /// Metrics-log interval in steps.
    pub log_every: usize,
    /// The decoder's own `num_res_blocks` (it has one more block per level); `None`: the
    /// VQGAN's. A deeper decoder starts out as the trained one: its added blocks begin as
    /// identities (zero last convolution), so the fine-tune starts from the VQGAN's output.
    /// An absent key reads as `None`, not as the default's value, so that `None` survives a
    /// JSON round trip (a resumed run compares the saved configuration with its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_res_blocks: Option<usize>,
    /// The decoder's own attention resolutions; `None` (or absent): the VQGAN's. Added
    /// attention blocks begin as identities too (zero output projection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_resolutions: Option<Vec<usize>>,
}

impl Default for DecoderTuneConfig {
    fn default() -> Self {
        Self {
            steps: 1500,
            batch: 8,
            crop: 0,
            lr: 1e-4,
            lr_end: 1e-5,
            warmup: 50,
            ckpt_every: 250,
            log_every: 10,
            // One block per level more than the encoder's (+0.04 dB measured on the 512-code
            // VQGAN, for ≈ 35% more time per step).
            num_res_blocks: Some(1),
            attn_resolutions: None,
        }
    }
}

impl DecoderTuneConfig {
    /// Learning rate at `step`: linear warm-up, then cosine decay to `lr_end`.
    pub fn lr_at(&self, step: usize) -> f64 {
        cosine_lr(step, self.warmup, self.steps, self.lr, self.lr_end)
    }

    /// The tuned VQGAN's configuration: `base` with the decoder's own architecture
    /// (`decoder_ddconfig`) when this fine-tune changes it.
    pub fn tuned_config(&self, base: &VqganConfig) -> VqganConfig {
        let mut dec = base.decoder_dd().clone();
        if let Some(n) = self.num_res_blocks {
            dec.num_res_blocks = n;
        }
        if let Some(a) = &self.attn_resolutions {
            dec.attn_resolutions = a.clone();
        }
        let mut cfg = base.clone();
        cfg.decoder_ddconfig = (dec != cfg.ddconfig).then_some(dec);
        cfg
    }
}

/// State reported after each fine-tune step (also the lines of `metrics.jsonl`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecoderProgress {
    /// Steps done (1 after the first step).
    pub step: usize,
    /// Steps in the run.
    pub steps: usize,
    /// Mean squared error of this batch (images in [-1, 1]): the loss.
    pub mse: f64,
    /// PSNR (dB) of this batch's reconstructions.
    pub psnr: f64,
    /// Learning rate of this step.
    pub lr: f64,
    /// Seconds of training in this process.
    pub elapsed_s: f64,
    /// Estimated seconds left.
    pub eta_s: f64,
}

/// Fine-tunes (or resumes fine-tuning) the decoder of the VQGAN exported at `start` (trained
/// with `vq`), writing the whole VQGAN with the new decoder to `out` (atomically).
///
/// `data(step)` returns the batch for `step`: (B, 3, R, R) f32 in [-1, 1]. `dir` holds the
/// checkpoint, `config.json` and `metrics.jsonl`; a run found there is resumed (its config must
/// match).
pub fn tune_decoder(
    vq: &VqganTrainConfig,
    cfg: &DecoderTuneConfig,
    start: &Path,
    data: &mut dyn FnMut(usize) -> Result<Tensor>,
    dir: &Path,
    out: &Path,
    progress: &mut dyn FnMut(&DecoderProgress),
) -> Result<()> {
    if cfg.steps == 0 || cfg.batch == 0 {
        return Err(Error::Input(
            "decoder fine-tune: steps and batch must be positive".into(),
        ));
    }
    let dev = Device::Cpu;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let base = vq.vqgan_config();
    let tuned = cfg.tuned_config(&base);
    Vqgan::new(VarBuilder::zeros(DType::F32, &dev), &tuned, 1)
        .map_err(|e| Error::Input(format!("decoder fine-tune: {e}")))?;
    let varmap = VarMap::new();
    let model = VqModel::new(&varmap, &tuned, vq.beta, &dev)?;
    let exported =
        candle_core::safetensors::load(start, &dev).map_err(|e| Error::bad_file(start, e))?;
    let used = exported
        .get(USED)
        .ok_or_else(|| Error::MissingKey {
            path: start.to_path_buf(),
            key: USED.into(),
        })?
        .clone();
    warm_start(&varmap, &base, vq.beta, &exported, start)?;
    let adam = AdamWConfig {
        beta1: vq.betas[0],
        beta2: vq.betas[1],
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let mut opt = AdamW::new(&varmap, adam)?;
    let mut step = 0usize;
    let ckpt = dir.join(CKPT_FILE);
    let resume = ckpt.is_file();
    let mut log = start_run(dir, cfg, resume)?;
    if resume {
        let t =
            candle_core::safetensors::load(&ckpt, &dev).map_err(|e| Error::bad_file(&ckpt, e))?;
        set_vars(&varmap, &t, "g.", &ckpt, &|_| false)?;
        step = t
            .get("state.step")
            .ok_or_else(|| Error::MissingKey {
                path: ckpt.clone(),
                key: "state.step".into(),
            })?
            .to_vec1::<i64>()?
            .first()
            .copied()
            .unwrap_or(0) as usize;
        opt.load_moments("opt.", &t, step as u64)
            .map_err(|e| Error::bad_file(&ckpt, e))?;
    }
    let save = |step: usize, opt: &AdamW| -> Result<()> {
        let mut t: HashMap<String, Tensor> = lock(&varmap)?
            .iter()
            .map(|(k, v)| (format!("g.{k}"), v.as_tensor().detach()))
            .collect();
        t.extend(opt.moments("opt.")?);
        t.insert(
            "state.step".into(),
            Tensor::from_vec(vec![step as i64], 1, &dev)?,
        );
        save_atomic(&t, &ckpt)
    };
    let log_path = dir.join(METRICS_FILE);
    let started = Instant::now();
    let first = step;
    while step < cfg.steps {
        let x = data(step)?.to_device(&dev)?.to_dtype(DType::F32)?;
        let lr = cfg.lr_at(step);
        // The encoder and codebook see no gradient: the codes are those the stages train on.
        let (q, x) = crop_codes(&model.quantized(&x)?, &x, cfg.crop, step)?;
        let xrec = model.decode(&q)?;
        let mse = (&xrec - &x)?.sqr()?.mean_all()?;
        opt.step(&mse.backward()?, lr, None)?;
        step += 1;
        let elapsed_s = started.elapsed().as_secs_f64();
        let p = DecoderProgress {
            step,
            steps: cfg.steps,
            mse: mse.to_scalar::<f32>()? as f64,
            psnr: psnr(&xrec, &x)?,
            lr,
            elapsed_s,
            eta_s: elapsed_s / (step - first) as f64 * (cfg.steps - step) as f64,
        };
        if step.is_multiple_of(cfg.log_every.max(1)) || step == cfg.steps {
            let line = serde_json::to_string(&p).map_err(|e| Error::config(&log_path, e))?;
            writeln!(log, "{line}").map_err(|e| Error::io(&log_path, e))?;
        }
        if (cfg.ckpt_every > 0 && step.is_multiple_of(cfg.ckpt_every)) || step == cfg.steps {
            save(step, &opt)?;
        }
        progress(&p);
    }
    let mut tensors: HashMap<String, Tensor> = lock(&varmap)?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    tensors.insert(USED.into(), used);
    save_atomic(&tensors, out)
}

/// Sets the variables of the tuned model (`varmap`) from the exported VQGAN `from` (read from
/// `path`, built with `base`): every tensor of `base` must be there; tensors only the tuned
/// decoder has (added blocks, attention) keep their initialisation, with the last layer of
/// each residual branch zeroed so that the branch starts as an identity.
fn warm_start(
    varmap: &VarMap,
    base: &VqganConfig,
    beta: f64,
    from: &HashMap<String, Tensor>,
    path: &Path,
) -> Result<()> {
    let base_vars = VarMap::new();
    VqModel::new(&base_vars, base, beta, &Device::Cpu)?;
    let base_keys: HashSet<String> = lock(&base_vars)?.keys().cloned().collect();
    let added = |k: &str| !base_keys.contains(k) && !from.contains_key(k);
    set_vars(varmap, from, "", path, &added)?;
    for (k, v) in lock(varmap)?.iter() {
        let last_of_branch = [
            ".conv2.weight",
            ".conv2.bias",
            ".proj_out.weight",
            ".proj_out.bias",
        ]
        .iter()
        .any(|s| k.ends_with(s));
        if added(k) && last_of_branch {
            v.set(&v.as_tensor().zeros_like()?)?;
        }
    }
    Ok(())
}

/// Sets every variable of `varmap` from `{prefix}{name}` in `from` (read from `path`), naming
/// a missing key or both shapes of a mismatch; variables whose name `may_lack` accepts may be
/// absent (they keep their value).
fn set_vars(
    varmap: &VarMap,
    from: &HashMap<String, Tensor>,
    prefix: &str,
    path: &Path,
    may_lack: &dyn Fn(&str) -> bool,
) -> Result<()> {
    for (k, v) in lock(varmap)?.iter() {
        let key = format!("{prefix}{k}");
        if may_lack(k) && !from.contains_key(&key) {
            continue;
        }
        let src = from.get(&key).ok_or_else(|| Error::MissingKey {
            path: path.to_path_buf(),
            key: key.clone(),
        })?;
        if src.dims() != v.dims() {
            return Err(Error::ShapeMismatch {
                path: path.to_path_buf(),
                key,
                expected: v.dims().to_vec(),
                found: src.dims().to_vec(),
            });
        }
        v.set(&src.to_dtype(DType::F32)?)?;
    }
    Ok(())
}

/// The same random square crop (one offset per image, drawn from `step`) of the codes `q`
/// (B, C, h, w) and the images `x` (B, 3, H, W); `crop` 0 or at least the image side: both whole.
fn crop_codes(q: &Tensor, x: &Tensor, crop: usize, step: usize) -> Result<(Tensor, Tensor)> {
    let (b, _, h, w) = x.dims4()?;
    let (_, _, qh, qw) = q.dims4()?;
    if crop == 0 || (crop >= h && crop >= w) || qh == 0 {
        return Ok((q.clone(), x.clone()));
    }
    let f = h / qh;
    let (ch, cw) = (crop.min(h) / f, crop.min(w) / f);
    let mut rng = ChaCha8Rng::seed_from_u64((step as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut qs = Vec::with_capacity(b);
    let mut xs = Vec::with_capacity(b);
    for i in 0..b {
        let y0 = rng.random_range(0..=qh - ch);
        let x0 = rng.random_range(0..=qw - cw);
        qs.push(q.narrow(0, i, 1)?.narrow(2, y0, ch)?.narrow(3, x0, cw)?);
        xs.push(
            x.narrow(0, i, 1)?
                .narrow(2, y0 * f, ch * f)?
                .narrow(3, x0 * f, cw * f)?,
        );
    }
    Ok((Tensor::cat(&qs, 0)?, Tensor::cat(&xs, 0)?))
}

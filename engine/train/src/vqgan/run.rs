//! The state of a training run: both networks, their optimizers and codebook usage, one
//! training step, dead-code restarts, and checkpoints.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use tessera_engine::vqgan::Vqgan;
use tessera_engine::{Error, Result};

use crate::optim::{AdamW, AdamWConfig};

use super::disc::{Discriminator, hinge_d_loss};
use super::model::VqModel;
use super::{CKPT_FILE, VqganProgress, VqganTrainConfig, lock, psnr, save_atomic};

/// Everything that changes during training.
pub(super) struct Run {
    pub(super) cfg: VqganTrainConfig,
    pub(super) g_vars: VarMap,
    pub(super) d_vars: VarMap,
    pub(super) model: VqModel,
    pub(super) disc: Discriminator,
    pub(super) g_opt: AdamW,
    pub(super) d_opt: AdamW,
    /// Times each code was chosen since the last restart check.
    pub(super) hits: Vec<f32>,
    pub(super) step: usize,
}

const EMBEDDING: &str = "quantize.embedding.weight";

impl Run {
    pub(super) fn new(cfg: &VqganTrainConfig, dev: &Device) -> Result<Self> {
        let vcfg = cfg.vqgan_config();
        if vcfg.ddconfig.ch_mult.is_empty()
            || !cfg.resolution.is_multiple_of(vcfg.downsample_factor())
            || !cfg.crop.is_multiple_of(vcfg.downsample_factor())
            || cfg.batch == 0
            || cfg.steps == 0
        {
            return Err(Error::Input(format!(
                "vqgan training: resolution {} and crop {} must be divisible by f = {}, \
                 batch and steps positive",
                cfg.resolution,
                cfg.crop,
                vcfg.downsample_factor()
            )));
        }
        // Validates the architecture exactly as the engine will when loading the export.
        Vqgan::new(
            VarBuilder::zeros(DType::F32, dev),
            &vcfg,
            1, // only checks the config; the table is read as zeros
        )
        .map_err(|e| Error::Input(format!("vqgan training: {e}")))?;
        let g_vars = VarMap::new();
        let d_vars = VarMap::new();
        let model = VqModel::new(&g_vars, &vcfg, cfg.beta, dev)?;
        let disc = Discriminator::new(&d_vars, cfg.disc_ndf, cfg.disc_layers.max(1), dev)?;
        // Deterministic initialization from the seed (candle's own RNG is global).
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        for vm in [&g_vars, &d_vars] {
            let vars = lock(vm)?;
            let mut names: Vec<&String> = vars.keys().collect();
            names.sort();
            for name in names {
                let var = &vars[name];
                let t = var.as_tensor();
                let init = init_like(name, t, cfg, &mut rng)?;
                var.set(&init)?;
            }
        }
        let g_opt = optimizer(&g_vars, cfg.betas, cfg.weight_decay)?;
        let d_opt = optimizer(&d_vars, cfg.betas, cfg.weight_decay)?;
        Ok(Self {
            cfg: cfg.clone(),
            g_vars,
            d_vars,
            model,
            disc,
            g_opt,
            d_opt,
            hits: vec![0.0; cfg.n_embed],
            step: 0,
        })
    }

    pub(super) fn save(&self, dir: &Path) -> Result<()> {
        let mut t = HashMap::new();
        for (prefix, vm) in [("g.", &self.g_vars), ("d.", &self.d_vars)] {
            for (k, v) in lock(vm)?.iter() {
                t.insert(format!("{prefix}{k}"), v.as_tensor().detach());
            }
        }
        t.extend(self.g_opt.moments("opt.g.")?);
        t.extend(self.d_opt.moments("opt.d.")?);
        let dev = Device::Cpu;
        t.insert(
            "state.step".into(),
            Tensor::from_vec(vec![self.step as i64], 1, &dev)?,
        );
        t.insert(
            "state.hits".into(),
            Tensor::from_vec(self.hits.clone(), self.hits.len(), &dev)?,
        );
        save_atomic(&t, &dir.join(CKPT_FILE))
    }

    pub(super) fn load(&mut self, dir: &Path, dev: &Device) -> Result<()> {
        let path = dir.join(CKPT_FILE);
        let t =
            candle_core::safetensors::load(&path, dev).map_err(|e| Error::bad_file(&path, e))?;
        let get = |k: &str| {
            t.get(k).ok_or_else(|| Error::MissingKey {
                path: path.clone(),
                key: k.into(),
            })
        };
        for (prefix, vm) in [("g.", &self.g_vars), ("d.", &self.d_vars)] {
            for (k, v) in lock(vm)?.iter() {
                let src = get(&format!("{prefix}{k}"))?;
                if src.dims() != v.dims() {
                    return Err(Error::ShapeMismatch {
                        path: path.clone(),
                        key: format!("{prefix}{k}"),
                        expected: v.dims().to_vec(),
                        found: src.dims().to_vec(),
                    });
                }
                v.set(src)?;
            }
        }
        self.step = get("state.step")?
            .to_vec1::<i64>()?
            .first()
            .copied()
            .unwrap_or(0) as usize;
        let bad = |e: Error| Error::bad_file(&path, e);
        self.g_opt
            .load_moments("opt.g.", &t, self.step as u64)
            .map_err(bad)?;
        self.d_opt
            .load_moments("opt.d.", &t, self.disc_updates() as u64)
            .map_err(bad)?;
        let hits = get("state.hits")?.to_vec1::<f32>()?;
        if hits.len() != self.hits.len() {
            return Err(Error::bad_file(
                &path,
                "codebook usage has the wrong length",
            ));
        }
        self.hits = hits;
        Ok(())
    }
}

/// The trainer's AdamW with taming's betas; weight decay on convolution kernels (rank 4) only.
fn optimizer(vars: &VarMap, betas: [f64; 2], weight_decay: f64) -> Result<AdamW> {
    let cfg = AdamWConfig {
        beta1: betas[0],
        beta2: betas[1],
        eps: 1e-8,
        weight_decay,
    };
    AdamW::with_decay(vars, cfg, |_, rank| rank == 4)
}

/// Initial value of a parameter, drawn from `rng`: uniform ±1/√fan_in for convolution kernels
/// (PyTorch's default), ±1/n_embed for the codebook (taming), ones for norm scales, zeros for
/// biases.
fn init_like(
    name: &str,
    t: &Tensor,
    cfg: &VqganTrainConfig,
    rng: &mut ChaCha8Rng,
) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let bound = if name == EMBEDDING {
        1.0 / cfg.n_embed as f64
    } else if dims.len() == 4 {
        1.0 / ((dims[1] * dims[2] * dims[3]) as f64).sqrt()
    } else {
        let one = name.contains("norm") && name.ends_with("weight");
        return Ok(Tensor::full(
            if one { 1f32 } else { 0f32 },
            dims,
            t.device(),
        )?);
    };
    let v: Vec<f32> = (0..t.elem_count())
        .map(|_| rng.random_range(-bound..bound) as f32)
        .collect();
    Ok(Tensor::from_vec(v, dims, t.device())?)
}

impl Run {
    /// Random crops (one offset per image, a multiple of f) while `step < crop_until`.
    pub(super) fn crop(&self, x: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = x.dims4()?;
        let c = self.cfg.crop;
        if c == 0 || self.step >= self.cfg.crop_until || (c >= h && c >= w) {
            return Ok(x.clone());
        }
        let f = self.cfg.vqgan_config().downsample_factor();
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.cfg.seed ^ (self.step as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
        );
        let (c_h, c_w) = (c.min(h), c.min(w));
        let crops = (0..b)
            .map(|i| {
                let y0 = rng.random_range(0..=(h - c_h) / f) * f;
                let x0 = rng.random_range(0..=(w - c_w) / f) * f;
                x.narrow(0, i, 1)?.narrow(2, y0, c_h)?.narrow(3, x0, c_w)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::cat(&crops, 0)?)
    }

    /// Discriminator updates done so far: one per step from `disc_start` on.
    fn disc_updates(&self) -> usize {
        if self.cfg.disc_weight > 0.0 {
            self.step.saturating_sub(self.cfg.disc_start)
        } else {
            0
        }
    }

    /// One generator step and (after `disc_start`) one discriminator step.
    pub(super) fn train_step(&mut self, x: &Tensor) -> Result<VqganProgress> {
        let cfg = self.cfg.clone();
        let (b, c, h, w) = x.dims4()?;
        let f = cfg.vqgan_config().downsample_factor();
        if c != 3 || h % f != 0 || w % f != 0 {
            return Err(Error::Input(format!(
                "vqgan training: batch of shape {:?}, expected (B, 3, H, W) with H, W divisible by f",
                x.dims()
            )));
        }
        let lr = cfg.lr_at(self.step);
        if self.step == 0 {
            // Codes start on encoder outputs of the first batch (every code counts as dead),
            // instead of collapsing onto the one nearest entry of a tiny random codebook.
            self.restart(&self.model.encode_rows(x)?)?;
        }
        let fwd = self.model.forward(x)?;
        let diff = (&fwd.xrec - x)?;
        let rec = diff.abs()?.mean_all()?;
        let mut loss = (&rec + &fwd.q_loss)?;
        let gan = cfg.disc_weight > 0.0 && self.step >= cfg.disc_start;
        let (mut g_loss, mut d_loss, mut d_weight) = (0.0, 0.0, 0.0);
        if gan {
            // Gradient of the adversarial term at the decoder output, through D only; its norm
            // against that of the reconstruction term gives taming's adaptive weight.
            let leaf = Var::from_tensor(&fwd.xrec.detach())?;
            let g = self.disc.forward(leaf.as_tensor())?.mean_all()?.neg()?;
            g_loss = g.to_scalar::<f32>()? as f64;
            let g_grad = g
                .backward()?
                .remove(leaf.as_tensor())
                .ok_or_else(|| Error::Input("vqgan: no gradient at the decoder output".into()))?;
            let n = (b * c * h * w) as f64;
            let rec_norm = diff.detach().sign()?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            let rec_norm = rec_norm.sqrt() / n;
            let g_norm = g_grad.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            d_weight = (rec_norm / (g_norm.sqrt() + 1e-4)).clamp(0.0, 1e4) * cfg.disc_weight;
            // Surrogate whose gradient w.r.t. x̂ is d_weight · ∂g/∂x̂.
            let surrogate = (&fwd.xrec * (g_grad * d_weight)?.detach())?.sum_all()?;
            loss = (loss + surrogate)?;
        }
        let grads = loss.backward()?;
        self.g_opt.step(&grads, lr, None)?;
        if gan {
            let real = self.disc.forward(x)?;
            let fake = self.disc.forward(&fwd.xrec.detach())?;
            let dl = hinge_d_loss(&real, &fake)?;
            d_loss = dl.to_scalar::<f32>()? as f64;
            self.d_opt.step(&dl.backward()?, lr, None)?;
        }
        // Codebook statistics and restarts of dead codes.
        let mut counts = vec![0f32; cfg.n_embed];
        for &code in &fwd.codes {
            counts[code as usize] += 1.0;
        }
        let total = fwd.codes.len() as f64;
        let entropy: f64 = counts
            .iter()
            .filter(|&&n| n > 0.0)
            .map(|&n| {
                let p = n as f64 / total;
                -p * p.ln()
            })
            .sum();
        for (hsum, n) in self.hits.iter_mut().zip(&counts) {
            *hsum += n;
        }
        let used_codes = self.hits.iter().filter(|&&n| n > 0.0).count();
        self.step += 1;
        let mut restarted = 0;
        if cfg.restart_every > 0
            && self.step.is_multiple_of(cfg.restart_every)
            && self.step <= cfg.restart_until
        {
            restarted = self.restart(&fwd.z_rows)?;
        }
        let rec_loss = rec.to_scalar::<f32>()? as f64;
        Ok(VqganProgress {
            step: self.step,
            steps: cfg.steps,
            rec_loss,
            q_loss: fwd.q_loss.to_scalar::<f32>()? as f64,
            g_loss,
            d_loss,
            d_weight,
            psnr: psnr(&fwd.xrec, x)?,
            perplexity: entropy.exp(),
            used_codes,
            restarted,
            lr,
            elapsed_s: 0.0,
            eta_s: 0.0,
        })
    }

    /// Re-initializes every code not chosen since the last check to a random latent vector of
    /// the current batch (plus a little noise, so two restarts from one vector can separate).
    pub(super) fn restart(&mut self, z_rows: &Tensor) -> Result<usize> {
        let dead: Vec<usize> = (0..self.hits.len())
            .filter(|&i| self.hits[i] == 0.0)
            .collect();
        self.hits.iter_mut().for_each(|n| *n = 0.0);
        if dead.is_empty() {
            return Ok(0);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.cfg.seed ^ (self.step as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let rows = z_rows.to_vec2::<f32>()?;
        let mut emb = self.model.embedding.to_vec2::<f32>()?;
        let spread = 0.01;
        for &d in &dead {
            let src = &rows[rng.random_range(0..rows.len())];
            for (e, &z) in emb[d].iter_mut().zip(src) {
                *e = z + spread * rng.random_range(-1.0f32..1.0) * (z.abs() + 1e-3);
            }
        }
        let (n, e) = self.model.embedding.dims2()?;
        let flat: Vec<f32> = emb.into_iter().flatten().collect();
        let new = Tensor::from_vec(flat, (n, e), self.model.embedding.device())?;
        let vars = lock(&self.g_vars)?;
        let var = vars
            .get(EMBEDDING)
            .ok_or_else(|| Error::Input("vqgan: the codebook variable is missing".into()))?;
        var.set(&new)?;
        drop(vars);
        self.g_opt.reset_rows(EMBEDDING, &dead);
        Ok(dead.len())
    }
}

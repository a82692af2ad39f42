//! Optimisation for every trainer (stages, VQGAN and its discriminator, decoder fine-tune,
//! classifier): one AdamW (the stage trainer's official betas (0.9, 0.95) by default; the VQGAN
//! passes taming's (0.5, 0.9)), a linear warm-up followed by cosine decay, gradient clipping by global norm, an exponential moving
//! average of the weights with the official warm-up (`imagebart/modules/ema.py`), and atomic
//! checkpoint files.
//!
//! The optimiser state lives in plain `Vec<f32>`s and is updated in one pass per parameter, so
//! an update costs a few memory sweeps over the weights and is bit-for-bit reproducible.
//! candle-nn's `AdamW` is not used because it keeps its moments private: a resumed run could
//! not continue exactly where it stopped.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use tessera_engine::{Error, Result};

/// AdamW hyper-parameters (PyTorch semantics: decoupled weight decay `w ← w·(1 − lr·λ)`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// β₁.
    pub beta1: f64,
    /// β₂ (0.95 in the official configs).
    pub beta2: f64,
    /// ε added to √v̂.
    pub eps: f64,
    /// λ, applied to the matrices of linear layers only (not to embeddings, LayerNorms,
    /// biases), as minGPT does.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// Learning rate at `step` (0-based) of `total`: linear warm-up from `base/warmup` to `base`
/// over `warmup` steps, then cosine decay to `base·final_frac` at `total`.
pub fn lr_at(step: usize, base: f64, warmup: usize, total: usize, final_frac: f64) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let p = ((step - warmup) as f64 / span as f64).min(1.0);
    let min = base * final_frac;
    min + (base - min) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
}

/// Whether a parameter gets weight decay: rank-2 weights that are not embedding tables.
pub fn decays(name: &str, rank: usize) -> bool {
    rank == 2 && !name.contains("emb")
}

/// One parameter with its Adam moments.
struct Slot {
    name: String,
    var: Var,
    m: Vec<f32>,
    v: Vec<f32>,
    decay: bool,
}

/// AdamW over every variable of a [`VarMap`] (in name order).
pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    /// Updates done (the bias correction's t).
    t: u64,
}

/// A variable's values as one f32 vector.
fn flat(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

/// The variables of `varmap`, sorted by name.
pub fn sorted_vars(varmap: &VarMap) -> Result<Vec<(String, Var)>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| Error::Input("variable map poisoned".into()))?;
    let mut vars: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(vars)
}

impl AdamW {
    /// Zero moments for every variable of `varmap`; weight decay on the matrices of linear
    /// layers ([`decays`]).
    pub fn new(varmap: &VarMap, cfg: AdamWConfig) -> Result<Self> {
        Self::with_decay(varmap, cfg, decays)
    }

    /// The same with another rule for which variables (name, rank) get weight decay.
    pub fn with_decay(
        varmap: &VarMap,
        cfg: AdamWConfig,
        decays: impl Fn(&str, usize) -> bool,
    ) -> Result<Self> {
        let slots = sorted_vars(varmap)?
            .into_iter()
            .map(|(name, var)| {
                let n = var.elem_count();
                let decay = decays(&name, var.rank());
                Slot {
                    name,
                    var,
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                    decay,
                }
            })
            .collect();
        Ok(Self { cfg, slots, t: 0 })
    }

    /// Number of updates done.
    pub fn updates(&self) -> u64 {
        self.t
    }

    /// Applies one update with learning rate `lr`, clipping the gradients to global L2 norm
    /// `clip` first (when given). Variables without a gradient are left alone. Returns the
    /// global gradient norm before clipping.
    pub fn step(
        &mut self,
        grads: &candle_core::backprop::GradStore,
        lr: f64,
        clip: Option<f64>,
    ) -> Result<f64> {
        let mut gs: Vec<Option<Vec<f32>>> = Vec::with_capacity(self.slots.len());
        let mut sq = 0f64;
        for s in &self.slots {
            let g = match grads.get(s.var.as_tensor()) {
                Some(g) => Some(flat(g)?),
                None => None,
            };
            if let Some(g) = &g {
                sq += g.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>();
            }
            gs.push(g);
        }
        let norm = sq.sqrt();
        if !norm.is_finite() {
            return Err(Error::Input(format!(
                "gradient norm is {norm}: training diverged (lower the learning rate)"
            )));
        }
        let scale = match clip {
            Some(c) if c > 0.0 && norm > c => c / norm,
            _ => 1.0,
        };
        self.t += 1;
        let (b1, b2, eps) = (self.cfg.beta1, self.cfg.beta2, self.cfg.eps);
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2 = 1.0 - b2.powi(self.t as i32);
        let step_size = (lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let (b1, b2, eps, scale) = (b1 as f32, b2 as f32, eps as f32, scale as f32);
        for (s, g) in self.slots.iter_mut().zip(gs) {
            let Some(g) = g else { continue };
            let mut w = flat(s.var.as_tensor())?;
            let shrink = if s.decay {
                (1.0 - lr * self.cfg.weight_decay) as f32
            } else {
                1.0
            };
            for i in 0..w.len() {
                let gi = g[i] * scale;
                s.m[i] = b1 * s.m[i] + (1.0 - b1) * gi;
                s.v[i] = b2 * s.v[i] + (1.0 - b2) * gi * gi;
                let denom = s.v[i].sqrt() / bc2_sqrt + eps;
                w[i] = w[i] * shrink - step_size * s.m[i] / denom;
            }
            let t = Tensor::from_vec(w, s.var.shape(), s.var.device())?;
            s.var.set(&t)?;
        }
        Ok(norm)
    }

    /// Zeroes both moments of rows `rows` of the matrix `name` (a codebook entry restarted by
    /// the VQGAN trainer starts its statistics afresh). Unknown names and rows are ignored.
    pub fn reset_rows(&mut self, name: &str, rows: &[usize]) {
        let Some(s) = self.slots.iter_mut().find(|s| s.name == name) else {
            return;
        };
        let dims = s.var.dims();
        let width = if dims.len() == 2 { dims[1] } else { return };
        for &r in rows {
            let span = r * width..(r + 1) * width;
            if span.end <= s.m.len() {
                s.m[span.clone()].fill(0.0);
                s.v[span].fill(0.0);
            }
        }
    }

    /// The moments as named tensors (`adam_m.<name>`, `adam_v.<name>`), for checkpoints.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        self.moments("adam_")
    }

    /// The moments as `{prefix}m.<name>` and `{prefix}v.<name>`: one checkpoint can hold the
    /// states of several optimizers (the VQGAN's generator and discriminator).
    pub fn moments(&self, prefix: &str) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(2 * self.slots.len());
        for s in &self.slots {
            let shape = s.var.shape();
            out.push((
                format!("{prefix}m.{}", s.name),
                Tensor::from_slice(&s.m, shape, &Device::Cpu)?,
            ));
            out.push((
                format!("{prefix}v.{}", s.name),
                Tensor::from_slice(&s.v, shape, &Device::Cpu)?,
            ));
        }
        Ok(out)
    }

    /// Restores the moments written by [`AdamW::state`] and the update count.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, updates: u64) -> Result<()> {
        self.load_moments("adam_", tensors, updates)
    }

    /// Restores the moments written by [`AdamW::moments`] under `prefix` and the update count.
    pub fn load_moments(
        &mut self,
        prefix: &str,
        tensors: &HashMap<String, Tensor>,
        updates: u64,
    ) -> Result<()> {
        for s in &mut self.slots {
            for (kind, dst) in [("m", &mut s.m), ("v", &mut s.v)] {
                let key = format!("{prefix}{kind}.{}", s.name);
                let t = tensors
                    .get(&key)
                    .ok_or_else(|| Error::Input(format!("checkpoint lacks tensor `{key}`")))?;
                let v = flat(t)?;
                if v.len() != dst.len() {
                    return Err(Error::Input(format!(
                        "checkpoint tensor {key} has shape {:?}, expected {:?}",
                        t.dims(),
                        s.var.dims()
                    )));
                }
                *dst = v;
            }
        }
        self.t = updates;
        Ok(())
    }
}

/// Exponential moving average of the weights (`LitEma`): after update n (1-based) the decay
/// is `min(decay, (1 + n)/(10 + n))` and `shadow ← shadow − (1 − d)(shadow − w)`.
pub struct Ema {
    decay: f64,
    num_updates: u64,
    shadow: Vec<(String, Var, Vec<f32>)>,
}

impl Ema {
    /// Starts the average at the current weights.
    pub fn new(varmap: &VarMap, decay: f64) -> Result<Self> {
        let shadow = sorted_vars(varmap)?
            .into_iter()
            .map(|(name, var)| {
                let w = flat(var.as_tensor())?;
                Ok((name, var, w))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            decay,
            num_updates: 0,
            shadow,
        })
    }

    /// Number of updates so far.
    pub fn num_updates(&self) -> u64 {
        self.num_updates
    }

    /// Folds the current weights in.
    pub fn update(&mut self) -> Result<()> {
        self.num_updates += 1;
        let n = self.num_updates as f64;
        let d = self.decay.min((1.0 + n) / (10.0 + n));
        let one_minus = (1.0 - d) as f32;
        for (_, var, s) in &mut self.shadow {
            let w = flat(var.as_tensor())?;
            for (si, wi) in s.iter_mut().zip(w) {
                *si -= one_minus * (*si - wi);
            }
        }
        Ok(())
    }

    /// The averaged weights under their variable names.
    pub fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        self.shadow
            .iter()
            .map(|(name, var, s)| {
                Ok((
                    name.clone(),
                    Tensor::from_slice(s, var.shape(), &Device::Cpu)?,
                ))
            })
            .collect()
    }

    /// Restores the average (`ema.<name>` tensors) and its update count.
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        num_updates: u64,
    ) -> Result<()> {
        for (name, _, s) in &mut self.shadow {
            let key = format!("ema.{name}");
            let t = tensors
                .get(&key)
                .ok_or_else(|| Error::Input(format!("checkpoint lacks tensor `{key}`")))?;
            let v = flat(t)?;
            if v.len() != s.len() {
                return Err(Error::Input(format!(
                    "checkpoint tensor {key} has {} values, expected {}",
                    v.len(),
                    s.len()
                )));
            }
            *s = v;
        }
        self.num_updates = num_updates;
        Ok(())
    }
}

/// Writes `tensors` (plus `meta` as JSON, stored as the u8 tensor `__meta__`) to `path`
/// atomically: a temporary file in the same folder, then a rename.
pub fn save_checkpoint(
    path: &Path,
    tensors: Vec<(String, Tensor)>,
    meta: &serde_json::Value,
) -> Result<()> {
    let mut map: HashMap<String, Tensor> = tensors.into_iter().collect();
    let bytes = serde_json::to_vec(meta).map_err(|e| Error::Input(e.to_string()))?;
    let n = bytes.len();
    map.insert(META_KEY.into(), Tensor::from_vec(bytes, n, &Device::Cpu)?);
    let tmp = path.with_extension("safetensors.tmp");
    candle_core::safetensors::save(&map, &tmp)
        .map_err(|e| Error::io(&tmp, std::io::Error::other(e)))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    Ok(())
}

/// Name of the tensor holding a checkpoint's JSON metadata.
pub const META_KEY: &str = "__meta__";

/// Reads a file written by [`save_checkpoint`]: its tensors and its metadata.
pub fn load_checkpoint(path: &Path) -> Result<(HashMap<String, Tensor>, serde_json::Value)> {
    let mut map = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| Error::bad_file(path, format!("not a readable checkpoint: {e}")))?;
    let meta = map
        .remove(META_KEY)
        .ok_or_else(|| Error::bad_file(path, "checkpoint without metadata"))?;
    let bytes = meta.to_vec1::<u8>()?;
    let meta = serde_json::from_slice(&bytes)
        .map_err(|e| Error::bad_file(path, format!("checkpoint metadata: {e}")))?;
    Ok((map, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        assert!((lr_at(0, 1.0, 10, 100, 0.0) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, 1.0, 10, 100, 0.0) - 1.0).abs() < 1e-12);
        assert!((lr_at(55, 1.0, 10, 100, 0.0) - 0.5).abs() < 1e-12);
        assert!((lr_at(100, 1.0, 10, 100, 0.1) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn adamw_first_step_moves_by_lr() {
        let vm = VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let w = vb.get((2, 2), "w").unwrap();
        let loss = (w.sum_all().unwrap() * 3.0).unwrap();
        let grads = loss.backward().unwrap();
        let mut opt = AdamW::new(
            &vm,
            AdamWConfig {
                weight_decay: 0.0,
                ..AdamWConfig::default()
            },
        )
        .unwrap();
        let norm = opt.step(&grads, 0.1, None).unwrap();
        assert!((norm - 6.0).abs() < 1e-9);
        let after = vm.get(
            (2, 2),
            "w",
            candle_nn::Init::Const(0.0),
            DType::F32,
            &Device::Cpu,
        );
        let v = after
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // Adam's first step is −lr·sign(g) (up to ε).
        for x in v {
            assert!((x + 0.1).abs() < 1e-5, "{x}");
        }
    }

    #[test]
    fn moments_round_trip_under_a_prefix_and_rows_reset() {
        let vm = VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let w = vb.get((3, 2), "emb").unwrap();
        let grads = (w.sqr().unwrap().sum_all().unwrap() + w.sum_all().unwrap())
            .unwrap()
            .backward()
            .unwrap();
        let mut opt = AdamW::new(&vm, AdamWConfig::default()).unwrap();
        opt.step(&grads, 0.1, None).unwrap();
        let saved: HashMap<String, Tensor> = opt.moments("opt.g.").unwrap().into_iter().collect();
        let mut keys: Vec<&String> = saved.keys().collect();
        keys.sort();
        assert_eq!(keys, ["opt.g.m.emb", "opt.g.v.emb"]);

        let mut other = AdamW::new(&vm, AdamWConfig::default()).unwrap();
        assert!(other.load_moments("opt.d.", &saved, 1).is_err());
        other.load_moments("opt.g.", &saved, 1).unwrap();
        assert_eq!(other.updates(), 1);
        other.reset_rows("emb", &[1, 7]);
        let m = other.moments("x.").unwrap()[0].1.to_vec2::<f32>().unwrap();
        let before = saved["opt.g.m.emb"].to_vec2::<f32>().unwrap();
        assert_eq!(m[0], before[0]);
        assert_eq!(m[1], [0.0, 0.0]);
        assert_eq!(m[2], before[2]);
        assert!(before[1].iter().all(|x| *x != 0.0));
    }
}

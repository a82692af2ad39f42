//! AdamW over the variables of a `VarMap`, with moments that can be saved and restored (candle's
//! `AdamW` keeps them private) so a resumed run continues exactly.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use candle_nn::VarMap;

/// One parameter with its first and second moments.
struct Slot {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

/// AdamW (Loshchilov & Hutter) with β = (0.5, 0.9) as taming uses for VQGANs.
pub(crate) struct Adam {
    slots: Vec<Slot>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl Adam {
    /// Optimizes every variable in `varmap`; weight decay only on convolution kernels (rank 4).
    pub fn new(varmap: &VarMap, beta1: f64, beta2: f64, weight_decay: f64) -> Result<Self> {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("vqgan: the parameter map is poisoned".into()))?;
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        let mut slots = Vec::with_capacity(names.len());
        for name in names {
            let var = data[name].clone();
            let zeros = var.as_tensor().zeros_like()?;
            slots.push(Slot {
                name: name.clone(),
                decay: var.rank() == 4,
                var,
                m: zeros.clone(),
                v: zeros,
            });
        }
        Ok(Self {
            slots,
            beta1,
            beta2,
            eps: 1e-8,
            weight_decay,
        })
    }

    /// One update at `lr`; `t` ≥ 1 is the number of updates so far including this one.
    pub fn step(&mut self, grads: &GradStore, lr: f64, t: u64) -> Result<()> {
        let t = t.max(1) as i32;
        let c1 = 1.0 - self.beta1.powi(t);
        let c2 = 1.0 - self.beta2.powi(t);
        for s in &mut self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                continue;
            };
            // Gradients carry the graph of the step; detached moments do not chain graphs.
            let g = g.detach();
            s.m = ((&s.m * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
            s.v = ((&s.v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let update = ((&s.m / c1)? / ((&s.v / c2)?.sqrt()? + self.eps)?)?;
            let mut w = s.var.as_tensor().detach();
            if s.decay && self.weight_decay > 0.0 {
                w = (w * (1.0 - lr * self.weight_decay))?;
            }
            s.var.set(&(w - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// Zeroes the moments of rows `rows` of parameter `name` (after a codebook restart).
    pub fn reset_rows(&mut self, name: &str, rows: &[usize]) -> Result<()> {
        let Some(s) = self.slots.iter_mut().find(|s| s.name == name) else {
            return Ok(());
        };
        let (n, _) = s.m.dims2()?;
        let mut mask = vec![1f32; n];
        for &r in rows {
            if let Some(m) = mask.get_mut(r) {
                *m = 0.0;
            }
        }
        let mask = Tensor::from_vec(mask, (n, 1), s.m.device())?;
        s.m = s.m.broadcast_mul(&mask)?;
        s.v = s.v.broadcast_mul(&mask)?;
        Ok(())
    }

    /// The moments as named tensors `{prefix}m.{name}` / `{prefix}v.{name}`.
    pub fn state(&self, prefix: &str, out: &mut HashMap<String, Tensor>) {
        for s in &self.slots {
            out.insert(format!("{prefix}m.{}", s.name), s.m.clone());
            out.insert(format!("{prefix}v.{}", s.name), s.v.clone());
        }
    }

    /// Restores moments saved by [`Adam::state`]; a missing one is an error naming it.
    pub fn load_state(&mut self, prefix: &str, from: &HashMap<String, Tensor>) -> Result<()> {
        for s in &mut self.slots {
            for (kind, slot) in [("m", &mut s.m), ("v", &mut s.v)] {
                let key = format!("{prefix}{kind}.{}", s.name);
                let t = from.get(&key).ok_or_else(|| {
                    candle_core::Error::Msg(format!("checkpoint lacks optimizer state `{key}`"))
                })?;
                if t.dims() != slot.dims() {
                    candle_core::bail!("checkpoint `{key}` has shape {:?}", t.dims());
                }
                *slot = t.clone();
            }
        }
        Ok(())
    }
}

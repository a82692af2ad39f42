//! The forward (corruption) chain and the training target of one stage (imagebart.md §1.1,
//! §1.4): x_0 → x_1 → … → x_t generated sequentially per batch with a Bernoulli(β_s) redraw
//! and `randint(0, K)`, the posterior q(x_{t−1} | x_t, x_0) as the soft target, and the loss
//! `α·KL(q ‖ p) + (1 − α)·CE(p, x_{t−1})` as one weighted negative log-likelihood.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use tessera_engine::nn::grad::f32_slice;
use tessera_engine::schedule::Schedule;

pub use tessera_engine::schedule::forward_chain;

/// The training target of stage t at every position, as rows of `k` weights (flattened
/// `(rows, k)`): `α·q(x_{t−1} | x_t, x_0) + (1 − α)·onehot(x_{t−1})`. Each row sums to 1.
/// Also returns the mean over rows of `α·Σ_k q_k ln q_k`, the constant that turns the weighted
/// negative log-likelihood into `α·KL + (1 − α)·CE`.
pub fn target_weights(
    x0: &[u32],
    xt: &[u32],
    xprev: &[u32],
    t: usize,
    schedule: &Schedule,
    k: usize,
    alpha_mix: f32,
) -> (Vec<f32>, f64) {
    let kf = k as f64;
    let alpha = alpha_mix as f64;
    // q(x_{t−1}|x_0) = ᾱ_{t−1}·onehot(x_0) + (1 − ᾱ_{t−1})/K; q(x_t|x_{t−1}) likewise with α_t.
    let abar = schedule.alphacum[t - 1] as f64;
    let at = schedule.alphats[t] as f64;
    let a_off = (1.0 - abar) / kf;
    let a_on = abar + a_off;
    let b_off = (1.0 - at) / kf;
    let b_on = at + b_off;
    let xlogx = |p: f64| if p > 0.0 { p * p.ln() } else { 0.0 };
    let mut w = vec![0f32; x0.len() * k];
    let mut neg_entropy = 0f64;
    for (i, row) in w.chunks_mut(k).enumerate() {
        let (a, b, y) = (x0[i] as usize, xt[i] as usize, xprev[i] as usize);
        if alpha > 0.0 {
            let base = a_off * b_off;
            let (z, specials) = if a == b {
                let v = a_on * b_on;
                ((kf - 1.0) * base + v, vec![(a, v)])
            } else {
                let (va, vb) = (a_on * b_off, a_off * b_on);
                ((kf - 2.0) * base + va + vb, vec![(a, va), (b, vb)])
            };
            let q_base = base / z;
            row.fill((alpha * q_base) as f32);
            neg_entropy += (kf - specials.len() as f64) * xlogx(q_base);
            for (c, v) in specials {
                let q = v / z;
                row[c] = (alpha * q) as f32;
                neg_entropy += xlogx(q);
            }
        }
        row[y] += (1.0 - alpha) as f32;
    }
    let rows = x0.len().max(1) as f64;
    (w, alpha * neg_entropy / rows)
}

/// Mean over rows of `−Σ_k w_k·log softmax(z)_k` for logits `z` and weights `w` of the same
/// shape `(…, K)` whose rows sum to 1; backward `(softmax(z) − w)/rows`. CPU, f32.
#[derive(Debug, Clone, Copy)]
pub struct SoftTargetNll;

/// Rows per parallel task.
const ROWS: usize = 32;

/// `log Σ exp(z)` of one row.
fn logsumexp(z: &[f32]) -> f32 {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let s: f32 = z.iter().map(|v| (v - max).exp()).sum();
    max + s.ln()
}

impl CustomOp2 for SoftTargetNll {
    fn name(&self) -> &'static str {
        "soft-target-nll"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (z, w) = (
            f32_slice(s1, l1, "soft-target loss")?,
            f32_slice(s2, l2, "soft-target loss")?,
        );
        let Some(&k) = l1.shape().dims().last() else {
            candle_core::bail!("soft-target loss: scalar logits")
        };
        if z.len() != w.len() || k == 0 {
            candle_core::bail!("soft-target loss: logits and weights differ in shape")
        }
        let rows = z.len() / k;
        let total: f64 = z
            .par_chunks(k * ROWS)
            .zip(w.par_chunks(k * ROWS))
            .map(|(zc, wc)| {
                let mut acc = 0f64;
                for (zr, wr) in zc.chunks(k).zip(wc.chunks(k)) {
                    let lse = logsumexp(zr);
                    for (zi, wi) in zr.iter().zip(wr) {
                        if *wi != 0.0 {
                            acc += (*wi as f64) * ((lse - zi) as f64);
                        }
                    }
                }
                acc
            })
            .collect::<Vec<_>>()
            .into_iter()
            .sum();
        Ok((
            CpuStorage::F32(vec![(total / rows as f64) as f32]),
            Shape::from(()),
        ))
    }

    fn bwd(
        &self,
        arg1: &Tensor,
        arg2: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let k = arg1.dim(candle_core::D::Minus1)?;
        let z = arg1.flatten_all()?.to_vec1::<f32>()?;
        let w = arg2.flatten_all()?.to_vec1::<f32>()?;
        let g = grad_res.to_scalar::<f32>()?;
        let rows = z.len() / k.max(1);
        let scale = g / rows.max(1) as f32;
        let mut dz = vec![0f32; z.len()];
        dz.par_chunks_mut(k * ROWS)
            .zip(z.par_chunks(k * ROWS).zip(w.par_chunks(k * ROWS)))
            .for_each(|(dc, (zc, wc))| {
                for ((dr, zr), wr) in dc.chunks_mut(k).zip(zc.chunks(k)).zip(wc.chunks(k)) {
                    let lse = logsumexp(zr);
                    for i in 0..k {
                        dr[i] = scale * ((zr[i] - lse).exp() - wr[i]);
                    }
                }
            });
        Ok((
            Some(Tensor::from_vec(dz, arg1.shape(), arg1.device())?),
            None,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posterior_rows_sum_to_one_and_match_bayes() {
        let s = Schedule::geometric(4);
        let k = 7;
        let (w, _) = target_weights(&[2, 2], &[2, 5], &[0, 0], 3, &s, k, 1.0);
        for row in w.chunks(k) {
            let sum: f32 = row.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5, "{sum}");
        }
        // Row 1 by Bayes: p(x_{t−1}=c) ∝ q(c | x_0) q(x_t | c).
        let (abar, at) = (s.alphacum[2] as f64, s.alphats[3] as f64);
        let prior = |c: usize| abar * f64::from(c == 2) + (1.0 - abar) / k as f64;
        let like = |c: usize| at * f64::from(c == 5) + (1.0 - at) / k as f64;
        let z: f64 = (0..k).map(|c| prior(c) * like(c)).sum();
        for c in 0..k {
            let want = prior(c) * like(c) / z;
            assert!((w[k + c] as f64 - want).abs() < 1e-6, "class {c}");
        }
    }
}

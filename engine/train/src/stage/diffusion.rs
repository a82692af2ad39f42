//! The forward (corruption) chain and the training target of one stage (imagebart.md §1.1,
//! §1.4): x_0 → x_1 → … → x_t generated sequentially per batch with a Bernoulli(β_s) redraw
//! and `randint(0, K)`, the posterior q(x_{t−1} | x_t, x_0) as the soft target, and the loss
//! `α·KL(q ‖ p) + (1 − α)·CE(p, x_{t−1})` as one weighted negative log-likelihood.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use tessera_engine::nn::fastmath;
use tessera_engine::nn::grad::f32_slice;
use tessera_engine::schedule::Schedule;

pub use tessera_engine::schedule::forward_chain;

/// The training target of one position: weight `base` on every code plus `extra[j]` on code
/// `idx[j]` (unused slots add 0). At most three codes differ from the rest — x_0's and x_t's
/// in the posterior and x_{t−1}'s in the cross-entropy — so a row is kept in these few numbers
/// instead of `K` weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowTarget {
    /// The weight of every code.
    pub base: f32,
    /// The codes whose weight differs.
    pub idx: [u32; 3],
    /// What each of them adds to `base`.
    pub extra: [f32; 3],
}

impl RowTarget {
    /// The `k` weights of the row.
    pub fn weights(&self, k: usize) -> Vec<f32> {
        let mut w = vec![self.base; k];
        for (&c, &e) in self.idx.iter().zip(&self.extra) {
            w[c as usize] += e;
        }
        w
    }
}

/// The training target of stage t at every position: `α·q(x_{t−1} | x_t, x_0) + (1 − α)·
/// onehot(x_{t−1})`, each row summing to 1. Also returns the mean over rows of
/// `α·Σ_k q_k ln q_k`, the constant that turns the weighted negative log-likelihood into
/// `α·KL + (1 − α)·CE`.
pub fn target_rows(
    x0: &[u32],
    xt: &[u32],
    xprev: &[u32],
    t: usize,
    schedule: &Schedule,
    k: usize,
    alpha_mix: f32,
) -> (Vec<RowTarget>, f64) {
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
    let mut neg_entropy = 0f64;
    let rows = (0..x0.len())
        .map(|i| {
            let (a, b, y) = (x0[i], xt[i], xprev[i]);
            let mut row = RowTarget {
                base: 0.0,
                idx: [y, 0, 0],
                extra: [(1.0 - alpha) as f32, 0.0, 0.0],
            };
            if alpha > 0.0 {
                let base = a_off * b_off;
                let (z, specials) = if a == b {
                    let v = a_on * b_on;
                    ((kf - 1.0) * base + v, [(a, v), (0, base)])
                } else {
                    let (va, vb) = (a_on * b_off, a_off * b_on);
                    ((kf - 2.0) * base + va + vb, [(a, va), (b, vb)])
                };
                let n_special = if a == b { 1 } else { 2 };
                let q_base = base / z;
                row.base = (alpha * q_base) as f32;
                neg_entropy += (kf - n_special as f64) * xlogx(q_base);
                for (j, &(c, v)) in specials[..n_special].iter().enumerate() {
                    let q = v / z;
                    row.idx[j + 1] = c;
                    row.extra[j + 1] = (alpha * q) as f32 - row.base;
                    neg_entropy += xlogx(q);
                }
            }
            row
        })
        .collect();
    let n = x0.len().max(1) as f64;
    (rows, alpha * neg_entropy / n)
}

/// [`target_rows`] written out as `(rows, k)` weights (flattened).
pub fn target_weights(
    x0: &[u32],
    xt: &[u32],
    xprev: &[u32],
    t: usize,
    schedule: &Schedule,
    k: usize,
    alpha_mix: f32,
) -> (Vec<f32>, f64) {
    let (rows, neg_entropy) = target_rows(x0, xt, xprev, t, schedule, k, alpha_mix);
    (
        rows.iter().flat_map(|r| r.weights(k)).collect(),
        neg_entropy,
    )
}

/// Rows per parallel task.
const ROWS: usize = 32;

/// What a forward pass of [`SoftTargetLoss`] leaves for its backward pass and its caller.
#[derive(Debug, Default)]
struct LossState {
    /// `(softmax(z) − w)/rows` of every row, when asked for.
    grad: Option<Vec<f32>>,
    /// Mean cross-entropy at the true codes.
    ce: f64,
}

/// Mean over rows of `−Σ_k w_k·log softmax(z)_k` for logits `z` `(…, K)` and row targets `w`
/// ([`RowTarget`]), with backward `(softmax(z) − w)/rows`, all in one pass over the logits: the
/// forward keeps the gradient (the softmax is at hand) and the cross-entropy at `truth`
/// ([`SoftTargetLoss::ce`]). CPU, f32; applied with `apply_op1` (the clone shares the state).
#[derive(Debug, Clone)]
pub struct SoftTargetLoss {
    targets: Arc<[RowTarget]>,
    truth: Arc<[u32]>,
    keep_grad: bool,
    state: Arc<Mutex<LossState>>,
}

impl SoftTargetLoss {
    /// The loss for these row targets, with `truth[i]` the code of row i for the
    /// cross-entropy; `keep_grad` false for a forward pass without backward.
    pub fn new(targets: Vec<RowTarget>, truth: Vec<u32>, keep_grad: bool) -> Self {
        Self {
            targets: targets.into(),
            truth: truth.into(),
            keep_grad,
            state: Arc::default(),
        }
    }

    /// Mean cross-entropy `−log softmax(z)_truth` of the last forward pass (nats).
    pub fn ce(&self) -> f64 {
        self.state.lock().map_or(f64::NAN, |s| s.ce)
    }
}

/// `(Σ w·(lse − z), lse − z_truth)` of one row, its gradient written into `g` (scaled by
/// `inv_rows`) — `g` is also the scratch of the softmax.
fn loss_row(z: &[f32], target: &RowTarget, truth: u32, g: &mut [f32], inv_rows: f32) -> (f64, f64) {
    let (max, sum_z) = fastmath::max_and_sum(z);
    let sum = fastmath::exp_shifted(z, max, g);
    let lse = max + sum.ln();
    let mut nll = lse as f64 - target.base as f64 * sum_z as f64;
    for (&c, &e) in target.idx.iter().zip(&target.extra) {
        nll -= e as f64 * z[c as usize] as f64;
    }
    let inv = 1.0 / sum;
    let base = target.base;
    for v in g.iter_mut() {
        *v = (*v * inv - base) * inv_rows;
    }
    for (&c, &e) in target.idx.iter().zip(&target.extra) {
        g[c as usize] -= e * inv_rows;
    }
    (nll, (lse - z[truth as usize]) as f64)
}

impl CustomOp1 for SoftTargetLoss {
    fn name(&self) -> &'static str {
        "soft-target-loss"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let z = f32_slice(storage, layout, "soft-target loss")?;
        let Some(&k) = layout.shape().dims().last() else {
            candle_core::bail!("soft-target loss: scalar logits")
        };
        let rows = z.len() / k.max(1);
        if k == 0 || rows != self.targets.len() || rows != self.truth.len() {
            candle_core::bail!(
                "soft-target loss: {rows} rows of logits for {} targets",
                self.targets.len()
            )
        }
        let out_of_range = self
            .targets
            .iter()
            .any(|t| t.idx.iter().any(|&c| c as usize >= k));
        if out_of_range || self.truth.iter().any(|&c| c as usize >= k) {
            candle_core::bail!("soft-target loss: a target code is not in 0..{k}")
        }
        let inv_rows = 1.0 / rows as f32;
        let task = |(zc, gc, tc, yc): (&[f32], &mut [f32], &[RowTarget], &[u32])| {
            let (mut nll, mut ce) = (0f64, 0f64);
            for (((zr, gr), t), &y) in zc.chunks(k).zip(gc.chunks_mut(k)).zip(tc).zip(yc) {
                let (a, b) = loss_row(zr, t, y, gr, inv_rows);
                nll += a;
                ce += b;
            }
            (nll, ce)
        };
        // The tasks' sums are added in order: the loss must not depend on the thread count.
        let sum = |a: (f64, f64), b: (f64, f64)| (a.0 + b.0, a.1 + b.1);
        let (nll, ce, grad) = if self.keep_grad {
            let mut grad = vec![0f32; z.len()];
            let (nll, ce) = z
                .par_chunks(k * ROWS)
                .zip(grad.par_chunks_mut(k * ROWS))
                .zip(
                    self.targets
                        .par_chunks(ROWS)
                        .zip(self.truth.par_chunks(ROWS)),
                )
                .map(|((zc, gc), (tc, yc))| task((zc, gc, tc, yc)))
                .collect::<Vec<_>>()
                .into_iter()
                .fold((0.0, 0.0), sum);
            (nll, ce, Some(grad))
        } else {
            let (nll, ce) = z
                .par_chunks(k * ROWS)
                .zip(
                    self.targets
                        .par_chunks(ROWS)
                        .zip(self.truth.par_chunks(ROWS)),
                )
                .map(|(zc, (tc, yc))| task((zc, &mut vec![0f32; zc.len()], tc, yc)))
                .collect::<Vec<_>>()
                .into_iter()
                .fold((0.0, 0.0), sum);
            (nll, ce, None)
        };
        let mut state = self
            .state
            .lock()
            .map_err(|_| candle_core::Error::Msg("soft-target loss: state poisoned".into()))?;
        state.grad = grad;
        state.ce = ce / rows as f64;
        Ok((
            CpuStorage::F32(vec![(nll / rows as f64) as f32]),
            Shape::from(()),
        ))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = self
            .state
            .lock()
            .map_err(|_| candle_core::Error::Msg("soft-target loss: state poisoned".into()))?
            .grad
            .take();
        let Some(mut grad) = grad else {
            candle_core::bail!(
                "soft-target loss: backward without a forward pass that kept the gradient"
            )
        };
        let g = grad_res.to_scalar::<f32>()?;
        if g != 1.0 {
            grad.par_iter_mut().for_each(|v| *v *= g);
        }
        Ok(Some(Tensor::from_vec(grad, arg.shape(), arg.device())?))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{D, Device, Var};

    use super::*;

    #[test]
    fn loss_gradient_and_ce_match_the_dense_formula() {
        // −Σ w·log_softmax(z) by candle's ops on the written-out weights, for every α.
        let s = Schedule::geometric(3);
        let (k, rows) = (37, 70); // 70 rows: three parallel tasks, the last one short
        let code = |i: usize, m: usize| ((i * 7919 + m * 31) % k) as u32;
        let x0: Vec<u32> = (0..rows).map(|i| code(i, 1)).collect();
        // Half the rows keep x_0's code at x_t (the a = b case), and some x_{t−1} match it.
        let xt: Vec<u32> = (0..rows)
            .map(|i| if i % 2 == 0 { x0[i] } else { code(i, 2) })
            .collect();
        let xprev: Vec<u32> = (0..rows)
            .map(|i| if i % 3 == 0 { x0[i] } else { code(i, 3) })
            .collect();
        let z: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 2_654_435_761usize) % 2000) as f32 / 150.0 - 6.0)
            .collect();
        for alpha in [0.0f32, 0.3, 1.0] {
            let (targets, _) = target_rows(&x0, &xt, &xprev, 2, &s, k, alpha);
            let (w, _) = target_weights(&x0, &xt, &xprev, 2, &s, k, alpha);
            let z = Var::from_vec(z.clone(), (2, rows / 2, k), &Device::Cpu).unwrap();
            let op = SoftTargetLoss::new(targets, xprev.clone(), true);
            let ours = z.apply_op1(op.clone()).unwrap();
            let w = Tensor::from_vec(w, (2, rows / 2, k), &Device::Cpu).unwrap();
            let logp = candle_nn::ops::log_softmax(&z, D::Minus1).unwrap();
            let theirs = ((&w * &logp).unwrap().sum_all().unwrap() * (-1.0 / rows as f64)).unwrap();
            let (a, b) = (
                ours.to_scalar::<f32>().unwrap(),
                theirs.to_scalar::<f32>().unwrap(),
            );
            assert!(
                (a - b).abs() < 1e-5 * b.abs().max(1.0),
                "α {alpha}: {a} vs {b}"
            );
            let onehot: Vec<f32> = xprev
                .iter()
                .flat_map(|&y| (0..k).map(move |c| f32::from(c == y as usize)))
                .collect();
            let onehot = Tensor::from_vec(onehot, (2, rows / 2, k), &Device::Cpu).unwrap();
            let ce = (&onehot * &logp)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                / -(rows as f32);
            assert!(
                (op.ce() as f32 - ce).abs() < 1e-5 * ce.abs().max(1.0),
                "α {alpha} CE"
            );
            // Scaled, so that the backward's use of the incoming gradient is checked too.
            let g1 = (ours * 3.0).unwrap().backward().unwrap();
            let g2 = (theirs * 3.0).unwrap().backward().unwrap();
            let diff = (g1.get(&z).unwrap() - g2.get(&z).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-6, "α {alpha}: gradient off by {diff}");
        }
    }

    #[test]
    fn loss_rejects_mismatched_targets() {
        let z = Tensor::zeros((4, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
        let t = RowTarget {
            base: 0.0,
            idx: [0, 0, 0],
            extra: [1.0, 0.0, 0.0],
        };
        // Three targets for four rows; then a code outside 0..5.
        let op = SoftTargetLoss::new(vec![t; 3], vec![0; 3], true);
        assert!(z.apply_op1(op).is_err());
        let op = SoftTargetLoss::new(vec![t; 4], vec![0, 0, 0, 5], true);
        assert!(z.apply_op1(op).is_err());
        // A backward pass needs a forward pass that kept the gradient.
        let z = Var::from_tensor(&z).unwrap();
        let op = SoftTargetLoss::new(vec![t; 4], vec![0; 4], false);
        assert!(z.apply_op1(op).unwrap().backward().is_err());
    }

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

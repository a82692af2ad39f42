//! BatchNorm followed by SiLU, fused into one CPU op per direction.
//!
//! Why: composed from candle ops, the normalisation, affine and SiLU (and their backward) cost
//! about 8 passes over the activations each way, single-threaded, and took most of a training
//! step. Here each channel row of the (C, N) activation is handled in one or two passes, channels
//! in parallel. Statistics are in f64. Other devices use the composed candle ops.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use tessera_engine::nn::grad::f32_slice;

const EPS: f64 = 1e-5;

/// Mean and 1/√(biased variance + `eps`) of one row, in f64 (also the VQGAN's GroupNorm's).
pub(crate) fn row_stats(row: &[f32], eps: f64) -> (f64, f64) {
    let n = row.len().max(1) as f64;
    let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = row
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// The logistic function (SiLU is `x · sigmoid(x)`).
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Training-mode BatchNorm (batch statistics) + SiLU over the rows of (C, N), with γ, β of (C).
struct BnSiluTrain;

impl CustomOp3 for BnSiluTrain {
    fn name(&self) -> &'static str {
        "bn_silu_train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (c, n) = l1.shape().dims2()?;
        let (y, gamma, beta) = (
            f32_slice(s1, l1, "bn_silu")?,
            f32_slice(s2, l2, "bn_silu")?,
            f32_slice(s3, l3, "bn_silu")?,
        );
        let mut out = vec![0f32; c * n];
        out.par_chunks_mut(n).enumerate().for_each(|(ci, dst)| {
            let row = &y[ci * n..(ci + 1) * n];
            let (mean, inv) = row_stats(row, EPS);
            let a = (f64::from(gamma[ci]) * inv) as f32;
            let b = (f64::from(beta[ci]) - mean * f64::from(gamma[ci]) * inv) as f32;
            for (d, &v) in dst.iter_mut().zip(row) {
                let p = a * v + b;
                *d = p * sigmoid(p);
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((c, n))))
    }

    fn bwd(
        &self,
        y: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (c, n) = y.dims2()?;
        let yv = y.flatten_all()?.to_vec1::<f32>()?;
        let gv = grad.flatten_all()?.to_vec1::<f32>()?;
        let (gam, bet) = (gamma.to_vec1::<f32>()?, beta.to_vec1::<f32>()?);
        let mut gy = vec![0f32; c * n];
        let per: Vec<(f32, f32)> = gy
            .par_chunks_mut(n)
            .enumerate()
            .map(|(ci, dst)| {
                let row = &yv[ci * n..(ci + 1) * n];
                let g = &gv[ci * n..(ci + 1) * n];
                let (mean, inv) = row_stats(row, EPS);
                let (gm, bt) = (f64::from(gam[ci]), f64::from(bet[ci]));
                // dL/dpre into dst; Σ dL/dpre and Σ dL/dpre · x̂ for γ, β and the stats' terms.
                let (mut sum_g, mut sum_gx) = (0f64, 0f64);
                for ((d, &v), &gz) in dst.iter_mut().zip(row).zip(g) {
                    let xhat = (f64::from(v) - mean) * inv;
                    let pre = (gm * xhat + bt) as f32;
                    let s = sigmoid(pre);
                    let gp = gz * s * (1.0 + pre * (1.0 - s));
                    *d = gp;
                    sum_g += f64::from(gp);
                    sum_gx += f64::from(gp) * xhat;
                }
                // dL/dy = γ·inv/N · (N·gp − Σgp − x̂·Σ(gp·x̂))  (BatchNorm backward).
                let k = gm * inv / n as f64;
                for (d, &v) in dst.iter_mut().zip(row) {
                    let xhat = (f64::from(v) - mean) * inv;
                    *d = (k * (n as f64 * f64::from(*d) - sum_g - xhat * sum_gx)) as f32;
                }
                (sum_gx as f32, sum_g as f32)
            })
            .collect();
        let dev = y.device();
        let g_gamma = Tensor::from_vec(per.iter().map(|p| p.0).collect::<Vec<_>>(), c, dev)?;
        let g_beta = Tensor::from_vec(per.iter().map(|p| p.1).collect::<Vec<_>>(), c, dev)?;
        Ok((
            Some(Tensor::from_vec(gy, (c, n), dev)?),
            Some(g_gamma),
            Some(g_beta),
        ))
    }
}

/// Training-mode BatchNorm + SiLU of `y` (C, N): returns the activation and the batch's
/// per-channel mean and unbiased variance (detached, for the running statistics).
pub fn bn_silu_train(
    y: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let (_, n) = y.dims2()?;
    let yd = y.detach();
    let mean = yd.mean_keepdim(1)?;
    let var = yd.broadcast_sub(&mean)?.sqr()?.mean_keepdim(1)?;
    let unbiased = (var * (n as f64 / (n as f64 - 1.0).max(1.0)))?.flatten_all()?;
    let z = if y.device().is_cpu() {
        y.contiguous()?
            .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, BnSiluTrain)?
    } else {
        let mean_g = y.mean_keepdim(1)?;
        let centred = y.broadcast_sub(&mean_g)?;
        let var_g = centred.sqr()?.mean_keepdim(1)?;
        let scale = (var_g + EPS)?
            .sqrt()?
            .recip()?
            .broadcast_mul(&gamma.unsqueeze(1)?)?;
        centred
            .broadcast_mul(&scale)?
            .broadcast_add(&beta.unsqueeze(1)?)?
            .silu()?
    };
    Ok((z, mean.flatten_all()?, unbiased))
}

/// Inference BatchNorm (given statistics) + SiLU of `y` (C, N); no gradient needed.
pub fn bn_silu_eval(
    y: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    var: &Tensor,
) -> candle_core::Result<Tensor> {
    let a = (var + EPS)?.sqrt()?.recip()?.mul(gamma)?;
    let b = (beta - mean.mul(&a)?)?;
    y.broadcast_mul(&a.unsqueeze(1)?)?
        .broadcast_add(&b.unsqueeze(1)?)?
        .silu()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The fused op has the values and gradients of the composed candle ops.
    #[test]
    fn fused_matches_composed() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let (c, n) = (3, 50);
        let y = Var::from_tensor(&(Tensor::randn(0f32, 2.0, (c, n), &dev)? + 0.5)?)?;
        let gamma = Var::from_tensor(&Tensor::randn(1f32, 0.3, c, &dev)?)?;
        let beta = Var::from_tensor(&Tensor::randn(0f32, 0.3, c, &dev)?)?;
        let r = Tensor::randn(0f32, 1.0, (c, n), &dev)?;
        let (z, mean, var) = bn_silu_train(&y, &gamma, &beta)?;
        let g1 = (&z * &r)?.sum_all()?.backward()?;
        let m = y.mean_keepdim(1)?;
        let centred = y.broadcast_sub(&m)?;
        let v = centred.sqr()?.mean_keepdim(1)?;
        let scale = (v + EPS)?
            .sqrt()?
            .recip()?
            .broadcast_mul(&gamma.unsqueeze(1)?)?;
        let z2 = centred
            .broadcast_mul(&scale)?
            .broadcast_add(&beta.unsqueeze(1)?)?
            .silu()?;
        let g2 = (&z2 * &r)?.sum_all()?.backward()?;
        let diff = |a: &Tensor, b: &Tensor| -> candle_core::Result<f32> {
            (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
        };
        assert!(diff(&z, &z2)? < 1e-5);
        for t in [y.as_tensor(), gamma.as_tensor(), beta.as_tensor()] {
            let (a, b) = (g1.get(t).unwrap(), g2.get(t).unwrap());
            assert!(diff(a, b)? < 1e-4, "{a} vs {b}");
        }
        // Eval with the batch's biased variance reproduces the training output.
        let biased = (var * ((n - 1) as f64 / n as f64))?;
        let ze = bn_silu_eval(&y, &gamma, &beta, &mean, &biased)?;
        assert!(diff(&ze, &z)? < 1e-4);
        Ok(())
    }
}

//! GroupNorm (+ swish) and nearest-neighbour 2× upsampling as single CPU ops, forward and
//! backward.
//!
//! Why: composed from candle ops, a GroupNorm is about ten passes over the activations each
//! way, and the gradients of its per-channel affine and of the upsampling broadcast are
//! candle's strided sums, single-threaded — in `perf` of the decoder's fine-tune, once the
//! convolutions were GEMMs, those sums, the element-wise ops and zeroing the gradients they
//! add to took about a third of the step. Here each (image, group) block is one or two passes,
//! blocks in parallel, statistics in f64.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use tessera_engine::nn::grad::{View, f32_slice};

use crate::classifier::{row_stats, sigmoid};

/// GroupNorm over (B, C, H, W) with per-channel γ, β, optionally followed by swish (SiLU).
pub(crate) struct GroupNormOp {
    pub groups: usize,
    pub eps: f64,
    pub swish: bool,
}

impl GroupNormOp {
    /// (images, channels per group, pixels per channel) of an input of `shape`.
    fn dims(&self, shape: &Shape) -> Result<(usize, usize, usize)> {
        let (b, c, h, w) = shape.dims4()?;
        if self.groups == 0 || c % self.groups != 0 {
            candle_core::bail!("group norm: {c} channels in {} groups", self.groups);
        }
        Ok((b, c / self.groups, h * w))
    }
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "tessera-group-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, cg, p) = self.dims(l1.shape())?;
        let x = f32_slice(s1, l1, self.name())?;
        let (gamma, beta) = (
            f32_slice(s2, l2, self.name())?,
            f32_slice(s3, l3, self.name())?,
        );
        let c = cg * self.groups;
        if gamma.len() != c || beta.len() != c {
            candle_core::bail!(
                "group norm: {c} channels, γ {} and β {}",
                gamma.len(),
                beta.len()
            );
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(cg * p)
            .zip(x.par_chunks(cg * p))
            .enumerate()
            .for_each(|(i, (dst, src))| {
                let (mean, inv) = row_stats(src, self.eps);
                let c0 = (i % self.groups) * cg;
                for (j, (d, s)) in dst.chunks_mut(p).zip(src.chunks(p)).enumerate() {
                    let gm = f64::from(gamma[c0 + j]);
                    let a = (gm * inv) as f32;
                    let b = (f64::from(beta[c0 + j]) - mean * gm * inv) as f32;
                    for (d, &v) in d.iter_mut().zip(s) {
                        let y = a * v + b;
                        *d = if self.swish { y * sigmoid(y) } else { y };
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, cg, p) = self.dims(x.shape())?;
        // Read in place: these are whole activations, a copy each per layer and step.
        let (xc, gc) = (x.contiguous()?, grad.contiguous()?);
        let (xg, gg) = (View::of(&xc), View::of(&gc));
        let (xv, gv) = (xg.slice("group norm")?, gg.slice("group norm gradient")?);
        let (gam, bet) = (gamma.to_vec1::<f32>()?, beta.to_vec1::<f32>()?);
        let m = (cg * p) as f64;
        let mut gx = vec![0f32; xv.len()];
        // Per block: dL/dγ and dL/dβ of its channels.
        let per: Vec<Vec<(f64, f64)>> = gx
            .par_chunks_mut(cg * p)
            .zip(xv.par_chunks(cg * p).zip(gv.par_chunks(cg * p)))
            .enumerate()
            .map(|(i, (dst, (src, g)))| {
                let (mean, inv) = row_stats(src, self.eps);
                let c0 = (i % self.groups) * cg;
                let mut affine = vec![(0f64, 0f64); cg];
                // dL/dx̂ into dst; Σ dL/dx̂ and Σ dL/dx̂ · x̂ over the block.
                let (mut sum_d, mut sum_dx) = (0f64, 0f64);
                for (j, ((d, s), g)) in dst
                    .chunks_mut(p)
                    .zip(src.chunks(p))
                    .zip(g.chunks(p))
                    .enumerate()
                {
                    let (gm, bt) = (f64::from(gam[c0 + j]), f64::from(bet[c0 + j]));
                    let (mut sg, mut sgx) = (0f64, 0f64);
                    for ((d, &v), &gz) in d.iter_mut().zip(s).zip(g) {
                        let xhat = (f64::from(v) - mean) * inv;
                        let gp = if self.swish {
                            let pre = (gm * xhat + bt) as f32;
                            let s = sigmoid(pre);
                            gz * s * (1.0 + pre * (1.0 - s))
                        } else {
                            gz
                        };
                        let gp = f64::from(gp);
                        sg += gp;
                        sgx += gp * xhat;
                        *d = (gp * gm) as f32;
                    }
                    affine[j] = (sgx, sg);
                    sum_d += gm * sg;
                    sum_dx += gm * sgx;
                }
                // dL/dx = inv/M · (M·dx̂ − Σdx̂ − x̂·Σ(dx̂·x̂))  (normalisation backward).
                for (d, &v) in dst.iter_mut().zip(src) {
                    let xhat = (f64::from(v) - mean) * inv;
                    *d = (inv / m * (m * f64::from(*d) - sum_d - xhat * sum_dx)) as f32;
                }
                affine
            })
            .collect();
        let c = cg * self.groups;
        let (mut g_gamma, mut g_beta) = (vec![0f64; c], vec![0f64; c]);
        for (i, affine) in per.iter().enumerate() {
            let c0 = (i % self.groups) * cg;
            for (j, &(dg, db)) in affine.iter().enumerate() {
                g_gamma[c0 + j] += dg;
                g_beta[c0 + j] += db;
            }
        }
        let dev = x.device();
        let to_f32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<_>>();
        Ok((
            Some(Tensor::from_vec(gx, x.shape(), dev)?),
            Some(Tensor::from_vec(to_f32(g_gamma), c, dev)?),
            Some(Tensor::from_vec(to_f32(g_beta), c, dev)?),
        ))
    }
}

/// Nearest-neighbour 2× upsampling of (B, C, H, W).
pub(crate) struct Upsample2;

/// The adjoint of [`Upsample2`]: each 2×2 block of (B, C, 2H, 2W) summed.
struct SumPool2;

impl CustomOp1 for Upsample2 {
    fn name(&self) -> &'static str {
        "tessera-upsample2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let (b, c, h, w) = l.shape().dims4()?;
        let mut out = vec![0f32; 4 * x.len()];
        out.par_chunks_mut(4 * h * w)
            .zip(x.par_chunks(h * w))
            .for_each(|(dst, src)| {
                for (y, row) in src.chunks(w).enumerate() {
                    let top = &mut dst[2 * y * 2 * w..][..2 * w];
                    for (x, &v) in row.iter().enumerate() {
                        top[2 * x] = v;
                        top[2 * x + 1] = v;
                    }
                    dst.copy_within(2 * y * 2 * w..(2 * y + 1) * 2 * w, (2 * y + 1) * 2 * w);
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, c, 2 * h, 2 * w))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&SumPool2)?))
    }
}

impl CustomOp1 for SumPool2 {
    fn name(&self) -> &'static str {
        "tessera-sum-pool2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = f32_slice(s, l, self.name())?;
        let (b, c, h2, w2) = l.shape().dims4()?;
        let (h, w) = (h2 / 2, w2 / 2);
        let mut out = vec![0f32; b * c * h * w];
        out.par_chunks_mut(h * w)
            .zip(g.par_chunks(h2 * w2))
            .for_each(|(dst, src)| {
                for (y, row) in dst.chunks_mut(w).enumerate() {
                    let (top, bottom) = (&src[2 * y * w2..][..w2], &src[(2 * y + 1) * w2..][..w2]);
                    for (x, d) in row.iter_mut().enumerate() {
                        *d = top[2 * x] + top[2 * x + 1] + bottom[2 * x] + bottom[2 * x + 1];
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, c, h, w))))
    }
}

#[cfg(test)]
mod tests {
    use super::super::ops::{NormW, group_norm, upsample2};
    use super::*;
    use candle_core::{D, Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?
            .abs()?
            .flatten_all()?
            .max(D::Minus1)?
            .to_scalar::<f32>()
    }

    /// The fused GroupNorm, with and without swish, has the values and gradients of the
    /// composed candle ops (run on the CPU here, and on other devices by `group_norm`).
    #[test]
    fn fused_group_norm_matches_composed() -> Result<()> {
        let dev = Device::Cpu;
        let (b, c, h, w, groups) = (2, 6, 5, 3, 3);
        let x = Var::from_tensor(&(Tensor::randn(0f32, 2.0, (b, c, h, w), &dev)? + 0.7)?)?;
        let p = NormW {
            weight: Var::from_tensor(&Tensor::randn(1f32, 0.3, c, &dev)?)?.into_inner(),
            bias: Var::from_tensor(&Tensor::randn(0f32, 0.3, c, &dev)?)?.into_inner(),
        };
        let target = Tensor::randn(0f32, 1.0, (b, c, h, w), &dev)?;
        for swish in [false, true] {
            let fused = group_norm(&x, &p, groups, 1e-5, swish)?;
            let xs = x.reshape((b, groups, (c / groups) * h * w))?;
            let mean = xs.mean_keepdim(2)?;
            let xs = xs.broadcast_sub(&mean)?;
            let var = xs.sqr()?.mean_keepdim(2)?;
            let composed = xs
                .broadcast_div(&(var + 1e-5)?.sqrt()?)?
                .reshape((b, c, h, w))?
                .broadcast_mul(&p.weight.reshape((1, c, 1, 1))?)?
                .broadcast_add(&p.bias.reshape((1, c, 1, 1))?)?;
            let composed = if swish { composed.silu()? } else { composed };
            assert!(max_diff(&fused, &composed)? < 1e-5);
            let g1 = (&fused * &target)?.sum_all()?.backward()?;
            let g2 = (&composed * &target)?.sum_all()?.backward()?;
            for t in [x.as_tensor(), &p.weight, &p.bias] {
                let (a, b) = (g1.get(t).expect("grad"), g2.get(t).expect("grad"));
                assert!(max_diff(a, b)? < 1e-4, "swish {swish}: {a} vs {b}");
            }
        }
        Ok(())
    }

    /// Upsampling repeats every pixel 2×2; its gradient sums them.
    #[test]
    fn upsample_and_its_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 4, 5), &dev)?)?;
        let up = upsample2(&x)?;
        let broadcast = x
            .reshape((2, 3, 4, 1, 5, 1))?
            .broadcast_as((2, 3, 4, 2, 5, 2))?
            .reshape((2, 3, 8, 10))?;
        assert_eq!(max_diff(&up, &broadcast)?, 0.0);
        let target = Tensor::randn(0f32, 1.0, (2, 3, 8, 10), &dev)?;
        let g1 = (&up * &target)?.sum_all()?.backward()?;
        let g2 = (&broadcast * &target)?.sum_all()?.backward()?;
        assert!(max_diff(g1.get(&x).expect("grad"), g2.get(&x).expect("grad"))? < 1e-5);
        Ok(())
    }
}

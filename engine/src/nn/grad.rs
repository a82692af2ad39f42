//! Differentiable versions of the fused CPU kernels, used when a tensor tracks gradients
//! (training, [`crate::train::stage`]): LayerNorm, softmax over the last dimension and the
//! derivative of the exact GELU. Inference never reaches this module, so its numerics are
//! untouched.
//!
//! Each op works on f32 rows in plain loops (spread over threads with rayon) and implements
//! `bwd` in closed form, which is much cheaper than recording the dozen primitive ops the
//! formula would take in candle's graph.

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, StorageRef, Tensor,
};
use rayon::prelude::*;

use super::GeluErf;
use super::fastmath::exp_approx;

mod attention;
mod linear;
pub use attention::{AttentionOp, MultiHeadOp};
pub use linear::LinearOp;

/// Rows per parallel task (rows are a few hundred floats).
const ROWS_PER_TASK: usize = 64;

/// The contiguous f32 data of a CPU tensor argument (for custom ops, here and in
/// `tessera-train`).
pub fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let Some((a, b)) = layout.contiguous_offsets() else {
        candle_core::bail!("{what}: the input must be contiguous")
    };
    match storage {
        CpuStorage::F32(v) => Ok(&v[a..b]),
        other => candle_core::bail!("{what}: training runs in f32, got {:?}", other.dtype()),
    }
}

/// A tensor's values as one f32 vector (row-major).
fn values(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// A tensor's storage, read-locked, so that a backward pass reads its values in place instead
/// of copying them out ([`values`]).
pub struct View<'a>(StorageRef<'a>, &'a Layout);

impl<'a> View<'a> {
    /// Locks the storage of `t` (make it contiguous first: [`View::slice`] needs that).
    pub fn of(t: &'a Tensor) -> Self {
        let (guard, layout) = t.storage_and_layout();
        Self(guard, layout)
    }

    /// The values, when the tensor is a contiguous CPU f32 one.
    pub fn slice(&self, what: &str) -> Result<&[f32]> {
        match &*self.0 {
            Storage::Cpu(s) => f32_slice(s, self.1, what),
            _ => candle_core::bail!("{what}: training runs on the CPU"),
        }
    }
}

/// `nn.LayerNorm` over the last dimension with affine weight and bias, with backward for all
/// three inputs (`x`, weight, bias).
#[derive(Debug, Clone, Copy)]
pub struct LayerNormOp {
    /// Added to the variance.
    pub eps: f32,
}

impl LayerNormOp {
    /// Mean and 1/σ of one row.
    #[inline]
    fn stats(row: &[f32], eps: f32) -> (f32, f32) {
        let n = row.len() as f32;
        let mean = row.iter().sum::<f32>() / n;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        (mean, 1.0 / (var + eps).sqrt())
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm-train"
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
        let x = f32_slice(s1, l1, "layer norm")?;
        let w = f32_slice(s2, l2, "layer norm weight")?;
        let b = f32_slice(s3, l3, "layer norm bias")?;
        let dim = w.len();
        if dim == 0 || b.len() != dim || l1.shape().dims().last() != Some(&dim) {
            candle_core::bail!("layer norm: shapes do not match")
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(dim * ROWS_PER_TASK)
            .zip(x.par_chunks(dim * ROWS_PER_TASK))
            .for_each(|(yc, xc)| {
                for (yr, xr) in yc.chunks_mut(dim).zip(xc.chunks(dim)) {
                    let (mean, rstd) = Self::stats(xr, self.eps);
                    for i in 0..dim {
                        yr[i] = (xr[i] - mean) * rstd * w[i] + b[i];
                    }
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        arg1: &Tensor,
        arg2: &Tensor,
        _arg3: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (xc, wc, dyc) = (
            arg1.contiguous()?,
            arg2.contiguous()?,
            grad_res.contiguous()?,
        );
        let (xg, wg, dyg) = (View::of(&xc), View::of(&wc), View::of(&dyc));
        let (x, w, dy) = (
            xg.slice("layer norm")?,
            wg.slice("layer norm weight")?,
            dyg.slice("layer norm gradient")?,
        );
        let dim = w.len();
        let chunk = dim * ROWS_PER_TASK;
        let mut dx = vec![0f32; x.len()];
        // Per task: partial sums of dw and db, added up afterwards.
        let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk).zip(dy.par_chunks(chunk)))
            .map(|(dxc, (xc, dyc))| {
                let mut dw = vec![0f32; dim];
                let mut db = vec![0f32; dim];
                let mut xhat = vec![0f32; dim];
                for ((dxr, xr), dyr) in dxc.chunks_mut(dim).zip(xc.chunks(dim)).zip(dyc.chunks(dim))
                {
                    let (mean, rstd) = Self::stats(xr, self.eps);
                    let (mut s1, mut s2) = (0f32, 0f32);
                    for i in 0..dim {
                        xhat[i] = (xr[i] - mean) * rstd;
                        let g = dyr[i] * w[i];
                        s1 += g;
                        s2 += g * xhat[i];
                        dw[i] += dyr[i] * xhat[i];
                        db[i] += dyr[i];
                    }
                    let (m1, m2) = (s1 / dim as f32, s2 / dim as f32);
                    for i in 0..dim {
                        dxr[i] = rstd * (dyr[i] * w[i] - m1 - xhat[i] * m2);
                    }
                }
                (dw, db)
            })
            .collect();
        let mut dw = vec![0f32; dim];
        let mut db = vec![0f32; dim];
        for (pw, pb) in partial {
            for i in 0..dim {
                dw[i] += pw[i];
                db[i] += pb[i];
            }
        }
        let dev = arg1.device();
        Ok((
            Some(Tensor::from_vec(dx, arg1.shape(), dev)?),
            Some(Tensor::from_vec(dw, dim, dev)?),
            Some(Tensor::from_vec(db, dim, dev)?),
        ))
    }
}

/// Softmax over the last dimension (rows may hold −∞), with backward
/// `dx = y ⊙ (dy − Σ dy ⊙ y)`.
#[derive(Debug, Clone, Copy)]
pub struct SoftmaxOp;

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "softmax-train"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, "softmax")?;
        let Some(&dim) = layout.shape().dims().last() else {
            candle_core::bail!("softmax: scalar input")
        };
        let mut y = vec![0f32; x.len()];
        if dim > 0 {
            y.par_chunks_mut(dim * ROWS_PER_TASK)
                .zip(x.par_chunks(dim * ROWS_PER_TASK))
                .for_each(|(yc, xc)| {
                    for (yr, xr) in yc.chunks_mut(dim).zip(xc.chunks(dim)) {
                        let max = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        let mut sum = 0f32;
                        for (o, &v) in yr.iter_mut().zip(xr) {
                            *o = (v - max).exp();
                            sum += *o;
                        }
                        let inv = 1.0 / sum;
                        for o in yr.iter_mut() {
                            *o *= inv;
                        }
                    }
                });
        }
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (yc, dyc) = (res.contiguous()?, grad_res.contiguous()?);
        let (yg, dyg) = (View::of(&yc), View::of(&dyc));
        let (y, dy) = (yg.slice("softmax")?, dyg.slice("softmax gradient")?);
        let dim = arg.dim(candle_core::D::Minus1)?;
        let mut dx = vec![0f32; y.len()];
        if dim > 0 {
            let chunk = dim * ROWS_PER_TASK;
            dx.par_chunks_mut(chunk)
                .zip(y.par_chunks(chunk).zip(dy.par_chunks(chunk)))
                .for_each(|(dxc, (yc, dyc))| {
                    for ((dxr, yr), dyr) in
                        dxc.chunks_mut(dim).zip(yc.chunks(dim)).zip(dyc.chunks(dim))
                    {
                        let dot: f32 = yr.iter().zip(dyr).map(|(a, b)| a * b).sum();
                        for i in 0..dim {
                            dxr[i] = yr[i] * (dyr[i] - dot);
                        }
                    }
                });
        }
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// The derivative of the exact GELU, `Φ(x) + x·φ(x)`, with the erf of [`GeluErf`]; as an op,
/// the GELU's backward `(x, dy) ↦ dy · gelu'(x)`.
#[derive(Debug, Clone, Copy)]
pub struct GeluErfGrad;

impl GeluErfGrad {
    /// The scalar kernel.
    #[inline(always)]
    pub fn f32(x: f32) -> f32 {
        // Φ(x) = gelu(x)/x would lose precision near 0; recompute it from erf instead.
        const INV_SQRT_2PI: f32 = 0.398_942_3;
        let cdf = if x == 0.0 { 0.5 } else { GeluErf::f32(x) / x };
        let cdf = if x.abs() < 1e-3 {
            0.5 + x * INV_SQRT_2PI
        } else {
            cdf
        };
        // The vectorizing exp: libm's, a call per value, was 4 % of a stage's training step.
        cdf + x * INV_SQRT_2PI * exp_approx(-0.5 * x * x)
    }
}

/// Values per parallel task of [`GeluErfGrad`].
const GELU_CHUNK: usize = 1 << 14;

impl GeluErfGrad {
    /// `dy · gelu'(x)` over slices, compiled for the widest vectors the CPU has.
    #[allow(unsafe_code)]
    fn map(x: &[f32], dy: &[f32], dx: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512 F.
                return unsafe { gelu_grad_avx512(x, dy, dx) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                return unsafe { gelu_grad_avx2(x, dy, dx) };
            }
        }
        gelu_grad_body(x, dy, dx)
    }
}

#[inline(always)]
fn gelu_grad_body(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    for ((d, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
        *d = g * GeluErfGrad::f32(v);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn gelu_grad_avx512(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    gelu_grad_body(x, dy, dx)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn gelu_grad_avx2(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    gelu_grad_body(x, dy, dx)
}

/// The GELU's backward in one pass: `(x, dy) ↦ dy · gelu'(x)` (the derivative's tensor and
/// candle's product were two passes and a buffer more).
impl CustomOp2 for GeluErfGrad {
    fn name(&self) -> &'static str {
        "gelu-erf-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "gelu derivative")?;
        let dy = f32_slice(s2, l2, "gelu gradient")?;
        if x.len() != dy.len() {
            candle_core::bail!(
                "gelu backward: {:?} against a gradient {:?}",
                l1.shape(),
                l2.shape()
            )
        }
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(GELU_CHUNK)
            .zip(x.par_chunks(GELU_CHUNK).zip(dy.par_chunks(GELU_CHUNK)))
            .for_each(|(d, (x, g))| Self::map(x, g, d));
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// A contiguous CPU argument as a tensor of its own (a copy).
pub fn tensor_of(storage: &CpuStorage, layout: &Layout, what: &str) -> Result<Tensor> {
    let data = f32_slice(storage, layout, what)?;
    Tensor::from_slice(data, layout.shape(), &candle_core::Device::Cpu)
}

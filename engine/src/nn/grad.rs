//! Differentiable versions of the fused CPU kernels, used when a tensor tracks gradients
//! (training, [`crate::train::stage`]): LayerNorm, softmax over the last dimension and the
//! derivative of the exact GELU. Inference never reaches this module, so its numerics are
//! untouched.
//!
//! Each op works on f32 rows in plain loops (spread over threads with rayon) and implements
//! `bwd` in closed form, which is much cheaper than recording the dozen primitive ops the
//! formula would take in candle's graph.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::GeluErf;

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
        let x = values(arg1)?;
        let w = values(arg2)?;
        let dy = values(grad_res)?;
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
        let y = values(res)?;
        let dy = values(grad_res)?;
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

/// The derivative of the exact GELU, `Φ(x) + x·φ(x)`, with the erf of [`GeluErf`].
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
        cdf + x * INV_SQRT_2PI * (-0.5 * x * x).exp()
    }
}

impl CustomOp1 for GeluErfGrad {
    fn name(&self) -> &'static str {
        "gelu-erf-grad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, "gelu derivative")?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(1 << 14)
            .zip(x.par_chunks(1 << 14))
            .for_each(|(yc, xc)| {
                for (o, &v) in yc.iter_mut().zip(xc) {
                    *o = Self::f32(v);
                }
            });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }
}

/// Scaled dot-product attention `softmax(q kᵀ · scale + mask) v` as one graph node: q `(B, H,
/// n, d)`, k and v `(B, H, m, d)`, all contiguous f32; `mask` additive `(n, m)`. The forward
/// runs the inference kernels; the backward recomputes the probabilities and applies the
/// closed-form gradients, so the large `(B, H, n, m)` intermediates never enter the autograd
/// graph (candle would allocate and accumulate a gradient for each of them).
#[derive(Debug, Clone)]
pub struct AttentionOp {
    /// Multiplies `q kᵀ`.
    pub scale: f64,
    /// Additive mask, 0 where attention is allowed and −∞ where not.
    pub mask: Option<Tensor>,
}

/// A contiguous CPU argument as a tensor of its own (a copy).
pub fn tensor_of(storage: &CpuStorage, layout: &Layout, what: &str) -> Result<Tensor> {
    let data = f32_slice(storage, layout, what)?;
    Tensor::from_slice(data, layout.shape(), &candle_core::Device::Cpu)
}

impl AttentionOp {
    /// The probabilities `softmax(q kᵀ · scale + mask)`.
    fn probs(&self, q: &Tensor, k: &Tensor) -> Result<Tensor> {
        let scores = (q.matmul(&k.t()?)? * self.scale)?;
        let scores = match &self.mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        candle_nn::ops::softmax_last_dim(&scores)
    }
}

impl AttentionOp {
    /// `softmax(q kᵀ · scale + mask) v` on plain tensors.
    fn fwd(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        self.probs(q, k)?.matmul(v)
    }

    /// `(dq, dk, dv)` for the output gradient `d_out`, the probabilities recomputed.
    fn grads(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        d_out: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (q, k, v) = (q.detach(), k.detach(), v.detach());
        let d_out = d_out.detach().contiguous()?;
        let p = self.probs(&q, &k)?;
        let dv = p.t()?.matmul(&d_out)?;
        let dp = d_out.matmul(&v.t()?)?;
        // Softmax backward: dS = P ⊙ (dP − Σ_j dP ⊙ P), then the scale.
        let dot = (&dp * &p)?.sum_keepdim(candle_core::D::Minus1)?;
        let ds = ((dp.broadcast_sub(&dot)? * &p)? * self.scale)?;
        let dq = ds.matmul(&k)?;
        let dk = ds.t()?.matmul(&q)?;
        Ok((dq, dk, dv))
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "attention-train"
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
        let q = tensor_of(s1, l1, "attention q")?;
        let k = tensor_of(s2, l2, "attention k")?;
        let v = tensor_of(s3, l3, "attention v")?;
        let out = self.fwd(&q, &k, &v)?;
        let shape = out.shape().clone();
        Ok((CpuStorage::F32(values(&out)?), shape))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dq, dk, dv) = self.grads(q, k, v, grad_res)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// Multi-head attention on projected inputs with the head split and merge inside, as one
/// graph node: self-attention takes the fused `[q; k; v]` projection `(B, n, 3·H·d)`
/// ([`CustomOp1`]), cross-attention the query projection `(B, n, H·d)` and the fused `[k; v]`
/// projection of the context `(B, m, 2·H·d)` ([`CustomOp2`]). The output is `(B, n, H·d)`,
/// heads concatenated (`b h n d -> b n (h d)`).
#[derive(Debug, Clone)]
pub struct MultiHeadOp {
    /// The attention itself.
    pub attn: AttentionOp,
    /// Number of heads.
    pub heads: usize,
}

impl MultiHeadOp {
    fn split(&self, x: &Tensor, parts: usize) -> Result<Vec<Tensor>> {
        super::split_heads(x, parts, self.heads)
    }

    /// Per-head gradients back to the fused projection layout.
    fn merge(parts: &[Tensor]) -> Result<Tensor> {
        let merged = parts
            .iter()
            .map(super::merge_heads)
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&merged, candle_core::D::Minus1)?.contiguous()
    }

    fn output(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(CpuStorage, Shape)> {
        let out = super::merge_heads(&self.attn.fwd(q, k, v)?)?.contiguous()?;
        let shape = out.shape().clone();
        Ok((CpuStorage::F32(values(&out)?), shape))
    }
}

impl CustomOp1 for MultiHeadOp {
    fn name(&self) -> &'static str {
        "self-attention-train"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = self.split(&tensor_of(storage, layout, "self-attention")?, 3)?;
        self.output(&qkv[0], &qkv[1], &qkv[2])
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let qkv = self.split(&arg.detach(), 3)?;
        let d_out = self.split(&grad_res.detach().contiguous()?, 1)?;
        let (dq, dk, dv) = self.attn.grads(&qkv[0], &qkv[1], &qkv[2], &d_out[0])?;
        Ok(Some(Self::merge(&[dq, dk, dv])?))
    }
}

impl CustomOp2 for MultiHeadOp {
    fn name(&self) -> &'static str {
        "cross-attention-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let q = self.split(&tensor_of(s1, l1, "cross-attention q")?, 1)?;
        let kv = self.split(&tensor_of(s2, l2, "cross-attention kv")?, 2)?;
        self.output(&q[0], &kv[0], &kv[1])
    }

    fn bwd(
        &self,
        q: &Tensor,
        kv: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let q = self.split(&q.detach(), 1)?;
        let kv = self.split(&kv.detach(), 2)?;
        let d_out = self.split(&grad_res.detach().contiguous()?, 1)?;
        let (dq, dk, dv) = self.attn.grads(&q[0], &kv[0], &kv[1], &d_out[0])?;
        Ok((Some(Self::merge(&[dq])?), Some(Self::merge(&[dk, dv])?)))
    }
}

/// A fully connected layer `y = x Wᵀ (+ b)` as one graph node: x `(…, in)`, W `[out, in]`
/// (PyTorch layout), b `[out]`, all contiguous f32. Saves candle's autograd the reshape,
/// broadcast and add nodes around the product, each of which would cost a full-size gradient
/// buffer in the backward pass.
#[derive(Debug, Clone, Copy)]
pub struct LinearOp;

impl LinearOp {
    fn forward(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let (out, in_dim) = w.dims2()?;
        let rows = x.elem_count() / in_dim.max(1);
        let y = x.reshape((rows, in_dim))?.matmul(&w.t()?)?;
        let y = match b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut shape = x.dims().to_vec();
        if let Some(last) = shape.last_mut() {
            *last = out;
        }
        y.reshape(shape)
    }

    /// `(dx, dW, db)` for `dy`.
    fn backward(x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (out, in_dim) = w.dims2()?;
        let rows = x.elem_count() / in_dim.max(1);
        let dy = dy.detach().contiguous()?.reshape((rows, out))?;
        let x2 = x.detach().reshape((rows, in_dim))?;
        let dx = dy.matmul(&w.detach())?.reshape(x.shape())?;
        let dw = dy.t()?.matmul(&x2)?;
        // Column sums as a product with a row of ones (the GEMM is parallel; the reduce is not).
        let ones = Tensor::ones((1, rows), dy.dtype(), dy.device())?;
        let db = ones.matmul(&dy)?.squeeze(0)?;
        Ok((dx, dw, db))
    }
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "linear-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = Self::forward(
            &tensor_of(s1, l1, "linear x")?,
            &tensor_of(s2, l2, "linear W")?,
            None,
        )?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(values(&y)?), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = Self::backward(x, w, grad_res)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "linear-bias-train"
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
        let y = Self::forward(
            &tensor_of(s1, l1, "linear x")?,
            &tensor_of(s2, l2, "linear W")?,
            Some(&tensor_of(s3, l3, "linear b")?),
        )?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(values(&y)?), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = Self::backward(x, w, grad_res)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

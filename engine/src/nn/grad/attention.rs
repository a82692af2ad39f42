//! The attention ops of training: graph nodes over the per-head kernel of
//! `nn::train_attention`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::{View, f32_slice, values};
use crate::nn::train_attention::{Attention, Dims, HeadLayout, Src, scatter};

/// Scaled dot-product attention `softmax(q kᵀ · scale + mask) v` as one graph node: q `(B, H,
/// n, d)`, k and v `(B, H, m, d)`, all contiguous f32; `mask` additive `(n, m)`. Forward and
/// backward run the per-head kernel of `nn::train_attention`; the backward recomputes the
/// probabilities, so the large `(B, H, n, m)` intermediates never enter the autograd graph
/// (candle would allocate and accumulate a gradient for each of them).
#[derive(Debug, Clone)]
pub struct AttentionOp {
    /// Multiplies `q kᵀ`.
    pub scale: f64,
    /// Additive mask, 0 where attention is allowed and −∞ where not.
    pub mask: Option<Tensor>,
}

impl AttentionOp {
    /// The kernel's description of a call, with the mask's values.
    fn kernel<'a>(&self, dims: Dims, mask: Option<&'a [f32]>) -> Attention<'a> {
        Attention {
            dims,
            scale: self.scale as f32,
            mask,
        }
    }

    fn mask_values(&self) -> Result<Option<Vec<f32>>> {
        self.mask.as_ref().map(values).transpose()
    }
}

/// `(B, H, rows, d)` of a split operand.
fn split_dims(shape: &Shape, what: &str) -> Result<(usize, usize, usize, usize)> {
    match shape.dims() {
        &[b, h, rows, d] => Ok((b, h, rows, d)),
        other => candle_core::bail!("{what}: expected (B, H, rows, d), got {other:?}"),
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
        let (b, h, n, d) = split_dims(l1.shape(), "attention q")?;
        let (_, _, m, _) = split_dims(l2.shape(), "attention k")?;
        let mask = self.mask_values()?;
        let dims = Dims {
            batch: b,
            heads: h,
            n,
            m,
            head_dim: d,
        };
        let src = |s, l, rows, what| -> Result<Src<'_>> {
            Ok(Src {
                data: f32_slice(s, l, what)?,
                layout: HeadLayout::split(h, rows, d),
            })
        };
        let out = self.kernel(dims, mask.as_deref()).forward(
            src(s1, l1, n, "attention q")?,
            src(s2, l2, m, "attention k")?,
            src(s3, l3, m, "attention v")?,
            HeadLayout::split(h, n, d),
            b * h * n * d,
        )?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, h, n, d) = q.dims4()?;
        let m = k.dim(2)?;
        let (qc, kc, vc, gc) = (
            q.contiguous()?,
            k.contiguous()?,
            v.contiguous()?,
            grad_res.contiguous()?,
        );
        let (qg, kg, vg, gg) = (View::of(&qc), View::of(&kc), View::of(&vc), View::of(&gc));
        let (qv, kv, vv, gv) = (
            qg.slice("attention q")?,
            kg.slice("attention k")?,
            vg.slice("attention v")?,
            gg.slice("attention gradient")?,
        );
        let mask = self.mask_values()?;
        let dims = Dims {
            batch: b,
            heads: h,
            n,
            m,
            head_dim: d,
        };
        let src = |data, rows| Src {
            data,
            layout: HeadLayout::split(h, rows, d),
        };
        let [dq, dk, dv] = self.kernel(dims, mask.as_deref()).backward(
            src(qv, n),
            src(kv, m),
            src(vv, m),
            src(gv, n),
        )?;
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

/// Multi-head attention on projected inputs with the head split and merge inside, as one
/// graph node: self-attention takes the fused `[q; k; v]` projection `(B, n, 3·H·d)`
/// ([`CustomOp1`]), cross-attention the query projection `(B, n, H·d)` and the fused `[k; v]`
/// projection of the context `(B, m, 2·H·d)` ([`CustomOp2`]). The output is `(B, n, H·d)`,
/// heads concatenated (`b h n d -> b n (h d)`). The kernel reads each head where it lies in
/// the projections and writes the gradients back in their layout.
#[derive(Debug, Clone)]
pub struct MultiHeadOp {
    /// The attention itself.
    pub attn: AttentionOp,
    /// Number of heads.
    pub heads: usize,
}

impl MultiHeadOp {
    /// `(B, rows, head_dim)` of a fused projection of `parts` parts.
    fn fused_dims(&self, shape: &Shape, parts: usize, what: &str) -> Result<(usize, usize, usize)> {
        match shape.dims() {
            &[b, rows, width] if self.heads > 0 && width.is_multiple_of(parts * self.heads) => {
                Ok((b, rows, width / (parts * self.heads)))
            }
            other => candle_core::bail!(
                "{what}: expected (B, rows, {parts}·{}·d), got {other:?}",
                self.heads
            ),
        }
    }

    fn dims(&self, b: usize, n: usize, m: usize, d: usize) -> Dims {
        Dims {
            batch: b,
            heads: self.heads,
            n,
            m,
            head_dim: d,
        }
    }

    /// Per-head gradients (blocks of `rows × d`, `[b][h]`) written into a fused projection's
    /// layout: `parts[p]` becomes part `p` of `(B, rows, parts·H·d)`.
    fn merge(&self, parts: &[Vec<f32>], b: usize, rows: usize, d: usize) -> Vec<f32> {
        let h = self.heads;
        let mut out = vec![0f32; b * rows * parts.len() * h * d];
        for (p, grad) in parts.iter().enumerate() {
            let layout = HeadLayout::fused(p, parts.len(), h, rows, d);
            for (t, block) in grad.chunks_exact(rows * d).enumerate() {
                scatter(&mut out, layout, t / h, t % h, block, d);
            }
        }
        out
    }
}

impl CustomOp1 for MultiHeadOp {
    fn name(&self) -> &'static str {
        "self-attention-train"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, n, d) = self.fused_dims(layout.shape(), 3, "self-attention")?;
        let data = f32_slice(storage, layout, "self-attention")?;
        let mask = self.attn.mask_values()?;
        let h = self.heads;
        let src = |part| Src {
            data,
            layout: HeadLayout::fused(part, 3, h, n, d),
        };
        let out = self
            .attn
            .kernel(self.dims(b, n, n, d), mask.as_deref())
            .forward(
                src(0),
                src(1),
                src(2),
                HeadLayout::fused(0, 1, h, n, d),
                b * n * h * d,
            )?;
        Ok((CpuStorage::F32(out), Shape::from((b, n, h * d))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (b, n, d) = self.fused_dims(arg.shape(), 3, "self-attention")?;
        let (xc, gc) = (arg.contiguous()?, grad_res.contiguous()?);
        let (xg, gg) = (View::of(&xc), View::of(&gc));
        let (x, g) = (
            xg.slice("self-attention")?,
            gg.slice("self-attention gradient")?,
        );
        let mask = self.attn.mask_values()?;
        let h = self.heads;
        let src = |part| Src {
            data: x,
            layout: HeadLayout::fused(part, 3, h, n, d),
        };
        let grads = self
            .attn
            .kernel(self.dims(b, n, n, d), mask.as_deref())
            .backward(
                src(0),
                src(1),
                src(2),
                Src {
                    data: g,
                    layout: HeadLayout::fused(0, 1, h, n, d),
                },
            )?;
        let merged = self.merge(&grads, b, n, d);
        Ok(Some(Tensor::from_vec(merged, arg.shape(), arg.device())?))
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
        let (b, n, d) = self.fused_dims(l1.shape(), 1, "cross-attention q")?;
        let (_, m, _) = self.fused_dims(l2.shape(), 2, "cross-attention kv")?;
        let (q, kv) = (
            f32_slice(s1, l1, "cross-attention q")?,
            f32_slice(s2, l2, "cross-attention kv")?,
        );
        let mask = self.attn.mask_values()?;
        let h = self.heads;
        let out = self
            .attn
            .kernel(self.dims(b, n, m, d), mask.as_deref())
            .forward(
                Src {
                    data: q,
                    layout: HeadLayout::fused(0, 1, h, n, d),
                },
                Src {
                    data: kv,
                    layout: HeadLayout::fused(0, 2, h, m, d),
                },
                Src {
                    data: kv,
                    layout: HeadLayout::fused(1, 2, h, m, d),
                },
                HeadLayout::fused(0, 1, h, n, d),
                b * n * h * d,
            )?;
        Ok((CpuStorage::F32(out), Shape::from((b, n, h * d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        kv: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (b, n, d) = self.fused_dims(q.shape(), 1, "cross-attention q")?;
        let (_, m, _) = self.fused_dims(kv.shape(), 2, "cross-attention kv")?;
        let (qc, kvc, gc) = (q.contiguous()?, kv.contiguous()?, grad_res.contiguous()?);
        let (qg, kvg, gg) = (View::of(&qc), View::of(&kvc), View::of(&gc));
        let (qv, kvv, g) = (
            qg.slice("cross-attention q")?,
            kvg.slice("cross-attention kv")?,
            gg.slice("cross-attention gradient")?,
        );
        let mask = self.attn.mask_values()?;
        let h = self.heads;
        let [dq, dk, dv] = self
            .attn
            .kernel(self.dims(b, n, m, d), mask.as_deref())
            .backward(
                Src {
                    data: qv,
                    layout: HeadLayout::fused(0, 1, h, n, d),
                },
                Src {
                    data: kvv,
                    layout: HeadLayout::fused(0, 2, h, m, d),
                },
                Src {
                    data: kvv,
                    layout: HeadLayout::fused(1, 2, h, m, d),
                },
                Src {
                    data: g,
                    layout: HeadLayout::fused(0, 1, h, n, d),
                },
            )?;
        let dq = self.merge(&[dq], b, n, d);
        let dkv = self.merge(&[dk, dv], b, m, d);
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), q.device())?),
            Some(Tensor::from_vec(dkv, kv.shape(), kv.device())?),
        ))
    }
}

//! Multi-head attention of the stages: head splitting, masked softmax attention (fused when
//! training), self- and cross-attention, the causal mask, and the preallocated key/value cache
//! that makes a decoding step cost the same whatever the prefix length.

use candle_core::{D, DType, Device, IndexOp, Result, Tensor};

use super::grad;

/// Splits a fused projection `(B, n, parts·heads·head_dim)` into `parts` contiguous tensors of
/// shape `(B, heads, n, head_dim)`, in order (the `b n (h d) -> b h n d` rearrangement applied
/// to each part).
pub fn split_heads(x: &Tensor, parts: usize, heads: usize) -> Result<Vec<Tensor>> {
    let (b, n, width) = x.dims3()?;
    if parts == 0 || heads == 0 || !width.is_multiple_of(parts * heads) {
        candle_core::bail!("split_heads: width {width} is not {parts} parts × {heads} heads")
    }
    let head_dim = width / (parts * heads);
    let x = x
        .reshape((b, n, parts, heads, head_dim))?
        .permute((2, 0, 3, 1, 4))?
        .contiguous()?;
    (0..parts).map(|i| x.i(i)).collect()
}

/// Inverse of [`split_heads`] for one part: `(B, heads, n, head_dim)` → `(B, n, heads·head_dim)`.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, n, d) = x.dims4()?;
    x.transpose(1, 2)?.reshape((b, n, h * d))
}

/// Scaled dot-product attention `softmax(q kᵀ · scale + mask) v`.
///
/// `q` `(B, H, n, d)`, `k` and `v` `(B, H, m, d)` (views of a key/value cache are fine as long
/// as each `(m, d)` matrix is row-contiguous); `mask` is additive, `(n, m)`, with 0 where
/// attention is allowed and −∞ where it is not. The softmax runs in f32 for half-precision
/// inputs. Keys and values may be stored in another float type than `q` (an f16 cache of a
/// quantized stage). Returns `(B, H, n, d)` in the dtype of `q`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let dtype = q.dtype();
    if q.track_op() || k.track_op() || v.track_op() {
        return attention_train(q, k, v, scale, mask);
    }
    if let Some(out) = super::few_query::attention(q, k, v, scale, mask)? {
        return Ok(out);
    }
    let (k, v) = (&k.to_dtype(dtype)?, &v.to_dtype(dtype)?);
    let raw = q.matmul(&k.t()?)?;
    if let Some(probs) = softmax_cpu(&raw, scale, mask)? {
        return probs.matmul(v);
    }
    let scores = (raw * scale)?;
    let scores = match dtype {
        DType::F16 | DType::BF16 => scores.to_dtype(DType::F32)?,
        _ => scores,
    };
    let scores = match mask {
        Some(m) => scores.broadcast_add(&m.to_dtype(scores.dtype())?)?,
        None => scores,
    };
    let probs = if scores.track_op() {
        softmax_train(&scores)?
    } else {
        candle_nn::ops::softmax_last_dim(&scores)?
    };
    probs.to_dtype(dtype)?.matmul(v)
}

/// `softmax(scores · scale + mask)` over the last dimension of f32 `scores` `(B, H, n, m)` on
/// the CPU in one pass per row, split over the threads (the training kernel's rows: a
/// vectorised exp within about an ulp of libm's, masked keys exactly 0); `None` where it does
/// not apply (other dtypes or devices, a mask not `(n, m)`). candle's path was a scale pass,
/// a mask pass and a softmax calling libm's `expf` per score: 10 % of a `q8_0` encoder pass.
fn softmax_cpu(scores: &Tensor, scale: f64, mask: Option<&Tensor>) -> Result<Option<Tensor>> {
    use rayon::prelude::*;
    if !matches!(scores.device(), Device::Cpu) || scores.dtype() != DType::F32 {
        return Ok(None);
    }
    let Ok((b, h, n, m)) = scores.dims4() else {
        return Ok(None);
    };
    let mask = match mask {
        Some(t) if t.dims() != [n, m] => return Ok(None),
        Some(t) => Some(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
        None => None,
    };
    let mut s = scores.flatten_all()?.to_vec1::<f32>()?;
    if n * m > 0 {
        let scale = scale as f32;
        s.par_chunks_mut(n * m).for_each(|head| {
            for x in head.iter_mut() {
                *x *= scale;
            }
            super::train_attention::softmax_rows(head, m, mask.as_deref());
        });
    }
    Ok(Some(Tensor::from_vec(s, (b, h, n, m), scores.device())?))
}

/// Whether the training kernels of [`grad`] apply: CPU, f32, and gradients tracked.
fn fused_training(x: &Tensor) -> bool {
    x.track_op() && matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32
}

/// Multi-head self-attention on a fused `[q; k; v]` projection `(B, n, 3·heads·d)` →
/// `(B, n, heads·d)`: [`split_heads`], [`attention`], [`merge_heads`] — one graph node when
/// training ([`grad::MultiHeadOp`]).
pub fn self_attention(
    qkv: &Tensor,
    heads: usize,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    if fused_training(qkv) {
        let op = grad::MultiHeadOp {
            attn: grad::AttentionOp {
                scale,
                mask: mask.map(|m| m.to_dtype(DType::F32)).transpose()?,
            },
            heads,
        };
        return qkv.contiguous()?.apply_op1(op);
    }
    let parts = split_heads(qkv, 3, heads)?;
    let Ok([q, k, v]) = <[Tensor; 3]>::try_from(parts) else {
        candle_core::bail!("self_attention: split failed")
    };
    merge_heads(&attention(&q, &k, &v, scale, mask)?)
}

/// Multi-head cross-attention of a query projection `(B, n, heads·d)` to a fused `[k; v]`
/// projection `(B, m, 2·heads·d)` → `(B, n, heads·d)`, without mask; one graph node when
/// training.
pub fn cross_attention(q: &Tensor, kv: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    if fused_training(q) || fused_training(kv) {
        let op = grad::MultiHeadOp {
            attn: grad::AttentionOp { scale, mask: None },
            heads,
        };
        return q.contiguous()?.apply_op2(&kv.contiguous()?, op);
    }
    let q = split_heads(q, 1, heads)?;
    let kv = split_heads(kv, 2, heads)?;
    match (q.first(), kv.first(), kv.get(1)) {
        (Some(q), Some(k), Some(v)) => merge_heads(&attention(q, k, v, scale, None)?),
        _ => candle_core::bail!("cross_attention: split failed"),
    }
}

/// Differentiable attention for training: one fused graph node on the CPU in f32
/// ([`grad::AttentionOp`]), candle's primitive ops elsewhere.
fn attention_train(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    if matches!(q.device(), Device::Cpu) && q.dtype() == DType::F32 {
        let op = grad::AttentionOp {
            scale,
            mask: mask.map(|m| m.to_dtype(DType::F32)).transpose()?,
        };
        return q
            .contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, op);
    }
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(&m.to_dtype(scores.dtype())?)?,
        None => scores,
    };
    softmax_train(&scores)?.matmul(v)
}

/// Differentiable softmax over the last dimension for training.
pub fn softmax_train(x: &Tensor) -> Result<Tensor> {
    if matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(grad::SoftmaxOp)
    } else {
        candle_nn::ops::softmax(x, D::Minus1)
    }
}

/// The additive attention mask for `n` new queries at absolute positions `offset..offset+n`
/// over keys `0..offset+n`: key `j` is visible from query `i` when `j <= i`, or when both are
/// below `n_unmasked` (minGPT's mask with an unmasked top-left block; 0 gives the plain causal
/// mask). Returns `None` when nothing is masked (e.g. a single new query), so no work is spent.
pub fn causal_mask(
    n: usize,
    offset: usize,
    n_unmasked: usize,
    device: &Device,
) -> Result<Option<Tensor>> {
    let m = offset + n;
    let mut any = false;
    let mut data = vec![0f32; n * m];
    for r in 0..n {
        let i = offset + r;
        for j in (i + 1)..m {
            if !(i < n_unmasked && j < n_unmasked) {
                data[r * m + j] = f32::NEG_INFINITY;
                any = true;
            }
        }
    }
    if !any {
        return Ok(None);
    }
    Tensor::from_vec(data, (n, m), device).map(Some)
}

/// A preallocated key/value cache for one attention layer: keys and values of shape
/// `(B, heads, capacity, head_dim)`, written in place.
///
/// The cache does not track its own length: the owning model writes at the absolute position
/// of the new tokens and reads the prefix up to them, so a step that fails half-way leaves
/// nothing to undo. The buffers never share storage with another tensor (no `Clone`; use
/// [`KvCache::try_clone`]), which is what makes the in-place writes safe.
#[derive(Debug)]
pub struct KvCache {
    k: Tensor,
    v: Tensor,
}

impl KvCache {
    /// Allocates a zeroed cache.
    pub fn new(
        batch: usize,
        heads: usize,
        capacity: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let shape = (batch, heads, capacity, head_dim);
        Ok(Self {
            k: Tensor::zeros(shape, dtype, device)?,
            v: Tensor::zeros(shape, dtype, device)?,
        })
    }

    /// The type the keys and values are stored in.
    pub fn dtype(&self) -> DType {
        self.k.dtype()
    }

    /// Batch size the cache was allocated for.
    pub fn batch_size(&self) -> usize {
        self.k.dims()[0]
    }

    /// Number of positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.k.dims()[2]
    }

    /// Writes `k`, `v` `(B, heads, n, head_dim)` at positions `pos..pos+n` (converted to the
    /// cache's dtype) and returns views of the keys and values at positions `0..pos+n`.
    pub fn write(&mut self, pos: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = k.dim(2)?;
        if pos + n > self.capacity() {
            candle_core::bail!(
                "kv cache: positions {pos}..{} exceed its capacity {}",
                pos + n,
                self.capacity()
            )
        }
        let dtype = self.k.dtype();
        self.k
            .slice_set(&k.to_dtype(dtype)?.contiguous()?, 2, pos)?;
        self.v
            .slice_set(&v.to_dtype(dtype)?.contiguous()?, 2, pos)?;
        Ok((self.k.narrow(2, 0, pos + n)?, self.v.narrow(2, 0, pos + n)?))
    }

    /// A cache holding the batch rows `idx` (u32/i64 indices into the batch, repeats allowed).
    pub fn index_select_batch(&self, idx: &Tensor) -> Result<Self> {
        Ok(Self {
            k: self.k.index_select(idx, 0)?,
            v: self.v.index_select(idx, 0)?,
        })
    }

    /// A deep copy (the copy's buffers are independent of this cache's).
    pub fn try_clone(&self) -> Result<Self> {
        Ok(Self {
            k: self.k.copy()?,
            v: self.v.copy()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// candle's ops, as [`attention`] ran them before [`softmax_cpu`].
    fn candle_softmax(scores: &Tensor, scale: f64, mask: Option<&Tensor>) -> Result<Tensor> {
        let s = (scores * scale)?;
        let s = match mask {
            Some(m) => s.broadcast_add(m)?,
            None => s,
        };
        candle_nn::ops::softmax_last_dim(&s)
    }

    #[test]
    fn fused_softmax_matches_candles_ops() -> Result<()> {
        let dev = Device::Cpu;
        for (b, h, n, m) in [(1, 3, 5, 37), (2, 16, 20, 20), (1, 1, 1, 258)] {
            let scores = (Tensor::randn(0f32, 4.0, (b, h, n, m), &dev)? * 8.0)?;
            let causal = causal_mask(n, m - n, 0, &dev)?;
            for mask in [None, causal.as_ref()] {
                let want = candle_softmax(&scores, 0.125, mask)?;
                let got = softmax_cpu(&scores, 0.125, mask)?.expect("f32 on the CPU");
                let diff = (&got - &want)?
                    .abs()?
                    .flatten_all()?
                    .max(0)?
                    .to_scalar::<f32>()?;
                assert!(
                    diff < 1e-6,
                    "{b}×{h}×{n}×{m}, mask {}: {diff}",
                    mask.is_some()
                );
                if let Some(mask) = mask {
                    // Hidden keys get exactly nothing.
                    let hidden = mask.flatten_all()?.to_vec1::<f32>()?;
                    let p = got.flatten_all()?.to_vec1::<f32>()?;
                    for (i, &x) in p.iter().enumerate() {
                        if hidden[i % (n * m)] == f32::NEG_INFINITY {
                            assert_eq!(x, 0.0, "hidden key {i}");
                        }
                    }
                }
            }
        }
        // Not for it: half precision, a mask of another shape.
        let s = Tensor::zeros((1, 2, 3, 4), DType::F16, &dev)?;
        assert!(softmax_cpu(&s, 1.0, None)?.is_none());
        let s = s.to_dtype(DType::F32)?;
        let odd = Tensor::zeros((1, 3, 4), DType::F32, &dev)?;
        assert!(softmax_cpu(&s, 1.0, Some(&odd))?.is_none());
        Ok(())
    }
}

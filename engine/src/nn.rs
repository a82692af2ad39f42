//! Layers shared by the transformer networks ([`crate::xtransformer`], [`crate::gpt`]).
//!
//! Everything here computes in the dtype of the weights it was built from; callers convert the
//! final logits to `f32`. Tensors that feed matrix products are kept contiguous, and the key/value
//! cache is preallocated once and written in place, so a decoding step costs the same whatever
//! the length of the prefix (apart from the attention itself, which is small next to the weights).

use candle_core::{D, DType, Device, IndexOp, Result, Tensor};
use candle_nn::VarBuilder;

/// Epsilon of every `nn.LayerNorm` in the ImageBART transformers (PyTorch's default).
pub const LAYER_NORM_EPS: f64 = 1e-5;

/// A fully connected layer `y = x Wᵀ (+ b)` with the PyTorch weight layout `[out, in]`.
///
/// Unlike `candle_nn::Linear` it can be built from several PyTorch layers that read the same
/// input (query/key/value), concatenated along the output dimension, so one matrix product
/// replaces three.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Loads `weight` `[out, in]` (and `bias` `[out]` when `bias` is true) under `vb`.
    pub fn new(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// Loads several layers with the same input and concatenates their outputs: the result
    /// computes `[y_0, y_1, …]` along the last dimension, each `y_i` `out_dim` wide.
    pub fn fused(vbs: &[VarBuilder], in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let mut parts = vbs
            .iter()
            .map(|vb| Self::new(vb.clone(), in_dim, out_dim, bias))
            .collect::<Result<Vec<_>>>()?;
        if parts.len() == 1
            && let Some(single) = parts.pop()
        {
            return Ok(single);
        }
        let weights: Vec<&Tensor> = parts.iter().map(|p| &p.weight).collect();
        let weight = Tensor::cat(&weights, 0)?;
        let bias = if bias {
            let biases = parts
                .iter()
                .map(|p| {
                    p.bias
                        .as_ref()
                        .ok_or_else(|| candle_core::Error::Msg("fused linear: missing bias".into()))
                })
                .collect::<Result<Vec<_>>>()?;
            Some(Tensor::cat(&biases, 0)?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// The weight, `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Applies the layer to `x` of shape `(…, in)`, giving `(…, out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let Some((&in_dim, lead)) = dims.split_last() else {
            candle_core::bail!("linear: input must have at least one dimension")
        };
        let rows: usize = lead.iter().product();
        let x2 = x.contiguous()?.reshape((rows, in_dim))?;
        let y = x2.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_shape = lead.to_vec();
        out_shape.push(self.weight.dim(0)?);
        y.reshape(out_shape)
    }
}

/// `nn.LayerNorm(dim)` with affine weight and bias and eps [`LAYER_NORM_EPS`].
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    /// Loads `weight` and `bias` (`[dim]`) under `vb`.
    pub fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
        })
    }

    /// Normalises over the last dimension (statistics in f32 whatever the dtype).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::layer_norm(
            &x.contiguous()?,
            &self.weight,
            &self.bias,
            LAYER_NORM_EPS as f32,
        )
    }
}

/// Position-wise feed-forward block: `Linear(dim, hidden) → GELU (erf) → Linear(hidden, dim)`,
/// both with bias (x-transformers `FeedForward`, minGPT `mlp`).
#[derive(Debug, Clone)]
pub struct FeedForward {
    fc_in: Linear,
    fc_out: Linear,
}

impl FeedForward {
    /// Loads the two layers from `vb_in` and `vb_out`.
    pub fn new(vb_in: VarBuilder, vb_out: VarBuilder, dim: usize, hidden: usize) -> Result<Self> {
        Ok(Self {
            fc_in: Linear::new(vb_in, dim, hidden, true)?,
            fc_out: Linear::new(vb_out, hidden, dim, true)?,
        })
    }

    /// Applies the block to `(…, dim)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc_out.forward(&self.fc_in.forward(x)?.gelu_erf()?)
    }
}

/// Splits a fused projection `(B, n, parts·heads·head_dim)` into `parts` contiguous tensors of
/// shape `(B, heads, n, head_dim)`, in order (the `b n (h d) -> b h n d` rearrangement applied
/// to each part).
pub fn split_heads(x: &Tensor, parts: usize, heads: usize) -> Result<Vec<Tensor>> {
    let (b, n, width) = x.dims3()?;
    if parts == 0 || heads == 0 || width % (parts * heads) != 0 {
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
/// inputs. Returns `(B, H, n, d)` in the dtype of `q`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let dtype = q.dtype();
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let scores = match dtype {
        DType::F16 | DType::BF16 => scores.to_dtype(DType::F32)?,
        _ => scores,
    };
    let scores = match mask {
        Some(m) => scores.broadcast_add(&m.to_dtype(scores.dtype())?)?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
    probs.matmul(v)
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

/// Checks that `ids` is an integer tensor of rank 2 whose values lie in `0..vocab`, and returns
/// it as `u32` (the index type used for embedding look-ups). `what` names the input in errors.
pub fn check_token_ids(ids: &Tensor, vocab: usize, what: &str) -> Result<Tensor> {
    if !ids.dtype().is_int() {
        candle_core::bail!("{what}: token ids must be integers, got {:?}", ids.dtype())
    }
    if ids.rank() != 2 {
        candle_core::bail!(
            "{what}: token ids must have shape (batch, length), got {:?}",
            ids.dims()
        )
    }
    if ids.elem_count() == 0 {
        return ids.to_dtype(DType::U32)?.contiguous();
    }
    let as_i64 = ids.to_dtype(DType::I64)?;
    let min = as_i64.min_all()?.to_scalar::<i64>()?;
    let max = as_i64.max_all()?.to_scalar::<i64>()?;
    if min < 0 || max >= vocab as i64 {
        candle_core::bail!(
            "{what}: token id out of range: ids span {min}..={max}, the vocabulary has {vocab} \
             entries (valid ids 0..{vocab})"
        )
    }
    ids.to_dtype(DType::U32)?.contiguous()
}

/// Looks rows of an embedding table `[vocab, dim]` up: `ids` `(B, n)` u32 → `(B, n, dim)`.
pub fn embed(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (b, n) = ids.dims2()?;
    let dim = table.dim(D::Minus1)?;
    table
        .index_select(&ids.flatten_all()?, 0)?
        .reshape((b, n, dim))
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

    /// Batch size the cache was allocated for.
    pub fn batch_size(&self) -> usize {
        self.k.dims()[0]
    }

    /// Number of positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.k.dims()[2]
    }

    /// Writes `k`, `v` `(B, heads, n, head_dim)` at positions `pos..pos+n` and returns views of
    /// the keys and values at positions `0..pos+n`.
    pub fn write(&mut self, pos: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = k.dim(2)?;
        if pos + n > self.capacity() {
            candle_core::bail!(
                "kv cache: positions {pos}..{} exceed its capacity {}",
                pos + n,
                self.capacity()
            )
        }
        self.k.slice_set(&k.contiguous()?, 2, pos)?;
        self.v.slice_set(&v.contiguous()?, 2, pos)?;
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

//! Layers shared by the transformer networks ([`crate::xtransformer`], [`crate::gpt`]).
//!
//! Everything here computes in the dtype of the weights it was built from; callers convert the
//! final logits to `f32`. Tensors that feed matrix products are kept contiguous, and the key/value
//! cache is preallocated once and written in place, so a decoding step costs the same whatever
//! the length of the prefix (apart from the attention itself, which is small next to the weights).
//!
//! Training: when an input or a weight tracks gradients ([`Tensor::track_op`], e.g. weights
//! from a `candle_nn::VarMap`), LayerNorm, softmax and GELU switch to the differentiable
//! kernels of [`grad`] and the few-row product is skipped; inference tensors never track
//! gradients, so their path and numerics are unchanged.

mod attention;
pub mod fastmath;
mod few_query;
mod gelu;
pub mod grad;
mod linear;
pub(crate) mod q8_panels;
mod skinny;
mod skinny_q4k;
mod skinny_xw;
pub(crate) mod train_attention;

pub use attention::{
    KvCache, attention, causal_mask, cross_attention, merge_heads, self_attention, softmax_train,
    split_heads,
};
pub use gelu::{GeluErf, gelu_erf};
pub use linear::Linear;

use candle_core::quantized::GgmlDType;
use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

/// Epsilon of every `nn.LayerNorm` in the ImageBART transformers (PyTorch's default).
pub const LAYER_NORM_EPS: f64 = 1e-5;

/// Checks that the networks can compute in `dtype` on `device`: f32 and f16 everywhere, bf16
/// only off the CPU (candle 0.11 has no bf16 matrix product on the CPU).
pub fn check_compute_dtype(dtype: DType, device: &Device) -> Result<()> {
    match (dtype, device) {
        (DType::F32 | DType::F16 | DType::F64, _) => Ok(()),
        (DType::BF16, Device::Cpu) => candle_core::bail!(
            "bf16 weights cannot run on the CPU (candle has no bf16 matrix product there); \
             load them as f16 or f32"
        ),
        (DType::BF16, _) => Ok(()),
        (other, _) => candle_core::bail!("weights of dtype {other:?} are not supported"),
    }
}

/// Whether this CPU has AVX-512 F, BW and VNNI, which every `vpdpbusd` kernel here needs
/// (the `Q8_0` panels, the row-major `Q8_0` and `Q4K` kernels).
pub(crate) fn has_avx512_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A function from one linear layer to its replacement, applied to every layer of a network
/// by its `map_linears`.
pub type MapLinear<'a> = dyn FnMut(&Linear) -> Result<Linear> + 'a;

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
        if x.track_op() || self.weight.track_op() || self.bias.track_op() {
            return layer_norm_train(x, &self.weight, &self.bias);
        }
        candle_nn::ops::layer_norm(
            &x.contiguous()?,
            &self.weight,
            &self.bias,
            LAYER_NORM_EPS as f32,
        )
    }
}

/// Differentiable LayerNorm for training: the fused f32 kernel with backward on the CPU,
/// candle's primitive formulation elsewhere.
fn layer_norm_train(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let eps = LAYER_NORM_EPS as f32;
    if matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32 {
        x.contiguous()?
            .apply_op3(weight, bias, grad::LayerNormOp { eps })
    } else {
        candle_nn::ops::layer_norm_slow(x, weight, bias, eps)
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
        self.fc_out.forward(&gelu_erf(&self.fc_in.forward(x)?)?)
    }

    /// The block with both layers quantized (see [`Linear::quantized`]).
    pub fn quantized(&self, dtype: GgmlDType) -> Result<Self> {
        self.map_linears(&mut |l| l.quantized(dtype))
    }

    /// The block with both layers replaced by `f(layer)`.
    pub fn map_linears(&self, f: &mut MapLinear) -> Result<Self> {
        Ok(Self {
            fc_in: f(&self.fc_in)?,
            fc_out: f(&self.fc_out)?,
        })
    }

    /// Bytes of weight a forward pass reads.
    pub fn weight_bytes(&self) -> usize {
        self.fc_in.weight_bytes() + self.fc_out.weight_bytes()
    }
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

/// What the quantized kernels' tests start from.
#[cfg(test)]
pub(crate) mod test_util {
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    /// `w` `(out, k)` quantized to `dtype`: the tensor, its dequantized values and its bytes.
    pub(crate) fn quantize(
        w: Vec<f32>,
        out: usize,
        k: usize,
        dtype: GgmlDType,
    ) -> (QTensor, Vec<f32>, Vec<u8>) {
        let wt = Tensor::from_vec(w, (out, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&wt, dtype).unwrap();
        let deq: Vec<f32> = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let bytes = q.data().unwrap().into_owned();
        (q, deq, bytes)
    }

    /// candle's (ggml's) product of `x` `(rows, k)` with a quantized weight.
    pub(crate) fn ggml_product(
        qm: &candle_core::quantized::QMatMul,
        x: &[f32],
        rows: usize,
        k: usize,
    ) -> Vec<f32> {
        let xt = Tensor::from_vec(x.to_vec(), (rows, k), &Device::Cpu).unwrap();
        candle_core::Module::forward(qm, &xt)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }
}

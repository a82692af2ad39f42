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

pub mod grad;
mod skinny;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{D, DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// Epsilon of every `nn.LayerNorm` in the ImageBART transformers (PyTorch's default).
pub const LAYER_NORM_EPS: f64 = 1e-5;

/// From this many rows on (encoder passes, cross-attention keys, batched prefills), a layer in
/// a block format multiplies through its weight dequantized for the call and the f32 GEMM:
/// ggml's block dot products run well below the GEMM's rate there, and unpacking the blocks
/// once costs a few percent of such a product. Decoding steps (1–16 rows) read the blocks
/// instead — a quarter of the bytes — through [`skinny::matmul_xwt_q8_0`] for `Q8_0` and
/// candle's kernels for the k-quants.
const DEQUANTIZED_MIN_ROWS: usize = 64;

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

/// A function from one linear layer to its replacement, applied to every layer of a network
/// by its `map_linears`.
pub type MapLinear<'a> = dyn FnMut(&Linear) -> Result<Linear> + 'a;

/// A fully connected layer `y = x Wᵀ (+ b)` with the PyTorch weight layout `[out, in]`.
///
/// Unlike `candle_nn::Linear` it can be built from several PyTorch layers that read the same
/// input (query/key/value), concatenated along the output dimension, so one matrix product
/// replaces three.
///
/// The weight is kept as `Wᵀ` `(in, out)`: a transposed view of the PyTorch tensor for f32
/// (candle's CPU GEMM is fastest on that layout; products of 1–16 rows, i.e. decoding, go
/// through the few-row kernel of `nn/skinny.rs` instead), a contiguous copy for half precision
/// on the CPU (the f16 GEMM is several times faster on row-major right-hand sides when only a
/// few rows are multiplied), or a ggml block format ([`Linear::quantized`]).
#[derive(Debug, Clone)]
pub struct Linear {
    /// `Wᵀ`, `(in, out)` (for a quantized layer, the dequantized weight is not kept: this is
    /// an empty placeholder and `quant` holds the weight).
    weight_t: Tensor,
    /// The weight in a ggml block format (see [`Linear::quantized`]).
    quant: Option<QMatMul>,
    out_dim: usize,
    bias: Option<Tensor>,
    /// The parameter prefixes the weight was loaded from (`decoder.layers.0.1.to_q`), one per
    /// part of a fused layer in output order; empty for a layer built from a bare tensor.
    names: Vec<String>,
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
        let mut layer = Self::from_weight(weight, bias)?;
        layer.names = vec![vb.prefix()];
        Ok(layer)
    }

    /// Builds the layer from a PyTorch-layout weight `[out, in]` and an optional bias `[out]`.
    pub fn from_weight(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let (out_dim, _) = weight.dims2()?;
        if let Some(b) = &bias
            && b.dims1()? != out_dim
        {
            candle_core::bail!(
                "linear: bias {:?} does not match weight {:?}",
                b.dims(),
                weight.dims()
            )
        }
        let weight_t = match (weight.device(), weight.dtype()) {
            (Device::Cpu, DType::F16 | DType::BF16) => weight.t()?.contiguous()?,
            _ => weight.t()?,
        };
        Ok(Self {
            weight_t,
            quant: None,
            out_dim,
            bias,
            names: Vec::new(),
        })
    }

    /// This layer with its weight quantized to the ggml block format `dtype` (e.g. `Q8_0`,
    /// `Q4K`); the bias stays in f32. The product then runs through candle's quantized kernels
    /// on f32 activations, reading `dtype`'s bytes per weight instead of 4.
    ///
    /// The input width must be a multiple of the format's block (32 for `Q8_0`, 256 for the
    /// k-quants). Where a k-quant's block does not divide it (the released width 1152) the
    /// layer falls back to `Q8_0`, and where 32 does not either it stays unquantized, as
    /// llama.cpp does with such tensors; [`Linear::is_quantized`] tells which.
    pub fn quantized(&self, dtype: GgmlDType) -> Result<Self> {
        if self.quant.is_some() {
            candle_core::bail!("linear: the layer is already quantized")
        }
        let w = self.weight()?.to_dtype(DType::F32)?.contiguous()?;
        let (out_dim, in_dim) = w.dims2()?;
        let Some(dtype) = Self::block_format(dtype, in_dim) else {
            return Ok(self.clone());
        };
        debug_assert_eq!(out_dim, self.out_dim);
        self.with_blocks(QTensor::quantize(&w, dtype)?)
    }

    /// This layer computing with the block-format weight `q` (`[out, in]`); the bias in f32.
    fn with_blocks(&self, q: QTensor) -> Result<Self> {
        Ok(Self {
            weight_t: Tensor::zeros(0, DType::F32, self.weight_t.device())?,
            quant: Some(QMatMul::from_qtensor(q)?),
            out_dim: self.out_dim,
            bias: self
                .bias
                .as_ref()
                .map(|b| b.to_dtype(DType::F32))
                .transpose()?,
            names: self.names.clone(),
        })
    }

    /// Whether the weight is held in a quantized block format.
    pub fn is_quantized(&self) -> bool {
        self.quant.is_some()
    }

    /// Bytes of weight (not bias) a product reads.
    pub fn weight_bytes(&self) -> usize {
        match &self.quant {
            Some(QMatMul::QTensor(q)) => q.storage_size_in_bytes(),
            Some(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => {
                t.elem_count() * t.dtype().size_in_bytes()
            }
            None => self.weight_t.elem_count() * self.weight_t.dtype().size_in_bytes(),
        }
    }

    /// Loads several layers with the same input and concatenates their outputs: the result
    /// computes `[y_0, y_1, …]` along the last dimension, each `y_i` `out_dim` wide.
    pub fn fused(vbs: &[VarBuilder], in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weights = vbs
            .iter()
            .map(|vb| vb.get((out_dim, in_dim), "weight"))
            .collect::<Result<Vec<_>>>()?;
        let biases = if bias {
            Some(
                vbs.iter()
                    .map(|vb| vb.get(out_dim, "bias"))
                    .collect::<Result<Vec<_>>>()?,
            )
        } else {
            None
        };
        let weight = if weights.iter().all(Self::is_placeholder) {
            // Stored blocks follow; do not materialise zeros the size of the layer.
            Self::placeholder(vec![out_dim * weights.len(), in_dim], weights[0].device())?
        } else {
            Tensor::cat(&weights, 0)?
        };
        let bias = biases.map(|b| Tensor::cat(&b, 0)).transpose()?;
        let mut layer = Self::from_weight(weight, bias)?;
        layer.names = vbs.iter().map(|vb| vb.prefix()).collect();
        Ok(layer)
    }

    /// A stand-in for a weight whose block-format data is swapped in after the network is built
    /// ([`Linear::with_stored_quant`]): one f32 zero broadcast to `shape`, so it holds no memory.
    pub fn placeholder(shape: impl Into<candle_core::Shape>, device: &Device) -> Result<Tensor> {
        Tensor::zeros((), DType::F32, device)?.broadcast_as(shape)
    }

    fn is_placeholder(t: &Tensor) -> bool {
        t.elem_count() > 1 && t.stride().iter().all(|&s| s == 0)
    }

    /// The parameter names of the weight, `<prefix>.weight`, one per part of a fused layer in
    /// output order (empty for a layer built with [`Linear::from_weight`]).
    pub fn weight_names(&self) -> Vec<String> {
        self.names.iter().map(|n| format!("{n}.weight")).collect()
    }

    /// The block format a weight of input width `in_dim` is stored in when `dtype` is asked
    /// for (see [`Linear::quantized`]); `None` when it stays unquantized.
    pub fn block_format(dtype: GgmlDType, in_dim: usize) -> Option<GgmlDType> {
        if in_dim.is_multiple_of(dtype.block_size()) {
            Some(dtype)
        } else if in_dim.is_multiple_of(GgmlDType::Q8_0.block_size()) {
            Some(GgmlDType::Q8_0)
        } else {
            None
        }
    }

    /// This layer with its weight taken from stored quantized blocks instead of the tensor it
    /// was built with: `find` gives the stored tensor of a weight name, `None` when that weight
    /// is not stored quantized (the layer is then returned as it is). The parts of a fused
    /// layer must all be stored, in one format; their rows are concatenated, which is exact
    /// because a block never spans two rows.
    pub fn with_stored_quant(
        &self,
        find: &mut dyn FnMut(&str) -> Result<Option<QTensor>>,
    ) -> Result<Self> {
        let names = self.weight_names();
        let mut parts = Vec::with_capacity(names.len());
        for name in &names {
            parts.push(find(name)?);
        }
        if parts.iter().all(Option::is_none) {
            return Ok(self.clone());
        }
        let Some(mut parts) = parts.into_iter().collect::<Option<Vec<QTensor>>>() else {
            candle_core::bail!("linear {names:?}: only some parts are stored quantized")
        };
        let (in_dim, _) = self.weight_t.dims2()?;
        let dtype = parts[0].dtype();
        let mut rows = 0;
        for (name, p) in names.iter().zip(&parts) {
            let (out, inp) = p.shape().dims2()?;
            if inp != in_dim || p.dtype() != dtype {
                candle_core::bail!(
                    "linear `{name}`: stored as {:?} {:?}, the layer needs [{}, {in_dim}] in \
                     {dtype:?} like its other parts",
                    p.dtype(),
                    p.shape().dims(),
                    out
                )
            }
            rows += out;
        }
        if rows != self.out_dim {
            candle_core::bail!(
                "linear {names:?}: stored weights have {rows} rows, the layer {}",
                self.out_dim
            )
        }
        let q = if parts.len() == 1 {
            parts.remove(0)
        } else {
            let mut bytes = Vec::new();
            for p in &parts {
                bytes.extend_from_slice(&p.data()?);
            }
            candle_core::quantized::ggml_file::qtensor_from_ggml(
                dtype,
                &bytes,
                vec![rows, in_dim],
                self.weight_t.device(),
            )?
        };
        self.with_blocks(q)
    }

    /// Few-row f32 products of a dense layer on the CPU through [`skinny::matmul_xwt`]; `None` when the GEMM
    /// is the better choice.
    fn skinny(&self, x2: &Tensor, rows: usize) -> Result<Option<Tensor>> {
        if !(1..=16).contains(&rows)
            || x2.track_op()
            || self.weight_t.track_op()
            || !matches!(x2.device(), Device::Cpu)
            || x2.dtype() != DType::F32
            || self.weight_t.dtype() != DType::F32
        {
            return Ok(None);
        }
        let w = self.weight_t.t()?;
        let (out, k) = w.dims2()?;
        let (w_guard, w_layout) = w.storage_and_layout();
        let (x_guard, x_layout) = x2.storage_and_layout();
        let (candle_core::Storage::Cpu(ws), candle_core::Storage::Cpu(xs)) = (&*w_guard, &*x_guard)
        else {
            return Ok(None);
        };
        let (Some((w0, w1)), Some((x0, x1))) =
            (w_layout.contiguous_offsets(), x_layout.contiguous_offsets())
        else {
            return Ok(None);
        };
        let y = skinny::matmul_xwt(
            &xs.as_slice::<f32>()?[x0..x1],
            rows,
            k,
            &ws.as_slice::<f32>()?[w0..w1],
            out,
        );
        drop((w_guard, x_guard));
        Ok(Some(Tensor::from_vec(y, (rows, out), x2.device())?))
    }

    /// Whether the weight tracks gradients (training).
    pub fn tracks_gradients(&self) -> bool {
        self.weight_t.track_op()
    }

    /// The weight in PyTorch layout, `[out, in]` (a view; dequantized for a quantized layer).
    pub fn weight(&self) -> Result<Tensor> {
        match &self.quant {
            Some(QMatMul::QTensor(q)) => q.dequantize(self.weight_t.device()),
            Some(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => Ok(t.clone()),
            None => self.weight_t.t(),
        }
    }

    /// Applies the layer to `x` of shape `(…, in)`, giving `(…, out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if (x.track_op() || self.weight_t.track_op())
            && self.quant.is_none()
            && matches!(x.device(), Device::Cpu)
            && x.dtype() == DType::F32
            && self.weight_t.dtype() == DType::F32
        {
            // Training: one differentiable node (see `grad::LinearOp`).
            let w = self.weight_t.t()?.contiguous()?;
            let x = x.contiguous()?;
            return match &self.bias {
                Some(b) => x.apply_op3(&w, b, grad::LinearOp),
                None => x.apply_op2(&w, grad::LinearOp),
            };
        }
        let dims = x.dims();
        let Some((&in_dim, lead)) = dims.split_last() else {
            candle_core::bail!("linear: input must have at least one dimension")
        };
        let rows: usize = lead.iter().product();
        let x2 = x.contiguous()?.reshape((rows, in_dim))?;
        let y = match &self.quant {
            Some(QMatMul::QTensor(q))
                if rows >= DEQUANTIZED_MIN_ROWS && matches!(x2.device(), Device::Cpu) =>
            {
                x2.to_dtype(DType::F32)?
                    .matmul(&q.dequantize(x2.device())?.t()?)?
            }
            Some(QMatMul::QTensor(q))
                if (1..=16).contains(&rows)
                    && q.dtype() == GgmlDType::Q8_0
                    && matches!(x2.device(), Device::Cpu) =>
            {
                let x2 = x2.to_dtype(DType::F32)?;
                let xs = x2.flatten_all()?.to_vec1::<f32>()?;
                let y = skinny::matmul_xwt_q8_0(&xs, rows, in_dim, &q.data()?, self.out_dim);
                Tensor::from_vec(y, (rows, self.out_dim), x2.device())?
            }
            Some(q) => q.forward(&x2.to_dtype(DType::F32)?)?,
            None => match self.skinny(&x2, rows)? {
                Some(y) => y,
                None => x2.matmul(&self.weight_t)?,
            },
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_shape = lead.to_vec();
        out_shape.push(self.out_dim);
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

/// GELU in its exact form `x · Φ(x) = x/2 · (1 + erf(x/√2))` (PyTorch's `nn.GELU()` default).
///
/// On the CPU this uses [`GeluErf`] (the vectorised erf PyTorch itself uses on the CPU, about
/// ten times faster than candle's scalar `gelu_erf`); elsewhere candle's `gelu_erf`.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if x.track_op() {
        return match (x.device(), x.dtype()) {
            (Device::Cpu, DType::F32) => x.contiguous()?.apply_op1(GeluErf),
            _ => x.gelu_erf(),
        };
    }
    match (x.device(), x.dtype()) {
        (Device::Cpu, DType::F32 | DType::F16 | DType::BF16) => {
            x.contiguous()?.apply_op1_no_bwd(&GeluErf)
        }
        _ => x.gelu_erf(),
    }
}

/// Exact-form GELU for CPU tensors (f32, f16, bf16; computed in f32).
///
/// erf is evaluated with Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5·10⁻⁷), the same
/// approximation as PyTorch's vectorised CPU `erf` (`Vectorized<float>::erf`), with a
/// branch-free `exp` that the compiler vectorises; large tensors are split over threads.
#[derive(Debug, Clone, Copy)]
pub struct GeluErf;

impl GeluErf {
    /// Elements below which the op stays on the calling thread.
    const PARALLEL_MIN: usize = 1 << 15;

    /// The scalar kernel (written so that a loop over it vectorises).
    #[inline(always)]
    pub fn f32(x: f32) -> f32 {
        const P: f32 = 0.327_591_1;
        const A1: f32 = 0.254_829_6;
        const A2: f32 = -0.284_496_74;
        const A3: f32 = 1.421_413_7;
        const A4: f32 = -1.453_152;
        const A5: f32 = 1.061_405_4;
        let z = x * std::f32::consts::FRAC_1_SQRT_2;
        let a = z.abs();
        let t = 1.0 / (1.0 + P * a);
        let poly = t * (A1 + t * (A2 + t * (A3 + t * (A4 + t * A5))));
        let erf_abs = 1.0 - poly * exp_neg(a * a);
        let erf = f32::from_bits(erf_abs.to_bits() | (z.to_bits() & 0x8000_0000));
        0.5 * x * (1.0 + erf)
    }

    fn map_f32(src: &[f32], dst: &mut [f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = Self::f32(s);
        }
    }

    /// Runs `f` over matching chunks of `src` and `dst` on up to `available_parallelism`
    /// threads.
    fn parallel<S: Sync, T: Send>(src: &[S], dst: &mut [T], f: impl Fn(&[S], &mut [T]) + Sync) {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        if threads < 2 || src.len() < Self::PARALLEL_MIN {
            f(src, dst);
            return;
        }
        let chunk = src.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let f = &f;
            for (s, d) in src.chunks(chunk).zip(dst.chunks_mut(chunk)) {
                scope.spawn(move || f(s, d));
            }
        });
    }

    /// f16/bf16: converted block by block to f32 and back.
    fn map_half<T: Copy>(src: &[T], dst: &mut [T])
    where
        [T]: half::slice::HalfFloatSliceExt,
    {
        use half::slice::HalfFloatSliceExt;
        const BLOCK: usize = 1024;
        let mut a = [0f32; BLOCK];
        let mut b = [0f32; BLOCK];
        for (s, d) in src.chunks(BLOCK).zip(dst.chunks_mut(BLOCK)) {
            let n = s.len();
            s.convert_to_f32_slice(&mut a[..n]);
            Self::map_f32(&a[..n], &mut b[..n]);
            d.convert_from_f32_slice(&b[..n]);
        }
    }
}

impl candle_core::CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf-cpu"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage;
        use candle_core::backend::BackendStorage;
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("gelu: the input must be contiguous")
        };
        let out = match storage {
            CpuStorage::F32(v) => {
                let src = &v[start..end];
                let mut dst = vec![0f32; src.len()];
                Self::parallel(src, &mut dst, Self::map_f32);
                CpuStorage::F32(dst)
            }
            CpuStorage::F16(v) => {
                let src = &v[start..end];
                let mut dst = vec![half::f16::ZERO; src.len()];
                Self::parallel(src, &mut dst, Self::map_half);
                CpuStorage::F16(dst)
            }
            CpuStorage::BF16(v) => {
                let src = &v[start..end];
                let mut dst = vec![half::bf16::ZERO; src.len()];
                Self::parallel(src, &mut dst, Self::map_half);
                CpuStorage::BF16(dst)
            }
            other => candle_core::bail!("gelu: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, layout.shape().clone()))
    }

    /// `dy · gelu'(x)` (f32 on the CPU; used only when training).
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let d = arg.contiguous()?.apply_op1_no_bwd(&grad::GeluErfGrad)?;
        Ok(Some(grad_res.mul(&d)?))
    }
}

/// `exp(−y)` for `y ≥ 0` (relative error ~1e-7; 0 below f32's range), branch-free.
#[inline(always)]
fn exp_neg(y: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Rounding by the 1.5·2²³ trick (no `round` instruction in baseline x86-64).
    const MAGIC: f32 = 12_582_912.0;
    let x = (-y).max(-87.0);
    let n = (x * LOG2E + MAGIC) - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    // exp(r) on |r| ≤ ln2/2: degree-6 Taylor/minimax polynomial.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67
                    + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

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
/// inputs. Returns `(B, H, n, d)` in the dtype of `q`.
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
    let scores = (q.matmul(&k.t()?)? * scale)?;
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

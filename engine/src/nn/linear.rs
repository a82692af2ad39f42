//! The linear layer of the stages: f32/f16 weights through the GEMM or the few-row kernels,
//! quantized weights (`Q8_0`, k-quants) through Tessera's integer kernels (`Q8_0` in VNNI
//! panels, `nn/q8_panels.rs`, where the CPU has AVX-512 VNNI), candle's `QMatMul` or a
//! per-call dequantization, and the differentiable path for training.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use std::sync::Arc;

use super::q8_panels::PanelsQ8;
use super::{grad, skinny, skinny_q4k, skinny_xw};

/// From this many rows on (encoder passes, cross-attention keys, batched prefills), a layer in
/// a block format that is not in VNNI panels multiplies through its weight dequantized for the
/// call and the f32 GEMM: ggml's block dot products run well below the GEMM's rate there, and
/// unpacking the blocks once costs a few percent of such a product. Decoding steps (1–16 rows)
/// read the blocks instead — a quarter of the bytes — through [`skinny::matmul_xwt_q8_0`] for
/// `Q8_0` and Tessera's or candle's kernels for the k-quants.
const DEQUANTIZED_MIN_ROWS: usize = 64;

/// A weight in a quantized format.
#[derive(Debug, Clone)]
enum Quant {
    /// ggml blocks, row-major (`[out, in]`).
    Blocks(QMatMul),
    /// `Q8_0` repacked for the VNNI kernel (CPUs with AVX-512 VNNI): every row count.
    Panels(Arc<PanelsQ8>),
}

/// A fully connected layer `y = x Wᵀ (+ b)` with the PyTorch weight layout `[out, in]`.
///
/// Unlike `candle_nn::Linear` it can be built from several PyTorch layers that read the same
/// input (query/key/value), concatenated along the output dimension, so one matrix product
/// replaces three.
///
/// The weight is kept as `Wᵀ` `(in, out)`: on the CPU a contiguous copy (candle's GEMM with
/// its AVX-512 kernels runs an encoder pass a quarter faster on it than on a transposed view,
/// and no slower with AVX2; products of 1–16 rows, i.e. decoding, go through the few-row
/// kernel of `nn/skinny_xw.rs`), a transposed view of the PyTorch tensor for a training
/// variable or another device, or a ggml block format ([`Linear::quantized`]).
#[derive(Debug, Clone)]
pub struct Linear {
    /// `Wᵀ`, `(in, out)` (for a quantized layer, the dequantized weight is not kept: this is
    /// an empty placeholder and `quant` holds the weight).
    weight_t: Tensor,
    /// The weight in a ggml block format (see [`Linear::quantized`]).
    quant: Option<Quant>,
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
        // On the CPU `Wᵀ` is kept contiguous `(in, out)`: candle's GEMM then packs a
        // column-major operand (a transposed view cost a quarter of an encoder pass in
        // packing), and the few-row kernel reads weight rows. A weight in a gradient graph
        // (a training variable, or query/key/value concatenated from variables) stays a view,
        // so gradients reach the variables and the optimizer's updates are what the layer
        // computes with.
        let weight_t = match (weight.device(), weight.dtype()) {
            (Device::Cpu, DType::F16) if !weight.track_op() => transposed::<half::f16>(&weight)?,
            (Device::Cpu, DType::BF16) if !weight.track_op() => transposed::<half::bf16>(&weight)?,
            (Device::Cpu, DType::F32) if !weight.track_op() => transposed::<f32>(&weight)?,
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
    /// `Q8_0` on a CPU with AVX-512 VNNI is repacked into panels (the same bytes; the blocks
    /// are not kept).
    fn with_blocks(&self, q: QTensor) -> Result<Self> {
        let device = self.weight_t.device();
        let panels = match (q.dtype(), device) {
            (GgmlDType::Q8_0, Device::Cpu) => {
                let (out, k) = q.shape().dims2()?;
                PanelsQ8::from_q8_0(&q.data()?, out, k)
            }
            _ => None,
        };
        let quant = match panels {
            Some(p) => Quant::Panels(Arc::new(p)),
            None => Quant::Blocks(QMatMul::from_qtensor(q)?),
        };
        Ok(Self {
            weight_t: Tensor::zeros(0, DType::F32, device)?,
            quant: Some(quant),
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
            Some(Quant::Panels(p)) => p.bytes(),
            Some(Quant::Blocks(QMatMul::QTensor(q))) => q.storage_size_in_bytes(),
            Some(Quant::Blocks(QMatMul::Tensor(t) | QMatMul::TensorF16(t))) => {
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
        {
            return Ok(None);
        }
        if x2.dtype() == DType::F16 && self.weight_t.dtype() == DType::F16 {
            return self.skinny_xw::<half::f16>(x2, rows);
        }
        if x2.dtype() != DType::F32 || self.weight_t.dtype() != DType::F32 {
            return Ok(None);
        }
        if self.weight_t.is_contiguous() {
            return self.skinny_xw::<f32>(x2, rows);
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

    /// Few-row products of a layer whose `Wᵀ` is contiguous `(in, out)` (f16 or f32) through
    /// [`skinny_xw::matmul_xw`]; the output has the input's dtype, the sums run in f32.
    fn skinny_xw<T: skinny_xw::Weight + candle_core::WithDType>(
        &self,
        x2: &Tensor,
        rows: usize,
    ) -> Result<Option<Tensor>> {
        let (k, out) = self.weight_t.dims2()?;
        let (w_guard, w_layout) = self.weight_t.storage_and_layout();
        let candle_core::Storage::Cpu(ws) = &*w_guard else {
            return Ok(None);
        };
        let Some((w0, w1)) = w_layout.contiguous_offsets() else {
            return Ok(None);
        };
        let xs = x2.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let y = skinny_xw::matmul_xw(&xs, rows, k, &ws.as_slice::<T>()?[w0..w1], out);
        drop(w_guard);
        Tensor::from_vec(y, (rows, out), x2.device())?
            .to_dtype(x2.dtype())
            .map(Some)
    }

    /// Whether the weight tracks gradients (training).
    pub fn tracks_gradients(&self) -> bool {
        self.weight_t.track_op()
    }

    /// The weight in PyTorch layout, `[out, in]` (a view; dequantized for a quantized layer).
    pub fn weight(&self) -> Result<Tensor> {
        match &self.quant {
            Some(Quant::Panels(p)) => {
                Tensor::from_vec(p.dequantize(), (p.out(), p.k()), self.weight_t.device())
            }
            Some(Quant::Blocks(QMatMul::QTensor(q))) => q.dequantize(self.weight_t.device()),
            Some(Quant::Blocks(QMatMul::Tensor(t) | QMatMul::TensorF16(t))) => Ok(t.clone()),
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
            Some(Quant::Panels(p)) if matches!(x2.device(), Device::Cpu) => {
                let x2 = x2.to_dtype(DType::F32)?;
                let (guard, layout) = x2.storage_and_layout();
                let y = match (&*guard, layout.contiguous_offsets()) {
                    (candle_core::Storage::Cpu(xs), Some((x0, x1))) => {
                        p.matmul(&xs.as_slice::<f32>()?[x0..x1], rows)
                    }
                    _ => candle_core::bail!("linear: input not contiguous on the CPU"),
                };
                drop(guard);
                Tensor::from_vec(y, (rows, self.out_dim), x2.device())?
            }
            Some(Quant::Panels(p)) => {
                let w = Tensor::from_vec(p.dequantize(), (p.out(), p.k()), x2.device())?;
                x2.to_dtype(DType::F32)?.matmul(&w.t()?)?
            }
            Some(Quant::Blocks(QMatMul::QTensor(q)))
                if rows >= DEQUANTIZED_MIN_ROWS && matches!(x2.device(), Device::Cpu) =>
            {
                x2.to_dtype(DType::F32)?
                    .matmul(&q.dequantize(x2.device())?.t()?)?
            }
            Some(Quant::Blocks(QMatMul::QTensor(q)))
                if (1..=16).contains(&rows)
                    && q.dtype() == GgmlDType::Q8_0
                    && matches!(x2.device(), Device::Cpu) =>
            {
                let x2 = x2.to_dtype(DType::F32)?;
                let xs = x2.flatten_all()?.to_vec1::<f32>()?;
                let y = skinny::matmul_xwt_q8_0(&xs, rows, in_dim, &q.data()?, self.out_dim);
                Tensor::from_vec(y, (rows, self.out_dim), x2.device())?
            }
            Some(Quant::Blocks(QMatMul::QTensor(q)))
                if (1..=16).contains(&rows)
                    && q.dtype() == GgmlDType::Q4K
                    && matches!(x2.device(), Device::Cpu) =>
            {
                let x2 = x2.to_dtype(DType::F32)?;
                let xs = x2.flatten_all()?.to_vec1::<f32>()?;
                match skinny_q4k::matmul_xwt_q4k(&xs, rows, in_dim, &q.data()?, self.out_dim) {
                    Some(y) => Tensor::from_vec(y, (rows, self.out_dim), x2.device())?,
                    None => match &self.quant {
                        Some(Quant::Blocks(m)) => m.forward(&x2)?,
                        _ => candle_core::bail!("linear: quantized weight missing"),
                    },
                }
            }
            Some(Quant::Blocks(q)) => q.forward(&x2.to_dtype(DType::F32)?)?,
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

/// `w` `(rows, cols)` on the CPU as a new contiguous `(cols, rows)` tensor, transposed in
/// 32×32 tiles over the threads: a load copies every weight this way, and candle's strided
/// copy (`t().contiguous()`, an index computation per element) took 3–5× as long.
fn transposed<T: candle_core::WithDType>(w: &Tensor) -> Result<Tensor> {
    use rayon::prelude::*;
    const TILE: usize = 32;
    let (rows, cols) = w.dims2()?;
    let w = w.contiguous()?;
    let (guard, layout) = w.storage_and_layout();
    let candle_core::Storage::Cpu(storage) = &*guard else {
        drop(guard);
        return w.t()?.contiguous();
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        drop(guard);
        return w.t()?.contiguous();
    };
    let src = &storage.as_slice::<T>()?[start..end];
    let mut out = vec![T::from_f64(0.0); rows * cols];
    if rows > 0 {
        // Each task writes `TILE` whole output rows (input columns `c0..c1`).
        out.par_chunks_mut(rows * TILE)
            .enumerate()
            .for_each(|(t, dst)| {
                let c0 = t * TILE;
                let c1 = (c0 + TILE).min(cols);
                for r0 in (0..rows).step_by(TILE) {
                    for r in r0..(r0 + TILE).min(rows) {
                        for (i, v) in src[r * cols + c0..r * cols + c1].iter().enumerate() {
                            dst[i * rows + r] = *v;
                        }
                    }
                }
            });
    }
    drop(guard);
    Tensor::from_vec(out, (cols, rows), w.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiled_transpose_equals_candles() {
        let dev = Device::Cpu;
        for (rows, cols) in [
            (1, 1),
            (3, 70),
            (64, 32),
            (33, 65),
            (100, 7),
            (0, 5),
            (5, 0),
        ] {
            let w = Tensor::arange(0f32, (rows * cols) as f32, &dev)
                .unwrap()
                .reshape((rows, cols))
                .unwrap();
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                let w = w.to_dtype(dtype).unwrap();
                let got = match dtype {
                    DType::F16 => transposed::<half::f16>(&w),
                    DType::BF16 => transposed::<half::bf16>(&w),
                    _ => transposed::<f32>(&w),
                }
                .unwrap();
                assert!(got.is_contiguous());
                assert_eq!(got.dims(), &[cols, rows]);
                let want = w.t().unwrap().contiguous().unwrap();
                let (got, want) = (
                    got.to_dtype(DType::F32).unwrap().flatten_all().unwrap(),
                    want.to_dtype(DType::F32).unwrap().flatten_all().unwrap(),
                );
                assert_eq!(
                    got.to_vec1::<f32>().unwrap(),
                    want.to_vec1::<f32>().unwrap(),
                    "{rows}×{cols} {dtype:?}"
                );
            }
        }
        // A view (not contiguous) is read through its layout.
        let w = Tensor::arange(0f32, 12.0, &dev)
            .unwrap()
            .reshape((3, 4))
            .unwrap()
            .t()
            .unwrap();
        let got = transposed::<f32>(&w).unwrap();
        assert_eq!(
            got.to_vec2::<f32>().unwrap(),
            vec![
                vec![0., 1., 2., 3.],
                vec![4., 5., 6., 7.],
                vec![8., 9., 10., 11.]
            ]
        );
    }
}

//! Differentiable building blocks for training on the CPU, made only of ops that have a
//! backward pass whose cost is dominated by matrix products.
//!
//! Convolutions are im2col + one GEMM on the CPU (`crate::conv`: candle's `conv2d` gathers its
//! im2col value by value, and its kernel gradient is a convolution as deep as the batch's
//! pixels), candle's `conv2d` elsewhere. `upsample_nearest2d` backward is a grouped
//! convolution, one call per channel, so upsampling is its own op (a broadcast elsewhere), as
//! is GroupNorm (+ swish) (`fused.rs`); softmax is written from primitive ops.

use candle_core::{D, DType, Result, Tensor};

use super::fused::{GroupNormOp, Upsample2};

/// Parameters of a convolution: weight (out, in, k, k) and bias (out), as `torch.nn.Conv2d`.
#[derive(Clone)]
pub(crate) struct ConvW {
    pub weight: Tensor,
    pub bias: Tensor,
}

/// `k × k` convolution, stride `s`, zero padding `(top/left, bottom/right)`, over (B, C, H, W).
pub(crate) fn conv2d(x: &Tensor, p: &ConvW, stride: usize, pad: (usize, usize)) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return crate::conv::conv2d(x, &p.weight, &p.bias, stride, pad);
    }
    let co = p.weight.dim(0)?;
    let y = if pad.0 == pad.1 {
        x.conv2d(&p.weight, pad.0, stride, 1, 1)?
    } else {
        x.pad_with_zeros(2, pad.0, pad.1)?
            .pad_with_zeros(3, pad.0, pad.1)?
            .conv2d(&p.weight, 0, stride, 1, 1)?
    };
    y.broadcast_add(&p.bias.reshape((1, co, 1, 1))?)
}

/// Nearest-neighbour 2× upsampling: one op on the CPU, a broadcast elsewhere (its backward is a
/// sum).
pub(crate) fn upsample2(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return x.contiguous()?.apply_op1(Upsample2);
    }
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .contiguous()?
        .reshape((b, c, 2 * h, 2 * w))
}

/// GroupNorm parameters (affine weight and bias per channel).
#[derive(Clone)]
pub(crate) struct NormW {
    pub weight: Tensor,
    pub bias: Tensor,
}

/// GroupNorm over `groups` groups with `eps`, optionally followed by swish: one fused op on the
/// CPU, primitive ops elsewhere.
pub(crate) fn group_norm(
    x: &Tensor,
    p: &NormW,
    groups: usize,
    eps: f64,
    swish: bool,
) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        let op = GroupNormOp { groups, eps, swish };
        return x
            .contiguous()?
            .apply_op3(&p.weight.contiguous()?, &p.bias.contiguous()?, op);
    }
    let (b, c, h, w) = x.dims4()?;
    let xs = x.reshape((b, groups, (c / groups) * h * w))?;
    let mean = xs.mean_keepdim(2)?;
    let xs = xs.broadcast_sub(&mean)?;
    let var = xs.sqr()?.mean_keepdim(2)?;
    let xs = xs
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .reshape((b, c, h, w))?;
    let y = xs
        .broadcast_mul(&p.weight.reshape((1, c, 1, 1))?)?
        .broadcast_add(&p.bias.reshape((1, c, 1, 1))?)?;
    if swish { y.silu() } else { Ok(y) }
}

/// Softmax over the last dimension with a detached maximum (the result does not depend on it).
pub(crate) fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// LeakyReLU with slope `a` on the negative side: relu(x) − a·relu(−x).
pub(crate) fn leaky_relu(x: &Tensor, a: f64) -> Result<Tensor> {
    x.relu()? - (x.neg()?.relu()? * a)?
}

//! Differentiable building blocks for training on the CPU, made only of candle ops that have a
//! backward pass whose cost is dominated by matrix products.
//!
//! Convolutions use candle's `conv2d` (im2col + GEMM forward; its backward, `conv_transpose2d`
//! and a conv over the batch, measured faster here than an im2col built from tensor ops, whose
//! concatenation backward moves too much memory). `upsample_nearest2d` backward is a grouped
//! convolution, one call per channel, so upsampling is a broadcast here (its backward is a sum).
//! GroupNorm and softmax are written from primitive ops, which all have a backward pass.

use candle_core::{CpuStorage, CustomOp2, D, DType, Layout, Result, Shape, Tensor};
use tessera_engine::nn::grad::tensor_of;

/// Parameters of a convolution: weight (out, in, k, k) and bias (out), as `torch.nn.Conv2d`.
#[derive(Clone)]
pub(crate) struct ConvW {
    pub weight: Tensor,
    pub bias: Tensor,
}

/// `k × k` convolution, stride `s`, zero padding `(top/left, bottom/right)`, over (B, C, H, W).
pub(crate) fn conv2d(x: &Tensor, p: &ConvW, stride: usize, pad: (usize, usize)) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (co, _, k, _) = p.weight.dims4()?;
    let bias = p.bias.reshape((1, co, 1))?;
    if k == 1 && stride == 1 && pad == (0, 0) {
        let wm = p.weight.reshape((co, c))?;
        let y = wm.broadcast_matmul(&x.reshape((b, c, h * w))?)?;
        return y.broadcast_add(&bias)?.reshape((b, co, h, w));
    }
    let y = if pad.0 == pad.1 && stride == 1 && x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?
            .apply_op2(&p.weight.contiguous()?, SameConv { pad: pad.0 })?
    } else if pad.0 == pad.1 {
        x.conv2d(&p.weight, pad.0, stride, 1, 1)?
    } else {
        x.pad_with_zeros(2, pad.0, pad.1)?
            .pad_with_zeros(3, pad.0, pad.1)?
            .conv2d(&p.weight, 0, stride, 1, 1)?
    };
    y.broadcast_add(&bias.reshape((1, co, 1, 1))?)
}

/// Stride-1 convolution with candle's forward and a faster backward: the input gradient is a
/// convolution with the flipped, transposed kernel (candle uses `conv_transpose2d`, a direct
/// loop that measured about 2× slower on the CPU); the kernel gradient is candle's.
struct SameConv {
    pad: usize,
}

impl CustomOp2 for SameConv {
    fn name(&self) -> &'static str {
        "tessera-same-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y =
            tensor_of(s1, l1, "conv")?.conv2d(&tensor_of(s2, l2, "conv")?, self.pad, 1, 1, 1)?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, _, k, _) = w.dims4()?;
        let w_t = w.flip(&[2, 3])?.transpose(0, 1)?.contiguous()?;
        let grad_x = grad.conv2d(&w_t, k - 1 - self.pad, 1, 1, 1)?;
        let grad_w = x
            .transpose(0, 1)?
            .conv2d(&grad.transpose(0, 1)?, self.pad, 1, 1, 1)?
            .transpose(0, 1)?;
        Ok((Some(grad_x), Some(grad_w)))
    }
}

/// Nearest-neighbour 2× upsampling as a broadcast (its backward is a sum).
pub(crate) fn upsample2(x: &Tensor) -> Result<Tensor> {
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

/// GroupNorm over `groups` groups with `eps`, from primitive ops, optionally followed by swish.
pub(crate) fn group_norm(
    x: &Tensor,
    p: &NormW,
    groups: usize,
    eps: f64,
    swish: bool,
) -> Result<Tensor> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    #[test]
    fn same_conv_gradients_match_candle() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 4, 6, 5), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1., (3, 4, 3, 3), &dev)?)?;
        let target = Tensor::randn(0f32, 1., (2, 3, 6, 5), &dev)?;
        let ours = x.apply_op2(w.as_tensor(), SameConv { pad: 1 })?;
        let theirs = x.conv2d(&w, 1, 1, 1, 1)?;
        let diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
        };
        assert!(diff(&ours, &theirs)? < 1e-4);
        let g1 = (ours * &target)?.sum_all()?.backward()?;
        let g2 = (theirs * &target)?.sum_all()?.backward()?;
        for v in [&x, &w] {
            let (a, b) = (g1.get(v).expect("grad"), g2.get(v).expect("grad"));
            assert!(diff(a, b)? < 1e-3, "gradients differ");
        }
        Ok(())
    }
}

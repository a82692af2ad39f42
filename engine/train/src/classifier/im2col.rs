//! A 3×3, stride-1, zero-padded convolution in the **(C, B, H, W)** layout, for CPU training.
//!
//! Why the layout: `W (Cout, 9C) @ cols (9C, B·H·W)` is already the next activation, with no
//! permute; 2-D pooling is per plane, so `avg_pool2d` works on it unchanged. On the CPU it is
//! im2col + one matrix product (`crate::conv`: candle's `conv2d` backward was 10–20× slower
//! than its forward and dominated the classifier's step).

use candle_core::Tensor;

/// 3×3 convolution (no bias) with padding 1 of `x` (C, B, H, W) by `weight` (Cout, 9C, ordered
/// `c·9 + ky·3 + kx` as a flattened PyTorch (Cout, C, 3, 3) kernel): (Cout, B, H, W). On the
/// CPU through `crate::conv`; elsewhere through candle's `conv2d`.
pub fn conv3x3(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    let c = x.dim(0)?;
    let cout = weight.dim(0)?;
    let y = if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        crate::conv::conv2d_cbhw(x, weight, 3)?
    } else {
        let k = weight.reshape((cout, c, 3, 3))?;
        x.permute((1, 0, 2, 3))?
            .contiguous()?
            .conv2d(&k, 1, 1, 1, 1)?
            .permute((1, 0, 2, 3))?
            .contiguous()?
    };
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Same values and gradients as candle's conv2d (in the (B, C, H, W) layout).
    #[test]
    fn matches_conv2d_forward_and_backward() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let (b, c, co, h, w) = (2, 3, 4, 5, 6);
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (c, b, h, w), &dev)?)?;
        let wt = Var::from_tensor(&Tensor::randn(0f32, 1.0, (co, 9 * c), &dev)?)?;
        let r = Tensor::randn(0f32, 1.0, (co, b, h, w), &dev)?;
        let ours = conv3x3(&x, &wt)?;
        let g1 = (&ours * &r)?.sum_all()?.backward()?;

        let xr = Var::from_tensor(&x.permute((1, 0, 2, 3))?.contiguous()?)?;
        let kr = Var::from_tensor(&wt.reshape((co, c, 3, 3))?)?;
        let theirs = xr.conv2d(&kr, 1, 1, 1, 1)?;
        let g2 = (&theirs * &r.permute((1, 0, 2, 3))?)?
            .sum_all()?
            .backward()?;

        let close = |a: &Tensor, b: &Tensor| -> candle_core::Result<f32> {
            (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
        };
        assert!(close(&ours, &theirs.permute((1, 0, 2, 3))?)? < 1e-4);
        let (gx1, gx2) = (g1.get(&x).unwrap(), g2.get(&xr).unwrap());
        assert!(close(gx1, &gx2.permute((1, 0, 2, 3))?)? < 1e-4);
        let (gw1, gw2) = (g1.get(&wt).unwrap(), g2.get(&kr).unwrap());
        assert!(close(gw1, &gw2.reshape((co, 9 * c))?)? < 1e-4);
        Ok(())
    }
}

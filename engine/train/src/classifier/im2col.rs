//! A 3×3, stride-1, zero-padded convolution for CPU training, as im2col + one matrix product.
//!
//! Why: candle's `conv2d` backward (and the backward of `narrow`/`cat` along the inner
//! dimensions that a composed im2col would need) is 10–20× slower than its forward on the CPU,
//! which made the classifier's training step dominated by copying. Here im2col and its adjoint
//! (col2im) are custom ops over plain slices, and everything else is a matmul.
//!
//! Activations use the **(C, B, H, W)** layout so that `W (Cout, 9C) @ cols (9C, B·H·W)` is
//! already the next activation, with no permute; 2-D pooling is per plane, so
//! `avg_pool2d` works on it unchanged.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use tessera_engine::nn::grad::f32_slice;

/// (C, B, H, W) → (9C, B·H·W): row `c·9 + ky·3 + kx` holds the input shifted by
/// `(ky − 1, kx − 1)`, zero outside.
struct Im2Col;

/// The adjoint of [`Im2Col`]: (9C, B·H·W) → (C, B, H, W), summing the 9 shifted copies back.
struct Col2Im {
    dims: (usize, usize, usize, usize),
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col3x3"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (c, b, h, w) = l.shape().dims4()?;
        let x = f32_slice(s, l, self.name())?;
        let (plane, n) = (h * w, b * h * w);
        let mut out = vec![0f32; 9 * c * n];
        out.par_chunks_mut(9 * n)
            .enumerate()
            .for_each(|(ci, rows)| {
                for (k, row) in rows.chunks_mut(n).enumerate() {
                    let (dy, dx) = ((k / 3) as isize - 1, (k % 3) as isize - 1);
                    for bi in 0..b {
                        let src = &x[(ci * b + bi) * plane..(ci * b + bi + 1) * plane];
                        let dst = &mut row[bi * plane..(bi + 1) * plane];
                        for y in 0..h {
                            let sy = y as isize + dy;
                            if sy < 0 || sy >= h as isize {
                                continue;
                            }
                            let (x0, x1) = (
                                (-dx).max(0) as usize,
                                (w as isize - dx).min(w as isize) as usize,
                            );
                            let s0 = (sy as usize) * w;
                            for xx in x0..x1 {
                                dst[y * w + xx] = src[s0 + (xx as isize + dx) as usize];
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((9 * c, n))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let op = Col2Im { dims: arg.dims4()? };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im3x3"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (c, b, h, w) = self.dims;
        let g = f32_slice(s, l, self.name())?;
        let (plane, n) = (h * w, b * h * w);
        if g.len() != 9 * c * n {
            candle_core::bail!(
                "col2im3x3: gradient has {} values, expected {}",
                g.len(),
                9 * c * n
            );
        }
        let mut out = vec![0f32; c * n];
        out.par_chunks_mut(n).enumerate().for_each(|(ci, dst_c)| {
            for k in 0..9 {
                let (dy, dx) = ((k / 3) as isize - 1, (k % 3) as isize - 1);
                let row = &g[(ci * 9 + k) * n..(ci * 9 + k + 1) * n];
                for bi in 0..b {
                    let src = &row[bi * plane..(bi + 1) * plane];
                    let dst = &mut dst_c[bi * plane..(bi + 1) * plane];
                    for y in 0..h {
                        let sy = y as isize + dy;
                        if sy < 0 || sy >= h as isize {
                            continue;
                        }
                        let (x0, x1) = (
                            (-dx).max(0) as usize,
                            (w as isize - dx).min(w as isize) as usize,
                        );
                        let s0 = (sy as usize) * w;
                        for xx in x0..x1 {
                            dst[s0 + (xx as isize + dx) as usize] += src[y * w + xx];
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((c, b, h, w))))
    }
}

/// 3×3 convolution (no bias) with padding 1 of `x` (C, B, H, W) by `weight` (Cout, 9C, ordered
/// `c·9 + ky·3 + kx` as a flattened PyTorch (Cout, C, 3, 3) kernel): (Cout, B, H, W). On the
/// CPU through [`Im2Col`]; elsewhere through candle's `conv2d`.
pub fn conv3x3(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    let (c, b, h, w) = x.dims4()?;
    let cout = weight.dim(0)?;
    let y = if x.device().is_cpu() {
        let cols = x.contiguous()?.apply_op1(Im2Col)?;
        weight.matmul(&cols)?.reshape((cout, b, h, w))?
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

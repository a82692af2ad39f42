//! Convolution for CPU training as im2col + one matrix product, forward and backward.
//!
//! Why: candle's `conv2d` builds its im2col tiles one value at a time, and its backward takes
//! the kernel gradient as another convolution whose kernel is the whole output gradient — a
//! `B·H·W`-deep im2col gathered value by value. In `perf` of the VQGAN decoder's fine-tune
//! that gathering was 34 % of the step and candle's strided sums for the broadcast bias
//! another 13 %, while the products themselves took 14 %. Here im2col and its adjoint (col2im)
//! copy whole row segments, the three products of a convolution and its two gradients are
//! candle matmuls (its GEMM), and the bias is added while the result is laid out, its gradient
//! a contiguous row sum.
//!
//! Two activation layouts: **(B, C, H, W)** (PyTorch's, the VQGAN's; [`conv2d`]) and
//! **(C, B, H, W)** (the classifier's; [`conv2d_cbhw`]), where the product is already the next
//! activation, with no permute.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use tessera_engine::nn::grad::f32_slice;

/// Where the (batch, channel) planes of an activation lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Planes {
    /// (B, C, H, W): plane `b·C + c`.
    Bchw,
    /// (C, B, H, W): plane `c·B + b`.
    Cbhw,
}

/// The geometry of one convolution: square `k × k` kernel, `stride`, zero padding `pad.0`
/// above / left and `pad.1` below / right, over `b` images of `c` channels, `h × w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    planes: Planes,
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: (usize, usize),
}

impl Geometry {
    fn new(
        planes: Planes,
        dims: (usize, usize, usize, usize),
        k: usize,
        stride: usize,
        pad: (usize, usize),
    ) -> Result<Self> {
        let (d0, d1, h, w) = dims;
        let (b, c) = match planes {
            Planes::Bchw => (d0, d1),
            Planes::Cbhw => (d1, d0),
        };
        if k == 0 || stride == 0 || h + pad.0 + pad.1 < k || w + pad.0 + pad.1 < k {
            candle_core::bail!(
                "conv: a {k}×{k} kernel with stride {stride} and padding {pad:?} does not fit \
                 a {h}×{w} input"
            );
        }
        Ok(Self {
            planes,
            b,
            c,
            h,
            w,
            k,
            stride,
            pad,
        })
    }

    fn out_hw(&self) -> (usize, usize) {
        let span = |n: usize| (n + self.pad.0 + self.pad.1 - self.k) / self.stride + 1;
        (span(self.h), span(self.w))
    }

    /// Columns of the im2col matrix: one per output position of every image.
    fn n(&self) -> usize {
        let (ho, wo) = self.out_hw();
        self.b * ho * wo
    }

    /// Rows of the im2col matrix, ordered `(c·k + ky)·k + kx` like a flattened PyTorch kernel.
    fn rows(&self) -> usize {
        self.c * self.k * self.k
    }

    /// The index of plane (`bi`, `ci`) in the input.
    fn plane(&self, bi: usize, ci: usize) -> usize {
        match self.planes {
            Planes::Bchw => bi * self.c + ci,
            Planes::Cbhw => ci * self.b + bi,
        }
    }

    /// The (batch, channel) of the input's plane `p`.
    fn plane_bc(&self, p: usize) -> (usize, usize) {
        match self.planes {
            Planes::Bchw => (p / self.c, p % self.c),
            Planes::Cbhw => (p % self.b, p / self.b),
        }
    }

    /// Output columns `x` whose input column `x·stride + kx − pad.0` lies inside the image.
    fn x_range(&self, kx: usize, wo: usize) -> std::ops::Range<usize> {
        let first = self.pad.0.saturating_sub(kx).div_ceil(self.stride);
        match (self.w + self.pad.0).checked_sub(kx + 1) {
            Some(span) => first.min(wo)..(span / self.stride + 1).min(wo),
            None => 0..0,
        }
    }

    /// The input row that output row `y` reads at kernel row `ky`, if inside the image.
    fn in_row(&self, y: usize, ky: usize) -> Option<usize> {
        (y * self.stride + ky)
            .checked_sub(self.pad.0)
            .filter(|&r| r < self.h)
    }

    /// For every kernel offset, output row and valid column range of image `bi`: `f(row of the
    /// im2col matrix within channel's block, offset of the output row in a column block, input
    /// row start, input x of the first valid column, the valid columns)`.
    fn for_each_segment(
        &self,
        mut f: impl FnMut(usize, usize, usize, usize, std::ops::Range<usize>),
    ) {
        let (ho, wo) = self.out_hw();
        for ky in 0..self.k {
            for kx in 0..self.k {
                let xs = self.x_range(kx, wo);
                if xs.is_empty() {
                    continue;
                }
                let x0_in = xs.start * self.stride + kx - self.pad.0;
                for y in 0..ho {
                    if let Some(iy) = self.in_row(y, ky) {
                        f(ky * self.k + kx, y * wo, iy * self.w, x0_in, xs.clone());
                    }
                }
            }
        }
    }
}

/// Input → (C·k², B·Ho·Wo): row `(c·k + ky)·k + kx`, column `(b·Ho + y)·Wo + x` holds input
/// pixel `(y·s + ky − pad, x·s + kx − pad)` of channel `c`, image `b`; zero outside.
struct Im2Col(Geometry);

/// The adjoint of [`Im2Col`]: (C·k², B·Ho·Wo) → the input's shape, every column's values
/// summed back where they were read.
struct Col2Im(Geometry);

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "tessera-im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let x = f32_slice(s, l, self.name())?;
        let (ho, wo) = g.out_hw();
        let (plane, out_plane, n, kk) = (g.h * g.w, ho * wo, g.n(), g.k * g.k);
        let mut out = vec![0f32; g.rows() * n];
        out.par_chunks_mut(kk * n)
            .enumerate()
            .for_each(|(ci, rows)| {
                for bi in 0..g.b {
                    let p = g.plane(bi, ci);
                    let src = &x[p * plane..(p + 1) * plane];
                    g.for_each_segment(|r, y_off, row_in, x0_in, xs| {
                        let dst = &mut rows[r * n + bi * out_plane + y_off..][..wo];
                        let src = &src[row_in..row_in + g.w];
                        if g.stride == 1 {
                            dst[xs.clone()].copy_from_slice(&src[x0_in..x0_in + xs.len()]);
                        } else {
                            for (i, x) in xs.enumerate() {
                                dst[x] = src[x0_in + i * g.stride];
                            }
                        }
                    });
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((g.rows(), n))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Col2Im(self.0))?))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "tessera-col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let cols = f32_slice(s, l, self.name())?;
        let (ho, wo) = g.out_hw();
        let (plane, out_plane, n, kk) = (g.h * g.w, ho * wo, g.n(), g.k * g.k);
        if cols.len() != g.rows() * n {
            candle_core::bail!(
                "col2im: {} values, expected {} × {}",
                cols.len(),
                g.rows(),
                n
            );
        }
        let mut out = vec![0f32; g.b * g.c * plane];
        out.par_chunks_mut(plane).enumerate().for_each(|(p, dst)| {
            let (bi, ci) = g.plane_bc(p);
            let block = &cols[ci * kk * n..(ci + 1) * kk * n];
            g.for_each_segment(|r, y_off, row_in, x0_in, xs| {
                let src = &block[r * n + bi * out_plane + y_off..][..wo];
                let dst = &mut dst[row_in..row_in + g.w];
                if g.stride == 1 {
                    let d = &mut dst[x0_in..x0_in + xs.len()];
                    for (d, s) in d.iter_mut().zip(&src[xs]) {
                        *d += s;
                    }
                } else {
                    for (i, x) in xs.enumerate() {
                        dst[x0_in + i * g.stride] += src[x];
                    }
                }
            });
        });
        let (d0, d1) = match g.planes {
            Planes::Bchw => (g.b, g.c),
            Planes::Cbhw => (g.c, g.b),
        };
        Ok((CpuStorage::F32(out), Shape::from((d0, d1, g.h, g.w))))
    }
}

/// (Co, B·P) + bias (Co) → (B, Co, P): a product laid out as the next activation, the bias
/// added on the way.
struct ToBchw {
    b: usize,
}

/// (B, Co, P) → (Co, B·P): the gradient of [`ToBchw`]'s first input.
struct FromBchw;

impl CustomOp2 for ToBchw {
    fn name(&self) -> &'static str {
        "tessera-to-bchw"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = f32_slice(s1, l1, self.name())?;
        let bias = f32_slice(s2, l2, self.name())?;
        let (co, n) = l1.shape().dims2()?;
        if bias.len() != co || n % self.b != 0 {
            candle_core::bail!(
                "to-bchw: ({co}, {n}) with bias {} over {}",
                bias.len(),
                self.b
            );
        }
        let p = n / self.b;
        let mut out = vec![0f32; co * n];
        out.par_chunks_mut(p).enumerate().for_each(|(i, dst)| {
            let (bi, c) = (i / co, i % co);
            for (d, s) in dst.iter_mut().zip(&y[c * n + bi * p..][..p]) {
                *d = s + bias[c];
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((self.b, co, p))))
    }

    fn bwd(
        &self,
        _y: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?.apply_op1_no_bwd(&FromBchw)?;
        let gb = g.sum(1)?;
        Ok((Some(g), Some(gb)))
    }
}

impl CustomOp1 for FromBchw {
    fn name(&self) -> &'static str {
        "tessera-from-bchw"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = f32_slice(s, l, self.name())?;
        let (b, co, p) = l.shape().dims3()?;
        let n = b * p;
        let mut out = vec![0f32; co * n];
        out.par_chunks_mut(n).enumerate().for_each(|(c, dst)| {
            for bi in 0..b {
                dst[bi * p..(bi + 1) * p].copy_from_slice(&g[(bi * co + c) * p..][..p]);
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((co, n))))
    }
}

/// `k × k` convolution of `x` (B, C, H, W) by `weight` (Co, C, k, k) plus `bias` (Co), with
/// `stride` and zero padding `pad` (above / left, below / right), as `torch.nn.Conv2d`:
/// (B, Co, Ho, Wo). f32 on the CPU (callers keep candle's `conv2d` elsewhere).
pub(crate) fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    pad: (usize, usize),
) -> Result<Tensor> {
    let (co, _, k, _) = weight.dims4()?;
    let g = Geometry::new(Planes::Bchw, x.dims4()?, k, stride, pad)?;
    let (ho, wo) = g.out_hw();
    let cols = x.contiguous()?.apply_op1(Im2Col(g))?;
    weight
        .reshape((co, g.rows()))?
        .matmul(&cols)?
        .apply_op2(bias, ToBchw { b: g.b })?
        .reshape((g.b, co, ho, wo))
}

/// `k × k` convolution (no bias, stride 1, padding `k / 2`) of `x` (C, B, H, W) by `weight`
/// (Co, C·k², ordered like a flattened PyTorch kernel): (Co, B, H, W). f32 on the CPU.
pub(crate) fn conv2d_cbhw(x: &Tensor, weight: &Tensor, k: usize) -> Result<Tensor> {
    let g = Geometry::new(Planes::Cbhw, x.dims4()?, k, 1, (k / 2, k / 2))?;
    let (ho, wo) = g.out_hw();
    let cols = x.contiguous()?.apply_op1(Im2Col(g))?;
    weight.matmul(&cols)?.reshape((weight.dim(0)?, g.b, ho, wo))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// Values and all three gradients equal candle's `conv2d` (padded by hand where the padding
    /// is uneven) for the shapes the VQGAN and its discriminator use, odd sizes included
    /// (strided ones where the stride divides the span: candle's backward gets the input
    /// gradient's shape wrong otherwise).
    #[test]
    fn matches_candle_conv2d_forward_and_backward() -> Result<()> {
        let dev = Device::Cpu;
        // (B, C, Co, H, W, k, stride, pad)
        let cases = [
            (2, 3, 4, 7, 5, 3, 1, (1, 1)),
            (2, 3, 5, 8, 6, 3, 2, (0, 1)),
            (3, 4, 2, 6, 6, 1, 1, (0, 0)),
            (2, 3, 4, 10, 8, 4, 2, (1, 1)),
            (1, 2, 3, 5, 7, 4, 1, (1, 1)),
            (2, 2, 3, 3, 4, 3, 1, (2, 0)),
        ];
        for (b, c, co, h, w, k, s, pad) in cases {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1., (b, c, h, w), &dev)?)?;
            let wt = Var::from_tensor(&Tensor::randn(0f32, 1., (co, c, k, k), &dev)?)?;
            let bias = Var::from_tensor(&Tensor::randn(0f32, 1., co, &dev)?)?;
            let ours = conv2d(&x, &wt, &bias, s, pad)?;
            let theirs = x
                .pad_with_zeros(2, pad.0, pad.1)?
                .pad_with_zeros(3, pad.0, pad.1)?
                .conv2d(&wt, 0, s, 1, 1)?
                .broadcast_add(&bias.reshape((1, co, 1, 1))?)?;
            assert_eq!(
                ours.dims(),
                theirs.dims(),
                "case {:?}",
                (b, c, co, h, w, k, s)
            );
            assert!(max_diff(&ours, &theirs)? < 1e-4);
            let target = Tensor::randn(0f32, 1., ours.shape(), &dev)?;
            let g1 = (&ours * &target)?.sum_all()?.backward()?;
            let g2 = (&theirs * &target)?.sum_all()?.backward()?;
            for v in [&x, &wt, &bias] {
                let (a, b) = (g1.get(v).expect("grad"), g2.get(v).expect("grad"));
                assert_eq!(a.dims(), b.dims());
                assert!(
                    max_diff(a, b)? < 1e-3,
                    "gradients differ: {k}×{k} stride {s}"
                );
            }
        }
        Ok(())
    }
}

//! The fully connected layer of training, `y = x Wᵀ (+ b)`, as one graph node whose forward
//! and backward call `gemm` on the arguments where they lie.
//!
//! Through candle's ops the layer copied its input and weight into tensors of their own, wrote
//! the product into a zeroed buffer, added the bias in another pass and copied the result out;
//! its backward copied the output gradient twice more. Here the bias rows are the product's
//! initial value, and the backward's two products and bias sum read the arguments in place.
//!
//! `unsafe` here: `gemm`'s raw-pointer interface, every operand's extent checked first.
#![allow(unsafe_code)]

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::{View, f32_slice};

/// A fully connected layer `y = x Wᵀ (+ b)` as one graph node: x `(…, in)`, W `[out, in]`
/// (PyTorch layout), b `[out]`, all contiguous f32. Saves candle's autograd the reshape,
/// broadcast and add nodes around the product, each of which would cost a full-size gradient
/// buffer in the backward pass.
#[derive(Debug, Clone, Copy)]
pub struct LinearOp;

/// Products below this many multiply–adds run on one thread.
const PARALLEL_MACS: usize = 1 << 18;

/// Rows of the output gradient summed per task for the bias gradient.
const BIAS_ROWS: usize = 256;

/// How `gemm` may spread a product of `macs` multiply–adds: over candle's thread count, as
/// candle's matmul did (in a one-thread pool of `tessera train --jobs 2` the parts run in turn;
/// the pool's own count measured the same). The bits do not depend on the split:
/// `app/tests/train.rs` trains the same stages with `--jobs 1` and `--jobs 2`.
fn parallelism(macs: usize) -> Parallelism {
    let threads = candle_core::utils::get_num_threads();
    if threads > 1 && macs >= PARALLEL_MACS {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// An operand of [`product`]: its values and the strides of its columns and rows.
struct Operand<'a> {
    data: &'a [f32],
    col: usize,
    row: usize,
}

impl Operand<'_> {
    /// Whether every element of a `rows × cols` matrix with these strides lies in `data`.
    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.row + (cols - 1) * self.col < self.data.len()
    }
}

/// Returns `init + lhs · rhs` (`rows × cols`, row-major; `init` empty: zero) with `lhs`
/// `rows × depth` and `rhs` `depth × cols`.
fn product(
    rows: usize,
    cols: usize,
    depth: usize,
    lhs: Operand,
    rhs: Operand,
    init: Vec<f32>,
) -> Result<Vec<f32>> {
    let n = rows * cols;
    if !lhs.fits(rows, depth) || !rhs.fits(depth, cols) || !(init.is_empty() || init.len() == n) {
        candle_core::bail!(
            "linear: operands do not match a {rows}×{depth} · {depth}×{cols} product"
        )
    }
    let read_dst = !init.is_empty();
    let mut dst = init;
    if !read_dst {
        dst.reserve_exact(n);
    }
    if n > 0 && depth > 0 {
        // SAFETY: `fits` bounded every element both operands' strides address; dst has room
        // for n values (written by gemm before `set_len`, read by it only when read_dst).
        unsafe {
            gemm::gemm(
                rows,
                cols,
                depth,
                dst.as_mut_ptr(),
                1,
                cols as isize,
                read_dst,
                lhs.data.as_ptr(),
                lhs.col as isize,
                lhs.row as isize,
                rhs.data.as_ptr(),
                rhs.col as isize,
                rhs.row as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism(n * depth),
            );
        }
    } else if !read_dst {
        dst.resize(n, 0.0);
    }
    if !read_dst {
        // SAFETY: gemm wrote all n values above (or resize did).
        unsafe { dst.set_len(n) };
    }
    Ok(dst)
}

impl LinearOp {
    /// `(rows, in, out)` of the layer for `x` and `w`, checked.
    fn sizes(x: &Layout, w: &Layout, b: Option<&Layout>) -> Result<(usize, usize, usize)> {
        let (out, in_dim) = w.shape().dims2()?;
        let x_in = x.shape().dims().last().copied();
        if x_in != Some(in_dim) {
            candle_core::bail!(
                "linear: input {:?} does not end in the weight's {in_dim} inputs ({:?})",
                x.shape(),
                w.shape()
            )
        }
        if let Some(b) = b
            && b.shape().dims() != [out]
        {
            candle_core::bail!("linear: bias {:?} for {out} outputs", b.shape())
        }
        Ok((x.shape().elem_count() / in_dim.max(1), in_dim, out))
    }

    fn forward(
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        b: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, in_dim, out) = Self::sizes(x.1, w.1, b.map(|b| b.1))?;
        let xs = f32_slice(x.0, x.1, "linear x")?;
        let ws = f32_slice(w.0, w.1, "linear W")?;
        let init = match b {
            Some((s, l)) => {
                let bs = f32_slice(s, l, "linear b")?;
                let mut init = Vec::with_capacity(rows * out);
                for _ in 0..rows {
                    init.extend_from_slice(bs);
                }
                init
            }
            None => Vec::new(),
        };
        // x (rows × in) times Wᵀ: element (k, j) of Wᵀ is W[j·in + k].
        let y = product(
            rows,
            out,
            in_dim,
            Operand {
                data: xs,
                col: 1,
                row: in_dim,
            },
            Operand {
                data: ws,
                col: in_dim,
                row: 1,
            },
            init,
        )?;
        let mut shape = x.1.shape().dims().to_vec();
        if let Some(last) = shape.last_mut() {
            *last = out;
        }
        Ok((CpuStorage::F32(y), Shape::from(shape)))
    }

    /// `(dx, dW, db)` for `dy`.
    fn backward(x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (out, in_dim) = w.dims2()?;
        let rows = x.elem_count() / in_dim.max(1);
        let (xc, wc, dyc) = (x.contiguous()?, w.contiguous()?, dy.contiguous()?);
        let (xv, wv, dyv) = (View::of(&xc), View::of(&wc), View::of(&dyc));
        let (xs, ws, dys) = (
            xv.slice("linear x")?,
            wv.slice("linear W")?,
            dyv.slice("linear gradient")?,
        );
        if dys.len() != rows * out {
            candle_core::bail!(
                "linear: gradient {:?} for {rows} rows of {out} outputs",
                dy.shape()
            )
        }
        // dx = dy · W.
        let dx = product(
            rows,
            in_dim,
            out,
            Operand {
                data: dys,
                col: 1,
                row: out,
            },
            Operand {
                data: ws,
                col: 1,
                row: in_dim,
            },
            Vec::new(),
        )?;
        // dW = dyᵀ · x: element (j, r) of dyᵀ is dy[r·out + j].
        let dw = product(
            out,
            in_dim,
            rows,
            Operand {
                data: dys,
                col: out,
                row: 1,
            },
            Operand {
                data: xs,
                col: 1,
                row: in_dim,
            },
            Vec::new(),
        )?;
        let db = column_sums(dys, out);
        let dev = x.device();
        Ok((
            Tensor::from_vec(dx, x.shape(), dev)?,
            Tensor::from_vec(dw, (out, in_dim), dev)?,
            Tensor::from_vec(db, out, dev)?,
        ))
    }
}

/// Sums of the columns of a row-major matrix `cols` wide: per block of rows in parallel, the
/// blocks then added in order, so that the bits do not depend on the thread count.
fn column_sums(m: &[f32], cols: usize) -> Vec<f32> {
    let add = |mut acc: Vec<f32>, rows: &[f32]| {
        for row in rows.chunks_exact(cols) {
            for (a, v) in acc.iter_mut().zip(row) {
                *a += v;
            }
        }
        acc
    };
    if cols == 0 {
        return Vec::new();
    }
    let blocks: Vec<Vec<f32>> = m
        .par_chunks(cols * BIAS_ROWS)
        .map(|rows| add(vec![0f32; cols], rows))
        .collect();
    blocks
        .iter()
        .fold(vec![0f32; cols], |acc, block| add(acc, block))
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "linear-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Self::forward((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = Self::backward(x, w, grad_res)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "linear-bias-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Self::forward((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = Self::backward(x, w, grad_res)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::nn::few_query::tests::max_abs_diff;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        // A fixed, uneven pattern: no RNG dependence, no two equal rows.
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| ((i as u64 * 2_654_435_761 + seed * 97) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// The largest absolute difference (0 for empty tensors, which have no maximum).
    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        if a.elem_count() == 0 {
            return 0.0;
        }
        max_abs_diff(a, b)
    }

    #[test]
    fn matches_candles_ops_forward_and_backward() {
        // Small and odd sizes, a 3-d input, and one product big enough to run in parallel.
        for (lead, in_dim, out, bias) in [
            (vec![1], 1, 1, true),
            (vec![3, 5], 7, 11, true),
            (vec![2, 9], 16, 3, false),
            (vec![4, 75], 64, 96, true),
            (vec![0, 4], 8, 5, true),
        ] {
            let xshape: Vec<usize> = lead.iter().copied().chain([in_dim]).collect();
            let x = Var::from_tensor(&rand(&xshape, 1)).unwrap();
            let w = Var::from_tensor(&rand(&[out, in_dim], 2)).unwrap();
            let b = Var::from_tensor(&rand(&[out], 3)).unwrap();
            // Weighted sum: a gradient that differs from element to element.
            let yshape: Vec<usize> = lead.iter().copied().chain([out]).collect();
            let c = rand(&yshape, 4);
            let ours = if bias {
                x.apply_op3(&w, &b, LinearOp).unwrap()
            } else {
                x.apply_op2(&w, LinearOp).unwrap()
            };
            let theirs = x.broadcast_matmul(&w.t().unwrap()).unwrap();
            let theirs = if bias {
                theirs.broadcast_add(&b).unwrap()
            } else {
                theirs
            };
            assert!(max_diff(&ours, &theirs) < 1e-4, "{xshape:?} → {out}");
            let g1 = (&ours * &c).unwrap().sum_all().unwrap().backward().unwrap();
            if xshape.contains(&0) {
                // No rows: the weights' gradients are zero (candle's ops record none).
                for v in [&w, &b] {
                    if let Some(g) = g1.get(v) {
                        assert_eq!(
                            g.abs()
                                .unwrap()
                                .sum_all()
                                .unwrap()
                                .to_scalar::<f32>()
                                .unwrap(),
                            0.0
                        );
                    }
                }
                continue;
            }
            let g2 = (&theirs * &c)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let mut vars = vec![("x", &x), ("W", &w)];
            if bias {
                vars.push(("b", &b));
            }
            for (name, v) in vars {
                let (a, e) = (g1.get(v).unwrap(), g2.get(v).unwrap());
                assert!(max_diff(a, e) < 1e-3, "{name} of {xshape:?} → {out}");
            }
        }
    }

    #[test]
    fn a_broadcast_gradient_is_read_through_its_layout() {
        // `sum_all`'s gradient reaches the op as a stride-0 broadcast, not a contiguous buffer.
        let x = Var::from_tensor(&rand(&[6, 5], 5)).unwrap();
        let w = Var::from_tensor(&rand(&[4, 5], 6)).unwrap();
        let b = Var::from_tensor(&rand(&[4], 7)).unwrap();
        let g = x
            .apply_op3(&w, &b, LinearOp)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        // d/dx Σ (x Wᵀ + b) = Σ_j W[j, :] per row; d/dW = Σ_r x[r, :] per row; d/db = rows.
        let wsum = w.sum(0).unwrap();
        let xsum = x.sum(0).unwrap();
        for r in 0..6 {
            let dx = g.get(&x).unwrap().get(r).unwrap();
            assert!(max_diff(&dx, &wsum) < 1e-5);
        }
        for j in 0..4 {
            let dw = g.get(&w).unwrap().get(j).unwrap();
            assert!(max_diff(&dw, &xsum) < 1e-5);
        }
        assert_eq!(g.get(&b).unwrap().to_vec1::<f32>().unwrap(), vec![6.0; 4]);
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let x = rand(&[3, 5], 1);
        assert!(x.apply_op2(&rand(&[4, 6], 2), LinearOp).is_err());
        assert!(
            x.apply_op3(&rand(&[4, 5], 2), &rand(&[3], 3), LinearOp)
                .is_err()
        );
    }
}

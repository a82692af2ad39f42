//! The attention of training on the CPU, forward and backward, as one kernel per (batch, head).
//!
//! Each head's operands are read where they lie — in the fused `[q; k; v]` projection or in a
//! `(B, H, n, d)` tensor — so no head is split out into a copy; its `n × m` scores stay in a
//! per-thread scratch buffer (a quarter megabyte for 256 × 256, cache-resident) instead of
//! `(B, H, n, m)` tensors allocated, zeroed and page-faulted on every call; and the softmax
//! runs on a vectorizing `exp` (libm's, one call per score, was a tenth of a stage step). The
//! products go through the `gemm` crate one head at a time (heads spread over the threads).
//!
//! `unsafe` here: `gemm`'s raw-pointer interface (every operand bounded by
//! [`HeadLayout::check`] first) and the AVX2 instantiations of the row loops.
#![allow(unsafe_code)]

use std::cell::RefCell;

use candle_core::Result;
use gemm::Parallelism;
use rayon::prelude::*;

use super::fastmath::{LANES, exp_approx};

/// Where element `(b, h, i, c)` of an attention operand lies in its buffer:
/// `offset + b·batch + h·head + i·row + c`, the `c < head_dim` values of a row contiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeadLayout {
    /// Position of element (0, 0, 0, 0).
    pub offset: usize,
    /// Stride between batch entries.
    pub batch: usize,
    /// Stride between heads.
    pub head: usize,
    /// Stride between rows (positions).
    pub row: usize,
}

impl HeadLayout {
    /// Part `part` of a fused projection `(B, rows, parts·heads·d)` (`[q; k; v]` is 3 parts,
    /// heads concatenated in each: `b n (p h d)`).
    pub(crate) fn fused(part: usize, parts: usize, heads: usize, rows: usize, d: usize) -> Self {
        let width = parts * heads * d;
        Self {
            offset: part * heads * d,
            batch: rows * width,
            head: d,
            row: width,
        }
    }

    /// A contiguous `(B, heads, rows, d)` tensor.
    pub(crate) fn split(heads: usize, rows: usize, d: usize) -> Self {
        Self {
            offset: 0,
            batch: heads * rows * d,
            head: rows * d,
            row: d,
        }
    }

    fn base(&self, b: usize, h: usize) -> usize {
        self.offset + b * self.batch + h * self.head
    }

    /// Checks that every element of `rows` rows of every head lies inside `len`.
    fn check(&self, dims: &Dims, rows: usize, len: usize, what: &str) -> Result<()> {
        if dims.empty() {
            return Ok(());
        }
        let end = self.base(dims.batch - 1, dims.heads - 1) + (rows - 1) * self.row + dims.head_dim;
        if end > len || self.row < dims.head_dim {
            candle_core::bail!("attention: {what} layout {self:?} does not fit {len} values")
        }
        Ok(())
    }
}

/// The sizes of one attention call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    /// Batch entries.
    pub batch: usize,
    /// Heads.
    pub heads: usize,
    /// Queries per head.
    pub n: usize,
    /// Keys (and values) per head.
    pub m: usize,
    /// Width of a head.
    pub head_dim: usize,
}

impl Dims {
    /// Nothing to compute (and no row to address).
    fn empty(&self) -> bool {
        self.batch == 0 || self.heads == 0 || self.n == 0 || self.m == 0 || self.head_dim == 0
    }
}

/// An operand: its buffer and where each head lies in it.
#[derive(Clone, Copy)]
pub(crate) struct Src<'a> {
    /// The buffer.
    pub data: &'a [f32],
    /// Where the heads lie.
    pub layout: HeadLayout,
}

/// `softmax(q kᵀ · scale + mask) v` and its gradients; `mask` is additive, `n × m` row-major,
/// 0 where attention is allowed and −∞ where not.
pub(crate) struct Attention<'a> {
    /// The sizes.
    pub dims: Dims,
    /// Multiplies `q kᵀ`.
    pub scale: f32,
    /// The additive mask, if any.
    pub mask: Option<&'a [f32]>,
}

thread_local! {
    /// Scores / probabilities and their gradient, reused from call to call.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `dst (rows × cols, row stride dst_rs) = beta · lhs · rhs`, operands as (pointer, column
/// stride, row stride).
///
/// # Safety
/// Every element the strides address must lie inside its allocation, `dst` must not overlap
/// the operands.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    rows: usize,
    cols: usize,
    depth: usize,
    dst: *mut f32,
    dst_rs: usize,
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    beta: f32,
) {
    // SAFETY: the caller's contract; read_dst = false, so alpha and dst's old values are unused.
    unsafe {
        gemm::gemm(
            rows,
            cols,
            depth,
            dst,
            1,
            dst_rs as isize,
            false,
            lhs.0,
            lhs.1 as isize,
            lhs.2 as isize,
            rhs.0,
            rhs.1 as isize,
            rhs.2 as isize,
            0.0,
            beta,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

impl Attention<'_> {
    fn check(&self, q: &Src, k: &Src, v: &Src) -> Result<()> {
        let d = &self.dims;
        q.layout.check(d, d.n, q.data.len(), "query")?;
        k.layout.check(d, d.m, k.data.len(), "key")?;
        v.layout.check(d, d.m, v.data.len(), "value")?;
        if let Some(mask) = self.mask
            && mask.len() != d.n * d.m
        {
            candle_core::bail!(
                "attention: mask of {} values for {} × {} scores",
                mask.len(),
                d.n,
                d.m
            )
        }
        Ok(())
    }

    /// The probabilities of head `(b, h)` into `p` (`n × m`).
    fn probs(&self, q: &Src, k: &Src, b: usize, h: usize, p: &mut [f32]) {
        let Dims { n, m, head_dim, .. } = self.dims;
        let (qb, kb) = (q.layout.base(b, h), k.layout.base(b, h));
        // SAFETY: `check` bounded every row of every head; p holds n × m values.
        unsafe {
            product(
                n,
                m,
                head_dim,
                p.as_mut_ptr(),
                m,
                (q.data[qb..].as_ptr(), 1, q.layout.row),
                (k.data[kb..].as_ptr(), k.layout.row, 1),
                self.scale,
            );
        }
        softmax_rows(p, m, self.mask);
    }

    /// The output `(B, H, n, d)` written in `out_layout` into a buffer of `out_len` values.
    pub(crate) fn forward(
        &self,
        q: Src,
        k: Src,
        v: Src,
        out_layout: HeadLayout,
        out_len: usize,
    ) -> Result<Vec<f32>> {
        self.check(&q, &k, &v)?;
        let Dims {
            batch,
            heads,
            n,
            m,
            head_dim: d,
        } = self.dims;
        out_layout.check(&self.dims, n, out_len, "output")?;
        if self.dims.empty() {
            return Ok(vec![0f32; out_len]);
        }
        let heads_out: Vec<Vec<f32>> = (0..batch * heads)
            .into_par_iter()
            .map(|t| {
                let (b, h) = (t / heads, t % heads);
                let mut o = vec![0f32; n * d];
                SCRATCH.with_borrow_mut(|(p, _)| {
                    p.resize(n * m, 0.0);
                    self.probs(&q, &k, b, h, p);
                    let vb = v.layout.base(b, h);
                    // SAFETY: as in `probs`; o holds n × d values.
                    unsafe {
                        product(
                            n,
                            d,
                            m,
                            o.as_mut_ptr(),
                            d,
                            (p.as_ptr(), 1, m),
                            (v.data[vb..].as_ptr(), 1, v.layout.row),
                            1.0,
                        );
                    }
                });
                o
            })
            .collect();
        let mut out = vec![0f32; out_len];
        for (t, o) in heads_out.iter().enumerate() {
            scatter(&mut out, out_layout, t / heads, t % heads, o, d);
        }
        Ok(out)
    }

    /// The gradients `(dq, dk, dv)` for the output gradient `d_out`, each `(B, H, rows, d)`
    /// in `(B·H)` blocks of `rows × d` values, head after head: `[b][h][i][c]`.
    pub(crate) fn backward(&self, q: Src, k: Src, v: Src, d_out: Src) -> Result<[Vec<f32>; 3]> {
        self.check(&q, &k, &v)?;
        let Dims {
            batch,
            heads,
            n,
            m,
            head_dim: d,
        } = self.dims;
        d_out
            .layout
            .check(&self.dims, n, d_out.data.len(), "output gradient")?;
        if self.dims.empty() {
            let heads = batch * heads;
            return Ok([
                vec![0f32; heads * n * d],
                vec![0f32; heads * m * d],
                vec![0f32; heads * m * d],
            ]);
        }
        let grads: Vec<[Vec<f32>; 3]> = (0..batch * heads)
            .into_par_iter()
            .map(|t| {
                let (b, h) = (t / heads, t % heads);
                let (mut dq, mut dk, mut dv) =
                    (vec![0f32; n * d], vec![0f32; m * d], vec![0f32; m * d]);
                SCRATCH.with_borrow_mut(|(p, dp)| {
                    p.resize(n * m, 0.0);
                    dp.resize(n * m, 0.0);
                    self.probs(&q, &k, b, h, p);
                    let (qp, kp, vp, gp) = (
                        q.data[q.layout.base(b, h)..].as_ptr(),
                        k.data[k.layout.base(b, h)..].as_ptr(),
                        v.data[v.layout.base(b, h)..].as_ptr(),
                        d_out.data[d_out.layout.base(b, h)..].as_ptr(),
                    );
                    let (qr, kr, vr, gr) =
                        (q.layout.row, k.layout.row, v.layout.row, d_out.layout.row);
                    // SAFETY: `check` bounded every operand row; the scratch and gradient
                    // buffers hold the sizes written.
                    unsafe {
                        // dV = Pᵀ dO, dP = dO Vᵀ.
                        product(
                            m,
                            d,
                            n,
                            dv.as_mut_ptr(),
                            d,
                            (p.as_ptr(), m, 1),
                            (gp, 1, gr),
                            1.0,
                        );
                        product(n, m, d, dp.as_mut_ptr(), m, (gp, 1, gr), (vp, vr, 1), 1.0);
                    }
                    softmax_grad_rows(p, dp, m, self.scale);
                    // SAFETY: as above; dp now holds dS.
                    unsafe {
                        // dQ = dS K, dK = dSᵀ Q.
                        product(
                            n,
                            d,
                            m,
                            dq.as_mut_ptr(),
                            d,
                            (dp.as_ptr(), 1, m),
                            (kp, 1, kr),
                            1.0,
                        );
                        product(
                            m,
                            d,
                            n,
                            dk.as_mut_ptr(),
                            d,
                            (dp.as_ptr(), m, 1),
                            (qp, 1, qr),
                            1.0,
                        );
                    }
                });
                [dq, dk, dv]
            })
            .collect();
        let mut out = [
            Vec::with_capacity(batch * heads * n * d),
            Vec::with_capacity(batch * heads * m * d),
            Vec::with_capacity(batch * heads * m * d),
        ];
        for g in grads {
            for (o, part) in out.iter_mut().zip(g) {
                o.extend_from_slice(&part);
            }
        }
        Ok(out)
    }
}

/// Writes head `(b, h)`'s `rows × d` block `src` into `dst` at `layout`.
pub(crate) fn scatter(
    dst: &mut [f32],
    layout: HeadLayout,
    b: usize,
    h: usize,
    src: &[f32],
    d: usize,
) {
    let base = layout.base(b, h);
    for (i, row) in src.chunks_exact(d).enumerate() {
        let at = base + i * layout.row;
        dst[at..at + d].copy_from_slice(row);
    }
}

/// Each row of `s` (`m` wide) plus its mask row, then softmax; rows with nothing visible
/// become zeros. Also the inference softmax of [`super::attention`].
pub(crate) fn softmax_rows(s: &mut [f32], m: usize, mask: Option<&[f32]>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected.
        return unsafe { softmax_rows_avx2(s, m, mask) };
    }
    softmax_rows_plain(s, m, mask)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_rows_avx2(s: &mut [f32], m: usize, mask: Option<&[f32]>) {
    softmax_rows_plain(s, m, mask)
}

#[inline(always)]
fn softmax_rows_plain(s: &mut [f32], m: usize, mask: Option<&[f32]>) {
    for (i, row) in s.chunks_exact_mut(m).enumerate() {
        if let Some(mask) = mask {
            for (x, &a) in row.iter_mut().zip(&mask[i * m..(i + 1) * m]) {
                *x += a;
            }
        }
        let mut lanes = [f32::NEG_INFINITY; LANES];
        let mut chunks = row.chunks_exact(LANES);
        for c in &mut chunks {
            for (l, &x) in lanes.iter_mut().zip(c) {
                *l = if x > *l { x } else { *l };
            }
        }
        let max = chunks
            .remainder()
            .iter()
            .chain(&lanes)
            .fold(f32::NEG_INFINITY, |a, &x| if x > a { x } else { a });
        if max == f32::NEG_INFINITY {
            row.fill(0.0);
            continue;
        }
        let mut sums = [0f32; LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for (l, x) in sums.iter_mut().zip(c.iter_mut()) {
                // A masked score is exactly 0, as with a libm exp.
                let e = exp_approx(*x - max);
                *x = if *x == f32::NEG_INFINITY { 0.0 } else { e };
                *l += *x;
            }
        }
        let mut sum: f32 = sums.iter().sum();
        for x in chunks.into_remainder() {
            let e = exp_approx(*x - max);
            *x = if *x == f32::NEG_INFINITY { 0.0 } else { e };
            sum += *x;
        }
        let inv = 1.0 / sum;
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
}

/// `dS = P ⊙ (dP − Σ_j P ⊙ dP) · scale`, row by row, into `dp`.
fn softmax_grad_rows(p: &[f32], dp: &mut [f32], m: usize, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected.
        return unsafe { softmax_grad_rows_avx2(p, dp, m, scale) };
    }
    softmax_grad_rows_plain(p, dp, m, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_grad_rows_avx2(p: &[f32], dp: &mut [f32], m: usize, scale: f32) {
    softmax_grad_rows_plain(p, dp, m, scale)
}

#[inline(always)]
fn softmax_grad_rows_plain(p: &[f32], dp: &mut [f32], m: usize, scale: f32) {
    for (pr, dr) in p.chunks_exact(m).zip(dp.chunks_exact_mut(m)) {
        let mut lanes = [0f32; LANES];
        let (pc, dc) = (pr.chunks_exact(LANES), dr.chunks_exact(LANES));
        let tail: f32 = pc
            .remainder()
            .iter()
            .zip(dc.remainder())
            .map(|(a, b)| a * b)
            .sum();
        for (a, b) in pc.zip(dc) {
            for ((l, &x), &y) in lanes.iter_mut().zip(a).zip(b) {
                *l += x * y;
            }
        }
        let dot = lanes.iter().sum::<f32>() + tail;
        for (x, &y) in dr.iter_mut().zip(pr) {
            *x = y * (*x - dot) * scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{D, Device, IndexOp, Tensor, Var};

    use super::*;
    use crate::nn::few_query::tests::max_abs_diff;
    use crate::nn::{causal_mask, merge_heads, split_heads};

    /// Kernel against candle's primitive ops and autograd, for self-attention over a fused
    /// `[q; k; v]` projection (masked or not) and cross-attention of `(B, H, rows, d)` tensors.
    fn check(batch: usize, heads: usize, n: usize, m: usize, d: usize, causal: bool) {
        let dev = Device::Cpu;
        let scale = 1.0 / (d as f64).sqrt();
        let mask = causal
            .then(|| causal_mask(n, 0, 0, &dev).unwrap())
            .flatten();
        let mask_vals = mask
            .as_ref()
            .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let (q, k, v) = if n == m {
            let qkv = Tensor::randn(0f32, 1.0, (batch, n, 3 * heads * d), &dev).unwrap();
            let p = split_heads(&qkv, 3, heads).unwrap();
            (p[0].clone(), p[1].clone(), p[2].clone())
        } else {
            let r = |rows| Tensor::randn(0f32, 1.0, (batch, heads, rows, d), &dev).unwrap();
            (r(n), r(m), r(m))
        };
        let g = Tensor::randn(0f32, 1.0, (batch, heads, n, d), &dev).unwrap();

        // Reference: candle ops with autograd.
        let (qv, kv, vv) = (
            Var::from_tensor(&q).unwrap(),
            Var::from_tensor(&k).unwrap(),
            Var::from_tensor(&v).unwrap(),
        );
        let scores = (qv.matmul(&kv.t().unwrap()).unwrap() * scale).unwrap();
        let scores = match &mask {
            Some(mk) => scores.broadcast_add(mk).unwrap(),
            None => scores,
        };
        let out = candle_nn::ops::softmax(&scores, D::Minus1)
            .unwrap()
            .matmul(&vv)
            .unwrap();
        let grads = (&out * &g).unwrap().sum_all().unwrap().backward().unwrap();

        // Kernel: self-attention reads the fused projection, cross-attention split tensors.
        let dims = Dims {
            batch,
            heads,
            n,
            m,
            head_dim: d,
        };
        let att = Attention {
            dims,
            scale: scale as f32,
            mask: mask_vals.as_deref(),
        };
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (fused, qf, kf, vf) = if n == m {
            let cat = Tensor::cat(
                &[
                    merge_heads(&q).unwrap(),
                    merge_heads(&k).unwrap(),
                    merge_heads(&v).unwrap(),
                ],
                D::Minus1,
            )
            .unwrap();
            (flat(&cat), vec![], vec![], vec![])
        } else {
            (vec![], flat(&q), flat(&k), flat(&v))
        };
        let (qs, ks, vs) = if n == m {
            let src = |part| Src {
                data: &fused,
                layout: HeadLayout::fused(part, 3, heads, n, d),
            };
            (src(0), src(1), src(2))
        } else {
            (
                Src {
                    data: &qf,
                    layout: HeadLayout::split(heads, n, d),
                },
                Src {
                    data: &kf,
                    layout: HeadLayout::split(heads, m, d),
                },
                Src {
                    data: &vf,
                    layout: HeadLayout::split(heads, m, d),
                },
            )
        };
        let out_layout = HeadLayout::fused(0, 1, heads, n, d);
        let o = att
            .forward(qs, ks, vs, out_layout, batch * n * heads * d)
            .unwrap();
        let o = Tensor::from_vec(o, (batch, n, heads * d), &dev).unwrap();
        let want = merge_heads(&out).unwrap();
        assert!(
            max_abs_diff(&o, &want) < 1e-5,
            "forward {}",
            max_abs_diff(&o, &want)
        );

        let gm = flat(&merge_heads(&g).unwrap());
        let gs = Src {
            data: &gm,
            layout: HeadLayout::fused(0, 1, heads, n, d),
        };
        let [dq, dk, dv] = att.backward(qs, ks, vs, gs).unwrap();
        for (got, var, rows, name) in [(dq, &qv, n, "q"), (dk, &kv, m, "k"), (dv, &vv, m, "v")] {
            let got = Tensor::from_vec(got, (batch, heads, rows, d), &dev).unwrap();
            let want = grads.get(var).unwrap();
            let err = max_abs_diff(&got, want);
            let size = want
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                err < 1e-5 * size.max(1.0),
                "d{name}: {err} (largest {size})"
            );
        }
        // A masked key gets no gradient from the query rows that cannot see it.
        if causal {
            let got = grads.get(&kv).unwrap().i((0, 0, m - 1)).unwrap();
            assert!(
                got.abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.0
            );
        }
    }

    #[test]
    fn self_attention_matches_candle_ops_and_autograd() {
        check(2, 3, 17, 17, 8, true);
        check(1, 2, 33, 33, 16, false);
    }

    #[test]
    fn cross_attention_matches_candle_ops_and_autograd() {
        check(2, 2, 5, 19, 8, false);
        check(3, 1, 1, 7, 4, false);
    }

    #[test]
    fn empty_sizes_give_zeros() {
        let att = Attention {
            dims: Dims {
                batch: 2,
                heads: 1,
                n: 3,
                m: 0,
                head_dim: 4,
            },
            scale: 1.0,
            mask: None,
        };
        let q = Src {
            data: &[0.5; 24],
            layout: HeadLayout::split(1, 3, 4),
        };
        let kv = Src {
            data: &[],
            layout: HeadLayout::split(1, 0, 4),
        };
        let out = att
            .forward(q, kv, kv, HeadLayout::split(1, 3, 4), 24)
            .unwrap();
        assert_eq!(out, vec![0.0; 24]);
        let [dq, dk, dv] = att.backward(q, kv, kv, q).unwrap();
        assert_eq!((dq.len(), dk.len(), dv.len()), (24, 0, 0));
    }

    #[test]
    fn softmax_rows_are_distributions_and_masked_scores_zero() {
        let m = 37;
        let mut s: Vec<f32> = (0..3 * m)
            .map(|i| ((i * 7919) % 101) as f32 * 0.37 - 15.0)
            .collect();
        let mut mask = vec![0f32; 3 * m];
        mask[5..m].fill(f32::NEG_INFINITY);
        mask[m..2 * m].fill(f32::NEG_INFINITY);
        softmax_rows(&mut s, m, Some(&mask));
        assert!(s[5..m].iter().all(|&x| x == 0.0));
        assert!((s[..5].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(
            s[m..2 * m].iter().all(|&x| x == 0.0),
            "a row with nothing visible"
        );
        assert!((s[2 * m..].iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }
}

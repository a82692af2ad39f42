//! Products `x · W` with few rows (1–16) for weights kept as `Wᵀ` `(in, out)` row-major —
//! the layout candle's GEMM reads fastest for its many-row products (an f32 `Wᵀ` kept as a
//! view of `W` `[out, in]` made the encoder's products pack a transposed operand on every
//! call: 25% of an encoder pass) — in f16 or f32.
//!
//! candle's GEMM packs the whole weight for every call, 2.5× the time of reading it once
//! at one row and 9× at four (`tessera bench`, f16). Here the weight's rows are cut into
//! slices, one task each, so every task streams one contiguous stretch of memory (cutting the
//! columns instead made strided reads that the prefetchers did not follow: slower than
//! candle). A task reads eight weights at a time (f16 widened with F16C) and adds them, times
//! each input row's entry, into its own f32 sums over all columns (L1/L2); the slices' sums
//! are added at the end. Every weight is read once whatever the number of rows. Sums run in
//! f32 in a fixed order, so results are deterministic and within rounding of the f32 product
//! of the same values.

use half::f16;
use rayon::prelude::*;

/// A weight element type the kernels read: f16 or f32.
pub trait Weight: Copy + Send + Sync + 'static {
    /// The value as f32.
    fn to_f32(self) -> f32;
    /// The AVX2 kernel for this type, where the CPU has what it needs.
    fn pick() -> Kernel<Self>;
}

impl Weight for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }

    fn pick() -> Kernel<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                return block_avx2_f16;
            }
        }
        block_generic
    }
}

impl Weight for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    fn pick() -> Kernel<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return block_avx2_f32;
            }
        }
        block_generic
    }
}

/// `y = x · w` for `x` `(rows, k)` f32 and `w` `(k, out)` (f16 or f32), both row-major;
/// returns `(rows, out)` f32.
pub fn matmul_xw<T: Weight>(x: &[f32], rows: usize, k: usize, w: &[T], out: usize) -> Vec<f32> {
    assert_eq!(x.len(), rows * k);
    assert_eq!(w.len(), k * out);
    // About four slices of the weight's rows per thread, each a multiple of 4 rows, so that
    // every task streams one contiguous stretch of memory.
    let threads = rayon::current_num_threads().max(1);
    let slice = (k.div_ceil(4 * threads).div_ceil(4) * 4).max(4);
    let tasks = k.div_ceil(slice);
    let mut parts = vec![0f32; tasks * rows * out];
    let kernel = T::pick();
    parts
        .par_chunks_mut(rows * out)
        .enumerate()
        .for_each(|(t, acc)| {
            let i0 = t * slice;
            let i1 = (i0 + slice).min(k);
            kernel(x, rows, k, i0, i1, w, out, acc);
        });
    let (first, rest) = parts.split_at_mut(rows * out);
    for part in rest.chunks(rows * out) {
        for (a, p) in first.iter_mut().zip(part) {
            *a += p;
        }
    }
    parts.truncate(rows * out);
    parts
}

/// Adds the products of weight rows `i0..i1` into `acc` (`rows × out`).
pub type Kernel<T> = fn(&[f32], usize, usize, usize, usize, &[T], usize, &mut [f32]);

#[allow(clippy::too_many_arguments)]
fn block_generic<T: Weight>(
    x: &[f32],
    rows: usize,
    k: usize,
    i0: usize,
    i1: usize,
    w: &[T],
    out: usize,
    acc: &mut [f32],
) {
    let mut wf = vec![0f32; out];
    for i in i0..i1 {
        for (d, s) in wf.iter_mut().zip(&w[i * out..(i + 1) * out]) {
            *d = s.to_f32();
        }
        for r in 0..rows {
            let xv = x[r * k + i];
            for (a, b) in acc[r * out..(r + 1) * out].iter_mut().zip(&wf) {
                *a = xv.mul_add(*b, *a);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn block_avx2_f16(
    x: &[f32],
    rows: usize,
    k: usize,
    i0: usize,
    i1: usize,
    w: &[f16],
    out: usize,
    acc: &mut [f32],
) {
    // SAFETY: only selected by `pick` after the CPU reported AVX2, FMA and F16C.
    #[allow(unsafe_code)]
    unsafe {
        avx2::block_f16(x, rows, k, i0, i1, w, out, acc)
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn block_avx2_f32(
    x: &[f32],
    rows: usize,
    k: usize,
    i0: usize,
    i1: usize,
    w: &[f32],
    out: usize,
    acc: &mut [f32],
) {
    // SAFETY: only selected by `pick` after the CPU reported AVX2 and FMA.
    #[allow(unsafe_code)]
    unsafe {
        avx2::block_f32(x, rows, k, i0, i1, w, out, acc)
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use super::Weight;
    use half::f16;
    use std::arch::x86_64::*;

    macro_rules! block {
        ($name:ident, $t:ty, $features:literal, $load8:ident) => {
            /// Four weight rows at a time: each group of eight sums is loaded once, takes four FMAs
            /// and is stored once. Columns past the last multiple of 8 and rows past the last
            /// multiple of 4 go through scalar code.
            ///
            /// # Safety
            /// The CPU must support the features named in `target_feature`.
            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn $name(
                x: &[f32],
                rows: usize,
                k: usize,
                i0: usize,
                i1: usize,
                w: &[$t],
                out: usize,
                acc: &mut [f32],
            ) {
                assert!(x.len() == rows * k && w.len() == k * out && acc.len() == rows * out);
                assert!(i0 <= i1 && i1 <= k);
                let groups = out / 8;
                let mut i = i0;
                while i + 4 <= i1 {
                    let base = [i, i + 1, i + 2, i + 3].map(|ii| ii * out);
                    // SAFETY: rows `i..i + 4` lie inside `w` (`i + 4 ≤ i1 ≤ k`, asserted above).
                    let wp = base.map(|b| unsafe { w.as_ptr().add(b) });
                    for r in 0..rows {
                        let xs = [0, 1, 2, 3].map(|d| _mm256_set1_ps(x[r * k + i + d]));
                        let ap = acc[r * out..(r + 1) * out].as_mut_ptr();
                        for g in 0..groups {
                            let c = g * 8;
                            // SAFETY: `c + 8 ≤ out`, so each read stays in its weight row and the
                            // sums in `acc`'s row `r`; prefetches do not fault.
                            unsafe {
                                if r == 0 && c % 32 == 0 {
                                    for p in wp {
                                        _mm_prefetch::<_MM_HINT_T0>(
                                            p.wrapping_add(c + 4 * out).cast(),
                                        );
                                    }
                                }
                                let mut s = _mm256_loadu_ps(ap.add(c));
                                for (xd, p) in xs.iter().zip(wp) {
                                    let h = $load8(p.add(c));
                                    s = _mm256_fmadd_ps(*xd, h, s);
                                }
                                _mm256_storeu_ps(ap.add(c), s);
                            }
                        }
                        let a = &mut acc[r * out..(r + 1) * out];
                        for c in groups * 8..out {
                            for d in 0..4 {
                                a[c] = x[r * k + i + d].mul_add(w[base[d] + c].to_f32(), a[c]);
                            }
                        }
                    }
                    i += 4;
                }
                for i in i..i1 {
                    let base = i * out;
                    for r in 0..rows {
                        let xv = x[r * k + i];
                        let a = &mut acc[r * out..(r + 1) * out];
                        for (c, s) in a.iter_mut().enumerate() {
                            *s = xv.mul_add(w[base + c].to_f32(), *s);
                        }
                    }
                }
            }
        };
    }

    /// Eight f16 weights widened to f32.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; `p..p + 8` readable.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load8_f16(p: *const f16) -> __m256 {
        // SAFETY: the caller's contract.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }

    /// Eight f32 weights.
    ///
    /// # Safety
    /// AVX2 and FMA; `p..p + 8` readable.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load8_f32(p: *const f32) -> __m256 {
        // SAFETY: the caller's contract.
        unsafe { _mm256_loadu_ps(p) }
    }

    block!(block_f16, f16, "avx2,fma,f16c", load8_f16);
    block!(block_f32, f32, "avx2,fma", load8_f32);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_and_f32_weights_match_the_plain_product() {
        for (rows, k, out) in [
            (1, 64, 48),
            (3, 37, 70),
            (4, 129, 200),
            (16, 8, 9),
            (5, 1, 1),
        ] {
            let x: Vec<f32> = (0..rows * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
                .collect();
            let w: Vec<f16> = (0..k * out)
                .map(|i| f16::from_f32(((i * 11 % 17) as f32 - 8.0) / 7.0))
                .collect();
            let y = matmul_xw(&x, rows, k, &w, out);
            // The same values as f32 weights (the f32 kernel).
            let w32: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
            let y32 = matmul_xw(&x, rows, k, &w32, out);
            let mut g = vec![0f32; rows * out];
            block_generic(&x, rows, k, 0, k, &w, out, &mut g);
            for r in 0..rows {
                for o in 0..out {
                    let want: f32 = (0..k).map(|i| x[r * k + i] * w[i * out + o].to_f32()).sum();
                    let tol = 1e-4 * (1.0 + want.abs());
                    assert!(
                        (y[r * out + o] - want).abs() < tol,
                        "{rows}×{k}×{out} [{r},{o}]"
                    );
                    assert!((g[r * out + o] - want).abs() < tol, "generic [{r},{o}]");
                    assert!((y32[r * out + o] - want).abs() < tol, "f32 [{r},{o}]");
                }
            }
        }
    }
}

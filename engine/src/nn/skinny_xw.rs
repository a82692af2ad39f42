//! Products `x · W` with few rows (1–16) for weights kept as `Wᵀ` `(in, out)` row-major —
//! the layout candle's GEMM reads fastest for its many-row products (an f32 `Wᵀ` kept as a
//! view of `W` `[out, in]` made the encoder's products pack a transposed operand on every
//! call: 25% of an encoder pass) — in f16 or f32.
//!
//! candle's GEMM packs the whole weight for every call, 2.5× the time of reading it once
//! at one row and 9× at four (`tessera bench`, f16). Here the weight's rows are cut into
//! slices, one task each, so every task streams one contiguous stretch of memory (cutting the
//! columns instead made strided reads that the prefetchers did not follow: slower than
//! candle). A task reads eight (AVX2) or sixteen (AVX-512) weights of four rows at a time
//! (f16 widened with F16C) and adds them, times each input row's entry, into its own f32 sums
//! over all columns (L1/L2); the slices' sums are added at the end. Both kernels add in the
//! same order, so they give the same bits. Every weight is read once whatever the number of rows. Sums run in
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
            if avx512::available() {
                return block_avx512_f16;
            }
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
            if avx512::available() {
                return block_avx512_f32;
            }
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
    matmul_xw_with(T::pick(), x, rows, k, w, out)
}

/// [`matmul_xw`] through the given kernel.
fn matmul_xw_with<T: Weight>(
    kernel: Kernel<T>,
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[T],
    out: usize,
) -> Vec<f32> {
    assert_eq!(x.len(), rows * k);
    assert_eq!(w.len(), k * out);
    // About four slices of the weight's rows per thread, each a multiple of 4 rows, so that
    // every task streams one contiguous stretch of memory.
    let threads = rayon::current_num_threads().max(1);
    let slice = (k.div_ceil(4 * threads).div_ceil(4) * 4).max(4);
    let tasks = k.div_ceil(slice);
    let mut parts = vec![0f32; tasks * rows * out];
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
#[allow(clippy::too_many_arguments)]
fn block_avx512_f16(
    x: &[f32],
    rows: usize,
    k: usize,
    i0: usize,
    i1: usize,
    w: &[f16],
    out: usize,
    acc: &mut [f32],
) {
    // SAFETY: only selected by `pick` after `avx512::available`.
    #[allow(unsafe_code)]
    unsafe {
        avx512::block_f16(x, rows, k, i0, i1, w, out, acc)
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn block_avx512_f32(
    x: &[f32],
    rows: usize,
    k: usize,
    i0: usize,
    i1: usize,
    w: &[f32],
    out: usize,
    acc: &mut [f32],
) {
    // SAFETY: only selected by `pick` after `avx512::available`.
    #[allow(unsafe_code)]
    unsafe {
        avx512::block_f32(x, rows, k, i0, i1, w, out, acc)
    }
}

/// The AVX-512 kernels: four weight rows at a time are loaded into registers once per group
/// of 16 columns and added into the sums of up to four input rows (more rows go four at a
/// time over the same four weight rows, by then in L1). The AVX2 kernel's order — each input
/// row streaming the four weight rows again — read them from L2 at four rows and made a batch-4
/// step 1.8× its weight read.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    use super::Weight;
    use half::f16;
    use std::arch::x86_64::*;

    /// Whether the CPU has what these kernels use.
    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }

    macro_rules! block {
        ($name:ident, $rows:ident, $t:ty, $load:ident) => {
            /// Adds the products of weight rows `i0..i1` into `acc`; weight rows past the last
            /// multiple of 4 go through scalar code.
            ///
            /// # Safety
            /// The CPU must support AVX512F, AVX512BW and AVX512VL.
            #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
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
                let mut i = i0;
                while i + 4 <= i1 {
                    let mut r = 0;
                    while r < rows {
                        let n = (rows - r).min(4);
                        // SAFETY: rows `i..i + 4` lie in `w`, rows `r..r + n` in `x` and `acc`
                        // (asserted above); the features are this function's.
                        unsafe {
                            match n {
                                1 => $rows::<1>(x, r, k, i, w, out, acc),
                                2 => $rows::<2>(x, r, k, i, w, out, acc),
                                3 => $rows::<3>(x, r, k, i, w, out, acc),
                                _ => $rows::<4>(x, r, k, i, w, out, acc),
                            }
                        }
                        r += n;
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

            /// Weight rows `i..i + 4` times input rows `r0..r0 + N`, added into their sums;
            /// the first group of input rows prefetches the next four weight rows.
            ///
            /// # Safety
            /// AVX512F/BW/VL; `i + 4 ≤ k`, `r0 + N ≤ rows` for the slices' shapes.
            #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
            #[inline]
            #[allow(clippy::too_many_arguments)]
            unsafe fn $rows<const N: usize>(
                x: &[f32],
                r0: usize,
                k: usize,
                i: usize,
                w: &[$t],
                out: usize,
                acc: &mut [f32],
            ) {
                debug_assert!((i + 4) * out <= w.len() && (r0 + N) * out <= acc.len());
                let mut xs = [[_mm512_setzero_ps(); 4]; N];
                for (r, xr) in xs.iter_mut().enumerate() {
                    for (d, v) in xr.iter_mut().enumerate() {
                        *v = _mm512_set1_ps(x[(r0 + r) * k + i + d]);
                    }
                }
                let w0 = w.as_ptr();
                // SAFETY (all pointer arithmetic below): columns `c..c + 16` (masked past
                // `out`) of weight rows `i..i + 4` and of sums rows `r0..r0 + N`, inside the
                // slices by the caller's contract; prefetches do not fault.
                let wp = [0, 1, 2, 3].map(|d| w0.wrapping_add((i + d) * out));
                let ap = acc.as_mut_ptr();
                let prefetch = r0 == 0;
                let line = 64 / std::mem::size_of::<$t>();
                let groups = out / 16;
                for g in 0..groups {
                    let c = g * 16;
                    unsafe {
                        if prefetch && c % line == 0 {
                            for p in wp {
                                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(c + 4 * out).cast());
                            }
                        }
                        let ws = [
                            $load(wp[0].add(c), 0xffff),
                            $load(wp[1].add(c), 0xffff),
                            $load(wp[2].add(c), 0xffff),
                            $load(wp[3].add(c), 0xffff),
                        ];
                        for (r, xr) in xs.iter().enumerate() {
                            let a = ap.add((r0 + r) * out + c);
                            let mut s = _mm512_loadu_ps(a);
                            for d in 0..4 {
                                s = _mm512_fmadd_ps(xr[d], ws[d], s);
                            }
                            _mm512_storeu_ps(a, s);
                        }
                    }
                }
                let c = groups * 16;
                if c < out {
                    let m = ((1u32 << (out - c)) - 1) as __mmask16;
                    unsafe {
                        let ws = [
                            $load(wp[0].add(c), m),
                            $load(wp[1].add(c), m),
                            $load(wp[2].add(c), m),
                            $load(wp[3].add(c), m),
                        ];
                        for (r, xr) in xs.iter().enumerate() {
                            let a = ap.add((r0 + r) * out + c);
                            let mut s = _mm512_maskz_loadu_ps(m, a);
                            for d in 0..4 {
                                s = _mm512_fmadd_ps(xr[d], ws[d], s);
                            }
                            _mm512_mask_storeu_ps(a, m, s);
                        }
                    }
                }
            }
        };
    }

    /// Sixteen f16 weights widened to f32; lanes outside `m` read nothing and are zero.
    ///
    /// # Safety
    /// AVX512F/BW/VL; the lanes in `m` of `p..p + 16` readable.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn load16_f16(p: *const f16, m: __mmask16) -> __m512 {
        // SAFETY: the caller's contract.
        unsafe { _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p.cast())) }
    }

    /// Sixteen f32 weights; lanes outside `m` read nothing and are zero.
    ///
    /// # Safety
    /// AVX512F; the lanes in `m` of `p..p + 16` readable.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn load16_f32(p: *const f32, m: __mmask16) -> __m512 {
        // SAFETY: the caller's contract.
        unsafe { _mm512_maskz_loadu_ps(m, p) }
    }

    block!(block_f16, rows_f16, f16, load16_f16);
    block!(block_f32, rows_f32, f32, load16_f32);
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
            (7, 12, 33),
            (2, 40, 16),
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
            // Every kernel this CPU runs, not only the one `pick` prefers.
            let mut others: Vec<(&str, Vec<f32>, Vec<f32>)> = Vec::new();
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
                {
                    others.push((
                        "avx2",
                        matmul_xw_with(block_avx2_f16, &x, rows, k, &w, out),
                        matmul_xw_with(block_avx2_f32, &x, rows, k, &w32, out),
                    ));
                }
                if avx512::available() {
                    others.push((
                        "avx512",
                        matmul_xw_with(block_avx512_f16, &x, rows, k, &w, out),
                        matmul_xw_with(block_avx512_f32, &x, rows, k, &w32, out),
                    ));
                }
            }
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
                    for (name, h, h32) in &others {
                        let (h, h32) = (h[r * out + o], h32[r * out + o]);
                        // The kernels add in one order: the same bits whichever runs.
                        let (first, first32) = (others[0].1[r * out + o], others[0].2[r * out + o]);
                        assert_eq!(h.to_bits(), first.to_bits(), "{name} f16 [{r},{o}]");
                        assert_eq!(h32.to_bits(), first32.to_bits(), "{name} f32 [{r},{o}]");
                        assert!(
                            (h - want).abs() < tol,
                            "{name} f16 {rows}×{k}×{out} [{r},{o}]"
                        );
                        assert!((h32 - want).abs() < tol, "{name} f32 [{r},{o}]");
                    }
                }
            }
        }
    }
}

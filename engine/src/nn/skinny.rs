//! Products `x · Wᵀ` with few rows (1–16): decoding one or several candidates. candle's GEMM
//! packs the whole weight for 2–16 rows and costs 3–6× a single-row product, and takes a single
//! row through a one-thread GEMV that streams the weight at about half the machine's memory
//! rate. Here each weight row is read once and dotted with every input row while it sits in
//! L1, and the output columns are split over the threads, so a step runs near the memory wall
//! (`tessera bench` prints the ratio). Summation order differs from the GEMM's, so results
//! agree to rounding (not bit for bit); they are deterministic for a given build.

use rayon::prelude::*;

/// Output columns per parallel task.
const CHUNK: usize = 32;

/// `y = x · wᵀ` for `x` `(rows, k)` and `w` `(out, k)`, both row-major; returns `(rows, out)`.
pub fn matmul_xwt(x: &[f32], rows: usize, k: usize, w: &[f32], out: usize) -> Vec<f32> {
    debug_assert_eq!(x.len(), rows * k);
    debug_assert_eq!(w.len(), out * k);
    let kernel = pick_kernel();
    by_columns(
        rows,
        out,
        || (),
        |_, o, y| kernel(x, k, &w[o * k..(o + 1) * k], y),
    )
}

/// The `(rows, out)` product whose output column `o` (every row) `column(scratch, o, y)`
/// writes into `y`: columns go to the threads [`CHUNK`] at a time, each task with its own
/// `scratch()`, and are transposed into rows at the end.
pub(super) fn by_columns<S>(
    rows: usize,
    out: usize,
    scratch: impl Fn() -> S + Sync,
    column: impl Fn(&mut S, usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut yt = vec![0f32; out * rows];
    yt.par_chunks_mut(rows * CHUNK)
        .enumerate()
        .for_each(|(c, block)| {
            let mut s = scratch();
            for (j, y) in block.chunks_mut(rows).enumerate() {
                column(&mut s, c * CHUNK + j, y);
            }
        });
    transpose(&yt, rows, out)
}

/// Bytes of one ggml `Q8_0` block: an f16 scale, then 32 signed bytes.
pub const Q8_0_BLOCK_BYTES: usize = 34;

/// `y = x · wᵀ` for `x` `(rows, k)` and `w` `(out, k)` in ggml's `Q8_0` blocks (row-major,
/// `k / 32` blocks per row, as `QTensor::data` gives them); returns `(rows, out)`.
///
/// With AVX2, as ggml computes it — every input row rounded to `Q8_0` too, integer dot
/// products per block — but each weight block is loaded once and dotted with every input
/// row while it sits in a register, and each output keeps its sum in a vector register until
/// the end (ggml's kernel runs a full dot product per row and column: at 4 rows it is 4× this
/// one's time). Without AVX2, each weight row is unpacked to f32 and goes through the f32
/// kernel.
pub fn matmul_xwt_q8_0(x: &[f32], rows: usize, k: usize, w: &[u8], out: usize) -> Vec<f32> {
    q8_0_product(x, rows, k, w, out, true)
}

/// [`matmul_xwt_q8_0`], with the AVX-512 kernel allowed or not (so tests reach both).
fn q8_0_product(x: &[f32], rows: usize, k: usize, w: &[u8], out: usize, wide: bool) -> Vec<f32> {
    debug_assert_eq!(x.len(), rows * k);
    debug_assert_eq!(k % 32, 0);
    let row_bytes = k / 32 * Q8_0_BLOCK_BYTES;
    debug_assert_eq!(w.len(), out * row_bytes);
    #[cfg(target_arch = "x86_64")]
    {
        if (1..=16).contains(&rows)
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            let xq = quantize_rows_q8_0(x, rows, k);
            if wide && avx512::available() {
                let xu = avx512::RowsQ8U::new(&xq);
                return by_columns(
                    rows,
                    out,
                    || (),
                    |_, o, y| {
                        // SAFETY: `available` reported the features; the slices are the sizes
                        // `dots_q8_0` reads (checked there).
                        #[allow(unsafe_code)]
                        unsafe {
                            avx512::dots_q8_0(&xu, &w[o * row_bytes..(o + 1) * row_bytes], y)
                        };
                    },
                );
            }
            return by_columns(
                rows,
                out,
                || (),
                |_, o, y| {
                    // SAFETY: the CPU reported AVX2 and FMA; the slices are the sizes
                    // `dots_q8_0` reads (checked there).
                    #[allow(unsafe_code)]
                    unsafe {
                        avx2::dots_q8_0(&xq, &w[o * row_bytes..(o + 1) * row_bytes], y)
                    };
                },
            );
        }
    }
    let (unpack, kernel) = (pick_unpack(), pick_kernel());
    by_columns(
        rows,
        out,
        || vec![0f32; k],
        |wf, o, y| {
            unpack(&w[o * row_bytes..(o + 1) * row_bytes], wf);
            kernel(x, k, wf, y);
        },
    )
}

/// `(out, rows)` → `(rows, out)`.
fn transpose(yt: &[f32], rows: usize, out: usize) -> Vec<f32> {
    let mut y = vec![0f32; rows * out];
    for (o, col) in yt.chunks(rows).enumerate() {
        for (r, v) in col.iter().enumerate() {
            y[r * out + o] = *v;
        }
    }
    y
}

/// Input rows rounded to `Q8_0` as ggml's `quantize_row_q8_0` does: per block of 32, the
/// scale `d = max|x| / 127` and `q = round(x / d)`.
struct RowsQ8_0 {
    rows: usize,
    blocks: usize,
    /// `rows × blocks` scales.
    d: Vec<f32>,
    /// `rows × blocks × 32` values.
    q: Vec<i8>,
}

fn quantize_rows_q8_0(x: &[f32], rows: usize, k: usize) -> RowsQ8_0 {
    let blocks = k / 32;
    let mut d = vec![0f32; rows * blocks];
    let mut q = vec![0i8; rows * k];
    for ((xb, db), qb) in x.chunks_exact(32).zip(&mut d).zip(q.chunks_exact_mut(32)) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        // ggml stores the scale in f16; the products use that rounded value.
        *db = half::f16::from_f32(scale).to_f32();
        for (o, v) in qb.iter_mut().zip(xb) {
            *o = (v * inv).round() as i8;
        }
    }
    RowsQ8_0 { rows, blocks, d, q }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use super::{Q8_0_BLOCK_BYTES, RowsQ8_0};
    use std::arch::x86_64::*;

    /// `y[r] = Σ_b d_w,b · d_x,r,b · (q_w,b · q_x,r,b)` over the blocks of one weight row.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dots_q8_0(x: &RowsQ8_0, w: &[u8], y: &mut [f32]) {
        match x.rows {
            1 => dots::<1, 4>(x, w, y),
            2 => dots::<2, 4>(x, w, y),
            3 => dots::<3, 2>(x, w, y),
            4 => dots::<4, 2>(x, w, y),
            5..=8 => dots::<8, 1>(x, w, y),
            _ => dots::<16, 1>(x, w, y),
        }
    }

    /// Up to `R` rows (`x.rows ≤ R`), accumulators in registers for small `R`; blocks go
    /// round `U` sets of accumulators, so that few rows do not wait on one chain of FMAs.
    #[target_feature(enable = "avx2,fma")]
    fn dots<const R: usize, const U: usize>(x: &RowsQ8_0, w: &[u8], y: &mut [f32]) {
        let (rows, nb) = (x.rows, x.blocks);
        assert!(rows <= R && y.len() == rows);
        assert!(w.len() == nb * Q8_0_BLOCK_BYTES && x.q.len() == rows * nb * 32);
        assert!(x.d.len() == rows * nb);
        let ones = _mm256_set1_epi16(1);
        let mut sets = [[_mm256_setzero_ps(); R]; U];
        for b in 0..nb {
            let acc = &mut sets[b % U];
            let blk = &w[b * Q8_0_BLOCK_BYTES..(b + 1) * Q8_0_BLOCK_BYTES];
            let dw = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
            // SAFETY: `blk[2..34]` is 32 bytes; unaligned load.
            let qw = unsafe { _mm256_loadu_si256(blk[2..].as_ptr().cast()) };
            let aw = _mm256_sign_epi8(qw, qw);
            for (r, a) in acc.iter_mut().enumerate().take(rows) {
                let i = r * nb + b;
                // SAFETY: `x.q[i * 32..i * 32 + 32]` lies inside `x.q` (checked above).
                let qx = unsafe { _mm256_loadu_si256(x.q[i * 32..].as_ptr().cast()) };
                // |w| · (x · sign w) = w · x, as unsigned × signed byte pairs (|w| ≤ 127).
                let p16 = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(qx, qw));
                let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
                *a = _mm256_fmadd_ps(_mm256_set1_ps(dw * x.d[i]), p, *a);
            }
        }
        let mut acc = sets[0];
        for set in &sets[1..] {
            for (a, v) in acc.iter_mut().zip(set) {
                *a = _mm256_add_ps(*a, *v);
            }
        }
        for (o, a) in y.iter_mut().zip(acc) {
            let h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
            let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
            *o = _mm_cvtss_f32(h);
        }
    }
}

/// AVX-512 with VNNI (`vpdpbusd`: 64 byte products summed into 16 lanes in one instruction).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    use super::{Q8_0_BLOCK_BYTES, RowsQ8_0};
    use std::arch::x86_64::*;

    /// How far ahead of the block being read the next block is asked for, in bytes. A step
    /// streams at ≈ 10 GB/s per core, so 1 KiB covered only ≈ 100 ns of memory latency: with
    /// it a released-size minGPT q8_0 step at batch 1 took 53–59 ms against 50–53 ms with
    /// 4 KiB (Xeon, alternating runs, medians of ≈ 45 eight-step windows each).
    const PREFETCH: usize = 4096;

    /// Whether this CPU runs the kernels below.
    pub(super) fn available() -> bool {
        crate::nn::has_avx512_vnni()
    }

    /// Input rows in `Q8_0` laid out for `vpdpbusd`, two blocks (64 values) per vector:
    /// the values as unsigned bytes `q + 128` (the instruction multiplies unsigned by signed
    /// bytes; the offset is taken back through the weight block's sum), and each pair's two
    /// scales spread over the 8 lanes of their block. An odd last block is padded with zeros.
    pub(super) struct RowsQ8U {
        rows: usize,
        blocks: usize,
        pairs: usize,
        /// `rows × pairs × 64` bytes.
        xu: Vec<u8>,
        /// `rows × pairs × 16` scales.
        dx: Vec<f32>,
    }

    impl RowsQ8U {
        pub(super) fn new(x: &RowsQ8_0) -> Self {
            let (rows, blocks) = (x.rows, x.blocks);
            let pairs = blocks.div_ceil(2);
            let mut xu = vec![0u8; rows * pairs * 64];
            let mut dx = vec![0f32; rows * pairs * 16];
            for r in 0..rows {
                for b in 0..blocks {
                    let (src, dst) = ((r * blocks + b) * 32, (r * pairs * 2 + b) * 32);
                    for (u, q) in xu[dst..dst + 32].iter_mut().zip(&x.q[src..src + 32]) {
                        *u = (*q as u8) ^ 0x80;
                    }
                    let d = (r * pairs * 2 + b) * 8;
                    dx[d..d + 8].fill(x.d[r * blocks + b]);
                }
            }
            Self {
                rows,
                blocks,
                pairs,
                xu,
                dx,
            }
        }
    }

    /// `y[r] = Σ_b d_w,b · d_x,r,b · (q_w,b · q_x,r,b)` over the blocks of one weight row, as
    /// the AVX2 kernel computes it (same integer dot products, same scales).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VNNI ([`available`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn dots_q8_0(x: &RowsQ8U, w: &[u8], y: &mut [f32]) {
        match x.rows {
            1 => dots::<1, 4>(x, w, y),
            2 => dots::<2, 2>(x, w, y),
            3 | 4 => dots::<4, 1>(x, w, y),
            5..=8 => dots::<8, 1>(x, w, y),
            _ => dots::<16, 1>(x, w, y),
        }
    }

    /// Up to `R` rows (`x.rows ≤ R`), accumulators in registers; pairs of blocks go round
    /// `U` sets of accumulators so that one row does not wait on a single chain of FMAs.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn dots<const R: usize, const U: usize>(x: &RowsQ8U, w: &[u8], y: &mut [f32]) {
        let (rows, nb, np) = (x.rows, x.blocks, x.pairs);
        assert!(rows <= R && y.len() == rows);
        assert!(w.len() == nb * Q8_0_BLOCK_BYTES);
        assert!(x.xu.len() == rows * np * 64 && x.dx.len() == rows * np * 16);
        let offset = _mm512_set1_epi8(-128);
        // Lanes 0–7 take the first scale, 8–15 the second.
        let spread = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        // One pair of blocks (`two`: both present) into one set of accumulators.
        let pair = |p: usize, two: bool, acc: &mut [__m512; R]| {
            let b0 = &w[2 * p * Q8_0_BLOCK_BYTES..];
            // SAFETY (all loads): each block is `Q8_0_BLOCK_BYTES` long inside `w`, checked
            // above; a missing second block (odd count) is never read.
            let (qw, d1) = if two {
                let b1 = &b0[Q8_0_BLOCK_BYTES..];
                let lo = unsafe { _mm256_loadu_si256(b0[2..].as_ptr().cast()) };
                let hi = unsafe { _mm256_loadu_si256(b1[2..].as_ptr().cast()) };
                (
                    _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1),
                    u16::from_le_bytes([b1[0], b1[1]]),
                )
            } else {
                let lo = unsafe { _mm256_loadu_si256(b0[2..].as_ptr().cast()) };
                (_mm512_zextsi256_si512(lo), 0)
            };
            // The next rows' blocks follow this row's in memory: ask for them ahead.
            _mm_prefetch::<_MM_HINT_T0>(b0.as_ptr().wrapping_add(PREFETCH).cast());
            let d0 = u16::from_le_bytes([b0[0], b0[1]]);
            let dw = _mm512_permutexvar_ps(
                spread,
                _mm512_castps128_ps512(_mm_cvtph_ps(_mm_set_epi16(
                    0, 0, 0, 0, 0, 0, d1 as i16, d0 as i16,
                ))),
            );
            // Σ (x + 128)·w − 128·Σ w = Σ x·w, per group of four lanes.
            let neg = _mm512_sub_epi32(
                _mm512_setzero_si512(),
                _mm512_dpbusd_epi32(_mm512_setzero_si512(), offset, qw),
            );
            for (r, a) in acc.iter_mut().enumerate().take(rows) {
                let i = r * np + p;
                // SAFETY: `i < rows · np`, so both reads lie inside `xu` / `dx` (checked above).
                let xu = unsafe { _mm512_loadu_si512(x.xu[i * 64..].as_ptr().cast()) };
                let dx = unsafe { _mm512_loadu_ps(x.dx[i * 16..].as_ptr()) };
                let dot = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(neg, xu, qw));
                *a = _mm512_fmadd_ps(dot, _mm512_mul_ps(dw, dx), *a);
            }
        };
        // `U` pairs per round, each into its own set, unrolled so the sets stay in registers.
        let mut sets = [[_mm512_setzero_ps(); R]; U];
        let full = nb / 2;
        let mut p = 0;
        while p + U <= full {
            for (u, acc) in sets.iter_mut().enumerate() {
                pair(p + u, true, acc);
            }
            p += U;
        }
        for p in p..full {
            pair(p, true, &mut sets[0]);
        }
        if nb % 2 == 1 {
            pair(full, false, &mut sets[0]);
        }
        let mut acc = sets[0];
        for set in &sets[1..] {
            for (a, v) in acc.iter_mut().zip(set) {
                *a = _mm512_add_ps(*a, *v);
            }
        }
        for (o, a) in y.iter_mut().zip(acc) {
            *o = _mm512_reduce_add_ps(a);
        }
    }
}

type Unpack = fn(&[u8], &mut [f32]);

fn pick_unpack() -> Unpack {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            return unpack_q8_0_avx2;
        }
    }
    unpack_q8_0
}

/// One row of `Q8_0` blocks → f32 (`scale · q`, as ggml dequantizes).
#[inline(always)]
fn unpack_q8_0_body(blocks: &[u8], w: &mut [f32]) {
    for (b, dst) in blocks
        .chunks_exact(Q8_0_BLOCK_BYTES)
        .zip(w.chunks_exact_mut(32))
    {
        let d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        for (o, q) in dst.iter_mut().zip(&b[2..Q8_0_BLOCK_BYTES]) {
            *o = d * f32::from(*q as i8);
        }
    }
}

fn unpack_q8_0(blocks: &[u8], w: &mut [f32]) {
    unpack_q8_0_body(blocks, w);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn unpack_q8_0_avx2_impl(blocks: &[u8], w: &mut [f32]) {
    unpack_q8_0_body(blocks, w);
}

#[cfg(target_arch = "x86_64")]
fn unpack_q8_0_avx2(blocks: &[u8], w: &mut [f32]) {
    // SAFETY: only selected by `pick_unpack` after the CPU reported AVX2.
    #[allow(unsafe_code)]
    unsafe {
        unpack_q8_0_avx2_impl(blocks, w)
    }
}

type Kernel = fn(&[f32], usize, &[f32], &mut [f32]);

fn pick_kernel() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return dots_avx2;
        }
    }
    dots_generic
}

/// `y[r] = x_r · w` for every row `r` of `x` (`k` wide).
#[inline(always)]
fn dots_body(x: &[f32], k: usize, w: &[f32], y: &mut [f32], fma: bool) {
    for (r, yr) in y.iter_mut().enumerate() {
        let xr = &x[r * k..(r + 1) * k];
        let mut acc = [0f32; 16];
        let (xc, xt) = xr.split_at(k - k % 16);
        let (wc, wt) = w.split_at(k - k % 16);
        for (a, b) in xc.chunks_exact(16).zip(wc.chunks_exact(16)) {
            for i in 0..16 {
                acc[i] = if fma {
                    a[i].mul_add(b[i], acc[i])
                } else {
                    acc[i] + a[i] * b[i]
                };
            }
        }
        let mut s: f32 = acc.iter().sum();
        for (a, b) in xt.iter().zip(wt) {
            s += a * b;
        }
        *yr = s;
    }
}

fn dots_generic(x: &[f32], k: usize, w: &[f32], y: &mut [f32]) {
    dots_body(x, k, w, y, false);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dots_avx2_impl(x: &[f32], k: usize, w: &[f32], y: &mut [f32]) {
    dots_body(x, k, w, y, true);
}

#[cfg(target_arch = "x86_64")]
fn dots_avx2(x: &[f32], k: usize, w: &[f32], y: &mut [f32]) {
    // SAFETY: only selected by `pick_kernel` after the CPU reported AVX2 and FMA.
    #[allow(unsafe_code)]
    unsafe {
        dots_avx2_impl(x, k, w, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_product() {
        let (rows, k, out) = (5, 37, 70);
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
            .collect();
        let w: Vec<f32> = (0..out * k)
            .map(|i| ((i * 11 % 17) as f32 - 8.0) / 7.0)
            .collect();
        let y = matmul_xwt(&x, rows, k, &w, out);
        for r in 0..rows {
            for o in 0..out {
                let want: f32 = (0..k).map(|i| x[r * k + i] * w[o * k + i]).sum();
                assert!((y[r * out + o] - want).abs() < 1e-4, "{r},{o}");
            }
        }
        let mut g = vec![0f32; 1];
        dots_generic(&x[..k], k, &w[..k], &mut g);
        assert!((g[0] - y[0]).abs() < 1e-4);
    }

    #[test]
    fn q8_0_product_is_the_product_of_the_dequantized_weight() {
        for k in [96, 288] {
            q8_0_product_matches(k, 70);
        }
    }

    /// Every kernel's `Q8_0` product for a `(out, k)` weight and 1–16 rows against ggml's and
    /// against the dequantized weight's.
    fn q8_0_product_matches(k: usize, out: usize) {
        use candle_core::quantized::GgmlDType;
        // Every block of 32 with its own scale, so that a kernel mixing blocks' scales fails.
        let w: Vec<f32> = (0..out * k)
            .map(|i| ((i * 11 % 17) as f32 - 8.0) / 7.0 * (1.0 + (i / 32 % 7) as f32 * 0.37))
            .collect();
        let (q, deq, bytes) = crate::nn::test_util::quantize(w, out, k, GgmlDType::Q8_0);
        let mut unpacked = vec![0f32; k];
        unpack_q8_0(&bytes[..k / 32 * Q8_0_BLOCK_BYTES], &mut unpacked);
        assert_eq!(unpacked, deq[..k]);
        let qm = candle_core::quantized::QMatMul::from_qtensor(q).unwrap();
        for rows in [1, 2, 3, 4, 5, 9, 16] {
            let x: Vec<f32> = (0..rows * k)
                .map(|i| {
                    ((i * 7 % 13) as f32 - 6.0) / 5.0 * (1.0 + (i / 32 % 3) as f32 * 0.5)
                        + (i % 5) as f32 * 0.013
                })
                .collect();
            for wide in [true, false] {
                let y = q8_0_product(&x, rows, k, &bytes, out, wide);
                // ggml's product (activations rounded to Q8_0 as well) up to summation order…
                let ggml = crate::nn::test_util::ggml_product(&qm, &x, rows, k);
                // …and within the activations' rounding of the dequantized weight's product.
                let exact = matmul_xwt(&x, rows, k, &deq, out);
                for i in 0..rows * out {
                    assert!(
                        (y[i] - ggml[i]).abs() < 1e-3,
                        "rows {rows} [{i}]: {} vs ggml {}",
                        y[i],
                        ggml[i]
                    );
                    // Rounding an activation moves it by at most half its block's step
                    // (max|x| / 254), its f16 scale by a relative 2⁻¹¹.
                    let (r, o) = (i / out, i % out);
                    let bound: f32 = (0..k)
                        .map(|c| {
                            let xb = &x[r * k + c / 32 * 32..r * k + c / 32 * 32 + 32];
                            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                            let wabs = deq[o * k + c].abs();
                            wabs * (amax / 254.0 + x[r * k + c].abs() / 2048.0)
                        })
                        .sum();
                    assert!(
                        (y[i] - exact[i]).abs() <= bound * 1.01 + 1e-4,
                        "rows {rows} [{i}]: {} vs {} (bound {bound})",
                        y[i],
                        exact[i]
                    );
                }
            }
        }
    }
}

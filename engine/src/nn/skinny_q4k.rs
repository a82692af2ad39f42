//! Products `x · Wᵀ` with few rows (1–16) for weights in ggml's `Q4K` blocks, with AVX-512
//! VNNI; `None` elsewhere (the caller then uses candle's kernel).
//!
//! A `Q4K` block holds 256 weights as 4-bit values `q` in eight sub-blocks of 32, each with a
//! 6-bit scale and minimum: `w = d·sc_s·q − dmin·m_s`. So `x · w` over a block is
//! `Σ_s d·sc_s·(q · x)_s − dmin·Σ_s m_s·(Σ x)_s`. The input rows are rounded per sub-block of
//! 32 to bytes with their own f32 scale (finer than ggml's one scale per 256, so closer to
//! the f32 product); the `q · x` sums are integer dot products (`vpdpbusd`, unsigned 4-bit
//! weights times signed bytes: no offset needed); the minimum's term uses the exact f32
//! sums of the inputs. Each weight block is unpacked once for all rows, and each output
//! keeps its sums in registers, as in the `Q8_0` kernel (`nn/skinny.rs`).

use super::skinny::by_columns;

/// Bytes of one ggml `Q4K` block: `d`, `dmin` (f16), 12 bytes of packed 6-bit scales and
/// minima, 128 bytes of 4-bit values.
pub const Q4K_BLOCK_BYTES: usize = 144;

/// `y = x · wᵀ` for `x` `(rows, k)` and `w` `(out, k)` in `Q4K` blocks (row-major, `k / 256`
/// blocks per row, as `QTensor::data` gives them); returns `(rows, out)`, or `None` when the
/// CPU lacks AVX-512 VNNI or the shapes are not this kernel's (1–16 rows, `k` a multiple
/// of 256).
pub fn matmul_xwt_q4k(x: &[f32], rows: usize, k: usize, w: &[u8], out: usize) -> Option<Vec<f32>> {
    #[cfg(target_arch = "x86_64")]
    {
        if !(1..=16).contains(&rows)
            || !k.is_multiple_of(256)
            || x.len() != rows * k
            || w.len() != out * (k / 256) * Q4K_BLOCK_BYTES
            || !avx512::available()
        {
            return None;
        }
        let row_bytes = k / 256 * Q4K_BLOCK_BYTES;
        let xs = avx512::Rows::new(x, rows, k);
        Some(by_columns(
            rows,
            out,
            || (),
            |_, o, y| {
                // SAFETY: `available` reported the features; the slices are the sizes `dots`
                // reads (checked there).
                #[allow(unsafe_code)]
                unsafe {
                    avx512::dots(&xs, &w[o * row_bytes..(o + 1) * row_bytes], y)
                };
            },
        ))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, rows, k, w, out);
        None
    }
}

/// Sub-block `j`'s 6-bit scale and minimum (ggml's `get_scale_min_k4`).
#[cfg(test)]
fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The eight 6-bit scales and the eight minima of a block's 12 packed bytes, one per byte
/// (as little-endian `u64`s), unpacked with whole-word masks as ggml's AVX2 kernel does.
#[inline(always)]
fn unpack_scales(q: &[u8]) -> [u64; 2] {
    const M1: u32 = 0x3f3f_3f3f;
    const M2: u32 = 0x0f0f_0f0f;
    const M3: u32 = 0x0303_0303;
    let word = |i: usize| u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]]);
    let (u0, u1, u2) = (word(0), word(1), word(2));
    let sc_lo = u0 & M1;
    let sc_hi = (u2 & M2) | (((u0 >> 6) & M3) << 4);
    let mn_lo = u1 & M1;
    let mn_hi = ((u2 >> 4) & M2) | (((u1 >> 6) & M3) << 4);
    [
        u64::from(sc_lo) | (u64::from(sc_hi) << 32),
        u64::from(mn_lo) | (u64::from(mn_hi) << 32),
    ]
}

/// The order in which the kernel meets the sub-blocks: a 64-byte load of 4-bit values holds
/// sub-blocks (0, 2) in its low nibbles and (1, 3) in its high ones; the next (4, 6), (5, 7).
const ORDER: [usize; 8] = [0, 2, 1, 3, 4, 6, 5, 7];

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    use super::{ORDER, Q4K_BLOCK_BYTES, unpack_scales};
    use std::arch::x86_64::*;

    /// How far ahead of the block being read the next one is asked for, in bytes: as far as
    /// the `Q8_0` kernel asks (minGPT q4k step at batch 1: 56–59 ms with 1 KiB, 48–51 ms with
    /// 4 KiB, alternating runs on the Xeon).
    const PREFETCH: usize = 4096;

    pub(super) fn available() -> bool {
        crate::nn::has_avx512_vnni()
    }

    /// Input rows rounded per sub-block of 32, laid out in [`ORDER`].
    pub(super) struct Rows {
        rows: usize,
        blocks: usize,
        /// `rows × blocks × 256` bytes, sub-blocks in [`ORDER`].
        q: Vec<i8>,
        /// `rows × blocks × 4 × 16` scales: per pair of sub-blocks in [`ORDER`], the first
        /// one's scale in lanes 0–7 and the second's in 8–15.
        d: Vec<f32>,
        /// `rows × blocks × 8` exact sums of each sub-block's inputs, in natural order.
        sums: Vec<f32>,
    }

    impl Rows {
        pub(super) fn new(x: &[f32], rows: usize, k: usize) -> Self {
            let blocks = k / 256;
            let mut q = vec![0i8; rows * k];
            let mut d = vec![0f32; rows * blocks * 64];
            let mut sums = vec![0f32; rows * blocks * 8];
            for rb in 0..rows * blocks {
                let xb = &x[rb * 256..(rb + 1) * 256];
                for (slot, &s) in ORDER.iter().enumerate() {
                    let xs = &xb[s * 32..(s + 1) * 32];
                    let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let scale = amax / 127.0;
                    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                    let dst = &mut q[rb * 256 + slot * 32..rb * 256 + slot * 32 + 32];
                    for (o, v) in dst.iter_mut().zip(xs) {
                        *o = (v * inv).round() as i8;
                    }
                    let lanes = rb * 64 + slot * 8;
                    d[lanes..lanes + 8].fill(scale);
                    sums[rb * 8 + s] = xs.iter().sum();
                }
            }
            Self {
                rows,
                blocks,
                q,
                d,
                sums,
            }
        }
    }

    /// `y[r] = Σ_blocks Σ_s d·sc_s·(q·x)_s − dmin·m_s·(Σx)_s` over one weight row.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VNNI ([`available`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn dots(x: &Rows, w: &[u8], y: &mut [f32]) {
        match x.rows {
            1 => dots_r::<1, 1>(x, w, y),
            2 => dots_r::<2, 1>(x, w, y),
            3 | 4 => dots_r::<4, 1>(x, w, y),
            5..=8 => dots_r::<8, 1>(x, w, y),
            _ => dots_r::<16, 1>(x, w, y),
        }
    }

    /// Up to `R` rows; the four pairs of a block go round `U` sets of accumulators so that
    /// few rows do not wait on one chain of FMAs.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn dots_r<const R: usize, const U: usize>(x: &Rows, w: &[u8], y: &mut [f32]) {
        let (rows, nb) = (x.rows, x.blocks);
        assert!(rows <= R && y.len() == rows);
        assert!(w.len() == nb * Q4K_BLOCK_BYTES);
        assert!(x.q.len() == rows * nb * 256 && x.d.len() == rows * nb * 64);
        assert!(x.sums.len() == rows * nb * 8);
        let nibble = _mm512_set1_epi8(0x0F);
        // Lanes 0–7 take the pair's first sub-block's scale, 8–15 the second's.
        let pick = [[0, 2], [1, 3], [4, 6], [5, 7]]
            .map(|[a, b]| _mm512_set_epi32(b, b, b, b, b, b, b, b, a, a, a, a, a, a, a, a));
        let mut sets = [[_mm512_setzero_ps(); R]; U];
        for b in 0..nb {
            let blk = &w[b * Q4K_BLOCK_BYTES..(b + 1) * Q4K_BLOCK_BYTES];
            _mm_prefetch::<_MM_HINT_T0>(blk.as_ptr().wrapping_add(PREFETCH).cast());
            let d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
            let dmin = half::f16::from_le_bytes([blk[2], blk[3]]).to_f32();
            let [sc, mn] = unpack_scales(&blk[4..16]);
            // SAFETY: `blk[16..144]` is the 128 bytes of values.
            let (lo01, lo23) = unsafe {
                (
                    _mm512_loadu_si512(blk[16..].as_ptr().cast()),
                    _mm512_loadu_si512(blk[80..].as_ptr().cast()),
                )
            };
            let scv = _mm512_castps256_ps512(_mm256_mul_ps(
                _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(sc as i64))),
                _mm256_set1_ps(d),
            ));
            // The minima in lanes 0–7, zeros above: their term joins the same sums.
            let mnv = _mm512_zextps256_ps512(_mm256_mul_ps(
                _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(mn as i64))),
                _mm256_set1_ps(dmin),
            ));
            // Pairs in ORDER: (0,2) (1,3) from the first 64 bytes, (4,6) (5,7) from the next.
            let nib = [
                _mm512_and_si512(lo01, nibble),
                _mm512_and_si512(_mm512_srli_epi16(lo01, 4), nibble),
                _mm512_and_si512(lo23, nibble),
                _mm512_and_si512(_mm512_srli_epi16(lo23, 4), nibble),
            ];
            let ws = pick.map(|p| _mm512_permutexvar_ps(p, scv));
            for r in 0..rows {
                let rb = r * nb + b;
                for (p, (nib, ws)) in nib.iter().zip(&ws).enumerate() {
                    let acc = &mut sets[p % U];
                    // SAFETY: `rb < rows · nb`, so the 64 bytes / 16 floats read lie inside
                    // `x.q` / `x.d` (checked above).
                    let (xq, xd) = unsafe {
                        (
                            _mm512_loadu_si512(x.q[rb * 256 + p * 64..].as_ptr().cast()),
                            _mm512_loadu_ps(x.d[rb * 64 + p * 16..].as_ptr()),
                        )
                    };
                    let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), *nib, xq);
                    acc[r] =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(*ws, xd), acc[r]);
                }
                // SAFETY: 8 floats at `rb · 8` lie inside `x.sums` (checked above).
                let xs =
                    unsafe { _mm512_zextps256_ps512(_mm256_loadu_ps(x.sums[rb * 8..].as_ptr())) };
                sets[0][r] = _mm512_fnmadd_ps(mnv, xs, sets[0][r]);
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QMatMul};

    #[test]
    fn packed_scales_unpack_as_ggml_reads_them() {
        for seed in 0..64u32 {
            let q: Vec<u8> = (0..12u32)
                .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed * 97) >> 7) as u8)
                .collect();
            let [sc, mn] = unpack_scales(&q);
            for j in 0..8 {
                let (s, m) = scale_min(j, &q);
                assert_eq!(((sc >> (8 * j)) & 0xff) as u8, s, "scale {j}");
                assert_eq!(((mn >> (8 * j)) & 0xff) as u8, m, "min {j}");
            }
        }
    }

    #[test]
    fn q4k_product_is_the_product_of_the_dequantized_weight() {
        let (k, out) = (512, 40);
        let w: Vec<f32> = (0..out * k)
            .map(|i| ((i * 11 % 17) as f32 - 8.0) / 7.0 + (i % 29) as f32 * 0.01)
            .collect();
        let (q, deq, bytes) = crate::nn::test_util::quantize(w, out, k, GgmlDType::Q4K);
        let qm = QMatMul::from_qtensor(q).unwrap();
        for rows in [1, 2, 3, 4, 7, 16] {
            let x: Vec<f32> = (0..rows * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0 + (i % 5) as f32 * 0.013)
                .collect();
            let Some(y) = matmul_xwt_q4k(&x, rows, k, &bytes, out) else {
                eprintln!("no AVX-512 VNNI here: the Q4K kernel is not used");
                return;
            };
            let ggml = crate::nn::test_util::ggml_product(&qm, &x, rows, k);
            for i in 0..rows * out {
                let (r, o) = (i / out, i % out);
                let exact: f32 = (0..k).map(|c| x[r * k + c] * deq[o * k + c]).sum();
                // Rounding an input moves it by at most half its step: per sub-block of 32
                // here, per block of 256 in ggml (whose inputs are rounded more coarsely).
                let bound = |span: usize| -> f32 {
                    (0..k)
                        .map(|c| {
                            let s0 = r * k + c / span * span;
                            let amax = x[s0..s0 + span].iter().fold(0f32, |m, v| m.max(v.abs()));
                            deq[o * k + c].abs() * amax / 254.0
                        })
                        .sum()
                };
                let (ours, theirs) = (bound(32), bound(256));
                assert!(
                    (y[i] - exact).abs() <= ours * 1.01 + 1e-3,
                    "rows {rows} [{i}]: {} vs {exact} (bound {ours})",
                    y[i]
                );
                assert!(
                    (y[i] - ggml[i]).abs() <= (ours + theirs) * 1.01 + 1e-3,
                    "rows {rows} [{i}]: {} vs ggml {}",
                    y[i],
                    ggml[i]
                );
            }
        }
    }
}

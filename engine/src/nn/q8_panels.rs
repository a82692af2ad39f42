//! `Q8_0` weights repacked for integer matrix products with AVX-512 VNNI: the output columns
//! in panels of 16, so that one `vpdpbusd` adds four input values' products into 16 columns'
//! sums at once (64 multiply-adds) — the layout of an f32 GEMM's packed operand, in bytes.
//!
//! The row-major `Q8_0` layout (`skinny.rs`) keeps one output's 32 values of a block together,
//! so its kernel sums lanes of one output and pays a conversion, a scale and an FMA per input
//! row for every 64 weight bytes; here those come once per 16 columns and 32 values, after
//! eight `vpdpbusd`. That takes products of many rows (encoder passes, prefills), which went
//! through the weight widened to f32 and the f32 GEMM, and of 2–16 rows (a batch's decoding
//! steps), where the row-major kernel was bound by its arithmetic, to the integer units' rate.
//!
//! The arithmetic is ggml's `Q8_0 · Q8_0`: activations rounded to `Q8_0` per block of 32
//! (scale `max|x| / 127` rounded to f16), each block's integer dot product exact in i32, then
//! scaled by both blocks' scales and summed in f32.

use rayon::prelude::*;

use super::skinny::Q8_0_BLOCK_BYTES;

/// Output columns per panel: one 512-bit vector of i32 sums.
pub const PANEL: usize = 16;

/// One group: 16 columns × 4 consecutive input values, as `vpdpbusd` reads them.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Group([u8; 64]);

/// A `Q8_0` weight `(out, k)` in panels of [`PANEL`] output columns.
///
/// For panel `p` and block `b` (32 input values) there are eight [`Group`]s, `g` holding
/// values `32b + 4g … 32b + 4g + 3` of the panel's 16 columns, column-major by fours, as
/// unsigned bytes `q + 128` (`vpdpbusd` multiplies unsigned by signed bytes; the activations
/// are the signed side and the offset comes back out through their block sums), and 16 f16
/// scales. Panels follow one another, each with its blocks in order, so a panel is one
/// sequential stream. The bytes are those of the `Q8_0` blocks, rearranged.
pub struct PanelsQ8 {
    out: usize,
    k: usize,
    /// `panels × blocks × 8` groups.
    groups: Vec<Group>,
    /// `panels × blocks × 16` f16 scales (bits).
    scales: Vec<u16>,
}

impl std::fmt::Debug for PanelsQ8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PanelsQ8 {{ out: {}, k: {} }}", self.out, self.k)
    }
}

impl PanelsQ8 {
    /// Whether this CPU runs the panel kernel (AVX-512 F, BW and VNNI).
    pub fn available() -> bool {
        super::has_avx512_vnni()
    }

    /// Repacks ggml `Q8_0` blocks of a weight `(out, k)` (row-major, `k / 32` blocks per row);
    /// `None` when the kernel cannot take it: no VNNI, or `out` not a multiple of [`PANEL`].
    pub fn from_q8_0(blocks: &[u8], out: usize, k: usize) -> Option<Self> {
        if !Self::available() || out == 0 || !out.is_multiple_of(PANEL) || !k.is_multiple_of(32) {
            return None;
        }
        Self::pack(blocks, out, k)
    }

    fn pack(blocks: &[u8], out: usize, k: usize) -> Option<Self> {
        let nb = k / 32;
        let row_bytes = nb * Q8_0_BLOCK_BYTES;
        if blocks.len() != out * row_bytes {
            return None;
        }
        let panels = out / PANEL;
        let mut groups = vec![Group([0; 64]); panels * nb * 8];
        let mut scales = vec![0u16; panels * nb * PANEL];
        groups
            .par_chunks_mut(nb * 8)
            .zip(scales.par_chunks_mut(nb * PANEL))
            .enumerate()
            .for_each(|(p, (g, s))| {
                for c in 0..PANEL {
                    let row = &blocks[(p * PANEL + c) * row_bytes..][..row_bytes];
                    for b in 0..nb {
                        let blk = &row[b * Q8_0_BLOCK_BYTES..][..Q8_0_BLOCK_BYTES];
                        s[b * PANEL + c] = u16::from_le_bytes([blk[0], blk[1]]);
                        for (i, &q) in blk[2..].iter().enumerate() {
                            g[b * 8 + i / 4].0[c * 4 + i % 4] = q ^ 0x80;
                        }
                    }
                }
            });
        Some(Self {
            out,
            k,
            groups,
            scales,
        })
    }

    /// Output width.
    pub fn out(&self) -> usize {
        self.out
    }

    /// Input width.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes a product reads (the same as the `Q8_0` blocks').
    pub fn bytes(&self) -> usize {
        self.groups.len() * 64 + self.scales.len() * 2
    }

    /// The weight dequantized, `(out, k)` row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let (nb, k) = (self.k / 32, self.k);
        let mut w = vec![0f32; self.out * k];
        for (o, row) in w.chunks_exact_mut(k).enumerate() {
            let (p, c) = (o / PANEL, o % PANEL);
            for b in 0..nb {
                let d = half::f16::from_bits(self.scales[(p * nb + b) * PANEL + c]).to_f32();
                for i in 0..32 {
                    let q = (self.groups[(p * nb + b) * 8 + i / 4].0[c * 4 + i % 4] ^ 0x80) as i8;
                    row[b * 32 + i] = d * q as f32;
                }
            }
        }
        w
    }

    /// `y = x · Wᵀ` for `x` `(rows, k)` row-major; returns `(rows, out)`.
    pub fn matmul(&self, x: &[f32], rows: usize) -> Vec<f32> {
        assert_eq!(x.len(), rows * self.k, "q8_0 panels: input size");
        let xq = RowsQ8::new(x, rows, self.k);
        let mut y = vec![0f32; rows * self.out];
        if rows == 0 {
            return y;
        }
        let panels = self.out / PANEL;
        let nb = self.k / 32;
        let y_ptr = OutPtr(y.as_mut_ptr());
        // Two panels per task: each task writes its own 32 columns of every row.
        (0..panels.div_ceil(2)).into_par_iter().for_each(|t| {
            let p0 = 2 * t;
            let np = (panels - p0).min(2);
            let groups = &self.groups[p0 * nb * 8..(p0 + np) * nb * 8];
            let scales = &self.scales[p0 * nb * PANEL..(p0 + np) * nb * PANEL];
            let y_ptr = &y_ptr;
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `from_q8_0` built this only where `available()`; every task writes
            // columns `p0·16 .. (p0 + np)·16` of each row, which no other task writes, inside
            // `y` (`rows × out`).
            #[allow(unsafe_code)]
            unsafe {
                avx512::panel_pair(&xq, groups, scales, np, self.out, p0 * PANEL, y_ptr.0);
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (groups, scales, y_ptr, np);
        });
        y
    }
}

/// The output pointer shared by tasks that write disjoint columns.
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint elements (see `PanelsQ8::matmul`).
#[allow(unsafe_code)]
unsafe impl Sync for OutPtr {}

/// A run of whole blocks: values in, then `q`, scales and offsets out.
type BlockRun<'a> = (((&'a [f32], &'a mut [i8]), &'a mut [f32]), &'a mut [i32]);

/// Input rows rounded to `Q8_0` as ggml's `quantize_row_q8_0` does (per block of 32, scale
/// `d = max|x| / 127` stored in f16, `q = round(x / d)`), with each block's offset correction.
struct RowsQ8 {
    rows: usize,
    k: usize,
    /// `rows × k` values.
    q: Vec<i8>,
    /// `rows × k/32` scales.
    d: Vec<f32>,
    /// `rows × k/32` values `128 · Σ q` over the block: what the weights' `+128` adds.
    offset: Vec<i32>,
}

impl RowsQ8 {
    fn new(x: &[f32], rows: usize, k: usize) -> Self {
        let nb = k / 32;
        let mut q = vec![0i8; rows * k];
        let mut d = vec![0f32; rows * nb];
        let mut offset = vec![0i32; rows * nb];
        let simd = PanelsQ8::available();
        let work = |(((xb, qb), db), ob): BlockRun| {
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: `available` reported AVX-512 F and BW; the slices hold whole blocks
                // (`quantize_blocks` checks their lengths agree).
                #[allow(unsafe_code)]
                unsafe {
                    avx512::quantize_blocks(xb, qb, db, ob)
                };
                return;
            }
            let _ = simd;
            quantize_blocks(xb, qb, db, ob);
        };
        // A task per 8 blocks of 32 at least: large inputs (encoder passes) over the threads.
        const TASK: usize = 8 * 32;
        if rows * k >= 1 << 15 {
            x.par_chunks(TASK)
                .zip(q.par_chunks_mut(TASK))
                .zip(d.par_chunks_mut(TASK / 32))
                .zip(offset.par_chunks_mut(TASK / 32))
                .for_each(work);
        } else {
            work((((x, &mut q[..]), &mut d[..]), &mut offset[..]));
        }
        Self {
            rows,
            k,
            q,
            d,
            offset,
        }
    }
}

/// Blocks of 32 values `x` to `Q8_0`: values `q`, scales `d`, offsets `128 · Σ q` (one per
/// block). Rounds half away from zero, as ggml's reference `roundf`.
fn quantize_blocks(x: &[f32], q: &mut [i8], d: &mut [f32], offset: &mut [i32]) {
    assert!(x.len() == q.len() && x.len() == 32 * d.len() && d.len() == offset.len());
    for (((xb, qb), db), ob) in x
        .chunks_exact(32)
        .zip(q.chunks_exact_mut(32))
        .zip(d.iter_mut())
        .zip(offset.iter_mut())
    {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        *db = half::f16::from_f32(scale).to_f32();
        let mut sum = 0i32;
        for (o, v) in qb.iter_mut().zip(xb) {
            *o = (v * inv).round() as i8;
            sum += *o as i32;
        }
        *ob = 128 * sum;
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    use super::{Group, PANEL, RowsQ8};
    use std::arch::x86_64::*;

    /// [`super::quantize_blocks`] with AVX-512, bit for bit: the same scale, product and
    /// rounding (half away from zero, from the truncation and the exact remainder).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F and BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize_blocks(
        x: &[f32],
        q: &mut [i8],
        d: &mut [f32],
        offset: &mut [i32],
    ) {
        assert!(x.len() == q.len() && x.len() == 32 * d.len() && d.len() == offset.len());
        let sign = _mm512_set1_epi32(i32::MIN);
        let one = _mm512_castps_si512(_mm512_set1_ps(1.0));
        let half = _mm512_set1_ps(0.5);
        let round = |v: __m512| {
            let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
            let away = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(_mm512_abs_ps(_mm512_sub_ps(v, t)), half);
            let step = _mm512_castsi512_ps(_mm512_or_si512(
                _mm512_and_si512(_mm512_castps_si512(v), sign),
                one,
            ));
            _mm512_cvtps_epi32(_mm512_mask_add_ps(t, away, t, step))
        };
        for (b, (db, ob)) in d.iter_mut().zip(offset.iter_mut()).enumerate() {
            // SAFETY: `32b + 32 ≤ x.len() = q.len()` (asserted).
            let (lo, hi) = unsafe {
                (
                    _mm512_loadu_ps(x.as_ptr().add(32 * b)),
                    _mm512_loadu_ps(x.as_ptr().add(32 * b + 16)),
                )
            };
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
            let scale = amax / 127.0;
            let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
            *db = half::f16::from_f32(scale).to_f32();
            let vinv = _mm512_set1_ps(inv);
            let (a, c) = (
                round(_mm512_mul_ps(lo, vinv)),
                round(_mm512_mul_ps(hi, vinv)),
            );
            *ob = 128 * _mm512_reduce_add_epi32(_mm512_add_epi32(a, c));
            // SAFETY: as above; 16 bytes each.
            unsafe {
                _mm_storeu_si128(q.as_mut_ptr().add(32 * b).cast(), _mm512_cvtepi32_epi8(a));
                _mm_storeu_si128(
                    q.as_mut_ptr().add(32 * b + 16).cast(),
                    _mm512_cvtepi32_epi8(c),
                );
            }
        }
    }

    /// Rows per tile: six rows × two panels keep 12 f32 sums and 12 i32 block sums in registers.
    const TILE_ROWS: usize = 6;

    /// How far ahead of the block being read the first tile asks for the panel's groups
    /// (4 KiB): at batch 1 a released-size encoder–decoder q8_0 step took a median 8.76 ms
    /// against 9.24 ms without (alternating windows of 100 steps, Xeon); 8 KiB measured the
    /// same at batch 1 and slower at batch 4.
    const PREFETCH_GROUPS: usize = 64;

    /// Every row's product with one or two panels (`np`) starting at panel column `col0`,
    /// written into `y` (`rows × out`, row-major).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VNNI; `y` must point at `x.rows × out` floats of
    /// which columns `col0 .. col0 + 16·np` are this call's alone; `groups` and `scales` hold
    /// `np` panels of `x.k / 32` blocks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn panel_pair(
        x: &RowsQ8,
        groups: &[Group],
        scales: &[u16],
        np: usize,
        out: usize,
        col0: usize,
        y: *mut f32,
    ) {
        let nb = x.k / 32;
        assert!(groups.len() == np * nb * 8 && scales.len() == np * nb * PANEL);
        assert!(np == 1 || np == 2);
        let mut r0 = 0;
        while r0 < x.rows {
            let n = (x.rows - r0).min(TILE_ROWS);
            let mut sums = [[_mm512_setzero_ps(); 2]; TILE_ROWS];
            macro_rules! tiles {
                ($($r:literal)*) => {
                    match (n, np) {
                        $(($r, 2) => tile::<$r, 2>(x, r0, groups, scales, &mut sums),)*
                        $(($r, _) => tile::<$r, 1>(x, r0, groups, scales, &mut sums),)*
                        _ => unreachable!("tile rows"),
                    }
                };
            }
            tiles!(1 2 3 4 5 6);
            for (r, row) in sums.iter().enumerate().take(n) {
                for (p, v) in row.iter().enumerate().take(np) {
                    // SAFETY: row `r0 + r < rows`, columns `col0 + 16p .. +16 ≤ out` (caller).
                    unsafe { _mm512_storeu_ps(y.add((r0 + r) * out + col0 + p * PANEL), *v) };
                }
            }
            r0 += n;
        }
    }

    /// Rows `r0 .. r0 + R` against `P` panels over every block; the sums into `sums`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn tile<const R: usize, const P: usize>(
        x: &RowsQ8,
        r0: usize,
        groups: &[Group],
        scales: &[u16],
        sums: &mut [[__m512; 2]; TILE_ROWS],
    ) {
        let (k, nb) = (x.k, x.k / 32);
        assert!(r0 + R <= x.rows && groups.len() >= P * nb * 8 && scales.len() >= P * nb * 16);
        assert!(x.q.len() == x.rows * k && x.d.len() == x.rows * nb);
        assert!(x.offset.len() == x.rows * nb);
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        let q = x.q.as_ptr();
        // The first tile streams the panels from memory; later tiles find them in L2.
        let fetch = r0 == 0;
        for b in 0..nb {
            if fetch {
                for p in 0..P {
                    let at = groups
                        .as_ptr()
                        .wrapping_add((p * nb + b) * 8 + PREFETCH_GROUPS);
                    for g in 0..8 {
                        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(g).cast());
                    }
                }
            }
            let mut dw = [_mm512_setzero_ps(); P];
            for (p, d) in dw.iter_mut().enumerate() {
                // SAFETY: `(p·nb + b)·16 + 16 ≤ P·nb·16 ≤ scales.len()` (asserted).
                let h =
                    unsafe { _mm256_loadu_si256(scales.as_ptr().add((p * nb + b) * PANEL).cast()) };
                *d = _mm512_cvtph_ps(h);
            }
            let mut dot = [[_mm512_setzero_si512(); P]; R];
            for (r, row) in dot.iter_mut().enumerate() {
                let init = _mm512_set1_epi32(-x.offset[(r0 + r) * nb + b]);
                row.fill(init);
            }
            for g in 0..8 {
                let mut wv = [_mm512_setzero_si512(); P];
                for (p, w) in wv.iter_mut().enumerate() {
                    // SAFETY: group `(p·nb + b)·8 + g < P·nb·8 ≤ groups.len()` (asserted);
                    // groups are 64-byte aligned.
                    *w = unsafe {
                        _mm512_load_si512(groups.as_ptr().add((p * nb + b) * 8 + g).cast())
                    };
                }
                for (r, row) in dot.iter_mut().enumerate() {
                    // SAFETY: `(r0 + r)·k + 32b + 4g + 4 ≤ rows·k` (asserted).
                    let xv = unsafe {
                        q.add((r0 + r) * k + b * 32 + g * 4)
                            .cast::<i32>()
                            .read_unaligned()
                    };
                    let xb = _mm512_set1_epi32(xv);
                    for (s, w) in row.iter_mut().zip(&wv) {
                        *s = _mm512_dpbusd_epi32(*s, *w, xb);
                    }
                }
            }
            for (r, (a, row)) in acc.iter_mut().zip(&dot).enumerate() {
                let dx = _mm512_set1_ps(x.d[(r0 + r) * nb + b]);
                for ((s, v), d) in a.iter_mut().zip(row).zip(&dw) {
                    *s = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*v), _mm512_mul_ps(*d, dx), *s);
                }
            }
        }
        for (dst, a) in sums.iter_mut().zip(&acc) {
            dst[..P].copy_from_slice(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Tensor};

    /// The panel product against ggml's `Q8_0 · Q8_0` (candle's `QMatMul`) for row counts that
    /// cover the tile's tails, an odd panel count, and weights and activations whose every
    /// block has its own scale (a kernel mixing two blocks' or columns' scales fails).
    #[test]
    fn panel_product_is_ggmls_q8_0_product() {
        if !PanelsQ8::available() {
            eprintln!("no AVX-512 VNNI: the panel kernel is not used on this CPU");
            return;
        }
        for (k, out) in [(96, 48), (288, 32), (64, 16)] {
            let w: Vec<f32> = (0..out * k)
                .map(|i| {
                    ((i * 11 % 17) as f32 - 8.0) / 7.0
                        * (1.0 + (i / 32 % 7) as f32 * 0.37)
                        * (1.0 + (i / k % 5) as f32 * 0.21)
                })
                .collect();
            let (q, deq, bytes) = crate::nn::test_util::quantize(w, out, k, GgmlDType::Q8_0);
            let panels = PanelsQ8::from_q8_0(&bytes, out, k).unwrap();
            assert_eq!(panels.dequantize(), deq, "k {k}: repacking lost a value");
            assert_eq!(panels.bytes(), bytes.len());
            let qm = QMatMul::from_qtensor(q).unwrap();
            for rows in [1, 2, 3, 4, 5, 7, 16, 70] {
                let x: Vec<f32> = (0..rows * k)
                    .map(|i| {
                        ((i * 7 % 13) as f32 - 6.0) / 5.0 * (1.0 + (i / 32 % 3) as f32 * 0.5)
                            + (i % 5) as f32 * 0.013
                    })
                    .collect();
                let y = panels.matmul(&x, rows);
                let ggml = crate::nn::test_util::ggml_product(&qm, &x, rows, k);
                for i in 0..rows * out {
                    // Both sum the same exact block products in f32, rounding differently.
                    let (r, o) = (i / out, i % out);
                    let size: f32 = (0..k).map(|c| (deq[o * k + c] * x[r * k + c]).abs()).sum();
                    let tol = 1e-5 * (1.0 + size);
                    assert!(
                        (y[i] - ggml[i]).abs() <= tol,
                        "k {k} rows {rows} [{i}]: {} vs ggml {}",
                        y[i],
                        ggml[i]
                    );
                }
            }
        }
    }

    /// The AVX-512 rounding of activations equals the scalar one bit for bit, ties included.
    #[test]
    fn simd_activation_rounding_is_the_scalar_one() {
        if !PanelsQ8::available() {
            return;
        }
        let k = 32 * 40;
        let mut x: Vec<f32> = (0..k)
            .map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 0.0137 * (1.0 + (i / 32) as f32))
            .collect();
        // Block 0: max 127, so every x is its own q and the halves are exact ties.
        for (i, v) in x[..32].iter_mut().enumerate() {
            *v = if i == 0 { 127.0 } else { i as f32 * 0.5 - 8.0 };
        }
        x[32..64].fill(0.0);
        let nb = k / 32;
        let (mut q1, mut d1, mut o1) = (vec![0i8; k], vec![0f32; nb], vec![0i32; nb]);
        let (mut q2, mut d2, mut o2) = (vec![0i8; k], vec![0f32; nb], vec![0i32; nb]);
        quantize_blocks(&x, &mut q1, &mut d1, &mut o1);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `available` reported AVX-512.
        #[allow(unsafe_code)]
        unsafe {
            avx512::quantize_blocks(&x, &mut q2, &mut d2, &mut o2)
        };
        assert_eq!(q1, q2);
        assert_eq!(d1, d2);
        assert_eq!(o1, o2);
        assert_eq!(
            &q1[1..4],
            &[-8, -7, -7],
            "half away from zero: -7.5 → -8, -7 → -7"
        );
    }

    #[test]
    fn widths_the_panels_cannot_take_are_refused() {
        let w = Tensor::zeros((24, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let bytes = q.data().unwrap().into_owned();
        assert!(PanelsQ8::from_q8_0(&bytes, 24, 64).is_none(), "24 columns");
        assert!(
            PanelsQ8::pack(&bytes[1..], 24, 64).is_none(),
            "truncated blocks"
        );
    }
}

//! Attention for a few queries (decoding: 1–16 new tokens per sequence) on the CPU in f32.
//!
//! Through candle, one decoding step's attention is two batched products per layer, each a
//! GEMM call per head on a 1×64 · 64×m problem: the calls' overhead, not the arithmetic,
//! is what costs (about a tenth of a `q8_0` step's CPU time, measured with `perf`). Here each
//! (sequence, head) is one task that scores its keys, takes the softmax and sums the values
//! in one pass over the cache, reading the keys and values where the cache keeps them.

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

/// Up to this many queries per sequence take this path.
pub const MAX_QUERIES: usize = 16;

/// `softmax(q kᵀ · scale + mask) v` as [`super::attention`] computes it, or `None` when
/// this path does not apply (not on the CPU, not f32 or f16, keys and values of different
/// types, more than [`MAX_QUERIES`] queries, tracked gradients, or a layout it does not read).
///
/// Half-precision keys and values are widened row by row as they are read, so a step reads
/// the cache once at its stored size; scores, softmax and sums run in f32 (as candle's
/// softmax does for f16) and the result is returned in the type of `q`, which may differ
/// from the cache's (a quantized stage computes in f32 over an f16 cache).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    let dtype = q.dtype();
    // The mask may be of any float type: it is widened with the queries.
    let all = [Some(q), Some(k), Some(v), mask];
    let stored = k.dtype();
    if !matches!(dtype, DType::F32 | DType::F16)
        || !matches!(stored, DType::F32 | DType::F16)
        || v.dtype() != stored
        || all
            .iter()
            .flatten()
            .any(|t| !matches!(t.device(), Device::Cpu) || t.track_op())
    {
        return Ok(None);
    }
    let (b, h, n, d) = q.dims4()?;
    let (kb, kh, m, kd) = k.dims4()?;
    if n == 0 || n > MAX_QUERIES || (kb, kh, kd) != (b, h, d) || v.dims4()? != (b, h, m, d) {
        return Ok(None);
    }
    // The queries and the mask are small: widened whole.
    let q = q.to_dtype(DType::F32)?.contiguous()?;
    let mask = match mask {
        Some(t) if t.dims2()? != (n, m) => return Ok(None),
        Some(t) => Some(t.to_dtype(DType::F32)?.contiguous()?),
        None => None,
    };
    let out = match stored {
        DType::F16 => heads::<half::f16>(&q, k, v, scale, mask.as_ref())?,
        _ => heads::<f32>(&q, k, v, scale, mask.as_ref())?,
    };
    match out {
        Some(out) => Ok(Some(out.to_dtype(dtype)?)),
        None => Ok(None),
    }
}

/// The per-(sequence, head) tasks over keys and values stored as `T`.
fn heads<T: Widen>(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    let (b, h, n, d) = q.dims4()?;
    let m = k.dim(2)?;
    let (qg, ql) = q.storage_and_layout();
    let (kg, kl) = k.storage_and_layout();
    let (vg, vl) = v.storage_and_layout();
    let (
        candle_core::Storage::Cpu(qs),
        candle_core::Storage::Cpu(ks),
        candle_core::Storage::Cpu(vs),
    ) = (&*qg, &*kg, &*vg)
    else {
        return Ok(None);
    };
    let (Some(kv), Some(vv)) = (
        View::<T>::of(kl, ks.as_slice::<T>()?),
        View::<T>::of(vl, vs.as_slice::<T>()?),
    ) else {
        return Ok(None);
    };
    let qs = &qs.as_slice::<f32>()?[ql.start_offset()..];
    let mg = mask.map(|t| t.storage_and_layout());
    let ms: Option<&[f32]> = match &mg {
        Some((g, l)) => match &**g {
            candle_core::Storage::Cpu(s) => Some(&s.as_slice::<f32>()?[l.start_offset()..]),
            _ => return Ok(None),
        },
        None => None,
    };
    let mut out = vec![0f32; b * h * n * d];
    let kernel = pick::<T>();
    out.par_chunks_mut(n * d).enumerate().for_each(|(bh, o)| {
        let (bi, hi) = (bh / h, bh % h);
        let args = Head {
            q: &qs[bh * n * d..(bh + 1) * n * d],
            k: kv.head(bi, hi),
            v: vv.head(bi, hi),
            m,
            d,
            scale: scale as f32,
            mask: ms,
        };
        kernel(&args, o);
    });
    drop((qg, kg, vg, mg));
    Tensor::from_vec(out, (b, h, n, d), q.device()).map(Some)
}

/// A stored element type of the cache, read as f32.
trait Widen: candle_core::WithDType + Copy + Send + Sync {
    /// Whether the type is f16 (else f32).
    const HALF: bool;

    /// `src` as f32: itself, or converted into `buf` (at least `src.len()` long).
    fn widen<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32];

    /// [`Widen::widen`] with F16C instructions written out, for a kernel compiled with
    /// them (half's slice conversion is a call per eight values, and at batch 4 the calls
    /// cost more than the f16 cache saved).
    ///
    /// # Safety
    /// The CPU must support F16C (and the caller be compiled with it, for speed).
    #[allow(unsafe_code)]
    unsafe fn widen_f16c<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32] {
        Self::widen(src, buf)
    }
}

impl Widen for f32 {
    const HALF: bool = false;

    #[inline(always)]
    fn widen<'a>(src: &'a [Self], _: &'a mut [f32]) -> &'a [f32] {
        src
    }
}

impl Widen for half::f16 {
    const HALF: bool = true;

    #[inline(always)]
    fn widen<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32] {
        use half::slice::HalfFloatSliceExt;
        let buf = &mut buf[..src.len()];
        src.convert_to_f32_slice(buf);
        buf
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    #[allow(unsafe_code)]
    unsafe fn widen_f16c<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32] {
        use std::arch::x86_64::{_mm_loadu_si128, _mm256_cvtph_ps, _mm256_storeu_ps};
        let n = src.len();
        let buf = &mut buf[..n];
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: `i + 8 ≤ n` for both slices; F16C is the caller's contract.
            unsafe {
                let h = _mm_loadu_si128(src.as_ptr().add(i).cast());
                _mm256_storeu_ps(buf.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            }
            i += 8;
        }
        for (d, s) in buf[i..].iter_mut().zip(&src[i..]) {
            *d = s.to_f32();
        }
        buf
    }
}

/// A `(B, H, m, d)` tensor whose `(m, d)` matrices are row-contiguous.
struct View<'a, T> {
    data: &'a [T],
    start: usize,
    strides: [usize; 3],
}

impl<'a, T> View<'a, T> {
    fn of(l: &candle_core::Layout, data: &'a [T]) -> Option<Self> {
        match *l.stride() {
            [sb, sh, sm, 1] => Some(Self {
                data,
                start: l.start_offset(),
                strides: [sb, sh, sm],
            }),
            _ => None,
        }
    }

    /// The rows of one head: `(ptr offset, row stride)` into `data`.
    fn head(&self, b: usize, h: usize) -> Rows<'a, T> {
        Rows {
            data: self.data,
            start: self.start + b * self.strides[0] + h * self.strides[1],
            stride: self.strides[2],
        }
    }
}

struct Rows<'a, T> {
    data: &'a [T],
    start: usize,
    stride: usize,
}

impl<'a, T> Rows<'a, T> {
    #[inline(always)]
    fn row(&self, j: usize, d: usize) -> &'a [T] {
        let s = self.start + j * self.stride;
        &self.data[s..s + d]
    }
}

struct Head<'a, T> {
    q: &'a [f32],
    k: Rows<'a, T>,
    v: Rows<'a, T>,
    m: usize,
    d: usize,
    scale: f32,
    mask: Option<&'a [f32]>,
}

type Kernel<T> = fn(&Head<T>, &mut [f32]);

fn pick<T: Widen>() -> Kernel<T> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            if avx512::available() {
                return avx512::head::<T>;
            }
            if std::arch::is_x86_feature_detected!("f16c") {
                return head_avx2_f16c::<T>;
            }
            return head_avx2::<T>;
        }
    }
    head_generic::<T>
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let split = a.len() - a.len() % 16;
    for (x, y) in a[..split].chunks_exact(16).zip(b[..split].chunks_exact(16)) {
        for i in 0..16 {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    // Pairwise, so that the 16 lanes fold in four vector adds: summed one after the other
    // they were a chain of 15 dependent adds per key.
    for w in [8, 4, 2, 1] {
        for i in 0..w {
            acc[i] += acc[i + w];
        }
    }
    let mut s = acc[0];
    for (x, y) in a[split..].iter().zip(&b[split..]) {
        s += x * y;
    }
    s
}

/// One (sequence, head): for each query, scores over the keys, softmax (max-subtracted, as
/// candle's), then the probability-weighted sum of the values.
/// A row of the cache as f32; `F16C`: through [`Widen::widen_f16c`].
#[inline(always)]
fn widen<'a, T: Widen, const F16C: bool>(src: &'a [T], buf: &'a mut [f32]) -> &'a [f32] {
    if F16C {
        // SAFETY: `F16C` is only set by `head_avx2_f16c`, picked after the CPU reported F16C.
        #[allow(unsafe_code)]
        unsafe {
            T::widen_f16c(src, buf)
        }
    } else {
        T::widen(src, buf)
    }
}

/// `F16C`: read f16 rows with [`Widen::widen_f16c`] (only where the CPU has it).
#[inline(always)]
fn head_body<T: Widen, const F16C: bool>(a: &Head<T>, out: &mut [f32]) {
    let (m, d) = (a.m, a.d);
    let mut p = vec![0f32; m];
    let mut buf = vec![0f32; d];
    for (i, o) in out.chunks_exact_mut(d).enumerate() {
        let qi = &a.q[i * d..(i + 1) * d];
        let mut max = f32::NEG_INFINITY;
        for (j, pj) in p.iter_mut().enumerate() {
            let mut s = dot(qi, widen::<T, F16C>(a.k.row(j, d), &mut buf)) * a.scale;
            if let Some(mask) = a.mask {
                s += mask[i * m + j];
            }
            *pj = s;
            max = max.max(s);
        }
        let mut sum = 0f32;
        for pj in p.iter_mut() {
            *pj = (*pj - max).exp();
            sum += *pj;
        }
        let inv = 1.0 / sum;
        o.fill(0.0);
        for (j, pj) in p.iter().enumerate() {
            let w = pj * inv;
            for (oc, vc) in o.iter_mut().zip(widen::<T, F16C>(a.v.row(j, d), &mut buf)) {
                *oc = w.mul_add(*vc, *oc);
            }
        }
    }
}

fn head_generic<T: Widen>(a: &Head<T>, out: &mut [f32]) {
    head_body::<T, false>(a, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn head_avx2_impl<T: Widen>(a: &Head<T>, out: &mut [f32]) {
    head_body::<T, false>(a, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn head_avx2_f16c_impl<T: Widen>(a: &Head<T>, out: &mut [f32]) {
    head_body::<T, true>(a, out);
}

#[cfg(target_arch = "x86_64")]
fn head_avx2_f16c<T: Widen>(a: &Head<T>, out: &mut [f32]) {
    // SAFETY: only selected by `pick` after the CPU reported AVX2, FMA and F16C.
    #[allow(unsafe_code)]
    unsafe {
        head_avx2_f16c_impl(a, out)
    }
}

#[cfg(target_arch = "x86_64")]
fn head_avx2<T: Widen>(a: &Head<T>, out: &mut [f32]) {
    // SAFETY: only selected by `pick` after the CPU reported AVX2 and FMA.
    #[allow(unsafe_code)]
    unsafe {
        head_avx2_impl(a, out)
    }
}

/// AVX-512 for head widths that are whole vectors (64 in the released stages): a query's
/// 16-wide parts stay in registers, four keys are scored at a time (four independent chains,
/// each reduced once), and the values are summed in two alternating sets of accumulators.
/// Through the generic kernel each key cost a horizontal sum of 16 lanes as one chain of
/// dependent adds: ≈ 14 % of a released-size `q8_0` step at batch 1 (`perf`).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    use super::{Head, Widen};
    use std::arch::x86_64::*;

    /// The widest head this kernel takes (in 16-wide parts, kept in registers).
    const MAX_PARTS: usize = 8;

    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
    }

    /// One (sequence, head), as [`super::head_body`] computes it (the sums in another
    /// order); heads whose width 16 does not divide, or wider than 128, go there.
    pub(super) fn head<T: Widen>(a: &Head<T>, out: &mut [f32]) {
        if !a.d.is_multiple_of(16) || a.d > 16 * MAX_PARTS {
            return super::head_avx2_f16c::<T>(a, out);
        }
        // SAFETY: `pick` selects this only where `available()` (AVX-512 F, which has the
        // f16 conversion); the width was checked above.
        unsafe { head_impl(a, out) }
    }

    /// 16 values of a row at `p` as f32.
    ///
    /// # Safety
    /// AVX-512 F; 16 values readable at `p`.
    #[target_feature(enable = "avx512f")]
    unsafe fn load16<T: Widen>(p: *const T) -> __m512 {
        // SAFETY: the caller's contract.
        unsafe {
            if T::HALF {
                _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
            } else {
                _mm512_loadu_ps(p.cast())
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    fn head_impl<T: Widen>(a: &Head<T>, out: &mut [f32]) {
        let (m, d) = (a.m, a.d);
        let parts = d / 16;
        let mut p = vec![0f32; m];
        for (i, o) in out.chunks_exact_mut(d).enumerate() {
            let qi = &a.q[i * d..(i + 1) * d];
            let mut q = [_mm512_setzero_ps(); MAX_PARTS];
            for (c, qc) in q.iter_mut().enumerate().take(parts) {
                // SAFETY: `16c + 16 ≤ d = qi.len()`.
                *qc = unsafe { _mm512_loadu_ps(qi.as_ptr().add(16 * c)) };
            }
            let mut max = f32::NEG_INFINITY;
            let mut j = 0;
            while j < m {
                let n = (m - j).min(4);
                let mut acc = [_mm512_setzero_ps(); 4];
                for (u, s) in acc.iter_mut().enumerate().take(n) {
                    let row = a.k.row(j + u, d);
                    for (c, qc) in q.iter().enumerate().take(parts) {
                        // SAFETY: `row` holds `d` values (a bounds-checked slice).
                        let kc = unsafe { load16(row.as_ptr().add(16 * c)) };
                        *s = _mm512_fmadd_ps(*qc, kc, *s);
                    }
                }
                for (u, s) in acc.iter().enumerate().take(n) {
                    let mut v = _mm512_reduce_add_ps(*s) * a.scale;
                    if let Some(mask) = a.mask {
                        v += mask[i * m + j + u];
                    }
                    p[j + u] = v;
                    max = max.max(v);
                }
                j += n;
            }
            let mut sum = 0f32;
            for pj in p.iter_mut() {
                *pj = (*pj - max).exp();
                sum += *pj;
            }
            let inv = 1.0 / sum;
            let mut acc = [[_mm512_setzero_ps(); MAX_PARTS]; 2];
            for (j, pj) in p.iter().enumerate() {
                let w = _mm512_set1_ps(pj * inv);
                let row = a.v.row(j, d);
                for (c, s) in acc[j % 2].iter_mut().enumerate().take(parts) {
                    // SAFETY: as for the keys.
                    let vc = unsafe { load16(row.as_ptr().add(16 * c)) };
                    *s = _mm512_fmadd_ps(w, vc, *s);
                }
            }
            let [even, odd] = &acc;
            for (c, (e, f)) in even.iter().zip(odd).enumerate().take(parts) {
                // SAFETY: `16c + 16 ≤ d = o.len()`.
                unsafe { _mm512_storeu_ps(o.as_mut_ptr().add(16 * c), _mm512_add_ps(*e, *f)) };
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// candle's ops, as `nn::attention` computed it before this path.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, mask: Option<&Tensor>) -> Tensor {
        let s = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
        let s = match mask {
            Some(m) => s.broadcast_add(m).unwrap(),
            None => s,
        };
        candle_nn::ops::softmax_last_dim(&s)
            .unwrap()
            .matmul(v)
            .unwrap()
    }

    /// The largest absolute difference between two f32 tensors of one shape.
    pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn matches_candle_on_cache_views_with_and_without_mask() {
        let dev = Device::Cpu;
        let (b, h, cap) = (2, 3, 40);
        // 20: the generic kernel; 64: AVX-512's where the CPU has it.
        for (d, n, m) in [
            (20, 1, 1),
            (20, 1, 17),
            (20, 4, 33),
            (20, 16, 40),
            (64, 1, 1),
        ]
        .into_iter()
        .chain([(64, 1, 18), (64, 3, 37), (64, 16, 40), (32, 2, 5)])
        {
            let q = Tensor::randn(0f32, 1.0, (b, h, n, d), &dev).unwrap();
            // Views of a larger cache, as `KvCache::write` returns them.
            let kc = Tensor::randn(0f32, 1.0, (b, h, cap, d), &dev).unwrap();
            let vc = Tensor::randn(0f32, 1.0, (b, h, cap, d), &dev).unwrap();
            let (k, v) = (kc.narrow(2, 0, m).unwrap(), vc.narrow(2, 0, m).unwrap());
            let mask = crate::nn::causal_mask(n, m - n, 0, &dev).unwrap();
            for mask in [None, mask.as_ref()] {
                let want = reference(&q, &k, &v, 0.125, mask);
                // f16 caches: the same inputs rounded to f16, computed in f32 and the
                // result rounded once (candle's f16 path rounds its probabilities too).
                for (dtype, tol) in [(DType::F32, 1e-5), (DType::F16, 4e-3)] {
                    let h = |t: &Tensor| t.to_dtype(dtype).unwrap();
                    let mask_h = mask.map(h);
                    let got = attention(&h(&q), &h(&k), &h(&v), 0.125, mask_h.as_ref())
                        .unwrap()
                        .expect("few-query path");
                    assert_eq!(got.dtype(), dtype);
                    let diff = max_abs_diff(&got.to_dtype(DType::F32).unwrap(), &want);
                    assert!(
                        diff < tol,
                        "{dtype:?} d {d} n {n} m {m} mask {}: {diff}",
                        mask.is_some()
                    );
                }
            }
        }
    }

    /// A quantized stage's step: f32 queries over an f16 cache, checked against candle's
    /// ops on the cache widened to f32 (the cache's rounding is the only difference).
    #[test]
    fn f32_queries_over_an_f16_cache() {
        let dev = Device::Cpu;
        let (b, h, d, cap) = (2, 3, 64, 40);
        for (n, m) in [(1, 1), (1, 33), (5, 40)] {
            let q = Tensor::randn(0f32, 1.0, (b, h, n, d), &dev).unwrap();
            let kc = Tensor::randn(0f32, 1.0, (b, h, cap, d), &dev).unwrap();
            let vc = Tensor::randn(0f32, 1.0, (b, h, cap, d), &dev).unwrap();
            let half = |t: &Tensor| t.narrow(2, 0, m).unwrap().to_dtype(DType::F16).unwrap();
            let (k, v) = (half(&kc), half(&vc));
            let mask = crate::nn::causal_mask(n, m - n, 0, &dev).unwrap();
            let wide = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let want = reference(&q, &wide(&k), &wide(&v), 0.125, mask.as_ref());
            let got = attention(&q, &k, &v, 0.125, mask.as_ref())
                .unwrap()
                .expect("few-query path");
            assert_eq!(got.dtype(), DType::F32);
            let diff = max_abs_diff(&got, &want);
            assert!(diff < 1e-5, "n {n} m {m}: {diff}");
            // More queries than this path takes: `nn::attention` widens the cache itself.
            let many = Tensor::randn(0f32, 1.0, (b, h, 20, d), &dev).unwrap();
            let got = crate::nn::attention(&many, &k, &v, 0.125, None).unwrap();
            let want = reference(&many, &wide(&k), &wide(&v), 0.125, None);
            let diff = max_abs_diff(&got, &want);
            assert!(diff < 1e-5, "20 queries, m {m}: {diff}");
        }
    }

    #[test]
    fn declines_what_it_does_not_compute() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((1, 2, 17, 8), DType::F32, &dev).unwrap();
        let k = Tensor::zeros((1, 2, 20, 8), DType::F32, &dev).unwrap();
        assert!(
            attention(&q, &k, &k, 1.0, None).unwrap().is_none(),
            "17 queries"
        );
        let q = Tensor::zeros((1, 2, 1, 8), DType::BF16, &dev).unwrap();
        let k = k.to_dtype(DType::BF16).unwrap();
        assert!(attention(&q, &k, &k, 1.0, None).unwrap().is_none(), "bf16");
        let q16 = Tensor::zeros((1, 2, 1, 8), DType::F16, &dev).unwrap();
        let k32 = Tensor::zeros((1, 2, 20, 8), DType::F32, &dev).unwrap();
        let v16 = k32.to_dtype(DType::F16).unwrap();
        assert!(
            attention(&q16, &k32, &v16, 1.0, None).unwrap().is_none(),
            "keys and values of different types"
        );
        // Keys whose rows are not contiguous (a transposed view).
        let q = Tensor::zeros((1, 2, 1, 8), DType::F32, &dev).unwrap();
        let kt = Tensor::zeros((1, 2, 8, 20), DType::F32, &dev)
            .unwrap()
            .transpose(2, 3)
            .unwrap();
        assert!(
            attention(&q, &kt, &kt, 1.0, None).unwrap().is_none(),
            "strided keys"
        );
    }
}

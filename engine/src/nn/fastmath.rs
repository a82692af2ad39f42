//! Branch-free scalar math that loops over slices vectorize (libm's `expf` is a call per value).
#![allow(unsafe_code)] // AVX2 instantiations of the loops, called once the CPU has the features.

/// exp(x) for x ≤ 88, branch-free so that loops over it vectorize (Cephes `expf` polynomial,
/// about 1 ulp); underflows to ~0 below −87.
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // n = round(x / ln 2) via the 1.5·2²³ trick, which also leaves n in the low mantissa bits
    // of t, so 2ⁿ is built with integer ops only (a float→int cast would not vectorize).
    let t = x * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = t - 12_582_912.0;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(t.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23)
}

/// Lanes of the row loops: independent accumulators, so that sums and maxima vectorize.
pub(crate) const LANES: usize = 16;

/// The largest value of `x` and the sum of its values (−∞ and 0 for an empty slice).
pub fn max_and_sum(x: &[f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected.
        return unsafe { max_and_sum_avx2(x) };
    }
    max_and_sum_plain(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn max_and_sum_avx2(x: &[f32]) -> (f32, f32) {
    max_and_sum_plain(x)
}

#[inline(always)]
fn max_and_sum_plain(x: &[f32]) -> (f32, f32) {
    let mut maxes = [f32::NEG_INFINITY; LANES];
    let mut sums = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for ((m, s), &v) in maxes.iter_mut().zip(&mut sums).zip(c) {
            *m = if v > *m { v } else { *m };
            *s += v;
        }
    }
    let (mut max, mut sum) = (f32::NEG_INFINITY, sums.iter().sum::<f32>());
    for &v in chunks.remainder().iter().chain(&maxes) {
        max = if v > max { v } else { max };
    }
    sum += chunks.remainder().iter().sum::<f32>();
    (max, sum)
}

/// Writes `exp(x − shift)` of every value of `x` into `out` (as long as `x`) and returns their
/// sum: a softmax's numerators and denominator for `shift` = the row's maximum.
pub fn exp_shifted(x: &[f32], shift: f32, out: &mut [f32]) -> f32 {
    assert_eq!(x.len(), out.len(), "exp_shifted: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected.
        return unsafe { exp_shifted_avx2(x, shift, out) };
    }
    exp_shifted_plain(x, shift, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_shifted_avx2(x: &[f32], shift: f32, out: &mut [f32]) -> f32 {
    exp_shifted_plain(x, shift, out)
}

#[inline(always)]
fn exp_shifted_plain(x: &[f32], shift: f32, out: &mut [f32]) -> f32 {
    let mut sums = [0f32; LANES];
    let mut xs = x.chunks_exact(LANES);
    let mut os = out.chunks_exact_mut(LANES);
    for (c, o) in (&mut xs).zip(&mut os) {
        for ((s, d), &v) in sums.iter_mut().zip(o).zip(c) {
            *d = exp_approx(v - shift);
            *s += *d;
        }
    }
    let mut sum = sums.iter().sum::<f32>();
    for (d, &v) in os.into_remainder().iter_mut().zip(xs.remainder()) {
        *d = exp_approx(v - shift);
        sum += *d;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::{exp_approx, exp_shifted, max_and_sum};

    #[test]
    fn row_helpers_match_plain_loops() {
        for n in [0usize, 1, 15, 16, 17, 100, 1024] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let (max, sum) = max_and_sum(&x);
            assert_eq!(max, x.iter().copied().fold(f32::NEG_INFINITY, f32::max));
            let want: f32 = x.iter().sum();
            assert!(
                (sum - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "{n}: {sum} vs {want}"
            );
            let mut out = vec![0f32; n];
            let total = exp_shifted(&x, 1.5, &mut out);
            let mut want_total = 0f64;
            for (o, v) in out.iter().zip(&x) {
                let e = ((v - 1.5) as f64).exp();
                assert!(((*o as f64) - e).abs() <= 1e-6 * e, "{n}: exp({v} − 1.5)");
                want_total += e;
            }
            assert!(((total as f64) - want_total).abs() <= 1e-5 * want_total.max(1.0));
        }
    }

    #[test]
    fn exp_approx_is_close_to_libm() {
        let (mut worst, mut at) = (0f64, 0f32);
        for i in -86_990..=87_990 {
            let x = i as f32 * 1e-3;
            let (a, b) = (exp_approx(x) as f64, (x as f64).exp());
            if ((a - b) / b).abs() > worst {
                (worst, at) = (((a - b) / b).abs(), x);
            }
        }
        assert!(worst < 5e-7, "relative error {worst} at {at}");
        assert!(exp_approx(-1e30) < 1e-37);
        assert!(exp_approx(f32::NEG_INFINITY) < 1e-37);
    }
}

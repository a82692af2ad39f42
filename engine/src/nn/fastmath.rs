//! Branch-free scalar math that loops over slices vectorize (libm's `expf` is a call per value).

/// exp(x) for x ≤ 88, branch-free so that loops over it vectorize (Cephes `expf` polynomial,
/// about 1 ulp); underflows to ~0 below −87.
#[inline(always)]
pub(crate) fn exp_approx(x: f32) -> f32 {
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

#[cfg(test)]
mod tests {
    use super::exp_approx;

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

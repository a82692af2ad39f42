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
    let mut yt = vec![0f32; out * rows];
    let kernel = pick_kernel();
    yt.par_chunks_mut(rows * CHUNK)
        .enumerate()
        .for_each(|(c, block)| {
            for (j, y) in block.chunks_mut(rows).enumerate() {
                let o = c * CHUNK + j;
                kernel(x, k, &w[o * k..(o + 1) * k], y);
            }
        });
    let mut y = vec![0f32; rows * out];
    for (o, col) in yt.chunks(rows).enumerate() {
        for (r, v) in col.iter().enumerate() {
            y[r * out + o] = *v;
        }
    }
    y
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
}

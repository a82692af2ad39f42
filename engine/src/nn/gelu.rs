//! GELU with the exact erf, as `nn.GELU()`: a fused kernel for inference and its backward for
//! training.

use candle_core::{DType, Device, Result, Tensor};

use super::grad;

/// GELU in its exact form `x · Φ(x) = x/2 · (1 + erf(x/√2))` (PyTorch's `nn.GELU()` default).
///
/// On the CPU this uses [`GeluErf`] (the vectorised erf PyTorch itself uses on the CPU, about
/// ten times faster than candle's scalar `gelu_erf`); elsewhere candle's `gelu_erf`.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if x.track_op() {
        return match (x.device(), x.dtype()) {
            (Device::Cpu, DType::F32) => x.contiguous()?.apply_op1(GeluErf),
            _ => x.gelu_erf(),
        };
    }
    match (x.device(), x.dtype()) {
        (Device::Cpu, DType::F32 | DType::F16 | DType::BF16) => {
            x.contiguous()?.apply_op1_no_bwd(&GeluErf)
        }
        _ => x.gelu_erf(),
    }
}

/// Exact-form GELU for CPU tensors (f32, f16, bf16; computed in f32).
///
/// erf is evaluated with Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5·10⁻⁷), the same
/// approximation as PyTorch's vectorised CPU `erf` (`Vectorized<float>::erf`), with a
/// branch-free `exp` that the compiler vectorises; large tensors are split over threads.
#[derive(Debug, Clone, Copy)]
pub struct GeluErf;

impl GeluErf {
    /// Elements below which the op stays on the calling thread.
    const PARALLEL_MIN: usize = 1 << 15;

    /// The scalar kernel (written so that a loop over it vectorises).
    #[inline(always)]
    pub fn f32(x: f32) -> f32 {
        const P: f32 = 0.327_591_1;
        const A1: f32 = 0.254_829_6;
        const A2: f32 = -0.284_496_74;
        const A3: f32 = 1.421_413_7;
        const A4: f32 = -1.453_152;
        const A5: f32 = 1.061_405_4;
        let z = x * std::f32::consts::FRAC_1_SQRT_2;
        let a = z.abs();
        let t = 1.0 / (1.0 + P * a);
        let poly = t * (A1 + t * (A2 + t * (A3 + t * (A4 + t * A5))));
        let erf_abs = 1.0 - poly * exp_neg(a * a);
        let erf = f32::from_bits(erf_abs.to_bits() | (z.to_bits() & 0x8000_0000));
        0.5 * x * (1.0 + erf)
    }

    /// The kernel over a slice, compiled for the widest vectors the CPU has: the baseline
    /// x86-64 build vectorises it 4 lanes wide (SSE), 8 % of a `q8_0` encoder pass in `perf`.
    /// The same operations in the same order in every version, so the same bits (Rust does not
    /// fuse a multiply and an add on its own).
    #[allow(unsafe_code)]
    fn map_f32(src: &[f32], dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512 F.
                return unsafe { map_f32_avx512(src, dst) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                return unsafe { map_f32_avx2(src, dst) };
            }
        }
        map_f32_body(src, dst)
    }

    /// Runs `f` over matching chunks of `src` and `dst` on the current rayon pool (candle's,
    /// inside `Device::with_context`), whose threads are already running: spawning threads
    /// for every call cost tens of microseconds each.
    fn parallel<S: Sync, T: Send>(src: &[S], dst: &mut [T], f: impl Fn(&[S], &mut [T]) + Sync) {
        use rayon::prelude::*;
        let threads = rayon::current_num_threads();
        if threads < 2 || src.len() < Self::PARALLEL_MIN {
            f(src, dst);
            return;
        }
        let chunk = src.len().div_ceil(threads);
        src.par_chunks(chunk)
            .zip(dst.par_chunks_mut(chunk))
            .for_each(|(s, d)| f(s, d));
    }

    /// f16/bf16: converted block by block to f32 and back.
    fn map_half<T: Copy>(src: &[T], dst: &mut [T])
    where
        [T]: half::slice::HalfFloatSliceExt,
    {
        use half::slice::HalfFloatSliceExt;
        const BLOCK: usize = 1024;
        let mut a = [0f32; BLOCK];
        let mut b = [0f32; BLOCK];
        for (s, d) in src.chunks(BLOCK).zip(dst.chunks_mut(BLOCK)) {
            let n = s.len();
            s.convert_to_f32_slice(&mut a[..n]);
            Self::map_f32(&a[..n], &mut b[..n]);
            d.convert_from_f32_slice(&b[..n]);
        }
    }
}

impl candle_core::CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf-cpu"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage;
        use candle_core::backend::BackendStorage;
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("gelu: the input must be contiguous")
        };
        let out = match storage {
            CpuStorage::F32(v) => {
                let src = &v[start..end];
                let mut dst = vec![0f32; src.len()];
                Self::parallel(src, &mut dst, Self::map_f32);
                CpuStorage::F32(dst)
            }
            CpuStorage::F16(v) => {
                let src = &v[start..end];
                let mut dst = vec![half::f16::ZERO; src.len()];
                Self::parallel(src, &mut dst, Self::map_half);
                CpuStorage::F16(dst)
            }
            CpuStorage::BF16(v) => {
                let src = &v[start..end];
                let mut dst = vec![half::bf16::ZERO; src.len()];
                Self::parallel(src, &mut dst, Self::map_half);
                CpuStorage::BF16(dst)
            }
            other => candle_core::bail!("gelu: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, layout.shape().clone()))
    }

    /// `dy · gelu'(x)` (f32 on the CPU; used only when training).
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let dx = arg
            .contiguous()?
            .apply_op2_no_bwd(&grad_res.contiguous()?, &grad::GeluErfGrad)?;
        Ok(Some(dx))
    }
}

#[inline(always)]
fn map_f32_body(src: &[f32], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = GeluErf::f32(s);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn map_f32_avx512(src: &[f32], dst: &mut [f32]) {
    map_f32_body(src, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn map_f32_avx2(src: &[f32], dst: &mut [f32]) {
    map_f32_body(src, dst)
}

/// `exp(−y)` for `y ≥ 0` (relative error ~1e-7; 0 below f32's range), branch-free.
#[inline(always)]
fn exp_neg(y: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Rounding by the 1.5·2²³ trick (no `round` instruction in baseline x86-64).
    const MAGIC: f32 = 12_582_912.0;
    let x = (-y).max(-87.0);
    let t = x * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    // exp(r) on |r| ≤ ln2/2: degree-6 Taylor/minimax polynomial.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67
                    + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    // 2ⁿ from the low mantissa bits of t, which hold n: a float→int cast (`n as i32`)
    // saturates, and its checks kept the loop scalar there.
    let scale = f32::from_bits(t.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused backward against candle's own GELU and autograd, over several parallel tasks.
    #[test]
    fn backward_matches_candles_autograd() {
        let mut xs: Vec<f32> = (0..40_001)
            .map(|i| -9.0 + 18.0 * i as f32 / 40_000.0)
            .collect();
        xs.extend([0.0, -0.0, 1e-4, -1e-4, 1e-30, 30.0, -30.0]);
        let n = xs.len();
        let x = candle_core::Var::from_vec(xs, n, &Device::Cpu).unwrap();
        let c: Vec<f32> = (0..n).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
        let c = Tensor::from_vec(c, n, &Device::Cpu).unwrap();
        let grad = |y: Tensor| {
            let g = (y * &c).unwrap().sum_all().unwrap().backward().unwrap();
            g.get(&x).unwrap().to_vec1::<f32>().unwrap()
        };
        let ours = grad(gelu_erf(&x).unwrap());
        let theirs = grad(x.gelu_erf().unwrap());
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert!(
                (a - b).abs() < 1e-5 * (1.0 + b.abs()),
                "value {i}: {a} vs {b}"
            );
        }
    }

    /// Every compiled version gives the scalar kernel's bits, tails and specials included.
    #[test]
    #[allow(unsafe_code)]
    fn vector_versions_give_the_scalar_bits() {
        let mut xs: Vec<f32> = (0..100_003)
            .map(|i| -15.0 + 30.0 * i as f32 / 100_002.0)
            .collect();
        xs.extend([0.0, -0.0, 1e-30, -1e-30, 88.0, -88.0, 1e4, -1e4]);
        let want: Vec<u32> = xs.iter().map(|&x| GeluErf::f32(x).to_bits()).collect();
        let mut got = vec![0f32; xs.len()];
        let bits = |v: &[f32]| v.iter().map(|y| y.to_bits()).collect::<Vec<_>>();
        map_f32_body(&xs, &mut got);
        assert_eq!(bits(&got), want, "generic loop");
        GeluErf::map_f32(&xs, &mut got);
        assert_eq!(bits(&got), want, "dispatched");
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: checked just above.
                unsafe { map_f32_avx2(&xs, &mut got) };
                assert_eq!(bits(&got), want, "AVX2");
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: checked just above.
                unsafe { map_f32_avx512(&xs, &mut got) };
                assert_eq!(bits(&got), want, "AVX-512");
            }
        }
        let mut par = vec![0f32; xs.len()];
        GeluErf::parallel(&xs, &mut par, GeluErf::map_f32);
        assert_eq!(bits(&par), want, "split over threads");
    }
}

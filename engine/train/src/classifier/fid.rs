//! Fréchet distance between two feature sets (FID in the classifier's feature space).
//!
//! `FID = |μ₁ − μ₂|² + tr C₁ + tr C₂ − 2 tr √(√C₁ C₂ √C₁)`, all in f64. `√C₁ C₂ √C₁` is symmetric
//! positive semi-definite and has the eigenvalues of `C₁C₂`, so both square roots come from a
//! symmetric (Jacobi) eigendecomposition; tiny negative eigenvalues from rounding count as 0.

use tessera_engine::{Error, Result};

/// Mean and (unbiased, n − 1) covariance of the rows of `x` (n × d).
pub fn mean_cov(x: &[Vec<f32>]) -> Result<(Vec<f64>, Vec<f64>)> {
    let n = x.len();
    if n < 2 {
        return Err(Error::Input(format!(
            "FID needs at least 2 feature vectors per set, got {n}"
        )));
    }
    let d = x[0].len();
    if d == 0 || x.iter().any(|r| r.len() != d) {
        return Err(Error::Input(
            "FID: feature vectors must be non-empty and of one length".into(),
        ));
    }
    let mut mu = vec![0f64; d];
    for r in x {
        for (m, v) in mu.iter_mut().zip(r) {
            *m += f64::from(*v);
        }
    }
    mu.iter_mut().for_each(|m| *m /= n as f64);
    let mut cov = vec![0f64; d * d];
    let mut c = vec![0f64; d];
    for r in x {
        for (ci, (v, m)) in c.iter_mut().zip(r.iter().zip(&mu)) {
            *ci = f64::from(*v) - m;
        }
        for i in 0..d {
            let ci = c[i];
            for j in i..d {
                cov[i * d + j] += ci * c[j];
            }
        }
    }
    for i in 0..d {
        for j in i..d {
            let v = cov[i * d + j] / (n - 1) as f64;
            cov[i * d + j] = v;
            cov[j * d + i] = v;
        }
    }
    Ok((mu, cov))
}

/// Eigenvalues and eigenvectors (columns of the returned row-major matrix) of a symmetric
/// `d`×`d` matrix, by cyclic Jacobi rotations.
pub fn sym_eigen(a: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0f64; d * d];
    for i in 0..d {
        v[i * d + i] = 1.0;
    }
    let scale: f64 = a
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    for _sweep in 0..100 {
        let off: f64 = (0..d)
            .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * d + j] * a[i * d + j])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-15 * scale {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let (app, aqq) = (a[p * d + p], a[q * d + q]);
                let theta = (aqq - app) / (2.0 * apq);
                // Smaller root of t² + 2θt − 1 = 0 (signum(0) = 1 in Rust).
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // A ← Jᵀ A J on rows/columns p and q.
                for k in 0..d {
                    let (akp, akq) = (a[k * d + p], a[k * d + q]);
                    a[k * d + p] = c * akp - s * akq;
                    a[k * d + q] = s * akp + c * akq;
                }
                for k in 0..d {
                    let (apk, aqk) = (a[p * d + k], a[q * d + k]);
                    a[p * d + k] = c * apk - s * aqk;
                    a[q * d + k] = s * apk + c * aqk;
                }
                for k in 0..d {
                    let (vkp, vkq) = (v[k * d + p], v[k * d + q]);
                    v[k * d + p] = c * vkp - s * vkq;
                    v[k * d + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}

/// √A of a symmetric positive semi-definite matrix (negative eigenvalues clamped to 0).
fn sym_sqrt(a: &[f64], d: usize) -> Vec<f64> {
    let (l, v) = sym_eigen(a, d);
    let s: Vec<f64> = l.iter().map(|x| x.max(0.0).sqrt()).collect();
    let mut out = vec![0f64; d * d];
    for i in 0..d {
        for j in 0..d {
            out[i * d + j] = (0..d).map(|k| v[i * d + k] * s[k] * v[j * d + k]).sum();
        }
    }
    out
}

fn matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut out = vec![0f64; d * d];
    for i in 0..d {
        for k in 0..d {
            let aik = a[i * d + k];
            for j in 0..d {
                out[i * d + j] += aik * b[k * d + j];
            }
        }
    }
    out
}

/// Fréchet distance between the Gaussians fitted to two feature sets (rows = samples, at least
/// 2 each, same dimension).
pub fn fid(a: &[Vec<f32>], b: &[Vec<f32>]) -> Result<f64> {
    let (mu1, c1) = mean_cov(a)?;
    let (mu2, c2) = mean_cov(b)?;
    let d = mu1.len();
    if mu2.len() != d {
        return Err(Error::Input(format!(
            "FID: feature dimensions differ ({d} vs {})",
            mu2.len()
        )));
    }
    let s1 = sym_sqrt(&c1, d);
    let mut m = matmul(&matmul(&s1, &c2, d), &s1, d);
    // Symmetrise away rounding before the eigendecomposition.
    for i in 0..d {
        for j in i + 1..d {
            let v = 0.5 * (m[i * d + j] + m[j * d + i]);
            m[i * d + j] = v;
            m[j * d + i] = v;
        }
    }
    let (l, _) = sym_eigen(&m, d);
    let tr_sqrt: f64 = l.iter().map(|x| x.max(0.0).sqrt()).sum();
    let diff: f64 = mu1.iter().zip(&mu2).map(|(x, y)| (x - y) * (x - y)).sum();
    let tr = |c: &[f64]| (0..d).map(|i| c[i * d + i]).sum::<f64>();
    Ok((diff + tr(&c1) + tr(&c2) - 2.0 * tr_sqrt).max(0.0))
}

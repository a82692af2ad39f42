//! Float32 CPU kernels for the VQGAN hot spots.
//!
//! candle's CPU conv2d (im2col + gemm) and its op-by-op GroupNorm dominate decoding time at
//! 256×256, so here 3×3 convolutions use Winograd's minimal filtering (Lavin & Gray 2016): a
//! transform of input tiles, one batched candle matmul per transformed position (the bulk of the
//! work, done by gemm's SIMD kernels), and an inverse transform. GroupNorm and swish are fused
//! into two passes. The transforms are written as loops over contiguous rows so that they
//! auto-vectorize. Every function returns `None` where it does not apply (other device or dtype)
//! and the caller falls back to candle ops.

use candle_core::{DType, Device, Result, Storage, Tensor};

/// Transform matrices of Winograd F(M×M, 3×3); N = M + 2 is the input tile side.
struct Transform<const M: usize, const N: usize> {
    bt: [[f32; N]; N],
    g: [[f64; 3]; N],
    at: [[f32; N]; M],
}

/// F(2×2, 3×3): 4×4 tiles, 2.25× fewer multiplications than direct convolution; its
/// coefficients (0, ±1, ±1/2) keep float32 rounding at the level of direct convolution.
const F2: Transform<2, 4> = Transform {
    bt: [
        [1., 0., -1., 0.],
        [0., 1., 1., 0.],
        [0., -1., 1., 0.],
        [0., 1., 0., -1.],
    ],
    g: [
        [1., 0., 0.],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0., 0., 1.],
    ],
    at: [[1., 1., 1., 0.], [0., 1., -1., -1.]],
};

/// Runs `f(i, chunk_i)` over the `chunk`-sized pieces of `data`, spread over candle's thread
/// count in contiguous runs.
fn par_chunks(data: &mut [f32], chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if chunk == 0 || data.is_empty() {
        return;
    }
    let n_chunks = data.len().div_ceil(chunk);
    let threads = candle_core::utils::get_num_threads().clamp(1, n_chunks);
    if threads == 1 {
        data.chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
        return;
    }
    let per = n_chunks.div_ceil(threads);
    std::thread::scope(|s| {
        for (t, part) in data.chunks_mut(per * chunk).enumerate() {
            let f = &f;
            s.spawn(move || {
                for (i, c) in part.chunks_mut(chunk).enumerate() {
                    f(t * per + i, c)
                }
            });
        }
    });
}

/// `out = Σ coef_k · src_k` over the nonzero coefficients (elementwise, vectorizable).
#[inline(always)]
fn lincomb<'a>(out: &mut [f32], terms: impl Iterator<Item = (f32, &'a [f32])>) {
    let mut first = true;
    for (c, src) in terms.filter(|(c, _)| *c != 0.0) {
        if first {
            out.iter_mut().zip(src).for_each(|(o, &s)| *o = c * s);
            first = false;
        } else {
            out.iter_mut().zip(src).for_each(|(o, &s)| *o += c * s);
        }
    }
    if first {
        out.fill(0.0);
    }
}

/// Runs `f` on the contiguous f32 data of a CPU tensor; `None` for other devices or dtypes.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<Option<R>> {
    if t.dtype() != DType::F32 || !t.device().is_cpu() {
        return Ok(None);
    }
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Ok(None);
    };
    let start = layout.start_offset();
    let data = cpu
        .as_slice::<f32>()?
        .get(start..start + t.elem_count())
        .ok_or_else(|| candle_core::Error::Msg("vqgan: tensor storage too short".into()))?;
    Ok(Some(f(data)))
}

/// A 3×3, stride 1, padding 1 convolution with its weights pre-transformed for Winograd F(2×2).
pub(crate) struct Winograd {
    /// Transformed weights (16, c_out, c_in).
    u: Tensor,
    bias: Vec<f32>,
    c_in: usize,
    c_out: usize,
}

impl Winograd {
    /// Transforms `weight` (c_out, c_in, 3, 3); `None` unless it is f32 on the CPU.
    pub(crate) fn new(weight: &Tensor, bias: &Tensor) -> Result<Option<Self>> {
        if weight.dtype() != DType::F32 || !weight.device().is_cpu() {
            return Ok(None);
        }
        let (c_out, c_in, _, _) = weight.dims4()?;
        let w = weight.flatten_all()?.to_vec1::<f32>()?;
        let t = &F2;
        let nn = 16;
        let mut u = vec![0f32; nn * c_out * c_in];
        for (oi, g) in w.chunks_exact(9).enumerate() {
            // U = G g Gᵀ, in f64 so that the weights carry no extra rounding.
            for i in 0..4 {
                for j in 0..4 {
                    let mut acc = 0f64;
                    for a in 0..3 {
                        for b in 0..3 {
                            acc += t.g[i][a] * g[a * 3 + b] as f64 * t.g[j][b];
                        }
                    }
                    u[(i * 4 + j) * c_out * c_in + oi] = acc as f32;
                }
            }
        }
        Ok(Some(Self {
            u: Tensor::from_vec(u, (nn, c_out, c_in), &Device::Cpu)?,
            bias: bias.to_dtype(DType::F32)?.to_vec1()?,
            c_in,
            c_out,
        }))
    }

    /// Convolves `x` (B, c_in, H, W); `None` unless `x` is f32 on the CPU.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let (b, c, h, w) = x.dims4()?;
        if c != self.c_in {
            candle_core::bail!("vqgan: conv expects {} channels, got {c}", self.c_in);
        }
        let Some(v) = with_f32(x, |data| input_transform(&F2, data, b, c, h, w))? else {
            return Ok(None);
        };
        let tiles = b * h.div_ceil(2) * w.div_ceil(2);
        // v is (c_in, 16, tiles); the matmul wants (16, c_in, tiles), a strided view.
        let v = Tensor::from_vec(v, (c, 16, tiles), &Device::Cpu)?.transpose(0, 1)?;
        let m = self.u.matmul(&v)?;
        let out = with_f32(&m, |m| {
            output_transform(&F2, m, &self.bias, b, self.c_out, h, w)
        })?;
        out.map(|o| Tensor::from_vec(o, (b, self.c_out, h, w), &Device::Cpu))
            .transpose()
    }
}

/// Bᵀ d B for every N×N input tile (stride M, zero padding 1) of every channel.
/// Returns (c, N², b·tiles) with tiles in raster order per image.
fn input_transform<const M: usize, const N: usize>(
    t: &Transform<M, N>,
    x: &[f32],
    b: usize,
    c: usize,
    h: usize,
    w: usize,
) -> Vec<f32> {
    let (th, tw) = (h.div_ceil(M), w.div_ceil(M));
    let n_tiles = b * th * tw;
    let mut v = vec![0f32; c * N * N * n_tiles];
    // Padded plane: one zero row/column before, enough zeros after for the last tiles.
    let wp = (tw + 1) * M;
    let hp = th * M + 2;
    par_chunks(&mut v, N * N * n_tiles, |ci, dst| {
        let mut plane = vec![0f32; hp * wp];
        let mut tmp = vec![0f32; N * wp];
        let mut phases = vec![0f32; M * (tw + 1)];
        for bi in 0..b {
            let src = &x[(bi * c + ci) * h * w..][..h * w];
            for (y, row) in src.chunks_exact(w).enumerate() {
                plane[(y + 1) * wp + 1..][..w].copy_from_slice(row);
            }
            for ty in 0..th {
                // Columns first: tmp[i] = Σ_k Bᵀ[i][k] · plane row (ty·M + k).
                for (i, out) in tmp.chunks_exact_mut(wp).enumerate() {
                    let rows = (0..N).map(|k| (t.bt[i][k], &plane[(ty * M + k) * wp..][..wp]));
                    lincomb(out, rows);
                }
                // Then rows: split each tmp row into its M phases so that tile tx's element k
                // sits at phases[k % M][tx + k / M], contiguous in tx.
                for (i, row) in tmp.chunks_exact(wp).enumerate() {
                    for (tx, px) in row.chunks_exact(M).enumerate() {
                        for (q, &val) in px.iter().enumerate() {
                            phases[q * (tw + 1) + tx] = val;
                        }
                    }
                    for j in 0..N {
                        let out = &mut dst[(i * N + j) * n_tiles + (bi * th + ty) * tw..][..tw];
                        let cols =
                            (0..N).map(|k| (t.bt[j][k], &phases[(k % M) * (tw + 1) + k / M..]));
                        lincomb(out, cols);
                    }
                }
            }
        }
    });
    v
}

/// Aᵀ m A + bias for every tile: m is (N², c_out, b·tiles) → output (b, c_out, h, w).
fn output_transform<const M: usize, const N: usize>(
    t: &Transform<M, N>,
    m: &[f32],
    bias: &[f32],
    b: usize,
    c_out: usize,
    h: usize,
    w: usize,
) -> Vec<f32> {
    let (th, tw) = (h.div_ceil(M), w.div_ceil(M));
    let n_tiles = b * th * tw;
    let mut out = vec![0f32; b * c_out * h * w];
    par_chunks(&mut out, h * w, |idx, dst| {
        let (bi, co) = (idx / c_out, idx % c_out);
        let mut t1 = vec![0f32; M * N * tw];
        let mut y = vec![0f32; M * M * tw];
        for ty in 0..th {
            let base = (bi * th + ty) * tw;
            let src = |k: usize| &m[(k * c_out + co) * n_tiles + base..][..tw];
            // t1[i][j] = Σ_k Aᵀ[i][k] m[k][j]; y[i][jj] = Σ_j t1[i][j] Aᵀ[jj][j].
            for (ij, out) in t1.chunks_exact_mut(tw).enumerate() {
                let (i, j) = (ij / N, ij % N);
                lincomb(out, (0..N).map(|k| (t.at[i][k], src(k * N + j))));
            }
            for (ij, out) in y.chunks_exact_mut(tw).enumerate() {
                let (i, jj) = (ij / M, ij % M);
                let terms = (0..N).map(|j| (t.at[jj][j], &t1[(i * N + j) * tw..][..tw]));
                lincomb(out, terms);
            }
            for i in 0..M.min(h - ty * M) {
                let orow = &mut dst[(ty * M + i) * w..][..w];
                for jj in 0..M {
                    let yrow = &y[(i * M + jj) * tw..][..tw];
                    for (o, &val) in orow.iter_mut().skip(jj).step_by(M).zip(yrow) {
                        *o = val + bias[co];
                    }
                }
            }
        }
    });
    out
}

/// exp(x) for x ≤ 88, branch-free so that loops over it vectorize (Cephes `expf` polynomial,
/// about 1 ulp); underflows to ~0 below −87.
#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // n = round(x / ln 2) via the 1.5·2²³ trick; r = x − n ln 2 in two parts.
    let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Sum of `xs` (after `f`) with f32 lanes per block and an f64 total.
fn block_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut total = 0f64;
    for block in xs.chunks(4096) {
        let mut lanes = [0f32; 8];
        let mut it = block.chunks_exact(8);
        for c in &mut it {
            for l in 0..8 {
                lanes[l] += f(c[l]);
            }
        }
        total += it.remainder().iter().map(|&v| f(v) as f64).sum::<f64>();
        total += lanes.iter().map(|&v| v as f64).sum::<f64>();
    }
    total
}

/// GroupNorm (`groups` groups, `eps`) with affine `weight`/`bias`, then swish if asked, in two
/// passes per group. `None` unless everything is f32 on the CPU.
pub(crate) fn group_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
    swish: bool,
) -> Result<Option<Tensor>> {
    if weight.dtype() != DType::F32 || !weight.device().is_cpu() {
        return Ok(None);
    }
    let (b, c, h, w) = x.dims4()?;
    if c != weight.elem_count() || c % groups != 0 {
        candle_core::bail!(
            "vqgan: GroupNorm over {} channels got {c}",
            weight.elem_count()
        );
    }
    let (wv, bv) = (weight.to_vec1::<f32>()?, bias.to_vec1::<f32>()?);
    let hw = h * w;
    let cg = c / groups;
    let chunk = cg * hw;
    let out = with_f32(x, |data| {
        let mut out = vec![0f32; b * c * hw];
        par_chunks(&mut out, chunk, |idx, dst| {
            let g = idx % groups;
            let src = &data[idx * chunk..][..chunk];
            let mean = (block_sum(src, |v| v) / chunk as f64) as f32;
            let var = block_sum(src, |v| (v - mean) * (v - mean)) / chunk as f64;
            let rstd = (1.0 / (var + eps).sqrt()) as f32;
            for (ci, (o, s)) in dst
                .chunks_exact_mut(hw)
                .zip(src.chunks_exact(hw))
                .enumerate()
            {
                let scale = wv[g * cg + ci] * rstd;
                let shift = bv[g * cg + ci] - mean * scale;
                if swish {
                    o.iter_mut().zip(s).for_each(|(o, &s)| {
                        let y = s * scale + shift;
                        *o = y / (1.0 + exp_approx(-y));
                    });
                } else {
                    o.iter_mut()
                        .zip(s)
                        .for_each(|(o, &s)| *o = s * scale + shift);
                }
            }
        });
        out
    })?;
    out.map(|o| Tensor::from_vec(o, (b, c, h, w), &Device::Cpu))
        .transpose()
}

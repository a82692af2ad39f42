//! Float32 CPU kernels for the VQGAN hot spots.
//!
//! candle's CPU conv2d (im2col + gemm) and its op-by-op GroupNorm dominate decoding time at
//! 256×256. Here 3×3 convolutions use Winograd's F(4×4, 3×3) (Lavin & Gray 2016): a transform
//! of input tiles, one batched candle matmul per transformed position (the bulk of the work, in
//! gemm's SIMD kernels), and an inverse transform. The GroupNorm + swish before a convolution,
//! the nearest ×2 upsampling before one and the residual add after one are folded into the
//! transforms, so a ResnetBlock writes two activation tensors instead of five. The transforms
//! are loops over contiguous rows so that they auto-vectorize. Each entry point returns `None`
//! where it does not apply (other device or dtype) and the caller falls back to candle ops.

use crate::nn::fastmath::exp_approx;
use candle_core::{DType, Device, Result, Storage, Tensor};

/// G of F(4×4, 3×3): the filter transform U = G g Gᵀ.
const G: [[f64; 3]; 6] = [
    [1. / 4., 0., 0.],
    [-1. / 6., -1. / 6., -1. / 6.],
    [-1. / 6., 1. / 6., -1. / 6.],
    [1. / 24., 1. / 12., 1. / 6.],
    [1. / 24., -1. / 12., 1. / 6.],
    [0., 0., 1.],
];

/// Bᵀ d for one 6-vector: the input transform, with Bᵀ rows (4,0,−5,0,1,0), (0,−4,−4,1,1,0),
/// (0,4,−4,−1,1,0), (0,−2,−1,2,1,0), (0,2,−1,−2,1,0), (0,4,0,−5,0,1), in shared terms.
#[inline(always)]
fn bt(d: [f32; 6]) -> [f32; 6] {
    let a = d[4] - 4.0 * d[2];
    let b = d[3] - 4.0 * d[1];
    let c = d[4] - d[2];
    let e = 2.0 * (d[3] - d[1]);
    [
        4.0 * d[0] - 5.0 * d[2] + d[4],
        a + b,
        a - b,
        c + e,
        c - e,
        4.0 * d[1] - 5.0 * d[3] + d[5],
    ]
}

/// Aᵀ m for one 6-vector: the output transform, with Aᵀ rows (1,1,1,1,1,0), (0,1,−1,2,−2,0),
/// (0,1,1,4,4,0), (0,1,−1,8,−8,1).
#[inline(always)]
fn at(m: [f32; 6]) -> [f32; 4] {
    let (a, b) = (m[1] + m[2], m[1] - m[2]);
    let (c, d) = (m[3] + m[4], m[3] - m[4]);
    [m[0] + a + c, b + 2.0 * d, a + 4.0 * c, b + 8.0 * d + m[5]]
}

/// Elements per transformed chunk (V and M of one matmul): small enough that the buffers stay
/// in cache and malloc recycles them instead of mapping fresh pages each time.
const CHUNK_ELEMS: usize = 1 << 21;

/// `outs[o][x] = f(srcs[0][x], …)[o]` for every x below the shortest output, in one pass that
/// vectorizes over x.
#[inline(always)]
fn map_lanes<const I: usize, const O: usize>(
    srcs: [&[f32]; I],
    outs: [&mut [f32]; O],
    f: impl Fn([f32; I]) -> [f32; O],
) {
    let n = outs.iter().map(|o| o.len()).min().unwrap_or(0);
    let srcs = srcs.map(|s| &s[..n]);
    let mut outs = outs.map(|o| &mut o[..n]);
    for x in 0..n {
        let v = f(std::array::from_fn(|k| srcs[k][x]));
        for (o, v) in outs.iter_mut().zip(v) {
            o[x] = v;
        }
    }
}

/// The first O rows (`stride` apart) of `buf`, each cut to `offset..offset + len`.
fn rows_mut<const O: usize>(
    buf: &mut [f32],
    stride: usize,
    offset: usize,
    len: usize,
) -> [&mut [f32]; O] {
    let mut it = buf.chunks_mut(stride);
    std::array::from_fn(|_| {
        it.next()
            .and_then(|r| r.get_mut(offset..offset + len))
            .unwrap_or_default()
    })
}

/// Runs `f(i, chunk_i)` over the `chunk`-sized pieces of `data`, spread over candle's thread
/// count in contiguous runs; the calling thread takes the first run. (Scoped threads rather
/// than candle's spinning barrier pool, which would compete with gemm's rayon workers.)
fn par_chunks(data: &mut [f32], chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if chunk == 0 || data.is_empty() {
        return;
    }
    let n_chunks = data.len().div_ceil(chunk);
    let threads = candle_core::utils::get_num_threads().clamp(1, n_chunks);
    let per = n_chunks.div_ceil(threads);
    let run = |t: usize, part: &mut [f32]| {
        for (i, c) in part.chunks_mut(chunk).enumerate() {
            f(t * per + i, c)
        }
    };
    let mut parts = data.chunks_mut(per * chunk).enumerate();
    let Some((_, first)) = parts.next() else {
        return;
    };
    std::thread::scope(|s| {
        for (t, part) in parts {
            let run = &run;
            s.spawn(move || run(t, part));
        }
        run(0, first);
    });
}

/// Runs `f` on the contiguous f32 data of a CPU tensor; `None` for other devices or dtypes.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<Option<R>> {
    if !is_cpu_f32(t) {
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

fn is_cpu_f32(t: &Tensor) -> bool {
    t.dtype() == DType::F32 && t.device().is_cpu()
}

/// swish(x) = x · sigmoid(x).
#[inline(always)]
fn swish(x: f32) -> f32 {
    x / (1.0 + exp_approx(-x))
}

/// Per-(image, channel) affine form of a GroupNorm, `y = x · scale + shift`, optionally
/// followed by swish: what a convolution applies to its input on the fly.
pub(crate) struct Prologue {
    scale: Vec<f32>,
    shift: Vec<f32>,
    swish: bool,
}

/// Sum of `f(x)` over `xs` with f32 lanes per block and an f64 total.
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

/// GroupNorm statistics of `x` (B, C, H, W) (two-pass mean and biased variance, as torch)
/// folded with the affine `weight`/`bias`. `None` unless everything is f32 on the CPU.
pub(crate) fn group_norm_prologue(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
    swish: bool,
) -> Result<Option<Prologue>> {
    if !is_cpu_f32(weight) || !is_cpu_f32(bias) {
        return Ok(None);
    }
    let (b, c, h, w) = x.dims4()?;
    if c != weight.elem_count() || !c.is_multiple_of(groups) {
        candle_core::bail!(
            "vqgan: GroupNorm over {} channels got {c}",
            weight.elem_count()
        );
    }
    let (wv, bv) = (weight.to_vec1::<f32>()?, bias.to_vec1::<f32>()?);
    let chunk = c / groups * h * w;
    let Some(stats) = with_f32(x, |data| {
        let mut stats = vec![0f32; b * groups * 2];
        par_chunks(&mut stats, 2, |idx, st| {
            let src = &data[idx * chunk..][..chunk];
            let mean = (block_sum(src, |v| v) / chunk as f64) as f32;
            let var = block_sum(src, |v| (v - mean) * (v - mean)) / chunk as f64;
            st[0] = mean;
            st[1] = (1.0 / (var + eps).sqrt()) as f32;
        });
        stats
    })?
    else {
        return Ok(None);
    };
    let (mut scale, mut shift) = (Vec::with_capacity(b * c), Vec::with_capacity(b * c));
    for bc in 0..b * c {
        let (ch, g) = (bc % c, bc / (c / groups));
        let s = wv[ch] * stats[2 * g + 1];
        scale.push(s);
        shift.push(bv[ch] - stats[2 * g] * s);
    }
    Ok(Some(Prologue {
        scale,
        shift,
        swish,
    }))
}

/// GroupNorm (+ swish) as a tensor; `None` unless everything is f32 on the CPU.
pub(crate) fn group_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
    swish: bool,
) -> Result<Option<Tensor>> {
    let Some(pro) = group_norm_prologue(x, weight, bias, groups, eps, swish)? else {
        return Ok(None);
    };
    let (b, c, h, w) = x.dims4()?;
    let out = with_f32(x, |data| {
        let mut out = vec![0f32; b * c * h * w];
        par_chunks(&mut out, h * w, |bc, dst| {
            apply(&pro, bc, &data[bc * h * w..][..h * w], dst)
        });
        out
    })?;
    out.map(|o| Tensor::from_vec(o, (b, c, h, w), &Device::Cpu))
        .transpose()
}

/// `dst = prologue(src)` for plane `bc` (image · C + channel).
#[inline(always)]
fn apply(pro: &Prologue, bc: usize, src: &[f32], dst: &mut [f32]) {
    let (scale, shift) = (pro.scale[bc], pro.shift[bc]);
    let pairs = dst.iter_mut().zip(src);
    if pro.swish {
        pairs.for_each(|(o, &s)| *o = swish(s * scale + shift));
    } else {
        pairs.for_each(|(o, &s)| *o = s * scale + shift);
    }
}

/// A 3×3, stride 1, padding 1 convolution with its weights pre-transformed for Winograd
/// F(4×4, 3×3).
pub(crate) struct Winograd {
    /// Transformed weights (36, c_out, c_in).
    u: Tensor,
    bias: Vec<f32>,
    c_in: usize,
    c_out: usize,
}

/// What a convolution does around the 3×3 filter.
#[derive(Clone, Copy)]
pub(crate) struct Fused<'a> {
    /// Normalization (+ swish) of the input.
    pub(crate) prologue: Option<&'a Prologue>,
    /// Nearest ×2 upsampling of the (normalized) input.
    pub(crate) upsample: bool,
    /// Tensor added to the output, shaped like it.
    pub(crate) residual: Option<&'a Tensor>,
}

impl Winograd {
    /// Transforms `weight` (c_out, c_in, 3, 3); `None` unless it is f32 on the CPU.
    pub(crate) fn new(weight: &Tensor, bias: &Tensor) -> Result<Option<Self>> {
        if !is_cpu_f32(weight) {
            return Ok(None);
        }
        let (c_out, c_in, _, _) = weight.dims4()?;
        let w = weight.flatten_all()?.to_vec1::<f32>()?;
        let filters = c_out * c_in;
        // U = (G g) Gᵀ in f64, so that the transformed weights carry a single rounding; laid
        // out (36, filters), computed a block of filters at a time to stay in cache.
        let mut u = vec![0f32; 36 * filters];
        let mut block = vec![0f32; 36 * 256];
        for (bi, gs) in w.chunks(9 * 256).enumerate() {
            let nf = gs.len() / 9;
            for (f, g) in gs.chunks_exact(9).enumerate() {
                let mut gg = [[0f64; 3]; 6];
                for (i, row) in gg.iter_mut().enumerate() {
                    for (b, v) in row.iter_mut().enumerate() {
                        *v = (0..3).map(|a| G[i][a] * g[a * 3 + b] as f64).sum();
                    }
                }
                for (ij, v) in block.chunks_exact_mut(256).enumerate() {
                    let (i, j) = (ij / 6, ij % 6);
                    v[f] = (gg[i][0] * G[j][0] + gg[i][1] * G[j][1] + gg[i][2] * G[j][2]) as f32;
                }
            }
            for (ij, v) in block.chunks_exact(256).enumerate() {
                u[ij * filters + bi * 256..][..nf].copy_from_slice(&v[..nf]);
            }
        }
        Ok(Some(Self {
            u: Tensor::from_vec(u, (36, c_out, c_in), &Device::Cpu)?,
            bias: bias.to_dtype(DType::F32)?.to_vec1()?,
            c_in,
            c_out,
        }))
    }

    /// Convolves `x` (B, c_in, H, W) with the `fused` steps around it; `None` unless the
    /// tensors are f32 on the CPU.
    pub(crate) fn forward(&self, x: &Tensor, fused: Fused) -> Result<Option<Tensor>> {
        let (b, c, hs, ws) = x.dims4()?;
        if c != self.c_in {
            candle_core::bail!("vqgan: conv expects {} channels, got {c}", self.c_in);
        }
        if hs == 0 || ws == 0 || c == 0 {
            candle_core::bail!("vqgan: conv input {:?} is empty", x.dims());
        }
        let up = if fused.upsample { 2 } else { 1 };
        let (h, w) = (hs * up, ws * up);
        if let Some(r) = fused.residual {
            if r.dims() != [b, self.c_out, h, w] {
                candle_core::bail!(
                    "vqgan: residual {:?} does not match the conv output",
                    r.dims()
                );
            }
            if !is_cpu_f32(r) {
                return Ok(None);
            }
        }
        let run = |data: &[f32], res: Option<&[f32]>| -> Result<Vec<f32>> {
            let mut out = vec![0f32; b * self.c_out * h * w];
            let planes_out = self.c_out * h * w;
            for (bi, out) in out.chunks_exact_mut(planes_out).enumerate() {
                let x = &data[bi * c * hs * ws..][..c * hs * ws];
                let res = res.map(|r| &r[bi * planes_out..][..planes_out]);
                self.image(x, out, res, bi, h, w, fused)?;
            }
            Ok(out)
        };
        let out = match fused.residual {
            None => with_f32(x, |data| run(data, None))?,
            Some(r) => match with_f32(x, |data| with_f32(r, |res| run(data, Some(res))))? {
                Some(inner) => inner?,
                None => None,
            },
        };
        out.transpose()?
            .map(|o| Tensor::from_vec(o, (b, self.c_out, h, w), &Device::Cpu))
            .transpose()
    }

    /// Image `bi`, `x` (c_in, h/up, w/up) → `out` (c_out, h, w), a few tile rows at a time.
    #[allow(clippy::too_many_arguments)]
    fn image(
        &self,
        x: &[f32],
        out: &mut [f32],
        res: Option<&[f32]>,
        bi: usize,
        h: usize,
        w: usize,
        fused: Fused,
    ) -> Result<()> {
        let (th, tw) = (h.div_ceil(4), w.div_ceil(4));
        let rows = (CHUNK_ELEMS / (36 * tw * self.c_in.max(self.c_out))).clamp(1, th);
        let input = Input {
            x,
            bi,
            c: self.c_in,
            h,
            w,
            fused,
        };
        for ty0 in (0..th).step_by(rows) {
            let tys = ty0..(ty0 + rows).min(th);
            let n = tys.len() * tw;
            let v = input.transform(tys.clone());
            // v is (c_in, 36, n); the matmul wants (36, c_in, n), a strided view.
            let v = Tensor::from_vec(v, (self.c_in, 36, n), &Device::Cpu)?.transpose(0, 1)?;
            let m = self.u.matmul(&v)?;
            with_f32(&m, |m| output_transform(m, &self.bias, out, res, h, w, tys))?;
        }
        Ok(())
    }
}

/// The input side of one image's convolution.
struct Input<'a> {
    /// (c, h/up, w/up) data.
    x: &'a [f32],
    /// Index of the image in the batch (for the prologue's per-image coefficients).
    bi: usize,
    c: usize,
    /// Size after upsampling.
    h: usize,
    w: usize,
    fused: Fused<'a>,
}

impl Input<'_> {
    /// Row `y` of channel `ci` after prologue and upsampling, written to `dst` (length w).
    fn row(&self, ci: usize, y: usize, dst: &mut [f32]) {
        let up = if self.fused.upsample { 2 } else { 1 };
        let (hs, ws) = (self.h / up, self.w / up);
        let src = &self.x[(ci * hs + y / up) * ws..][..ws];
        let bc = self.bi * self.c + ci;
        if up == 1 {
            match self.fused.prologue {
                Some(p) => apply(p, bc, src, dst),
                None => dst.copy_from_slice(src),
            }
        } else {
            let mut tmp = [0f32; 256];
            for (s, d) in src.chunks(128).zip(dst.chunks_mut(256)) {
                let t = &mut tmp[..s.len()];
                match self.fused.prologue {
                    Some(p) => apply(p, bc, s, t),
                    None => t.copy_from_slice(s),
                }
                for (pair, &v) in d.chunks_exact_mut(2).zip(t.iter()) {
                    pair.fill(v);
                }
            }
        }
    }

    /// Bᵀ d B for the 6×6 input tiles (stride 4, zero padding 1) in tile rows `tys` of every
    /// channel. Returns (c, 36, tiles), tiles in raster order.
    fn transform(&self, tys: std::ops::Range<usize>) -> Vec<f32> {
        let (h, w) = (self.h, self.w);
        let tw = w.div_ceil(4);
        let n_tiles = tys.len() * tw;
        let mut v = vec![0f32; self.c * 36 * n_tiles];
        // Padded rows of the chunk: one zero column before, zeros after the last tile column.
        let wp = (tw + 1) * 4;
        let rows = tys.len() * 4 + 2;
        par_chunks(&mut v, 36 * n_tiles, |ci, dst| {
            let mut plane = vec![0f32; rows * wp];
            for (r, prow) in plane.chunks_exact_mut(wp).enumerate() {
                // Padded row r is image row 4·tys.start + r − 1.
                if let Some(y) = (tys.start * 4 + r).checked_sub(1).filter(|&y| y < h) {
                    self.row(ci, y, &mut prow[1..=w]);
                }
            }
            let mut tmp = vec![0f32; 6 * wp];
            let mut phases = vec![0f32; 4 * (tw + 1)];
            for ty in 0..tys.len() {
                // Columns first: tmp[i] = Σ_k Bᵀ[i][k] · padded row 4·ty + k.
                let srcs = std::array::from_fn(|k| &plane[(ty * 4 + k) * wp..][..wp]);
                map_lanes(srcs, rows_mut(&mut tmp, wp, 0, wp), bt);
                // Then rows: split each tmp row into 4 phases so that element k of tile tx
                // sits at phases[k % 4][tx + k / 4], contiguous in tx.
                for (i, row) in tmp.chunks_exact(wp).enumerate() {
                    for (tx, px) in row.chunks_exact(4).enumerate() {
                        for (q, &val) in px.iter().enumerate() {
                            phases[q * (tw + 1) + tx] = val;
                        }
                    }
                    let srcs = std::array::from_fn(|k| &phases[(k % 4) * (tw + 1) + k / 4..]);
                    let block = &mut dst[i * 6 * n_tiles..][..6 * n_tiles];
                    map_lanes(srcs, rows_mut(block, n_tiles, ty * tw, tw), bt);
                }
            }
        });
        v
    }
}

/// Aᵀ m A + bias (+ residual) for the tiles of rows `tys`: m is (36, c_out, tiles); writes
/// those rows of `out` (c_out, h, w).
fn output_transform(
    m: &[f32],
    bias: &[f32],
    out: &mut [f32],
    res: Option<&[f32]>,
    h: usize,
    w: usize,
    tys: std::ops::Range<usize>,
) {
    let tw = w.div_ceil(4);
    let n_tiles = tys.len() * tw;
    let c_out = bias.len();
    par_chunks(out, h * w, |co, dst| {
        // t1[j][r] = Σ_i Aᵀ[r][i] m[i][j] (tile column j, output row r).
        let mut t1 = vec![0f32; 24 * tw];
        for ty in 0..tys.len() {
            let src = |k: usize| &m[(k * c_out + co) * n_tiles + ty * tw..][..tw];
            for j in 0..6 {
                let srcs = std::array::from_fn(|i| src(i * 6 + j));
                map_lanes(srcs, rows_mut(&mut t1[j * 4 * tw..], tw, 0, tw), at);
            }
            let y0 = (tys.start + ty) * 4;
            for r in 0..4.min(h - y0) {
                let srcs: [&[f32]; 6] = std::array::from_fn(|j| &t1[(j * 4 + r) * tw..][..tw]);
                let row = (y0 + r) * w;
                let orow = &mut dst[row..][..w];
                for (tx, o) in orow.chunks_mut(4).enumerate() {
                    let y = at(std::array::from_fn(|j| srcs[j][tx]));
                    for (o, y) in o.iter_mut().zip(y) {
                        *o = y + bias[co];
                    }
                }
                if let Some(res) = res {
                    let rrow = &res[co * h * w + row..][..w];
                    orow.iter_mut().zip(rrow).for_each(|(o, &r)| *o += r);
                }
            }
        }
    });
}

/// taming's `Downsample` convolution (zero-pad right and bottom by 1, 3×3, stride 2) as
/// row-chunked im2col + candle matmul: candle's own conv2d spends most of its time building
/// patches here.
pub(crate) struct Strided {
    /// Weights (c_out, c_in·9), PyTorch's layout flattened.
    w: Tensor,
    bias: Vec<f32>,
    c_in: usize,
    c_out: usize,
}

impl Strided {
    /// From `weight` (c_out, c_in, 3, 3); `None` unless it is f32 on the CPU.
    pub(crate) fn new(weight: &Tensor, bias: &Tensor) -> Result<Option<Self>> {
        if !is_cpu_f32(weight) {
            return Ok(None);
        }
        let (c_out, c_in, _, _) = weight.dims4()?;
        Ok(Some(Self {
            w: weight.reshape((c_out, c_in * 9))?.contiguous()?,
            bias: bias.to_dtype(DType::F32)?.to_vec1()?,
            c_in,
            c_out,
        }))
    }

    /// Convolves `x` (B, c_in, H, W) → (B, c_out, ⌊(H−2)/2⌋+1, ⌊(W−2)/2⌋+1); `None` unless
    /// `x` is f32 on the CPU.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let (b, c, h, w) = x.dims4()?;
        if c != self.c_in || c == 0 || h < 2 || w < 2 {
            candle_core::bail!("vqgan: downsample got {:?}", x.dims());
        }
        let (ho, wo) = ((h - 2) / 2 + 1, (w - 2) / 2 + 1);
        let rows = (CHUNK_ELEMS / (9 * c * wo)).clamp(1, ho);
        let out = with_f32(x, |data| {
            let mut out = vec![0f32; b * self.c_out * ho * wo];
            let images = data.chunks_exact(c * h * w);
            for (x, out) in images.zip(out.chunks_exact_mut(self.c_out * ho * wo)) {
                for oy0 in (0..ho).step_by(rows) {
                    let oys = oy0..(oy0 + rows).min(ho);
                    let n = oys.len() * wo;
                    // cols[(ci·9 + ky·3 + kx), r·wo + ox] = x[ci, 2(oy0+r)+ky, 2ox+kx], 0 outside.
                    let mut cols = vec![0f32; c * 9 * n];
                    par_chunks(&mut cols, 9 * n, |ci, dst| {
                        let src = &x[ci * h * w..][..h * w];
                        for (k, krow) in dst.chunks_exact_mut(n).enumerate() {
                            let (ky, kx) = (k / 3, k % 3);
                            for (r, d) in krow.chunks_exact_mut(wo).enumerate() {
                                let iy = 2 * (oys.start + r) + ky;
                                if iy >= h {
                                    continue;
                                }
                                let srow = &src[iy * w..][..w];
                                for (d, s) in d.iter_mut().zip(srow.iter().skip(kx).step_by(2)) {
                                    *d = *s;
                                }
                            }
                        }
                    });
                    let cols = Tensor::from_vec(cols, (c * 9, n), &Device::Cpu)?;
                    let y = self.w.matmul(&cols)?;
                    with_f32(&y, |y| {
                        par_chunks(out, ho * wo, |co, dst| {
                            let dst = &mut dst[oys.start * wo..][..n];
                            let bias = self.bias[co];
                            for (d, &v) in dst.iter_mut().zip(&y[co * n..][..n]) {
                                *d = v + bias;
                            }
                        })
                    })?;
                }
            }
            Ok::<_, candle_core::Error>(out)
        })?;
        out.transpose()?
            .map(|o| Tensor::from_vec(o, (b, self.c_out, ho, wo), &Device::Cpu))
            .transpose()
    }
}

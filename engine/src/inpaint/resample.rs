//! Separable Catmull–Rom resampling over *virtual* sources and *partial* outputs.
//!
//! The geometry and the filter are those of `image::imageops::resize(.., FilterType::CatmullRom)`
//! (pixel centres at `i + 0.5`, kernel widened by the ratio when downscaling so downscaling is
//! anti-aliased, taps falling outside the source dropped and the weights renormalised, identity
//! when the sizes agree). Doing it here rather than through `imageops` lets the crop read an
//! edge-replicated window without materialising it, and lets the composite resample only the
//! part of the window it actually blends.

use std::ops::Range;

use image::RgbImage;

/// The Catmull–Rom cubic (B = 0, C = 0.5); support 2.
fn catmull_rom(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        (1.5 * x - 2.5) * x * x + 1.0
    } else if x < 2.0 {
        ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
    } else {
        0.0
    }
}

/// Filter taps along one axis, for a contiguous range of output coordinates.
pub(super) struct AxisTaps {
    /// Source index of each output's first tap.
    starts: Vec<usize>,
    /// Output `k` uses `weights[offsets[k]..offsets[k + 1]]`.
    offsets: Vec<usize>,
    weights: Vec<f32>,
}

impl AxisTaps {
    /// Taps of outputs `out_range` for a resize of `in_len` source samples to `out_len` outputs.
    /// Both lengths must be at least 1 (callers check).
    pub(super) fn new(in_len: u64, out_len: u64, out_range: Range<u64>) -> Self {
        let n = out_range.end.saturating_sub(out_range.start) as usize;
        let mut starts = Vec::with_capacity(n);
        let mut offsets = Vec::with_capacity(n + 1);
        let mut weights = Vec::new();
        offsets.push(0);
        if in_len == out_len {
            for o in out_range {
                starts.push(o as usize);
                weights.push(1.0);
                offsets.push(weights.len());
            }
            return Self {
                starts,
                offsets,
                weights,
            };
        }
        let ratio = in_len as f64 / out_len as f64;
        let sratio = ratio.max(1.0);
        let support = 2.0 * sratio;
        let last = in_len as i64 - 1;
        let mut ws: Vec<f64> = Vec::new();
        for o in out_range {
            let centre = (o as f64 + 0.5) * ratio;
            let left = ((centre - support).floor() as i64).clamp(0, last);
            let right = ((centre + support).ceil() as i64).clamp(left + 1, in_len as i64);
            let c = centre - 0.5;
            ws.clear();
            ws.extend((left..right).map(|i| catmull_rom((i as f64 - c) / sratio)));
            let sum: f64 = ws.iter().sum();
            if sum.abs() > 1e-12 && sum.is_finite() {
                starts.push(left as usize);
                weights.extend(ws.iter().map(|w| (w / sum) as f32));
            } else {
                // Cannot happen for Catmull–Rom (the nearest tap always has weight > 0); kept so
                // that no input can produce NaN.
                starts.push((centre.floor() as i64).clamp(0, last) as usize);
                weights.push(1.0);
            }
            offsets.push(weights.len());
        }
        Self {
            starts,
            offsets,
            weights,
        }
    }

    /// Number of outputs.
    pub(super) fn len(&self) -> usize {
        self.starts.len()
    }

    /// The first source index and the weights of output `k` (relative to the range start).
    pub(super) fn get(&self, k: usize) -> (usize, &[f32]) {
        (
            self.starts[k],
            &self.weights[self.offsets[k]..self.offsets[k + 1]],
        )
    }

    /// The smallest and largest source index any output reads, or `None` with no outputs.
    pub(super) fn source_span(&self) -> Option<(usize, usize)> {
        let lo = self.starts.iter().copied().min()?;
        let hi = (0..self.len())
            .map(|k| self.starts[k] + (self.offsets[k + 1] - self.offsets[k]) - 1)
            .max()?;
        Some((lo, hi))
    }
}

fn to_u8(v: f32) -> u8 {
    // `as` saturates and maps NaN to 0.
    v.round().clamp(0.0, 255.0) as u8
}

/// Largest window side [`crop_resize`] resamples (the filter reads every window pixel, edge
/// replicated or not, so the cost grows with the side even far outside the image).
pub(super) const MAX_WINDOW: u64 = 1 << 20;

/// The square window `(wx, wy, size)` of `image`, edge-replicated where it leaves the image,
/// resized to `res`×`res`. Black when the image, the window or `res` is empty, or the window is
/// larger than [`MAX_WINDOW`].
pub(super) fn crop_resize(image: &RgbImage, wx: i64, wy: i64, size: u64, res: u32) -> RgbImage {
    let (w, h) = image.dimensions();
    let mut out = RgbImage::new(res, res);
    if w == 0 || h == 0 || size == 0 || size > MAX_WINDOW || res == 0 {
        return out;
    }
    let taps = AxisTaps::new(size, u64::from(res), 0..u64::from(res));
    let Some((lo, hi)) = taps.source_span() else {
        return out;
    };
    let col = |i: usize| wx.saturating_add(i as i64).clamp(0, i64::from(w) - 1) as usize;
    let row = |j: usize| wy.saturating_add(j as i64).clamp(0, i64::from(h) - 1) as usize;
    // Horizontal pass over the distinct image rows the window reads (edge replication makes
    // rows outside the image copies of the border rows, so they are computed once).
    let (r0, r1) = (row(lo), row(hi));
    let res_us = res as usize;
    let src = image.as_raw();
    let stride = w as usize * 3;
    let mut tmp = vec![0f32; (r1 - r0 + 1) * res_us * 3];
    for r in r0..=r1 {
        let line = &src[r * stride..(r + 1) * stride];
        let dst = &mut tmp[(r - r0) * res_us * 3..(r - r0 + 1) * res_us * 3];
        for ox in 0..res_us {
            let (start, ws) = taps.get(ox);
            let mut acc = [0f32; 3];
            for (k, &wt) in ws.iter().enumerate() {
                let p = col(start + k) * 3;
                acc[0] += wt * f32::from(line[p]);
                acc[1] += wt * f32::from(line[p + 1]);
                acc[2] += wt * f32::from(line[p + 2]);
            }
            dst[ox * 3..ox * 3 + 3].copy_from_slice(&acc);
        }
    }
    // Vertical pass.
    let mut acc = vec![0f32; res_us * 3];
    let out_raw: &mut [u8] = &mut out;
    for oy in 0..res_us {
        let (start, ws) = taps.get(oy);
        acc.iter_mut().for_each(|a| *a = 0.0);
        for (k, &wt) in ws.iter().enumerate() {
            let r = row(start + k) - r0;
            let line = &tmp[r * res_us * 3..(r + 1) * res_us * 3];
            for (a, &v) in acc.iter_mut().zip(line) {
                *a += wt * v;
            }
        }
        for (d, &a) in out_raw[oy * res_us * 3..(oy + 1) * res_us * 3]
            .iter_mut()
            .zip(&acc)
        {
            *d = to_u8(a);
        }
    }
    out
}

/// `generated` resized (non-uniformly if it is not square) to `size`×`size`, evaluated only on
/// the output columns `xs` and rows `ys`, one row at a time.
pub(super) struct RegionResampler {
    ty: AxisTaps,
    /// Horizontally resampled source rows `src_row0..`, each `width * 3` floats.
    tmp: Vec<f32>,
    src_row0: usize,
    width: usize,
}

impl RegionResampler {
    /// `None` when `generated` or `size` is empty or the region is empty.
    pub(super) fn new(
        generated: &RgbImage,
        size: u64,
        xs: Range<u64>,
        ys: Range<u64>,
    ) -> Option<Self> {
        let (gw, gh) = generated.dimensions();
        if gw == 0 || gh == 0 || size == 0 || xs.is_empty() || ys.is_empty() {
            return None;
        }
        let tx = AxisTaps::new(u64::from(gw), size, xs);
        let ty = AxisTaps::new(u64::from(gh), size, ys);
        let (lo, hi) = ty.source_span()?;
        let width = tx.len();
        let src = generated.as_raw();
        let stride = gw as usize * 3;
        let mut tmp = vec![0f32; (hi - lo + 1) * width * 3];
        for r in lo..=hi {
            let line = &src[r * stride..(r + 1) * stride];
            let dst = &mut tmp[(r - lo) * width * 3..(r - lo + 1) * width * 3];
            for ox in 0..width {
                let (start, ws) = tx.get(ox);
                let mut acc = [0f32; 3];
                for (k, &wt) in ws.iter().enumerate() {
                    let p = (start + k) * 3;
                    acc[0] += wt * f32::from(line[p]);
                    acc[1] += wt * f32::from(line[p + 1]);
                    acc[2] += wt * f32::from(line[p + 2]);
                }
                dst[ox * 3..ox * 3 + 3].copy_from_slice(&acc);
            }
        }
        Some(Self {
            ty,
            tmp,
            src_row0: lo,
            width,
        })
    }

    /// Writes output row `k` (relative to the row range) into `out` (`width * 3` floats,
    /// clamped to [0, 255]).
    pub(super) fn row(&self, k: usize, out: &mut [f32]) {
        let (start, ws) = self.ty.get(k);
        let n = self.width * 3;
        out.iter_mut().for_each(|a| *a = 0.0);
        for (j, &wt) in ws.iter().enumerate() {
            let r = start + j - self.src_row0;
            for (a, &v) in out.iter_mut().zip(&self.tmp[r * n..(r + 1) * n]) {
                *a += wt * v;
            }
        }
        out.iter_mut().for_each(|a| *a = a.clamp(0.0, 255.0));
    }
}

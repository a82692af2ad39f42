//! The composite's alpha: 1 on the mask, a smooth ramp over `feather` pixels around it (by
//! exact Euclidean distance between pixel centres), 0 beyond. Computed row by row over a
//! rectangle, in O(rectangle) time and one `u16` per pixel of memory.

use image::GrayImage;

use super::{MASK_THRESHOLD, Rect};

/// Largest usable feather: column distances are stored as `u16`.
const MAX_FEATHER: u32 = u16::MAX as u32 - 1;

/// The alpha field over `rect` (image coordinates).
pub(super) struct AlphaField {
    /// The rectangle alpha may be non-zero in: the mask's bounding box (restricted to the
    /// allowed area) dilated by the feather, clipped to the allowed area.
    pub(super) rect: Rect,
    feather: u32,
    /// Vertical distance (in rows) to the nearest masked pixel in the same column, capped at
    /// `feather + 1` (= "farther than the feather").
    col: Vec<u16>,
    // Scratch for the lower envelope of one row.
    v: Vec<usize>,
    z: Vec<f64>,
}

impl AlphaField {
    /// Only mask pixels inside `allowed` (and inside the mask itself) count. `None` when there are
    /// none.
    pub(super) fn new(mask: &GrayImage, allowed: Rect, feather: u32) -> Option<Self> {
        let feather = feather.min(MAX_FEATHER);
        let (mw, mh) = mask.dimensions();
        let lim = Rect {
            x0: allowed.x0,
            y0: allowed.y0,
            x1: allowed.x1.min(mw),
            y1: allowed.y1.min(mh),
        };
        let bbox = super::mask_bbox_in(mask, lim)?;
        let rect = Rect {
            x0: bbox.x0.saturating_sub(feather).max(allowed.x0),
            y0: bbox.y0.saturating_sub(feather).max(allowed.y0),
            x1: bbox.x1.saturating_add(feather).min(allowed.x1),
            y1: bbox.y1.saturating_add(feather).min(allowed.y1),
        };
        let (rw, rh) = (rect.width() as usize, rect.height() as usize);
        let cap = (feather + 1) as u16;
        let mut col = vec![cap; rw * rh];
        let raw = mask.as_raw();
        // The masked columns of `rect`, relative to it.
        let (mx0, mx1) = (rect.x0.max(lim.x0), rect.x1.min(lim.x1));
        // Down sweep: distance to the nearest masked pixel above (or on) each pixel.
        for ry in 0..rh {
            let (done, rest) = col.split_at_mut(ry * rw);
            let cur = &mut rest[..rw];
            if ry > 0 {
                let prev = &done[(ry - 1) * rw..];
                for (c, &p) in cur.iter_mut().zip(prev) {
                    *c = p.saturating_add(1).min(cap);
                }
            }
            let y = rect.y0 + ry as u32;
            if y >= lim.y0 && y < lim.y1 && mx1 > mx0 {
                let start = y as usize * mw as usize;
                let line = &raw[start + mx0 as usize..start + mx1 as usize];
                let dst = &mut cur[(mx0 - rect.x0) as usize..(mx1 - rect.x0) as usize];
                for (c, &m) in dst.iter_mut().zip(line) {
                    if m >= MASK_THRESHOLD {
                        *c = 0;
                    }
                }
            }
        }
        // Up sweep: or below.
        for ry in (0..rh.saturating_sub(1)).rev() {
            let (head, tail) = col.split_at_mut((ry + 1) * rw);
            for (c, &b) in head[ry * rw..].iter_mut().zip(&tail[..rw]) {
                *c = (*c).min(b.saturating_add(1).min(cap));
            }
        }
        Some(Self {
            rect,
            feather,
            col,
            v: Vec::with_capacity(rw),
            z: Vec::with_capacity(rw),
        })
    }

    /// Alpha of row `ry` (relative to `rect`) into `out` (`rect.width()` values). Returns whether
    /// any value is non-zero.
    pub(super) fn row(&mut self, ry: usize, out: &mut [f32]) -> bool {
        let rw = self.rect.width() as usize;
        let g = &self.col[ry * rw..(ry + 1) * rw];
        let cap = (self.feather + 1) as u16;
        if g.iter().all(|&v| v == 0) {
            out.iter_mut().for_each(|a| *a = 1.0);
            return true;
        }
        // Lower envelope of the parabolas (x − q)² + g[q]² over the columns with a masked pixel
        // within the feather (Felzenszwalb & Huttenlocher).
        self.v.clear();
        self.z.clear();
        for (q, &gq) in g.iter().enumerate() {
            if gq >= cap {
                continue;
            }
            let fq = f64::from(gq) * f64::from(gq) + (q as f64) * (q as f64);
            loop {
                let Some(&p) = self.v.last() else {
                    self.v.push(q);
                    self.z.push(f64::NEG_INFINITY);
                    break;
                };
                let gp = f64::from(g[p]);
                let fp = gp * gp + (p as f64) * (p as f64);
                let s = (fq - fp) / (2.0 * (q as f64 - p as f64));
                if s <= *self.z.last().unwrap_or(&f64::NEG_INFINITY) {
                    self.v.pop();
                    self.z.pop();
                } else {
                    self.v.push(q);
                    self.z.push(s);
                    break;
                }
            }
        }
        if self.v.is_empty() {
            out.iter_mut().for_each(|a| *a = 0.0);
            return false;
        }
        let f = f64::from(self.feather);
        let f2 = f * f;
        let mut k = 0;
        let mut any = false;
        for (x, a) in out.iter_mut().enumerate().take(rw) {
            while k + 1 < self.v.len() && self.z[k + 1] < x as f64 {
                k += 1;
            }
            let q = self.v[k];
            let dx = x as f64 - q as f64;
            let gq = f64::from(g[q]);
            let d2 = dx * dx + gq * gq;
            *a = if d2 == 0.0 {
                1.0
            } else if d2 > f2 {
                0.0
            } else {
                let t = 1.0 - d2.sqrt() / (f + 1.0);
                (t * t * (3.0 - 2.0 * t)) as f32
            };
            any |= *a > 0.0;
        }
        any
    }
}

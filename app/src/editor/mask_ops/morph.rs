//! The image-processing kernels behind the mask commands: bounding boxes, scanline flood fill,
//! a Euclidean distance transform for grow/shrink and a three-box Gaussian for feather.
//! All are O(pixels) whatever the radius, so they stay fast on 8192² masks.

use image::{GrayImage, RgbaImage};

use crate::editor::document::PixelRect;

/// Largest grow/shrink distance (pixels); larger requests are clamped.
pub const MAX_RADIUS: u32 = 8192;
/// Largest feather sigma (pixels).
const MAX_SIGMA: f32 = 1024.0;

/// Bounding box of the mask pixels for which `pred` holds.
pub fn bounds_where(mask: &GrayImage, pred: impl Fn(u8) -> bool) -> Option<PixelRect> {
    let w = mask.width() as usize;
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for (y, row) in mask.as_raw().chunks_exact(w.max(1)).enumerate() {
        let Some(first) = row.iter().position(|&v| pred(v)) else {
            continue;
        };
        let last = row.iter().rposition(|&v| pred(v)).unwrap_or(first);
        x0 = x0.min(first);
        x1 = x1.max(last + 1);
        y0 = y0.min(y);
        y1 = y1.max(y + 1);
    }
    (x0 != usize::MAX).then(|| PixelRect {
        x: x0 as u32,
        y: y0 as u32,
        w: (x1 - x0) as u32,
        h: (y1 - y0) as u32,
    })
}

/// A set of pixels as horizontal spans.
#[derive(Debug, Default)]
pub struct Region {
    /// Bounding box of all spans.
    pub bounds: PixelRect,
    /// `(y, x_start, x_end)`, end exclusive.
    pub spans: Vec<(u32, u32, u32)>,
}

/// The 4-connected region around `seed` whose colour is within `tolerance` (every RGBA channel)
/// of the seed's colour. Scanline fill with a visited bitset.
pub fn flood_region(image: &RgbaImage, seed: (u32, u32), tolerance: u8) -> Region {
    let (w, h) = image.dimensions();
    let raw = image.as_raw();
    let at = |x: u32, y: u32| (y as usize * w as usize + x as usize) * 4;
    let i0 = at(seed.0, seed.1);
    let c0 = [raw[i0], raw[i0 + 1], raw[i0 + 2], raw[i0 + 3]];
    let similar = |x: u32, y: u32| {
        let i = at(x, y);
        (0..4).all(|c| raw[i + c].abs_diff(c0[c]) <= tolerance)
    };
    let mut visited = vec![0u64; (w as usize * h as usize).div_ceil(64)];
    let is_visited = |visited: &[u64], x: u32, y: u32| {
        let i = y as usize * w as usize + x as usize;
        visited[i / 64] & (1 << (i % 64)) != 0
    };
    let mut region = Region::default();
    let mut stack = vec![seed];
    while let Some((x, y)) = stack.pop() {
        if is_visited(&visited, x, y) {
            continue;
        }
        let mut xa = x;
        while xa > 0 && !is_visited(&visited, xa - 1, y) && similar(xa - 1, y) {
            xa -= 1;
        }
        let mut xb = x + 1;
        while xb < w && !is_visited(&visited, xb, y) && similar(xb, y) {
            xb += 1;
        }
        for px in xa..xb {
            let i = y as usize * w as usize + px as usize;
            visited[i / 64] |= 1 << (i % 64);
        }
        region.spans.push((y, xa, xb));
        region.bounds = region.bounds.union(PixelRect {
            x: xa,
            y,
            w: xb - xa,
            h: 1,
        });
        for ny in [y.checked_sub(1), (y + 1 < h).then_some(y + 1)]
            .into_iter()
            .flatten()
        {
            let mut in_run = false;
            for px in xa..xb {
                let open = !is_visited(&visited, px, ny) && similar(px, ny);
                if open && !in_run {
                    stack.push((px, ny));
                }
                in_run = open;
            }
        }
    }
    region
}

/// Sets every pixel within Euclidean distance `r` of a pixel ≥ 128 to 255.
pub fn grow(v: &mut [u8], w: u32, h: u32, r: u32) {
    set_within(v, w, h, r, |p| p >= 128, 255);
}

/// Sets every pixel within Euclidean distance `r` of a pixel < 128 to 0 (pixels outside the
/// buffer do not count).
pub fn shrink(v: &mut [u8], w: u32, h: u32, r: u32) {
    if r > 0 {
        set_within(v, w, h, r, |p| p < 128, 0);
    }
}

/// Writes `value` to every pixel whose distance to the nearest source pixel is ≤ `r`.
/// Felzenszwalb–Huttenlocher exact squared EDT: a column pass of 1-D distances (capped at
/// `r + 1`, enough to decide "≤ r"), then the lower envelope of parabolas per row.
fn set_within(v: &mut [u8], w: u32, h: u32, r: u32, source: impl Fn(u8) -> bool, value: u8) {
    let (w, h) = (w as usize, h as usize);
    if w == 0 || h == 0 {
        return;
    }
    let cap = r.saturating_add(1).min(u16::MAX as u32) as u16;
    let mut g = vec![cap; w * h];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            g[i] = if source(v[i]) {
                0
            } else if y > 0 {
                g[i - w].saturating_add(1).min(cap)
            } else {
                cap
            };
        }
    }
    for y in (0..h - 1).rev() {
        for x in 0..w {
            let i = y * w + x;
            g[i] = g[i].min(g[i + w].saturating_add(1));
        }
    }
    let r2 = (r as f64) * (r as f64);
    let mut f = vec![0f64; w];
    let mut hull = vec![0usize; w];
    let mut z = vec![0f64; w + 1];
    for y in 0..h {
        let row = &g[y * w..(y + 1) * w];
        if row.iter().all(|&d| d == cap) {
            continue;
        }
        for (fx, &d) in f.iter_mut().zip(row) {
            *fx = f64::from(d) * f64::from(d);
        }
        let mut k = 0usize;
        hull[0] = 0;
        z[0] = f64::NEG_INFINITY;
        z[1] = f64::INFINITY;
        for q in 1..w {
            let fq = f[q] + (q * q) as f64;
            let mut s;
            loop {
                let p = hull[k];
                s = (fq - (f[p] + (p * p) as f64)) / (2.0 * (q - p) as f64);
                // z[0] is -inf, so k never underflows.
                if s <= z[k] && k > 0 {
                    k -= 1;
                } else {
                    break;
                }
            }
            k += 1;
            hull[k] = q;
            z[k] = s;
            z[k + 1] = f64::INFINITY;
        }
        k = 0;
        for q in 0..w {
            while z[k + 1] < q as f64 {
                k += 1;
            }
            let p = hull[k];
            let d2 = (q as f64 - p as f64).powi(2) + f[p];
            if d2 <= r2 {
                v[y * w + q] = value;
            }
        }
    }
}

/// Three odd box widths whose repeated box blur approximates a Gaussian of `sigma`
/// (Kovesi's "boxes for Gauss"); `None` when the blur would do nothing.
pub fn gauss_boxes(sigma: f32) -> Option<Vec<u32>> {
    if sigma.is_nan() || sigma <= 0.0 {
        return None;
    }
    let sigma = f64::from(sigma.min(MAX_SIGMA));
    let n = 3.0;
    let ideal = (12.0 * sigma * sigma / n + 1.0).sqrt();
    let mut wl = ideal.floor() as i64;
    if wl % 2 == 0 {
        wl -= 1;
    }
    let wu = wl + 2;
    let wlf = wl as f64;
    let m = ((12.0 * sigma * sigma - n * wlf * wlf - 4.0 * n * wlf - 3.0 * n) / (-4.0 * wlf - 4.0))
        .round() as i64;
    let boxes: Vec<u32> = (0..3)
        .map(|i| if i < m { wl } else { wu }.max(1) as u32)
        .collect();
    boxes.iter().any(|&b| b > 1).then_some(boxes)
}

/// Box-blurs `v` (`w`×`h`) with each odd width in `boxes`, horizontally then vertically;
/// edges are clamped. Running sums make each pass O(pixels).
pub fn blur(v: &mut [u8], w: u32, h: u32, boxes: &[u32]) {
    let (w, h) = (w as usize, h as usize);
    if w == 0 || h == 0 {
        return;
    }
    let mut tmp = vec![0u8; w];
    for &size in boxes {
        let k = (size / 2) as usize;
        for row in v.chunks_exact_mut(w) {
            tmp.copy_from_slice(row);
            box_line(&tmp, row, k);
        }
    }
    let mut sums = vec![0u32; w];
    let mut src = v.to_vec();
    for &size in boxes {
        let k = (size / 2) as usize;
        let s = 2 * k as u32 + 1;
        src.copy_from_slice(v);
        let row = |y: usize| &src[y.min(h - 1) * w..(y.min(h - 1) + 1) * w];
        for (x, sum) in sums.iter_mut().enumerate() {
            *sum = u32::from(src[x]) * (k as u32 + 1);
            for i in 1..=k {
                *sum += u32::from(row(i)[x]);
            }
        }
        for y in 0..h {
            let out = &mut v[y * w..(y + 1) * w];
            let (add, sub) = (row(y + k + 1), row(y.saturating_sub(k)));
            for x in 0..w {
                out[x] = ((sums[x] + s / 2) / s) as u8;
                sums[x] = sums[x] + u32::from(add[x]) - u32::from(sub[x]);
            }
        }
    }
}

/// One clamped box blur of radius `k` along a line.
fn box_line(src: &[u8], out: &mut [u8], k: usize) {
    let n = src.len();
    let s = 2 * k as u32 + 1;
    let at = |i: usize| u32::from(src[i.min(n - 1)]);
    let mut sum = u32::from(src[0]) * (k as u32 + 1) + (1..=k).map(at).sum::<u32>();
    for (x, o) in out.iter_mut().enumerate() {
        *o = ((sum + s / 2) / s) as u8;
        sum = sum + at(x + k + 1) - u32::from(src[x.saturating_sub(k)]);
    }
}

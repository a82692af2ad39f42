//! Colour matching of a fill to its surroundings (the editor's "match colours" option): mean
//! and spread of each channel over a ring of known pixels around the mask.

use image::{GrayImage, RgbImage};

use super::{MASK_THRESHOLD, Window};

/// Smallest gain [`match_colours`] applies to a channel's deviation from its mean.
pub const COLOUR_MATCH_MIN_GAIN: f32 = 0.5;
/// Largest gain [`match_colours`] applies to a channel's deviation from its mean.
pub const COLOUR_MATCH_MAX_GAIN: f32 = 2.0;

/// Colour-matches the model-resolution `generated` window (placed at `window`, as for
/// [`composite`](super::composite)) to `original`, returning the corrected copy.
///
/// The reference is a ring of known pixels (mask below [`MASK_THRESHOLD`]) inside the window and
/// the image, within `ring_px` image pixels (Chebyshev distance, at least one generated pixel) of
/// the mask. Per channel, with mean `μ` and standard deviation `σ` of the generated (`g`) and
/// original (`o`) pixels over that ring, every generated pixel becomes
/// `(v − μg) · clamp(σo / σg, 0.5, 2) + μo` (gain 1 when `σg` is near 0), rounded and clamped
/// to 0..=255. Only the masked area and its feather ramp use the generated pixels, so the
/// composite keeps every other pixel bit-identical. Returns `generated` unchanged when the ring
/// has fewer than 16 pixels (e.g. the mask covers the whole window).
pub fn match_colours(
    original: &RgbImage,
    mask: &GrayImage,
    window: &Window,
    generated: &RgbImage,
    ring_px: u32,
) -> RgbImage {
    let (gw, gh) = generated.dimensions();
    let (w, h) = original.dimensions();
    if gw == 0 || gh == 0 || window.size == 0 || w == 0 || h == 0 {
        return generated.clone();
    }
    let size = u64::from(window.size);
    // Image pixel under the centre of each generated column / row (None outside the image).
    let map = |n: u32, origin: i64, len: u32| -> Vec<Option<u32>> {
        (0..n)
            .map(|g| {
                let off = ((2 * u64::from(g) + 1) * size / (2 * u64::from(n))) as i64;
                let v = origin + off;
                (v >= 0 && v < i64::from(len)).then_some(v as u32)
            })
            .collect()
    };
    let xs = map(gw, window.x, w);
    let ys = map(gh, window.y, h);
    let masked_at = |x: u32, y: u32| {
        x < mask.width() && y < mask.height() && mask.get_pixel(x, y)[0] >= MASK_THRESHOLD
    };
    let (gwu, ghu) = (gw as usize, gh as usize);
    let mut masked = vec![false; gwu * ghu];
    for (gy, y) in ys.iter().enumerate() {
        for (gx, x) in xs.iter().enumerate() {
            if let (Some(x), Some(y)) = (x, y) {
                masked[gy * gwu + gx] = masked_at(*x, *y);
            }
        }
    }
    // Dilate the mask by `r` generated pixels (separable max filter).
    let r = ((u64::from(ring_px) * u64::from(gw.max(gh))).div_ceil(size)).max(1) as usize;
    let mut horiz = vec![false; masked.len()];
    for gy in 0..ghu {
        let row = &masked[gy * gwu..(gy + 1) * gwu];
        for gx in 0..gwu {
            let lo = gx.saturating_sub(r);
            let hi = (gx + r + 1).min(gwu);
            horiz[gy * gwu + gx] = row[lo..hi].iter().any(|&m| m);
        }
    }
    let mut sums = [[0f64; 4]; 3]; // per channel: Σg, Σg², Σo, Σo²
    let mut n = 0usize;
    for gy in 0..ghu {
        let Some(y) = ys[gy] else { continue };
        let lo = gy.saturating_sub(r);
        let hi = (gy + r + 1).min(ghu);
        for gx in 0..gwu {
            let Some(x) = xs[gx] else { continue };
            if masked[gy * gwu + gx] || !(lo..hi).any(|yy| horiz[yy * gwu + gx]) {
                continue;
            }
            let g = generated.get_pixel(gx as u32, gy as u32).0;
            let o = original.get_pixel(x, y).0;
            for c in 0..3 {
                let (gv, ov) = (f64::from(g[c]), f64::from(o[c]));
                sums[c][0] += gv;
                sums[c][1] += gv * gv;
                sums[c][2] += ov;
                sums[c][3] += ov * ov;
            }
            n += 1;
        }
    }
    if n < 16 {
        return generated.clone();
    }
    let nf = n as f64;
    let mut lut = [[0u8; 256]; 3];
    for c in 0..3 {
        let mg = sums[c][0] / nf;
        let mo = sums[c][2] / nf;
        let sg = (sums[c][1] / nf - mg * mg).max(0.0).sqrt();
        let so = (sums[c][3] / nf - mo * mo).max(0.0).sqrt();
        let gain = if sg < 1e-3 {
            1.0
        } else {
            (so / sg).clamp(
                f64::from(COLOUR_MATCH_MIN_GAIN),
                f64::from(COLOUR_MATCH_MAX_GAIN),
            )
        };
        for (v, out) in lut[c].iter_mut().enumerate() {
            *out = ((v as f64 - mg) * gain + mo).round().clamp(0.0, 255.0) as u8;
        }
    }
    let mut out = generated.clone();
    for p in out.pixels_mut() {
        for c in 0..3 {
            p.0[c] = lut[c][usize::from(p.0[c])];
        }
    }
    out
}

/// Width of the reference ring [`match_colours`] uses for a given feather width: the feather
/// ramp plus as much again, at least 16 image pixels.
pub fn colour_match_ring_px(feather_px: u32) -> u32 {
    feather_px.saturating_mul(2).max(16)
}

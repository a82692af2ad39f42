//! Premultiplied-alpha resampling and compositing of sprites.
//!
//! Sprites are kept premultiplied so that downsampling never bleeds the (arbitrary) colour of
//! transparent pixels into the edges. Downscaling is an exact area average (every source pixel
//! weighted by the fraction of it that a destination pixel covers); upscaling is bilinear.

use image::{RgbImage, RgbaImage};

/// Straight-alpha RGBA → premultiplied RGBA, in place (rounded).
pub fn premultiply(img: &mut RgbaImage) {
    for px in img.pixels_mut() {
        let a = u32::from(px[3]);
        for c in 0..3 {
            px[c] = ((u32::from(px[c]) * a + 127) / 255) as u8;
        }
    }
}

/// Premultiplied RGBA → straight-alpha RGBA (for writing PNGs).
pub fn unpremultiply(img: &RgbaImage) -> RgbaImage {
    let mut out = img.clone();
    for px in out.pixels_mut() {
        let a = u32::from(px[3]);
        for c in 0..3 {
            px[c] = (u32::from(px[c]) * 255 + a / 2)
                .checked_div(a)
                .map_or(0, |v| v.min(255) as u8);
        }
    }
    out
}

/// Taps of a 1-D resampling from `src` to `dst` samples: for each destination sample the list
/// of (source index, weight), weights summing to 1.
fn taps(src: u32, dst: u32) -> Vec<Vec<(usize, f32)>> {
    let (src, dst) = (src as usize, dst as usize);
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|i| {
            if scale >= 1.0 {
                // Area: destination pixel i covers [i·scale, (i+1)·scale) of the source.
                let (lo, hi) = (i as f64 * scale, (i + 1) as f64 * scale);
                let mut t = Vec::new();
                let mut j = lo.floor() as usize;
                while (j as f64) < hi && j < src {
                    let overlap = (hi.min((j + 1) as f64) - lo.max(j as f64)).max(0.0);
                    if overlap > 0.0 {
                        t.push((j, (overlap / scale) as f32));
                    }
                    j += 1;
                }
                t
            } else {
                // Bilinear between pixel centres, edges clamped.
                let c = ((i as f64 + 0.5) * scale - 0.5).clamp(0.0, (src - 1) as f64);
                let j = c.floor() as usize;
                let f = (c - j as f64) as f32;
                if j + 1 < src && f > 0.0 {
                    vec![(j, 1.0 - f), (j + 1, f)]
                } else {
                    vec![(j, 1.0)]
                }
            }
        })
        .collect()
}

/// Resamples a premultiplied RGBA image to `w`×`h` (area average down, bilinear up).
pub fn resize_premultiplied(img: &RgbaImage, w: u32, h: u32) -> RgbaImage {
    let (sw, sh) = img.dimensions();
    if (sw, sh) == (w, h) {
        return img.clone();
    }
    let (tx, ty) = (taps(sw, w), taps(sh, h));
    let src = img.as_raw();
    // Horizontal pass into f32 (sh rows × w columns × 4).
    let mut tmp = vec![0f32; sh as usize * w as usize * 4];
    for y in 0..sh as usize {
        let row = &src[y * sw as usize * 4..(y + 1) * sw as usize * 4];
        for (x, t) in tx.iter().enumerate() {
            let o = (y * w as usize + x) * 4;
            for &(j, wt) in t {
                for c in 0..4 {
                    tmp[o + c] += wt * f32::from(row[j * 4 + c]);
                }
            }
        }
    }
    let mut out = RgbaImage::new(w, h);
    let dst: &mut [u8] = &mut out;
    for (y, t) in ty.iter().enumerate() {
        for x in 0..w as usize {
            let mut acc = [0f32; 4];
            for &(j, wt) in t {
                let o = (j * w as usize + x) * 4;
                for c in 0..4 {
                    acc[c] += wt * tmp[o + c];
                }
            }
            let o = (y * w as usize + x) * 4;
            // Premultiplied colour never exceeds alpha; keep it so after rounding.
            let a = acc[3].round().clamp(0.0, 255.0);
            dst[o + 3] = a as u8;
            for c in 0..3 {
                dst[o + c] = acc[c].round().clamp(0.0, a) as u8;
            }
        }
    }
    out
}

/// Draws a premultiplied sprite resampled to `size`×`size` with its top-left corner at `(x, y)`
/// over an opaque image ("over" operator); parts outside the image are clipped.
pub fn composite_over(dst: &mut RgbImage, sprite: &RgbaImage, x: i32, y: i32, size: u32) {
    let s = resize_premultiplied(sprite, size, size);
    let (w, h) = (dst.width() as i32, dst.height() as i32);
    for sy in 0..size as i32 {
        let dy = y + sy;
        if dy < 0 || dy >= h {
            continue;
        }
        for sx in 0..size as i32 {
            let dx = x + sx;
            if dx < 0 || dx >= w {
                continue;
            }
            let p = s.get_pixel(sx as u32, sy as u32);
            let a = u32::from(p[3]);
            if a == 0 {
                continue;
            }
            let q = dst.get_pixel_mut(dx as u32, dy as u32);
            for c in 0..3 {
                let v = u32::from(p[c]) * 255 + u32::from(q[c]) * (255 - a);
                q[c] = ((v + 127) / 255).min(255) as u8;
            }
        }
    }
}

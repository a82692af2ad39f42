//! Pixel-space side of inpainting: masks, context windows, the model view, the token mask and the
//! composite back into the full image. Pure functions on images; no networks.
//!
//! # Pipeline
//! 1. [`plan_window`] picks a square context window around the mask.
//! 2. [`crop_to_model`] crops it (edge-replicating outside the image) and resizes it to the
//!    model's resolution; [`to_tensor`] makes the VQGAN input.
//! 3. [`token_mask`] reduces the pixel mask to the token grid, [`known_tokens`] turns the encoded
//!    grid plus that mask into the sampler's `known` vector.
//! 4. After sampling and decoding, [`from_tensor`] gives the model-resolution image and
//!    [`composite`] blends it back into the full-size original ([`composite_window`] does the
//!    same for the window only, for previews).
//!
//! # Conventions and decisions
//! * **Mask.** A [`GrayImage`] of the image's size; a pixel with value **≥ 128 is regenerated**,
//!   anything below is kept. (This is the inverse of the official script, whose float mask uses
//!   1 = keep; imagebart.md §6.1.) [`preset_mask`] builds the paper's evaluation masks without the
//!   official demo's border side effect.
//! * **Windows are always square**, because the models are trained on square 256² images. The
//!   window is the mask's bounding box, grown by [`WindowOptions::padding`] × its larger side on
//!   every side (at least [`WindowOptions::min_padding_px`], and at least
//!   [`WindowOptions::feather_px`] so the blend ramp lies inside the window), centred on the box.
//!   Near an image border the window is *shifted* into the image, so it keeps real context
//!   instead of replicated pixels. It extends past the image only along an axis where it is
//!   larger than the image (non-square images with a large mask, full masks, `whole_image`);
//!   there the image is centred in the window and the parts outside the image are filled by
//!   edge replication — for the model only: nothing outside the image is ever written back. A
//!   window never exceeds the image's larger side.
//! * **`whole_image`**: the window is the smallest square containing the image, centred
//!   ([`Window::covering`]); the image is not distorted.
//! * **Empty mask**: [`plan_window`] returns `Ok(None)`, there is nothing to regenerate.
//!   **Full mask** (or any mask whose padded box covers the image): the window is the whole
//!   image, exactly as with `whole_image`.
//! * **Small images / small windows**: a window smaller than the model's resolution is
//!   *upscaled* into the model (the model sees a blurry enlargement, and a token covers fewer
//!   than 16 image pixels); the result is *downscaled* back to the window on composite. Larger
//!   windows are downscaled into the model and the result upscaled back, so the generated
//!   content has the model's resolution spread over the window.
//! * **Resampling** is a separable Catmull–Rom filter with the geometry of
//!   `image::imageops::resize(.., FilterType::CatmullRom)` (anti-aliased when downscaling; an
//!   exact copy when the window already has the model's size).
//! * **Token mask**: a token is regenerated when the fraction of its patch covered by masked
//!   pixels is > 0 and ≥ the threshold, computed exactly (area-weighted) on the original-resolution
//!   mask, so thin strokes survive any scaling. (The official script instead samples the mask at
//!   each patch's top-left pixel; imagebart.md §6.1.)
//! * **Composite**: alpha is 1 on the mask and falls off smoothly (smoothstep of the Euclidean
//!   distance) to 0 at distance `feather_px`; pixels farther than `feather_px` from every masked
//!   pixel, and every pixel outside the window, are bit-identical to the original. On the mask
//!   the result is the generated content (resized back). Mask pixels outside the window cannot
//!   be regenerated and are kept.
//! * **Masks of another size** than the image are an error in [`plan_window`]; the functions that
//!   cannot fail treat mask pixels outside the mask's own bounds as "keep".
//! * **Cost**: [`plan_window`] scans the mask once; [`crop_to_model`], [`token_mask`] and the
//!   blending work in O(window ∩ image) (the blend only over the feathered mask's box), so a
//!   small mask on an 8192² image is cheap apart from [`composite`]'s copy of the image.
//! * **Tensors**: `x / 127.5 − 1` in, clamp + `(x + 1) / 2 · 255` + truncation out, as the
//!   official code (imagebart.md §4.5); the u8 → tensor → u8 round trip is exact or one lower
//!   (see [`from_tensor`]).

mod colour;
mod feather;
mod resample;

pub use colour::{
    COLOUR_MATCH_MAX_GAIN, COLOUR_MATCH_MIN_GAIN, colour_match_ring_px, match_colours,
};

use candle_core::{DType, Device, Tensor};
use image::{GrayImage, RgbImage};
use serde::{Deserialize, Serialize};

/// Mask values at or above this are regenerated.
pub const MASK_THRESHOLD: u8 = 128;

/// How [`plan_window`] chooses the context window, and how the composite and the token mask
/// treat the mask's edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WindowOptions {
    /// Use the whole image as the window (the smallest square containing it, centred; outside
    /// parts edge-replicated for the model). Default `false`: a window around the mask.
    pub whole_image: bool,
    /// Context on each side of the mask's bounding box, as a fraction of the box's larger side.
    /// Default 1.0 (the window is three times the box). Negative or non-finite values mean 0.
    pub padding: f32,
    /// Lower bound of the context on each side, in image pixels. Default 16.
    pub min_padding_px: u32,
    /// Width in image pixels of the blend ramp outside the mask; pixels farther than this from
    /// the mask keep their original values exactly. Default 8. (Clamped to 65534.)
    pub feather_px: u32,
    /// A token is regenerated when at least this fraction of its patch is masked (and at least
    /// one pixel is). Default 0.0: any masked pixel. (The composite still blends the decoded
    /// window over every masked pixel; in tokens kept by a higher threshold that is the VQGAN
    /// reconstruction of the original.)
    pub token_threshold: f32,
    /// Colour match: before compositing, shift and scale each channel of the generated window so
    /// that its mean and standard deviation over a ring of known pixels around the mask match
    /// the original's there (see [`match_colours`]). Removes colour casts and brightness drift
    /// of the fill. Default `false` (results identical to earlier versions); pixels outside the
    /// mask and its feather ramp are never changed either way.
    pub colour_match: bool,
    /// Use exactly this window whatever the mask (it must contain the mask). A second pass over
    /// some tokens of a first pass ("repaint unsure") keeps the first pass's window so that the
    /// two token grids coincide and only the chosen tokens are masked. Default `None`.
    pub fixed: Option<Window>,
}

impl Default for WindowOptions {
    fn default() -> Self {
        Self {
            whole_image: false,
            padding: 1.0,
            min_padding_px: 16,
            feather_px: 8,
            token_threshold: 0.0,
            colour_match: false,
            fixed: None,
        }
    }
}

/// A square window in image coordinates: columns `x..x + size`, rows `y..y + size`. It may extend
/// past the image edges; those parts are filled by edge replication when cropping and never
/// written back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Window {
    /// Left column (may be negative).
    pub x: i64,
    /// Top row (may be negative).
    pub y: i64,
    /// Side length in image pixels.
    pub size: u32,
}

impl Window {
    /// The smallest square containing a `w`×`h` image, centred on it (for a non-square image it
    /// extends past the shorter sides; with an odd difference the extra pixel is on the
    /// right/bottom).
    pub fn covering(w: u32, h: u32) -> Self {
        let size = w.max(h);
        Self {
            x: (i64::from(w) - i64::from(size)).div_euclid(2),
            y: (i64::from(h) - i64::from(size)).div_euclid(2),
            size,
        }
    }

    /// The part of the window inside a `w`×`h` image as `(x, y, width, height)`, or `None` when
    /// they do not overlap.
    pub fn clip_to(&self, w: u32, h: u32) -> Option<(u32, u32, u32, u32)> {
        let r = self.rect_in(w, h)?;
        Some((r.x0, r.y0, r.width(), r.height()))
    }

    fn rect_in(&self, w: u32, h: u32) -> Option<Rect> {
        let s = i64::from(self.size);
        let x0 = self.x.clamp(0, i64::from(w));
        let y0 = self.y.clamp(0, i64::from(h));
        let x1 = self.x.saturating_add(s).clamp(0, i64::from(w));
        let y1 = self.y.saturating_add(s).clamp(0, i64::from(h));
        (x1 > x0 && y1 > y0).then_some(Rect {
            x0: x0 as u32,
            y0: y0 as u32,
            x1: x1 as u32,
            y1: y1 as u32,
        })
    }
}

/// Half-open rectangle in image coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rect {
    x0: u32,
    y0: u32,
    x1: u32,
    y1: u32,
}

impl Rect {
    fn width(&self) -> u32 {
        self.x1.saturating_sub(self.x0)
    }
    fn height(&self) -> u32 {
        self.y1.saturating_sub(self.y0)
    }
}

/// Bounding box of the regenerated pixels of `mask` inside `r` (which must lie inside the mask).
fn mask_bbox_in(mask: &GrayImage, r: Rect) -> Option<Rect> {
    if r.x1 <= r.x0 || r.y1 <= r.y0 || r.x1 > mask.width() || r.y1 > mask.height() {
        return None;
    }
    let stride = mask.width() as usize;
    let raw = mask.as_raw();
    let mut bb: Option<Rect> = None;
    for y in r.y0..r.y1 {
        let start = y as usize * stride;
        let line = &raw[start + r.x0 as usize..start + r.x1 as usize];
        let Some(first) = line.iter().position(|&v| v >= MASK_THRESHOLD) else {
            continue;
        };
        let last = line
            .iter()
            .rposition(|&v| v >= MASK_THRESHOLD)
            .unwrap_or(first);
        let (lx, rx) = (r.x0 + first as u32, r.x0 + last as u32 + 1);
        bb = Some(match bb {
            None => Rect {
                x0: lx,
                y0: y,
                x1: rx,
                y1: y + 1,
            },
            Some(b) => Rect {
                x0: b.x0.min(lx),
                y0: b.y0,
                x1: b.x1.max(rx),
                y1: y + 1,
            },
        });
    }
    bb
}

/// Places a window of side `size` along an axis of length `len`, centred at `twice_centre / 2`:
/// shifted into the image when it fits, centred on the image when it does not.
fn place(twice_centre: i64, size: i64, len: i64) -> i64 {
    if size <= len {
        (twice_centre - size).div_euclid(2).clamp(0, len - size)
    } else {
        (len - size).div_euclid(2)
    }
}

/// Chooses the square context window for `mask` on a `image_w`×`image_h` image (see the module
/// documentation for the rules).
///
/// Errors when the image is empty or the mask's size differs from the image's (the message
/// names both sizes). `Ok(None)` when the mask is empty (nothing to regenerate).
pub fn plan_window(
    image_w: u32,
    image_h: u32,
    mask: &GrayImage,
    opts: &WindowOptions,
) -> Result<Option<Window>, String> {
    if image_w == 0 || image_h == 0 {
        return Err(format!(
            "cannot inpaint an empty image ({image_w}×{image_h})"
        ));
    }
    let (mw, mh) = mask.dimensions();
    if (mw, mh) != (image_w, image_h) {
        return Err(format!(
            "mask size {mw}×{mh} differs from image size {image_w}×{image_h}"
        ));
    }
    let full = Rect {
        x0: 0,
        y0: 0,
        x1: mw,
        y1: mh,
    };
    let Some(bb) = mask_bbox_in(mask, full) else {
        return Ok(None);
    };
    if let Some(win) = opts.fixed {
        let inside = win.size > 0
            && win.x <= i64::from(bb.x0)
            && win.y <= i64::from(bb.y0)
            && win.x + i64::from(win.size) >= i64::from(bb.x1)
            && win.y + i64::from(win.size) >= i64::from(bb.y1);
        if !inside {
            return Err(format!(
                "the mask ({}..{} × {}..{}) reaches outside the fixed window ({}, {}, side {})",
                bb.x0, bb.x1, bb.y0, bb.y1, win.x, win.y, win.size
            ));
        }
        return Ok(Some(win));
    }
    if opts.whole_image {
        return Ok(Some(Window::covering(image_w, image_h)));
    }
    let side = i64::from(bb.width().max(bb.height()));
    let frac = if opts.padding.is_finite() && opts.padding > 0.0 {
        f64::from(opts.padding)
    } else {
        0.0
    };
    let max_side = i64::from(image_w.max(image_h));
    let pad = ((frac * side as f64).ceil().min(max_side as f64) as i64)
        .max(i64::from(opts.min_padding_px))
        .max(i64::from(opts.feather_px));
    let size = (side + 2 * pad).min(max_side);
    let x = place(
        i64::from(bb.x0) + i64::from(bb.x1),
        size,
        i64::from(image_w),
    );
    let y = place(
        i64::from(bb.y0) + i64::from(bb.y1),
        size,
        i64::from(image_h),
    );
    Ok(Some(Window {
        x,
        y,
        size: size as u32,
    }))
}

/// Crops `window` from `image` (edge-replicating the parts outside the image) and resizes it to
/// `res`×`res` with a Catmull–Rom filter. A window of exactly `res` pixels inside the image is
/// copied exactly. Returns a black image when the image or the window is empty, or the window's
/// side exceeds 2²⁰ pixels (no image that large exists; [`plan_window`] never returns a window
/// larger than the image's larger side).
pub fn crop_to_model(image: &RgbImage, window: &Window, res: u32) -> RgbImage {
    resample::crop_resize(image, window.x, window.y, u64::from(window.size), res)
}

/// The mask cropped like [`crop_to_model`] (outside the image = keep) and reduced to a
/// `grid`×`grid` token grid in raster order: `true` = regenerate.
///
/// A token is regenerated when the fraction of its patch (the window split into `grid`×`grid`
/// equal, possibly fractional, cells) covered by masked pixels is > 0 and ≥ `threshold`. The
/// coverage is computed exactly from the original-resolution mask (pixel areas overlapping each
/// cell), so a one-pixel stroke marks its token at any window size. A non-finite or negative
/// threshold means 0; a threshold above 1 regenerates nothing. Empty when `grid` is 0; all
/// `false` when the window is empty.
pub fn token_mask(mask: &GrayImage, window: &Window, grid: usize, threshold: f32) -> Vec<bool> {
    let Some(cells) = grid.checked_mul(grid).filter(|&c| c > 0) else {
        return Vec::new();
    };
    let mut out = vec![false; cells];
    let (mw, mh) = mask.dimensions();
    let Some(r) = window.rect_in(mw, mh) else {
        return out;
    };
    let s = u64::from(window.size);
    let g = grid as u64;
    // In units of 1/grid pixel (window coordinates × grid), pixel i spans [i·g, (i+1)·g) and
    // cell t spans [t·s, (t+1)·s). For every window pixel index, the cells it overlaps and by
    // how much.
    let overlaps = |i: u64| -> Vec<(usize, u64)> {
        let (a, b) = (i * g, (i + 1) * g);
        let t_lo = a / s;
        let t_hi = (b.div_ceil(s)).min(g);
        (t_lo..t_hi)
            .filter_map(|t| {
                let o = b.min((t + 1) * s).saturating_sub(a.max(t * s));
                (o > 0).then_some((t as usize, o))
            })
            .collect()
    };
    let cols: Vec<Vec<(usize, u64)>> = (r.x0..r.x1)
        .map(|x| overlaps((i64::from(x) - window.x) as u64))
        .collect();
    let mut cover = vec![0u64; cells];
    let mut row_acc = vec![0u64; grid];
    let raw = mask.as_raw();
    for y in r.y0..r.y1 {
        let start = y as usize * mw as usize;
        let line = &raw[start + r.x0 as usize..start + r.x1 as usize];
        if !line.iter().any(|&v| v >= MASK_THRESHOLD) {
            continue;
        }
        row_acc.iter_mut().for_each(|a| *a = 0);
        for (v, col) in line.iter().zip(&cols) {
            if *v >= MASK_THRESHOLD {
                for &(t, o) in col {
                    row_acc[t] += o;
                }
            }
        }
        for (tr, oy) in overlaps((i64::from(y) - window.y) as u64) {
            let dst = &mut cover[tr * grid..(tr + 1) * grid];
            for (c, &a) in dst.iter_mut().zip(&row_acc) {
                *c += oy * a;
            }
        }
    }
    // A full cell has area s·s in these units.
    let thr = if threshold.is_finite() && threshold > 0.0 {
        f64::from(threshold)
    } else {
        0.0
    };
    let full = (s as f64) * (s as f64);
    for (o, &c) in out.iter_mut().zip(&cover) {
        *o = c > 0 && c as f64 >= thr * full;
    }
    out
}

/// RGB u8 → tensor of shape (1, 3, H, W), f32, `x / 127.5 − 1` (computed in f64 then rounded to
/// f32, as NumPy does in the official data pipeline), on `device`.
pub fn to_tensor(img: &RgbImage, device: &Device) -> candle_core::Result<Tensor> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let plane = w * h;
    let mut data = vec![0f32; 3 * plane];
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            data[c * plane + i] = (f64::from(px[c]) / 127.5 - 1.0) as f32;
        }
    }
    Tensor::from_vec(data, (1, 3, h, w), device)
}

/// Tensor of shape (B, 3, H, W) (or (3, H, W)) of any float dtype on any device → one image per
/// batch row: clamp to [−1, 1], `(x + 1) / 2 · 255` in f32, truncated to u8 (as the official
/// `chw_to_np`; NaN becomes 0).
///
/// Round trip: `from_tensor(to_tensor(img))` gives back every u8 value exactly or **one lower**
/// (95 of the 256 values: f32 rounding of `v / 127.5 − 1` then `(x + 1) / 2 · 255` lands just
/// below the integer and truncation drops it; 0, 128 and 255 are exact). The official pipeline
/// does the same; decoder outputs are continuous, where truncation is just the official
/// quantisation.
pub fn from_tensor(t: &Tensor) -> candle_core::Result<Vec<RgbImage>> {
    let (b, c, h, w) = match *t.dims() {
        [b, c, h, w] => (b, c, h, w),
        [c, h, w] => (1, c, h, w),
        _ => candle_core::bail!(
            "from_tensor: expected a (B, 3, H, W) or (3, H, W) tensor, got shape {:?}",
            t.dims()
        ),
    };
    if c != 3 {
        candle_core::bail!("from_tensor: expected 3 channels, got shape {:?}", t.dims());
    }
    let (Ok(w32), Ok(h32)) = (u32::try_from(w), u32::try_from(h)) else {
        candle_core::bail!("from_tensor: image too large: {w}×{h}");
    };
    let v = t
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .contiguous()?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let plane = h * w;
    let mut out = Vec::with_capacity(b);
    for n in 0..b {
        let base = n * 3 * plane;
        let mut raw = vec![0u8; 3 * plane];
        for (i, px) in raw.chunks_exact_mut(3).enumerate() {
            for (ch, p) in px.iter_mut().enumerate() {
                let x = v[base + ch * plane + i].clamp(-1.0, 1.0);
                *p = ((x + 1.0) / 2.0 * 255.0) as u8;
            }
        }
        match RgbImage::from_raw(w32, h32, raw) {
            Some(img) => out.push(img),
            None => candle_core::bail!("from_tensor: bad buffer size for {w}×{h}"),
        }
    }
    Ok(out)
}

/// Blends `generated` (placed at `window`) into `out`, which holds the original's pixels over
/// the image rectangle starting at `origin` and must contain `window ∩ image`.
fn blend_into(
    image_size: (u32, u32),
    mask: &GrayImage,
    window: &Window,
    generated: &RgbImage,
    feather_px: u32,
    out: &mut RgbImage,
    origin: (u32, u32),
) {
    let Some(allowed) = window.rect_in(image_size.0, image_size.1) else {
        return;
    };
    let Some(mut field) = feather::AlphaField::new(mask, allowed, feather_px) else {
        return;
    };
    let r = field.rect;
    let to_win = |v: u32, w0: i64| (i64::from(v) - w0) as u64;
    let Some(rs) = resample::RegionResampler::new(
        generated,
        u64::from(window.size),
        to_win(r.x0, window.x)..to_win(r.x1, window.x),
        to_win(r.y0, window.y)..to_win(r.y1, window.y),
    ) else {
        return;
    };
    let rw = r.width() as usize;
    let mut alpha = vec![0f32; rw];
    let mut gen_row = vec![0f32; rw * 3];
    let ow = out.width() as usize;
    let buf: &mut [u8] = &mut *out;
    for ry in 0..r.height() as usize {
        if !field.row(ry, &mut alpha) {
            continue;
        }
        rs.row(ry, &mut gen_row);
        let y = r.y0 as usize + ry - origin.1 as usize;
        let start = (y * ow + r.x0 as usize - origin.0 as usize) * 3;
        let dst = &mut buf[start..start + rw * 3];
        for ((&a, g), d) in alpha
            .iter()
            .zip(gen_row.chunks_exact(3))
            .zip(dst.chunks_exact_mut(3))
        {
            if a <= 0.0 {
                continue;
            }
            for c in 0..3 {
                let o = f32::from(d[c]);
                d[c] = (o + a * (g[c] - o)).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
}

/// Blends the model-resolution `generated` image (resized back to the window and placed there)
/// into `original` and returns the full-size result.
///
/// Alpha is 1 on the mask (inside the window) and ramps smoothly to 0 at `feather_px` pixels
/// from it; where alpha is 0 — farther than `feather_px` from the mask, or outside the window —
/// the result is bit-identical to `original`. Where alpha is 1 it is the generated content.
/// A non-square `generated` is stretched to the square window. Mask pixels outside the mask's
/// own bounds count as "keep".
pub fn composite(
    original: &RgbImage,
    mask: &GrayImage,
    window: &Window,
    generated: &RgbImage,
    feather_px: u32,
) -> RgbImage {
    let mut out = original.clone();
    blend_into(
        original.dimensions(),
        mask,
        window,
        generated,
        feather_px,
        &mut out,
        (0, 0),
    );
    out
}

/// Like [`composite`], but returns only the window's part of the image (window ∩ image) and its
/// top-left corner in image coordinates — for previews of the context window. An empty image
/// and `(0, 0)` when the window does not overlap the image.
pub fn composite_window(
    original: &RgbImage,
    mask: &GrayImage,
    window: &Window,
    generated: &RgbImage,
    feather_px: u32,
) -> (RgbImage, (u32, u32)) {
    let (w, h) = original.dimensions();
    let Some(r) = window.rect_in(w, h) else {
        return (RgbImage::new(0, 0), (0, 0));
    };
    let mut out = image::imageops::crop_imm(original, r.x0, r.y0, r.width(), r.height()).to_image();
    blend_into(
        (w, h),
        mask,
        window,
        generated,
        feather_px,
        &mut out,
        (r.x0, r.y0),
    );
    (out, (r.x0, r.y0))
}

/// The sampler's `known` vector: `Some(x0[i])` where the token is kept, `None` where
/// `regenerate[i]` is true. Its length is `x0.len()`; positions beyond `regenerate` are kept.
pub fn known_tokens(x0: &[u32], regenerate: &[bool]) -> Vec<Option<u32>> {
    x0.iter()
        .enumerate()
        .map(|(i, &t)| (!regenerate.get(i).copied().unwrap_or(false)).then_some(t))
        .collect()
}

/// The paper's evaluation masks (imagebart.md §6.1), at any size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PresetMask {
    /// Upper-half completion: rows `0..⌈h/2⌉` regenerated, the lower half kept.
    UpperHalf,
    /// Outpainting: everything regenerated except a centred square of side `min(w, h) / 2`.
    KeepCentre,
    /// Window inpainting: a centred square of side `max(1, min(w, h) / 4)` regenerated.
    CentreWindow,
}

/// Builds a [`PresetMask`] for a `w`×`h` image (255 = regenerate, 0 = keep). For 256×256 these
/// are exactly the official masks (top 128 rows; keep `64..192`²; regenerate `96..160`²) without
/// the official demo's border side effect.
pub fn preset_mask(kind: PresetMask, w: u32, h: u32) -> GrayImage {
    let short = w.min(h);
    let square = |side: u32| {
        let x0 = (w - side) / 2;
        let y0 = (h - side) / 2;
        (x0, y0, x0 + side, y0 + side)
    };
    match kind {
        PresetMask::UpperHalf => {
            let rows = h.div_ceil(2);
            GrayImage::from_fn(w, h, |_, y| image::Luma([if y < rows { 255 } else { 0 }]))
        }
        PresetMask::KeepCentre => {
            let (x0, y0, x1, y1) = square(short / 2);
            GrayImage::from_fn(w, h, |x, y| {
                let keep = x >= x0 && x < x1 && y >= y0 && y < y1;
                image::Luma([if keep { 0 } else { 255 }])
            })
        }
        PresetMask::CentreWindow => {
            let (x0, y0, x1, y1) = square((short / 4).max(1).min(short));
            GrayImage::from_fn(w, h, |x, y| {
                let regen = x >= x0 && x < x1 && y >= y0 && y < y1;
                image::Luma([if regen { 255 } else { 0 }])
            })
        }
    }
}

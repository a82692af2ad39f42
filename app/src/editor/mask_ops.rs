//! Mask operations: brush strokes, shapes, flood fill and whole-mask commands.
//!
//! Pure CPU code on [`Document::mask`]; no egui. Every public operation marks the pixels it
//! changed dirty and returns the [`MaskEdit`] it made (trimmed to the changed pixels), or `None`
//! when nothing changed, so the caller can push it on the undo stack as one step.

mod morph;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use image::GrayImage;

use super::document::{Document, MaskEdit, PixelRect};

/// A command on the whole mask.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GlobalOp {
    /// Every pixel 0.
    Clear,
    /// `255 - v` everywhere.
    Invert,
    /// Adds every pixel within this Euclidean distance (image pixels) of the mask (v ≥ 128).
    Grow(u32),
    /// Removes every pixel within this Euclidean distance of an unmasked pixel (v < 128).
    /// The image border does not erode the mask.
    Shrink(u32),
    /// Gaussian blur of the mask with this standard deviation in pixels (three box blurs).
    Feather(f32),
    /// Every pixel 255.
    SelectAll,
}

impl GlobalOp {
    /// History label of the operation.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Clear => "clear mask",
            Self::Invert => "invert mask",
            Self::Grow(_) => "grow mask",
            Self::Shrink(_) => "shrink mask",
            Self::Feather(_) => "feather mask",
            Self::SelectAll => "select all",
        }
    }
}

/// Whether a tool adds to the mask or removes from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaintMode {
    /// `max(old, value)`.
    Add,
    /// `min(old, 255 - value)`.
    Subtract,
}

impl PaintMode {
    fn apply(self, old: u8, value: u8) -> u8 {
        match self {
            Self::Add => old.max(value),
            Self::Subtract => old.min(255 - value),
        }
    }
}

/// How a self-intersecting lasso is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FillRule {
    /// Inside where any winding is non-zero (loops stay filled).
    #[default]
    NonZero,
    /// Inside where an odd number of edges is crossed (overlaps become holes).
    EvenOdd,
}

/// Round brush tip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Brush {
    /// Diameter in image pixels.
    pub size: f32,
    /// 1 = hard edge (1-pixel anti-aliased), 0 = soft all the way to the centre.
    pub hardness: f32,
}

impl Brush {
    /// Mask value (0..=1) at distance `d` (image pixels) from the brush centre line.
    pub fn value_at(&self, d: f32) -> f32 {
        let r = (self.size * 0.5).max(0.5);
        // A 1-pixel ramp centred on the radius keeps hard edges anti-aliased.
        let coverage = (r - d + 0.5).clamp(0.0, 1.0);
        let inner = r * self.hardness.clamp(0.0, 1.0);
        let soft = if d <= inner || r - inner <= f32::EPSILON {
            1.0
        } else {
            let t = ((r - d) / (r - inner)).clamp(0.0, 1.0);
            t * t * (3.0 - 2.0 * t)
        };
        coverage.min(soft)
    }
}

/// Paints the capsule from `a` to `b` (image pixel coordinates; pixel centres at `x + 0.5`)
/// into `mask`. Equivalent to stamping the brush at every point of the segment and keeping
/// the maximum, so fast strokes stay continuous at any spacing. Returns the changed bounds.
pub fn paint_segment(
    mask: &mut GrayImage,
    a: (f32, f32),
    b: (f32, f32),
    brush: Brush,
    mode: PaintMode,
) -> PixelRect {
    let bounds = segment_bounds(a, b, brush.size, mask.width(), mask.height());
    if bounds.is_empty() {
        return bounds;
    }
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let width = mask.width() as usize;
    let raw: &mut [u8] = mask;
    let mut changed = PixelRect::default();
    for y in bounds.y..bounds.y + bounds.h {
        let py = y as f32 + 0.5;
        let row = y as usize * width;
        for x in bounds.x..bounds.x + bounds.w {
            let px = x as f32 + 0.5;
            let t = if len2 > 0.0 {
                (((px - a.0) * dx + (py - a.1) * dy) / len2).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let (qx, qy) = (a.0 + t * dx - px, a.1 + t * dy - py);
            let v = brush.value_at((qx * qx + qy * qy).sqrt());
            if v <= 0.0 {
                continue;
            }
            let value = (v * 255.0).round() as u8;
            let old = raw[row + x as usize];
            let new = mode.apply(old, value);
            if new != old {
                raw[row + x as usize] = new;
                changed = changed.union(PixelRect { x, y, w: 1, h: 1 });
            }
        }
    }
    changed
}

/// The pixels a brush segment can touch, clipped to the image.
pub fn segment_bounds(a: (f32, f32), b: (f32, f32), size: f32, w: u32, h: u32) -> PixelRect {
    let r = (size * 0.5).max(0.5) + 1.0;
    let x0 = (a.0.min(b.0) - r).floor().max(0.0);
    let y0 = (a.1.min(b.1) - r).floor().max(0.0);
    let x1 = (a.0.max(b.0) + r).ceil().min(w as f32);
    let y1 = (a.1.max(b.1) + r).ceil().min(h as f32);
    if !(x1 > x0 && y1 > y0) {
        return PixelRect::default();
    }
    PixelRect {
        x: x0 as u32,
        y: y0 as u32,
        w: (x1 - x0) as u32,
        h: (y1 - y0) as u32,
    }
}

/// One brush dab at `centre` as its own edit.
pub fn stamp_brush(
    doc: &mut Document,
    centre: (f32, f32),
    brush: Brush,
    mode: PaintMode,
) -> Option<MaskEdit> {
    let mut stroke = StrokeRecorder::new(brush_label(mode));
    stroke.segment(doc, centre, centre, brush, mode);
    stroke.finish(doc)
}

/// History label of a brush stroke in `mode`.
pub fn brush_label(mode: PaintMode) -> &'static str {
    match mode {
        PaintMode::Add => "brush",
        PaintMode::Subtract => "eraser",
    }
}

/// Collects the mask pixels a multi-segment stroke overwrites, so the whole stroke becomes one
/// [`MaskEdit`]. Saves 64×64 tiles of the old mask the first time the stroke touches them,
/// which keeps strokes on 8192² masks cheap.
#[derive(Debug)]
pub struct StrokeRecorder {
    label: &'static str,
    tiles: HashMap<(u32, u32), Vec<u8>>,
    bounds: PixelRect,
}

const TILE: u32 = 64;

impl StrokeRecorder {
    /// An empty stroke that will be labelled `label` in the history.
    pub fn new(label: &'static str) -> Self {
        Self {
            label,
            tiles: HashMap::new(),
            bounds: PixelRect::default(),
        }
    }

    /// The history label.
    pub fn label(&self) -> &'static str {
        self.label
    }

    /// Pixels touched so far.
    pub fn bounds(&self) -> PixelRect {
        self.bounds
    }

    /// Saves the old mask in `rect` (call before changing pixels there).
    pub fn save(&mut self, doc: &Document, rect: PixelRect) {
        let (w, h) = doc.size();
        let rect = rect.clip(w, h);
        if rect.is_empty() {
            return;
        }
        for ty in rect.y / TILE..=(rect.y + rect.h - 1) / TILE {
            for tx in rect.x / TILE..=(rect.x + rect.w - 1) / TILE {
                self.tiles
                    .entry((tx, ty))
                    .or_insert_with(|| doc.mask_rect(tile_rect(tx, ty, w, h)));
            }
        }
        self.bounds = self.bounds.union(rect);
    }

    /// Paints one segment of the stroke into `doc`.
    pub fn segment(
        &mut self,
        doc: &mut Document,
        a: (f32, f32),
        b: (f32, f32),
        brush: Brush,
        mode: PaintMode,
    ) {
        let (w, h) = doc.size();
        let rect = segment_bounds(a, b, brush.size, w, h);
        self.save(doc, rect);
        let changed = paint_segment(&mut doc.mask, a, b, brush, mode);
        if !changed.is_empty() {
            doc.touch_mask(changed);
        }
    }

    /// The mask values the stroke replaced, inside `rect` (which must lie in the image).
    fn before(&self, doc: &Document, rect: PixelRect) -> Vec<u8> {
        let (w, h) = doc.size();
        let mut out = doc.mask_rect(rect);
        for (&(tx, ty), saved) in &self.tiles {
            let tile = tile_rect(tx, ty, w, h);
            let both = intersect(tile, rect);
            for y in both.y..both.y + both.h {
                let src = ((y - tile.y) * tile.w + both.x - tile.x) as usize;
                let dst = ((y - rect.y) * rect.w + both.x - rect.x) as usize;
                out[dst..dst + both.w as usize].copy_from_slice(&saved[src..src + both.w as usize]);
            }
        }
        out
    }

    /// Ends the stroke: the edit covering every pixel it changed, or `None`.
    pub fn finish(self, doc: &Document) -> Option<MaskEdit> {
        if self.bounds.is_empty() {
            return None;
        }
        let before = self.before(doc, self.bounds);
        let after = doc.mask_rect(self.bounds);
        trim(MaskEdit {
            rect: self.bounds,
            before,
            after,
            label: self.label,
        })
    }

    /// Undoes the stroke in `doc` (e.g. on Escape) without making an edit.
    pub fn cancel(self, doc: &mut Document) {
        if self.bounds.is_empty() {
            return;
        }
        let before = self.before(doc, self.bounds);
        doc.set_mask_rect(self.bounds, &before);
    }
}

fn tile_rect(tx: u32, ty: u32, w: u32, h: u32) -> PixelRect {
    PixelRect {
        x: tx * TILE,
        y: ty * TILE,
        w: TILE,
        h: TILE,
    }
    .clip(w, h)
}

/// The pixels in both rectangles (empty if none).
pub fn intersect(a: PixelRect, b: PixelRect) -> PixelRect {
    let x0 = a.x.max(b.x);
    let y0 = a.y.max(b.y);
    let x1 = (a.x + a.w).min(b.x + b.w);
    let y1 = (a.y + a.h).min(b.y + b.h);
    if x1 <= x0 || y1 <= y0 {
        return PixelRect::default();
    }
    PixelRect {
        x: x0,
        y: y0,
        w: x1 - x0,
        h: y1 - y0,
    }
}

/// Shrinks an edit to the bounding box of the pixels that differ; `None` if none do.
pub fn trim(edit: MaskEdit) -> Option<MaskEdit> {
    let r = edit.rect;
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    for y in 0..r.h {
        let row = (y * r.w) as usize..((y + 1) * r.w) as usize;
        let (b, a) = (&edit.before[row.clone()], &edit.after[row]);
        if b == a {
            continue;
        }
        let first = b.iter().zip(a).position(|(p, q)| p != q).unwrap_or(0) as u32;
        let last = b.iter().zip(a).rposition(|(p, q)| p != q).unwrap_or(0) as u32;
        x0 = x0.min(first);
        x1 = x1.max(last + 1);
        y0 = y0.min(y);
        y1 = y1.max(y + 1);
    }
    if x0 == u32::MAX {
        return None;
    }
    if (x0, y0, x1, y1) == (0, 0, r.w, r.h) {
        return Some(edit);
    }
    let inner = PixelRect {
        x: r.x + x0,
        y: r.y + y0,
        w: x1 - x0,
        h: y1 - y0,
    };
    let cut = |v: &[u8]| {
        let mut out = Vec::with_capacity((inner.w * inner.h) as usize);
        for y in y0..y1 {
            let s = (y * r.w + x0) as usize;
            out.extend_from_slice(&v[s..s + inner.w as usize]);
        }
        out
    };
    Some(MaskEdit {
        rect: inner,
        before: cut(&edit.before),
        after: cut(&edit.after),
        label: edit.label,
    })
}

/// Runs `f` on the mask values of `rect` (row-major, `rect.w` wide) and records the result
/// as one edit.
fn edit_rect(
    doc: &mut Document,
    rect: PixelRect,
    label: &'static str,
    f: impl FnOnce(&mut [u8]),
) -> Option<MaskEdit> {
    let (w, h) = doc.size();
    let rect = rect.clip(w, h);
    if rect.is_empty() {
        return None;
    }
    let before = doc.mask_rect(rect);
    let mut after = before.clone();
    f(&mut after);
    let edit = trim(MaskEdit {
        rect,
        before,
        after,
        label,
    })?;
    doc.apply_mask_edit(&edit, true);
    Some(edit)
}

/// Sets (or, subtracting, clears) every pixel of `rect`.
pub fn fill_rect(doc: &mut Document, rect: PixelRect, mode: PaintMode) -> Option<MaskEdit> {
    let label = match mode {
        PaintMode::Add => "rectangle",
        PaintMode::Subtract => "erase rectangle",
    };
    edit_rect(doc, rect, label, |v| {
        v.iter_mut().for_each(|p| *p = mode.apply(*p, 255));
    })
}

/// Fills the polygon through `points` (image pixel coordinates; closed implicitly). A pixel
/// is inside when its centre is.
pub fn fill_polygon(
    doc: &mut Document,
    points: &[(f32, f32)],
    rule: FillRule,
    mode: PaintMode,
) -> Option<MaskEdit> {
    if points.len() < 3 || points.iter().any(|p| !p.0.is_finite() || !p.1.is_finite()) {
        return None;
    }
    let (w, h) = doc.size();
    let min_y = points.iter().map(|p| p.1).fold(f32::MAX, f32::min);
    let max_y = points.iter().map(|p| p.1).fold(f32::MIN, f32::max);
    let min_x = points.iter().map(|p| p.0).fold(f32::MAX, f32::min);
    let max_x = points.iter().map(|p| p.0).fold(f32::MIN, f32::max);
    let x0 = min_x.floor().clamp(0.0, w as f32) as u32;
    let x1 = max_x.ceil().clamp(0.0, w as f32) as u32;
    let y0 = min_y.floor().clamp(0.0, h as f32) as u32;
    let y1 = max_y.ceil().clamp(0.0, h as f32) as u32;
    let rect = PixelRect {
        x: x0,
        y: y0,
        w: x1.saturating_sub(x0),
        h: y1.saturating_sub(y0),
    };
    let label = match mode {
        PaintMode::Add => "lasso",
        PaintMode::Subtract => "erase lasso",
    };
    edit_rect(doc, rect, label, |v| {
        let mut crossings: Vec<(f32, i32)> = Vec::new();
        for row in 0..rect.h {
            let yc = (rect.y + row) as f32 + 0.5;
            crossings.clear();
            for (i, &p) in points.iter().enumerate() {
                let q = points[(i + 1) % points.len()];
                if (p.1 <= yc) != (q.1 <= yc) {
                    let x = p.0 + (yc - p.1) / (q.1 - p.1) * (q.0 - p.0);
                    crossings.push((x, if q.1 > p.1 { 1 } else { -1 }));
                }
            }
            crossings.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut winding = 0;
            for (i, &(x, dir)) in crossings.iter().enumerate() {
                winding += match rule {
                    FillRule::NonZero => dir,
                    FillRule::EvenOdd => 1,
                };
                let inside = match rule {
                    FillRule::NonZero => winding != 0,
                    FillRule::EvenOdd => winding % 2 == 1,
                };
                let Some(&(next, _)) = crossings.get(i + 1) else {
                    break;
                };
                if !inside {
                    continue;
                }
                // Pixels whose centre x + 0.5 lies in [x, next).
                let a = ((x - 0.5).ceil().max(rect.x as f32) as u32).min(rect.x + rect.w);
                let b = ((next - 0.5).ceil().max(rect.x as f32) as u32).min(rect.x + rect.w);
                let base = (row * rect.w) as usize;
                for px in a..b {
                    let p = &mut v[base + (px - rect.x) as usize];
                    *p = mode.apply(*p, 255);
                }
            }
        }
    })
}

/// Adds (or removes) the 4-connected region of pixels whose image colour differs from the
/// colour at `seed` by at most `tolerance` in every channel (RGBA).
pub fn flood_fill(
    doc: &mut Document,
    seed: (u32, u32),
    tolerance: u8,
    mode: PaintMode,
) -> Option<MaskEdit> {
    let (w, h) = doc.size();
    if seed.0 >= w || seed.1 >= h {
        return None;
    }
    let region = morph::flood_region(&doc.image, seed, tolerance);
    let label = match mode {
        PaintMode::Add => "fill",
        PaintMode::Subtract => "erase fill",
    };
    let rect = region.bounds;
    edit_rect(doc, rect, label, |v| {
        for &(y, xa, xb) in &region.spans {
            let base = ((y - rect.y) * rect.w) as usize;
            for x in xa..xb {
                let p = &mut v[base + (x - rect.x) as usize];
                *p = mode.apply(*p, 255);
            }
        }
    })
}

/// Applies a whole-mask command.
pub fn apply_global(doc: &mut Document, op: GlobalOp) -> Option<MaskEdit> {
    let (w, h) = doc.size();
    let full = PixelRect::full(w, h);
    let label = op.label();
    match op {
        GlobalOp::Clear => {
            let rect = morph::bounds_where(&doc.mask, |v| v > 0)?;
            edit_rect(doc, rect, label, |v| v.fill(0))
        }
        GlobalOp::SelectAll => {
            let rect = morph::bounds_where(&doc.mask, |v| v < 255)?;
            edit_rect(doc, rect, label, |v| v.fill(255))
        }
        GlobalOp::Invert => edit_rect(doc, full, label, |v| {
            v.iter_mut().for_each(|p| *p = 255 - *p);
        }),
        GlobalOp::Grow(r) => {
            let r = r.min(morph::MAX_RADIUS);
            let rect = grown(morph::bounds_where(&doc.mask, |v| v >= 128)?, r, w, h);
            edit_rect(doc, rect, label, |v| morph::grow(v, rect.w, rect.h, r))
        }
        GlobalOp::Shrink(r) => {
            let r = r.min(morph::MAX_RADIUS);
            let rect = grown(morph::bounds_where(&doc.mask, |v| v > 0)?, r, w, h);
            edit_rect(doc, rect, label, |v| morph::shrink(v, rect.w, rect.h, r))
        }
        GlobalOp::Feather(sigma) => {
            let boxes = morph::gauss_boxes(sigma)?;
            let reach = boxes.iter().map(|b| b / 2).sum::<u32>() + 1;
            let rect = grown(morph::bounds_where(&doc.mask, |v| v > 0)?, reach, w, h);
            edit_rect(doc, rect, label, |v| morph::blur(v, rect.w, rect.h, &boxes))
        }
    }
}

/// Replaces the whole mask by `mask` (e.g. the mask of the last generation) as one edit; `None`
/// when the sizes differ or nothing changes.
pub fn restore_mask(doc: &mut Document, mask: &image::GrayImage) -> Option<MaskEdit> {
    let (w, h) = doc.size();
    if mask.dimensions() != (w, h) {
        return None;
    }
    edit_rect(doc, PixelRect::full(w, h), "reuse last mask", |v| {
        v.copy_from_slice(mask.as_raw());
    })
}

/// `rect` widened by `by` on every side, clipped to the image.
fn grown(rect: PixelRect, by: u32, w: u32, h: u32) -> PixelRect {
    let x = rect.x.saturating_sub(by);
    let y = rect.y.saturating_sub(by);
    PixelRect {
        x,
        y,
        w: rect.x + rect.w + by - x,
        h: rect.y + rect.h + by - y,
    }
    .clip(w, h)
}

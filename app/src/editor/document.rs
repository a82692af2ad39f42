//! The document the editor works on: the image, the mask, what a running job shows on top,
//! and which pixels changed since the canvas last uploaded them.
//!
//! Shared by the canvas (draws it, edits the mask) and the app shell (files, jobs, history).
//! Pixel coordinates are image pixels, origin top-left.

use std::sync::Arc;

use image::{GrayImage, RgbImage, RgbaImage};

/// An axis-aligned rectangle of image pixels; empty when `w` or `h` is 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PixelRect {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width in pixels.
    pub w: u32,
    /// Height in pixels.
    pub h: u32,
}

impl PixelRect {
    /// The rectangle covering a whole `w`×`h` image.
    pub fn full(w: u32, h: u32) -> Self {
        Self { x: 0, y: 0, w, h }
    }

    /// True when it covers no pixel.
    pub fn is_empty(&self) -> bool {
        self.w == 0 || self.h == 0
    }

    /// The smallest rectangle covering both (an empty one is ignored).
    pub fn union(self, other: Self) -> Self {
        if self.is_empty() {
            return other;
        }
        if other.is_empty() {
            return self;
        }
        let x0 = self.x.min(other.x);
        let y0 = self.y.min(other.y);
        let x1 = (self.x + self.w).max(other.x + other.w);
        let y1 = (self.y + self.h).max(other.y + other.h);
        Self {
            x: x0,
            y: y0,
            w: x1 - x0,
            h: y1 - y0,
        }
    }

    /// This rectangle clipped to a `w`×`h` image.
    pub fn clip(self, w: u32, h: u32) -> Self {
        let x0 = self.x.min(w);
        let y0 = self.y.min(h);
        let x1 = (self.x.saturating_add(self.w)).min(w);
        let y1 = (self.y.saturating_add(self.h)).min(h);
        Self {
            x: x0,
            y: y0,
            w: x1 - x0,
            h: y1 - y0,
        }
    }
}

/// One undoable change of the mask: the pixels of `rect` before and after.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskEdit {
    /// The changed rectangle.
    pub rect: PixelRect,
    /// Mask values in `rect` before the edit, row-major.
    pub before: Vec<u8>,
    /// Mask values in `rect` after the edit, row-major.
    pub after: Vec<u8>,
    /// What did it, for the history list ("brush", "invert", …).
    pub label: &'static str,
}

/// What a running (or finished, not yet accepted) job shows over the image.
#[derive(Debug, Clone)]
pub struct Overlay {
    /// Pixels to show, already composited into the context window by the engine.
    pub pixels: Arc<RgbImage>,
    /// Top-left of `pixels` in image coordinates.
    pub origin: (u32, u32),
    /// Width and height in image pixels that `pixels` covers: their own size, or more for
    /// previews the engine shrank for display.
    pub extent: (u32, u32),
}

impl Overlay {
    /// An overlay shown at its own size.
    pub fn at(pixels: Arc<RgbImage>, origin: (u32, u32)) -> Self {
        let extent = pixels.dimensions();
        Self {
            pixels,
            origin,
            extent,
        }
    }
}

/// The model-token grid over the image: the context window split into `grid`×`grid` cells,
/// and which cells the mask touches (those get regenerated).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenGrid {
    /// Top-left of the context window in image pixels (may be negative at image borders).
    pub origin: (f32, f32),
    /// Side of the context window in image pixels.
    pub side: f32,
    /// Cells per side.
    pub grid: usize,
    /// Row-major, `grid * grid`: true where the token is regenerated.
    pub touched: Vec<bool>,
}

/// How sure the sampler was of each token of the shown level, and where the tokens lie.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfidenceOverlay {
    /// The token grid's square in image pixels.
    pub window: tessera_engine::inpaint::Window,
    /// Cells per side.
    pub grid: usize,
    /// Per token, raster order.
    pub confidence: Arc<tessera_engine::confidence::Confidence>,
}

impl ConfidenceOverlay {
    /// Tokens drawn with a probability below `threshold`.
    pub fn below(&self, threshold: f32) -> Vec<bool> {
        self.confidence.below(threshold)
    }

    /// An image-size mask over the cells of the tokens below `threshold`.
    pub fn mask_below(&self, threshold: f32, w: u32, h: u32) -> GrayImage {
        tessera_engine::confidence::cell_mask(&self.window, self.grid, &self.below(threshold), w, h)
    }
}

/// Regions whose pixels changed since the canvas last uploaded them to the GPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Image pixels changed here (the whole image after open / accept).
    pub image: PixelRect,
    /// Mask pixels changed here.
    pub mask: PixelRect,
}

/// The image being edited and its mask.
#[derive(Debug, Clone)]
pub struct Document {
    /// The current image (after accepted results). Alpha is kept from the file; the engine
    /// sees RGB.
    pub image: RgbaImage,
    /// The inpainting mask, same size as `image`: 0 keep, 255 regenerate (soft values allowed
    /// after feathering; the engine thresholds at 128).
    pub mask: GrayImage,
    /// What a job currently shows over the masked area, if anything.
    pub overlay: Option<Overlay>,
    /// The token grid the current mask would use, if a model is loaded.
    pub token_grid: Option<TokenGrid>,
    /// Confidence of the shown result's tokens (with [`Document::overlay`]).
    pub confidence: Option<ConfidenceOverlay>,
    /// What the GPU copy is missing.
    pub dirty: Dirty,
    /// Increments on every change to image or mask (for autosave and caches).
    pub revision: u64,
    /// Identifies the image pixels: new for every document and after every image change
    /// (never after a mask change), unique within the process (for image-only caches such as
    /// the segmentation embedding).
    pub image_id: u64,
}

/// Source of [`Document::image_id`].
static NEXT_IMAGE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_image_id() -> u64 {
    NEXT_IMAGE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Document {
    /// A document for `image` with an empty mask; everything is dirty.
    pub fn new(image: RgbaImage) -> Self {
        let (w, h) = image.dimensions();
        Self {
            mask: GrayImage::new(w, h),
            image,
            overlay: None,
            token_grid: None,
            confidence: None,
            dirty: Dirty {
                image: PixelRect::full(w, h),
                mask: PixelRect::full(w, h),
            },
            revision: 0,
            image_id: next_image_id(),
        }
    }

    /// Image width and height.
    pub fn size(&self) -> (u32, u32) {
        self.image.dimensions()
    }

    /// Marks mask pixels in `rect` as changed.
    pub fn touch_mask(&mut self, rect: PixelRect) {
        let (w, h) = self.size();
        self.dirty.mask = self.dirty.mask.union(rect.clip(w, h));
        self.revision += 1;
    }

    /// Marks image pixels in `rect` as changed.
    pub fn touch_image(&mut self, rect: PixelRect) {
        let (w, h) = self.size();
        self.dirty.image = self.dirty.image.union(rect.clip(w, h));
        self.revision += 1;
        self.image_id = next_image_id();
    }

    /// Copies the mask values inside `rect` (row-major).
    pub fn mask_rect(&self, rect: PixelRect) -> Vec<u8> {
        let mut out = Vec::with_capacity((rect.w * rect.h) as usize);
        for y in rect.y..rect.y + rect.h {
            let row = (y * self.mask.width() + rect.x) as usize;
            out.extend_from_slice(&self.mask.as_raw()[row..row + rect.w as usize]);
        }
        out
    }

    /// Writes `values` (row-major, `rect.w * rect.h`) into the mask and marks them dirty.
    pub fn set_mask_rect(&mut self, rect: PixelRect, values: &[u8]) {
        let width = self.mask.width();
        let raw: &mut [u8] = &mut self.mask;
        for (i, y) in (rect.y..rect.y + rect.h).enumerate() {
            let row = (y * width + rect.x) as usize;
            let src = &values[i * rect.w as usize..(i + 1) * rect.w as usize];
            raw[row..row + rect.w as usize].copy_from_slice(src);
        }
        self.touch_mask(rect);
    }

    /// Applies a mask edit forwards (redo) or backwards (undo).
    pub fn apply_mask_edit(&mut self, edit: &MaskEdit, forwards: bool) {
        let values = if forwards { &edit.after } else { &edit.before };
        self.set_mask_rect(edit.rect, values);
    }

    /// True if any mask pixel is set.
    pub fn has_mask(&self) -> bool {
        self.mask.as_raw().iter().any(|&v| v >= 128)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_edit_round_trips() {
        let mut doc = Document::new(RgbaImage::new(8, 6));
        let rect = PixelRect {
            x: 2,
            y: 1,
            w: 3,
            h: 2,
        };
        let before = doc.mask_rect(rect);
        let after = vec![255u8; 6];
        let edit = MaskEdit {
            rect,
            before: before.clone(),
            after: after.clone(),
            label: "test",
        };
        doc.apply_mask_edit(&edit, true);
        assert_eq!(doc.mask_rect(rect), after);
        assert_eq!(doc.mask.get_pixel(2, 1).0[0], 255);
        assert_eq!(doc.mask.get_pixel(1, 1).0[0], 0);
        doc.apply_mask_edit(&edit, false);
        assert_eq!(doc.mask_rect(rect), before);
        assert!(!doc.has_mask());
    }

    #[test]
    fn rect_union_and_clip() {
        let a = PixelRect {
            x: 1,
            y: 1,
            w: 2,
            h: 2,
        };
        let b = PixelRect {
            x: 5,
            y: 0,
            w: 10,
            h: 1,
        };
        let u = a.union(b);
        assert_eq!((u.x, u.y, u.w, u.h), (1, 0, 14, 3));
        let c = u.clip(8, 8);
        assert_eq!((c.x, c.y, c.w, c.h), (1, 0, 7, 3));
        assert_eq!(PixelRect::default().union(a), a);
    }
}

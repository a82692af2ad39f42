//! Undo/redo: one stack covering mask edits (brush strokes, global mask operations) and image
//! edits (accepted results). Each entry stores only the changed rectangle before and after, and
//! the stack is bounded in bytes: the oldest entries go first.

use std::collections::VecDeque;

use image::{RgbImage, RgbaImage};

use super::document::{Document, MaskEdit, PixelRect};

/// One undoable change of the image: RGBA pixels of `rect` before and after.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageEdit {
    /// The changed rectangle.
    pub rect: PixelRect,
    /// RGBA bytes of `rect` before, row-major.
    pub before: Vec<u8>,
    /// RGBA bytes of `rect` after, row-major.
    pub after: Vec<u8>,
    /// What did it, for menus ("accept candidate 2").
    pub label: String,
}

/// An undoable change.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The mask changed.
    Mask(MaskEdit),
    /// The image changed.
    Image(ImageEdit),
}

impl Change {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            Change::Mask(m) => m.before.len() + m.after.len(),
            Change::Image(i) => i.before.len() + i.after.len(),
        }
    }

    /// Short description.
    pub fn label(&self) -> String {
        match self {
            Change::Mask(m) => m.label.to_string(),
            Change::Image(i) => i.label.clone(),
        }
    }

    fn apply(&self, doc: &mut Document, forwards: bool) {
        match self {
            Change::Mask(m) => doc.apply_mask_edit(m, forwards),
            Change::Image(i) => apply_image_edit(doc, i, forwards),
        }
    }
}

/// Default memory budget of the undo stack.
pub const DEFAULT_LIMIT_BYTES: usize = 512 << 20;

/// The undo and redo stacks.
#[derive(Debug)]
pub struct History {
    undo: VecDeque<Change>,
    redo: Vec<Change>,
    bytes: usize,
    limit: usize,
}

impl Default for History {
    fn default() -> Self {
        Self::new(DEFAULT_LIMIT_BYTES)
    }
}

impl History {
    /// An empty history holding at most about `limit_bytes` of pixels.
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            undo: VecDeque::new(),
            redo: Vec::new(),
            bytes: 0,
            limit: limit_bytes,
        }
    }

    /// Records a change that was already applied to the document; clears the redo stack.
    pub fn push(&mut self, change: Change) {
        self.redo.clear();
        self.bytes = self.undo.iter().map(Change::bytes).sum::<usize>() + change.bytes();
        self.undo.push_back(change);
        // Keep the newest entry even if it alone exceeds the budget.
        while self.bytes > self.limit && self.undo.len() > 1 {
            if let Some(old) = self.undo.pop_front() {
                self.bytes -= old.bytes();
            }
        }
    }

    /// Undoes the newest change; returns its label.
    pub fn undo(&mut self, doc: &mut Document) -> Option<String> {
        let change = self.undo.pop_back()?;
        self.bytes -= change.bytes();
        change.apply(doc, false);
        let label = change.label();
        self.redo.push(change);
        Some(label)
    }

    /// Redoes the newest undone change; returns its label.
    pub fn redo(&mut self, doc: &mut Document) -> Option<String> {
        let change = self.redo.pop()?;
        change.apply(doc, true);
        let label = change.label();
        self.bytes += change.bytes();
        self.undo.push_back(change);
        Some(label)
    }

    /// Whether there is something to undo.
    pub fn can_undo(&self) -> bool {
        !self.undo.is_empty()
    }

    /// Whether there is something to redo.
    pub fn can_redo(&self) -> bool {
        !self.redo.is_empty()
    }

    /// Number of undoable changes.
    pub fn len(&self) -> usize {
        self.undo.len()
    }

    /// Whether nothing can be undone.
    pub fn is_empty(&self) -> bool {
        self.undo.is_empty()
    }

    /// Bytes held by the undo stack.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Forgets everything (a new document).
    pub fn clear(&mut self) {
        self.undo.clear();
        self.redo.clear();
        self.bytes = 0;
    }

    /// The stacks for a recovery project: every redo entry and the newest undo entries, up to
    /// `budget` bytes in all.
    pub fn saved(&self, budget: usize) -> super::saved::SavedHistory {
        let mut left = budget;
        // Both stacks as runs next to the current state (redo takes from the end too), so
        // every kept entry still applies.
        let mut newest = |stack: &mut dyn DoubleEndedIterator<Item = &Change>| {
            let mut run: Vec<Change> = stack
                .rev()
                .take_while(|c| {
                    let fits = c.bytes() <= left;
                    left -= if fits { c.bytes() } else { 0 };
                    fits
                })
                .cloned()
                .collect();
            run.reverse();
            run
        };
        let redo = newest(&mut self.redo.iter());
        let undo = newest(&mut self.undo.iter());
        super::saved::SavedHistory { undo, redo }
    }

    /// Replaces the stacks with restored ones (their changes already in the document).
    pub fn restore(&mut self, saved: super::saved::SavedHistory) {
        self.clear();
        for c in saved.undo {
            self.push(c);
        }
        self.redo = saved.redo;
    }

    /// Label of the change `undo` would revert.
    pub fn undo_label(&self) -> Option<String> {
        self.undo.back().map(Change::label)
    }
}

/// Copies the RGBA bytes of `rect`.
pub fn image_rect(img: &RgbaImage, rect: PixelRect) -> Vec<u8> {
    let w = img.width() as usize;
    let mut out = Vec::with_capacity((rect.w * rect.h * 4) as usize);
    for y in rect.y..rect.y + rect.h {
        let start = (y as usize * w + rect.x as usize) * 4;
        out.extend_from_slice(&img.as_raw()[start..start + rect.w as usize * 4]);
    }
    out
}

fn set_image_rect(doc: &mut Document, rect: PixelRect, values: &[u8]) {
    let w = doc.image.width() as usize;
    let raw: &mut [u8] = &mut doc.image;
    let row = rect.w as usize * 4;
    for (i, y) in (rect.y..rect.y + rect.h).enumerate() {
        let start = (y as usize * w + rect.x as usize) * 4;
        raw[start..start + row].copy_from_slice(&values[i * row..(i + 1) * row]);
    }
    doc.touch_image(rect);
}

/// Applies an image edit forwards (redo) or backwards (undo).
pub fn apply_image_edit(doc: &mut Document, edit: &ImageEdit, forwards: bool) {
    let values = if forwards { &edit.after } else { &edit.before };
    set_image_rect(doc, edit.rect, values);
}

/// Builds the edit that turns the document's image into `result` (same size; RGB, alpha kept)
/// without applying it. `None` when no pixel differs or the sizes differ.
pub fn diff_image(doc: &Document, result: &RgbImage, label: String) -> Option<ImageEdit> {
    let (w, h) = doc.size();
    if result.dimensions() != (w, h) {
        return None;
    }
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0u32, 0u32);
    for (y, (a_row, b_row)) in doc
        .image
        .as_raw()
        .chunks_exact(w as usize * 4)
        .zip(result.as_raw().chunks_exact(w as usize * 3))
        .enumerate()
    {
        for (x, (a, b)) in a_row.chunks_exact(4).zip(b_row.chunks_exact(3)).enumerate() {
            if a[..3] != *b {
                x0 = x0.min(x as u32);
                x1 = x1.max(x as u32 + 1);
                y0 = y0.min(y as u32);
                y1 = y1.max(y as u32 + 1);
            }
        }
    }
    if x1 == 0 {
        return None;
    }
    let rect = PixelRect {
        x: x0,
        y: y0,
        w: x1 - x0,
        h: y1 - y0,
    };
    let before = image_rect(&doc.image, rect);
    let mut after = before.clone();
    for (i, y) in (rect.y..rect.y + rect.h).enumerate() {
        for x in 0..rect.w {
            let p = result.get_pixel(rect.x + x, y).0;
            let o = (i * rect.w as usize + x as usize) * 4;
            after[o..o + 3].copy_from_slice(&p);
        }
    }
    Some(ImageEdit {
        rect,
        before,
        after,
        label,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Document {
        Document::new(RgbaImage::from_fn(10, 8, |x, y| {
            image::Rgba([x as u8, y as u8, 3, 200])
        }))
    }

    #[test]
    fn image_edit_undo_redo_restores_pixels() {
        let mut d = doc();
        let original = d.image.clone();
        let mut result = image::DynamicImage::ImageRgba8(d.image.clone()).to_rgb8();
        result.put_pixel(3, 2, image::Rgb([255, 0, 0]));
        result.put_pixel(6, 5, image::Rgb([0, 255, 0]));
        let edit = diff_image(&d, &result, "accept".into()).expect("a change");
        assert_eq!(
            (edit.rect.x, edit.rect.y, edit.rect.w, edit.rect.h),
            (3, 2, 4, 4)
        );
        let mut h = History::default();
        apply_image_edit(&mut d, &edit, true);
        h.push(Change::Image(edit));
        assert_eq!(d.image.get_pixel(3, 2).0, [255, 0, 0, 200]);
        assert_eq!(h.undo(&mut d).as_deref(), Some("accept"));
        assert_eq!(d.image, original);
        h.redo(&mut d);
        assert_eq!(d.image.get_pixel(6, 5).0, [0, 255, 0, 200]);
        assert!(diff_image(&d, &result, String::new()).is_none());
    }

    #[test]
    fn saved_keeps_the_runs_next_to_the_current_state_within_budget() {
        let mut d = doc();
        let mut h = History::default();
        let rect = PixelRect {
            x: 0,
            y: 0,
            w: 5,
            h: 1,
        };
        for i in 0..4u8 {
            h.push(Change::Mask(MaskEdit {
                rect,
                before: vec![i; 5],
                after: vec![i + 1; 5],
                label: "brush",
            }));
        }
        h.undo(&mut d);
        // 10 bytes per entry: the redo entry, then the newest undo entries while they fit.
        let s = h.saved(35);
        assert_eq!(s.redo.len(), 1);
        assert_eq!(s.undo.len(), 2);
        let Change::Mask(newest) = &s.undo[1] else {
            panic!("a mask edit")
        };
        assert_eq!(newest.before, vec![2; 5], "the newest undo entry is kept");
        let mut restored = History::default();
        restored.restore(s);
        assert_eq!((restored.len(), restored.can_redo()), (2, true));
        assert_eq!(h.saved(usize::MAX).undo.len(), 3);
    }

    #[test]
    fn budget_drops_oldest_and_push_clears_redo() {
        let mut d = doc();
        let mut h = History::new(100);
        for i in 0..5u8 {
            let rect = PixelRect {
                x: 0,
                y: 0,
                w: 5,
                h: 4,
            };
            let edit = MaskEdit {
                rect,
                before: d.mask_rect(rect),
                after: vec![i + 1; 20],
                label: "brush",
            };
            d.apply_mask_edit(&edit, true);
            h.push(Change::Mask(edit));
        }
        assert_eq!(h.len(), 2, "each edit is 40 bytes");
        assert!(h.bytes() <= 100);
        h.undo(&mut d);
        assert!(h.can_redo());
        assert_eq!(d.mask.get_pixel(0, 0).0[0], 4);
        let rect = PixelRect::full(1, 1);
        h.push(Change::Mask(MaskEdit {
            rect,
            before: vec![4],
            after: vec![9],
            label: "brush",
        }));
        assert!(!h.can_redo());
    }
}

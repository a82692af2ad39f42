//! What a recovery project keeps beyond a project file: the undo and redo stacks and the
//! unaccepted candidates of the last generation, so that a crash loses neither.
//!
//! The stacks are stored as `history.bin` (little-endian; per entry: stack 0 = undo / 1 = redo,
//! kind 0 = mask / 1 = image, the rectangle as four u32, the label as u32 length + UTF-8, then
//! the before and after bytes, whose lengths the rectangle and kind fix). Every field is checked
//! on reading: a damaged file is an error, never a panic or a huge allocation.

use std::collections::HashSet;
use std::sync::Mutex;

use image::RgbImage;

use super::document::{MaskEdit, PixelRect};
use super::history::{Change, ImageEdit};
use super::project::GenRecord;

/// Newest history bytes a recovery project keeps (the editor's own budget is larger; the
/// oldest entries beyond this are dropped from the file, not from the session).
pub const SAVED_HISTORY_BYTES: usize = 64 << 20;

/// The undo and redo stacks, oldest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SavedHistory {
    /// Undoable changes, oldest first.
    pub undo: Vec<Change>,
    /// Redoable changes, in the order redo takes them from the end.
    pub redo: Vec<Change>,
}

/// The candidates of a generation that were not accepted yet.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedResults {
    /// What produced them.
    pub record: GenRecord,
    /// The candidate shown.
    pub selected: usize,
    /// Whether it was a whole-image sample.
    pub sample: bool,
    /// Each candidate's final image (`None`: it had not finished).
    pub finals: Vec<Option<RgbImage>>,
    /// The image the job started from (inpainting).
    pub source: Option<RgbImage>,
}

/// Encodes the stacks (see the module docs for the layout).
pub fn encode_history(h: &SavedHistory) -> Vec<u8> {
    let mut out = b"TSHIST1\0".to_vec();
    for (stack, changes) in [(0u8, &h.undo), (1u8, &h.redo)] {
        for c in changes {
            let (kind, rect, label, before, after) = match c {
                Change::Mask(m) => (0u8, m.rect, m.label, &m.before, &m.after),
                Change::Image(i) => (1u8, i.rect, i.label.as_str(), &i.before, &i.after),
            };
            out.extend([stack, kind]);
            for v in [rect.x, rect.y, rect.w, rect.h] {
                out.extend(v.to_le_bytes());
            }
            out.extend((label.len() as u32).to_le_bytes());
            out.extend(label.as_bytes());
            out.extend(before);
            out.extend(after);
        }
    }
    out
}

/// Decodes stacks saved for a `size` image; every rectangle must lie inside it.
pub fn decode_history(bytes: &[u8], size: (u32, u32)) -> Result<SavedHistory, String> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(8)? != b"TSHIST1\0" {
        return Err("history.bin: not a Tessera history".into());
    }
    let mut h = SavedHistory::default();
    while r.at < bytes.len() {
        let stack = r.u8()?;
        let kind = r.u8()?;
        let rect = PixelRect {
            x: r.u32()?,
            y: r.u32()?,
            w: r.u32()?,
            h: r.u32()?,
        };
        let inside = u64::from(rect.x) + u64::from(rect.w) <= u64::from(size.0)
            && u64::from(rect.y) + u64::from(rect.h) <= u64::from(size.1);
        if !inside {
            return Err(format!(
                "history.bin: an edit of {}×{} at ({}, {}) lies outside the {}×{} image",
                rect.w, rect.h, rect.x, rect.y, size.0, size.1
            ));
        }
        let label_len = r.u32()? as usize;
        let label = std::str::from_utf8(r.take(label_len)?)
            .map_err(|_| "history.bin: a label is not UTF-8".to_string())?
            .to_string();
        let channels = match kind {
            0 => 1,
            1 => 4,
            k => return Err(format!("history.bin: unknown edit kind {k}")),
        };
        let n = rect.w as usize * rect.h as usize * channels;
        let before = r.take(n)?.to_vec();
        let after = r.take(n)?.to_vec();
        let change = if kind == 0 {
            Change::Mask(MaskEdit {
                rect,
                before,
                after,
                label: intern(&label),
            })
        } else {
            Change::Image(ImageEdit {
                rect,
                before,
                after,
                label,
            })
        };
        match stack {
            0 => h.undo.push(change),
            1 => h.redo.push(change),
            s => return Err(format!("history.bin: unknown stack {s}")),
        }
    }
    Ok(h)
}

/// Mask-edit labels are `&'static str` (they name tools); a restored one is kept once per
/// distinct text.
fn intern(label: &str) -> &'static str {
    static SEEN: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let set = seen.get_or_insert_with(HashSet::new);
    if let Some(s) = set.get(label) {
        return s;
    }
    let s: &'static str = Box::leak(label.to_owned().into_boxed_str());
    set.insert(s);
    s
}

/// A bounds-checked cursor.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or("history.bin: truncated")?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SavedHistory {
        let rect = PixelRect {
            x: 1,
            y: 2,
            w: 3,
            h: 2,
        };
        SavedHistory {
            undo: vec![
                Change::Mask(MaskEdit {
                    rect,
                    before: vec![0; 6],
                    after: vec![255; 6],
                    label: "brush",
                }),
                Change::Image(ImageEdit {
                    rect,
                    before: (0..24).collect(),
                    after: (24..48).collect(),
                    label: "accept candidate 1".into(),
                }),
            ],
            redo: vec![Change::Mask(MaskEdit {
                rect,
                before: vec![9; 6],
                after: vec![7; 6],
                label: "invert",
            })],
        }
    }

    #[test]
    fn history_round_trips() {
        let h = sample();
        assert_eq!(decode_history(&encode_history(&h), (8, 8)).unwrap(), h);
        assert_eq!(
            decode_history(&encode_history(&SavedHistory::default()), (1, 1)).unwrap(),
            SavedHistory::default()
        );
    }

    #[test]
    fn damaged_history_is_an_error() {
        let bytes = encode_history(&sample());
        for cut in 0..bytes.len() {
            // Every prefix either decodes to fewer entries or is refused; none panics.
            let _ = decode_history(&bytes[..cut], (8, 8));
        }
        assert!(decode_history(&bytes[..bytes.len() - 1], (8, 8)).is_err());
        let err = decode_history(&bytes, (3, 3)).unwrap_err();
        assert!(err.contains("outside the 3×3 image"), "{err}");
        let mut huge = bytes.clone();
        // A label length of 4 GB must not allocate.
        huge[8 + 2 + 16..8 + 2 + 20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_history(&huge, (8, 8)).is_err());
    }
}

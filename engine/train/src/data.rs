//! Training data of Tessera's default model: Microsoft Fluent Emoji 3D sprites of the concepts
//! of [`CONCEPTS`], and synthetic captioned object-centric scenes of them.
//!
//! The data comes from three pinned npm packages fetched by `scripts/fetch-data.sh` into
//! `data/emoji` (see `NOTICE` and `/work/shared/reference/dataset.md`):
//! `fluent-emoji-3d/package/assets/<codepoints>.webp` (256² RGBA),
//! `emoji-datasource-google/package/emoji.json` (name, short names, group, subgroup) and
//! `emojilib/package/dist/emoji-en-US.json` (keywords, keyed by the emoji character).
//! A small fixture of the same data (`engine/train/tests/fixtures/emoji`: `labels.json` and
//! `sprites/<id>.png`) loads through the same [`EmojiSet::load`], so tests run without the npm data.
//!
//! Decisions:
//! * **Only the vocabulary's emoji are loaded**: the class of an emoji is its concept
//!   ([`concept_of_emoji`]); every other emoji (flags, skin tones, near-duplicates) is dropped.
//! * **Held out by scene, not by concept**: a user asks for the concepts the model knows, so the
//!   held-out split draws its own scenes (other streams: other placements, sizes, flips and
//!   backgrounds) of the same concepts; see [`SceneGen::held_out`].
//! * **Sprites are premultiplied RGBA**, area-downsampled once at load to
//!   [`LoadOptions::sprite_size`], and cached in `<dir>/.cache/` so a reload takes well under a
//!   second.
//! * **Names** are the concepts' names; the CLDR short name from emojilib (or the lower-cased
//!   Unicode name) is kept in [`Emoji::cldr_name`].

mod concepts;
mod load;
mod resample;
mod scene;

use std::path::Path;

use candle_core::{Device, Tensor};
use image::{RgbImage, RgbaImage};

use tessera_engine::{Error, Result};

pub use concepts::{CONCEPTS, Concept, class_names, concept_named, concept_of_emoji};
pub use resample::{composite_over, premultiply, resize_premultiplied, unpremultiply};
pub use scene::{
    Background, HELD_OUT_SALT, PALETTE, Scene, SceneConfig, SceneGen, SceneItem, SceneMask,
    scene_mask,
};

/// How [`EmojiSet::load`] reads the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Side of the square sprites after downsampling (default 128).
    pub sprite_size: u32,
    /// Read and write the sprite cache in `<dir>/.cache/` (default `true`). Failing to write the
    /// cache is not an error.
    pub cache: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            sprite_size: 128,
            cache: true,
        }
    }
}

/// One emoji with its labels and sprite.
#[derive(Debug, Clone)]
pub struct Emoji {
    /// Normalised code points of the image (lower-case hex joined by `-`, no `fe0f`, no leading
    /// zeros), e.g. `1f436` or `1f469-200d-1f52c`.
    pub id: String,
    /// Class id: index of its concept in [`CONCEPTS`].
    pub class: usize,
    /// The concept's name, used in captions ("red heart").
    pub name: String,
    /// Lower-case CLDR short name from emojilib, else the Unicode name ("red heart").
    pub cldr_name: String,
    /// Lower-case Unicode name from emoji.json.
    pub unicode_name: String,
    /// emoji.json short names (`dog`, `dog_face`, …).
    pub short_names: Vec<String>,
    /// emoji.json category (`Animals & Nature`, …).
    pub group: String,
    /// emoji.json subcategory (`animal-mammal`, …).
    pub subcategory: String,
    /// emojilib keywords (underscores turned into spaces, the name itself removed).
    pub keywords: Vec<String>,
    /// Premultiplied RGBA sprite, `sprite_size`².
    pub sprite: RgbaImage,
}

/// A loaded set of emoji, sorted by id.
#[derive(Debug, Clone)]
pub struct EmojiSet {
    emoji: Vec<Emoji>,
    sprite_size: u32,
}

impl EmojiSet {
    /// Loads the set from `dir`: either the npm layout written by `scripts/fetch-data.sh` or the
    /// fixture layout (`labels.json` + `sprites/`), detected by the presence of `labels.json`.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        if opts.sprite_size == 0 || opts.sprite_size > 256 {
            return Err(Error::Input(format!(
                "sprite_size must be in 1..=256, got {}",
                opts.sprite_size
            )));
        }
        let emoji = if dir.join(load::FIXTURE_LABELS).is_file() {
            load::load_fixture(dir, opts)?
        } else {
            load::load_npm(dir, opts)?
        };
        Self::from_emoji(emoji, opts.sprite_size)
    }

    /// Loads the fixture layout (`labels.json` + `sprites/<id>.png`) at the fixture's 64 px.
    pub fn load_fixture(dir: &Path) -> Result<Self> {
        let opts = LoadOptions {
            cache: false,
            sprite_size: 64,
        };
        Self::from_emoji(load::load_fixture(dir, &opts)?, opts.sprite_size)
    }

    /// Builds a set from emoji (sorted by id here); errors if empty, if ids repeat, or if a
    /// sprite is not `sprite_size`².
    pub fn from_emoji(mut emoji: Vec<Emoji>, sprite_size: u32) -> Result<Self> {
        if emoji.is_empty() {
            return Err(Error::Input("an emoji set needs at least one emoji".into()));
        }
        emoji.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(w) = emoji.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(Error::Input(format!(
                "emoji id `{}` appears twice",
                w[0].id
            )));
        }
        if let Some(e) = emoji
            .iter()
            .find(|e| e.sprite.dimensions() != (sprite_size, sprite_size))
        {
            return Err(Error::Input(format!(
                "sprite of `{}` is {:?}, expected {sprite_size}²",
                e.id,
                e.sprite.dimensions()
            )));
        }
        if let Some(e) = emoji.iter().find(|e| e.class >= CONCEPTS.len()) {
            return Err(Error::Input(format!(
                "emoji `{}` has class {} (only {} concepts)",
                e.id,
                e.class,
                CONCEPTS.len()
            )));
        }
        Ok(Self { emoji, sprite_size })
    }

    /// All emoji, sorted by id.
    pub fn emoji(&self) -> &[Emoji] {
        &self.emoji
    }

    /// Number of emoji.
    pub fn len(&self) -> usize {
        self.emoji.len()
    }

    /// Whether the set is empty (never, for a loaded set).
    pub fn is_empty(&self) -> bool {
        self.emoji.is_empty()
    }

    /// Side of the sprites.
    pub fn sprite_size(&self) -> u32 {
        self.sprite_size
    }

    /// Index of the emoji with this id.
    pub fn find(&self, id: &str) -> Option<usize> {
        self.emoji.binary_search_by(|e| e.id.as_str().cmp(id)).ok()
    }

    /// Number of emoji per class (concept).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut n = vec![0; CONCEPTS.len()];
        for e in &self.emoji {
            n[e.class] += 1;
        }
        n
    }

    /// A view of the whole set.
    pub fn all(&self) -> EmojiView<'_> {
        EmojiView {
            set: self,
            indices: (0..self.emoji.len()).collect(),
        }
    }

    /// Writes the emoji at `indices` in the fixture layout (`labels.json` + `sprites/<id>.png`,
    /// straight-alpha PNGs) so that [`EmojiSet::load`] reads them back.
    pub fn write_fixture(&self, dir: &Path, indices: &[usize]) -> Result<()> {
        let picked: Vec<&Emoji> = indices
            .iter()
            .map(|&i| {
                self.emoji
                    .get(i)
                    .ok_or_else(|| Error::Input(format!("no emoji at index {i}")))
            })
            .collect::<Result<_>>()?;
        load::write_fixture(dir, &picked)
    }
}

/// A subset of an [`EmojiSet`] (e.g. one side of a split), as indices into the set.
#[derive(Debug, Clone)]
pub struct EmojiView<'a> {
    set: &'a EmojiSet,
    indices: Vec<usize>,
}

impl<'a> EmojiView<'a> {
    /// A view of the given indices of `set`; errors on an index out of range.
    pub fn new(set: &'a EmojiSet, indices: Vec<usize>) -> Result<Self> {
        if let Some(i) = indices.iter().find(|&&i| i >= set.len()) {
            return Err(Error::Input(format!(
                "emoji index {i} out of range (set of {})",
                set.len()
            )));
        }
        Ok(Self { set, indices })
    }

    /// The underlying set.
    pub fn set(&self) -> &'a EmojiSet {
        self.set
    }

    /// Indices into the set.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }

    /// Number of emoji in the view.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The emoji of the view.
    pub fn iter(&self) -> impl Iterator<Item = &'a Emoji> + '_ {
        self.indices.iter().map(|&i| &self.set.emoji[i])
    }
}

/// Stacks RGB images into a (B, 3, H, W) f32 tensor in [−1, 1] (`v / 127.5 − 1`, the convention
/// of [`tessera_engine::inpaint::to_tensor`]). All images must have the same size.
pub fn batch_to_tensor(images: &[RgbImage], device: &Device) -> Result<Tensor> {
    let first = images
        .first()
        .ok_or_else(|| Error::Input("batch_to_tensor: empty batch".into()))?;
    let (w, h) = first.dimensions();
    let plane = (w * h) as usize;
    let mut data = vec![0f32; images.len() * 3 * plane];
    for (b, img) in images.iter().enumerate() {
        if img.dimensions() != (w, h) {
            return Err(Error::Input(format!(
                "batch_to_tensor: image {b} is {:?}, the first is {:?}",
                img.dimensions(),
                (w, h)
            )));
        }
        let out = &mut data[b * 3 * plane..(b + 1) * 3 * plane];
        for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + i] = (f64::from(px[c]) / 127.5 - 1.0) as f32;
            }
        }
    }
    Ok(Tensor::from_vec(
        data,
        (images.len(), 3, h as usize, w as usize),
        device,
    )?)
}

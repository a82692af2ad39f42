//! Synthetic object-centric "emoji scenes": one large emoji (sometimes a smaller second one) on a
//! simple procedural background, with a caption and a class.
//!
//! The object is the subject — large in the frame, mirrored at random, on mostly smooth
//! backgrounds — so that the class decides most of the tokens a mask over it hides; a scene
//! where the context gave the object away would teach the stages to ignore the condition.
//! Every scene is a pure function of the RNG state, so a seed fixes a whole data stream
//! ([`SceneGen::scenes`] gives scene `i` of a seed its own ChaCha stream, so batches can be built
//! in parallel and still reproduce). The largest emoji is drawn first and the smaller ones over
//! it, so every emoji named in the caption stays at least partly visible.

use image::{GrayImage, Luma, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use tessera_engine::inpaint::{PresetMask, preset_mask};
use tessera_engine::{Error, Result};

use super::resample::composite_over;
use super::{CONCEPTS, EmojiView};

/// Named background colours (name, sRGB). Captions use these names.
pub const PALETTE: [(&str, [u8; 3]); 12] = [
    ("red", [214, 48, 49]),
    ("orange", [243, 140, 32]),
    ("yellow", [246, 214, 52]),
    ("green", [62, 168, 74]),
    ("teal", [32, 164, 164]),
    ("blue", [44, 104, 214]),
    ("purple", [128, 68, 186]),
    ("pink", [238, 128, 178]),
    ("brown", [128, 84, 48]),
    ("white", [244, 244, 244]),
    ("grey", [128, 128, 128]),
    ("black", [26, 26, 26]),
];

/// The background of a scene; colours are indices into [`PALETTE`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Background {
    /// One colour: "on blue".
    Solid(usize),
    /// Linear gradient from the first colour to the second along `angle` (radians):
    /// "on blue to green".
    Gradient(usize, usize, f32),
    /// Stripes of `period` px at `angle`: "on blue and green stripes".
    Stripes(usize, usize, f32, f32),
    /// Checkerboard with `cell` px squares: "on blue and green checks".
    Checks(usize, usize, u32),
    /// Smooth value noise mixing the two colours, `cells` noise cells per side:
    /// "on mottled blue and green".
    Noise(usize, usize, u32),
}

impl Background {
    /// The caption fragment, e.g. "on blue to green".
    pub fn phrase(&self) -> String {
        let n = |i: usize| PALETTE[i % PALETTE.len()].0;
        match *self {
            Self::Solid(a) => format!("on {}", n(a)),
            Self::Gradient(a, b, _) => format!("on {} to {}", n(a), n(b)),
            Self::Stripes(a, b, ..) => format!("on {} and {} stripes", n(a), n(b)),
            Self::Checks(a, b, _) => format!("on {} and {} checks", n(a), n(b)),
            Self::Noise(a, b, _) => format!("on mottled {} and {}", n(a), n(b)),
        }
    }
}

/// One emoji placed in a scene: square box with top-left `(x, y)` (may be negative: clipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SceneItem {
    /// Index of the emoji in its [`super::EmojiSet`].
    pub emoji: usize,
    /// Left edge in pixels.
    pub x: i32,
    /// Top edge in pixels.
    pub y: i32,
    /// Side in pixels.
    pub size: u32,
}

/// A generated scene.
#[derive(Debug, Clone)]
pub struct Scene {
    /// The image, `res`×`res`.
    pub image: RgbImage,
    /// "cat face and red apple on blue to green": the concepts largest first (each by its name
    /// or one of its words), then, mostly, the background.
    pub caption: String,
    /// Class (concept index) of the largest emoji.
    pub class: usize,
    /// Placed emoji, largest first.
    pub boxes: Vec<SceneItem>,
    /// The background.
    pub background: Background,
}

/// Parameters of [`SceneGen`].
#[derive(Debug, Clone, PartialEq)]
pub struct SceneConfig {
    /// Relative frequency of scenes with 1, 2, 3, … emoji (default `[0.8, 0.2]`).
    pub count_weights: Vec<f32>,
    /// Side of the largest emoji as a fraction of the image side (default 0.55..0.9).
    pub largest: (f32, f32),
    /// Side of every other emoji as a fraction of the largest (default 0.25..0.45).
    pub others: (f32, f32),
    /// Pick the class of each emoji uniformly first, then an emoji of it (default `true`), so
    /// classes are balanced; otherwise uniformly over emoji.
    pub balance_classes: bool,
    /// Colour jitter (± per channel) around the palette colours (default 12).
    pub jitter: u8,
    /// Probability of mirroring each emoji left–right (default 0.5).
    pub flip: f32,
    /// Relative frequency of the backgrounds: solid, gradient, stripes, checks, noise (default
    /// `[20, 45, 5, 5, 25]`: mostly smooth, so the object stands out).
    pub backgrounds: [f32; 5],
    /// Probability that the caption calls an emoji by one of its concept's other words
    /// ("heart" for "red heart") rather than its name (default 0.3).
    pub synonym: f32,
    /// Probability that the caption says the background ("… on blue to green"; default 0.7), so
    /// that a prompt naming only the object is a caption the model has seen.
    pub background_phrase: f32,
    /// Snap every emoji's side and corner to multiples of this many pixels (default 0: no
    /// snapping). At the VQGAN's factor (8) a concept at one size and flip then covers the
    /// same tokens wherever it sits — one token map per size, which a small stage can learn,
    /// where free placement gives it 64 sub-token offsets of every size.
    pub grid: u32,
}

impl Default for SceneConfig {
    fn default() -> Self {
        Self {
            count_weights: vec![0.8, 0.2],
            largest: (0.55, 0.9),
            others: (0.25, 0.45),
            balance_classes: true,
            jitter: 12,
            flip: 0.5,
            backgrounds: [20.0, 45.0, 5.0, 5.0, 25.0],
            synonym: 0.3,
            background_phrase: 0.7,
            grid: 0,
        }
    }
}

/// Generates scenes from the emoji of a view.
#[derive(Debug, Clone)]
pub struct SceneGen<'a> {
    view: EmojiView<'a>,
    cfg: SceneConfig,
    /// View positions per class (non-empty classes only).
    by_class: Vec<Vec<usize>>,
    /// Mixed into every seed of [`SceneGen::scenes`]: 0 for training, [`HELD_OUT_SALT`] for
    /// the held-out split.
    salt: u64,
}

/// What [`SceneGen::held_out`] mixes into the seeds: the held-out split's scenes come from
/// other ChaCha streams than any training seed's.
pub const HELD_OUT_SALT: u64 = 0x4845_4c44_4f55_5421;

impl<'a> SceneGen<'a> {
    /// A generator over `view`; errors if the view is empty or the configuration is invalid.
    pub fn new(view: EmojiView<'a>, cfg: SceneConfig) -> Result<Self> {
        if view.is_empty() {
            return Err(Error::Input("SceneGen needs at least one emoji".into()));
        }
        let ok_range = |(a, b): (f32, f32)| a > 0.0 && a <= b && b <= 1.0;
        if cfg.count_weights.is_empty()
            || cfg.count_weights.iter().any(|w| w.is_nan() || *w < 0.0)
            || cfg.count_weights.iter().sum::<f32>() <= 0.0
            || !ok_range(cfg.largest)
            || !ok_range(cfg.others)
            || cfg.backgrounds.iter().any(|w| w.is_nan() || *w < 0.0)
            || cfg.backgrounds.iter().sum::<f32>() <= 0.0
            || cfg.grid > 64
            || ![cfg.flip, cfg.synonym, cfg.background_phrase]
                .iter()
                .all(|p| (0.0..=1.0).contains(p))
        {
            return Err(Error::Input(format!("invalid scene configuration {cfg:?}")));
        }
        let mut by_class = vec![Vec::new(); CONCEPTS.len()];
        for (pos, e) in view.iter().enumerate() {
            by_class[e.class].push(pos);
        }
        by_class.retain(|v| !v.is_empty());
        Ok(Self {
            view,
            cfg,
            by_class,
            salt: 0,
        })
    }

    /// The same generator drawing the held-out split: every seed of [`SceneGen::scenes`] is
    /// mixed with [`HELD_OUT_SALT`], so no scene equals a training scene of the same seed.
    pub fn held_out(mut self) -> Self {
        self.salt = HELD_OUT_SALT;
        self
    }

    /// The view the scenes draw from.
    pub fn view(&self) -> &EmojiView<'a> {
        &self.view
    }

    fn pick(&self, rng: &mut impl Rng) -> usize {
        let pos = if self.cfg.balance_classes {
            let c = &self.by_class[rng.random_range(0..self.by_class.len())];
            c[rng.random_range(0..c.len())]
        } else {
            rng.random_range(0..self.view.len())
        };
        self.view.indices()[pos]
    }

    /// One scene of `res`×`res` (`res` ≥ 8).
    pub fn scene(&self, rng: &mut impl Rng, res: u32) -> Scene {
        let res = res.max(8);
        let set = self.view.set();
        // Number of emoji (never more than distinct emoji in the view).
        let total: f32 = self.cfg.count_weights.iter().sum();
        let mut u = rng.random::<f32>() * total;
        let mut n = self.cfg.count_weights.len();
        for (i, w) in self.cfg.count_weights.iter().enumerate() {
            if u < *w {
                n = i + 1;
                break;
            }
            u -= w;
        }
        let n = n.min(self.view.len());
        let mut chosen: Vec<usize> = Vec::with_capacity(n);
        let mut tries = 0;
        while chosen.len() < n && tries < 64 {
            let e = self.pick(rng);
            if !chosen.contains(&e) {
                chosen.push(e);
            }
            tries += 1;
        }
        let rf = res as f32;
        let grid = self.cfg.grid.clamp(1, res) as i32;
        let snap = |v: i32| (v as f32 / grid as f32).round() as i32 * grid;
        let largest = rng.random_range(self.cfg.largest.0..=self.cfg.largest.1) * rf;
        let mut boxes: Vec<SceneItem> = chosen
            .iter()
            .enumerate()
            .map(|(k, &emoji)| {
                let s = if k == 0 {
                    largest
                } else {
                    largest * rng.random_range(self.cfg.others.0..=self.cfg.others.1)
                };
                let size = (snap(s.round() as i32).max(grid) as u32).clamp(4, res);
                // Largest: at most 1/8 of its side outside; others: up to 1/3.
                let out = if k == 0 { size / 8 } else { size / 3 } as i32;
                let span = res as i32 - size as i32 + 2 * out;
                let mut place = || snap(rng.random_range(0..=span.max(0)) - out);
                let (x, y) = (place(), place());
                SceneItem { emoji, x, y, size }
            })
            .collect();
        // Largest first; ties keep pick order (the first is the largest by construction).
        boxes.sort_by_key(|b| std::cmp::Reverse(b.size));
        let background = random_background(rng, &self.cfg.backgrounds, res);
        let mut image = render_background(&background, res, self.cfg.jitter, rng);
        let mut words = Vec::with_capacity(boxes.len());
        for b in &boxes {
            let e = &set.emoji()[b.emoji];
            if rng.random::<f32>() < self.cfg.flip {
                let flipped = image::imageops::flip_horizontal(&e.sprite);
                composite_over(&mut image, &flipped, b.x, b.y, b.size);
            } else {
                composite_over(&mut image, &e.sprite, b.x, b.y, b.size);
            }
            let others = CONCEPTS[e.class].words;
            words.push(
                if !others.is_empty() && rng.random::<f32>() < self.cfg.synonym {
                    others[rng.random_range(0..others.len())]
                } else {
                    e.name.as_str()
                },
            );
        }
        let mut caption = words.join(" and ");
        if rng.random::<f32>() < self.cfg.background_phrase {
            caption = format!("{caption} {}", background.phrase());
        }
        Scene {
            caption,
            class: set.emoji()[boxes[0].emoji].class,
            image,
            boxes,
            background,
        }
    }

    /// Scenes `start..start + n` of the stream fixed by `seed`, built in parallel; scene `i`
    /// depends only on `(seed, i)`.
    pub fn scenes(&self, seed: u64, start: u64, n: usize, res: u32) -> Vec<Scene> {
        (0..n as u64)
            .into_par_iter()
            .map(|i| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ self.salt);
                rng.set_stream(start + i);
                self.scene(&mut rng, res)
            })
            .collect()
    }
}

/// A background drawn with the relative frequencies `weights` (solid, gradient, stripes, checks,
/// noise); pattern sizes scale with `res` (stripe periods and check cells of 4–16 px at 64 px).
fn random_background(rng: &mut impl Rng, weights: &[f32; 5], res: u32) -> Background {
    let a = rng.random_range(0..PALETTE.len());
    let mut b = rng.random_range(0..PALETTE.len() - 1);
    if b >= a {
        b += 1;
    }
    let angle = rng.random_range(0.0..std::f32::consts::TAU);
    let scale = res as f32 / 64.0;
    let mut u = rng.random::<f32>() * weights.iter().sum::<f32>();
    let mut kind = weights.len() - 1;
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            kind = i;
            break;
        }
        u -= w;
    }
    match kind {
        0 => Background::Solid(a),
        1 => Background::Gradient(a, b, angle),
        2 => Background::Stripes(a, b, angle, rng.random_range(4.0..16.0) * scale),
        3 => Background::Checks(
            a,
            b,
            ((rng.random_range(4..=16) as f32 * scale).round() as u32).max(1),
        ),
        _ => Background::Noise(a, b, rng.random_range(2..=6)),
    }
}

fn jittered(rng: &mut impl Rng, i: usize, jitter: u8) -> [f32; 3] {
    let j = f32::from(jitter);
    PALETTE[i].1.map(|v| {
        let d = if jitter == 0 {
            0.0
        } else {
            rng.random_range(-j..=j)
        };
        (f32::from(v) + d).clamp(0.0, 255.0)
    })
}

fn render_background(bg: &Background, res: u32, jitter: u8, rng: &mut impl Rng) -> RgbImage {
    let (a, b) = match *bg {
        Background::Solid(a) => (a, a),
        Background::Gradient(a, b, _)
        | Background::Stripes(a, b, ..)
        | Background::Checks(a, b, _)
        | Background::Noise(a, b, _) => (a, b),
    };
    let (ca, cb) = (jittered(rng, a, jitter), jittered(rng, b, jitter));
    let r = res as f32;
    // Noise lattice, (cells + 1)² values in [0, 1].
    let cells = match *bg {
        Background::Noise(.., c) => c.max(1),
        _ => 1,
    };
    let lattice: Vec<f32> = (0..(cells + 1) * (cells + 1))
        .map(|_| rng.random::<f32>())
        .collect();
    let mix = |t: f32| -> Rgb<u8> {
        let t = t.clamp(0.0, 1.0);
        Rgb([0, 1, 2].map(|c| (ca[c] + (cb[c] - ca[c]) * t).round() as u8))
    };
    RgbImage::from_fn(res, res, |x, y| {
        let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
        match *bg {
            Background::Solid(_) => mix(0.0),
            Background::Gradient(_, _, ang) => {
                let (dx, dy) = (ang.cos(), ang.sin());
                // Project onto the direction; the image's extent along it maps to [0, 1].
                let half = 0.5 * r * (dx.abs() + dy.abs());
                let t = ((px - r / 2.0) * dx + (py - r / 2.0) * dy) / (2.0 * half) + 0.5;
                mix(t)
            }
            Background::Stripes(_, _, ang, period) => {
                let d = px * ang.cos() + py * ang.sin();
                mix(if (d / period).rem_euclid(1.0) < 0.5 {
                    0.0
                } else {
                    1.0
                })
            }
            Background::Checks(_, _, cell) => mix(((x / cell + y / cell) % 2) as f32),
            Background::Noise(..) => {
                let (gx, gy) = (px / r * cells as f32, py / r * cells as f32);
                let (ix, iy) = ((gx as u32).min(cells - 1), (gy as u32).min(cells - 1));
                let smooth = |f: f32| f * f * (3.0 - 2.0 * f);
                let (fx, fy) = (smooth(gx - ix as f32), smooth(gy - iy as f32));
                let at = |i: u32, j: u32| lattice[(j * (cells + 1) + i) as usize];
                let top = at(ix, iy) + (at(ix + 1, iy) - at(ix, iy)) * fx;
                let bot = at(ix, iy + 1) + (at(ix + 1, iy + 1) - at(ix, iy + 1)) * fx;
                mix(top + (bot - top) * fy)
            }
        }
    })
}

/// Which region of a scene to regenerate in an inpainting evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SceneMask {
    /// The (clipped) box of the `i`-th emoji of [`Scene::boxes`] (0 = largest).
    Item(usize),
    /// One of the paper's evaluation masks.
    Preset(PresetMask),
}

/// Inpainting mask for a scene in the engine's convention (255 = regenerate, 0 = keep; see
/// [`tessera_engine::inpaint`]). `Item(i)` with `i` past the last emoji gives an empty mask.
pub fn scene_mask(scene: &Scene, kind: SceneMask) -> GrayImage {
    let (w, h) = scene.image.dimensions();
    match kind {
        SceneMask::Preset(p) => preset_mask(p, w, h),
        SceneMask::Item(i) => {
            let mut m = GrayImage::new(w, h);
            if let Some(b) = scene.boxes.get(i) {
                let x0 = b.x.clamp(0, w as i32) as u32;
                let y0 = b.y.clamp(0, h as i32) as u32;
                let x1 = (b.x + b.size as i32).clamp(0, w as i32) as u32;
                let y1 = (b.y + b.size as i32).clamp(0, h as i32) as u32;
                for y in y0..y1 {
                    for x in x0..x1 {
                        m.put_pixel(x, y, Luma([255]));
                    }
                }
            }
            m
        }
    }
}

//! How sure the sampler was of each token ([`Confidence`], recorded by the chain and streamed
//! with every level), and where those tokens lie in the picture: a mask of the unsure cells
//! ("repaint unsure") and a heat map at image size.

use image::{GrayImage, Luma, Rgba, RgbaImage};

use crate::inpaint::Window;

/// How sure the sampler was of each token of one candidate's grid at one level, in raster
/// order (one entry per position). Read from the distribution each token was drawn from —
/// after guidance, temperature, top-k and top-p, exactly what [`sampler::draw`] saw — so a
/// known (forced) token is certain.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Confidence {
    /// Probability the chosen token had; 1 for a known token.
    pub prob: Vec<f32>,
    /// Entropy of the distribution in bits; 0 for a known token.
    pub entropy: Vec<f32>,
    /// Whether the position was sampled (false: known, forced).
    pub sampled: Vec<bool>,
}

impl Confidence {
    /// Every position known: probability 1, entropy 0.
    pub fn certain(positions: usize) -> Self {
        Self {
            prob: vec![1.0; positions],
            entropy: vec![0.0; positions],
            sampled: vec![false; positions],
        }
    }

    /// Records a sampled position: the chosen token `tok` of distribution `probs`.
    pub fn record(&mut self, position: usize, probs: &[f32], tok: u32) {
        self.prob[position] = probs.get(tok as usize).copied().unwrap_or(0.0);
        self.entropy[position] = entropy_bits(probs);
        self.sampled[position] = true;
    }

    /// Mean probability of the chosen tokens over the sampled positions (`None` if none was).
    pub fn mean_prob(&self) -> Option<f32> {
        let (sum, n) = self
            .prob
            .iter()
            .zip(&self.sampled)
            .filter(|(_, s)| **s)
            .fold((0.0f64, 0usize), |(sum, n), (p, _)| {
                (sum + f64::from(*p), n + 1)
            });
        (n > 0).then(|| (sum / n as f64) as f32)
    }

    /// Positions sampled with a probability below `threshold`.
    pub fn below(&self, threshold: f32) -> Vec<bool> {
        self.prob
            .iter()
            .zip(&self.sampled)
            .map(|(p, s)| *s && *p < threshold)
            .collect()
    }
}

/// −Σ p·log₂ p over the entries with mass.
pub fn entropy_bits(probs: &[f32]) -> f32 {
    -probs
        .iter()
        .filter(|p| **p > 0.0)
        .map(|&p| f64::from(p) * f64::from(p).log2())
        .sum::<f64>() as f32
}

/// The colour of confidence `prob` in overlays and heat maps: red (0) through amber (0.5) to
/// green (1).
pub fn colour(prob: f32) -> [u8; 3] {
    let p = if prob.is_finite() {
        prob.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let lerp = |a: f32, b: f32, t: f32| (a + (b - a) * t).round() as u8;
    if p < 0.5 {
        let t = p * 2.0;
        [
            lerp(214.0, 240.0, t),
            lerp(40.0, 176.0, t),
            lerp(40.0, 32.0, t),
        ]
    } else {
        let t = (p - 0.5) * 2.0;
        [
            lerp(240.0, 52.0, t),
            lerp(176.0, 168.0, t),
            lerp(32.0, 84.0, t),
        ]
    }
}

/// Image-pixel rectangle `(x0, y0, x1, y1)` (half-open, clipped to `w`×`h`) of cell `i` of a
/// `grid`×`grid` token grid spanning `window`; `None` when it lies outside the image.
pub fn cell_rect(
    window: &Window,
    grid: usize,
    i: usize,
    w: u32,
    h: u32,
) -> Option<(u32, u32, u32, u32)> {
    if grid == 0 || i >= grid * grid {
        return None;
    }
    let (r, c) = ((i / grid) as i64, (i % grid) as i64);
    let (s, g) = (i64::from(window.size), grid as i64);
    let edge =
        |origin: i64, k: i64, limit: u32| (origin + k * s / g).clamp(0, i64::from(limit)) as u32;
    let (x0, x1) = (edge(window.x, c, w), edge(window.x, c + 1, w));
    let (y0, y1) = (edge(window.y, r, h), edge(window.y, r + 1, h));
    (x1 > x0 && y1 > y0).then_some((x0, y0, x1, y1))
}

/// A `w`×`h` mask, 255 over the cells flagged in `cells` (raster order over a
/// `grid`×`grid` grid spanning `window`), 0 elsewhere: e.g. the tokens to repaint.
///
/// A pixel is masked only when every cell it overlaps is flagged: where the window's side is
/// not a multiple of the grid, a pixel on a cell boundary also overlaps the neighbour, and
/// masking it would make [`crate::inpaint::token_mask`] regenerate that neighbour too. So an
/// inpainting pass over this mask in the same window regenerates exactly the flagged tokens
/// (every cell of at least two pixels keeps some pixels of its own).
pub fn cell_mask(window: &Window, grid: usize, cells: &[bool], w: u32, h: u32) -> GrayImage {
    let mut mask = GrayImage::new(w, h);
    if grid == 0 || window.size == 0 || cells.len() != grid * grid {
        return mask;
    }
    let (s, g) = (i64::from(window.size), grid as i64);
    // In units of 1/grid pixel, window pixel i spans [i·g, (i+1)·g) and cell t spans
    // [t·s, (t+1)·s): the first and last cell the pixel overlaps.
    let span = |i: i64| ((i * g) / s, ((i + 1) * g - 1) / s);
    let clip = |origin: i64, limit: u32| {
        (
            origin.clamp(0, i64::from(limit)),
            (origin + s).clamp(0, i64::from(limit)),
        )
    };
    let ((x0, x1), (y0, y1)) = (clip(window.x, w), clip(window.y, h));
    for y in y0..y1 {
        let (r0, r1) = span(y - window.y);
        for x in x0..x1 {
            let (c0, c1) = span(x - window.x);
            let all = (r0..=r1).all(|r| (c0..=c1).all(|c| cells[(r * g + c) as usize]));
            if all {
                mask.put_pixel(x as u32, y as u32, Luma([255]));
            }
        }
    }
    mask
}

/// A `w`×`h` heat map of `confidence` (a `grid`×`grid` grid spanning `window`): each sampled
/// token's cell in [`colour`] of its probability, opaque; everything else transparent.
pub fn heat_map(
    window: &Window,
    grid: usize,
    confidence: &Confidence,
    w: u32,
    h: u32,
) -> RgbaImage {
    let mut map = RgbaImage::new(w, h);
    for (i, (&p, &sampled)) in confidence.prob.iter().zip(&confidence.sampled).enumerate() {
        if !sampled {
            continue;
        }
        let [r, g, b] = colour(p);
        if let Some((x0, y0, x1, y1)) = cell_rect(window, grid, i, w, h) {
            for y in y0..y1 {
                for x in x0..x1 {
                    map.put_pixel(x, y, Rgba([r, g, b, 255]));
                }
            }
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_tile_the_window_and_clip_to_the_image() {
        let window = Window {
            x: -8,
            y: 0,
            size: 32,
        };
        // 4×4 cells of 8 px; the first column lies left of the image.
        assert_eq!(cell_rect(&window, 4, 0, 20, 20), None);
        assert_eq!(cell_rect(&window, 4, 1, 20, 20), Some((0, 0, 8, 8)));
        assert_eq!(cell_rect(&window, 4, 6, 20, 20), Some((8, 8, 16, 16)));
        assert_eq!(cell_rect(&window, 4, 7, 20, 20), Some((16, 8, 20, 16)));
        assert_eq!(cell_rect(&window, 4, 16, 20, 20), None);
        let mut flags = vec![false; 16];
        flags[6] = true;
        let m = cell_mask(&window, 4, &flags, 20, 20);
        let on = m.pixels().filter(|p| p.0[0] == 255).count();
        assert_eq!(on, 64);
        assert_eq!(m.get_pixel(8, 8).0[0], 255);
        assert_eq!(m.get_pixel(16, 8).0[0], 0);
    }

    #[test]
    fn a_cell_mask_regenerates_exactly_its_cells_in_the_same_window() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for case in 0..200 {
            let grid = 2 + next(15) as usize;
            // Sides that are and are not multiples of the grid, cells of ≥ 2 pixels.
            let size = (2 * grid) as u32 + next(60) as u32;
            let (w, h) = (10 + next(90) as u32, 10 + next(90) as u32);
            let window = Window {
                x: next(40) as i64 - 20,
                y: next(40) as i64 - 20,
                size,
            };
            let cells: Vec<bool> = (0..grid * grid).map(|_| next(3) == 0).collect();
            let mask = cell_mask(&window, grid, &cells, w, h);
            let touched = crate::inpaint::token_mask(&mask, &window, grid, 0.0);
            // Cells outside the image cannot be masked; every other flagged cell is, and
            // nothing else.
            let inside: Vec<bool> = (0..grid * grid)
                .map(|i| cell_rect(&window, grid, i, w, h).is_some())
                .collect();
            for i in 0..grid * grid {
                if inside[i]
                    && cell_rect(&window, grid, i, w, h)
                        .is_some_and(|(x0, y0, x1, y1)| (x1 - x0) >= 2 && (y1 - y0) >= 2)
                {
                    assert_eq!(touched[i], cells[i], "case {case}: cell {i}");
                } else {
                    assert!(!touched[i] || cells[i], "case {case}: cell {i} touched");
                }
            }
        }
    }

    #[test]
    fn heat_map_colours_sampled_cells_only() {
        let window = Window {
            x: 0,
            y: 0,
            size: 4,
        };
        let mut c = Confidence::certain(4);
        c.record(0, &[0.25, 0.75], 0);
        c.record(3, &[0.25, 0.75], 1);
        let map = heat_map(&window, 2, &c, 4, 4);
        assert_eq!(
            map.get_pixel(0, 0).0,
            [colour(0.25)[0], colour(0.25)[1], colour(0.25)[2], 255]
        );
        assert_eq!(map.get_pixel(3, 0).0[3], 0, "known token: transparent");
        assert_eq!(map.get_pixel(3, 3).0[..3], colour(0.75));
        assert_ne!(colour(0.0), colour(1.0));
        assert_eq!(colour(f32::NAN), colour(0.0));
    }
}

//! The fixed multinomial-diffusion schedule: how many tokens each level of the forward chain
//! redraws. Index 0 is the clean grid x_0; index T is pure noise (β_T = 1, ᾱ_T = 0).

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// α_t = 1 − β_t and ᾱ_t = ∏_{s≤t} α_s for t = 0..=T, as the checkpoints' `alphats` and
/// `alphacum` buffers store them (float32, index 0 a dummy level with β_0 = 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// α_t = 1 − β_t, length T + 1.
    pub alphats: Vec<f32>,
    /// ᾱ_t, length T + 1.
    pub alphacum: Vec<f32>,
}

/// The data-driven ("custom") schedules of the official releases, as `load_betas` computed
/// them from the repository's perceptual-metric tables (imagebart.md §1.3). Only these
/// (name, T) pairs exist in released configs; checkpoints carry the same values as buffers.
const CUSTOM: &[(&str, &[f32])] = &[
    ("ffhq_bernoulli_PSIM", &[0.0, 0.363_952_46, 1.0]),
    ("bernoulli_PSIM", &[0.0, 0.151_728_76, 0.230_635_73, 1.0]),
    (
        "bernoulli_PSIM",
        &[
            0.0,
            0.090_111_13,
            0.104_179_74,
            0.139_202_49,
            0.266_021_55,
            1.0,
        ],
    ),
];

impl Schedule {
    /// Builds α and ᾱ from β_0..β_T the way the official code does: float32, `1 − β`, then a
    /// float32 running product.
    pub fn from_betas(betas: &[f32]) -> Self {
        let alphats: Vec<f32> = betas.iter().map(|b| 1.0f32 - b).collect();
        let mut alphacum = Vec::with_capacity(alphats.len());
        let mut acc = 1.0f32;
        for a in &alphats {
            acc *= a;
            alphacum.push(acc);
        }
        Self { alphats, alphacum }
    }

    /// The "geometric" (Sohl-Dickstein) schedule: β = [0, 1/T, 1/(T−1), …, 1], so ᾱ_t = 1 − t/T.
    pub fn geometric(levels: usize) -> Self {
        let mut betas = vec![0.0f32];
        betas.extend((1..=levels).map(|t| (1.0f64 / (levels - t + 1) as f64) as f32));
        Self::from_betas(&betas)
    }

    /// An explicit ᾱ_1..ᾱ_T list (`alphacum:a1,…,aT`); β_t = 1 − ᾱ_t / ᾱ_{t−1}.
    pub fn from_alphacum(alphacum: &[f32]) -> Result<Self, String> {
        let mut prev = 1.0f32;
        let mut betas = vec![0.0f32];
        for &a in alphacum {
            if !(0.0..=1.0).contains(&a) || a > prev {
                return Err(format!(
                    "alphacum values must decrease within [0, 1], got {alphacum:?}"
                ));
            }
            betas.push(if prev == 0.0 { 1.0 } else { 1.0 - a / prev });
            prev = a;
        }
        let mut s = Self::from_betas(&betas);
        // Keep the listed ᾱ exactly rather than their re-multiplied product.
        s.alphacum[1..].copy_from_slice(alphacum);
        Ok(s)
    }

    /// Interprets a config's `redraw_prob` for a chain of `levels` = T stages: `geometric`,
    /// `alphacum:…`, a constant float, or one of the released data-driven names.
    pub fn from_redraw_prob(redraw_prob: &str, levels: usize) -> Result<Self, String> {
        let s = redraw_prob.trim();
        let schedule = if s == "geometric" {
            Self::geometric(levels)
        } else if let Some(list) = s.strip_prefix("alphacum:") {
            let values = list
                .split(',')
                .map(|v| v.trim().parse::<f32>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("redraw_prob `{s}`: {e}"))?;
            Self::from_alphacum(&values)?
        } else if let Ok(p) = s.parse::<f32>() {
            let mut betas = vec![0.0f32];
            betas.extend(std::iter::repeat_n(p, levels));
            Self::from_betas(&betas)
        } else {
            let betas = CUSTOM
                .iter()
                .find(|(name, b)| *name == s && b.len() == levels + 1)
                .map(|(_, b)| *b)
                .ok_or_else(|| {
                    format!(
                        "redraw_prob `{s}` with {levels} levels is a data-driven schedule not \
                         known to Tessera; the checkpoint's `alphats`/`alphacum` buffers are \
                         needed for it"
                    )
                })?;
            Self::from_betas(betas)
        };
        if schedule.levels() != levels {
            return Err(format!(
                "redraw_prob `{s}` gives {} levels, the config has n_scales = {levels}",
                schedule.levels()
            ));
        }
        Ok(schedule)
    }

    /// Number of levels T.
    pub fn levels(&self) -> usize {
        self.alphats.len().saturating_sub(1)
    }

    /// β_t, the probability that level t redraws a token of level t − 1.
    pub fn beta(&self, t: usize) -> f32 {
        1.0 - self.alphats[t]
    }

    /// Checks internal consistency: equal lengths, values in [0, 1], ᾱ_T = 0.
    pub fn validate(&self) -> Result<(), String> {
        if self.alphats.len() != self.alphacum.len() || self.alphats.len() < 2 {
            return Err(format!(
                "schedule buffers have lengths {} and {}; need equal lengths ≥ 2",
                self.alphats.len(),
                self.alphacum.len()
            ));
        }
        if self
            .alphats
            .iter()
            .chain(&self.alphacum)
            .any(|v| !(0.0..=1.0).contains(v))
        {
            return Err("schedule values must lie in [0, 1]".into());
        }
        Ok(())
    }

    /// Largest absolute difference to another schedule of the same length (`None` if lengths differ).
    pub fn max_abs_diff(&self, other: &Schedule) -> Option<f32> {
        if self.alphats.len() != other.alphats.len() || self.alphacum.len() != other.alphacum.len()
        {
            return None;
        }
        let d = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max)
        };
        Some(d(&self.alphats, &other.alphats).max(d(&self.alphacum, &other.alphacum)))
    }
}

/// Runs the forward chain on every grid of `x0` up to level `t` (≥ 1) and returns
/// `(x_{t−1}, x_t)`. Each level s redraws every token with probability β_s, the replacement
/// drawn uniformly from `0..k` (it may equal the old token). Two draws per token and level, in
/// raster order, grid after grid — the order the pipeline's re-noising uses.
pub fn forward_chain(
    x0: &[Vec<u32>],
    t: usize,
    schedule: &Schedule,
    k: u32,
    rng: &mut ChaCha8Rng,
) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let mut prev = x0.to_vec();
    let mut cur = x0.to_vec();
    for s in 1..=t {
        let beta = schedule.beta(s) as f64;
        prev.clone_from(&cur);
        for grid in cur.iter_mut() {
            for tok in grid.iter_mut() {
                let redraw = rng.random::<f64>() < beta;
                let replacement = rng.random_range(0..k);
                if redraw {
                    *tok = replacement;
                }
            }
        }
    }
    (prev, cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometric_matches_release_table() {
        // imagebart.md §1.3, FFHQ 4 scales geometric: ᾱ = 1, 0.75, 0.49999997, 0.24999999, 0.
        let s = Schedule::geometric(4);
        assert_eq!(s.alphacum, vec![1.0, 0.75, 0.499_999_97, 0.249_999_99, 0.0]);
        assert_eq!(s.beta(2), 1.0 - 0.666_666_6);
    }

    #[test]
    fn geometric_three_levels_matches_golden_buffers() {
        let s = Schedule::geometric(3);
        // Bit patterns of the float32 buffers in the golden checkpoints.
        let two_thirds = f32::from_bits(0x3f2a_aaaa);
        let one_third = f32::from_bits(0x3eaa_aaaa);
        assert_eq!(s.alphats, vec![1.0, two_thirds, 0.5, 0.0]);
        assert_eq!(s.alphacum, vec![1.0, two_thirds, one_third, 0.0]);
    }

    #[test]
    fn alphacum_form() {
        let s = Schedule::from_redraw_prob("alphacum:0.69999999,0.00000000", 2).unwrap();
        assert_eq!(s.alphats, vec![1.0, 0.7, 0.0]);
        assert_eq!(s.alphacum, vec![1.0, 0.7, 0.0]);
        assert!(Schedule::from_redraw_prob("alphacum:0.7", 2).is_err());
        assert!(Schedule::from_redraw_prob("alphacum:0.5,0.7", 2).is_err());
    }

    #[test]
    fn custom_release_schedules() {
        let s = Schedule::from_redraw_prob("bernoulli_PSIM", 5).unwrap();
        assert!(
            (s.alphacum[4] - 0.514_983_8).abs() < 1e-6,
            "{:?}",
            s.alphacum
        );
        assert!(Schedule::from_redraw_prob("bernoulli_PSIM", 7).is_err());
        assert!(Schedule::from_redraw_prob("nonsense", 3).is_err());
    }
}

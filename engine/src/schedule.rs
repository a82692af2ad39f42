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
        // `1.0 / torch.arange(T, 0, -1)`: a float32 division.
        betas.extend((1..=levels).map(|t| 1.0f32 / (levels - t + 1) as f32));
        Self::from_betas(&betas)
    }

    /// An explicit ᾱ_0, ᾱ_1, …, ᾱ_T list, read as the official `set_noise_schedule` reads
    /// `alphacum:…`: α_t = ᾱ_t / ᾱ_{t−1} and β_t = 1 − α_t in double precision (Python floats),
    /// β_0 = 0 prepended, β rounded to float32, then [`Schedule::from_betas`]. So n values give
    /// n − 1 levels, and the buffers equal the official ones bit for bit.
    ///
    /// Rejects what is not a diffusion schedule: ᾱ_0 must be 1 (the clean grid; the official
    /// code only divides by it), the values must not increase (β_t ∈ [0, 1]), and ᾱ_T must be 0
    /// (the last level is pure noise, which the last stage starts from; a 0 earlier in the list
    /// would make the official code divide by zero).
    pub fn from_alphacum(alphacum: &[f64]) -> Result<Self, String> {
        let bad = |why: String| {
            Err(format!(
                "alphacum {alphacum:?} is not a valid ᾱ list: {why}"
            ))
        };
        if alphacum.len() < 2 {
            return bad("it needs ᾱ_0 = 1 and at least one level, ending in ᾱ_T = 0".into());
        }
        if let Some(v) = alphacum.iter().find(|v| !v.is_finite()) {
            return bad(format!("{v} is not a number in [0, 1]"));
        }
        if alphacum[0] != 1.0 {
            return bad(format!(
                "it starts with ᾱ_0 = {}; ᾱ_0 is the clean grid and must be 1",
                alphacum[0]
            ));
        }
        let last = alphacum[alphacum.len() - 1];
        if last != 0.0 {
            return bad(format!(
                "it ends with ᾱ_T = {last}; the last level must be pure noise (ᾱ_T = 0)"
            ));
        }
        let mut betas = vec![0.0f32];
        for (t, w) in alphacum.windows(2).enumerate() {
            let (prev, cur) = (w[0], w[1]);
            if prev == 0.0 {
                return bad(format!(
                    "ᾱ_{t} = 0 before the last level (the official code divides by it)"
                ));
            }
            if !(0.0..=prev).contains(&cur) {
                return bad(format!(
                    "ᾱ_{} = {cur} after ᾱ_{t} = {prev}; the values must decrease towards 0",
                    t + 1
                ));
            }
            betas.push((1.0 - cur / prev) as f32);
        }
        Ok(Self::from_betas(&betas))
    }

    /// Reads `alphacum:…` for a chain of `levels` stages. A list of `levels` values ending in
    /// 0 is the spelling Tessera used before it read the list as the official code does (ᾱ_1
    /// first, ᾱ_0 left out): refused with the corrected string, never silently shifted.
    fn from_alphacum_text(text: &str, list: &str, levels: usize) -> Result<Self, String> {
        let values = list
            .split(',')
            .map(|v| v.trim().parse::<f64>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("redraw_prob `{text}`: {e}"))?;
        let n = values.len();
        if n == levels + 1 {
            return Self::from_alphacum(&values).map_err(|e| format!("redraw_prob `{text}`: {e}"));
        }
        let mut hint = String::new();
        if n == levels && values.first() != Some(&1.0) {
            let corrected = [1.0].iter().chain(&values).copied().collect::<Vec<_>>();
            if Self::from_alphacum(&corrected).is_ok() {
                hint = format!(
                    "; if these are ᾱ_1..ᾱ_T, put ᾱ_0 = 1 first: `alphacum:1,{}`",
                    list.trim()
                );
            }
        }
        let got = n.saturating_sub(1);
        Err(format!(
            "redraw_prob `{text}` lists {n} values, ᾱ_0..ᾱ_T, so {got} level{}, but the config \
             has n_scales = {levels} (it needs {} values){hint}",
            if got == 1 { "" } else { "s" },
            levels + 1
        ))
    }

    /// Interprets a config's `redraw_prob` for a chain of `levels` = T stages: `geometric`,
    /// `alphacum:…`, a constant float, or one of the released data-driven names.
    pub fn from_redraw_prob(redraw_prob: &str, levels: usize) -> Result<Self, String> {
        let s = redraw_prob.trim();
        let schedule = if s == "geometric" {
            Self::geometric(levels)
        } else if let Some(list) = s.strip_prefix("alphacum:") {
            Self::from_alphacum_text(s, list, levels)?
        } else if let Ok(p) = s.parse::<f64>() {
            // A YAML float (a Python double) times a float32 tensor of ones.
            let mut betas = vec![0.0f32];
            betas.extend(std::iter::repeat_n(p as f32, levels));
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

    /// `ᾱ = [1, 0.7, 0]`: the schedule as a message shows it.
    pub fn describe(&self) -> String {
        let values: Vec<String> = self.alphacum.iter().map(|v| v.to_string()).collect();
        format!("ᾱ = [{}]", values.join(", "))
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

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    // Expected bit patterns below were computed with the official formula in plain Python
    // (`float()` parsing, double division, `struct`-rounded float32 for `torch.tensor(beta)`,
    // `1.0 - beta` and a sequential float32 cumprod).

    #[test]
    fn alphacum_reads_official_example_bit_for_bit() {
        let s = Schedule::from_redraw_prob("alphacum:1.0,0.9,0.72,0.504,0.3024,0.0", 5).unwrap();
        assert_eq!(
            bits(&s.alphats),
            [
                0x3f80_0000,
                0x3f66_6666,
                0x3f4c_cccd,
                0x3f33_3333,
                0x3f19_999a,
                0
            ]
        );
        // ᾱ is the float32 product of the α, not the listed values (0.72 would be 0x3f3851ec).
        assert_eq!(
            bits(&s.alphacum),
            [
                0x3f80_0000,
                0x3f66_6666,
                0x3f38_51eb,
                0x3f01_0624,
                0x3e9a_d42c,
                0
            ]
        );
        assert!((s.beta(4) - 0.4).abs() < 1e-6 && s.beta(5) == 1.0);
    }

    #[test]
    fn alphacum_two_levels() {
        // The golden `class_custom` configs' spelling; the example β = [0, 0.3, 1].
        for text in [
            "alphacum:1.00000000,0.69999999,0.00000000",
            "alphacum:1.0,0.7,0.0",
        ] {
            let s = Schedule::from_redraw_prob(text, 2).unwrap();
            assert_eq!(s.alphats, vec![1.0, 0.7, 0.0], "{text}");
            assert_eq!(s.alphacum, vec![1.0, 0.7, 0.0], "{text}");
        }
        let s = Schedule::from_redraw_prob(" alphacum: 1, 0.75, 0 ", 2).unwrap();
        assert_eq!(s.alphats, vec![1.0, 0.75, 0.0]);
    }

    #[test]
    fn alphacum_old_spelling_is_refused_with_the_corrected_string() {
        let e = Schedule::from_redraw_prob("alphacum:0.75,0", 2).unwrap_err();
        assert!(e.contains("`alphacum:1,0.75,0`"), "{e}");
        assert!(e.contains("n_scales = 2"), "{e}");
        // Read the official way the old spelling is one level: no silent reinterpretation.
        assert!(Schedule::from_redraw_prob("alphacum:0.69999999,0.00000000", 2).is_err());
        // A count error without a plausible correction names the counts only.
        let e = Schedule::from_redraw_prob("alphacum:1,0.5,0.2,0", 2).unwrap_err();
        assert!(e.contains("3 levels") && !e.contains("put"), "{e}");
    }

    #[test]
    fn alphacum_rejects_invalid_sequences() {
        for (text, why) in [
            ("alphacum:0.9,0.5,0", "must be 1"),
            ("alphacum:1,0.5,0.7", "must be pure noise"),
            ("alphacum:1,1.5,0", "must decrease"),
            ("alphacum:1,0,0", "divides by it"),
            ("alphacum:1,-0.5,0", "must decrease"),
            ("alphacum:1,nan,0", "not a number"),
            ("alphacum:1,x,0", "float"),
            ("alphacum:", "float"),
        ] {
            let e = Schedule::from_redraw_prob(text, 2).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
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

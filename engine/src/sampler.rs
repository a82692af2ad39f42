//! Turning one row of logits into a token: the official post-processing (guide → temperature →
//! top-k → top-p → softmax, imagebart.md §5 and §9 item 10) and an inverse-CDF draw.
//!
//! Everything here works on plain slices on the CPU: a row has K ≤ ~1000 entries, so this costs
//! nothing next to a network step, and keeping it out of the tensor library makes the draw
//! exactly reproducible from the seed.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Sampling settings of one level (one stage of the reverse chain).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LevelParams {
    /// Logits are divided by it (> 0, finite). 1 = the network's own distribution; smaller
    /// values sharpen it.
    pub temperature: f32,
    /// Keep only the logits ≥ the k-th largest (ties kept); `None` = no truncation.
    pub top_k: Option<usize>,
    /// Keep only the smallest set of most probable tokens whose mass reaches p (0 < p ≤ 1);
    /// `None` (or 1) = no truncation.
    pub top_p: Option<f32>,
}

impl Default for LevelParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: None,
            top_p: None,
        }
    }
}

impl LevelParams {
    /// Checks the ranges: temperature > 0 and finite, top-k ≥ 1, 0 < top-p ≤ 1. The message
    /// says which value is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(format!(
                "temperature must be a finite number > 0, got {}",
                self.temperature
            ));
        }
        if self.top_k == Some(0) {
            return Err("top-k must be at least 1".into());
        }
        if let Some(p) = self.top_p
            && !(p.is_finite() && p > 0.0 && p <= 1.0)
        {
            return Err(format!("top-p must lie in (0, 1], got {p}"));
        }
        Ok(())
    }
}

/// Tolerance when testing whether a cumulative mass has reached top-p: a softmax of
/// `ln(0.5)` does not give exactly 0.5, and "reaches 0.5" should still hold for it.
const TOP_P_SLACK: f64 = 1e-6;

/// Logits row (length K) → probabilities (length K), as the official sampler post-processes
/// it: ÷ temperature (skipped when `apply_temperature` is false, as the official code does for
/// the encoder–decoder stages) → top-k → top-p → softmax.
///
/// Never panics: NaN logits count as −∞; if every entry is −∞ the result is uniform; +∞
/// entries share all the mass. An empty row gives an empty vector.
pub fn distribution(logits: &[f32], p: &LevelParams, apply_temperature: bool) -> Vec<f32> {
    distribution_guided(logits, p, apply_temperature, None)
}

/// [`distribution`] with the inpainting guide of one position: `forced = Some(tok)` adds 0 at
/// `tok` and −∞ everywhere else (imagebart.md §6.2), so the result is the one-hot of `tok`
/// whatever the logits and settings (a `tok` outside the row gives the unguided distribution).
pub fn distribution_guided(
    logits: &[f32],
    p: &LevelParams,
    apply_temperature: bool,
    forced: Option<u32>,
) -> Vec<f32> {
    let k = logits.len();
    if let Some(tok) = forced
        && (tok as usize) < k
    {
        // guide → temperature → top-k → top-p → softmax leaves exactly one finite logit.
        let mut one_hot = vec![0.0; k];
        one_hot[tok as usize] = 1.0;
        return one_hot;
    }
    let mut z: Vec<f32> = logits
        .iter()
        .map(|&v| if v.is_nan() { f32::NEG_INFINITY } else { v })
        .collect();
    if apply_temperature && p.temperature != 1.0 && p.temperature > 0.0 {
        for v in &mut z {
            *v /= p.temperature;
        }
    }
    if let Some(top_k) = p.top_k
        && top_k >= 1
        && top_k < k
    {
        let mut sorted = z.clone();
        sorted.sort_unstable_by(|a, b| b.total_cmp(a));
        let kth = sorted[top_k - 1];
        for v in &mut z {
            if *v < kth {
                *v = f32::NEG_INFINITY;
            }
        }
    }
    let mut probs = softmax(&z);
    if let Some(top_p) = p.top_p
        && top_p > 0.0
        && top_p < 1.0
    {
        // Most probable first; equal probabilities in index order, so the set is deterministic.
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        let mut mass = 0.0f64;
        let mut keep = 0;
        for &i in &order {
            keep += 1;
            mass += probs[i] as f64;
            if mass + TOP_P_SLACK >= top_p as f64 {
                break;
            }
        }
        for &i in &order[keep..] {
            z[i] = f32::NEG_INFINITY;
        }
        probs = softmax(&z);
    }
    probs
}

/// Softmax in f64 (returned as f32) of a row that may hold ±∞.
fn softmax(z: &[f32]) -> Vec<f32> {
    let k = z.len();
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return vec![1.0 / k as f32; k];
    }
    if max == f32::INFINITY {
        let n = z.iter().filter(|v| **v == f32::INFINITY).count() as f32;
        return z
            .iter()
            .map(|&v| if v == f32::INFINITY { 1.0 / n } else { 0.0 })
            .collect();
    }
    let e: Vec<f64> = z.iter().map(|&v| ((v - max) as f64).exp()).collect();
    let total: f64 = e.iter().sum();
    e.iter().map(|v| (v / total) as f32).collect()
}

/// Draws one token from `probs` by inverse CDF with a single uniform from `rng`: the first
/// index whose cumulative mass exceeds u·Σprobs. Entries with zero (or negative, or NaN) mass
/// are never drawn; a row without any mass gives 0.
pub fn draw(probs: &[f32], rng: &mut ChaCha8Rng) -> u32 {
    let u: f64 = rng.random();
    let weight = |p: f32| if p > 0.0 { p as f64 } else { 0.0 };
    let total: f64 = probs.iter().map(|&p| weight(p)).sum();
    let target = u * total;
    let mut acc = 0.0f64;
    let mut last = None;
    for (i, &p) in probs.iter().enumerate() {
        let w = weight(p);
        if w > 0.0 {
            acc += w;
            last = Some(i);
            if acc > target {
                return i as u32;
            }
        }
    }
    last.unwrap_or(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn params(temperature: f32, top_k: Option<usize>, top_p: Option<f32>) -> LevelParams {
        LevelParams {
            temperature,
            top_k,
            top_p,
        }
    }

    fn kept(probs: &[f32]) -> Vec<usize> {
        (0..probs.len()).filter(|&i| probs[i] > 0.0).collect()
    }

    #[test]
    fn plain_softmax() {
        let p = distribution(&[0.0, 0.0, (2.0f32).ln()], &LevelParams::default(), true);
        assert!(
            (p[0] - 0.25).abs() < 1e-6 && (p[2] - 0.5).abs() < 1e-6,
            "{p:?}"
        );
    }

    #[test]
    fn top_k_keeps_ties() {
        let logits = [1.0, 3.0, 2.0, 3.0, 2.0, 0.5];
        assert_eq!(
            kept(&distribution(&logits, &params(1.0, Some(1), None), true)),
            [1, 3]
        );
        assert_eq!(
            kept(&distribution(&logits, &params(1.0, Some(3), None), true)),
            [1, 2, 3, 4]
        );
        let p = distribution(&logits, &params(1.0, Some(2), None), true);
        assert_eq!(kept(&p), [1, 3]);
        assert!((p[1] - 0.5).abs() < 1e-6);
        // k ≥ K: no truncation.
        assert_eq!(
            kept(&distribution(&logits, &params(1.0, Some(60), None), true)).len(),
            6
        );
    }

    #[test]
    fn top_p_smallest_set_reaching_p() {
        let logits: Vec<f32> = [0.5f32, 0.3, 0.2].iter().map(|p| p.ln()).collect();
        let keep = |p: f32| kept(&distribution(&logits, &params(1.0, None, Some(p)), true));
        assert_eq!(keep(0.6), [0, 1]);
        assert_eq!(keep(0.5), [0]);
        assert_eq!(keep(0.1), [0]);
        assert_eq!(keep(0.81), [0, 1, 2]);
        assert_eq!(keep(1.0), [0, 1, 2]);
        let p = distribution(&logits, &params(1.0, None, Some(0.6)), true);
        assert!((p[0] - 0.625).abs() < 1e-6 && (p[1] - 0.375).abs() < 1e-6);
        // Order does not matter.
        let rev: Vec<f32> = logits.iter().rev().copied().collect();
        assert_eq!(
            kept(&distribution(&rev, &params(1.0, None, Some(0.6)), true)),
            [1, 2]
        );
    }

    #[test]
    fn top_k_then_top_p() {
        // top-k 2 leaves [0.625, 0.375]; top-p 0.6 then keeps the first alone.
        let logits: Vec<f32> = [0.5f32, 0.3, 0.2].iter().map(|p| p.ln()).collect();
        let p = distribution(&logits, &params(1.0, Some(2), Some(0.6)), true);
        assert_eq!(kept(&p), [0]);
    }

    #[test]
    fn temperature_sharpens_and_can_be_skipped() {
        let logits = [1.0, 2.0, 0.0];
        let base = distribution(&logits, &LevelParams::default(), true);
        let cold = distribution(&logits, &params(0.5, None, None), true);
        let hot = distribution(&logits, &params(2.0, None, None), true);
        assert!(cold[1] > base[1] && base[1] > hot[1]);
        assert!(cold[2] < base[2] && base[2] < hot[2]);
        let skipped = distribution(&logits, &params(0.5, None, None), false);
        assert_eq!(skipped, base);
    }

    #[test]
    fn forced_token_is_one_hot() {
        let p = distribution_guided(
            &[5.0, 1.0, -2.0, 0.0],
            &params(0.3, Some(1), None),
            true,
            Some(2),
        );
        assert_eq!(p, [0.0, 0.0, 1.0, 0.0]);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..20 {
            assert_eq!(draw(&p, &mut rng), 2);
        }
    }

    #[test]
    fn degenerate_rows_do_not_panic() {
        let p = distribution(&[f32::NEG_INFINITY; 4], &LevelParams::default(), true);
        assert_eq!(p, [0.25; 4]);
        let p = distribution(
            &[f32::NAN, 1.0, f32::INFINITY],
            &LevelParams::default(),
            true,
        );
        assert_eq!(p, [0.0, 0.0, 1.0]);
        assert!(distribution(&[], &LevelParams::default(), true).is_empty());
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(draw(&[], &mut rng), 0);
        assert_eq!(draw(&[0.0, f32::NAN], &mut rng), 0);
    }

    #[test]
    fn draw_follows_the_distribution() {
        let probs = [0.1, 0.0, 0.6, 0.3];
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut counts = [0usize; 4];
        for _ in 0..20_000 {
            counts[draw(&probs, &mut rng) as usize] += 1;
        }
        assert_eq!(counts[1], 0);
        for (c, p) in counts.iter().zip(probs) {
            assert!((*c as f32 / 20_000.0 - p).abs() < 0.015, "{counts:?}");
        }
    }

    #[test]
    fn validation() {
        assert!(LevelParams::default().validate().is_ok());
        assert!(params(0.0, None, None).validate().is_err());
        assert!(params(f32::NAN, None, None).validate().is_err());
        assert!(params(f32::INFINITY, None, None).validate().is_err());
        assert!(params(1.0, Some(0), None).validate().is_err());
        assert!(params(1.0, Some(1), Some(1.0)).validate().is_ok());
        assert!(params(1.0, None, Some(0.0)).validate().is_err());
        assert!(params(1.0, None, Some(1.5)).validate().is_err());
    }
}

//! The reverse chain: stage T (minGPT) → stage T−1 … → stage 1 (encoder–decoders), producing
//! x_0 as a grid of remapped tokens, with the official inpainting guide and chains
//! (imagebart.md §5, §6), classifier-free guidance (against the empty condition for models
//! trained with a dropped condition, or against a negative condition), and branching from a
//! given level (e.g. inpainting strength, [`strength_start`]).
//! One file (≈ 660 lines): the chain and the per-level context it runs stages with belong
//! together.
//!
//! Beyond the official sampler, known tokens are never stepped through one by one: at a known
//! position the guide allows exactly one token, so each run of known tokens is fed to the
//! network in one prefill call and only the masked positions are sampled token by token. The
//! distribution is the official one; the cost is in proportion to what is masked.
//!
//! Randomness: every candidate has its own [`ChaCha8Rng`] ([`candidate_rng`]), used for its
//! x_T, its chain re-noising and its draws, so a candidate depends on the seed and its index
//! only, never on how many candidates run beside it (up to rounding differences of batched
//! arithmetic). A known position consumes no random number.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::gpt::{Gpt, GptCache};
use crate::loader::card::{Condition, ModelCard, Network};
use crate::loader::{Model, Stage};
use crate::sampler::{self, LevelParams};
use crate::schedule::Schedule;
use crate::xtransformer::{DecoderCache, XTransformer};
use crate::{Error, Result};

/// At most this many candidates per request (each is a batch row, doubled with guidance).
pub const MAX_CANDIDATES: usize = 64;
/// The editor's number of candidates per request: four to choose from, the best-fitting
/// ([`crate::fit`]) shown first.
pub const DEFAULT_CANDIDATES: usize = 4;
/// At most this many chain passes per stage.
pub const MAX_CHAINS: usize = 100;

/// Token id fed to the encoder–decoder's decoder before the first image token (`sos_token`).
const SOS: u32 = 0;

/// One sampling job: what to condition on, how to sample each level, and (for inpainting) the
/// known tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainRequest {
    /// Class or prompt (must suit the model's conditioning).
    pub condition: Condition,
    /// Classifier-free guidance scale s: logits = uncond + s·(cond − uncond), where uncond
    /// runs the same network on the prefix of [`negative`](Self::negative) (by default
    /// [`Condition::None`]). 1 = off; any other finite value ≥ 0 needs a negative the model
    /// takes — for [`Condition::None`], a model trained with a dropped condition (else
    /// [`Error::Input`]).
    pub guidance_scale: f32,
    /// The negative condition ("negative prompt"): what guidance steers away from, i.e. the
    /// condition of the "uncond" branch. [`Condition::None`] (the default) is plain
    /// classifier-free guidance. Must suit the model's conditioning like `condition`, and is
    /// only meaningful with guidance: any other value with `guidance_scale == 1` is an
    /// [`Error::Input`]. With `negative == condition` the guided logits equal the
    /// conditional ones at every scale (cond − cond = 0).
    pub negative: Condition,
    /// Number of candidates N (1..=[`MAX_CANDIDATES`]), sampled as one batch.
    pub candidates: usize,
    /// Seed; the same seed gives the same result on the same build and device.
    pub seed: u64,
    /// Per level, length T: `levels[t-1]` is used at stage t.
    pub levels: Vec<LevelParams>,
    /// Whether temperature applies at the encoder–decoder stages too. `false` is the official
    /// sampler (temperature only at the GPT stage); `true` is Tessera's default.
    pub encdec_temperature: bool,
    /// Per level, length T: passes of stage t (1..=[`MAX_CHAINS`]). Pass k > 0 re-noises the
    /// current output at all positions with probability (1 − k/n)·β_t and samples again.
    pub chains: Vec<usize>,
    /// Inpainting: per position (length n_positions, raster order) `Some(token)` = known x_0
    /// token, forced at every level; `None` = generate. `None` overall = plain generation.
    pub known: Option<Vec<Option<u32>>>,
    /// Branching: start the chain at a given level from given grids instead of from x_T.
    pub start: Option<Start>,
    /// The other conditions the candidates are judged against by [`crate::fit::fit`] (the
    /// model's vocabulary of concepts, as conditions); empty: against the negative. Sampling
    /// does not read it. At most [`crate::fit::MAX_CONTRAST`] are used.
    pub contrast: Vec<Condition>,
    /// The concept the request asks for, as the model's recognizer knows it (the class
    /// picked, or the concept the prompt names: [`crate::recognizer::RecognizerCard::concept_of`]);
    /// with it, candidates are ranked by the recognizer ([`crate::fit::score_until`]). Sampling
    /// does not read it.
    pub concept: Option<usize>,
}

/// Where a branched chain starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    /// k in 1..=T: the chain starts by running stage k on `grids` (= x_k).
    pub level: usize,
    /// x_k: one grid (n_positions tokens) per candidate, or one grid used for all.
    pub grids: Vec<Vec<u32>>,
}

impl ChainRequest {
    /// Defaults for `card`: no condition, no guidance (negative: none), one candidate, seed 0, the
    /// card's recommended [`LevelParams`] (else the defaults) per level, temperature at every level, one pass per stage, no known
    /// tokens, start from x_T.
    pub fn new(card: &ModelCard) -> Self {
        let t = card.levels();
        Self {
            condition: Condition::None,
            guidance_scale: 1.0,
            negative: Condition::None,
            candidates: 1,
            seed: 0,
            levels: vec![card.sampling.unwrap_or_default(); t],
            encdec_temperature: true,
            chains: vec![1; t],
            known: None,
            start: None,
            contrast: Vec::new(),
            concept: None,
        }
    }

    /// Checks the request against the model card; [`Error::Input`] says what is wrong.
    pub fn validate(&self, card: &ModelCard) -> Result<()> {
        let bad = |msg: String| Err(Error::Input(msg));
        let t_max = card.levels();
        let p = card.n_positions();
        let k = card.n_tokens;
        if t_max == 0 {
            return bad("the model has no stages".into());
        }
        if self.candidates == 0 || self.candidates > MAX_CANDIDATES {
            return bad(format!(
                "number of candidates must be 1..={MAX_CANDIDATES}, got {}",
                self.candidates
            ));
        }
        if self.levels.len() != t_max {
            return bad(format!(
                "{} level settings given, the model has {t_max} levels",
                self.levels.len()
            ));
        }
        for (i, l) in self.levels.iter().enumerate() {
            l.validate()
                .map_err(|e| Error::Input(format!("level {}: {e}", i + 1)))?;
        }
        if self.chains.len() != t_max {
            return bad(format!(
                "{} chain counts given, the model has {t_max} levels",
                self.chains.len()
            ));
        }
        if let Some((i, c)) = self
            .chains
            .iter()
            .enumerate()
            .find(|(_, c)| **c == 0 || **c > MAX_CHAINS)
        {
            return bad(format!(
                "level {}: chain passes must be 1..={MAX_CHAINS}, got {c}",
                i + 1
            ));
        }
        if !(self.guidance_scale.is_finite() && self.guidance_scale >= 0.0) {
            return bad(format!(
                "guidance scale must be a finite number ≥ 0, got {}",
                self.guidance_scale
            ));
        }
        if self.guidance_scale == 1.0 && self.negative != Condition::None {
            return bad(
                "a negative condition is only used with classifier-free guidance: set a \
                 guidance scale other than 1"
                    .into(),
            );
        }
        for t in 1..=t_max {
            card.prefix(t, &self.condition).map_err(Error::Input)?;
            if self.guidance_scale != 1.0 {
                card.prefix(t, &self.negative).map_err(|e| {
                    Error::Input(if self.negative == Condition::None {
                        format!(
                            "classifier-free guidance needs a model trained without the \
                             condition (or a negative condition): {e}"
                        )
                    } else {
                        format!("negative condition: {e}")
                    })
                })?;
            }
        }
        if let Some(c) = self.concept {
            match &card.recognizer {
                Some(r) if c < r.concepts.len() => {}
                Some(r) => {
                    return bad(format!(
                        "concept {c}: the model's recognizer knows {}",
                        r.concepts.len()
                    ));
                }
                None => return bad(format!("concept {c}: the model has no recognizer")),
            }
        }
        for (i, c) in self.contrast.iter().enumerate() {
            card.prefix(1, c)
                .map_err(|e| Error::Input(format!("contrast condition {}: {e}", i + 1)))?;
        }
        if let Some(known) = &self.known {
            if known.len() != p {
                return bad(format!(
                    "the known-token mask has {} positions, the model has {p}",
                    known.len()
                ));
            }
            if let Some((i, tok)) = known
                .iter()
                .enumerate()
                .find_map(|(i, t)| t.filter(|t| *t as usize >= k).map(|t| (i, t)))
            {
                return bad(format!(
                    "known token {tok} at position {i} is not in 0..{k}"
                ));
            }
        }
        if let Some(start) = &self.start {
            if start.level == 0 || start.level > t_max {
                return bad(format!("start level {} is not in 1..={t_max}", start.level));
            }
            if start.grids.len() != 1 && start.grids.len() != self.candidates {
                return bad(format!(
                    "{} start grids given for {} candidates (give 1 or one per candidate)",
                    start.grids.len(),
                    self.candidates
                ));
            }
            for (g, grid) in start.grids.iter().enumerate() {
                if grid.len() != p {
                    return bad(format!(
                        "start grid {g} has {} tokens, the model has {p} positions",
                        grid.len()
                    ));
                }
                if let Some((i, tok)) = grid.iter().enumerate().find(|(_, t)| **t as usize >= k) {
                    return bad(format!(
                        "start grid {g}: token {tok} at position {i} is not in 0..{k}"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The inpainting chain counts: the card's recommendation (`chains`) if it has one, else the
/// official script's — 3 passes per stage for a geometric schedule, otherwise 5 per
/// encoder–decoder stage — except that a GPT stage (the last) runs once. A GPT reads no x_t,
/// so every pass after its first draws x_{T−1} afresh from the same distribution; the official
/// script runs three of them for geometric schedules (one for the others), which only costs
/// time: here the result's distribution is the same for a third of the top level's work.
pub fn default_chains(card: &ModelCard) -> Vec<usize> {
    if let Some(chains) = card.chains.as_ref().filter(|c| c.len() == card.levels()) {
        return chains.clone();
    }
    let t = card.levels();
    let geometric = card
        .schedule
        .max_abs_diff(&Schedule::geometric(t))
        .is_some_and(|d| d <= 1e-6);
    card.stages
        .iter()
        .map(|stage| match stage.network {
            Network::Gpt { .. } => 1,
            _ if geometric => 3,
            _ => 5,
        })
        .collect()
}

/// The random generator of candidate `index` under `seed`: ChaCha8 keyed by the seed, stream
/// = candidate index.
pub fn candidate_rng(seed: u64, index: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index as u64);
    rng
}

/// The random generator of the strength noise ([`strength_start`]) of candidate `index`:
/// ChaCha8 keyed by the seed, on a stream apart from every [`candidate_rng`] stream.
fn strength_rng(seed: u64, index: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream((1u64 << 63) | index as u64);
    rng
}

/// "Strength" for inpainting: redo only the last `level` = k levels of the chain, keeping the
/// structure of what the masked area holds now. Draws x_k ~ q(x_k | x_0) per candidate with
/// the model's schedule (the forward chain x_0 → … → x_k, [`crate::schedule::forward_chain`]:
/// a token survives with probability ᾱ_k, otherwise it is a uniform code), seeded from `seed`
/// and the candidate index on a stream of its own; known positions (`Some` in `known`) keep
/// their x_0 token, as in the full chain's x_T. Put the result in [`ChainRequest::start`].
///
/// `x0` is the encoded context window (all positions, masked ones included). k must be in
/// 1..=T ([`Error::Input`] otherwise). k = T returns `None` — the full chain: ᾱ_T = 0 makes
/// x_T uniform noise whatever x_0 is, so the full chain is the same distribution and, with
/// the same seed, the same result as no strength at all.
pub fn strength_start(
    card: &ModelCard,
    x0: &[u32],
    known: &[Option<u32>],
    level: usize,
    candidates: usize,
    seed: u64,
) -> Result<Option<Start>> {
    let t_max = card.levels();
    if level == 0 || level > t_max {
        return Err(Error::Input(format!(
            "strength: levels to redo must be in 1..={t_max}, got {level}"
        )));
    }
    let p = card.n_positions();
    if x0.len() != p || known.len() != p {
        return Err(Error::Input(format!(
            "strength: x_0 has {} and the mask {} positions, the model has {p}",
            x0.len(),
            known.len()
        )));
    }
    if level == t_max {
        return Ok(None);
    }
    let k = card.n_tokens as u32;
    let grids = (0..candidates)
        .map(|i| {
            let mut rng = strength_rng(seed, i);
            let (_, xk) =
                crate::schedule::forward_chain(&[x0.to_vec()], level, &card.schedule, k, &mut rng);
            xk.into_iter()
                .next()
                .unwrap_or_default()
                .into_iter()
                .zip(known)
                .map(|(x, kt)| kt.unwrap_or(x))
                .collect()
        })
        .collect();
    Ok(Some(Start { level, grids }))
}

pub use crate::confidence::{Confidence, entropy_bits};

/// What the chain reports while it runs.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// A masked token was sampled (for every candidate).
    Token {
        /// The stage being run (t: it writes x_{t−1}).
        level: usize,
        /// The chain pass, 0-based (`0..passes`).
        pass: usize,
        /// Passes of this stage.
        passes: usize,
        /// Masked tokens sampled so far in this pass (1..=total).
        done: usize,
        /// Masked tokens this pass samples.
        total: usize,
        /// Per candidate: the grid with the tokens sampled so far (and the known tokens), the
        /// rest from the stage's input x_t.
        partial: &'a [Vec<u32>],
    },
    /// Stage `level` finished (after its last pass).
    Level {
        /// The stage.
        level: usize,
        /// x_{level−1}, per candidate.
        grids: &'a [Vec<u32>],
        /// How sure its last pass was of each token, per candidate.
        confidence: &'a [Confidence],
    },
}

/// Receives progress and says whether to stop.
pub trait Observer {
    /// Called at every sampled (masked) token and after every stage; throttle on your side.
    fn progress(&mut self, p: Progress<'_>);
    /// Polled at least once per network step; `true` makes [`run_chain`] return
    /// [`Error::Cancelled`].
    fn cancelled(&self) -> bool;
}

/// An observer that ignores progress and never cancels.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Observer for Silent {
    fn progress(&mut self, _: Progress<'_>) {}
    fn cancelled(&self) -> bool {
        false
    }
}

/// How [`run_chain_with`] executes a request (the result's distribution is the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainOptions {
    /// Feed each run of known tokens to the network in one call (default). `false` steps
    /// through known positions one token at a time like the official sampler (for
    /// comparison).
    pub prefill_known: bool,
}

impl Default for ChainOptions {
    fn default() -> Self {
        Self {
            prefill_known: true,
        }
    }
}

/// Runs the reverse chain. Returns, for each stage run (in the order run, from the top), the
/// grids it produced per candidate; the last entry is x_0.
pub fn run_chain(
    model: &Model,
    req: &ChainRequest,
    obs: &mut dyn Observer,
) -> Result<Vec<Vec<Vec<u32>>>> {
    run_chain_with(model, req, obs, &ChainOptions::default())
}

/// [`run_chain`] with explicit [`ChainOptions`].
pub fn run_chain_with(
    model: &Model,
    req: &ChainRequest,
    obs: &mut dyn Observer,
    opts: &ChainOptions,
) -> Result<Vec<Vec<Vec<u32>>>> {
    let card = &model.card;
    req.validate(card)?;
    let t_max = card.levels();
    let n = req.candidates;
    let p = card.n_positions();
    let k = card.n_tokens as u32;
    let known: Vec<Option<u32>> = req.known.clone().unwrap_or_else(|| vec![None; p]);
    let mut rngs: Vec<ChaCha8Rng> = (0..n).map(|i| candidate_rng(req.seed, i)).collect();

    let (top, mut x) = match &req.start {
        Some(s) => {
            let grids = if s.grids.len() == 1 {
                vec![s.grids[0].clone(); n]
            } else {
                s.grids.clone()
            };
            (s.level, grids)
        }
        None => {
            // x_T: uniform noise, the known tokens in place (unused by the GPT stage; shown as
            // the "rest" of partial grids).
            let grids = rngs
                .iter_mut()
                .map(|rng| {
                    known
                        .iter()
                        .map(|kt| kt.unwrap_or_else(|| rng.random_range(0..k)))
                        .collect()
                })
                .collect();
            (t_max, grids)
        }
    };

    let mut ctx = Ctx {
        model,
        req,
        obs,
        opts: *opts,
        device: &model.device,
        n,
        p,
        known: &known,
        total: known.iter().filter(|t| t.is_none()).count(),
    };
    let mut out = Vec::with_capacity(top);
    for t in (1..=top).rev() {
        let passes = req.chains[t - 1];
        let beta = card.schedule.beta(t);
        let mut current = x;
        let mut confidence = vec![Confidence::certain(p); n];
        for pass in 0..passes {
            ctx.check_cancel()?;
            let input = if pass == 0 {
                current
            } else {
                let prob = ((1.0 - pass as f64 / passes as f64) * beta as f64).clamp(0.0, 1.0);
                renoise(current, prob, k, &mut rngs)
            };
            (current, confidence) = ctx.run_stage(t, pass, passes, &input, &mut rngs)?;
        }
        // A lazily loaded model keeps only the stage that is running.
        model.release(t);
        ctx.obs.progress(Progress::Level {
            level: t,
            grids: &current,
            confidence: &confidence,
        });
        out.push(current.clone());
        x = current;
    }
    Ok(out)
}

/// Replaces every token, with probability `prob`, by a uniform one (per candidate rng).
fn renoise(mut grids: Vec<Vec<u32>>, prob: f64, k: u32, rngs: &mut [ChaCha8Rng]) -> Vec<Vec<u32>> {
    for (grid, rng) in grids.iter_mut().zip(rngs) {
        for tok in grid.iter_mut() {
            let redraw = rng.random::<f64>() < prob;
            let replacement = rng.random_range(0..k);
            if redraw {
                *tok = replacement;
            }
        }
    }
    grids
}

/// A stage network with its decoding state.
enum Decoder<'a> {
    EncDec(&'a XTransformer, DecoderCache),
    Gpt(&'a Gpt, GptCache),
}

impl Decoder<'_> {
    fn step(&mut self, tokens: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::EncDec(net, cache) => net.step(tokens, cache)?,
            Self::Gpt(net, cache) => net.step(tokens, cache)?,
        })
    }
}

/// What every stage of one run shares.
struct Ctx<'a, 'o> {
    model: &'a Model,
    req: &'a ChainRequest,
    obs: &'o mut dyn Observer,
    opts: ChainOptions,
    device: &'a Device,
    n: usize,
    p: usize,
    known: &'a [Option<u32>],
    /// Number of masked positions.
    total: usize,
}

impl Ctx<'_, '_> {
    fn check_cancel(&self) -> Result<()> {
        if self.obs.cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }

    /// The conditioning prefixes of stage t, one per batch row kind: `[cond]` or, with
    /// guidance, `[cond, uncond]` where uncond is the prefix of the request's negative
    /// condition. Every network input of the uncond rows (the encoder pass, the GPT's KV
    /// cache) is built from these prefixes.
    fn prefixes(&self, t: usize) -> Result<Vec<Vec<u32>>> {
        let card = &self.model.card;
        let cond = card.prefix(t, &self.req.condition).map_err(Error::Input)?;
        if self.req.guidance_scale == 1.0 {
            return Ok(vec![cond]);
        }
        let uncond = card.prefix(t, &self.req.negative).map_err(Error::Input)?;
        if uncond == cond {
            // uncond + s·(cond − uncond) = cond exactly: guidance is the identity.
            return Ok(vec![cond]);
        }
        Ok(vec![cond, uncond])
    }

    /// One pass of stage t on x_t = `input` (per candidate) → x_{t−1} per candidate, with how
    /// sure it was of each token.
    fn run_stage(
        &mut self,
        t: usize,
        pass: usize,
        passes: usize,
        input: &[Vec<u32>],
        rngs: &mut [ChaCha8Rng],
    ) -> Result<(Vec<Vec<u32>>, Vec<Confidence>)> {
        let (n, p) = (self.n, self.p);
        // Output so far: the known tokens in place, the rest from x_t until sampled.
        let mut out: Vec<Vec<u32>> = input
            .iter()
            .map(|g| {
                g.iter()
                    .zip(self.known)
                    .map(|(x, kt)| kt.unwrap_or(*x))
                    .collect()
            })
            .collect();
        let mut confidence = vec![Confidence::certain(p); n];
        if self.total == 0 {
            return Ok((out, confidence));
        }
        let prefixes = self.prefixes(t)?;
        let kinds = prefixes.len();
        let rows = n * kinds;
        let t_max = self.model.card.levels();
        // Per batch row r (candidate r % n, prefix r / n): the decoder's input sequence is
        // `head[r / n] ++ y[r % n]`; logits after feeding its first `head_len + j` entries are
        // the distribution of y_j.
        let stage = self.model.stage(t)?;
        let kind_ok = matches!(
            (&*stage, t == t_max),
            (Stage::EncDec(_), false) | (Stage::Gpt(_), true)
        );
        if !kind_ok {
            return Err(Error::Input(format!(
                "stage {t} has the wrong network kind for its place in the chain"
            )));
        }
        let (mut decoder, heads) = match &*stage {
            Stage::EncDec(net) => {
                let mut src = Vec::with_capacity(rows * (prefixes[0].len() + p));
                for prefix in &prefixes {
                    for grid in input {
                        src.extend_from_slice(prefix);
                        src.extend_from_slice(grid);
                    }
                }
                let len = src.len() / rows;
                let src = Tensor::from_vec(src, (rows, len), self.device)?;
                let cache = net.start(&src)?;
                (Decoder::EncDec(net, cache), vec![vec![SOS]; kinds])
            }
            Stage::Gpt(net) if t == t_max => (Decoder::Gpt(net, net.new_cache()), prefixes),
            Stage::Gpt(_) => {
                return Err(Error::Input(format!("stage {t} is a GPT but not the last")));
            }
        };
        let head_len = heads[0].len();
        let params = self.req.levels[t - 1];
        let apply_temperature = t == t_max || self.req.encdec_temperature;
        let scale = self.req.guidance_scale;
        let mut fed = 0usize;
        let mut done = 0usize;
        for j in 0..p {
            let forced = self.known[j];
            if forced.is_some() && self.opts.prefill_known {
                continue;
            }
            // Feed sequence entries fed..head_len + j (≥ 1 of them: the previous feed stopped
            // at an earlier position).
            let upto = head_len + j;
            let width = upto.saturating_sub(fed);
            if width == 0 {
                return Err(Error::Input(
                    "internal: the sampler has nothing to feed".into(),
                ));
            }
            self.check_cancel()?;
            let mut ids = Vec::with_capacity(rows * width);
            for r in 0..rows {
                let (head, y) = (&heads[r / n], &out[r % n]);
                ids.extend((fed..upto).map(|m| {
                    if m < head_len {
                        head[m]
                    } else {
                        y[m - head_len]
                    }
                }));
            }
            let ids = Tensor::from_vec(ids, (rows, width), self.device)?;
            let logits = decoder.step(&ids)?;
            fed = upto;
            if forced.is_some() {
                // Token-by-token forcing: the guide leaves one token, the logits are not needed.
                continue;
            }
            let mut last = logits
                .narrow(1, width - 1, 1)?
                .squeeze(1)?
                .to_vec2::<f32>()?;
            for (i, rng) in rngs.iter_mut().enumerate() {
                let row = if kinds == 2 {
                    let (c, u) = (&last[i], &last[n + i]);
                    c.iter().zip(u).map(|(c, u)| u + scale * (c - u)).collect()
                } else {
                    std::mem::take(&mut last[i])
                };
                let probs = sampler::distribution(&row, &params, apply_temperature);
                out[i][j] = sampler::draw(&probs, rng);
                confidence[i].record(j, &probs, out[i][j]);
            }
            done += 1;
            self.obs.progress(Progress::Token {
                level: t,
                pass,
                passes,
                done,
                total: self.total,
                partial: &out,
            });
        }
        Ok((out, confidence))
    }
}

//! How well each candidate shows what was asked for, by the model's own likelihoods — so the
//! editor can show the best-fitting candidate first.
//!
//! The fit of a candidate is the posterior of the request's condition c among a contrast set
//! C (the model's vocabulary of concepts, else the negative condition), uniform prior, read
//! from stage 1 — the stage that writes x_0 — over the generated positions only:
//!
//! p(c | x_0, x_1) = p(x_0 | x_1, c) / Σ_{c' ∈ {c} ∪ C} p(x_0 | x_1, c').
//!
//! Classifier-free guidance already steers every token towards c against the empty condition;
//! the fit judges the whole finished fill against each *other* concept the model knows, which
//! the draw never sees. Ranking four candidates by it measurably raises how often the one shown
//! first is the concept asked for (README, `tessera eval`).
//!
//! A model with a concept recognizer ([`crate::recognizer`]) is ranked by that instead when the
//! request names one of its concepts ([`score_until`]): a discriminative network judges the
//! fill's shape better than the stage's likelihoods, which a guided draw has already pushed
//! towards the concept token by token (README, shipped model: the candidate shown first is the
//! requested concept 66 / 63 % of the time for class picks / prompts, 51 / 47 % by the stages'
//! fit). The stages' fit stays for requests that name no concept and for models without a
//! recognizer.

use candle_core::{D, Tensor};

use crate::loader::card::{Condition, Conditioning, ModelCard, class_prompt};
use crate::loader::{Model, Stage};
use crate::pipeline::ChainRequest;
use crate::text::PromptTokenizer;
use crate::{Error, Result};

/// At most this many contrast conditions per request (each is a batch row of the scoring pass
/// per candidate).
pub const MAX_CONTRAST: usize = 64;

/// Token id fed to the encoder–decoder's decoder before the first image token.
const SOS: u32 = 0;

/// Per candidate, p(condition | x_0, x_1) in [0, 1] (module docs) for the grids `run_chain`
/// returned for `req` (`grids`, top level first, x_0 last). `None` when there is nothing to
/// rank: no condition, no position generated, or no other condition to compare with (an empty
/// contrast set and a negative the model cannot take or that equals the condition).
pub fn fit(model: &Model, req: &ChainRequest, grids: &[Vec<Vec<u32>>]) -> Result<Option<Vec<f32>>> {
    fit_until(model, req, grids, &|| false)
}

/// [`fit`], polling `cancelled` before each candidate's scoring pass ([`Error::Cancelled`]).
pub fn fit_until(
    model: &Model,
    req: &ChainRequest,
    grids: &[Vec<Vec<u32>>],
    cancelled: &dyn Fn() -> bool,
) -> Result<Option<Vec<f32>>> {
    let card = &model.card;
    req.validate(card)?;
    if req.condition == Condition::None {
        return Ok(None);
    }
    let Some(x0) = grids.last() else {
        return Ok(None);
    };
    let p = card.n_positions();
    let k = card.n_tokens;
    for (level, level_grids) in grids.iter().enumerate() {
        if level_grids.len() != x0.len() {
            return Err(Error::Input(format!(
                "grids of the chain's run {} hold {} candidates, x_0 has {}",
                level + 1,
                level_grids.len(),
                x0.len()
            )));
        }
        if let Some(g) = level_grids
            .iter()
            .find(|g| g.len() != p || g.iter().any(|&t| t as usize >= k))
        {
            return Err(Error::Input(format!(
                "a grid of the chain's run {} has {} tokens (the model has {p} positions) or a \
                 token outside 0..{k}",
                level + 1,
                g.len()
            )));
        }
    }
    let generated: Vec<usize> = match &req.known {
        Some(known) => (0..p).filter(|&j| known[j].is_none()).collect(),
        None => (0..p).collect(),
    };
    let Some(&last) = generated.last() else {
        return Ok(None);
    };
    let others = contrast_set(req, |c| card.prefix(1, c).is_ok());
    if others.is_empty() {
        return Ok(None);
    }
    // x_1, the input of stage 1: the level above's output, else the grids the chain started
    // from at level 1; none for a one-level model (its stage 1 is a GPT).
    let x1: Option<Vec<Vec<u32>>> = if grids.len() >= 2 {
        Some(grids[grids.len() - 2].clone())
    } else {
        req.start
            .as_ref()
            .filter(|s| s.level == 1)
            .map(|s| match s.grids.len() {
                1 => vec![s.grids[0].clone(); x0.len()],
                _ => s.grids.clone(),
            })
    };
    let conds: Vec<&Condition> = std::iter::once(&req.condition).chain(&others).collect();
    let prefixes: Vec<Vec<u32>> = conds
        .iter()
        .map(|c| card.prefix(1, c).map_err(Error::Input))
        .collect::<Result<_>>()?;
    let stage = model.stage(1)?;
    // Only positions up to the last generated one matter: the decoder is causal.
    let len = last + 1;
    // Only the generated positions' distributions are needed.
    let at = Tensor::from_vec(
        generated.iter().map(|&j| j as u32).collect::<Vec<_>>(),
        generated.len(),
        &model.device,
    )?;
    // One batch per candidate and prefix length (a batch needs one length), a row per
    // condition.
    let mut ll = vec![vec![0.0f64; conds.len()]; x0.len()];
    let mut lengths: Vec<usize> = prefixes.iter().map(Vec::len).collect();
    lengths.sort_unstable();
    lengths.dedup();
    for h in lengths {
        let conds_h: Vec<usize> = (0..conds.len())
            .filter(|&r| prefixes[r].len() == h)
            .collect();
        // Per candidate: one batch over all candidates measured slower (3.2 → 4.5 s for four
        // of the shipped model's), its activations no longer fitting the caches.
        for i in 0..x0.len() {
            if cancelled() {
                return Err(Error::Cancelled);
            }
            let logits = match (&*stage, &x1) {
                (Stage::EncDec(net), Some(x1)) => {
                    let mut src = Vec::with_capacity(conds_h.len() * (h + p));
                    let mut tgt = Vec::with_capacity(conds_h.len() * len);
                    for &r in &conds_h {
                        src.extend_from_slice(&prefixes[r]);
                        src.extend_from_slice(&x1[i]);
                        tgt.push(SOS);
                        tgt.extend_from_slice(&x0[i][..len - 1]);
                    }
                    let src = Tensor::from_vec(src, (conds_h.len(), h + p), &model.device)?;
                    let tgt = Tensor::from_vec(tgt, (conds_h.len(), len), &model.device)?;
                    net.forward_at(&src, &tgt, &at)?
                }
                (Stage::Gpt(net), _) => {
                    let mut idx = Vec::with_capacity(conds_h.len() * (h + len - 1));
                    for &r in &conds_h {
                        idx.extend_from_slice(&prefixes[r]);
                        idx.extend_from_slice(&x0[i][..len - 1]);
                    }
                    let n = h + len - 1;
                    let idx = Tensor::from_vec(idx, (conds_h.len(), n), &model.device)?;
                    // Row h − 1 + j predicts token j.
                    net.forward(&idx)?
                        .narrow(1, h - 1, len)?
                        .index_select(&at, 1)?
                }
                (Stage::EncDec(_), None) => return Ok(None),
            };
            let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
            let target: Vec<u32> = conds_h
                .iter()
                .flat_map(|_| generated.iter().map(|&j| x0[i][j]))
                .collect();
            let shape = (conds_h.len(), generated.len(), 1);
            let target = Tensor::from_vec(target, shape, &model.device)?;
            let picked = logp.gather(&target, 2)?.squeeze(2)?.to_vec2::<f32>()?;
            for (&r, row) in conds_h.iter().zip(&picked) {
                ll[i][r] = row.iter().map(|&v| f64::from(v)).sum();
            }
        }
    }
    let out = ll.iter().map(|l| posterior_of_first(l)).collect();
    Ok(Some(out))
}

/// Per candidate, how well it shows what `req` asks for — what the editor ranks by: the
/// recognizer's p(concept | x_0 around the fill) when the request names a concept
/// (`req.concept`) and the model has a recognizer ([`recognized`]), else the stages' own
/// [`fit_until`]. `None` when there is nothing to rank.
pub fn score_until(
    model: &Model,
    req: &ChainRequest,
    grids: &[Vec<Vec<u32>>],
    cancelled: &dyn Fn() -> bool,
) -> Result<Option<Vec<f32>>> {
    match recognized(model, req, grids)? {
        Some(p) => Ok(Some(p)),
        None => fit_until(model, req, grids, cancelled),
    }
}

/// Per candidate, the recognizer's p(`req.concept` | x_0) over the region around the
/// generated positions ([`crate::recognizer::region`]); `None` without a concept, a
/// recognizer, or a generated position.
pub fn recognized(
    model: &Model,
    req: &ChainRequest,
    grids: &[Vec<Vec<u32>>],
) -> Result<Option<Vec<f32>>> {
    let (Some(concept), Some(rec)) = (req.concept, &model.recognizer) else {
        return Ok(None);
    };
    req.validate(&model.card)?;
    let Some(x0) = grids.last() else {
        return Ok(None);
    };
    let side = model.card.grid_side();
    let region = crate::recognizer::region(req.known.as_deref(), side, crate::recognizer::MARGIN);
    if !region.iter().any(|&k| k) {
        return Ok(None);
    }
    rec.probabilities(x0, &region, concept).map(Some)
}

/// The model's vocabulary of concepts as conditions — the contrast set the editor, the CLI and
/// `tessera eval` send: a class model's classes, a text model's class words (each as the prompt
/// the class picker makes, so through `tokenizer`); empty when the model has none, has more
/// than [`MAX_CONTRAST`], or is a text model without its tokenizer.
pub fn vocabulary(card: &ModelCard, tokenizer: Option<&PromptTokenizer>) -> Result<Vec<Condition>> {
    Ok(match &card.conditioning {
        Conditioning::Class { n_classes, .. } if *n_classes <= MAX_CONTRAST => {
            (0..*n_classes).map(Condition::Class).collect()
        }
        Conditioning::Text { class_names, .. }
            if !class_names.is_empty() && class_names.len() <= MAX_CONTRAST =>
        {
            let Some(tok) = tokenizer else {
                return Ok(Vec::new());
            };
            class_names
                .iter()
                .map(|name| {
                    Ok(Condition::Text(
                        tok.encode(&class_prompt(Some(name), ""))?.ids,
                    ))
                })
                .collect::<Result<_>>()?
        }
        _ => Vec::new(),
    })
}

/// The conditions the request's is compared with: `req.contrast` without the request's own
/// condition and duplicates (at most [`MAX_CONTRAST`]), or, when that leaves none, the
/// negative condition if it differs from the request's and the model takes it (`takes`).
pub fn contrast_set(req: &ChainRequest, takes: impl Fn(&Condition) -> bool) -> Vec<Condition> {
    let mut set: Vec<Condition> = Vec::new();
    for c in &req.contrast {
        if *c != req.condition && !set.contains(c) && takes(c) {
            set.push(c.clone());
        }
        if set.len() == MAX_CONTRAST {
            break;
        }
    }
    if set.is_empty() && req.negative != req.condition && takes(&req.negative) {
        set.push(req.negative.clone());
    }
    set
}

/// exp(ll[0]) / Σ exp(ll[i]), computed without overflow; 0 when ll[0] is −∞ or not finite.
fn posterior_of_first(ll: &[f64]) -> f32 {
    let max = ll.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !ll[0].is_finite() || !max.is_finite() {
        return 0.0;
    }
    let total: f64 = ll.iter().map(|v| (v - max).exp()).sum();
    ((ll[0] - max).exp() / total) as f32
}

/// Candidate indices, best fit first (ties and missing fits in index order).
pub fn ranking(fit: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..fit.len()).collect();
    order.sort_by(|&a, &b| fit[b].total_cmp(&fit[a]).then(a.cmp(&b)));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posterior_is_a_softmax() {
        assert!((posterior_of_first(&[0.0, 0.0]) - 0.5).abs() < 1e-7);
        let p = posterior_of_first(&[-1000.0, -1000.0 - 2f64.ln()]);
        assert!((p - 2.0 / 3.0).abs() < 1e-6, "{p}");
        assert_eq!(posterior_of_first(&[f64::NEG_INFINITY, -3.0]), 0.0);
        assert_eq!(posterior_of_first(&[-3.0, f64::NEG_INFINITY]), 1.0);
    }

    #[test]
    fn ranking_puts_the_best_first() {
        assert_eq!(ranking(&[0.2, 0.9, 0.2, 0.5]), [1, 3, 0, 2]);
        assert!(ranking(&[]).is_empty());
    }
}

//! The concept recognizer: which of the model's concepts a grid of x_0 tokens shows, so the
//! candidates of a request can be ranked by how clearly they show what was asked for.
//!
//! Classifier-free guidance steers every token towards the request, but a draw can still go
//! wrong as a whole (a red blob instead of a heart); the generative [`crate::fit`] judges the
//! finished fill by the stage's own likelihoods, which are dominated by low-level token
//! statistics. The recognizer is a small discriminative network trained by `tessera train` on
//! the same encoded training scenes as the stages (each grid labelled with its largest object's
//! concept, the region around the object kept), the way generated samples are reranked by a
//! separate model in text-to-image systems. It reads tokens, not pixels, so it is cheap (a few
//! milliseconds per candidate) and independent of the evaluation classifier, which sees the
//! decoded image.
//!
//! Network: a token embedding (the codebook's `n_tokens` entries plus [`Recognizer::outside`],
//! which stands for positions outside the region looked at) → per stage a 3×3 convolution with
//! bias (training's BatchNorm folded in) and SiLU, a 2× average pool between stages → the mean
//! over positions → a linear head over the concepts.

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::loader::card::ModelCard;
use crate::{Error, Result};

/// One concept the recognizer tells apart: its name (the class name) and the other words a
/// prompt may call it by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Concept {
    /// Name, as the class picker lists it ("red heart").
    pub name: String,
    /// Other words for it ("heart", "love").
    #[serde(default)]
    pub words: Vec<String>,
}

/// The recognizer's entry in a model card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecognizerCard {
    /// Weights file inside the model folder (safetensors).
    pub weights: String,
    /// Width of the token embedding.
    pub embed_dim: usize,
    /// Output channels of each convolution stage (2× average pool between stages).
    pub channels: Vec<usize>,
    /// The concepts, in class-id order (class id = index).
    pub concepts: Vec<Concept>,
}

impl RecognizerCard {
    /// Checks sizes against the model's token count and grid side.
    pub fn validate(&self, n_tokens: usize, side: usize) -> std::result::Result<(), String> {
        if self.weights.is_empty() || self.weights.contains(['/', '\\']) {
            return Err("recognizer: weights must be a file name in the folder".into());
        }
        if self.embed_dim == 0
            || self.channels.is_empty()
            || self.channels.contains(&0)
            || self.concepts.is_empty()
        {
            return Err("recognizer: embed_dim, channels and concepts must be positive".into());
        }
        if n_tokens == 0 || side == 0 {
            return Err("recognizer: the model has no token grid".into());
        }
        // Every pool halves the side; the last stage must keep at least one position.
        let pools = self.channels.len() - 1;
        if pools >= usize::BITS as usize || side >> pools == 0 {
            return Err(format!(
                "recognizer: {} stages pool a {side}×{side} grid away",
                self.channels.len()
            ));
        }
        if self.channels.len() > 16
            || self.embed_dim > 4096
            || self.channels.iter().any(|&c| c > 4096)
        {
            return Err(
                "recognizer: implausibly large (at most 16 stages of 4096 channels)".into(),
            );
        }
        Ok(())
    }

    /// The concept a request asks for: the class picked (`class`, by name), else the concept a
    /// prompt names — by its name or one of its words, as whole words, the earliest in the
    /// prompt (a caption names the main object first), the longest match at one place. `None`
    /// when the prompt names none.
    pub fn concept_of(&self, class: Option<&str>, prompt: &str) -> Option<usize> {
        if let Some(name) = class {
            let name = name.trim();
            return self
                .concepts
                .iter()
                .position(|c| c.name.eq_ignore_ascii_case(name));
        }
        let words = split_words(prompt);
        let mut best: Option<(usize, usize, usize)> = None; // (start, −len, concept)
        for (ci, c) in self.concepts.iter().enumerate() {
            for phrase in std::iter::once(&c.name).chain(&c.words) {
                let p = split_words(phrase);
                if p.is_empty() || p.len() > words.len() {
                    continue;
                }
                if let Some(start) =
                    (0..=words.len() - p.len()).find(|&s| words[s..s + p.len()] == p[..])
                {
                    let key = (start, usize::MAX - p.len(), ci);
                    if best.is_none_or(|b| key < b) {
                        best = Some(key);
                    }
                }
            }
        }
        best.map(|(_, _, ci)| ci)
    }
}

/// The concept a request for `class` (a class id) or, without one, for `prompt` asks for, as
/// `card`'s recognizer knows it ([`RecognizerCard::concept_of`]); `None` when the model has no
/// recognizer or the request names no concept it knows.
pub fn request_concept(card: &ModelCard, class: Option<usize>, prompt: &str) -> Option<usize> {
    let r = card.recognizer.as_ref()?;
    match class {
        Some(c) => (c < r.concepts.len()).then_some(c),
        None => r.concept_of(None, prompt),
    }
}

/// Lower-cased alphanumeric words.
fn split_words(s: &str) -> Vec<String> {
    s.split(|ch: char| !ch.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The positions a recognizer looks at for an inpainting: the bounding box of the generated
/// positions (`known[j] == None`) grown by `margin` on every side, in a `side`×`side` raster;
/// every position when nothing is known. Empty when nothing is generated.
pub fn region(known: Option<&[Option<u32>]>, side: usize, margin: usize) -> Vec<bool> {
    let n = side * side;
    let Some(known) = known else {
        return vec![true; n];
    };
    let mut bbox: Option<(usize, usize, usize, usize)> = None;
    for (j, k) in known.iter().enumerate().take(n) {
        if k.is_none() {
            let (y, x) = (j / side, j % side);
            bbox = Some(match bbox {
                None => (y, x, y, x),
                Some((y0, x0, y1, x1)) => (y0.min(y), x0.min(x), y1.max(y), x1.max(x)),
            });
        }
    }
    let Some((y0, x0, y1, x1)) = bbox else {
        return vec![false; n];
    };
    let (y0, x0) = (y0.saturating_sub(margin), x0.saturating_sub(margin));
    let (y1, x1) = ((y1 + margin).min(side - 1), (x1 + margin).min(side - 1));
    (0..n)
        .map(|j| {
            let (y, x) = (j / side, j % side);
            (y0..=y1).contains(&y) && (x0..=x1).contains(&x)
        })
        .collect()
}

/// Margin (in tokens) around the generated positions that [`region`] keeps, in inference and
/// in training alike.
pub const MARGIN: usize = 1;

/// The recognizer network (module docs).
pub struct Recognizer {
    card: RecognizerCard,
    n_tokens: usize,
    side: usize,
    embed: Tensor,
    convs: Vec<(Tensor, Tensor)>,
    head: Linear,
    device: Device,
}

impl std::fmt::Debug for Recognizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recognizer")
            .field("card", &self.card)
            .field("side", &self.side)
            .finish()
    }
}

impl Recognizer {
    /// Builds it from `vb` (`embed.weight` (n_tokens + 1, embed_dim), `conv{i}.weight`
    /// (c_out, c_in, 3, 3), `conv{i}.bias`, `head.weight`, `head.bias`) for a model of
    /// `n_tokens` tokens on a `side`×`side` grid. Weights are computed in f32.
    pub fn new(
        vb: VarBuilder,
        card: &RecognizerCard,
        n_tokens: usize,
        side: usize,
    ) -> Result<Self> {
        card.validate(n_tokens, side).map_err(Error::Input)?;
        let f32 = |t: Tensor| t.to_dtype(DType::F32);
        let embed = f32(vb.get((n_tokens + 1, card.embed_dim), "embed.weight")?)?;
        let mut convs = Vec::new();
        let mut c_in = card.embed_dim;
        for (i, &c) in card.channels.iter().enumerate() {
            let w = f32(vb.get((c, c_in, 3, 3), &format!("conv{i}.weight"))?)?;
            let b = f32(vb.get(c, &format!("conv{i}.bias"))?)?;
            convs.push((w, b));
            c_in = c;
        }
        let k = card.concepts.len();
        let head = Linear::new(
            f32(vb.get((k, c_in), "head.weight")?)?,
            Some(f32(vb.get(k, "head.bias")?)?),
        );
        Ok(Self {
            card: card.clone(),
            n_tokens,
            side,
            embed,
            convs,
            head,
            device: vb.device().clone(),
        })
    }

    /// Its card.
    pub fn card(&self) -> &RecognizerCard {
        &self.card
    }

    /// The token id that marks a position outside the region looked at.
    pub fn outside(&self) -> u32 {
        self.n_tokens as u32
    }

    /// Concept logits `(B, concepts)` of token grids `(B, side²)` (u32, raster order; ids up to
    /// [`Self::outside`]).
    pub fn forward(&self, grids: &Tensor) -> Result<Tensor> {
        let (b, p) = grids.dims2()?;
        if p != self.side * self.side {
            return Err(Error::Input(format!(
                "recognizer: grids of {p} tokens, the model has {}",
                self.side * self.side
            )));
        }
        let e = self.embed.dim(1)?;
        let mut x = self
            .embed
            .index_select(&grids.flatten_all()?, 0)?
            .reshape((b, self.side, self.side, e))?
            .permute((0, 3, 1, 2))?
            .contiguous()?;
        let last = self.convs.len() - 1;
        for (i, (w, bias)) in self.convs.iter().enumerate() {
            x = x
                .conv2d(w, 1, 1, 1, 1)?
                .broadcast_add(&bias.reshape((1, (), 1, 1))?)?
                .silu()?;
            if i < last {
                x = x.avg_pool2d(2)?;
            }
        }
        let features = x.flatten_from(2)?.mean(D::Minus1)?;
        Ok(self.head.forward(&features)?)
    }

    /// p(`concept` | grid) for each grid, looking only at `region` (positions outside it are
    /// replaced by [`Self::outside`]).
    pub fn probabilities(
        &self,
        grids: &[Vec<u32>],
        region: &[bool],
        concept: usize,
    ) -> Result<Vec<f32>> {
        let p = self.side * self.side;
        if concept >= self.card.concepts.len() {
            return Err(Error::Input(format!(
                "recognizer: concept {concept} of {}",
                self.card.concepts.len()
            )));
        }
        if region.len() != p {
            return Err(Error::Input(format!(
                "recognizer: a region of {} positions for a grid of {p}",
                region.len()
            )));
        }
        if grids.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids = Vec::with_capacity(grids.len() * p);
        for g in grids {
            if g.len() != p || g.iter().any(|&t| t as usize >= self.n_tokens) {
                return Err(Error::Input(format!(
                    "recognizer: a grid of {} tokens (the model has {p} positions) or a token \
                     outside 0..{}",
                    g.len(),
                    self.n_tokens
                )));
            }
            ids.extend(
                g.iter()
                    .zip(region)
                    .map(|(&t, &keep)| if keep { t } else { self.outside() }),
            );
        }
        let grids = Tensor::from_vec(ids, (grids.len(), p), &self.device)?;
        let probs = candle_nn::ops::softmax(&self.forward(&grids)?, D::Minus1)?;
        Ok(probs.narrow(1, concept, 1)?.flatten_all()?.to_vec1()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card() -> RecognizerCard {
        let c = |name: &str, words: &[&str]| Concept {
            name: name.into(),
            words: words.iter().map(|w| (*w).to_string()).collect(),
        };
        RecognizerCard {
            weights: "recognizer.safetensors".into(),
            embed_dim: 4,
            channels: vec![8, 8],
            concepts: vec![
                c("red heart", &["heart", "love"]),
                c("cat face", &["cat", "kitty"]),
                c("star", &["gold star"]),
            ],
        }
    }

    #[test]
    fn prompts_name_their_concept() {
        let k = card();
        assert_eq!(k.concept_of(None, "kitty"), Some(1));
        assert_eq!(k.concept_of(None, "A Red Heart on blue"), Some(0));
        // The earliest concept named wins (captions name the main object first).
        assert_eq!(k.concept_of(None, "cat and star on blue to green"), Some(1));
        assert_eq!(k.concept_of(None, "gold star, then a heart"), Some(2));
        // Whole words only.
        assert_eq!(k.concept_of(None, "category lovely"), None);
        assert_eq!(k.concept_of(None, ""), None);
        assert_eq!(k.concept_of(Some("Star"), "kitty"), Some(2));
        assert_eq!(k.concept_of(Some("dragon"), "kitty"), None);
    }

    #[test]
    fn region_is_the_grown_bounding_box() {
        let mut known = vec![Some(1u32); 16];
        known[5] = None; // (1, 1)
        known[6] = None; // (1, 2)
        let r = region(Some(&known), 4, 1);
        let expect: Vec<bool> = (0..16).map(|j| j / 4 <= 2 && j % 4 <= 3).collect();
        assert_eq!(r, expect);
        assert_eq!(region(Some(&known), 4, 0).iter().filter(|&&k| k).count(), 2);
        assert!(region(None, 4, 1).iter().all(|&k| k));
        assert!(region(Some(&[Some(0); 16]), 4, 1).iter().all(|&k| !k));
    }

    #[test]
    fn validation_names_the_problem() {
        let mut k = card();
        assert!(k.validate(16, 16).is_ok());
        k.channels = vec![8; 6];
        assert!(k.validate(16, 16).unwrap_err().contains("pool"));
        let mut k = card();
        k.weights = "../x".into();
        assert!(k.validate(16, 16).is_err());
    }

    #[test]
    fn forward_checks_shapes_and_gives_probabilities() -> Result<()> {
        let k = card();
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        // Registers every weight with candle's default initialisation.
        let _ = vb.get_with_hints(
            (17, 4),
            "embed.weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        let _ = vb.get_with_hints(
            (8, 4, 3, 3),
            "conv0.weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        let _ = vb.get_with_hints(8, "conv0.bias", candle_nn::init::ZERO)?;
        let _ = vb.get_with_hints(
            (8, 8, 3, 3),
            "conv1.weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        let _ = vb.get_with_hints(8, "conv1.bias", candle_nn::init::ZERO)?;
        let _ = vb.get_with_hints(
            (3, 8),
            "head.weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        let _ = vb.get_with_hints(3, "head.bias", candle_nn::init::ZERO)?;
        let r = Recognizer::new(vb.clone(), &k, 16, 4)?;
        let grids = vec![vec![3u32; 16], (0..16).collect()];
        let all = vec![true; 16];
        let p: Vec<f32> = (0..3)
            .map(|c| r.probabilities(&grids, &all, c))
            .collect::<Result<Vec<_>>>()?
            .concat();
        for i in 0..2 {
            let s: f32 = (0..3).map(|c| p[c * 2 + i]).sum();
            assert!((s - 1.0).abs() < 1e-5, "{s}");
        }
        assert!(r.probabilities(&grids, &all, 3).is_err());
        assert!(r.probabilities(&[vec![16; 16]], &all, 0).is_err());
        assert!(r.probabilities(&[vec![0; 15]], &all, 0).is_err());
        assert!(r.probabilities(&grids, &all[..15], 0).is_err());
        // A model of another size: the key and both shapes are named.
        let err = Recognizer::new(vb, &k, 20, 4).unwrap_err().to_string();
        assert!(err.contains("embed.weight"), "{err}");
        Ok(())
    }
}

//! Measured quality of a trained model on the held-out split (`tessera eval`).
//!
//! - VQGAN: reconstruction PSNR of held-out scenes and codebook usage;
//! - stages: held-out negative log-likelihood per level, bits per token;
//! - guidance: the concept classifier's top-1 agreement with the requested concept in
//!   inpainted regions, for class, text and no guidance (the chance baseline), beside the
//!   ceiling a perfect fill would reach (the concept's emoji drawn into the region), overall
//!   and per concept;
//! - samples: FID in the classifier's feature space for unconditional generation and for
//!   upper-half completion (the "do we need more steps" comparison runs it per model);
//! - a contact sheet of masked inputs and inpainted results.

use candle_core::{DType, Device, Tensor};
use image::{GrayImage, Rgb, RgbImage};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use tessera_engine::fit::{fit, ranking, recognized, score_until, vocabulary};
use tessera_engine::inpaint::{PresetMask, Window, composite, known_tokens, token_mask};
use tessera_engine::loader::Model;
use tessera_engine::loader::card::{Condition, Conditioning, ModelCard};
use tessera_engine::pipeline::{ChainRequest, Silent, default_chains, run_chain};
use tessera_engine::recognizer::request_concept;
use tessera_engine::sampler::LevelParams;
use tessera_engine::text::PromptTokenizer;
use tessera_engine::vqgan::Vqgan;
use tessera_engine::{Error, Result};

use super::classifier::Classifier;
use super::classifier::fid;
use super::data::{
    Background, EmojiView, Scene, SceneGen, SceneMask, batch_to_tensor, composite_over, scene_mask,
};
use super::recipe::condition_of;
use super::stage::{StageBatch, StageTrainConfig, stage_agreement, stage_nll};
use super::vqgan::psnr;

/// How much to evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalConfig {
    /// Held-out scenes for the reconstruction PSNR and codebook usage.
    pub recon: usize,
    /// Held-out grids for the NLL of each stage.
    pub nll: usize,
    /// Inpainted scenes per guidance kind.
    pub guidance: usize,
    /// Generated images per FID (0 skips FID).
    pub fid: usize,
    /// Classifier-free guidance scale for the guided runs.
    pub guidance_scale: f32,
    /// Sampling settings of every level (temperature, top-k, top-p) for all generations.
    #[serde(default)]
    pub sampling: LevelParams,
    /// Passes per level (the official inpainting chains, §6.3 of the spec) for every
    /// generation; `None`: the editor's defaults ([`default_chains`] for inpainting, one pass
    /// for unconditional samples).
    #[serde(default)]
    pub chains: Option<usize>,
    /// Candidates per guided inpainting, ranked by their fit (the editor's default: 4); the
    /// guidance accuracy scores the best-fitting one, and each draw separately beside it.
    #[serde(default = "one")]
    pub candidates: usize,
    /// Seed of scenes, requested categories and sampling.
    pub seed: u64,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            recon: 256,
            nll: 128,
            guidance: 96,
            fid: 256,
            guidance_scale: 2.0,
            sampling: LevelParams::default(),
            chains: None,
            candidates: 1,
            seed: 2024,
        }
    }
}

/// What [`evaluate`] measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Mean PSNR (dB) of held-out reconstructions.
    pub psnr_db: f64,
    /// The same per background kind (`solid`, `gradient`, `stripes`, `checks`, `noise`):
    /// (scenes, mean PSNR), to show where the reconstruction error lies.
    #[serde(default)]
    pub psnr_by_background: std::collections::BTreeMap<String, (usize, f64)>,
    /// Distinct codes the held-out scenes use.
    pub codes_used: usize,
    /// Codebook size.
    pub n_embed: usize,
    /// Perplexity of the code distribution over the held-out scenes.
    pub code_perplexity: f64,
    /// Held-out NLL per level (index t − 1), bits per token.
    pub nll_bits: Vec<f64>,
    /// The same held-out NLL with every condition dropped: the gap to `nll_bits` is what
    /// the condition tells each level (zero means the stage ignores it).
    #[serde(default)]
    pub nll_bits_uncond: Vec<f64>,
    /// Per level (index t − 1), how the evaluated model's logits follow the reference model's
    /// (such as its unquantized self) on the NLL's held-out chains; empty without a reference.
    #[serde(default)]
    pub against_reference: Vec<LogitAgreement>,
    /// Guidance accuracy.
    pub guidance: GuidanceReport,
    /// FID of unconditional samples vs held-out scenes (classifier features).
    pub fid_uncond: Option<f64>,
    /// FID of upper-half completions of held-out scenes vs the scenes themselves.
    pub fid_upper_half: Option<f64>,
}

/// How one level's logits follow a reference model's on held-out chains.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LogitAgreement {
    /// Mean KL(reference ‖ model) per token, in bits.
    pub kl_bits: f64,
    /// Fraction of tokens whose most likely value is the same in both.
    pub top1: f64,
}

/// Top-1 agreement of the classifier with the requested category in inpainted regions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuidanceReport {
    /// Scenes per kind.
    pub n: usize,
    /// Categories (chance = 1 / this).
    pub classes: usize,
    /// Guided by the class token.
    pub class_acc: f64,
    /// Guided by a prompt naming an emoji of the category.
    pub text_acc: f64,
    /// No guidance, scored against the same requested categories (the baseline).
    pub uncond_acc: f64,
    /// The ceiling: a training emoji of the requested category drawn into the box over the
    /// unguided fill and passed through the VQGAN like a generated one — what a perfect fill
    /// would score with this classifier (a category without training emoji counts as a miss).
    #[serde(default)]
    pub ceiling_acc: f64,
    /// The same per requested class (requests go round the classes in turn, so each gets
    /// `n / classes` scenes).
    #[serde(default)]
    pub per_class: Vec<ClassGuidance>,
    /// Candidates per guided inpainting; `class_acc` and `text_acc` score the best-fitting one
    /// ([`tessera_engine::fit`]), the one the editor shows first.
    #[serde(default = "one")]
    pub candidates: usize,
    /// Class guidance scored over every candidate drawn (what one draw achieves, unranked).
    #[serde(default)]
    pub class_draw_acc: f64,
    /// Text guidance scored over every candidate drawn.
    #[serde(default)]
    pub text_draw_acc: f64,
}

fn one() -> usize {
    1
}

/// Guidance hits for one requested class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassGuidance {
    /// Class name.
    pub name: String,
    /// Scenes that requested it.
    pub n: usize,
    /// Hits guided by the class, by a prompt, unguided, and of the ceiling.
    pub hits: [usize; 4],
}

/// A scene with its mask, encoded once and inpainted under several conditions.
struct Masked<'a> {
    scene: &'a Scene,
    mask: GrayImage,
    window: Window,
    known: Vec<Option<u32>>,
}

impl<'a> Masked<'a> {
    /// Encodes `scene` (which must be at the model's resolution) and marks the tokens `mask`
    /// touches for regeneration.
    fn new(model: &Model, scene: &'a Scene, mask: GrayImage) -> Result<Self> {
        let card = &model.card;
        let res = card.resolution() as u32;
        let grid = (card.n_positions() as f64).sqrt() as usize;
        if scene.image.dimensions() != (res, res) {
            return Err(Error::Input(format!(
                "scenes are {}×{} px but the model works at {res} px",
                scene.image.width(),
                scene.image.height()
            )));
        }
        let window = Window::covering(res, res);
        let x0 = encode(model, &scene.image)?;
        let regen = token_mask(&mask, &window, grid, 0.0);
        Ok(Self {
            scene,
            known: known_tokens(&x0, &regen),
            mask,
            window,
        })
    }

    /// `n` inpaintings under `cond` as one batch of candidates, with the one ranked first by
    /// its fit against `contrast` (the first when there is nothing to rank).
    #[allow(clippy::too_many_arguments)] // private; each argument a different role
    fn fill(
        &self,
        model: &Model,
        cond: Condition,
        scale: f32,
        cfg: &EvalConfig,
        seed: u64,
        n: usize,
        contrast: &[Condition],
        concept: Option<usize>,
    ) -> Result<Fills> {
        let mut req = request(model, cond, scale, cfg, seed, Some(self.known.clone()));
        req.candidates = n;
        req.contrast = contrast.to_vec();
        req.concept = concept;
        let grids = run_chain(model, &req, &mut Silent)?;
        let shown_first = match score_until(model, &req, &grids, &|| false)? {
            Some(f) => ranking(&f)[0],
            None => 0,
        };
        if n > 1 && std::env::var_os(DUMP_VAR).is_some() {
            let side = model.card.grid_side();
            let region = tessera_engine::recognizer::region(
                req.known.as_deref(),
                side,
                tessera_engine::recognizer::MARGIN,
            );
            dump(&serde_json::json!({
                "seed": seed, "concept": concept, "fit": fit(model, &req, &grids)?,
                "rec": recognized(model, &req, &grids)?, "x0": grids.last(), "region": region,
            }))?;
        }
        let images = grids
            .last()
            .expect("x_0")
            .iter()
            .map(|g| {
                let generated = decode(model, g)?;
                Ok(composite(
                    &self.scene.image,
                    &self.mask,
                    &self.window,
                    &generated,
                    0,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Fills {
            images,
            shown_first,
        })
    }
}

/// Names a file that guided inpaintings are appended to as JSON lines — per request its
/// candidates' x_0 grids, the region the recognizer reads, both rankings' scores, then the
/// classifier's predictions — so that rankers can be compared on the same draws
/// (`engine/train/tests/rescore.rs`). An exploration aid; the report does not depend on it.
const DUMP_VAR: &str = "TESSERA_EVAL_DUMP";

/// Appends `value` as a line to the file [`DUMP_VAR`] names.
fn dump(value: &serde_json::Value) -> Result<()> {
    use std::io::Write;
    let Some(path) = std::env::var_os(DUMP_VAR) else {
        return Ok(());
    };
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{value}"))
        .map_err(|e| Error::io(std::path::Path::new(&path), e))
}

/// The candidates of one inpainting request.
struct Fills {
    /// Composited results, one per candidate.
    images: Vec<RgbImage>,
    /// Index of the best-fitting candidate.
    shown_first: usize,
}

fn request(
    model: &Model,
    condition: Condition,
    scale: f32,
    cfg: &EvalConfig,
    seed: u64,
    known: Option<Vec<Option<u32>>>,
) -> ChainRequest {
    let t = model.card.levels();
    let chains = chains_of(&model.card, cfg.chains, known.is_some());
    ChainRequest {
        condition,
        guidance_scale: scale,
        negative: Condition::None,
        candidates: 1,
        seed,
        levels: vec![cfg.sampling; t],
        encdec_temperature: true,
        chains,
        known,
        start: None,
        contrast: Vec::new(),
        concept: None,
    }
}

/// Passes per level: `chains` for every level when given, else the editor's and the CLI's
/// defaults — [`default_chains`] when inpainting, one pass when sampling.
pub fn chains_of(card: &ModelCard, chains: Option<usize>, inpainting: bool) -> Vec<usize> {
    let t = card.levels();
    match chains {
        Some(n) => vec![n.max(1); t],
        None if inpainting => default_chains(card),
        None => vec![1; t],
    }
}

/// The x_0 grid of one image at the model's resolution.
fn encode(model: &Model, image: &RgbImage) -> Result<Vec<u32>> {
    let x = batch_to_tensor(std::slice::from_ref(image), &model.device)?;
    Ok(model.vqgan.encode_tokens(&x)?.flatten_all()?.to_vec1()?)
}

fn decode(model: &Model, grid: &[u32]) -> Result<RgbImage> {
    let p = grid.len();
    let t = Tensor::from_vec(grid.to_vec(), (1, p), &model.device)?;
    let img = model.vqgan.decode_tokens(&t)?;
    Ok(tessera_engine::inpaint::from_tensor(&img)?.remove(0))
}

/// Evaluates `model` on held-out scenes (`val`); `classifier` scores categories and gives
/// the FID features; `tokenizer` encodes captions and prompts (text models); `train` (the
/// training split's emoji) draws the guidance ceiling; `reference`, when given, is the same
/// model in another precision, whose logits each level's are compared with.
#[allow(clippy::too_many_arguments)] // one call site, each argument a different role
pub fn evaluate(
    model: &Model,
    reference: Option<&Model>,
    val: &SceneGen,
    train: &EmojiView,
    classifier: &Classifier,
    tokenizer: Option<&PromptTokenizer>,
    cfg: &EvalConfig,
    log: &mut dyn FnMut(&str),
) -> Result<EvalReport> {
    let card = &model.card;
    let res = card.resolution() as u32;
    let dev = Device::Cpu;

    // VQGAN.
    let scenes = val.scenes(cfg.seed, 0, cfg.recon.max(cfg.nll), res);
    let (q, grids) = vqgan_quality(&model.vqgan, card.vqgan.n_embed, &scenes, log)?;
    let VqganQuality {
        psnr_db,
        psnr_by_background: by_background,
        codes_used,
        code_perplexity,
    } = q;

    // NLL per stage.
    let conds: Vec<Condition> = scenes
        .iter()
        .map(|s| condition_of(card, tokenizer, s.class, &s.caption))
        .collect::<Result<_>>()?;
    let mut nll_bits = Vec::new();
    let mut nll_bits_uncond = Vec::new();
    let mut against_reference = Vec::new();
    for t in 1..=card.levels() {
        let stage_cfg = StageTrainConfig {
            level: t,
            levels: card.levels(),
            network: card.stages[t - 1].network.clone(),
            conditioning: card.conditioning.clone(),
            ..StageTrainConfig::default()
        };
        let batches: Vec<StageBatch> = grids[..cfg.nll]
            .chunks(16)
            .zip(conds[..cfg.nll].chunks(16))
            .map(|(g, c)| StageBatch {
                x0: g.to_vec(),
                conds: c.to_vec(),
            })
            .collect();
        let net = model.stage(t)?;
        let bits = stage_nll(&net, &stage_cfg, &card.schedule, &batches, cfg.seed)?;
        let dropped: Vec<StageBatch> = batches
            .iter()
            .map(|b| StageBatch {
                x0: b.x0.clone(),
                conds: vec![Condition::None; b.x0.len()],
            })
            .collect();
        let bits_uncond = stage_nll(&net, &stage_cfg, &card.schedule, &dropped, cfg.seed)?;
        log(&format!(
            "stage {t}: held-out NLL {bits:.3} bits/token ({bits_uncond:.3} without the condition)"
        ));
        nll_bits.push(bits);
        nll_bits_uncond.push(bits_uncond);
        if let Some(reference) = reference {
            let base = reference.stage(t)?;
            let (kl_bits, top1) =
                stage_agreement(&net, &base, &stage_cfg, &card.schedule, &batches, cfg.seed)?;
            log(&format!(
                "stage {t} against the reference: KL {kl_bits:.5} bits/token, top-1 agreement {:.2}%",
                100.0 * top1
            ));
            against_reference.push(LogitAgreement { kl_bits, top1 });
        }
    }

    // Guidance: inpaint the largest emoji's box with a requested class, each in turn.
    if tokenizer.is_none()
        && matches!(&card.conditioning, Conditioning::Text { class_names, .. } if !class_names.is_empty())
    {
        // Class words are text: without the tokenizer the "class-guided" runs would silently
        // be unguided ones.
        return Err(Error::Input(
            "evaluating a text model with class words needs its tokenizer".into(),
        ));
    }
    let classes = classifier.config().classes.len();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x6775_6964);
    let gscenes = val.scenes(cfg.seed ^ 1, 0, cfg.guidance, res);
    let mut hits = [0usize; 4];
    let class_names = &classifier.config().classes;
    let mut per_class: Vec<ClassGuidance> = class_names
        .iter()
        .map(|name| ClassGuidance {
            name: name.clone(),
            n: 0,
            hits: [0; 4],
        })
        .collect();
    let mut by_class = vec![Vec::new(); classes];
    for e in train.iter().filter(|e| e.class < classes) {
        by_class[e.class].push(e);
    }
    // Its own stream, so the requests (and so the other numbers) do not depend on it.
    let mut ceiling_rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x6365_696c);
    let names = prompts_by_class(classes);
    // The fit's contrast set: every concept the model knows, as the editor sends it.
    let contrast = vocabulary(card, tokenizer)?;
    let (mut draw_hits, mut draws) = ([0usize; 2], [0usize; 2]);
    for (i, scene) in gscenes.iter().enumerate() {
        let want = i % classes;
        let prompt = &names[want][rng.random_range(0..names[want].len())];
        let masked = Masked::new(model, scene, scene_mask(scene, SceneMask::Item(0)))?;
        per_class[want].n += 1;
        let kinds = [
            condition_of(card, tokenizer, want, "")?,
            condition_of(card, tokenizer, usize::MAX, prompt)?,
            Condition::None,
        ];
        let mut unguided = None;
        for (k, cond) in kinds.into_iter().enumerate() {
            let scale = if matches!(cond, Condition::None) {
                1.0
            } else {
                cfg.guidance_scale
            };
            // Guided: the editor's candidates, the best-fitting one is what it shows first.
            // Unguided: nothing to rank, and the first candidate is a single draw.
            let n = if k < 2 { cfg.candidates.max(1) } else { 1 };
            let concept = match k {
                0 => request_concept(&model.card, Some(want), ""),
                1 => request_concept(&model.card, None, prompt),
                _ => None,
            };
            let fills = masked.fill(
                model,
                cond,
                scale,
                cfg,
                cfg.seed + i as u64,
                n,
                &contrast,
                concept,
            )?;
            let x = batch_to_tensor(&fills.images, &dev)?;
            let predicted = classifier.predict(&x)?;
            if n > 1 && std::env::var_os(DUMP_VAR).is_some() {
                dump(&serde_json::json!({
                    "i": i, "k": k, "want": want, "pred": predicted, "shown": fills.shown_first,
                }))?;
            }
            if predicted[fills.shown_first] == want {
                hits[k] += 1;
                per_class[want].hits[k] += 1;
            }
            if k < 2 {
                draw_hits[k] += predicted.iter().filter(|&&c| c == want).count();
                draws[k] += predicted.len();
            }
            let out = fills.images[fills.shown_first].clone();
            if k == 2 {
                unguided = Some(out);
            }
        }
        if let (Some(mut img), false) = (unguided, by_class[want].is_empty()) {
            let e = by_class[want][ceiling_rng.random_range(0..by_class[want].len())];
            let b = &scene.boxes[0];
            composite_over(&mut img, &e.sprite, b.x, b.y, b.size);
            let perfect = composite(
                &scene.image,
                &masked.mask,
                &masked.window,
                &decode(model, &encode(model, &img)?)?,
                0,
            );
            if classifier.predict(&batch_to_tensor(&[perfect], &dev)?)?[0] == want {
                hits[3] += 1;
                per_class[want].hits[3] += 1;
            }
        }
    }
    let n = gscenes.len().max(1) as f64;
    let guidance = GuidanceReport {
        n: gscenes.len(),
        classes,
        class_acc: hits[0] as f64 / n,
        text_acc: hits[1] as f64 / n,
        uncond_acc: hits[2] as f64 / n,
        ceiling_acc: hits[3] as f64 / n,
        candidates: cfg.candidates.max(1),
        class_draw_acc: draw_hits[0] as f64 / draws[0].max(1) as f64,
        text_draw_acc: draw_hits[1] as f64 / draws[1].max(1) as f64,
        per_class,
    };
    log(&format!(
        "guidance ({} scenes, {classes} categories, chance {:.1}%): class {:.1}%, text {:.1}%, \
         none {:.1}%; a training emoji of the category in the box (the ceiling) {:.1}%",
        guidance.n,
        100.0 / classes as f64,
        100.0 * guidance.class_acc,
        100.0 * guidance.text_acc,
        100.0 * guidance.uncond_acc,
        100.0 * guidance.ceiling_acc
    ));
    log(&format!(
        "guidance: the best-fitting of {} candidates (what the editor shows first) above; any one \
         draw: class {:.1}%, text {:.1}% ({} draws each)",
        guidance.candidates,
        100.0 * guidance.class_draw_acc,
        100.0 * guidance.text_draw_acc,
        draws[0]
    ));

    // FID.
    let (mut fid_uncond, mut fid_upper_half) = (None, None);
    if cfg.fid > 0 {
        let real = val.scenes(cfg.seed ^ 2, 0, cfg.fid, res);
        let real_images: Vec<RgbImage> = real.iter().map(|s| s.image.clone()).collect();
        let real_feats = classifier.features_of(&real_images, 32)?;
        let mut samples = Vec::new();
        for i in 0..cfg.fid {
            let req = request(
                model,
                Condition::None,
                1.0,
                cfg,
                cfg.seed + 10_000 + i as u64,
                None,
            );
            let grids = run_chain(model, &req, &mut Silent)?;
            samples.push(decode(model, &grids.last().expect("x_0")[0])?);
        }
        let f = fid(&real_feats, &classifier.features_of(&samples, 32)?)?;
        log(&format!("FID unconditional ({} samples): {f:.2}", cfg.fid));
        fid_uncond = Some(f);
        let mut completions = Vec::new();
        let fscenes = val.scenes(cfg.seed ^ 3, 0, cfg.fid, res);
        for (i, scene) in fscenes.iter().enumerate() {
            let mask = scene_mask(scene, SceneMask::Preset(PresetMask::UpperHalf));
            let masked = Masked::new(model, scene, mask)?;
            let mut fills = masked.fill(
                model,
                Condition::None,
                1.0,
                cfg,
                cfg.seed + 20_000 + i as u64,
                1,
                &[],
                None,
            )?;
            completions.push(fills.images.swap_remove(0));
        }
        let f = fid(&real_feats, &classifier.features_of(&completions, 32)?)?;
        log(&format!(
            "FID upper-half completion ({} scenes): {f:.2}",
            cfg.fid
        ));
        fid_upper_half = Some(f);
    }

    Ok(EvalReport {
        psnr_db,
        psnr_by_background: by_background,
        codes_used,
        n_embed: card.vqgan.n_embed,
        code_perplexity,
        nll_bits,
        nll_bits_uncond,
        against_reference,
        guidance,
        fid_uncond,
        fid_upper_half,
    })
}

/// Reconstruction quality of a VQGAN on scenes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VqganQuality {
    /// Mean PSNR (dB).
    pub psnr_db: f64,
    /// The same per background kind: (scenes, mean PSNR).
    pub psnr_by_background: std::collections::BTreeMap<String, (usize, f64)>,
    /// Distinct codes the scenes use.
    pub codes_used: usize,
    /// Perplexity of the code distribution.
    pub code_perplexity: f64,
}

/// Encodes and decodes `scenes` through `vqgan` (codebook of `n_embed`): PSNR overall and by
/// background, code usage, and the scenes' token grids; logs a summary.
pub fn vqgan_quality(
    vqgan: &Vqgan,
    n_embed: usize,
    scenes: &[Scene],
    log: &mut dyn FnMut(&str),
) -> Result<(VqganQuality, Vec<Vec<u32>>)> {
    let dev = Device::Cpu;
    let mut psnr_sum = 0.0;
    let mut by_background: std::collections::BTreeMap<String, (usize, f64)> = Default::default();
    let mut counts = vec![0usize; n_embed];
    let mut grids: Vec<Vec<u32>> = Vec::new();
    for chunk in scenes.chunks(32) {
        let images: Vec<_> = chunk.iter().map(|s| s.image.clone()).collect();
        let x = batch_to_tensor(&images, &dev)?;
        let tokens = vqgan.encode_tokens(&x)?;
        let rec = vqgan.decode_tokens(&tokens)?;
        for (i, scene) in chunk.iter().enumerate() {
            let p = psnr(&x.get(i)?, &rec.get(i)?.to_dtype(DType::F32)?)?;
            psnr_sum += p;
            let kind = by_background
                .entry(background_kind(&scene.background).into())
                .or_default();
            kind.0 += 1;
            kind.1 += p;
        }
        for row in tokens.to_vec2::<u32>()? {
            for &tk in &row {
                counts[vqgan.used()[tk as usize] as usize] += 1;
            }
            grids.push(row);
        }
    }
    let total: usize = counts.iter().sum();
    let entropy: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total as f64;
            -p * p.ln()
        })
        .sum();
    let psnr_db = psnr_sum / scenes.len().max(1) as f64;
    for (n, sum) in by_background.values_mut() {
        *sum /= *n as f64;
    }
    let codes_used = counts.iter().filter(|&&c| c > 0).count();
    log(&format!(
        "vqgan: PSNR {psnr_db:.3} dB over {} held-out scenes; {codes_used} of {n_embed} codes \
         used (perplexity {:.1})",
        scenes.len(),
        entropy.exp()
    ));
    let kinds: Vec<String> = by_background
        .iter()
        .map(|(k, (n, p))| format!("{k} {p:.2} ({n})"))
        .collect();
    log(&format!("vqgan: PSNR by background: {}", kinds.join(", ")));
    Ok((
        VqganQuality {
            psnr_db,
            psnr_by_background: by_background,
            codes_used,
            code_perplexity: entropy.exp(),
        },
        grids,
    ))
}

/// Short name of a background's kind.
fn background_kind(b: &Background) -> &'static str {
    match b {
        Background::Solid(..) => "solid",
        Background::Gradient(..) => "gradient",
        Background::Stripes(..) => "stripes",
        Background::Checks(..) => "checks",
        Background::Noise(..) => "noise",
    }
}

/// Prompts for each class: its concept's name and other words (what a user would type).
fn prompts_by_class(classes: usize) -> Vec<Vec<String>> {
    (0..classes)
        .map(|c| match super::data::CONCEPTS.get(c) {
            Some(k) => std::iter::once(k.name)
                .chain(k.words.iter().copied())
                .map(str::to_string)
                .collect(),
            None => vec![format!("class {c}")],
        })
        .collect()
}

/// A contact sheet: one row per scene — the masked input (the object's box in red), then
/// text-guided, class-guided and unconditional inpaintings — each cell `scale_px`× enlarged;
/// sampled with `cfg`'s seed, guidance scale and sampling settings. Rows ask for different
/// concepts (while there are enough); returns the sheet and, per row, what it asked for
/// (`prompt "…", class …`).
pub fn contact_sheet(
    model: &Model,
    val: &SceneGen,
    tokenizer: Option<&PromptTokenizer>,
    rows: usize,
    scale_px: u32,
    cfg: &EvalConfig,
) -> Result<(RgbImage, Vec<String>)> {
    let (seed, g) = (cfg.seed, cfg.guidance_scale);
    let card = &model.card;
    let res = card.resolution() as u32;
    let classes = super::data::class_names().len();
    let names = prompts_by_class(classes);
    // The fit's contrast set: every concept the model knows, as the editor sends it.
    let contrast = vocabulary(card, tokenizer)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..classes).collect();
    order.shuffle(&mut rng);
    let scenes = val.scenes(seed ^ 4, 0, rows, res);
    let cell = res * scale_px;
    let gap = 4;
    let cols = 4u32;
    let mut sheet = RgbImage::from_pixel(
        cols * (cell + gap) + gap,
        rows as u32 * (cell + gap) + gap,
        Rgb([255, 255, 255]),
    );
    let mut asked = Vec::with_capacity(rows);
    for (r, scene) in scenes.iter().enumerate() {
        let want = order[r % classes];
        let prompt = names[want][rng.random_range(0..names[want].len())].clone();
        asked.push(format!(
            "prompt \"{prompt}\", class {want} ({})",
            super::data::class_names()[want]
        ));
        let mask = scene_mask(scene, SceneMask::Item(0));
        let mut masked = scene.image.clone();
        for (p, m) in masked.pixels_mut().zip(mask.pixels()) {
            if m.0[0] >= 128 {
                *p = Rgb([(p.0[0] / 3).saturating_add(170), p.0[1] / 3, p.0[2] / 3]);
            }
        }
        let target = Masked::new(model, scene, mask)?;
        let seed = seed + r as u64;
        let n = cfg.candidates.max(1);
        let first = |cond: Condition, scale: f32, n: usize, concept| -> Result<RgbImage> {
            let mut fills = target.fill(model, cond, scale, cfg, seed, n, &contrast, concept)?;
            Ok(fills.images.swap_remove(fills.shown_first))
        };
        let cells = [
            masked,
            first(
                condition_of(card, tokenizer, usize::MAX, &prompt)?,
                g,
                n,
                request_concept(&model.card, None, &prompt),
            )?,
            first(
                condition_of(card, tokenizer, want, "")?,
                g,
                n,
                request_concept(&model.card, Some(want), ""),
            )?,
            first(Condition::None, 1.0, 1, None)?,
        ];
        for (c, img) in cells.iter().enumerate() {
            let big =
                image::imageops::resize(img, cell, cell, image::imageops::FilterType::Nearest);
            image::imageops::replace(
                &mut sheet,
                &big,
                (gap + c as u32 * (cell + gap)) as i64,
                (gap + r as u32 * (cell + gap)) as i64,
            );
        }
    }
    Ok((sheet, asked))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped model's card (T = 2, geometric schedule, a GPT at level 2).
    fn shipped_card() -> ModelCard {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/model/model.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn inpaintings_use_the_editors_chain_counts_unless_told() {
        let card = shipped_card();
        assert_eq!(card.levels(), 2);
        // What the editor's generation settings start from for this card.
        assert_eq!(chains_of(&card, None, true), default_chains(&card));
        // The card's measured recommendation, not the official 3 at level 1.
        assert_eq!(card.chains, Some(vec![1, 1]));
        assert_eq!(chains_of(&card, None, true), vec![1, 1]);
        let official = ModelCard {
            chains: None,
            recognizer: None,
            ..card.clone()
        };
        assert_eq!(chains_of(&official, None, true), vec![3, 1]);
        assert_eq!(chains_of(&card, None, false), vec![1, 1]);
        assert_eq!(chains_of(&card, Some(2), true), vec![2, 2]);
        assert_eq!(chains_of(&card, Some(0), false), vec![1, 1]);
    }
}

//! The recipe of a Tessera model: every phase from emoji sprites to a model folder, resumable.
//!
//! Phases, each leaving its result in the work folder so that a rerun skips or resumes it:
//! 1. `vqgan/` — the first stage on fresh scenes of the training split; exported to
//!    `vqgan.safetensors` with its remap table;
//!    `decoder/` — then, with the encoder and codebook frozen, the decoder fine-tuned on whole
//!    images for PSNR, exported to `vqgan-tuned.safetensors` (the tokens do not change);
//! 2. `pool.safetensors` + `captions.txt` — a fixed pool of training scenes encoded to x_0
//!    token grids, with their classes and captions; `tokenizer.json` trained on the captions;
//! 3. `stage{t}/` — one run per level with the official objective, on grids of the pool;
//!    `recognizer.safetensors` + `recognizer.json` — the concept recognizer trained on the
//!    pool (see [`crate::recognizer`]), on the core the stages leave idle first;
//! 4. the model folder (card, VQGAN, stages in the storage type, tokenizer), written to a
//!    temporary folder and renamed into place.

use std::path::Path;
use std::sync::Mutex;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use tessera_engine::loader::card::{
    CARD_FILE, CARD_FORMAT, Condition, Conditioning, ModelCard, VQGAN_FILE, class_prompt,
};
use tessera_engine::recognizer::RecognizerCard;
use tessera_engine::sampler::LevelParams;
use tessera_engine::schedule::Schedule;
use tessera_engine::text::{PromptTokenizer, train_word_level};
use tessera_engine::{Error, Result};

use super::data::{EmojiSet, SceneConfig, SceneGen, batch_to_tensor, class_names};
use super::recognizer::{RECOGNIZER_FILE, RecognizerProgress, RecognizerTrainConfig};
use super::stage::{NetworkSize, StageProgress, StageTrainConfig, input_vocab, stage_network};
use super::vqgan::{
    DecoderProgress, DecoderTuneConfig, VqganProgress, VqganTrainConfig, train_vqgan, tune_decoder,
};

mod files;
mod pool;
mod recognize;
mod stages;
use files::{VqganMeta, check_recipe_file, copy, load_vqgan, read_json, to_f16, write_json};
pub use pool::Pool;
use pool::pool;
use stages::{Beside, StageData, train_stages};

/// File name of the tokenizer in the work and model folders.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
const POOL_FILE: &str = "pool.safetensors";
const CAPTIONS_FILE: &str = "captions.txt";
const RECIPE_FILE: &str = "recipe.json";
const VQGAN_META: &str = "vqgan.json";
/// The VQGAN with the fine-tuned decoder (same encoder, codebook and remap table).
const VQGAN_TUNED: &str = "vqgan-tuned.safetensors";

/// Everything that defines a trained model. `Default` is the model Tessera ships.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Recipe {
    /// Name written into the card.
    pub name: String,
    /// Description written into the card.
    pub description: String,
    /// Side of the training scenes (and of the model's images).
    pub res: u32,
    /// Seed of scene streams, chains and initial weights.
    pub seed: u64,
    /// The first stage's run.
    pub vqgan: VqganTrainConfig,
    /// The decoder fine-tune after the VQGAN run (`steps` 0: none).
    pub decoder: DecoderTuneConfig,
    /// T, the number of levels.
    pub levels: usize,
    /// `redraw_prob` of the schedule (`geometric`, `alphacum:…`, …).
    pub schedule: String,
    /// Widths and depths of the stage networks.
    pub size: NetworkSize,
    /// Training scenes encoded for the stages.
    pub pool: usize,
    /// The grid in pixels that the stages' scenes (the pool, the recognizer's and the
    /// evaluation's held-out scenes) snap their emoji's sides and corners to; at the VQGAN's
    /// factor each concept, at each size, has one token map ([`SceneConfig::grid`]). The VQGAN
    /// phases train on unsnapped scenes. 0 (the default, and what a recipe file without the
    /// key gets): no snapping.
    #[serde(default)]
    pub object_grid: u32,
    /// Text tokens in the conditioning prefix.
    pub context_len: usize,
    /// Words seen fewer times in the pool's captions map to `[UNK]`.
    pub min_word_count: usize,
    /// Optimiser steps per level, `stage_steps[t − 1]` for level t.
    pub stage_steps: Vec<usize>,
    /// Grids per stage step.
    pub stage_batch: usize,
    /// Peak learning rate of the stages.
    pub stage_lr: f64,
    /// Warm-up steps of the stages.
    pub stage_warmup: usize,
    /// α of the loss for levels ≥ 2 (level 1 always uses the cross-entropy, as released).
    pub alpha_mix: f32,
    /// Probability of dropping the condition of a training grid.
    pub cond_drop: f32,
    /// Probability of keeping only the class word, and again of keeping only the caption.
    pub part_drop: f32,
    /// EMA decay of the stage weights.
    pub ema_decay: f64,
    /// Checkpoint interval of the stage runs.
    pub ckpt_every: usize,
    /// Store the stage weights as f16 (half the size; computed in f32 after loading).
    pub export_f16: bool,
    /// Sampling settings written into the card as its recommendation (chosen by
    /// `tessera eval`; see the README).
    pub sampling: Option<LevelParams>,
    /// Classifier-free guidance scale written into the card as its recommendation (the one
    /// `tessera eval` measured best; see the README).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance_scale: Option<f32>,
    /// Inpainting chain passes per level written into the card as its recommendation (the
    /// counts `tessera eval` measured best; see the README); `None`: the official script's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chains: Option<Vec<usize>>,
    /// The concept recognizer that ranks candidates (`steps` 0: none).
    pub recognizer: RecognizerTrainConfig,
}

impl Default for Recipe {
    fn default() -> Self {
        Self {
            name: "tessera-concepts-128".into(),
            description: "Tessera's default model: 128×128 object-centric scenes of 40 concepts \
                          (red heart, cat face, rocket, …; Microsoft Fluent Emoji 3D) on simple \
                          backgrounds, trained from scratch by `tessera train`. Text (captions) \
                          and class (concept) conditional, with the conditions dropped in \
                          training for unconditional sampling and classifier-free guidance."
                .into(),
            res: 128,
            seed: 1,
            vqgan: VqganTrainConfig {
                resolution: 128,
                // f = 8: 16×16 tokens, the stages' sequence length of the 64² model.
                ch_mult: vec![1, 1, 2, 2],
                steps: 3500,
                // Crops of 6×6 codes throughout: a whole 128² image costs ≈ 7× a crop.
                crop: 48,
                crop_until: 3500,
                disc_start: 3200,
                restart_until: 3000,
                ..VqganTrainConfig::default()
            },
            decoder: DecoderTuneConfig {
                steps: 800,
                crop: 64,
                ..DecoderTuneConfig::default()
            },
            levels: 2,
            schedule: "geometric".into(),
            size: NetworkSize::default(),
            pool: 20_000,
            // 8 measured no better (README: `docs/recipes/concepts-grid8.json`).
            object_grid: 0,
            context_len: 16,
            min_word_count: 1,
            stage_steps: vec![5000, 5000],
            stage_batch: 16,
            stage_lr: 5e-4,
            stage_warmup: 100,
            alpha_mix: 1.0,
            cond_drop: 0.1,
            part_drop: 0.15,
            ema_decay: 0.999,
            ckpt_every: 100,
            export_f16: true,
            sampling: None,
            // Measured on the held-out split (README): class / text top-1 31.2 / 28.9% at 3,
            // 22.7 / 23.4% at 2, 31.2 / 23.4% at 5 (128 scenes each).
            guidance_scale: Some(3.0),
            // Measured on the held-out split (README, 256 scenes each, scale 3): class / text
            // top-1 40.6 / 48.4% with one pass per level, 41.8 / 40.6% with the official 3 at
            // level 1 (the GPT level draws the same distribution however many it runs).
            chains: Some(vec![1, 1]),
            recognizer: RecognizerTrainConfig::default(),
        }
    }
}

impl Recipe {
    /// A recipe that trains in seconds on the test fixture: for CI and tests, not for use.
    pub fn smoke() -> Self {
        let vqgan = VqganTrainConfig {
            resolution: 32,
            ch: 32,
            ch_mult: vec![1, 2],
            num_res_blocks: 1,
            z_channels: 32,
            n_embed: 64,
            embed_dim: 16,
            steps: 6,
            batch: 4,
            warmup: 2,
            disc_start: 4,
            restart_every: 3,
            restart_until: 4,
            ckpt_every: 3,
            log_every: 1,
            remap_batches: 2,
            ..VqganTrainConfig::default()
        };
        Self {
            name: "tessera-smoke".into(),
            description: "A smoke-test model trained for a few steps; it generates noise.".into(),
            res: 32,
            vqgan,
            decoder: DecoderTuneConfig {
                steps: 3,
                batch: 2,
                warmup: 1,
                ckpt_every: 2,
                log_every: 1,
                // A decoder deeper than the encoder, so the card's decoder_ddconfig is exercised.
                num_res_blocks: Some(2),
                ..DecoderTuneConfig::default()
            },
            levels: 2,
            size: NetworkSize {
                dim: 32,
                heads: 2,
                dim_head: 16,
                enc_depth: 1,
                dec_depth: 1,
                gpt_layers: 1,
            },
            pool: 16,
            // The smoke VQGAN's factor.
            object_grid: 2,
            context_len: 6,
            stage_steps: vec![4, 4],
            stage_batch: 4,
            stage_warmup: 1,
            ckpt_every: 2,
            export_f16: false,
            recognizer: RecognizerTrainConfig {
                steps: 4,
                batch: 4,
                warmup: 1,
                embed_dim: 8,
                channels: vec![8, 8],
                ..RecognizerTrainConfig::default()
            },
            ..Self::default()
        }
    }

    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Input(format!("recipe: {m}")));
        if let Some(Err(e)) = self.sampling.map(|s| s.validate()) {
            return bad(format!("sampling: {e}"));
        }
        if let Some(g) = self
            .guidance_scale
            .filter(|g| !(g.is_finite() && *g >= 0.0))
        {
            return bad(format!(
                "guidance_scale must be a finite number ≥ 0, got {g}"
            ));
        }
        if self.levels < 2 {
            return bad(format!("needs at least 2 levels, got {}", self.levels));
        }
        if let Some(chains) = &self.chains {
            let max = tessera_engine::pipeline::MAX_CHAINS;
            if chains.len() != self.levels || chains.iter().any(|c| !(1..=max).contains(c)) {
                return bad(format!(
                    "chains must give 1..={max} passes for each of the {} levels, got {chains:?}",
                    self.levels
                ));
            }
        }
        if self.stage_steps.len() != self.levels {
            return bad(format!(
                "stage_steps has {} entries for {} levels",
                self.stage_steps.len(),
                self.levels
            ));
        }
        if self.vqgan.resolution != self.res as usize {
            return bad(format!(
                "the VQGAN trains at {} px but the scenes are {} px",
                self.vqgan.resolution, self.res
            ));
        }
        if self.object_grid > 64 || self.object_grid > self.res / 2 {
            return bad(format!(
                "object_grid {} px is wider than half the {} px scenes (or 64)",
                self.object_grid, self.res
            ));
        }
        if self.pool < self.stage_batch || self.stage_batch == 0 {
            return bad(format!(
                "pool ({}) must hold at least one batch ({})",
                self.pool, self.stage_batch
            ));
        }
        Schedule::from_redraw_prob(&self.schedule, self.levels).map_err(Error::Input)?;
        Ok(())
    }

    fn schedule(&self) -> Result<Schedule> {
        Schedule::from_redraw_prob(&self.schedule, self.levels).map_err(Error::Input)
    }
}

/// What [`run`] reports.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// A phase begins (or is found done).
    Phase {
        /// Short name (`vqgan`, `pool`, `stage 2`, `export`).
        name: String,
        /// True when the phase's result was found in the work folder.
        done: bool,
    },
    /// A VQGAN step.
    Vqgan(VqganProgress),
    /// A decoder fine-tune step.
    Decoder(DecoderProgress),
    /// A stage step.
    Stage {
        /// Its level.
        level: usize,
        /// The step.
        progress: StageProgress,
    },
    /// Progress of encoding the pool (scenes done, in all).
    Pool(usize, usize),
    /// A recognizer step.
    Recognizer(RecognizerProgress),
    /// A finished phase's measurement, for the log.
    Note(String),
}

/// The scene generator of the training split the stages learn from: every concept's emoji,
/// snapped to the recipe's `object_grid`.
pub fn train_scenes<'a>(set: &'a EmojiSet, recipe: &Recipe) -> Result<SceneGen<'a>> {
    SceneGen::new(set.all(), stage_scene_config(recipe))
}

/// The scene generator of the VQGAN phases: the training split, unsnapped.
pub fn vqgan_scenes(set: &EmojiSet) -> Result<SceneGen<'_>> {
    SceneGen::new(set.all(), SceneConfig::default())
}

/// The scene generator of the held-out split: the same concepts (a user asks for what the
/// model knows) in scenes from streams no training phase draws ([`SceneGen::held_out`]),
/// snapped like the stages' scenes.
pub fn val_scenes<'a>(set: &'a EmojiSet, recipe: &Recipe) -> Result<SceneGen<'a>> {
    Ok(SceneGen::new(set.all(), stage_scene_config(recipe))?.held_out())
}

fn stage_scene_config(recipe: &Recipe) -> SceneConfig {
    SceneConfig {
        grid: recipe.object_grid,
        ..SceneConfig::default()
    }
}

/// How [`run`] runs; none of it changes the trained model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    /// Replace an existing model folder.
    pub overwrite: bool,
    /// Stages trained at the same time (each on its share of the threads); 1 trains them in
    /// order on all threads.
    pub jobs: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            overwrite: false,
            jobs: default_jobs(),
        }
    }
}

/// One stage per core: a stage step barely gains from a second thread (see [`stages`]).
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs (or resumes) every phase of `recipe` on `set`: work files in `work`, the model folder
/// written to `out` (which must not exist unless `opts.overwrite`).
pub fn run(
    recipe: &Recipe,
    set: &EmojiSet,
    work: &Path,
    out: &Path,
    opts: &RunOptions,
    events: &mut dyn FnMut(TrainEvent) -> bool,
) -> Result<ModelCard> {
    recipe.validate()?;
    if out.exists() && !opts.overwrite {
        return Err(Error::Input(format!(
            "{} exists; pass --force to replace it",
            out.display()
        )));
    }
    std::fs::create_dir_all(work).map_err(|e| Error::io(work, e))?;
    check_recipe_file(recipe, work)?;
    let vq_scenes = vqgan_scenes(set)?;
    let scenes = train_scenes(set, recipe)?;

    // 1. VQGAN.
    let vq_path = work.join(VQGAN_FILE);
    let meta_path = work.join(VQGAN_META);
    let done = vq_path.is_file() && meta_path.is_file();
    events(TrainEvent::Phase {
        name: "vqgan".into(),
        done,
    });
    if !done {
        let seed = recipe.seed ^ 0x56_5147_414e;
        let mut data = scene_batches(&vq_scenes, seed, recipe.vqgan.batch, recipe.res);
        let mut report = |p: &VqganProgress| {
            events(TrainEvent::Vqgan(p.clone()));
        };
        let trained = train_vqgan(&recipe.vqgan, &mut data, &work.join("vqgan"), &mut report)?;
        let (cfg, n_used) = trained.export(&vq_path)?;
        write_json(
            &meta_path,
            &VqganMeta {
                config: cfg,
                n_used,
            },
        )?;
    }
    let meta: VqganMeta = read_json(&meta_path)?;
    let vqgan = load_vqgan(&vq_path, &meta)?;

    // 1b. Decoder fine-tune.
    let tuned_path = work.join(VQGAN_TUNED);
    if recipe.decoder.steps > 0 {
        let done = tuned_path.is_file();
        if done {
            same_decoder_config(&work.join("decoder"), &recipe.decoder, &tuned_path)?;
        }
        events(TrainEvent::Phase {
            name: "decoder".into(),
            done,
        });
        if !done {
            let seed = recipe.seed ^ 0x4445_434f_4445;
            let mut data = scene_batches(&vq_scenes, seed, recipe.decoder.batch, recipe.res);
            let mut report = |p: &DecoderProgress| {
                events(TrainEvent::Decoder(p.clone()));
            };
            tune_decoder(
                &recipe.vqgan,
                &recipe.decoder,
                &vq_path,
                &mut data,
                &work.join("decoder"),
                &tuned_path,
                &mut report,
            )?;
        }
    }

    // 2. Pool and tokenizer.
    let pool = pool(recipe, &scenes, &vqgan, work, events)?;
    let tok_path = work.join(TOKENIZER_FILE);
    if !tok_path.is_file() {
        // Captions with their class words, so that both are in the vocabulary.
        let names = class_names();
        let texts: Vec<String> = pool
            .captions
            .iter()
            .zip(&pool.classes)
            .map(|(c, &k)| class_prompt(Some(names[k]), c))
            .collect();
        let tokenizer = train_word_level(&texts, recipe.min_word_count)?;
        let tmp = work.join("tokenizer.json.tmp");
        tokenizer
            .save(&tmp, true)
            .map_err(|e| Error::io(&tmp, std::io::Error::other(e.to_string())))?;
        std::fs::rename(&tmp, &tok_path).map_err(|e| Error::io(&tok_path, e))?;
    }
    let prompt_tok = PromptTokenizer::from_file(&tok_path)?;
    let text_vocab = prompt_tok.vocab_size();
    let conditioning = conditioning(recipe, meta.n_used);
    // Per scene: the full condition, the class word alone, the caption alone.
    let names = class_names();
    let conds: Vec<[Condition; 3]> = pool
        .captions
        .iter()
        .zip(&pool.classes)
        .map(|(c, &class)| {
            let enc =
                |s: &str| -> Result<Condition> { Ok(Condition::Text(prompt_tok.encode(s)?.ids)) };
            Ok([
                enc(&class_prompt(Some(names[class]), c))?,
                enc(&class_prompt(Some(names[class]), ""))?,
                enc(c)?,
            ])
        })
        .collect::<Result<_>>()?;

    // 3. Stages.
    let schedule = recipe.schedule()?;
    let positions = pool.tokens[0].len();
    let vocab = input_vocab(meta.n_used, recipe.levels, &conditioning, text_vocab);
    let prefix_len = 1 + conditioning.len();
    let cfgs: Vec<StageTrainConfig> = (1..=recipe.levels)
        .map(|t| StageTrainConfig {
            level: t,
            levels: recipe.levels,
            network: stage_network(
                t,
                recipe.levels,
                meta.n_used,
                positions,
                prefix_len,
                vocab,
                &recipe.size,
            ),
            conditioning: conditioning.clone(),
            steps: recipe.stage_steps[t - 1],
            batch: recipe.stage_batch,
            lr: recipe.stage_lr,
            warmup: recipe.stage_warmup,
            alpha_mix: if t == 1 { 0.0 } else { recipe.alpha_mix },
            cond_drop: recipe.cond_drop,
            ema_decay: recipe.ema_decay,
            ckpt_every: recipe.ckpt_every,
            seed: recipe.seed.wrapping_mul(1000).wrapping_add(t as u64),
            ..StageTrainConfig::default()
        })
        .collect();
    let data = StageData {
        pool: &pool,
        conds: &conds,
        part_drop: recipe.part_drop,
    };
    // 3b. The concept recognizer, on the pool, on the core the stages leave idle first.
    let recognizer: Mutex<Option<RecognizerCard>> = Mutex::new(None);
    let train_recognizer = |ev: &mut dyn FnMut(TrainEvent) -> bool| -> Result<()> {
        let card =
            recognize::recognizer(recipe, set, &scenes, &pool, &vqgan, meta.n_used, work, ev)?;
        *recognizer.lock().unwrap_or_else(|p| p.into_inner()) = card;
        Ok(())
    };
    let beside: Option<Beside<'_>> = (recipe.recognizer.steps > 0).then_some(&train_recognizer);
    let trained_stages = train_stages(&cfgs, &schedule, &data, work, opts.jobs, beside, events)?;
    let recognizer = recognizer.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut stage_cards = Vec::new();

    // 4. Export.
    events(TrainEvent::Phase {
        name: "export".into(),
        done: false,
    });
    let tmp = out.with_extension("partial");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    for trained in &trained_stages {
        let mut card = trained.export(&tmp)?;
        if recipe.export_f16 {
            to_f16(&tmp.join(&card.weights))?;
        }
        card.parameters = trained.parameters();
        stage_cards.push(card);
    }
    let vq_export = if recipe.decoder.steps > 0 {
        &tuned_path
    } else {
        &vq_path
    };
    copy(vq_export, &tmp.join(VQGAN_FILE))?;
    copy(&tok_path, &tmp.join(TOKENIZER_FILE))?;
    if let Some(r) = &recognizer {
        copy(&work.join(RECOGNIZER_FILE), &tmp.join(&r.weights))?;
    }
    let card = ModelCard {
        format: CARD_FORMAT.into(),
        name: recipe.name.clone(),
        description: recipe.description.clone(),
        vqgan: if recipe.decoder.steps > 0 {
            recipe.decoder.tuned_config(&meta.config)
        } else {
            meta.config.clone()
        },
        n_tokens: meta.n_used,
        stages: stage_cards,
        schedule,
        conditioning,
        dtype: if recipe.export_f16 { "f16" } else { "f32" }.into(),
        provenance: format!(
            "trained by `tessera train` (recipe {}) on Microsoft Fluent Emoji 3D scenes",
            recipe.name
        ),
        license: "MIT (weights); training images: Microsoft Fluent Emoji (MIT), see NOTICE".into(),
        sampling: recipe.sampling,
        guidance_scale: recipe.guidance_scale,
        chains: recipe.chains.clone(),
        recognizer,
    };
    write_json(&tmp.join(CARD_FILE), &card)?;
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    Ok(card)
}

/// The VQGAN of a work folder and the recipe it was started with: the fine-tuned one once the
/// decoder phase is done (then `true`), else the first stage's; `None` while the VQGAN phase
/// runs. Returns it with its codebook size.
pub fn work_vqgan(
    work: &Path,
) -> Result<Option<(Recipe, tessera_engine::vqgan::Vqgan, usize, bool)>> {
    let recipe: Recipe = read_json(&work.join(RECIPE_FILE))?;
    let (vq_path, meta_path) = (work.join(VQGAN_FILE), work.join(VQGAN_META));
    if !(vq_path.is_file() && meta_path.is_file()) {
        return Ok(None);
    }
    let meta: VqganMeta = read_json(&meta_path)?;
    let n_embed = meta.config.n_embed;
    let tuned_path = work.join(VQGAN_TUNED);
    if recipe.decoder.steps > 0 && tuned_path.is_file() {
        let tuned = VqganMeta {
            config: recipe.decoder.tuned_config(&meta.config),
            n_used: meta.n_used,
        };
        let vqgan = load_vqgan(&tuned_path, &tuned)?;
        return Ok(Some((recipe, vqgan, n_embed, true)));
    }
    let vqgan = load_vqgan(&vq_path, &meta)?;
    Ok(Some((recipe, vqgan, n_embed, false)))
}

/// A tuned VQGAN found in the work folder must come from the recipe's decoder fine-tune: the
/// card describes the decoder by that configuration.
fn same_decoder_config(dir: &Path, cfg: &DecoderTuneConfig, tuned: &Path) -> Result<()> {
    let path = dir.join("config.json");
    let found: DecoderTuneConfig = read_json(&path)?;
    if &found != cfg {
        return Err(Error::config(
            &path,
            format!(
                "{} was fine-tuned with another decoder configuration; delete it and {} to \
                 fine-tune again",
                tuned.display(),
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Batch `step` of `n` fresh training scenes (B, 3, res, res), drawn from (seed, step).
fn scene_batches<'a>(
    scenes: &'a SceneGen<'_>,
    seed: u64,
    n: usize,
    res: u32,
) -> impl FnMut(usize) -> Result<Tensor> + 'a {
    move |step| {
        let batch = scenes.scenes(seed, (step * n) as u64, n, res);
        let images: Vec<_> = batch.into_iter().map(|s| s.image).collect();
        batch_to_tensor(&images, &Device::Cpu)
    }
}

/// The conditioning of a recipe's model: the class word and the caption as text tokens.
fn conditioning(recipe: &Recipe, n_tokens: usize) -> Conditioning {
    Conditioning::Text {
        tokenizer: TOKENIZER_FILE.into(),
        context_len: recipe.context_len,
        // Text ids follow the image codes and scale tokens in the input table.
        token_offset: n_tokens.max(recipe.levels + 1),
        pad_id: 0,
        class_names: class_names().iter().map(|s| s.to_string()).collect(),
    }
}

/// The condition a `card` takes for a category (`usize::MAX`: none) and a caption or prompt
/// (empty: none); parts the card cannot take are left out.
pub fn condition_of(
    card: &ModelCard,
    tokenizer: Option<&PromptTokenizer>,
    class: usize,
    caption: &str,
) -> Result<Condition> {
    Ok(match &card.conditioning {
        Conditioning::None => Condition::None,
        Conditioning::Class { .. } if class != usize::MAX => Condition::Class(class),
        Conditioning::Class { .. } => Condition::None,
        Conditioning::Text { class_names, .. } => {
            let name = class_names.get(class).map(String::as_str);
            let prompt = class_prompt(name, caption);
            match tokenizer {
                Some(t) if !prompt.is_empty() => Condition::Text(t.encode(&prompt)?.ids),
                _ => Condition::None,
            }
        }
    })
}
